"""ControlNet's scales, step rule and hints (the minimal none/canny set), against the scripts' formulas."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_cli.control.preprocessors import detect_size, hint_tensor, hwc3, make_hint
from sd_cli.control.units import active, control_scales, hint_path
from sd_cli.errors import UsageError

cv2 = pytest.importorskip("cv2")


def test_scales_are_the_strength_or_guess_modes_decay():
    assert control_scales(0.5, False, 13) == [0.5] * 13
    guess = control_scales(2.0, True, 13)
    assert guess[-1] == 2.0  # the middle block's: 0.825 ** 0
    assert guess[0] == pytest.approx(2.0 * 0.825 ** 12)
    assert guess[6] == pytest.approx(2.0 * 0.825 ** 6)
    # fewer residuals (the tiny test ControlNet's 5): the first entries, as the original's zip takes them
    assert control_scales(1.0, True, 5) == pytest.approx([0.825 ** 12, 0.825 ** 11, 0.825 ** 10, 0.825 ** 9, 0.825 ** 8])
    with pytest.raises(UsageError, match="guess mode scales 13 residuals and this ControlNet makes 14"):
        control_scales(1.0, True, 14)


def test_a_unit_steers_the_steps_between_start_and_end():
    steered = [i for i in range(10) if active(i / 10, 0.2, 0.5)]
    assert steered == [2, 3, 4, 5]  # AUTOMATIC1111's extension: start <= i / steps <= end
    assert [i for i in range(4) if active(i / 4, 0.0, 1.0)] == [0, 1, 2, 3]


def test_hint_paths_for_several_units():
    assert hint_path(Path("out/hint.png"), 0) == Path("out/hint.png")
    assert hint_path(Path("out/hint.png"), 2) == Path("out/hint-2.png")


def image(width=96, height=80) -> Image.Image:
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[(xs - width // 2) ** 2 + (ys - height // 2) ** 2 < 400] = (255, 30, 60)
    return Image.fromarray(rgb)


def test_none_is_the_image_resized_as_the_scripts():
    source = np.asarray(image())
    assert (make_hint(image(), "none", 96, 80) == source).all()  # same size: unchanged
    assert (make_hint(image(), "none", 192, 160) == cv2.resize(source, (192, 160), interpolation=cv2.INTER_LANCZOS4)).all()
    assert (make_hint(image(), "none", 48, 40) == cv2.resize(source, (48, 40), interpolation=cv2.INTER_AREA)).all()


def test_canny_is_the_scripts_opencv_call():
    source = np.asarray(image())
    hint = make_hint(image(), "canny", 96, 80, canny_low=50, canny_high=150)
    edges = cv2.Canny(source, 50, 150)
    assert hint.shape == (80, 96, 3) and hint.dtype == np.uint8
    assert (hint == edges[:, :, None]).all() and edges.max() == 255


def test_canny_at_a_detect_resolution():
    source = np.asarray(image())
    assert detect_size(source, 512) == (640, 512)  # short side 80 -> 512; 96 * 6.4 = 614.4 -> 640
    hint = make_hint(image(), "canny", 96, 80, detect_resolution=512)
    big = cv2.resize(source, (640, 512), interpolation=cv2.INTER_LANCZOS4)
    expected = cv2.resize(np.repeat(cv2.Canny(big, 100, 200)[:, :, None], 3, 2), (96, 80), interpolation=cv2.INTER_LINEAR)
    assert (hint == expected).all()


def test_hint_tensor_is_rgb_in_0_1():
    hint = np.zeros((8, 16, 3), np.uint8)
    hint[..., 0], hint[0, 0, 1] = 255, 51
    tensor = hint_tensor(hint)
    assert tensor.shape == (1, 3, 8, 16) and tensor.dtype.is_floating_point
    assert tensor[0, 0].min() == 1.0 and tensor[0, 1, 0, 0] == pytest.approx(0.2) and tensor[0, 2].max() == 0.0


def test_grey_and_transparent_images_become_rgb():
    grey = np.full((4, 4), 7, np.uint8)
    assert (hwc3(grey) == 7).all() and hwc3(grey).shape == (4, 4, 3)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 255)  # opaque black stays; transparent becomes white
    assert hwc3(rgba)[0, 0].tolist() == [0, 0, 0] and hwc3(rgba)[1, 1].tolist() == [255, 255, 255]


def test_an_unknown_preprocessor_is_a_usage_error():
    with pytest.raises(UsageError, match="--control-preprocess hed: unknown; choose from none, canny"):
        make_hint(image(), "hed", 64, 64)
