"""MiDaS DPT-Hybrid, the SD 2 depth model's depth estimator, with the original key layout.

The checkpoint keeps it under `depth_model.model.` (docs/reference/original-scripts.md §7.4); below that prefix:
- `pretrained.model.*`: timm's ViT-hybrid (a ResNetV2 backbone, `patch_embed.backbone`, with
  weight-standardised "same"-padded convolutions, then a ViT-B/16 on its 1/16 feature map);
- `pretrained.act_postprocess3/4.*`: reassembly of ViT tokens into feature maps (the readout
  token projected into every token, a 1x1 conv, and for level 4 a stride-2 3x3 conv); levels 1
  and 2 are the backbone's first two stages as they are (no weights);
- `scratch.*`: the DPT decoder (3x3 convs to a common width, four fusion blocks, the depth head).

Every size (widths, block counts, stages, the ViT's position grid) is read from the weights, so the
same code builds the full-size model and the tests' tiny one. Heads = width // 64 (12 for
ViT-B) and the ViT blocks tapped are the last one and the one three before it (8 and 11 of 12), as
the original's hooks. timm is imported only when a DPT is built.
"""

import re
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from sd_cli.models.empty import empty_modules

PATCH = 16  # the backbone and patch embedding downsample by 16 (the original hard-codes [16, 16])
HEAD_WIDTH = 64  # ViT head size: heads = width // 64
HEAD_HIDDEN = 32  # the depth head's fixed middle width


class ProjectReadout(nn.Module):
    """Concatenate the class (readout) token to every patch token and project back to the width."""

    def __init__(self, width: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, 1 + N, D] -> [B, N, D]
        readout = tokens[:, :1].expand_as(tokens[:, 1:])
        return self.project(torch.cat([tokens[:, 1:], readout], dim=-1))


