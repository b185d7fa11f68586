"""The soft-edge annotator of ControlNet v1.1: ControlNetHED (an RGB-input HED), from its weights file.

As lllyasviel/ControlNet-v1-1-nightly's annotator/hed describes it: five VGG stages of 3x3
convolutions with ReLU (2, 2, 3, 3, 3 convolutions; 64, 128, 256, 512, 512 channels; a 2x2 max-pool
before stages 2-5), the input minus a learned per-channel `norm`, on 0..255 RGB values. Each stage's
1x1 `projection` gives one edge map; the five maps, each resized to the input size with cv2's
INTER_LINEAR, are averaged and passed through a sigmoid (float64), then scaled to uint8.
The module names equal the weights file's keys (`norm`, `block1.convs.0.weight`, ...).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sd_cli.control.annotator_file import load_annotator

# (input channels, output channels, convolutions) per stage
STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
SAFE_STEPS = 2  # the soft-edge script's safe_step: edges quantised to 0, 0.5, 1 (and 1.5 at exactly 1)


class HedStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, convolutions: int):
        super().__init__()
        widths = [in_channels] + [out_channels] * convolutions
        self.convs = nn.Sequential(*[nn.Conv2d(a, b, kernel_size=3, padding=1) for a, b in zip(widths, widths[1:])])
        self.projection = nn.Conv2d(out_channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor, pooled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pooled:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HedNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for number, sizes in enumerate(STAGES, start=1):
            setattr(self, f"block{number}", HedStage(*sizes))

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """rgb: (1, 3, H, W) float32 0..255 -> five (1, 1, h_k, w_k) edge logits, full size to 1/16."""
        x, maps = rgb - self.norm, []
        for number in range(1, len(STAGES) + 1):
            x, projection = getattr(self, f"block{number}")(x, pooled=number > 1)
            maps.append(projection)
        return maps


@torch.inference_mode()
def soft_edges(pixels: np.ndarray, weights: Path, safe: bool = False, device: str = "cpu") -> np.ndarray:
    """HED edges (H, W) uint8 of an RGB uint8 image (H, W, 3); `safe` as the script's HED_safe."""
    network = load_hed(Path(weights)).to(device)
    height, width = pixels.shape[:2]
    rgb = torch.from_numpy(np.ascontiguousarray(pixels)).float().permute(2, 0, 1).unsqueeze(0)
    maps = [m[0, 0].cpu().numpy().astype(np.float32) for m in network(rgb.to(device))]
    maps = [cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps]
    edge = 1.0 / (1.0 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def safe_step(x: np.ndarray, steps: int = SAFE_STEPS) -> np.ndarray:
    """The scripts' safe_step: x in [0, 1] cut down to multiples of 1/steps after scaling by steps + 1."""
    scaled = (x.astype(np.float32) * float(steps + 1)).astype(np.int32)
    return scaled.astype(np.float32) / float(steps)


def load_hed(path: Path) -> HedNetwork:
    """The HED network from its weights file (ControlNetHED.pth), read safely and loaded strictly."""
    return load_annotator(path, HedNetwork, "ControlNetHED.pth (the HED annotator)")
