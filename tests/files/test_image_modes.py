"""Every PIL mode an input image can come in reads as the picture it is: init images, masks, depth maps."""

import numpy as np
import pytest
import torch
from PIL import Image

from sd_cli.errors import SdCliError
from sd_cli.files import images
from sd_cli.files.masks import MaskOptions, load_inpaint_canvas
from sd_cli.pipelines.depth2img import load_depth_map


def grey_ramp(h=64, w=128) -> np.ndarray:
    """[h, w] uint8 covering 0..255, with dark, mid and bright areas."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 2 + y) % 256).astype(np.uint8)


def save(array, path, mode=None):
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def one_line(error) -> bool:
    return "\n" not in str(error)


# -- init images -------------------------------------------------------------------------------

def test_16_bit_png_reads_as_its_8_bit_picture(tmp_path):
    grey = grey_ramp()
    eight = images.load_init_image(save(grey, tmp_path / "g8.png"))
    sixteen = save(grey.astype(np.uint16) * 257, tmp_path / "g16.png")
    assert Image.open(sixteen).mode == "I;16"
    assert torch.equal(images.load_init_image(sixteen), eight)


def test_16_bit_values_between_8_bit_levels_keep_their_high_byte(tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (64, 64)).astype(np.uint16)
    x = images.load_init_image(save(values, tmp_path / "g16.png"))
    expected = torch.from_numpy((values >> 8).astype(np.float32) / 255.0) * 2 - 1
    assert torch.equal(x[0, 0], expected) and torch.equal(x[0, 1], expected)


def test_32_bit_integer_tiff_on_the_16_bit_scale(tmp_path):
    grey = grey_ramp()
    eight = images.load_init_image(save(grey, tmp_path / "g8.png"))
    tiff = save(grey.astype(np.int32) * 257, tmp_path / "g32.tif")
    assert Image.open(tiff).mode == "I"
    assert torch.equal(images.load_init_image(tiff), eight)


def test_float_tiff_on_the_0_to_1_scale(tmp_path):
    grey = grey_ramp()
    eight = images.load_init_image(save(grey, tmp_path / "g8.png"))
    tiff = save(grey.astype(np.float32) / 255.0, tmp_path / "f.tif")
    assert Image.open(tiff).mode == "F"
    assert torch.equal(images.load_init_image(tiff), eight)


@pytest.mark.parametrize("array, name, message", [
    (np.full((64, 64), 70000, np.int32), "big.tif", "integer pixels outside the 16-bit scale (0-65535) sd-cli reads them on (70000 to 70000)"),
    (np.full((64, 64), -5, np.int32), "negative.tif", "integer pixels outside the 16-bit scale"),
    (np.full((64, 64), 200.0, np.float32), "f255.tif", "floating-point pixels outside the 0-1 scale sd-cli reads them on (200 to 200)"),
    (np.full((64, 64), np.nan, np.float32), "nan.tif", "floating-point pixels outside the 0-1 scale sd-cli reads them on (none finite)"),
])
def test_pixels_off_the_scale_are_refused(tmp_path, array, name, message):
    path = save(array, tmp_path / name)
    with pytest.raises(SdCliError) as err:
        images.load_init_image(path)
    assert message in str(err.value) and str(path) in str(err.value) and one_line(err.value)
    assert str(err.value).endswith("save it as an 8- or 16-bit PNG")


def test_a_mode_without_a_conversion_is_one_error():
    with pytest.raises(SdCliError, match=r"^init image x\.tif has PIL mode La, which cannot be converted to RGB; "):
        images.as_mode(Image.new("La", (64, 64)), "RGB", "x.tif", "init image")
    with pytest.raises(SdCliError, match=r"^mask m\.tif has PIL mode LAB, which cannot be converted to L; "):
        images.as_mode(Image.new("LAB", (64, 64)), "L", "m.tif", "mask")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "YCbCr"])
def test_eight_bit_modes_read_as_pil_converts_them(tmp_path, mode):
    rgb = np.dstack([grey_ramp(), grey_ramp()[::-1], np.full((64, 128), 90, np.uint8)])
    image = Image.fromarray(rgb).convert(mode)
    if mode == "P":
        image.info["transparency"] = 3
    path = tmp_path / ("x.tif" if mode in ("CMYK", "YCbCr") else "x.png")
    image.save(path)
    x = images.load_init_image(path)
    expected = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
    assert torch.equal(x[0].permute(1, 2, 0), torch.from_numpy(expected) * 2 - 1)


# -- masks -------------------------------------------------------------------------------------

def test_16_bit_mask_is_the_8_bit_mask(tmp_path):
    picture = save(np.dstack([grey_ramp()] * 3), tmp_path / "image.png")
    mask8 = np.full((64, 128), 100, np.uint8)  # grey below half: keep
    mask8[16:48, 32:96] = 200  # above half: repaint
    options = MaskOptions(blur=0)
    eight = load_inpaint_canvas(picture, save(mask8, tmp_path / "m8.png"), options)
    sixteen = load_inpaint_canvas(picture, save(mask8.astype(np.uint16) * 257, tmp_path / "m16.png"), options)
    assert np.array_equal(sixteen.model_mask, eight.model_mask) and 0 < eight.model_mask.mean() < 1


def test_16_bit_image_for_inpaint_is_its_8_bit_picture(tmp_path):
    mask = save(np.full((64, 128), 255, np.uint8), tmp_path / "m.png")
    eight = load_inpaint_canvas(save(grey_ramp(), tmp_path / "g8.png"), mask, MaskOptions())
    sixteen = load_inpaint_canvas(save(grey_ramp().astype(np.uint16) * 257, tmp_path / "g16.png"), mask, MaskOptions())
    assert np.array_equal(sixteen.pixels, eight.pixels)


def test_mask_from_a_palette_images_transparency(tmp_path):
    image = Image.fromarray(grey_ramp()).convert("P")
    image.info["transparency"] = int(np.asarray(image)[0, 0])
    image.save(tmp_path / "p.png")
    canvas = load_inpaint_canvas(tmp_path / "p.png", None, MaskOptions(blur=0))
    transparent = np.asarray(Image.open(tmp_path / "p.png")) == np.asarray(image)[0, 0]
    assert np.array_equal(canvas.model_mask == 1, transparent)


# -- depth maps --------------------------------------------------------------------------------

def test_depth_map_16_bit_keeps_its_precision(tmp_path):
    values = np.random.default_rng(1).integers(0, 200, (16, 64)).astype(np.uint16)  # dark: all below 256
    depth = load_depth_map(save(values, tmp_path / "d16.png"))
    assert torch.equal(depth[0, 0], torch.from_numpy((values / 65535.0).astype(np.float32)))


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK", "1"])
def test_depth_map_in_other_modes_is_its_grey_picture(tmp_path, mode):
    colour = np.dstack([grey_ramp(16, 64), grey_ramp(16, 64)[::-1], np.full((16, 64), 30, np.uint8)])
    image = Image.fromarray(colour).convert(mode)  # P: a colour palette, whose indices are not grey levels
    path = tmp_path / ("d.tif" if mode == "CMYK" else "d.png")
    image.save(path)
    expected = np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
    assert torch.equal(load_depth_map(path)[0, 0], torch.from_numpy(expected))
