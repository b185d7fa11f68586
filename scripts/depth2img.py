"""The SD 2 depth2img demos as a command line, run by sd_cli with the original demo's defaults.

    python scripts/depth2img.py --prompt "a cabin interior" --init-img room.png --strength 0.8 --ckpt 512-depth-ema.ckpt

Defaults are the v2 scripts/streamlit/depth2img.py's (seed 0, one sample, scale 9.0, strength 0.9,
outputs/depth2img-samples); any flag given wins. MiDaS comes from the checkpoint itself: no
midas_models/ folder is needed. Every flag of `sd-cli depth2img` works (--ddim_steps, --n_samples, ...).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_cli.cli.original_scripts import run_original_script  # noqa: E402

if __name__ == "__main__":
    run_original_script("depth2img", sys.argv[1:])
