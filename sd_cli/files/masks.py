"""inpaint's inputs from files: the image, its mask (a file or the image's transparency), mask blur,
outpainting, and padding to the UNet's multiple of 64; paste-back of the result.

Conventions: images are [H, W, 3] uint8 RGB arrays; masks are float32 [H, W] arrays in [0, 1] where
1 (white) means repaint and 0 (black) means keep. No torch here: `InpaintCanvas.tensors` converts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sd_cli import log
from sd_cli.errors import UsageError
from sd_cli.fields import SIZE_MULTIPLE
from sd_cli.files.images import as_mode, open_image

if TYPE_CHECKING:
    import torch

BINARY_THRESHOLD = 0.5  # the original: values < 0.5 keep, >= 0.5 repaint (§9.1)
BLUR_TRUNCATE = 2.5  # Gaussian kernel radius in sigmas, as AUTOMATIC1111's cv2 kernel size


@dataclass(frozen=True)
class MaskOptions:
    """How inpaint turns the image and mask files into a canvas and a mask (the same for every job)."""

    invert: bool = False  # repaint the black part instead of the white one
    blur: float = 4.0  # Gaussian blur of the mask, sigma in pixels (AUTOMATIC1111's "Mask blur")
    paste_back: bool = True  # copy the kept pixels from the input into the result
    outpaint: tuple[int, int, int, int] = (0, 0, 0, 0)  # pixels added left, right, up, down


@dataclass
class InpaintCanvas:
    """The prepared inputs: what the model sees (padded) and what paste-back uses (output size)."""

    pixels: np.ndarray  # [H, W, 3] uint8 at the output size; an outpainted area is edge-filled
    soft_mask: np.ndarray  # [H, W] float32 in [0, 1] after blur: the paste-back alpha
    model_mask: np.ndarray  # [H, W] float32 in {0, 1}: soft_mask binarised at 0.5, what the model sees
    paste_back: bool

    @property
    def output_size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]

    @property
    def padded_size(self) -> tuple[int, int]:
        h, w = self.output_size
        return _round_up(h), _round_up(w)

    def tensors(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """image [1, 3, H64, W64] in [-1, 1] and mask [1, 1, H64, W64] in {0, 1}, padded to multiples of 64.

        The padding (right and bottom) repeats the edge pixels and is marked keep; it is cropped
        from the result (finish).
        """
        import torch

        pixels = np.pad(self.pixels, self._padding() + [(0, 0)], mode="edge")
        image = 2.0 * torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None] - 1.0
        return image.contiguous(), torch.from_numpy(self.padded_mask())[None, None]

    def padded_mask(self) -> np.ndarray:
        """The model's mask [H64, W64] in {0, 1} at the render size, the padding marked keep (0); the
        inpaint command's ControlNet inpaint hint is made from it too (control/steering.py)."""
        return np.pad(self.model_mask, self._padding(), mode="constant")

    def _padding(self) -> list[tuple[int, int]]:
        return [(0, p - s) for p, s in zip(self.padded_size, self.output_size)]

    def finish(self, image: np.ndarray) -> np.ndarray:
        """A decoded [H64, W64, 3] uint8 result -> the output: cropped, kept pixels pasted back."""
        h, w = self.output_size
        image = image[:h, :w]
        if not self.paste_back:
            return np.ascontiguousarray(image)
        alpha = self.soft_mask[..., None]
        blended = image.astype(np.float32) * alpha + self.pixels.astype(np.float32) * (1.0 - alpha)
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def load_inpaint_canvas(image_path: Path, mask_path: Path | None, options: MaskOptions) -> InpaintCanvas:
    """The canvas for an image and its mask file (None: the image's transparent pixels are repainted)."""
    # 1. The image, and the mask from its file or from the image's transparency.
    image = open_image(Path(image_path), "image")
    pixels = np.asarray(as_mode(image, "RGB", image_path, "image"))
    mask = _read_mask(image, mask_path, pixels.shape[:2], outpainting=any(options.outpaint))
    if options.invert:
        mask = 1.0 - mask
    # 2. Outpainting: a bigger canvas; the new area is repainted, filled with the nearest edge pixels.
    pixels, mask = outpaint(pixels, mask, options.outpaint)
    # 3. Blur (soft edges for paste-back), then the model's binary mask as the original makes it.
    soft = gaussian_blur(mask, options.blur)
    model_mask = (soft >= BINARY_THRESHOLD).astype(np.float32)
    _check_coverage(model_mask, options)
    return InpaintCanvas(pixels, soft, model_mask, options.paste_back)


