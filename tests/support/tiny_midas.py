"""A tiny random MiDaS DPT-Hybrid state dict with the original key layout (keys below `depth_model.model.`).

Made independently of sd_cli's builder: the backbone and ViT are timm's own ResNetV2 + VisionTransformer
with HybridEmbed (what the original's `timm.create_model("vit_base_resnet50_384")` builds, at small
sizes), and the DPT layers are listed here by name and shape as the original MiDaS code creates them
(docs/reference/original-scripts.md §7.4; ldm/modules/midas/midas/{vit,blocks,dpt_depth}.py).
"""

from functools import partial

import torch

# Full size: stem 64, stages (3, 4, 9) x (256, 512, 1024), width 768, 12 blocks, grid 24, features 256.
TINY = dict(stem=32, layers=(1, 1, 1), channels=(128, 256, 512), width=64, depth=12, grid=24, features=32, classes=10)
HEAD_HIDDEN = 32


def vit_hybrid(sizes: dict):
    from timm.layers import HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer

    backbone = ResNetV2(layers=sizes["layers"], channels=sizes["channels"], stem_chs=sizes["stem"], num_classes=0,
                        global_pool="", preact=False, stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8))
    return VisionTransformer(img_size=sizes["grid"] * 16, patch_size=1, embed_dim=sizes["width"], depth=sizes["depth"],
                             num_heads=max(1, sizes["width"] // 64), num_classes=sizes["classes"],
                             embed_layer=partial(HybridEmbed, backbone=backbone))


def dpt_layer_shapes(sizes: dict) -> dict:
    """act_postprocess3/4 (readout projection, 1x1 conv, level 4's stride-2 3x3) and scratch.*, by name."""
    d, f = sizes["width"], sizes["features"]
    shapes = {}
    for level in (3, 4):
        post = f"pretrained.act_postprocess{level}."
        shapes.update({post + "0.project.0.weight": (d, 2 * d), post + "0.project.0.bias": (d,),
                       post + "3.weight": (d, d, 1, 1), post + "3.bias": (d,)})
    shapes.update({"pretrained.act_postprocess4.4.weight": (d, d, 3, 3), "pretrained.act_postprocess4.4.bias": (d,)})
    for i, channels in enumerate([sizes["channels"][0], sizes["channels"][1], d, d], start=1):
        shapes[f"scratch.layer{i}_rn.weight"] = (f, channels, 3, 3)
    for i in range(1, 5):
        block = f"scratch.refinenet{i}."
        shapes.update({block + "out_conv.weight": (f, f, 1, 1), block + "out_conv.bias": (f,)})
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                shapes.update({f"{block}{unit}.{conv}.weight": (f, f, 3, 3), f"{block}{unit}.{conv}.bias": (f,)})
    shapes.update({"scratch.output_conv.0.weight": (f // 2, f, 3, 3), "scratch.output_conv.0.bias": (f // 2,),
                   "scratch.output_conv.2.weight": (HEAD_HIDDEN, f // 2, 3, 3), "scratch.output_conv.2.bias": (HEAD_HIDDEN,),
                   "scratch.output_conv.4.weight": (1, HEAD_HIDDEN, 1, 1), "scratch.output_conv.4.bias": (1,)})
    return shapes


def tiny_dpt_weights(seed: int, sizes: dict = TINY) -> dict:
    """Random weights: timm's init plus noise for the ViT-hybrid, scaled normal for the DPT layers."""
    torch.manual_seed(seed)
    weights = {}
    for key, value in vit_hybrid(sizes).state_dict().items():
        noisy = value + 0.02 * torch.randn_like(value) if value.is_floating_point() else value
        weights["pretrained.model." + key] = noisy
    for key, shape in dpt_layer_shapes(sizes).items():
        fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
        weights[key] = torch.randn(shape) / fan_in ** 0.5 if len(shape) > 1 else 0.1 * torch.randn(shape)
    weights["scratch.output_conv.4.bias"] = torch.tensor([0.5])  # keep the final ReLU mostly open
    return weights
