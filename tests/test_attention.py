"""multi_head_attention (sd_cli/models/attention.py): bfloat16 on the CPU is computed in float32."""

import torch
import torch.nn.functional as F

from sd_cli.models.attention import CrossAttention, GroupNorm32, multi_head_attention


def qkv(dtype):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 8, 300, 40, generator=generator).to(dtype) for _ in range(3)]


def test_bfloat16_on_the_cpu_is_float32_attention_rounded_once():
    q, k, v = qkv(torch.bfloat16)
    out = multi_head_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16())
    # ... which is closer to exact attention than the bfloat16 kernel's own result
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    ours = (out.double() - exact).abs().mean()
    kernel = (F.scaled_dot_product_attention(q, k, v).double() - exact).abs().mean()
    assert ours < kernel


def test_float32_is_the_fused_kernel_unchanged():
    q, k, v = qkv(torch.float32)
    assert torch.equal(multi_head_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_the_unet_attention_layer_uses_it():
    torch.manual_seed(0)
    layer = CrossAttention(query_dim=64, context_dim=32, heads=4, dim_head=16).bfloat16()
    x, context = torch.randn(2, 50, 64).bfloat16(), torch.randn(2, 7, 32).bfloat16()
    with torch.inference_mode():
        out = layer(x, context)
        split = lambda t: t.view(2, -1, 4, 16).transpose(1, 2)  # noqa: E731
        heads = F.scaled_dot_product_attention(*(split(t).float() for t in (layer.to_q(x), layer.to_k(context),
                                                                          layer.to_v(context))))
        expected = layer.to_out(heads.bfloat16().transpose(1, 2).reshape(2, 50, 64))
    assert torch.equal(out, expected)


def test_group_norm_converts_its_affine_to_float32_once_per_change():
    """The float32 weight and bias are kept between calls and made again after an in-place edit
    (a LoRA merge) or a move to new memory, never stale."""
    norm = GroupNorm32(64, 1e-5).to(torch.bfloat16)
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(0)).bfloat16()
    first = norm.float_affine()
    assert norm.float_affine()[0] is first[0]
    with torch.no_grad():
        norm.weight += 1
    edited = norm.float_affine()
    assert edited[0] is not first[0] and torch.equal(edited[0], norm.weight.float())
    norm.to(torch.float16)
    moved = norm.float_affine()
    assert moved[0].dtype == torch.float32 and torch.equal(moved[0], norm.weight.float())
    assert torch.equal(norm(x.half()), F.group_norm(x.half(), 32, norm.weight.float(), norm.bias.float(), 1e-5))
