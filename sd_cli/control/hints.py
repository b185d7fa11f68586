"""ControlNet hints' pixels: the picture a ControlNet is conditioned on, made from the control image.

The names, checks and entry points are control/preprocessors.py's. Each preprocessor here computes what lllyasviel/ControlNet-v1-1-nightly's gradio_*.py scripts compute
(docs/usage.md "ControlNet hints"; the reference's "Preprocessing" and "Control tensor"):

- the input as RGB uint8, grey repeated and alpha composited on white (the scripts' HWC3);
- detectors run on `resize_image(input, detect_resolution)` and their map is resized to the output
  size with INTER_LINEAR (v1.1); the default detect resolution is the output's short side, which for
  an output size that `resize_image` itself gives makes that last resize the identity (v1.0's rule);
- where a script uses the input itself at the output size, it is resized with `resize_image`'s
  interpolation rule (LANCZOS4 enlarging, AREA otherwise), so an output size that `resize_image`
  would give reproduces the script's pixels exactly;
- the hint tensor is float32(hint) / 255 as BCHW: [0, 1], except inpaint's masked pixels at -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SHUFFLE_CELL = 256  # the content shuffle's noise cell size in pixels (the script's f=256)
SCRIBBLE_THRESHOLD = 127  # the scribble script's nms threshold and sigma, then its blur and cut-off
SCRIBBLE_SIGMA = 3.0
SCRIBBLE_CUT = 4


@dataclass(frozen=True)
class HintInput:
    """One hint's inputs, already checked (preprocessors.py): the image as HWC3 uint8 RGB, the output size."""

    pixels: np.ndarray
    width: int
    height: int
    detect_resolution: int
    canny_low: int
    canny_high: int
    weights: Path | None
    seed: int
    mask: np.ndarray | None
    mask_blur: float
    mlsd_score: float
    mlsd_distance: float
    device: str  # where the annotator networks run


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """The scripts' resize_image: short side to `resolution`, both sides rounded to multiples of 64.

    LANCZOS4 when enlarging, AREA otherwise (an image already at that size comes back unchanged).
    """
    height, width = image.shape[:2]
    k = float(resolution) / min(height, width)
    size = (int(np.round(width * k / 64.0)) * 64, int(np.round(height * k / 64.0)) * 64)
    return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """An image of any mode as HWC3 uint8 RGB: grey repeated, alpha composited on white (the scripts' HWC3)."""
    if image.mode not in ("RGB", "RGBA", "L"):
        has_alpha = "A" in image.mode or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return hwc3(np.asarray(image))


