"""sd_cli: Stable Diffusion from the command line."""

import os

# OpenMP worker threads that spin while waiting slow a step down several times over when another
# process shares the cores, while sleeping waiters cost little on an idle machine (figures in
# docs/performance.md). This must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