def _read_mask(image, mask_path: Path | None, size: tuple[int, int], outpainting: bool) -> np.ndarray:
    if mask_path is None and outpainting and not _has_alpha(image):
        return np.zeros(size, np.float32)  # only the added area is repainted
    if mask_path is None:
        if not _has_alpha(image):
            raise UsageError("inpaint needs a mask: pass --mask PATH (white = repaint), "
                             "or an image whose transparent pixels are the area to repaint")
        log.info("mask: the image's transparent pixels (no --mask given)")
        alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
        return 1.0 - alpha
    from PIL import Image

    mask_image = as_mode(open_image(Path(mask_path), "mask"), "L", mask_path, "mask")  # L = (299R + 587G + 114B) / 1000
    if mask_image.size != (size[1], size[0]):
        log.warn(f"mask {mask_image.size[0]}x{mask_image.size[1]} differs from the image's {size[1]}x{size[0]}: "
                 "resized to the image's size (bilinear)")
        mask_image = mask_image.resize((size[1], size[0]), resample=Image.BILINEAR)
    mask = np.asarray(mask_image, dtype=np.float32) / 255.0
    grey = float(((mask > 0) & (mask < 1)).mean())
    if grey > 0:
        log.info(f"mask has grey levels ({grey:.0%} of pixels): the model repaints where it is at least 50% white; "
                 "paste-back blends by the grey level")
    return mask


def _has_alpha(image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def outpaint(pixels: np.ndarray, mask: np.ndarray, pad: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Add (left, right, up, down) pixels: edge-replicated colours, mask 1 (repaint) in the new area."""
    left, right, up, down = pad
    if not any(pad):
        return pixels, mask
    widths = ((up, down), (left, right))
    log.info(f"outpaint: {pixels.shape[1]}x{pixels.shape[0]} -> "
             f"{pixels.shape[1] + left + right}x{pixels.shape[0] + up + down}")
    return np.pad(pixels, widths + ((0, 0),), mode="edge"), np.pad(mask, widths, mode="constant", constant_values=1.0)


def gaussian_blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur, kernel radius int(2.5·sigma + 0.5), mirrored borders (cv2's default)."""
    if sigma <= 0:
        return mask.astype(np.float32)
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = mask.astype(np.float64)
    for axis in (0, 1):
        reach = min(radius, out.shape[axis] - 1)  # numpy's reflect needs pad < side
        pad = [(0, 0), (0, 0)]
        pad[axis] = (reach, reach)
        padded = np.pad(out, pad, mode="reflect")
        if reach < radius:  # a side shorter than the kernel: extend with the edge value
            pad[axis] = (radius - reach, radius - reach)
            padded = np.pad(padded, pad, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=axis)
        out = windows @ kernel
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _check_coverage(model_mask: np.ndarray, options: MaskOptions) -> None:
    covered = float(model_mask.mean())
    if covered == 0.0:
        hint = " (the blur thinned it out: lower --mask-blur)" if options.blur > 0 else ""
        raise UsageError("the mask is empty: nothing to repaint" + hint + "; white marks the area to repaint "
                         "(--invert-mask swaps black and white)")
    if covered == 1.0:
        log.info("the mask covers the whole image: everything is repainted (the image only sets the size"
                 " and, with --strength < 1, the start)")
    else:
        log.info(f"repainting {covered:.1%} of the image")


def parse_outpaint(text: str) -> tuple[int, int, int, int]:
    """Parse --outpaint LEFT,RIGHT,UP,DOWN (pixels, each >= 0)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0:
        raise UsageError(f"--outpaint {text!r}: give four pixel counts LEFT,RIGHT,UP,DOWN, each 0 or more (e.g. 0,128,0,0)")
    return values


def _round_up(side: int) -> int:
    return max(SIZE_MULTIPLE, -(-side // SIZE_MULTIPLE) * SIZE_MULTIPLE)


