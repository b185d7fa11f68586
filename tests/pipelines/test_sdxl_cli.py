"""SDXL and SD-Turbo through the CLI, from tiny sgm files: the watermark, the size and crop flags, the
model's own defaults, the Turbo and EDM schedules, the PNG's parameters and --from-png, the hires fix.

Each test compares what the CLI writes with the pipeline run on the values the feature should give
(the pipelines' own parity with the reference is tests/pipelines/test_sdxl.py's)."""

import numpy as np
import pytest
import torch
from PIL import Image
from sgm_watermark_reference import demo_saved_pixels
from tiny_models import write_tiny_checkpoint

from sd_cli.files import watermark
from sd_cli.files.images import to_uint8
from sd_cli.loading.loader import load_model
from sd_cli.pipelines.txt2img import txt2img_latents
from sd_cli.sampling.denoising import SamplingParams

SIZE = 128


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sgm-cli")
    return {family: write_tiny_checkpoint(family, folder / family, fmt="safetensors") for family in ("sdxl", "sd-turbo")}


@pytest.fixture(scope="module")
def models(files):
    return {family: load_model(path).model for family, path in files.items()}


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_sdxl_renders_carry_the_demos_float_watermark(files, models, run_cli, tmp_path):
    out = tmp_path / "marked.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--sampler", "euler", "--steps", 2,
                     "--scale", 4, "--height", 256, "--width", 256, "--seed", 7, "-o", out)
    assert result.code == 0, result.stderr
    model = models["sdxl"]
    latents = txt2img_latents(model, ["a red circle"], [""], [7], SamplingParams("euler", 2, 4.0), 256, 256)
    assert np.array_equal(pixels(out), demo_saved_pixels(model.decode_latents(latents))[0])
    assert watermark.NOTE_KEY not in Image.open(out).text
    verified = run_cli("verify", out)
    assert verified.code == 0 and verified.stdout.startswith(f"{out}: {watermark.WATERMARK_SGM} (match ")


def test_no_watermark_writes_the_plain_pixels(files, models, run_cli, tmp_path):
    out = tmp_path / "plain.png"
    assert run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--sampler", "euler", "--steps", 2,
                   "--scale", 4, "--height", SIZE, "--width", SIZE, "--seed", 7, "--no-watermark", "-o", out).code == 0
    model = models["sdxl"]
    latents = txt2img_latents(model, ["a red circle"], [""], [7], SamplingParams("euler", 2, 4.0), SIZE, SIZE)
    assert np.array_equal(pixels(out), to_uint8(model.decode_latents(latents))[0])
