"""Inputs are checked before the run is announced, and a checkpoint is refused before its weights load."""

import re

import numpy as np
import pytest
from PIL import Image

from sd_cli.files.infotext import parse_infotext
from tiny_models import write_tiny_checkpoint


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    return path


def test_a_missing_checkpoint_is_the_only_line(run_cli, tmp_path):
    result = run_cli("txt2img", "x", "--ckpt", tmp_path / "nope.ckpt", "--steps", "1")
    assert result.code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: checkpoint not found: {tmp_path / 'nope.ckpt'}")


def test_a_missing_init_image_is_the_only_line(run_cli, tmp_path):
    result = run_cli("img2img", "x", "--init-img", tmp_path / "missing.png", "--steps", "1")
    assert result.code != 0 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "seed" not in result.stderr and "missing.png" in result.stderr


def test_a_random_seed_is_announced_once_the_model_is_loaded(run_cli, tmp_path):
    out = tmp_path / "out.png"
    result = run_cli("txt2img", "x", "--steps", "1", "-o", out)
    assert result.code == 0, result.stderr
    lines = result.stderr.splitlines()
    seed_line = next(i for i, line in enumerate(lines) if line.startswith("seed "))
    loaded_line = next(i for i, line in enumerate(lines) if line.startswith("loaded "))
    assert loaded_line < seed_line
    seed = int(re.fullmatch(r"seed (\d+) \(random; pass --seed \1 to repeat this run\)", lines[seed_line])[1])
    assert parse_infotext(Image.open(out).info["parameters"])[2]["Seed"] == str(seed)


def test_a_directory_as_ckpt_says_so(run_cli, tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    result = run_cli("txt2img", "x", "--ckpt", tmp_path, "--steps", "1", "--seed", "1")
    assert result.code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: {tmp_path}: is a diffusers folder (model_index.json)")


def test_depth2img_refuses_an_ordinary_checkpoint_before_loading_it(run_cli, tmp_path, image):
    ckpt = write_tiny_checkpoint("sd1", tmp_path / "sd1", fmt="safetensors")
    result = run_cli("depth2img", "x", "--init-img", image, "--ckpt", ckpt, "--steps", "1", "--seed", "1")
    assert result.code == 2
    assert "loaded" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: depth2img needs the SD 2 depth model")
