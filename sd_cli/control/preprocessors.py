"""The hint a ControlNet sees, from the user's control image: the scripts' preprocessing (minimal set).

This file holds "none" (the image is the hint) and "canny" (the scripts' OpenCV call); the full set of
preprocessors is written in the control-hints branch with this same interface.

Resizing follows lllyasviel/ControlNet's annotator/util.py: cv2.resize with INTER_LANCZOS4 when
enlarging, else INTER_AREA. Canny runs on the 3-channel uint8 image (aperture 3, L1 gradient) at the
output size, or with a detect resolution (v1.1) on the image resized to it, its map then resized to
the output size with INTER_LINEAR, as v1.1's gradio_canny.py.
"""

from pathlib import Path

import numpy as np
import torch

from sd_cli.errors import UsageError

PREPROCESSORS: tuple[str, ...] = ("none", "canny")


def make_hint(image, preprocessor: str, width: int, height: int, *, detect_resolution: int | None = None,
              canny_low: int = 100, canny_high: int = 200, weights: Path | None = None) -> np.ndarray:
    """The hint as uint8 HWC RGB, (height, width, 3)."""
    del weights  # no preprocessor here needs annotator weights
    if preprocessor not in PREPROCESSORS:
        raise UsageError(f"--control-preprocess {preprocessor}: unknown; choose from {', '.join(PREPROCESSORS)}")
    rgb = hwc3(np.asarray(image.convert("RGB")))
    if preprocessor == "none":
        return resized(rgb, width, height)
    return canny(rgb, width, height, detect_resolution, canny_low, canny_high)


def hint_tensor(hint: np.ndarray) -> torch.Tensor:
    """float32 in [0, 1], (1, 3, H, W): the scripts' `float32(hint) / 255`, HWC -> BCHW."""
    return torch.from_numpy(np.array(hint, copy=True)).float().div(255.0).permute(2, 0, 1)[None].contiguous()


def hwc3(image: np.ndarray) -> np.ndarray:
    """annotator.util.HWC3: grey to 3 channels; RGBA composited on white."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.concatenate([image] * 3, axis=2)
    if image.shape[2] == 4:
        color, alpha = image[:, :, :3].astype(np.float32), image[:, :, 3:4].astype(np.float32) / 255.0
        return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    return image


def resized(image: np.ndarray, width: int, height: int, enlarge=None, shrink=None) -> np.ndarray:
    import cv2

    if image.shape[:2] == (height, width):
        return image
    enlarging = height * width > image.shape[0] * image.shape[1]
    interpolation = (enlarge if enlarging else shrink) or (cv2.INTER_LANCZOS4 if enlarging else cv2.INTER_AREA)
    return cv2.resize(image, (width, height), interpolation=interpolation)


def detect_size(image: np.ndarray, resolution: int) -> tuple[int, int]:
    """annotator.util.resize_image's (width, height): the short side to `resolution`, each side rounded to 64."""
    h, w = image.shape[:2]
    k = resolution / min(h, w)
    return int(np.round(w * k / 64.0)) * 64, int(np.round(h * k / 64.0)) * 64


def canny(rgb: np.ndarray, width: int, height: int, detect_resolution: int | None, low: int, high: int) -> np.ndarray:
    import cv2

    if detect_resolution is None:
        return hwc3(cv2.Canny(resized(rgb, width, height), low, high))
    edges = hwc3(cv2.Canny(resized(rgb, *detect_size(rgb, detect_resolution)), low, high))
    return cv2.resize(edges, (width, height), interpolation=cv2.INTER_LINEAR)
