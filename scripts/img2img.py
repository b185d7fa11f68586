"""Drop-in for the original scripts/img2img.py: same flags and v1 defaults, run by sd_cli.

    python scripts/img2img.py --prompt "a fantasy landscape" --init-img sketch.png --strength 0.8 --ckpt model.ckpt

Defaults are the original v1 script's (2 samples x 1 iteration, seed 42, scale 5.0, strength 0.75,
outputs/img2img-samples); any flag given on the command line overrides them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_cli.cli.original_scripts import run_original_script  # noqa: E402

if __name__ == "__main__":
    run_original_script("img2img", sys.argv[1:])
