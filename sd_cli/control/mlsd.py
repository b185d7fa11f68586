"""The straight-line annotator of ControlNet (M-LSD large), from its weights file mlsd_large_512_fp32.pth.

As lllyasviel/ControlNet-v1-1-nightly's annotator/mlsd describes it (after navervision/mlsd):
- input: the RGB image plus a fourth channel of ones, scaled by `x / 127.5 - 1`;
- a MobileNetV2 trunk (its first 14 feature blocks, stride-2 convolutions padded as TFLite does:
  one extra row and column at the bottom right), tapped after blocks 1, 3, 6, 10, 13;
- a decoder of 1x1 / 3x3 convolution blocks with batch norms (eval statistics) that climbs back to
  half the input size, keeping output channels 7..15: a line-centre logit and the four
  displacements to the segment's two ends;
- decoding: the centre's sigmoid, kept where it is its 3x3 neighbourhood's maximum, the 200 best;
  each with score above `score` and length above `distance` (in half-size pixels) is a segment,
  scaled by 2 and drawn 1 pixel wide in white on black with cv2.line (coordinates truncated).
The module names equal the file's keys (`backbone.features.0.0.weight`, `block15.conv1.0.weight`, ...).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sd_cli.control.annotator_file import load_annotator

# MobileNetV2's blocks as M-LSD keeps them: (expansion, output channels, repeats, first stride)
TRUNK = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
TAPS = (1, 3, 6, 10, 13)
TOP_CENTRES = 200
CENTRE_WINDOW = 3


class ConvBnRelu6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        padding = 0 if stride == 2 else (kernel - 1) // 2
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU6())
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:  # TFLite's "same" padding for a stride-2 3x3 convolution
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = int(round(in_channels * expansion))
        layers = [ConvBnRelu6(in_channels, hidden, kernel=1)] if expansion != 1 else []
        layers += [ConvBnRelu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        blocks, channels = [ConvBnRelu6(4, 32, stride=2)], 32
        for expansion, out_channels, repeats, stride in TRUNK:
            for repeat in range(repeats):
                blocks.append(InvertedResidual(channels, out_channels, stride if repeat == 0 else 1, expansion))
                channels = out_channels
        self.features = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for number, block in enumerate(self.features):
            x = block(x)
            if number in TAPS:
                taps.append(x)
        return taps


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=dilation * (kernel - 1) // 2,
                                   dilation=dilation), nn.BatchNorm2d(out_channels), nn.ReLU())


class Merge(nn.Module):
    """BlockTypeA: the skip (1x1 to 64) beside the deeper features (1x1 to 64, bilinear x2 unless level)."""

    def __init__(self, skip_channels: int, deep_channels: int, upscale: bool = True):
        super().__init__()
        self.conv1 = _conv_bn_relu(deep_channels, 64, 1)
        self.conv2 = _conv_bn_relu(skip_channels, 64, 1)
        self.upscale = upscale

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upscale:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), dim=1)


class Refine(nn.Module):
    """BlockTypeB: a residual 3x3, then a 3x3 to 64 channels."""

    def __init__(self, channels: int = 128, out_channels: int = 64):
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels, 3)
        self.conv2 = _conv_bn_relu(channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class Head(nn.Module):
    """BlockTypeC: a dilated 3x3, a 3x3, and a 1x1 to the 16 output maps."""

    def __init__(self, channels: int = 64, out_channels: int = 16):
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels, 3, dilation=5)
        self.conv2 = _conv_bn_relu(channels, channels, 3)
        self.conv3 = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class LineSegmentDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Trunk()
        self.block15, self.block16 = Merge(64, 96, upscale=False), Refine()
        self.block17, self.block18 = Merge(32, 64), Refine()
        self.block19, self.block20 = Merge(24, 64), Refine()
        self.block21, self.block22 = Merge(16, 64), Refine()
        self.block23 = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, 4, H, W) -> (1, 9, H/2, W/2): the centre logit, the four end displacements, four unused maps."""
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:]


@torch.inference_mode()
def line_segments_map(pixels: np.ndarray, weights: Path, score: float, distance: float,
                      device: str = "cpu") -> np.ndarray:
    """(H, W) uint8: the detected segments drawn white on black, for an RGB uint8 image (H, W, 3)."""
    height, width = pixels.shape[:2]
    detector = load_mlsd(Path(weights)).to(device)
    with_ones = np.concatenate([pixels, np.ones((height, width, 1))], axis=-1).astype(np.float32)
    x = torch.from_numpy(with_ones.transpose(2, 0, 1)[None] / 127.5 - 1.0).float()
    drawn = np.zeros((height, width), dtype=np.uint8)
    for segment in _segments(detector(x.to(device)).cpu(), score, distance):
        x0, y0, x1, y1 = (int(value) for value in segment)
        cv2.line(drawn, (x0, y0), (x1, y1), 255, 1)
    return drawn


def _segments(maps: torch.Tensor, score: float, distance: float) -> list[np.ndarray]:
    """The decoded segments (x0, y0, x1, y1) at the input's scale, best centre first."""
    heat = torch.sigmoid(maps[0, 0])
    peak = F.max_pool2d(heat[None], CENTRE_WINDOW, stride=1, padding=(CENTRE_WINDOW - 1) // 2)[0]
    heat = heat * (peak == heat).float()
    scores, indices = torch.topk(heat.reshape(-1), TOP_CENTRES)
    map_width = maps.shape[3]
    displacement = maps[0, 1:5].numpy().transpose(1, 2, 0)  # (h, w, [dx0, dy0, dx1, dy1])
    lengths = np.sqrt(((displacement[:, :, :2] - displacement[:, :, 2:]) ** 2).sum(axis=-1))
    segments = []
    for value, index in zip(scores.numpy(), indices.numpy()):
        y, x = divmod(int(index), map_width)
        if value > score and lengths[y, x] > distance:
            # float64, as the script's int + float32 sums, so that the truncation to pixels agrees
            segments.append(2 * (np.array([x, y, x, y], dtype=np.float64) + displacement[y, x].astype(np.float64)))
    return segments


def load_mlsd(path: Path) -> LineSegmentDetector:
    return load_annotator(path, LineSegmentDetector, "mlsd_large_512_fp32.pth (M-LSD large)")
