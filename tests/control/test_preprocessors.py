"""ControlNet hints against the original scripts' formulas, computed here with cv2 and numpy directly.

Each reference below restates what lllyasviel/ControlNet-v1-1-nightly's gradio_*.py and annotator/
code compute (resize_image, HWC3, nms, make_noise_disk, the HED forward), written out in the test
so that sd_cli's own helpers are not used to check themselves.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

cv2 = pytest.importorskip("cv2")

from sd_cli.control.preprocessors import (  # noqa: E402
    PREPROCESSORS, hint_picture, hint_tensor, make_hint, resize_image,
)
from sd_cli.errors import CheckpointError, UsageError  # noqa: E402


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB picture with edges to find: a gradient, a rectangle, a disc, and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 200 / width, yy * 200 / height, np.full((height, width), 90.0)], axis=2)
    image[height // 5:height // 2, width // 6:width // 2] = (230, 40, 40)
    disc = (yy - height * 0.6) ** 2 + (xx - width * 0.7) ** 2 < (min(height, width) * 0.25) ** 2
    image[disc] = (20, 60, 220)
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def script_resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """annotator/util.py's resize_image, restated."""
    h, w = float(image.shape[0]), float(image.shape[1])
    k = float(resolution) / min(h, w)
    out_h, out_w = int(np.round(h * k / 64.0)) * 64, int(np.round(w * k / 64.0)) * 64
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def script_nms(x: np.ndarray, t: float, s: float) -> np.ndarray:
    """annotator/util.py's nms, restated (putmask over the four directions)."""
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), s)
    kernels = [[[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
               [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]]
    y = np.zeros_like(x)
    for f in kernels:
        np.putmask(y, cv2.dilate(x, kernel=np.array(f, dtype=np.uint8)) == x, x)
    z = np.zeros_like(y, dtype=np.uint8)
    z[y > t] = 255
    return z


def script_scribble(detected: np.ndarray, width: int, height: int) -> np.ndarray:
    """gradio_scribble.py after detection."""
    detected = cv2.resize(detected, (width, height), interpolation=cv2.INTER_LINEAR)
    detected = script_nms(detected, 127, 3.0)
    detected = cv2.GaussianBlur(detected, (0, 0), 3.0)
    detected[detected > 4] = 255
    detected[detected < 255] = 0
    return detected


def three(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[:, :, None]] * 3, axis=2)


@pytest.fixture(scope="module")
def photo():
    return scene(200, 300)  # not a multiple of 64 either way; the scripts' default output is 512 on the short side


# ---------------------------------------------------------------- resize_image


def test_resize_image_down_is_area_to_multiples_of_64(photo):
    out = resize_image(photo, 128)  # k = 0.64: 200 x 300 -> 128 x 192
    assert out.shape == (128, 192, 3)
    assert np.array_equal(out, cv2.resize(photo, (192, 128), interpolation=cv2.INTER_AREA))


def test_resize_image_up_is_lanczos_and_rounds_half_to_even():
    small = scene(80, 96, seed=1)
    out = resize_image(small, 160)  # k = 2: 160 / 64 = 2.5 rounds to 2 (numpy), 192 / 64 = 3
    assert out.shape == (128, 192, 3)
    assert np.array_equal(out, cv2.resize(small, (192, 128), interpolation=cv2.INTER_LANCZOS4))
    assert not np.array_equal(out, cv2.resize(small, (192, 128), interpolation=cv2.INTER_AREA))


def test_resize_image_at_its_own_size_is_unchanged():
    exact = scene(128, 192, seed=2)
    assert np.array_equal(resize_image(exact, 128), exact)


# ---------------------------------------------------------------- canny


@pytest.mark.parametrize("low, high", [(100, 200), (50, 120), (150, 250)])
def test_canny_is_the_scripts_opencv_call_on_rgb(photo, low, high):
    hint = make_hint(Image.fromarray(photo), "canny", 192, 128, canny_low=low, canny_high=high)
    expected = three(cv2.Canny(script_resize_image(photo, 128), low, high))
    assert hint.dtype == np.uint8 and hint.shape == (128, 192, 3)
    assert np.array_equal(hint, expected)
    assert set(np.unique(hint)) == {0, 255} and 300 < (hint[:, :, 0] == 255).sum() < 128 * 192 // 3


def test_canny_thresholds_change_the_edges(photo):
    image = Image.fromarray(photo)
    loose = make_hint(image, "canny", 192, 128, canny_low=20, canny_high=40)
    strict = make_hint(image, "canny", 192, 128, canny_low=150, canny_high=250)
    assert (loose == 255).sum() > (strict == 255).sum() * 1.5


def test_canny_detected_at_another_resolution_then_resized_linear(photo):
    """v1.1: detect on resize_image(input, detect_resolution), then cv2.resize to the output, INTER_LINEAR."""
    hint = make_hint(Image.fromarray(photo), "canny", 192, 128, detect_resolution=256)
    detected = three(cv2.Canny(script_resize_image(photo, 256), 100, 200))  # 256 x 384
    assert detected.shape == (256, 384, 3)
    expected = cv2.resize(detected, (192, 128), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(hint, expected)
    assert len(np.unique(hint)) > 2  # the linear resize leaves grey edges, unlike detection at the output size
    assert not np.array_equal(hint, make_hint(Image.fromarray(photo), "canny", 192, 128))


# ---------------------------------------------------------------- the image itself


def test_none_is_the_image_resized_linear(photo):
    hint = make_hint(Image.fromarray(photo), "none", 192, 128)
    assert np.array_equal(hint, cv2.resize(photo, (192, 128), interpolation=cv2.INTER_LINEAR))
    exact = scene(128, 192, seed=3)
    assert np.array_equal(make_hint(Image.fromarray(exact), "none", 192, 128), exact)


def test_tile_is_the_released_tile_scripts_linear_resize(photo):
    hint = make_hint(Image.fromarray(photo), "tile", 256, 192)
    assert np.array_equal(hint, cv2.resize(photo, (256, 192), interpolation=cv2.INTER_LINEAR))


def test_blur_is_area_to_an_eighth_then_three_pyrups(photo):
    hint = make_hint(Image.fromarray(photo), "blur", 192, 128)
    expected = cv2.resize(photo, (24, 16), interpolation=cv2.INTER_AREA)
    for _ in range(3):
        expected = cv2.pyrUp(expected)
    assert np.array_equal(hint, expected)
    assert hint.std() < photo.std()  # blurred: the noise and edges are smoothed away
    odd = make_hint(Image.fromarray(photo), "blur", 100, 60)  # 12 x 7 -> 96 x 56, then linear to 100 x 60
    assert odd.shape == (60, 100, 3)


def test_invert_is_255_minus_the_resized_image(photo):
    hint = make_hint(Image.fromarray(photo), "invert", 192, 128)
    assert np.array_equal(hint, 255 - cv2.resize(photo, (192, 128), interpolation=cv2.INTER_LINEAR))
    assert int(hint[0, 0, 2]) == 255 - int(cv2.resize(photo, (192, 128), interpolation=cv2.INTER_LINEAR)[0, 0, 2])


def test_threshold_is_the_interactive_scribble_rule(photo):
    photo = (photo.astype(int) + 80).clip(0, 255).astype(np.uint8)  # light enough for some pixels to pass 127
    hint = make_hint(Image.fromarray(photo), "threshold", 192, 128)
    resized = cv2.resize(photo, (192, 128), interpolation=cv2.INTER_AREA)  # resize_image's rule, shrinking
    expected = np.zeros_like(resized)
    expected[np.min(resized, axis=2) > 127] = 255
    assert np.array_equal(hint, expected)
    assert 0 < (hint == 255).mean() < 1
    bigger = make_hint(Image.fromarray(photo), "threshold", 384, 256)  # enlarging: LANCZOS4
    up = cv2.resize(photo, (384, 256), interpolation=cv2.INTER_LANCZOS4)
    assert np.array_equal(bigger[:, :, 0], np.where(up.min(axis=2) > 127, 255, 0).astype(np.uint8))


def test_scribble_is_the_scribble_scripts_nms_blur_and_cut():
    lines = np.zeros((160, 240, 3), dtype=np.uint8)  # white strokes on black, as the scribble model wants
    cv2.line(lines, (10, 20), (220, 140), (255, 255, 255), 5)
    cv2.circle(lines, (80, 90), 40, (255, 255, 255), 3)
    hint = make_hint(Image.fromarray(lines), "scribble", 192, 128)
    assert np.array_equal(hint, script_scribble(lines, 192, 128))
    assert set(np.unique(hint)) == {0, 255} and 0.02 < (hint == 255).mean() < 0.5


# ---------------------------------------------------------------- shuffle


def script_noise_disk(h, w, c, f):
    """annotator/util.py's make_noise_disk, restated (global numpy random state, as the script)."""
    noise = np.random.uniform(low=0, high=1, size=((h // f) + 2, (w // f) + 2, c))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)
    noise = noise[f: f + h, f: f + w]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise[:, :, None] if c == 1 else noise


def test_shuffle_is_the_scripts_flow_under_np_random_seed(photo):
    hint = make_hint(Image.fromarray(photo), "shuffle", 320, 256, seed=12345)
    saved = np.random.get_state()
    try:
        np.random.seed(12345)  # gradio_shuffle.py seeds numpy's global state, then draws x, then y
        x = script_noise_disk(256, 320, 1, 256) * float(300 - 1)
        y = script_noise_disk(256, 320, 1, 256) * float(200 - 1)
    finally:
        np.random.set_state(saved)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    assert np.array_equal(hint, cv2.remap(photo, flow, None, cv2.INTER_LINEAR))
    assert hint.shape == (256, 320, 3)


def test_shuffle_depends_on_the_seed_only(photo):
    image = Image.fromarray(photo)
    first = make_hint(image, "shuffle", 192, 128, seed=7)
    assert np.array_equal(first, make_hint(image, "shuffle", 192, 128, seed=7))
    assert np.abs(first.astype(int) - make_hint(image, "shuffle", 192, 128, seed=8)).mean() > 5


# ---------------------------------------------------------------- inpaint


def test_inpaint_hint_is_the_image_with_masked_pixels_at_minus_one(photo):
    mask = np.zeros((200, 300), dtype=np.uint8)
    mask[60:140, 90:210] = 255
    hint = make_hint(Image.fromarray(photo), "inpaint", 192, 128, mask=mask)
    # gradio_inpaint.py: resize_image's image, the mask's first channel resized linear, /255, blurred (sigma 5)
    image = cv2.resize(photo, (192, 128), interpolation=cv2.INTER_AREA).astype(np.float32)
    blurred = cv2.GaussianBlur(cv2.resize(mask, (192, 128), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0,
                               (0, 0), 5.0)
    image[blurred > 0.5] = -255.0
    assert hint.dtype == np.float32 and np.array_equal(hint, image)
    control = hint_tensor(hint)
    assert control.min().item() == -1.0 and control.max().item() <= 1.0
    assert control[0, :, 64, 96].tolist() == [-1.0, -1.0, -1.0]  # the mask's centre
    assert torch.equal(control[0, :, 2, 2], torch.from_numpy(image[2, 2] / 255.0).float())
    assert hint_picture(hint)[64, 96].tolist() == [0, 0, 0] and hint_picture(hint).dtype == np.uint8
    rgb_mask = np.stack([mask, np.zeros_like(mask), np.zeros_like(mask)], axis=2)  # the first channel counts
    assert np.array_equal(make_hint(Image.fromarray(photo), "inpaint", 192, 128, mask=rgb_mask), hint)
    boolean = make_hint(Image.fromarray(photo), "inpaint", 192, 128, mask=mask > 0)
    assert np.array_equal(boolean, hint)


def test_inpaint_needs_a_mask_of_the_images_or_the_outputs_size(photo):
    with pytest.raises(UsageError, match="needs a mask"):
        make_hint(Image.fromarray(photo), "inpaint", 192, 128)
    with pytest.raises(UsageError, match="the inpaint mask is 150x100 but the control image is 300x200 and the "
                                         "output 192x128"):
        make_hint(Image.fromarray(photo), "inpaint", 192, 128, mask=np.zeros((100, 150), np.uint8))
    # the inpaint command's own mask comes at the render size: the script's blur rule, no resize
    at_output = np.zeros((128, 192), dtype=bool)
    at_output[40:90, 60:140] = True
    hint = make_hint(Image.fromarray(photo), "inpaint", 192, 128, mask=at_output)
    blurred = cv2.GaussianBlur(at_output.astype(np.float32), (0, 0), 5.0)
    assert np.array_equal(hint[..., 0] == -255.0, blurred > 0.5) and (blurred > 0.5).sum() > 3000


# ---------------------------------------------------------------- the tensor and image modes


def test_hint_tensor_is_float_rgb_over_255_bchw(photo):
    hint = make_hint(Image.fromarray(photo), "none", 192, 128)
    control = hint_tensor(hint)
    assert control.shape == (1, 3, 128, 192) and control.dtype == torch.float32
    assert 0.0 <= control.min().item() and control.max().item() <= 1.0
    assert torch.equal(control[0, :, 5, 7], torch.tensor(hint[5, 7], dtype=torch.float32) / 255.0)
    assert control[0, 1, 100, 150].item() == np.float32(hint[100, 150, 1]) / np.float32(255.0)


def test_image_modes_become_rgb_as_hwc3():
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :32, 3] = 0  # transparent: white
    rgba[:, 32:, 3] = 128
    hint = make_hint(Image.fromarray(rgba, "RGBA"), "none", 64, 64)
    assert hint[0, 0].tolist() == [255, 255, 255]
    a = np.float32(128) / np.float32(255.0)
    expected = [int(np.float32(c) * a + np.float32(255.0) * (np.float32(1.0) - a)) for c in (10, 20, 30)]
    assert hint[0, 40].tolist() == expected
    grey = make_hint(Image.fromarray(np.full((64, 64), 77, np.uint8), "L"), "none", 64, 64)
    assert grey[3, 3].tolist() == [77, 77, 77]
    palette = Image.fromarray(np.full((64, 64, 3), (200, 100, 50), np.uint8)).convert("P")
    assert make_hint(palette, "none", 64, 64)[0, 0].tolist() == list(palette.convert("RGB").getpixel((0, 0)))


# ---------------------------------------------------------------- errors


def test_unknown_preprocessor_suggests_the_close_one(photo):
    with pytest.raises(UsageError) as err:
        make_hint(Image.fromarray(photo), "cany", 192, 128)
    assert str(err.value) == "--control-preprocess cany: no such preprocessor; did you mean canny?"
    with pytest.raises(UsageError, match=r"no such preprocessor; the preprocessors are none, canny, invert"):
        make_hint(Image.fromarray(photo), "zzzz", 192, 128)


@pytest.mark.parametrize("name", ["openpose", "normalbae", "pidinet"])
def test_annotators_sd_cli_cannot_run_are_refused_with_the_way_out(photo, name):
    with pytest.raises(UsageError) as err:
        make_hint(Image.fromarray(photo), name, 192, 128)
    message = str(err.value)
    assert "nothing is downloaded" in message and "--control-preprocess none" in message and "\n" not in message


@pytest.mark.parametrize("name, file", [("hed", "ControlNetHED.pth"), ("scribble-hed", "ControlNetHED.pth"),
                                        ("depth", "dpt_hybrid-midas-501f0c75.pt")])
def test_annotators_without_their_weights_file_say_which_file(photo, name, file):
    with pytest.raises(UsageError) as err:
        make_hint(Image.fromarray(photo), name, 192, 128)
    assert str(err.value) == (f"--control-preprocess {name} needs its annotator weights file {file}; give its local "
                              "path with --annotator-weights (nothing is downloaded), or give a prepared hint with "
                              "--control-preprocess none")


def test_bad_values_are_one_line_usage_errors(photo, tmp_path):
    image = Image.fromarray(photo)
    cases = [
        (dict(canny_low=200, canny_high=100), "--canny-low 200 is above --canny-high 100"),
        (dict(canny_low=-1), "cannot be negative"),
        (dict(detect_resolution=32), "--detect-resolution 32 is out of range; give 64 to 8192"),
        (dict(weights=tmp_path / "x.pth"), "--control-preprocess canny uses no annotator weights"),
    ]
    for options, text in cases:
        with pytest.raises(UsageError, match=text):
            make_hint(image, "canny", 192, 128, **options)
    with pytest.raises(UsageError, match="4x128 is too small"):
        make_hint(image, "none", 4, 128)


def test_every_listed_preprocessor_is_handled(photo):
    for name in PREPROCESSORS:
        try:
            hint = make_hint(Image.fromarray(photo), name, 64, 64, mask=np.zeros((200, 300), np.uint8))
        except UsageError as err:
            assert "weights file" in str(err) or "annotator network" in str(err)
        else:
            assert hint.shape == (64, 64, 3)


# ---------------------------------------------------------------- HED from a weights file


HED_STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


def random_hed_weights(seed: int = 0) -> dict:
    """ControlNetHED.pth's keys and shapes, random: He-scaled convolutions, projections to logits near 0."""
    g = torch.Generator().manual_seed(seed)
    weights = {"norm": torch.tensor([120.0, 115.0, 100.0]).view(1, 3, 1, 1)}
    for number, (cin, cout, convs) in enumerate(HED_STAGES, start=1):
        for i in range(convs):
            fan_in = (cin if i == 0 else cout) * 9
            weights[f"block{number}.convs.{i}.weight"] = torch.randn(cout, cin if i == 0 else cout, 3, 3, generator=g) * (2 / fan_in) ** 0.5
            weights[f"block{number}.convs.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
        weights[f"block{number}.projection.weight"] = torch.randn(1, cout, 1, 1, generator=g) * (0.2 / cout) ** 0.5
        weights[f"block{number}.projection.bias"] = torch.zeros(1)
    return weights


def reference_hed(pixels: np.ndarray, weights: dict, safe: bool = False) -> np.ndarray:
    """annotator/hed's ControlNetHED_Apache2 and HEDdetector, restated with torch.nn.functional."""
    h = torch.from_numpy(pixels.copy()).float().permute(2, 0, 1)[None] - weights["norm"]
    projections = []
    for number, (_, _, convs) in enumerate(HED_STAGES, start=1):
        if number > 1:
            h = F.max_pool2d(h, kernel_size=(2, 2), stride=(2, 2))
        for i in range(convs):
            h = F.relu(F.conv2d(h, weights[f"block{number}.convs.{i}.weight"], weights[f"block{number}.convs.{i}.bias"], padding=1))
        projections.append(F.conv2d(h, weights[f"block{number}.projection.weight"], weights[f"block{number}.projection.bias"]))
    height, width = pixels.shape[:2]
    edges = [cv2.resize(p.numpy().astype(np.float32)[0, 0], (width, height), interpolation=cv2.INTER_LINEAR)
             for p in projections]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(edges, axis=2), axis=2).astype(np.float64)))
    if safe:
        edge = (edge.astype(np.float32) * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def hed_file(tmp_path_factory):
    weights = random_hed_weights()
    path = tmp_path_factory.mktemp("hed") / "ControlNetHED.pth"
    torch.save(weights, path)
    return path, weights


def test_hed_soft_edge_matches_the_original_forward(photo, hed_file):
    path, weights = hed_file
    hint = make_hint(Image.fromarray(photo), "hed", 192, 128, detect_resolution=64, weights=path)
    detected = reference_hed(script_resize_image(photo, 64), weights)  # 64 x 128 (rounded), then linear up
    expected = cv2.resize(three(detected), (192, 128), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(hint, expected)  # the same float32 convolutions: the same logits, the same uint8
    assert hint.std() > 10  # the random network does find structure


def test_hed_safe_and_scribble_hed(photo, hed_file):
    path, weights = hed_file
    image = Image.fromarray(photo)
    safe = make_hint(image, "hed-safe", 192, 128, weights=path)  # detected at the output size: no last resize
    assert set(np.unique(safe)) == {0, 127, 255}
    expected = three(reference_hed(script_resize_image(photo, 128), weights, safe=True))
    assert np.array_equal(safe, expected)
    scribble = make_hint(image, "scribble-hed", 192, 128, detect_resolution=128, weights=path)
    soft = make_hint(image, "hed", 192, 128, detect_resolution=128, weights=path)
    assert np.array_equal(scribble, script_scribble(soft, 192, 128))


def test_hed_refuses_a_file_that_is_not_controlnethed(photo, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, other)
    with pytest.raises(CheckpointError, match="is not ControlNetHED.pth"):
        make_hint(Image.fromarray(photo), "hed", 64, 64, weights=other)


# ---------------------------------------------------------------- MiDaS depth from a weights file


@pytest.fixture(scope="module")
def midas_file(tmp_path_factory):
    pytest.importorskip("timm")
    from tiny_midas import tiny_dpt_weights

    weights = tiny_dpt_weights(3)
    folder = tmp_path_factory.mktemp("midas")
    torch.save(weights, folder / "dpt_hybrid-midas-501f0c75.pt")
    torch.save({"state_dict": {"depth_model.model." + k: v for k, v in weights.items()}}, folder / "sd2-depth.ckpt")
    return folder, weights


@pytest.mark.slow  # imports timm and builds a (tiny) ViT-hybrid
def test_depth_is_the_midas_detectors_min_max_of_the_dpt_hybrid(photo, midas_file):
    """MidasDetector: x / 127.5 - 1 at the detect resolution, DPT-Hybrid, min-max, uint8 truncated, linear to the
    output. The network is sd_cli's DPT-Hybrid (tests/pipelines/test_depth2img.py checks it against transformers')."""
    from sd_cli.models.midas import build_dpt_hybrid

    folder, weights = midas_file
    hint = make_hint(Image.fromarray(photo), "depth", 192, 128, detect_resolution=64,
                     weights=folder / "dpt_hybrid-midas-501f0c75.pt")
    network = build_dpt_hybrid(weights)
    network.load_state_dict(weights, assign=True)
    x = torch.from_numpy(script_resize_image(photo, 64)).float() / 127.5 - 1.0
    with torch.no_grad():
        depth = network.eval()(x.permute(2, 0, 1)[None])[0]
    depth -= torch.min(depth)
    depth /= torch.max(depth)
    detected = (depth.numpy() * 255.0).clip(0, 255).astype(np.uint8)
    assert detected.shape == (64, 128)
    expected = cv2.resize(three(detected), (192, 128), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(hint, expected) and detected.max() == 255 and detected.min() == 0 and detected.std() > 20
    from_sd_checkpoint = make_hint(Image.fromarray(photo), "depth", 192, 128, detect_resolution=64,
                                   weights=folder / "sd2-depth.ckpt")
    assert np.array_equal(from_sd_checkpoint, hint)


@pytest.mark.slow
def test_depth_refuses_other_weights(photo, hed_file):
    path, _ = hed_file
    with pytest.raises(CheckpointError, match="is not a MiDaS DPT-Hybrid"):
        make_hint(Image.fromarray(photo), "depth", 64, 64, weights=path)


def test_the_names_and_checks_load_without_numpy_cv2_torch_or_pil():
    """The CLI lists PREPROCESSORS and checks the flags at --help speed (it imports none of them)."""
    import subprocess
    import sys

    code = ("import sys; from sd_cli.control.preprocessors import PREPROCESSORS, check_hint_options; "
            "check_hint_options('canny', 512, 512, 384); "
            "print(len(PREPROCESSORS), [m for m in ('numpy', 'cv2', 'torch', 'PIL') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "20 []"


# ---------------------------------------------------------------- lineart from a weights file


def random_lineart_weights(seed: int = 0) -> dict:
    """sk_model.pth's keys and shapes (annotator/lineart's Generator(3, 1, 3)), random, He-scaled."""
    g = torch.Generator().manual_seed(seed)

    def conv(cout, cin, k, transposed=False):
        shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        return torch.randn(*shape, generator=g) * (2 / (cin * k * k)) ** 0.5, torch.randn(cout, generator=g) * 0.1

    layers = {"model0.1": conv(64, 3, 7), "model1.0": conv(128, 64, 3), "model1.3": conv(256, 128, 3),
              "model3.0": conv(128, 256, 3, True), "model3.3": conv(64, 128, 3, True), "model4.1": conv(1, 64, 7)}
    for block in range(3):
        layers[f"model2.{block}.conv_block.1"] = conv(256, 256, 3)
        layers[f"model2.{block}.conv_block.5"] = conv(256, 256, 3)
    return {f"{name}.{part}": tensor for name, (w, b) in layers.items() for part, tensor in (("weight", w), ("bias", b))}


def reference_lineart(pixels: np.ndarray, w: dict) -> np.ndarray:
    """annotator/lineart's Generator and LineartDetector, restated with torch.nn.functional."""
    def conv(x, name, pad=0, stride=1, padding=0):
        if pad:
            x = F.pad(x, (pad,) * 4, mode="reflect")
        return F.conv2d(x, w[name + ".weight"], w[name + ".bias"], stride=stride, padding=padding)

    def up(x, name):
        return F.conv_transpose2d(x, w[name + ".weight"], w[name + ".bias"], stride=2, padding=1, output_padding=1)

    x = torch.from_numpy(pixels.copy()).float().permute(2, 0, 1)[None] / 255.0
    x = F.relu(F.instance_norm(conv(x, "model0.1", pad=3)))
    x = F.relu(F.instance_norm(conv(x, "model1.0", stride=2, padding=1)))
    x = F.relu(F.instance_norm(conv(x, "model1.3", stride=2, padding=1)))
    for block in range(3):
        h = F.relu(F.instance_norm(conv(x, f"model2.{block}.conv_block.1", pad=1)))
        x = x + F.instance_norm(conv(h, f"model2.{block}.conv_block.5", pad=1))
    x = F.relu(F.instance_norm(up(x, "model3.0")))
    x = F.relu(F.instance_norm(up(x, "model3.3")))
    line = torch.sigmoid(conv(x, "model4.1", pad=3))[0][0]
    return (line.numpy() * 255.0).clip(0, 255).astype(np.uint8)


def test_lineart_matches_the_original_generator_inverted_as_the_script(photo, tmp_path):
    weights = random_lineart_weights()
    torch.save(weights, tmp_path / "sk_model.pth")
    torch.save(weights, tmp_path / "sk_model2.pth")
    hint = make_hint(Image.fromarray(photo), "lineart", 192, 128, weights=tmp_path / "sk_model.pth")
    lines = reference_lineart(script_resize_image(photo, 128), weights)
    assert lines.shape == (128, 192) and lines.std() > 10
    # gradio_lineart.py: control = 1 - HWC3(lines resized linear) / 255, i.e. the hint 255 - lines
    assert np.array_equal(hint, 255 - three(lines))
    assert np.abs(hint_tensor(hint)[0].permute(1, 2, 0).numpy() - (1.0 - three(lines) / np.float32(255.0))).max() < 1e-6
    coarse = make_hint(Image.fromarray(photo), "lineart-coarse", 192, 128, detect_resolution=64,
                       weights=tmp_path / "sk_model2.pth")
    small = reference_lineart(script_resize_image(photo, 64), weights)
    assert np.array_equal(coarse, 255 - cv2.resize(three(small), (192, 128), interpolation=cv2.INTER_LINEAR))
    with pytest.raises(CheckpointError, match="is not a lineart annotator"):
        make_hint(Image.fromarray(photo), "lineart", 64, 64, weights=Path(random_hed_file(tmp_path)))


def random_hed_file(folder) -> str:
    path = folder / "ControlNetHED.pth"
    torch.save(random_hed_weights(1), path)
    return str(path)


def test_a_missing_weights_file_is_a_one_line_error(photo, tmp_path):
    with pytest.raises(CheckpointError, match="no such file; check the checkpoint path"):
        make_hint(Image.fromarray(photo), "hed", 64, 64, weights=tmp_path / "ControlNetHED.pth")


# ---------------------------------------------------------------- M-LSD from a weights file


class Params:
    """The reference's tensors by name: made at random on the first pass (the reference defines the
    shapes, not sd_cli), read back on the next."""

    def __init__(self, weights: dict | None = None, seed: int = 0):
        self.weights, self.making = ({} if weights is None else weights), weights is None
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, name: str, shape: tuple, kind: str) -> torch.Tensor:
        if self.making:
            noise = torch.randn(*shape, generator=self.g)
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            self.weights[name] = {"conv": noise * (2 / fan_in) ** 0.5, "bias": 0.1 * noise, "gamma": 1 + 0.1 * noise,
                                  "var": 1 + 0.5 * torch.rand(*shape, generator=self.g)}[kind]
        return self.weights[name]


def reference_mlsd_maps(x: torch.Tensor, p: Params) -> torch.Tensor:
    """annotator/mlsd/models/mbv2_mlsd_large.py's MobileV2_MLSD_Large, restated with torch.nn.functional."""
    def conv(x, name, cin, cout, k, stride=1, padding=0, groups=1, dilation=1, bias=True):
        w = p(name + ".weight", (cout, cin // groups, k, k), "conv")
        b = p(name + ".bias", (cout,), "bias") if bias else None
        return F.conv2d(x, w, b, stride=stride, padding=padding, groups=groups, dilation=dilation)

    def bn(x, name, c):
        if p.making:
            p.weights[name + ".num_batches_tracked"] = torch.tensor(0)
        return F.batch_norm(x, p(name + ".running_mean", (c,), "bias"), p(name + ".running_var", (c,), "var"),
                            p(name + ".weight", (c,), "gamma"), p(name + ".bias", (c,), "bias"), training=False)

    def cbr6(x, name, cin, cout, k=3, stride=1, groups=1):  # ConvBNReLU, TFLite padding at stride 2
        if stride == 2:
            x = F.pad(x, (0, 1, 0, 1), "constant", 0)
        x = conv(x, name + ".0", cin, cout, k, stride, 0 if stride == 2 else (k - 1) // 2, groups, bias=False)
        return F.relu6(bn(x, name + ".1", cout))

    def inverted(x, name, cin, cout, stride, t):
        hidden, j, h = int(round(cin * t)), 0, x
        if t != 1:
            h, j = cbr6(h, f"{name}.conv.0", cin, hidden, k=1), 1
        h = cbr6(h, f"{name}.conv.{j}", hidden, hidden, stride=stride, groups=hidden)
        h = bn(conv(h, f"{name}.conv.{j + 1}", hidden, cout, 1, bias=False), f"{name}.conv.{j + 2}", cout)
        return x + h if stride == 1 and cin == cout else h

    def cbr(x, name, cin, cout, k, dilation=1):
        x = conv(x, name + ".0", cin, cout, k, padding=dilation * (k - 1) // 2, dilation=dilation)
        return F.relu(bn(x, name + ".1", cout))

    def block_a(a, b, name, in_c1, in_c2, upscale=True):
        b = cbr(b, name + ".conv1", in_c2, 64, 1)
        a = cbr(a, name + ".conv2", in_c1, 64, 1)
        if upscale:
            b = F.interpolate(b, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((a, b), dim=1)

    def block_b(x, name):
        x = cbr(x, name + ".conv1", 128, 128, 3) + x
        return cbr(x, name + ".conv2", 128, 64, 3)

    x, taps, index, cin = cbr6(x, "backbone.features.0", 4, 32, stride=2), [], 1, 32
    for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1]]:
        for i in range(n):
            x = inverted(x, f"backbone.features.{index}", cin, c, s if i == 0 else 1, t)
            if index in (1, 3, 6, 10, 13):
                taps.append(x)
            index, cin = index + 1, c
    c1, c2, c3, c4, c5 = taps
    x = block_b(block_a(c4, c5, "block15", 64, 96, upscale=False), "block16")
    x = block_b(block_a(c3, x, "block17", 32, 64), "block18")
    x = block_b(block_a(c2, x, "block19", 24, 64), "block20")
    x = block_b(block_a(c1, x, "block21", 16, 64), "block22")
    x = cbr(cbr(x, "block23.conv1", 64, 64, 3, dilation=5), "block23.conv2", 64, 64, 3)
    return conv(x, "block23.conv3", 64, 16, 1)[:, 7:, :, :]


def reference_mlsd(image: np.ndarray, p: Params, thr_v: float, thr_d: float) -> np.ndarray:
    """annotator/mlsd's MLSDdetector and utils.pred_lines (input_shape = the image's own), restated."""
    h, w, _ = image.shape
    resized = np.concatenate([cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), np.ones([h, w, 1])], axis=-1)
    batch = np.expand_dims(resized.transpose((2, 0, 1)), axis=0).astype("float32")
    with torch.no_grad():
        tp = reference_mlsd_maps(torch.from_numpy((batch / 127.5) - 1.0).float(), p)
    _, _, th, tw = tp.shape
    heat = torch.sigmoid(tp[:, 0, :, :])
    heat = heat * (F.max_pool2d(heat, (3, 3), stride=1, padding=1) == heat).float()
    scores, indices = torch.topk(heat.reshape(-1,), 200, dim=-1, largest=True)
    pts = torch.cat((torch.floor_divide(indices, tw).unsqueeze(-1), torch.fmod(indices, tw).unsqueeze(-1)), dim=-1)
    vmap = tp[:, 1:5, :, :][0].numpy().transpose((1, 2, 0))
    dist = np.sqrt(np.sum((vmap[:, :, :2] - vmap[:, :, 2:]) ** 2, axis=-1))
    segments = []
    for (y, x), score in zip(pts.numpy(), scores.numpy()):
        if score > thr_v and dist[y, x] > thr_d:
            dx0, dy0, dx1, dy1 = vmap[y, x, :]
            segments.append([x + dx0, y + dy0, x + dx1, y + dy1])
    out = np.zeros_like(image)
    for line in 2 * np.array(segments):
        x0, y0, x1, y1 = [int(v) for v in line]
        cv2.line(out, (x0, y0), (x1, y1), [255, 255, 255], 1)
    return out[:, :, 0]


def test_mlsd_matches_the_original_detector(photo, tmp_path):
    params = Params(seed=4)
    reference_mlsd_maps(torch.zeros(1, 4, 64, 64), params)  # first pass: the weights
    torch.save(params.weights, tmp_path / "mlsd_large_512_fp32.pth")
    reader = Params(params.weights)
    image = Image.fromarray(photo)
    hint = make_hint(image, "mlsd", 192, 128, weights=tmp_path / "mlsd_large_512_fp32.pth")
    lines = reference_mlsd(script_resize_image(photo, 128), reader, 0.1, 0.1)
    assert 0.01 < (lines == 255).mean() < 0.9  # the random network does draw segments
    assert np.array_equal(hint, three(lines))
    strict = make_hint(image, "mlsd", 192, 128, weights=tmp_path / "mlsd_large_512_fp32.pth",
                       mlsd_score=0.6, mlsd_distance=8.0)
    assert np.array_equal(strict, three(reference_mlsd(script_resize_image(photo, 128), reader, 0.6, 8.0)))
    assert (strict == 255).sum() < (hint == 255).sum()
    with pytest.raises(UsageError, match="M-LSD thresholds -1 and 0.1 cannot be negative"):
        make_hint(image, "mlsd", 192, 128, weights=tmp_path / "mlsd_large_512_fp32.pth", mlsd_score=-1)


# ---------------------------------------------------------------- anime lineart from a weights file


def reference_anime_unet(x: torch.Tensor, w: dict) -> torch.Tensor:
    """annotator/lineart_anime's UnetGenerator(3, 1, 8, 64), instance norms without weights, restated."""
    def level(x, prefix, depth):
        down = F.conv2d(F.leaky_relu(x, 0.2), w[prefix + "1.weight"], w[prefix + "1.bias"], stride=2, padding=1)
        if depth == 8:  # innermost: no norm, no level inside
            up_index = 3
            inner = down
        else:
            inner = level(F.instance_norm(down), prefix + "3.model.", depth + 1)
            up_index = 5
        up = F.conv_transpose2d(F.relu(inner), w[f"{prefix}{up_index}.weight"], w[f"{prefix}{up_index}.bias"],
                                stride=2, padding=1)
        return torch.cat([x, F.instance_norm(up)], 1)

    h = F.conv2d(x, w["model.model.0.weight"], w["model.model.0.bias"], stride=2, padding=1)
    h = level(h, "model.model.1.model.", 2)
    return torch.tanh(F.conv_transpose2d(F.relu(h), w["model.model.3.weight"], w["model.model.3.bias"],
                                         stride=2, padding=1))


def random_anime_weights(seed: int = 0) -> dict:
    """netG.pth's keys and shapes, written out level by level (ngf 64, 8 downs), random, He-scaled."""
    g = torch.Generator().manual_seed(seed)
    channels = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    weights, prefix = {}, "model.model."
    for depth, (outer, inner) in enumerate(channels, start=1):
        down, up, up_in = ("0", "3", 2 * inner) if depth == 1 else (("1", "3", inner) if depth == 8 else ("1", "5", 2 * inner))
        weights[prefix + down + ".weight"] = torch.randn(inner, outer, 4, 4, generator=g) * (2 / (outer * 16)) ** 0.5
        weights[prefix + down + ".bias"] = 0.1 * torch.randn(inner, generator=g)
        out = 1 if depth == 1 else outer
        weights[prefix + up + ".weight"] = torch.randn(up_in, out, 4, 4, generator=g) * (2 / (up_in * 4)) ** 0.5
        weights[prefix + up + ".bias"] = 0.1 * torch.randn(out, generator=g)
        prefix += "1.model." if depth == 1 else "3.model."
    return weights


@pytest.mark.slow  # the generator has no size parameter: 54 M random weights, written and read back
def test_lineart_anime_matches_the_original_generator(photo, tmp_path):
    weights = random_anime_weights()
    torch.save({"module." + key: value for key, value in weights.items()}, tmp_path / "netG.pth")  # DataParallel names
    hint = make_hint(Image.fromarray(photo), "lineart-anime", 192, 128, weights=tmp_path / "netG.pth")
    detect = script_resize_image(photo, 128)  # 128 x 192 -> 256 x 256 bicubic for the generator
    feed = torch.from_numpy(cv2.resize(detect, (256, 256), interpolation=cv2.INTER_CUBIC)).float() / 127.5 - 1.0
    with torch.no_grad():
        line = reference_anime_unet(feed.permute(2, 0, 1)[None], weights)[0, 0] * 127.5 + 127.5
    line = cv2.resize(line.numpy(), (192, 128), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    assert line.std() > 5
    assert np.array_equal(hint, 255 - three(line))  # gradio_lineart_anime.py: control = 1 - lines / 255


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_annotators_run_on_the_given_device(photo, tmp_path):
    """The same hints on CUDA as on the CPU, up to float rounding at a few edge pixels."""
    torch.save(random_hed_weights(), tmp_path / "ControlNetHED.pth")
    torch.save(random_lineart_weights(), tmp_path / "sk_model.pth")
    image = Image.fromarray(photo)
    for name, file in (("hed", "ControlNetHED.pth"), ("lineart", "sk_model.pth")):
        on_cpu = make_hint(image, name, 192, 128, weights=tmp_path / file)
        on_gpu = make_hint(image, name, 192, 128, weights=tmp_path / file, device="cuda")
        difference = np.abs(on_cpu.astype(int) - on_gpu)
        print(f"{name}: max {difference.max()}, {(difference > 0).mean():.4f} of the pixels differ")
        assert difference.max() <= 3 and (difference > 0).mean() < 0.05
