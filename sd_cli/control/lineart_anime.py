"""The anime lineart annotator of ControlNet v1.1: Anime2Sketch's U-Net generator, from its weights file netG.pth.

As lllyasviel/ControlNet-v1-1-nightly's annotator/lineart_anime describes it (`UnetGenerator(3, 1, 8,
64)` with instance norms without weights, no dropout): eight 4x4 stride-2 convolutions down
(64, 128, 256, 512, 512, 512, 512, 512 channels; LeakyReLU 0.2 before each but the first, a norm
after each but the first and last), eight 4x4 stride-2 transposed convolutions up, each level's
input concatenated to its output, a tanh at the end. The image is resized bicubic to multiples of
256, scaled to [-1, 1]; the output, back to 0..255, is resized bicubic to the input's size: dark
lines on white. Nested Sequentials give the file's keys (`model.model.1.model.1.weight`, ...).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from sd_cli.control.annotator_file import load_annotator

# (outer, inner) channels of the levels between the outermost (3 -> 64) and the innermost, outside in
LEVELS = ((64, 128), (128, 256), (256, 512), (512, 512), (512, 512), (512, 512))
INNERMOST = (512, 512)
SIDE_MULTIPLE = 256  # eight halvings: the sides the generator needs


def _down(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)


def _up(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)


class SkipLevel(nn.Module):
    """One U-Net level: down, the levels inside, up; its input concatenated to its output."""

    def __init__(self, outer: int, inner: int, inside: nn.Module | None):
        super().__init__()
        down = [nn.LeakyReLU(0.2), _down(outer, inner)]
        if inside is None:  # the innermost level: no norm at the 1x1 bottleneck
            layers = down + [nn.ReLU(), _up(inner, outer), nn.InstanceNorm2d(outer)]
        else:
            layers = down + [nn.InstanceNorm2d(inner), inside, nn.ReLU(), _up(2 * inner, outer), nn.InstanceNorm2d(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.model(x)], dim=1)


class OuterLevel(nn.Module):
    def __init__(self, inside: nn.Module, in_channels: int = 3, out_channels: int = 1, width: int = 64):
        super().__init__()
        self.model = nn.Sequential(_down(in_channels, width), inside, nn.ReLU(), _up(2 * width, out_channels), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class AnimeLineartGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        level = SkipLevel(*INNERMOST, inside=None)
        for outer, inner in reversed(LEVELS):
            level = SkipLevel(outer, inner, inside=level)
        self.model = OuterLevel(level, width=LEVELS[0][0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1], sides multiples of 256 -> (1, 1, H, W) in [-1, 1]."""
        return self.model(x)


@torch.inference_mode()
def anime_line_drawing(pixels: np.ndarray, weights: Path, device: str = "cpu") -> np.ndarray:
    """(H, W) uint8 lines (dark on white) of an RGB uint8 image (H, W, 3), as the script's LineartAnimeDetector."""
    generator = load_lineart_anime(Path(weights)).to(device)
    height, width = pixels.shape[:2]
    padded = (SIDE_MULTIPLE * int(np.ceil(width / SIDE_MULTIPLE)), SIDE_MULTIPLE * int(np.ceil(height / SIDE_MULTIPLE)))
    feed = torch.from_numpy(cv2.resize(pixels, padded, interpolation=cv2.INTER_CUBIC)).float() / 127.5 - 1.0
    line = generator(feed.permute(2, 0, 1).unsqueeze(0).to(device))[0, 0].cpu() * 127.5 + 127.5
    line = cv2.resize(line.numpy(), (width, height), interpolation=cv2.INTER_CUBIC)
    return line.clip(0, 255).astype(np.uint8)


def load_lineart_anime(path: Path) -> AnimeLineartGenerator:
    # Saved from a DataParallel model: the script drops "module." from the names.
    return load_annotator(path, AnimeLineartGenerator, "netG.pth (the anime lineart annotator)", strip="module.")
