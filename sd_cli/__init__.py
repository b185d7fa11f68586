"""sd_cli: Stable Diffusion from the command line."""

import os

# OpenMP worker threads that spin while waiting collapse when another process shares the cores
# (measured on a 2-core machine: 0.05 s/step alone, 1.9 s/step beside a busy process). Sleeping
# waiters cost nothing measurable on an idle machine. This must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
