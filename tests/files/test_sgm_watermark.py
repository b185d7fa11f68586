"""generative-models' watermark (SDXL, its refiner, SD-Turbo): the 48-bit message embedded in the float
image, against the demo's own function written out here from sgm.inference.helpers.WatermarkEmbedder."""

import numpy as np
import pytest
import torch

from sd_cli.files import watermark
from sd_cli.files.images import to_uint8

from sgm_watermark_reference import WATERMARK_BITS, demo_embed_watermark, demo_saved_pixels  # noqa: E402


def decoded_images(size: int, batch: int = 2) -> torch.Tensor:
    """Smooth colour fields in [-1, 1] with some texture, a little outside the range at the corners."""
    y, x = torch.meshgrid(torch.linspace(-1.1, 1.1, size), torch.linspace(-1.1, 1.1, size), indexing="ij")
    channels = [torch.sin(3 * x + k) * torch.cos(2 * y - k) + 0.1 * torch.sin(40 * x * y) for k in range(3 * batch)]
    return torch.stack(channels).reshape(batch, 3, size, size).clamp(-1.2, 1.2)


def test_the_message_is_the_originals():
    assert watermark.text_bits(watermark.WATERMARK_SGM).astype(int).tolist() == WATERMARK_BITS
    assert len(WATERMARK_BITS) == 48


@pytest.mark.parametrize("size", [256, 320])
def test_float_watermark_pixels_are_the_demos(size):
    decoded = decoded_images(size)
    ours = to_uint8(decoded, watermark.WATERMARK_SGM)
    theirs = demo_saved_pixels(decoded)
    unmarked = to_uint8(decoded)
    for mine, reference, plain in zip(ours, theirs, unmarked):
        assert np.array_equal(mine, reference)
        assert (mine != plain).mean() > 0.2  # the mark changed the pixels


def test_float_watermark_reads_back_as_the_sgm_message():
    for image in to_uint8(decoded_images(256), watermark.WATERMARK_SGM):
        found, score = watermark.identify_watermark(image)
        assert found == watermark.WATERMARK_SGM and score > 0.85
        assert watermark.unreadable_reason(image, watermark.WATERMARK_SGM) is None
    for image in to_uint8(decoded_images(256)):
        assert watermark.identify_watermark(image)[0] is None


def test_the_sd_marks_are_not_taken_for_the_sgm_message():
    smooth = (255 * to_uint8(decoded_images(256, 1))[0] / 255).astype(np.uint8)
    for text in (watermark.WATERMARK_V1, watermark.WATERMARK_V2):
        assert watermark.identify_watermark(watermark.add_watermark(smooth, text))[0] == text


def test_a_quantised_image_gets_the_float_path_on_its_values():
    """A grid is made of quantised images: add_watermark gives it the demo's path on pixels / 255."""
    rgb = to_uint8(decoded_images(256, 1))[0]
    floats = torch.from_numpy(rgb.astype(np.float32) / np.float32(255)).permute(2, 0, 1)[None]
    expected = (255.0 * demo_embed_watermark(floats)[0].permute(1, 2, 0).numpy()).astype(np.uint8)
    assert np.array_equal(watermark.add_watermark(rgb, watermark.WATERMARK_SGM), expected)


def test_too_small_float_images_come_back_unmarked():
    decoded = decoded_images(128, 1)
    assert np.array_equal(to_uint8(decoded, watermark.WATERMARK_SGM)[0], to_uint8(decoded)[0])
