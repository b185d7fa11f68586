"""Reading sd_cli's watermark back: smooth and saturated images, and the note on images written without one."""

import json

import numpy as np
import pytest
from PIL import Image

from sd_cli.files import watermark

TEXTS = list(watermark.WATERMARK_TEXTS)  # V1 is a prefix of V1-Inpainting: each must still win over the other


def soft_disc(size: int, background=(120, 40, 140), disc=(230, 210, 40), edge=0.1) -> np.ndarray:
    """A yellow disc on purple with a soft edge: the kind of smooth render the library's reading misses."""
    y, x = np.mgrid[:size, :size] / size - 0.5
    inside = np.clip((0.3 - np.hypot(x, y)) / edge + 0.5, 0, 1)[..., None]
    return (np.array(background) * (1 - inside) + np.array(disc) * inside).astype(np.uint8)


@pytest.mark.parametrize("size", [256, 384])
@pytest.mark.parametrize("text", TEXTS)
def test_smooth_image_reads_back(text, size):
    found, score = watermark.identify_watermark(watermark.add_watermark(soft_disc(size), text))
    assert found == text and score > 0.95  # the library's own per-block reading scores this 0.56


@pytest.mark.parametrize("colour", [(0, 0, 0), (128, 0, 128), (128, 128, 128)])
def test_flat_image_reads_back(colour):
    flat = np.full((256, 256, 3), colour, np.uint8)
    assert watermark.identify_watermark(watermark.add_watermark(flat, watermark.WATERMARK_V1)) == (
        watermark.WATERMARK_V1, pytest.approx(0.985, abs=0.005))


@pytest.mark.parametrize("edge", [0.02, 0.1, 0.3])
def test_unmarked_smooth_images_are_not_identified(edge):
    found, score = watermark.identify_watermark(soft_disc(256, edge=edge))
    assert found is None and 0.45 < score < 0.55


def test_block_reading_of_a_flat_grey_image():
    """Grey 128: U = 128, so every approximation coefficient is 256 = 7*36 + 4. Bit 0 is written as
    7.25*36 = 261 and bit 1 as 7.75*36 = 279; after the uint8 round trip they read 260 and 278."""
    marked = watermark.add_watermark(np.full((256, 256, 3), 128, np.uint8), watermark.WATERMARK_V2)
    coefficients = watermark.block_coefficients(marked)
    bits = watermark.text_bits(watermark.WATERMARK_V2)
    assert coefficients.shape == (32 * 32, 15)
    assert sorted(set(np.round(coefficients.max(axis=1), 6))) == [260.0, 278.0]
    assert np.array_equal(watermark.read_blocks(marked), bits[np.arange(1024) % 32].astype(int))


def test_saturated_image_cannot_carry_the_mark():
    yellow = np.full((256, 256, 3), (255, 255, 0), np.uint8)  # U at its floor: the change is clipped away
    marked = watermark.add_watermark(yellow, watermark.WATERMARK_V1)
    assert watermark.unreadable_reason(marked, watermark.WATERMARK_V1) == (
        "dwtDct could not carry 'StableDiffusionV1' in this image: it read back at 0.50 when written")
    assert watermark.unreadable_reason(np.zeros((128, 256, 3), np.uint8), "SDV2") == (
        "256x128 is smaller than 256x256 pixels, too small for the watermark")
    assert watermark.unreadable_reason(watermark.add_watermark(soft_disc(256), "SDV2"), "SDV2") is None


def test_render_that_cannot_carry_the_mark_says_so(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    from sd_cli.run import render

    yellow = np.full((256, 256, 3), (255, 255, 0), np.uint8)
    monkeypatch.setattr(render, "_finished", lambda request, batch, decoded, float_mark: [yellow for _ in batch])
    out = tmp_path / "yellow.png"
    assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, "--steps", "2", "--H", "64", "--W", "64", "-o", out).code == 0
    reason = "dwtDct could not carry 'StableDiffusionV1' in this image: it read back at 0.50 when written"
    assert Image.open(out).text[watermark.NOTE_KEY] == reason
    result = run_cli("verify", out)
    assert result.code == 1
    assert result.stdout == f"{out}: written without a readable watermark ({reason})\n"
    record = json.loads(run_cli("verify", "--json", out).stdout)
    assert record["watermark"] is None and record["written_without_watermark"] == reason


def test_too_small_render_says_so(run_cli, sd1_ckpt, tmp_path):
    out = tmp_path / "small.png"
    assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, "--steps", "2", "--H", "64", "--W", "128", "-o", out).code == 0
    result = run_cli("verify", out)
    assert result.code == 1
    assert result.stdout == (f"{out}: written without a readable watermark "
                             "(128x64 is smaller than 256x256 pixels, too small for the watermark)\n")


def test_marked_render_has_no_note(run_cli, sd1_ckpt, tmp_path):
    out = tmp_path / "a.png"
    assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, "--steps", "2", "--H", "256", "--W", "256", "-o", out).code == 0
    assert watermark.NOTE_KEY not in Image.open(out).text
    assert run_cli("verify", out).stdout.startswith(f"{out}: StableDiffusionV1 (match ")


@pytest.mark.parametrize("size, steps", [(256, 50), (384, 20)])
def test_reported_builtin_model_renders_are_recognised(run_cli, tmp_path, size, steps):
    """The renders issue #18 reported as "no known watermark (best match 0.55)"."""
    out = tmp_path / "a.png"
    assert run_cli("txt2img", "a yellow circle on a purple background", "--seed", 5, "--height", size,
                   "--width", size, "--steps", steps, "-o", out).code == 0
    result = run_cli("verify", out)
    assert result.code == 0 and result.stdout.startswith(f"{out}: StableDiffusionV1 (match 0.9")


def test_misaligned_reading_is_not_named():
    """Readings of StableDiffusionV1-Inpainting shifted by 40 blocks agree with its own alignment at
    0.71, above the threshold by score alone; its alignment 40 agrees at 1.0, so it is chance."""
    bits = watermark.text_bits(watermark.WATERMARK_V1_INPAINTING)
    blocks = np.arange(64 * 64)
    shifted = bits[(blocks + 40) % bits.size].astype(int)
    assert watermark.match_score(shifted, bits) == pytest.approx(0.713, abs=0.002)
    assert watermark.identify_reading(shifted)[0] is None
    aligned = bits[blocks % bits.size].astype(int)
    assert watermark.identify_reading(aligned) == (watermark.WATERMARK_V1_INPAINTING, pytest.approx(0.998, abs=0.002))


def test_alignment_scores_count_every_shift():
    bits = watermark.text_bits(watermark.WATERMARK_V2)
    reading = np.where(np.arange(2048) % 3 == 0, -1, bits[(np.arange(2048) + 7) % 32].astype(int))
    scores = watermark.alignment_scores(reading, bits)
    assert scores.shape == (32,) and scores.argmax() == 7
    assert scores[0] == pytest.approx(watermark.match_score(reading, bits))
