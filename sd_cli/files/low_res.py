"""The x4 upscaler's input image, fitted to the multiples of 64 its UNet needs, as the original scripts do
(docs/reference/controlnet-x4.md, "Low-res input"):

- "floor" (scripts/streamlit/superresolution.py): each side floored to a multiple of 64 and the image
  resized with PIL's default filter, bicubic (PIL returns an unchanged copy when nothing changes);
- "pad" (scripts/gradio/superresolution.py): edge padding at the bottom and right up to
  max(2, ceil(side / 64)) * 64, so at least 128 a side; the output keeps the padding, as there.

Pixels become x / 127.5 - 1 in float32, the scripts' own formula.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sd_cli import log
from sd_cli.errors import UsageError
from sd_cli.fields import SIZE_MULTIPLE

if TYPE_CHECKING:
    import torch

FITS = ("floor", "pad")
PAD_MIN_BLOCKS = 2  # the gradio script's np.max(((2, 2), ...)): at least 128 pixels a side


def load_low_res(path: str | Path, fit: str) -> "torch.Tensor":
    """The upscaler's input [1, 3, h, w] in [-1, 1], h and w multiples of 64."""
    import torch

    from sd_cli.files.images import as_mode, open_image

    image = as_mode(open_image(Path(path), "input image"), "RGB", path, "input image")
    pixels = floor_fit(image, path) if fit == "floor" else pad_fit(np.asarray(image))
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])).to(torch.float32)
    return x / 127.5 - 1.0


def floor_fit(image, path) -> np.ndarray:
    """The streamlit script's fit: [h, w, 3] uint8 of the image resized down to multiples of 64."""
    w, h = image.size
    if w < SIZE_MULTIPLE or h < SIZE_MULTIPLE:
        raise UsageError(f"input image {path} is {w}x{h}: --upscale-fit floor needs at least {SIZE_MULTIPLE}x"
                         f"{SIZE_MULTIPLE} pixels; use --upscale-fit pad for smaller images")
    size = (w - w % SIZE_MULTIPLE, h - h % SIZE_MULTIPLE)
    if size != (w, h):
        log.info(f"resized {w}x{h} -> {size[0]}x{size[1]} (multiples of {SIZE_MULTIPLE}, bicubic, as the streamlit script)")
    from PIL import Image

    return np.asarray(image.resize(size, resample=Image.BICUBIC))  # the script's default filter (Pillow >= 7)


def padded_side(side: int) -> int:
    return max(PAD_MIN_BLOCKS, math.ceil(side / SIZE_MULTIPLE)) * SIZE_MULTIPLE


def pad_fit(pixels: np.ndarray) -> np.ndarray:
    """The gradio script's fit: [h, w, 3] edge-padded at the bottom and right."""
    h, w = pixels.shape[:2]
    pad_h, pad_w = padded_side(h) - h, padded_side(w) - w
    if pad_h or pad_w:
        log.info(f"padded {w}x{h} -> {w + pad_w}x{h + pad_h} (edge pixels repeated, as the gradio script)")
    return np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
