"""Attention blocks shared by the UNet and the VAE.

Attribute names equal the original checkpoint's key names (`to_q`, `ff.net.0.proj`,
`transformer_blocks.0.norm1`, ...), so the state dict of an SD checkpoint loads with
`strict=True` and no renaming.

Precision: the original v2 computes q·kᵀ in float32 with autocast disabled. sd_cli runs without
autocast, so every op here runs in the module's dtype, and attention itself is
`F.scaled_dot_product_attention` (scale head_dim^-0.5, the same maths as the original's
einsum-softmax-einsum). In float32 the two agree to rounding; in float16 SDPA's fused kernels
accumulate in float32 internally, which is what the original's upcast was for; bfloat16 on the
CPU runs as bfloat16 matrix products over long key sequences where the CPU has them and in
float32 otherwise (multi_head_attention says why).
"""

import torch
import torch.nn.functional as F
from torch import nn

from sd_cli.models import cpu_attention
from sd_cli.models.linear import Linear


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, computed in float32 and cast back to the input's dtype.

    The original UNet's `GroupNorm32` does this explicitly; its other GroupNorms run in float32
    because autocast puts group_norm on its float32 list. Upcasting here reproduces both without
    autocast.
    """

    def __init__(self, channels: int, eps: float):
        super().__init__(num_groups=32, num_channels=channels, eps=eps)
        self._float_affine_key = None
        self._float_affine = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight, bias = self.float_affine()
        if x.device.type == "cpu":
            # ATen's CPU kernel takes a bf16/fp16 input with float32 weights and computes the
            # statistics and the affine in float32: the upcast's result (differing in 1 of 400k
            # elements by one bf16 step) without casting every activation twice, 9x faster.
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)
        # CUDA's fp16 kernel is not the float32 result (docs/benchmarks.md), so the input is upcast.
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)

    def float_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """weight and bias in float32, converted once per change of the parameters (their memory or
        an in-place edit) instead of at every call: two kernels fewer at each of the UNet's 61
        norms, which an eager GPU step pays for in launch time."""
        if torch.compiler.is_compiling():  # compiled code fuses the casts; the cache is not traceable
            return self.weight.float(), self.bias.float()
        key = (self.weight.data_ptr(), self.weight._version, self.weight.dtype,
               self.bias.data_ptr(), self.bias._version)
        if key != self._float_affine_key:
            self._float_affine = (self.weight.detach().float(), self.bias.detach().float())
            self._float_affine_key = key
        return self._float_affine


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # [B, N, heads*D] -> [B, heads, N, D]
    batch, tokens, _ = x.shape
    return x.view(batch, tokens, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    # [B, heads, N, D] -> [B, N, heads*D]
    batch, heads, tokens, dim_head = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim_head)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ / √d)·v over [B, heads, tokens, d].

    bfloat16 on the CPU over many keys: with AMX torch's fused kernel in bf16 (as close to exact
    as float32 attention there, and the fastest); without AMX, where that kernel is slower in bf16
    than in float32, as bf16 matrix products where the CPU has them (cpu_attention.py says why and
    how), not when gradients are wanted (training). Over few keys (the text's 77) and elsewhere,
    attention_in_float32.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        if cpu_attention.FUSED_BF16 and k.shape[2] >= cpu_attention.MIN_KEYS:
            return F.scaled_dot_product_attention(q, k, v)
        if cpu_attention.worth_it(q, k) and not torch.is_grad_enabled():
            return cpu_attention.attention_op(q, k, v)
        return attention_in_float32(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)  # default scale is dim_head^-0.5


def attention_in_float32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The fused kernel on float32 copies, rounded once to the inputs' dtype."""
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


class CrossAttention(nn.Module):
    """Multi-head attention of `x` over `context` (self-attention when context is None)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        # No bias on q/k/v: the original has none, so the checkpoint has no such keys.
        self.to_q = Linear(query_dim, inner_dim, bias=False)
        self.to_k = Linear(context_dim, inner_dim, bias=False)
        self.to_v = Linear(context_dim, inner_dim, bias=False)
        # A one-element Sequential keeps the original key `to_out.0` (its slot 1 was dropout).
        self.to_out = nn.Sequential(Linear(inner_dim, query_dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, N, query_dim]; context: [B, M, context_dim] or None
        context = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)
        k = split_heads(self.to_k(context), self.heads)
        v = split_heads(self.to_v(context), self.heads)
        return self.to_out(merge_heads(multi_head_attention(q, k, v)))  # [B, N, query_dim]


class GEGLU(nn.Module):
    """Linear projection to 2·dim_out, then value · GELU(gate) (exact, erf-based GELU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        # Multiplying into GELU's fresh, contiguous output reads the strided half once and
        # allocates nothing: 10-35% off this block on the CPU, the same product bit for bit.
        return F.gelu(gate).mul_(value)


class FeedForward(nn.Module):
    """GEGLU feed-forward with inner width mult·dim, as in every SD transformer block."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        # Slot 1 held dropout in the original; an Identity keeps `net.2` at index 2.
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Identity(), Linear(inner_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual.

    With `disable_self_attn` (the x4 upscaler's levels with `disable_self_attentions`) the first
    attention attends to the context too, as the original's: its keys and values are context_dim wide.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, disable_self_attn: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: [B, N, dim]; context: [B, M, context_dim]
        x = x + self.attn1(self.norm1(x), context if self.disable_self_attn else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on `context`.

    SD1 projects in and out with 1x1 convs; SD2 (`use_linear`) with Linear layers applied after
    flattening. The two give the same function but different weight shapes ([C, C, 1, 1] vs
    [C, C]), so the layout must match the checkpoint.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int,
                 context_dim: int, use_linear: bool, disable_self_attn: bool = False):
        super().__init__()
        inner_dim = heads * dim_head
        self.use_linear = use_linear
        self.norm = GroupNorm32(channels, eps=1e-6)
        if use_linear:
            self.proj_in = Linear(channels, inner_dim)
            self.proj_out = Linear(inner_dim, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner_dim, kernel_size=1)
            self.proj_out = nn.Conv2d(inner_dim, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, heads, dim_head, context_dim, disable_self_attn) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W]; context: [B, M, context_dim]
        _, _, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # [B, H*W, C]
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).unflatten(2, (height, width))  # [B, C, H, W]
        if not self.use_linear:
            h = self.proj_out(h)
        return x + h