def hwc3(x: np.ndarray) -> np.ndarray:
    """uint8 with 1, 3 or 4 channels (or none) -> 3 channels; alpha over white as the scripts' HWC3."""
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    color = x[:, :, :3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------- resizing as the scripts do


def _to_output(detected: np.ndarray, request: HintInput) -> np.ndarray:
    """A detected map at the output size, INTER_LINEAR (every v1.1 script's last resize)."""
    return cv2.resize(detected, (request.width, request.height), interpolation=cv2.INTER_LINEAR)


def _input_at_output(request: HintInput) -> np.ndarray:
    """The input itself at the output size with resize_image's interpolation (LANCZOS4 up, AREA down)."""
    enlarging = min(request.width, request.height) > min(request.pixels.shape[:2])
    return cv2.resize(request.pixels, (request.width, request.height),
                      interpolation=cv2.INTER_LANCZOS4 if enlarging else cv2.INTER_AREA)


def _at_detect_resolution(request: HintInput) -> np.ndarray:
    return resize_image(request.pixels, request.detect_resolution)


# ---------------------------------------------------------------- the preprocessors


def _none(request: HintInput) -> np.ndarray:
    """The image is the hint (the scripts' "None"), resized to the output with INTER_LINEAR."""
    return _to_output(request.pixels, request)


def _canny(request: HintInput) -> np.ndarray:
    """cv2.Canny on the 3-channel RGB at the detect resolution (aperture 3, L1), then to the output."""
    edges = cv2.Canny(_at_detect_resolution(request), request.canny_low, request.canny_high)
    return _to_output(hwc3(edges), request)


def _invert(request: HintInput) -> np.ndarray:
    """Black lines on white made white on black, as the lineart scripts' `1 - hint` on a user's drawing."""
    return 255 - _to_output(request.pixels, request)


def _threshold(request: HintInput) -> np.ndarray:
    """The interactive scribble script: white where the darkest channel is above 127, else black."""
    image = _input_at_output(request)
    return np.where(image.min(axis=2, keepdims=True) > 127, 255, 0).astype(np.uint8).repeat(3, axis=2)


def _scribble(request: HintInput) -> np.ndarray:
    """The scribble script on a given map (white strokes on black): thinned, blurred, binarised."""
    return _scribble_from(_to_output(request.pixels, request))


def _scribble_from(lines: np.ndarray) -> np.ndarray:
    thin = _thin_lines(lines, SCRIBBLE_THRESHOLD, SCRIBBLE_SIGMA)
    blurred = cv2.GaussianBlur(thin, (0, 0), SCRIBBLE_SIGMA)
    return np.where(blurred > SCRIBBLE_CUT, 255, 0).astype(np.uint8)


_RIDGE_KERNELS = [np.array(k, dtype=np.uint8) for k in (
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]


def _thin_lines(x: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """The scripts' nms: after a Gaussian blur, 255 where a pixel is the maximum of its 3-pixel line in
    one of four directions and above `threshold`, else 0."""
    blurred = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    ridge = np.zeros(blurred.shape, dtype=bool)
    for kernel in _RIDGE_KERNELS:
        ridge |= cv2.dilate(blurred, kernel=kernel) == blurred
    return np.where(ridge & (blurred > threshold), 255, 0).astype(np.uint8)


def _shuffle(request: HintInput) -> np.ndarray:
    """v1.1's content shuffle: the full-size input sampled through a smooth random flow at the output size.

    The flow's noise comes from `np.random.RandomState(seed)`, the stream the script's
    `np.random.seed(seed)` gives, drawn x first, then y.
    """
    rng = np.random.RandomState(request.seed)
    in_height, in_width = request.pixels.shape[:2]
    x = _noise_disk(rng, request.height, request.width, SHUFFLE_CELL) * float(in_width - 1)
    y = _noise_disk(rng, request.height, request.width, SHUFFLE_CELL) * float(in_height - 1)
    flow = np.stack([x, y], axis=2).astype(np.float32)
    return cv2.remap(request.pixels, flow, None, cv2.INTER_LINEAR)


def _noise_disk(rng: np.random.RandomState, height: int, width: int, cell: int) -> np.ndarray:
    """Uniform noise on a grid of `cell` pixels, bicubic-upsampled past the edges, cropped, scaled to [0, 1]."""
    coarse = rng.uniform(low=0, high=1, size=(height // cell + 2, width // cell + 2, 1))
    smooth = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    smooth = smooth[cell:cell + height, cell:cell + width]
    smooth = smooth - smooth.min()
    return smooth / smooth.max()


def _tile(request: HintInput) -> np.ndarray:
    """The released v1.1 tile script: the input resized to the output with INTER_LINEAR (as "none")."""
    return _to_output(request.pixels, request)


def _blur(request: HintInput) -> np.ndarray:
    """The tile script before the released tile model: the input at 1/8 size (AREA), then three pyrUp.

    An output side that is not a multiple of 8 is reached by a last INTER_LINEAR resize.
    """
    small = cv2.resize(request.pixels, (request.width // 8, request.height // 8), interpolation=cv2.INTER_AREA)
    for _ in range(3):
        small = cv2.pyrUp(small)
    if small.shape[:2] != (request.height, request.width):
        small = _to_output(small, request)
    return small


def _inpaint(request: HintInput) -> np.ndarray:
    """v1.1's inpaint hint: the input at the output size, float32 0..255, -255 where the blurred mask is above 0.5."""
    hint = _input_at_output(request).astype(np.float32)
    hint[_inpaint_mask(request) > 0.5] = -255.0
    return hint


def _inpaint_mask(request: HintInput) -> np.ndarray:
    """The mask's first channel at the output size (INTER_LINEAR) in [0, 1], Gaussian-blurred by mask_blur."""
    mask = request.mask
    first = mask if mask.ndim == 2 else mask[:, :, 0]
    first = first.astype(np.uint8) * 255 if first.dtype == bool else first.astype(np.uint8)
    resized = cv2.resize(first, (request.width, request.height), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(resized.astype(np.float32) / 255.0, (0, 0), request.mask_blur)


def _hed(request: HintInput, safe: bool = False) -> np.ndarray:
    """v1.1's soft edge (HED): ControlNetHED at the detect resolution, then to the output."""
    from sd_cli.control.hed import soft_edges

    edges = soft_edges(_at_detect_resolution(request), request.weights, safe=safe, device=request.device)
    return _to_output(hwc3(edges), request)


def _hed_safe(request: HintInput) -> np.ndarray:
    """The soft edge script's "HED_safe": HED quantised by safe_step."""
    return _hed(request, safe=True)


def _scribble_hed(request: HintInput) -> np.ndarray:
    """The scribble script's "Scribble_HED": HED, at the output size, thinned, blurred and binarised."""
    return _scribble_from(_hed(request))


def _depth(request: HintInput) -> np.ndarray:
    """v1.1's depth (MiDaS DPT-Hybrid): relative inverse depth, min-max to 0..255, then to the output."""
    from sd_cli.control.depth import depth_map

    depth = depth_map(_at_detect_resolution(request), request.weights, device=request.device)
    return _to_output(hwc3(depth), request)


def _lineart(request: HintInput) -> np.ndarray:
    """v1.1's lineart (informative-drawings, fine or coarse by the weights file): its dark-on-white lines
    at the detect resolution, to the output, then inverted as the lineart script's `1 - hint`."""
    from sd_cli.control.lineart import line_drawing

    lines = line_drawing(_at_detect_resolution(request), request.weights, device=request.device)
    return 255 - _to_output(hwc3(lines), request)


def _lineart_anime(request: HintInput) -> np.ndarray:
    """v1.1's anime lineart (Anime2Sketch) at the detect resolution, to the output, inverted as its script."""
    from sd_cli.control.lineart_anime import anime_line_drawing

    lines = anime_line_drawing(_at_detect_resolution(request), request.weights, device=request.device)
    return 255 - _to_output(hwc3(lines), request)


def _mlsd(request: HintInput) -> np.ndarray:
    """v1.1's M-LSD straight lines at the detect resolution, drawn white on black, then to the output."""
    from sd_cli.control.mlsd import line_segments_map

    lines = line_segments_map(_at_detect_resolution(request), request.weights, request.mlsd_score,
                              request.mlsd_distance, device=request.device)
    return _to_output(hwc3(lines), request)


MAKERS = {
    "none": _none, "canny": _canny, "invert": _invert, "threshold": _threshold, "scribble": _scribble,
    "shuffle": _shuffle, "tile": _tile, "blur": _blur, "inpaint": _inpaint,
    "hed": _hed, "hed-safe": _hed_safe, "scribble-hed": _scribble_hed, "depth": _depth,
    "lineart": _lineart, "lineart-coarse": _lineart, "lineart-anime": _lineart_anime,
    "mlsd": _mlsd,
}
