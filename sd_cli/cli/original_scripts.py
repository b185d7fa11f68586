"""The original scripts' command lines, run through sd_cli with the original scripts' defaults.

Defaults are prepended to the user's arguments, so anything the user gives wins (the parser
keeps the last value of a repeated option). A --from-file's blank lines are empty prompts here, as
the original reads the file with str.splitlines() (docs/reference/original-scripts.md §2.3); `sd-cli` skips them.
"""

from sd_cli.cli.app import main
from sd_cli.run.jobs import blank_lines_are_prompts

ORIGINAL_PROMPT = "a painting of a virus monster playing guitar"

ORIGINAL_DEFAULTS = {
    "txt2img": ["--n_samples", "3", "--n_iter", "2", "--seed", "42", "--scale", "7.5",
                "--outdir", "outputs/txt2img-samples"],
    "img2img": ["--n_samples", "2", "--n_iter", "1", "--seed", "42", "--scale", "5.0", "--strength", "0.75",
                "--outdir", "outputs/img2img-samples"],
    # runwayml's scripts/inpaint_st.py (SD 1.5 inpainting): seed 0, one sample, scale 7.5, η 1.0 hard-coded,
    # the hard binarised mask and no paste-back
    "inpaint": ["--n_samples", "1", "--seed", "0", "--scale", "7.5", "--ddim_eta", "1.0", "--mask-blur", "0",
                "--no-paste-back", "--outdir", "outputs/inpaint-samples"],
    # v2 scripts/streamlit/depth2img.py: seed 0, one sample, scale 9.0, strength 0.9, η 0
    "depth2img": ["--n_samples", "1", "--seed", "0", "--scale", "9.0", "--strength", "0.9",
                  "--outdir", "outputs/depth2img-samples"],
    # v2 scripts/streamlit/superresolution.py (the x4 upscaler): seed 0, one sample, scale 9.0, 50 DDIM steps,
    # η 0, noise augmentation 20, the input floored to multiples of 64
    "upscale": ["--n_samples", "1", "--seed", "0", "--scale", "9.0", "--steps", "50", "--ddim_eta", "0.0",
                "--noise-level", "20", "--upscale-fit", "floor", "--outdir", "outputs/superresolution-samples"],
}
# The streamlit script's own prompt field default, where the other scripts' is ORIGINAL_PROMPT.
ORIGINAL_PROMPTS = {"upscale": "a high quality professional photograph"}


def run_original_script(mode: str, user_args: list[str]) -> None:
    args = [mode, *ORIGINAL_DEFAULTS[mode], *user_args]
    if not _gives_prompt(user_args):
        args += ["--prompt", ORIGINAL_PROMPTS.get(mode, ORIGINAL_PROMPT)]
    with blank_lines_are_prompts():
        main(args)


def _gives_prompt(args: list[str]) -> bool:
    return any(a in ("--prompt", "-p", "--from-file") or a.startswith(("--prompt=", "--from-file=")) for a in args)
