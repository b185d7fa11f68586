"""The lineart annotator of ControlNet v1.1: informative-drawings' generator, from its weights file.

As lllyasviel/ControlNet-v1-1-nightly's annotator/lineart describes it (`Generator(3, 1, 3)`): a
7x7 convolution to 64 channels, two stride-2 3x3 convolutions (128, 256), three residual blocks,
two stride-2 transposed convolutions back to 64, and a 7x7 convolution to one channel with a
sigmoid; reflection padding, instance norms without weights, ReLU. Its input is RGB in [0, 1];
its output is dark lines on white, in [0, 1]. `sk_model.pth` is the fine model, `sk_model2.pth`
the coarse one. The Sequential indices give the files' key names (`model0.1.weight`, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sd_cli.control.annotator_file import load_annotator

RESIDUAL_BLOCKS = 3


def _normed(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.InstanceNorm2d(channels), nn.ReLU()]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    def __init__(self, residual_blocks: int = RESIDUAL_BLOCKS):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), *_normed(nn.Conv2d(3, 64, 7), 64))
        self.model1 = nn.Sequential(*_normed(nn.Conv2d(64, 128, 3, stride=2, padding=1), 128),
                                    *_normed(nn.Conv2d(128, 256, 3, stride=2, padding=1), 256))
        self.model2 = nn.Sequential(*[ResidualBlock(256) for _ in range(residual_blocks)])
        self.model3 = nn.Sequential(
            *_normed(nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), 128),
            *_normed(nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), 64))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1], sides multiples of 4 -> (1, 1, H, W) in [0, 1], lines dark."""
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb)))))


@torch.inference_mode()
def line_drawing(pixels: np.ndarray, weights: Path, device: str = "cpu") -> np.ndarray:
    """(H, W) uint8 lines (dark on white) of an RGB uint8 image (H, W, 3), as the script's LineartDetector."""
    generator = load_lineart(Path(weights)).to(device)
    rgb = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255.0
    line = generator(rgb.permute(2, 0, 1).unsqueeze(0).to(device))[0, 0].cpu()
    return (line.numpy() * 255.0).clip(0, 255).astype(np.uint8)


def load_lineart(path: Path) -> LineartGenerator:
    return load_annotator(path, LineartGenerator, "a lineart annotator (sk_model.pth or sk_model2.pth)")
