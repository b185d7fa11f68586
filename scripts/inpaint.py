"""The SD inpainting demos as a command line, run by sd_cli with the original demo's defaults.

    python scripts/inpaint.py --prompt "a red door" --image photo.png --mask mask.png --ckpt sd-v1-5-inpainting.ckpt

Defaults are runwayml's scripts/inpaint_st.py (seed 0, one sample, scale 7.5, DDIM η 1.0, the mask
binarised without blur, no paste-back, outputs/inpaint-samples); any flag given wins. Every flag of
`sd-cli inpaint` works, under the original spellings too (--ddim_steps, --n_samples, --init-img, ...).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_cli.cli.original_scripts import run_original_script  # noqa: E402

if __name__ == "__main__":
    run_original_script("inpaint", sys.argv[1:])
