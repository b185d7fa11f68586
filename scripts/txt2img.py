"""Drop-in for the original scripts/txt2img.py: same flags and v1 defaults, run by sd_cli.

    python scripts/txt2img.py --prompt "an astronaut riding a horse" --plms --ckpt model.ckpt --config configs/v1-inference.yaml

Defaults are the original v1 script's (3 samples x 2 iterations, seed 42, scale 7.5,
outputs/txt2img-samples); any flag given on the command line overrides them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_cli.cli.original_scripts import run_original_script  # noqa: E402

if __name__ == "__main__":
    run_original_script("txt2img", sys.argv[1:])
