"""Pixels in and out: decoded tensors to uint8 arrays, grids, img2img init images, and every input
image's pixels as RGB or grey whatever its PIL mode.

Conventions at these boundaries: model tensors are NCHW floats in [-1, 1]; arrays handed to the
writers are HWC uint8 RGB.

Input modes: PIL's own conversions clip 16-bit and float pixels at 255, so a 16-bit PNG would read
as almost white. Here integer modes I;16* and I are read on the 16-bit scale (0-65535, what a 16-bit
PNG holds) and reduced to their high byte, as PIL reduces 16-bit RGB PNGs; float mode F is read on
0-1. Pixels outside those scales are refused rather than guessed at. Every other mode (1, L, P, LA,
PA, RGBA, CMYK, YCbCr, ...) goes through PIL's conversion, alpha dropped as the original does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sd_cli import log
from sd_cli.errors import SdCliError, UsageError
from sd_cli.fields import SIZE_MULTIPLE  # image sides: docs/reference/original-scripts.md §10.3

if TYPE_CHECKING:  # torch is imported inside functions so that `--help` never loads it
    import torch

GRID_PADDING = 2  # torchvision.utils.make_grid default, used by the original scripts
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # one channel on the 0-65535 scale
FLOAT_MODE = "F"  # one channel on the 0-1 scale


def to_uint8(images: "torch.Tensor", float_mark: str | None = None) -> list[np.ndarray]:
    """Decoded images [B, 3, H, W] in [-1, 1] -> list of [H, W, 3] uint8, exactly as the scripts do.

    `float_mark`: a watermark generative-models embeds in the float image (files/watermark.py
    add_float_watermark), embedded here between the clamp and the truncation, as its demo saves.

    The original computes ``clamp((x + 1) / 2, 0, 1)``, then ``255. * x`` in numpy and
    ``.astype(np.uint8)``, which truncates (docs/reference/original-scripts.md §3.5). Here it is always float32,
    whatever the input dtype: under ``--precision autocast`` the original went through fp16, so
    its bytes can differ from these by one level where fp16 rounding crosses an integer.
    NaN pixels (an fp16 overflow upstream) are saved black, as the original's cast tended to do,
    with a warning instead of numpy's undefined cast.
    """
    import torch

    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped [B, 3, H, W], got {list(images.shape)}")
    x = images.detach().to(device="cpu", dtype=torch.float32)
    x = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)
    nan = torch.isnan(x)
    if nan.any():
        bad = int(nan.flatten(1).any(dim=1).sum())
        log.warn(f"{bad} image(s) contain NaN values (numerical overflow, often from fp16): "
                 "those pixels are saved black; try running in float32")
        x = torch.nan_to_num(x, nan=0.0)
    hwc = list(x.permute(0, 2, 3, 1).numpy())  # [H, W, 3] float32 in [0, 1] each
    if float_mark is not None:
        from sd_cli.files.watermark import add_float_watermark

        hwc = [add_float_watermark(image, float_mark) for image in hwc]
    return [(255.0 * image).astype(np.uint8) for image in hwc]


def make_grid(images: list[np.ndarray], per_row: int) -> np.ndarray:
    """Tile [H, W, 3] uint8 images like ``torchvision.utils.make_grid(nrow=per_row, padding=2)``.

    ``min(per_row, N)`` columns and ``ceil(N / columns)`` rows of (H+2)x(W+2) cells, plus a
    2-pixel border on the top and left; gutters are black. As in torchvision, a single image
    comes back as it is, without any border.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if per_row < 1:
        raise ValueError(f"per_row must be at least 1, got {per_row}")
    shape = images[0].shape
    if any(image.shape != shape for image in images):
        raise ValueError("make_grid needs images of one size: "
                         f"got {sorted({image.shape for image in images})}")
    if len(images) == 1:
        return images[0].copy()

    h, w, c = shape
    pad = GRID_PADDING
    cols = min(per_row, len(images))
    rows = math.ceil(len(images) / cols)
    cell_h, cell_w = h + pad, w + pad
    grid = np.zeros((rows * cell_h + pad, cols * cell_w + pad, c), dtype=images[0].dtype)
    for k, image in enumerate(images):
        top, left = (k // cols) * cell_h + pad, (k % cols) * cell_w + pad
        grid[top:top + h, left:left + w] = image
    return grid


def load_init_image(path: str | Path) -> "torch.Tensor":
    """Read an img2img init image as [1, 3, h, w] float32 in [-1, 1] (docs/reference/original-scripts.md §10.3).

    Both sides are floored to multiples of 64 and the image is resized with LANCZOS; PIL returns
    an unchanged copy when the size is already right. EXIF orientation is ignored, as the
    original does.
    """
    import torch
    from PIL import Image

    image = as_mode(open_image(Path(path), "init image"), "RGB", path, "init image")
    w, h = image.size
    if w < SIZE_MULTIPLE or h < SIZE_MULTIPLE:
        raise UsageError(f"init image {path} is {w}x{h}: img2img needs at least "
                         f"{SIZE_MULTIPLE}x{SIZE_MULTIPLE} pixels; use a larger image")
    new_w, new_h = w - w % SIZE_MULTIPLE, h - h % SIZE_MULTIPLE
    if (new_w, new_h) != (w, h):
        log.info(f"resized {w}x{h} -> {new_w}x{new_h} (multiples of {SIZE_MULTIPLE})")
    image = image.resize((new_w, new_h), resample=Image.LANCZOS)

    x = np.asarray(image).astype(np.float32) / 255.0  # [h, w, 3] in [0, 1]
    x = np.ascontiguousarray(x[None].transpose(0, 3, 1, 2))  # [1, 3, h, w]
    return 2.0 * torch.from_numpy(x) - 1.0  # in [-1, 1]


def open_image(path: Path, what: str = "image"):
    """Open and fully decode an image file (mode kept), turning every failure into one SdCliError.

    `what` names the file in messages ("init image", "mask", ...).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode the whole file now, so a truncated file fails here
            return image
    except FileNotFoundError:
        raise SdCliError(f"{what} not found: {path}; check the path") from None
    except IsADirectoryError:
        raise SdCliError(f"{what} {path} is a folder; give an image file") from None
    except UnidentifiedImageError:
        raise SdCliError(f"{what} {path} is not an image file PIL can read; give a PNG, JPEG or WebP file") from None
    except Image.DecompressionBombError as e:
        raise SdCliError(f"{what} {path} is too large to open safely ({e}); use a smaller image") from None
    except OSError as e:
        raise SdCliError(f"cannot read {what} {path}: {e.strerror or e}; check the file is complete and readable") from None


def as_mode(image, mode: str, path, what: str = "image"):
    """`image` converted to PIL mode `mode` ("RGB" or "L"), 16-bit and float pixels scaled, not clipped."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray((_sixteen_bit(image, path, what) >> 8).astype(np.uint8))
    elif image.mode == FLOAT_MODE:
        image = Image.fromarray(np.rint(_unit_floats(image, path, what) * 255.0).astype(np.uint8))
    try:
        return image.convert(mode)
    except ValueError:
        raise SdCliError(f"{what} {path} has PIL mode {image.mode}, which cannot be converted to {mode}; "
                         "save it as an RGB or greyscale PNG") from None


def grey_levels(image, path, what: str = "image") -> np.ndarray:
    """[H, W] float32 in [0, 1]: a grey image at its full precision (16-bit, float), else PIL's luma (L)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return (_sixteen_bit(image, path, what) / 65535.0).astype(np.float32)
    if image.mode == FLOAT_MODE:
        return _unit_floats(image, path, what)
    return np.asarray(as_mode(image, "L", path, what), dtype=np.float32) / 255.0


def _sixteen_bit(image, path, what: str) -> np.ndarray:
    values = np.asarray(image if image.mode == "I" else image.convert("I"), dtype=np.int64)
    _check_scale(values, 0, 65535, path, what, "integer", "16-bit scale (0-65535)")
    return values


def _unit_floats(image, path, what: str) -> np.ndarray:
    values = np.asarray(image, dtype=np.float32)
    _check_scale(values, 0.0, 1.0, path, what, "floating-point", "0-1 scale")
    return values


def _check_scale(values: np.ndarray, low, high, path, what: str, kind: str, scale: str) -> None:
    if values.size and not (np.isfinite(values).all() and values.min() >= low and values.max() <= high):
        finite = values[np.isfinite(values)]
        span = f"{finite.min():g} to {finite.max():g}" if finite.size else "none finite"
        raise SdCliError(f"{what} {path} has {kind} pixels outside the {scale} sd-cli reads them on "
                         f"({span}); save it as an 8- or 16-bit PNG")
