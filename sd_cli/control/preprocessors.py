"""ControlNet hint preprocessors: their names, what each needs, the checks, and the calls that make a hint.

The pixel formulas are in control/hints.py (the v1.1 scripts' computations). This module imports
neither numpy, cv2, torch nor PIL until a hint is made, so the CLI can list PREPROCESSORS and check
the flags at `--help` speed. Annotators that are networks run only from a local weights file;
nothing is downloaded (docs/usage.md "ControlNet hints").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sd_cli.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

# The flag that gives an annotator's weights file (the CLI's ControlNet panel must name it the same).
ANNOTATOR_FLAG = "--annotator-weights"

# Annotators that need a network sd_cli does not implement: the weights file each would need.
NOT_BUILT_IN = {
    "openpose": "body_pose_model.pth",
    "normalbae": "scannet.pt",
    "pidinet": "table5_pidinet.pth",
}
# Annotators built here from a local weights file: the file the original scripts load.
NEEDS_WEIGHTS = {
    "hed": "ControlNetHED.pth",
    "hed-safe": "ControlNetHED.pth",
    "scribble-hed": "ControlNetHED.pth",
    "depth": "dpt_hybrid-midas-501f0c75.pt",
    "lineart": "sk_model.pth",
    "lineart-coarse": "sk_model2.pth",
    "lineart-anime": "netG.pth",
    "mlsd": "mlsd_large_512_fp32.pth",
}
NO_WEIGHTS = ("none", "canny", "invert", "threshold", "scribble", "shuffle", "tile", "blur", "inpaint")
PREPROCESSORS: tuple[str, ...] = NO_WEIGHTS + tuple(NEEDS_WEIGHTS) + tuple(NOT_BUILT_IN)

MLSD_SCORE = 0.1  # gradio_mlsd.py's "Hough value threshold" and "Hough distance threshold" defaults
MLSD_DISTANCE = 0.1
INPAINT_MASK_BLUR = 5.0  # the inpaint script's "Mask Blur" default (a Gaussian sigma in pixels)
SMALLEST_DETECT = 64  # resize_image rounds sides to multiples of 64: below this a side can vanish
LARGEST_DETECT = 8192
SMALLEST_SIDE = 8  # one latent pixel
# the inpaint hint marks the pixels to repaint, which only the inpaint command's --mask says
NEEDS_MASK = ("--control-preprocess inpaint needs a mask: use it in the inpaint command (--mask), "
              "or give a prepared hint with --control-preprocess none")


def make_hint(image: Image.Image, preprocessor: str, width: int, height: int, *,
              detect_resolution: int | None = None, canny_low: int = 100, canny_high: int = 200,
              weights: Path | None = None, seed: int = 0, mask: np.ndarray | None = None,
              mask_blur: float = INPAINT_MASK_BLUR, mlsd_score: float = MLSD_SCORE,
              mlsd_distance: float = MLSD_DISTANCE, device: str = "cpu") -> np.ndarray:
    """The hint for `image` at (height, width, 3): uint8 RGB, or float32 for "inpaint" (see below).

    detect_resolution: the detectors' input short side (v1.1's "Preprocessor Resolution"), default
    the output's short side. seed: the content shuffle's random flow (as `np.random.seed(seed)` in
    the shuffle script). mask: read by "inpaint" only; white (or True) = to repaint, at the image's
    size or at the output's (the inpaint command hands its own mask at the render size). "inpaint"
    returns float32 on the 0..255 scale with -255 at masked pixels, so that `hint_tensor` gives -1
    there as the script does. weights: the annotator's weights file.
    mlsd_score, mlsd_distance: M-LSD's thresholds on a segment's centre score and its length.
    device: where the annotator networks run, in float32 (the hint itself is always on the CPU).
    """
    name = preprocessor_name(preprocessor)
    check_hint_options(name, width, height, detect_resolution, canny_low, canny_high, weights)
    if min(mlsd_score, mlsd_distance) < 0:
        raise UsageError(f"the M-LSD thresholds {mlsd_score} and {mlsd_distance} cannot be negative "
                         f"(the script's defaults: {MLSD_SCORE} and {MLSD_DISTANCE})")
    from sd_cli.control import hints

    pixels = hints.rgb_pixels(image)
    if name == "inpaint":
        _check_mask(mask, pixels.shape[:2], (height, width), mask_blur)
    request = hints.HintInput(
        pixels=pixels, width=width, height=height,
        detect_resolution=min(width, height) if detect_resolution is None else detect_resolution,
        canny_low=canny_low, canny_high=canny_high, weights=weights, seed=seed, mask=mask, mask_blur=mask_blur,
        mlsd_score=mlsd_score, mlsd_distance=mlsd_distance, device=str(device))
    return hints.MAKERS[name](request)


def hint_tensor(hint: np.ndarray) -> torch.Tensor:
    """The control tensor: float32(hint) / 255 as (1, 3, H, W); [0, 1] (inpaint's masked pixels -1)."""
    import numpy as np
    import torch

    if hint.ndim != 3 or hint.shape[2] != 3:
        raise ValueError(f"a hint is (H, W, 3), not {hint.shape}")
    control = torch.from_numpy(np.ascontiguousarray(hint)).float() / 255.0
    return control.permute(2, 0, 1).unsqueeze(0).contiguous()


def hint_picture(hint: np.ndarray) -> np.ndarray:
    """The hint as the uint8 picture the scripts show (inpaint's masked pixels black), for --save-hint."""
    import numpy as np

    return hint if hint.dtype == np.uint8 else hint.clip(0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """The scripts' resize_image: short side to `resolution`, both sides rounded to multiples of 64,
    LANCZOS4 when enlarging, AREA otherwise (control/hints.py)."""
    from sd_cli.control import hints

    return hints.resize_image(image, resolution)


# ---------------------------------------------------------------- checks, before any pixel is touched


def preprocessor_name(preprocessor: str) -> str:
    """The known name typed (any case), or a usage error with "did you mean"."""
    name = preprocessor.strip().lower()
    if name in PREPROCESSORS:
        return name
    from sd_cli.cli.suggestions import suggestions

    close = [s.lstrip("-") for s in suggestions("--" + name, [["--" + known] for known in PREPROCESSORS])]
    hint = f"did you mean {' or '.join(close)}?" if close else f"the preprocessors are {', '.join(PREPROCESSORS)}"
    raise UsageError(f"--control-preprocess {preprocessor}: no such preprocessor; {hint}")


def check_hint_options(name: str, width: int, height: int, detect_resolution: int | None = None,
                       canny_low: int = 100, canny_high: int = 200, weights: Path | None = None) -> None:
    """Every check of a hint's flags that needs no image: run by make_hint, and usable before a model loads."""
    if min(width, height) < SMALLEST_SIDE:
        raise UsageError(f"a ControlNet hint of {width}x{height} is too small: width and height must be at least "
                         f"{SMALLEST_SIDE}")
    if detect_resolution is not None and not SMALLEST_DETECT <= detect_resolution <= LARGEST_DETECT:
        raise UsageError(f"--detect-resolution {detect_resolution} is out of range; give {SMALLEST_DETECT} to "
                         f"{LARGEST_DETECT} (the detector's input short side), or leave it out for the output's")
    if name == "canny":
        _check_canny(canny_low, canny_high)
    _check_weights(name, weights)


def _check_canny(low: int, high: int) -> None:
    if low < 0 or high < 0:
        raise UsageError(f"--canny-low {low} --canny-high {high}: the thresholds cannot be negative "
                         "(the scripts use 1 to 255; default 100 and 200)")
    if low > high:
        raise UsageError(f"--canny-low {low} is above --canny-high {high}; give the lower threshold first")


def _check_weights(name: str, weights: Path | None) -> None:
    if name in NOT_BUILT_IN:
        raise UsageError(f"--control-preprocess {name} needs the {NOT_BUILT_IN[name]} annotator network, which sd_cli "
                         f"does not run (and nothing is downloaded); make the hint with another tool and give it "
                         f"with --control-preprocess none")
    if name in NEEDS_WEIGHTS and weights is None:
        raise UsageError(f"--control-preprocess {name} needs its annotator weights file {NEEDS_WEIGHTS[name]}; give "
                         f"its local path with {ANNOTATOR_FLAG} (nothing is downloaded), or give a prepared hint "
                         f"with --control-preprocess none")
    if name not in NEEDS_WEIGHTS and weights is not None:
        raise UsageError(f"{ANNOTATOR_FLAG} {weights}: --control-preprocess {name} uses no annotator weights; "
                         f"leave {ANNOTATOR_FLAG} out or choose one of {', '.join(NEEDS_WEIGHTS)}")


def _check_mask(mask: np.ndarray | None, image_size: tuple[int, int], output_size: tuple[int, int],
                mask_blur: float) -> None:
    if mask is None:
        raise UsageError(NEEDS_MASK)
    if tuple(mask.shape[:2]) not in (tuple(image_size), tuple(output_size)):
        raise UsageError(f"the inpaint mask is {mask.shape[1]}x{mask.shape[0]} but the control image is "
                         f"{image_size[1]}x{image_size[0]} and the output {output_size[1]}x{output_size[0]}; "
                         f"give a mask of the image's size")
    if mask_blur <= 0:
        raise UsageError(f"the inpaint hint's mask blur {mask_blur} must be above 0 (a Gaussian sigma)")
