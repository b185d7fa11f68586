"""The SD 2 x4 upscaler demos as a command line, run by sd_cli with the original demo's defaults.

    python scripts/superresolution.py --prompt "a photograph of a cat" --image cat-128.png --ckpt x4-upscaler-ema.ckpt

Defaults are the v2 scripts/streamlit/superresolution.py's (seed 0, one sample, scale 9.0, 50 DDIM
steps, eta 0, noise augmentation 20, the input floored to multiples of 64 and resized bicubic, the
prompt "a high quality professional photograph", outputs/superresolution-samples); any flag given
wins. The gradio demo's choices are flags: --steps 75 --scale 10 --upscale-fit pad. Every flag of
`sd-cli upscale` works (--noise-level, --tile, --vae-tiling, --ddim_steps, --n_samples, ...).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_cli.cli.original_scripts import run_original_script  # noqa: E402

if __name__ == "__main__":
    run_original_script("upscale", sys.argv[1:])