def _reassemble(width: int, out: int, downsample: bool) -> nn.Sequential:
    """Indices as the original Sequential: 0 readout, 1 transpose, 2 unflatten, 3 1x1 conv, (4 3x3 s2)."""
    layers = [ProjectReadout(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, out, 1)]
    if downsample:
        layers.append(nn.Conv2d(out, out, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """Add the skip (after a residual unit), refine, upsample ×2 (bilinear, align_corners), 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Interpolate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Scratch(nn.Module):
    """The DPT decoder: layerN_rn (3x3, no bias) to a common width, refinenetN, output_conv (the head)."""

    def __init__(self, in_channels: list[int], features: int):
        super().__init__()
        for i, channels in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", FusionBlock(features))
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1), Interpolate(),
            nn.Conv2d(features // 2, HEAD_HIDDEN, 3, padding=1), nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN, 1, 1), nn.ReLU(),  # non_negative=True: relative inverse depth >= 0
        )


class DPTDepthModel(nn.Module):
    """x [B, 3, h, w] (normalised to about [-1, 1], sides multiples of 32) -> [B, h, w] inverse depth."""

    def __init__(self, vit: nn.Module, stage_channels: list[int], width: int, features: int):
        super().__init__()
        self.pretrained = nn.Module()
        self.pretrained.model = vit
        self.pretrained.act_postprocess3 = _reassemble(width, width, downsample=False)
        self.pretrained.act_postprocess4 = _reassemble(width, width, downsample=True)
        self.scratch = Scratch([stage_channels[0], stage_channels[1], width, width], features)
        depth = len(vit.blocks)
        self.taps = (depth - 4, depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self._encode(x)
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(layer) for i, layer in enumerate(layers, start=1))
        path = s.refinenet4(l4)
        path = s.refinenet3(path, l3)
        path = s.refinenet2(path, l2)
        path = s.refinenet1(path, l1)
        return s.output_conv(path).squeeze(1)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone stages 1 and 2 (1/4, 1/8) and two ViT blocks' tokens reassembled (1/16, 1/32)."""
        vit = self.pretrained.model
        grid = (x.shape[-2] // PATCH, x.shape[-1] // PATCH)
        backbone = vit.patch_embed.backbone
        features = backbone.stem(x)
        stages = []
        for stage in backbone.stages:
            features = stage(features)
            stages.append(features)
        tokens = vit.patch_embed.proj(backbone.norm(features)).flatten(2).transpose(1, 2)  # [B, N, D]
        tokens = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + _resized_position_embedding(vit.pos_embed, grid)
        tapped = []
        for index, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if index in self.taps:
                tapped.append(tokens)
            if index == self.taps[-1]:
                break
        maps = []
        for tokens, post in zip(tapped, (self.pretrained.act_postprocess3, self.pretrained.act_postprocess4)):
            projected = post[0](tokens).transpose(1, 2)  # [B, D, N]
            maps.append(post[3:](projected.unflatten(2, grid)))
        return [stages[0], stages[1], *maps]


def _resized_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The class token's embedding, then the square grid resized bilinearly to `grid`."""
    token, square = pos_embed[:, :1], pos_embed[0, 1:]
    side = int(round(square.shape[0] ** 0.5))
    square = square.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([token, resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


# ---------------------------------------------------------------- building from weights

def build_dpt_hybrid(weights: dict) -> DPTDepthModel:
    """The DPT-Hybrid whose shapes fit `weights` (keys below `depth_model.model.`), on the meta device."""
    sizes = _sizes(weights)
    with empty_modules():
        vit = _timm_vit_hybrid(sizes)
        return DPTDepthModel(vit, sizes["stage_channels"], sizes["width"], sizes["features"])


def _sizes(weights: dict) -> dict:
    backbone = "pretrained.model.patch_embed.backbone."
    shape = lambda key: tuple(weights[key].shape)  # noqa: E731
    stage_blocks = _count(weights, re.compile(re.escape(backbone) + r"stages\.(\d+)\.blocks\.(\d+)\."))
    stages = sorted(stage_blocks)
    pos = shape("pretrained.model.pos_embed")
    return {
        "stem": shape(backbone + "stem.conv.weight")[0],
        "layers": [stage_blocks[s] for s in stages],
        "stage_channels": [shape(f"{backbone}stages.{s}.blocks.0.conv3.weight")[0] for s in stages],
        "bottle_ratio": shape(f"{backbone}stages.0.blocks.0.conv1.weight")[0] / shape(f"{backbone}stages.0.blocks.0.conv3.weight")[0],
        "width": pos[-1],
        "grid": int(round((pos[1] - 1) ** 0.5)),
        "depth": len(_count(weights, re.compile(r"pretrained\.model\.blocks\.(\d+)\."))),
        "mlp_hidden": shape("pretrained.model.blocks.0.mlp.fc1.weight")[0],
        "classes": shape("pretrained.model.head.weight")[0] if "pretrained.model.head.weight" in weights else 0,
        "features": shape("scratch.layer1_rn.weight")[0],
    }


def _count(weights: dict, pattern: re.Pattern) -> dict:
    """{first group: number of distinct second groups} (or {group: 1}) over the matching keys."""
    seen: dict[int, set] = {}
    for key in weights:
        match = pattern.match(key)
        if match:
            groups = match.groups()
            seen.setdefault(int(groups[0]), set()).add(groups[1] if len(groups) > 1 else None)
    return {k: len(v) for k, v in seen.items()}


def _timm_vit_hybrid(sizes: dict) -> nn.Module:
    """timm's R50+ViT-B/16 hybrid (as its `vit_base_r50_s16_384`) at the given sizes, no pretrained weights."""
    from timm.layers import HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer

    backbone = ResNetV2(layers=sizes["layers"], channels=tuple(sizes["stage_channels"]), stem_chs=sizes["stem"],
                        num_classes=0, global_pool="", preact=False, stem_type="same",
                        bottle_ratio=sizes["bottle_ratio"], conv_layer=partial(StdConv2dSame, eps=1e-8))
    width = sizes["width"]
    return VisionTransformer(img_size=sizes["grid"] * PATCH, patch_size=1, embed_dim=width, depth=sizes["depth"],
                             num_heads=max(1, width // HEAD_WIDTH), mlp_ratio=sizes["mlp_hidden"] / width,
                             num_classes=sizes["classes"], embed_layer=partial(HybridEmbed, backbone=backbone))
