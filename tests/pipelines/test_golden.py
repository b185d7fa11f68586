"""Golden renders: every mode's PNG, pixel for pixel and infotext for infotext, as recorded.

The recorded hashes (golden_renders.json) were taken before the package was reorganised; a
structural change must leave them all equal. A deliberate change of numerics rewrites them with

    SD_CLI_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py

and says in its commit which cases moved and why. Every case runs the CLI in-process, so the
whole path (flags, loading, sampling, decoding, watermark, infotext, file) is covered.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_models import write_tiny_checkpoint

GOLDEN = Path(__file__).resolve().parent / "golden_renders.json"
WRITING = os.environ.get("SD_CLI_WRITE_GOLDEN") == "1"

pytestmark = pytest.mark.usefixtures("one_thread")

# name: (subcommand, checkpoint family or None for the built-in model, arguments after the prompt)
CASES = {
    "builtin-txt2img-ddim": ("txt2img", None, ["--steps", "4"]),
    "builtin-txt2img-ddim-eta-batch": ("txt2img", None, ["--steps", "3", "--eta", "0.5", "--n-samples", "2"]),
    "builtin-txt2img-plms": ("txt2img", None, ["--steps", "4", "--sampler", "plms"]),
    "builtin-txt2img-dpm": ("txt2img", None, ["--steps", "4", "--sampler", "dpm"]),
    "builtin-txt2img-euler-a": ("txt2img", None, ["--steps", "4", "--sampler", "euler_a"]),
    "builtin-txt2img-dpmpp-2m-karras": ("txt2img", None, ["--steps", "4", "--sampler", "DPM++ 2M Karras"]),
    "builtin-txt2img-negative-scale1": ("txt2img", None, ["--steps", "3", "-n", "green", "--scale", "1"]),
    "builtin-img2img-ddim-0.5": ("img2img", None, ["--steps", "6", "--strength", "0.5"]),
    "builtin-img2img-ddim-0": ("img2img", None, ["--steps", "4", "--strength", "0"]),
    "builtin-img2img-ddim-1": ("img2img", None, ["--steps", "4", "--strength", "1"]),
    "builtin-img2img-plms-0.6": ("img2img", None, ["--steps", "5", "--strength", "0.6", "--sampler", "plms"]),
    "builtin-img2img-dpm-0.6": ("img2img", None, ["--steps", "5", "--strength", "0.6", "--sampler", "dpm"]),
    "builtin-img2img-euler-0.6": ("img2img", None, ["--steps", "5", "--strength", "0.6", "--sampler", "euler"]),
    "builtin-img2img-euler-a-0": ("img2img", None, ["--steps", "4", "--strength", "0", "--sampler", "euler_a"]),
    "builtin-hires-ddim": ("txt2img", None, ["--steps", "3", "--hires-scale", "1.5", "--hires-strength", "0.6"]),
    "builtin-hires-euler-a": ("txt2img", None, ["--steps", "3", "--sampler", "euler_a", "--hires-scale", "1.5"]),
    "builtin-hires-dpm-nearest": ("txt2img", None, ["--steps", "3", "--sampler", "dpm", "--hires-scale", "1.5",
                                                    "--hires-upscaler", "latent-nearest", "--hires-steps", "2"]),
    "builtin-inpaint-blend-ddim": ("inpaint", None, ["--steps", "4"]),
    "builtin-inpaint-blend-ddim-0.6": ("inpaint", None, ["--steps", "5", "--strength", "0.6"]),
    "builtin-inpaint-blend-euler-a": ("inpaint", None, ["--steps", "4", "--sampler", "euler_a"]),
    "builtin-inpaint-blend-dpm-0.6": ("inpaint", None, ["--steps", "5", "--strength", "0.6", "--sampler", "dpm"]),
    "sd1-txt2img-ddim": ("txt2img", "sd1", ["--steps", "3"]),
    "sd1-img2img-euler-0.5": ("img2img", "sd1", ["--steps", "4", "--strength", "0.5", "--sampler", "euler"]),
    "sd2v-txt2img-dpmpp-2m": ("txt2img", "sd2-v", ["--steps", "3", "--sampler", "dpmpp_2m"]),
    "sd1-inpaint-concat-ddim": ("inpaint", "sd1-inpaint", ["--steps", "3"]),
    "sd1-inpaint-concat-ddim-0.7": ("inpaint", "sd1-inpaint", ["--steps", "4", "--strength", "0.7"]),
    "sd1-inpaint-concat-dpmpp-2m-0.7": ("inpaint", "sd1-inpaint", ["--steps", "4", "--strength", "0.7",
                                                                   "--sampler", "dpmpp_2m"]),
    "sd2-depth-ddim": ("depth2img", "sd2-depth", ["--steps", "4"]),
    "sd2-depth-ddim-1": ("depth2img", "sd2-depth", ["--steps", "4", "--strength", "1"]),
    "sd2-depth-euler-0.5": ("depth2img", "sd2-depth", ["--steps", "4", "--strength", "0.5", "--sampler", "euler"]),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A smooth input image and a mask with a hole, 128x128 (the built-in model's size) and 64x64."""
    folder = tmp_path_factory.mktemp("golden-inputs")
    paths = {}
    for size in (128, 64):
        y, x = np.mgrid[0:size, 0:size] / size
        image = np.stack([x, y, 1 - x * y], axis=-1) * 255
        Image.fromarray(image.astype(np.uint8)).save(folder / f"image{size}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4: 3 * size // 4, size // 3: 5 * size // 6] = 255
        Image.fromarray(mask).save(folder / f"mask{size}.png")
        paths[size] = (folder / f"image{size}.png", folder / f"mask{size}.png")
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("golden-ckpts")
    return {family: write_tiny_checkpoint(family, folder, fmt="safetensors")
            for family in ("sd1", "sd2-v", "sd1-inpaint", "sd2-depth")}


def render_record(folder: Path) -> dict:
    """Each written PNG's pixel hash and infotext, by file name."""
    record = {}
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
            record[path.name] = {"size": list(pixels.shape), "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
                                 "parameters": image.info.get("parameters")}
    return record


def command_line(case: str, folder: Path, inputs: dict, checkpoints: dict) -> list:
    mode, family, extra = CASES[case]
    args = [mode, "a red circle on a blue background", "--seed", "11", "-o", folder / "out-{index}.png", *extra]
    if family is not None:
        args += ["--ckpt", checkpoints[family]]
    image, mask = inputs[128 if family is None else 64]
    if mode in ("img2img", "depth2img"):
        args += ["--init-img", image]
    if mode == "inpaint":
        args += ["--image", image, "--mask", mask]
    return args


@pytest.fixture(scope="module")
def golden() -> dict:
    return {} if WRITING else json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def written():
    """Under SD_CLI_WRITE_GOLDEN=1: collects every case's record, saved when the module ends."""
    records = {}
    yield records
    if WRITING:
        GOLDEN.write_text(json.dumps(dict(sorted(records.items())), indent=1, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("case", CASES)
def test_render_is_unchanged(case, tmp_path, inputs, checkpoints, golden, written, run_cli):
    result = run_cli(*command_line(case, tmp_path, inputs, checkpoints))
    assert result.code == 0, result.stderr
    record = render_record(tmp_path)
    # Checkpoint paths differ between sessions; the infotext names the model by its file stem.
    assert record, "no image written"
    if WRITING:
        written[case] = record
        return
    assert record == golden[case]
