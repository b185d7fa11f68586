"""`python -m benchmarks --only attention`: the UNet's largest attention, sd_cli's way and the others.

Half of a bf16 UNet call on the CPU is attention (docs/benchmarks.md). The figure times, on
random q, k and v of the SD 1.5 UNet's two largest self-attention shapes, each candidate with how
far it is from float32 attention (relative to that result's largest value and to its norm), at
the scale random weights give the scores and at 2.5 times it (sharper attention, as trained heads
have, where rounding the scores costs most):

- `sd_cli`: what the UNet runs (`multi_head_attention`; in bf16 on a CPU with AVX-512 BF16, bf16
  products with the scores shifted by their row's maximum before rounding, one head per thread:
  `cpu_attention.attention_in_bf16_blocks`);
- `fused_float32`: torch's fused kernel on float32 copies (sd_cli's way before the eighth session);
- `fused_input_dtype`: torch's fused kernel in the input's dtype (what diffusers runs);
- `scores_in_input_dtype`: blocks of bf16 products with the raw scores rounded, on torch's own
  threads (not taken: 3-4x the shifted scores' error on sharp attention).
"""

from __future__ import annotations

import statistics

# (batch, heads, tokens, head width): SD 1.5 at 512², CFG batch 2; the 64² and 32² latent levels.
SHAPES = ((2, 8, 4096, 40), (2, 8, 1024, 80))
SHARPNESS = (1.0, 2.5)


def bench_attention(precision: str, repeats: int) -> dict:
    import torch

    from sd_cli.runtime.allocator import reusing_freed_memory
    from sd_cli.runtime.device import resolve_dtype

    cpu = torch.device("cpu")
    dtype = resolve_dtype(precision, cpu)
    report = {"precision": str(dtype).removeprefix("torch.")}
    # Under the allocator setting the UNet samples with: without it glibc maps and unmaps the
    # blocks' 4 MB buffers over and over, which costs the blocked candidates a quarter more.
    with torch.inference_mode(), reusing_freed_memory(cpu):
        for shape in SHAPES:
            for sharpness in SHARPNESS:
                report[f"{'x'.join(map(str, shape))}_sharpness_{sharpness}"] = _compare(shape, sharpness, dtype, repeats)
    return report


def candidates() -> dict:
    import torch.nn.functional as F

    from sd_cli.models.attention import attention_in_float32, multi_head_attention

    return {"sd_cli": multi_head_attention,
            "fused_float32": attention_in_float32,
            "fused_input_dtype": F.scaled_dot_product_attention,
            "scores_in_input_dtype": scores_in_input_dtype}


def _compare(shape, sharpness: float, dtype, repeats: int) -> dict:
    import torch.nn.functional as F

    from benchmarks.compare import alternate

    q, k, v = _inputs(shape, sharpness, dtype)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    attends = {name: (lambda attend=attend: attend(q, k, v)) for name, attend in candidates().items()}
    errors = {name: attend().float() - reference for name, attend in attends.items()}
    times = alternate(attends, rounds=repeats, calls=1, sync=lambda: None)
    return {name: {"seconds": round(statistics.median(times[name]), 4),
                   "max_error": round(float(error.abs().max() / reference.abs().max()), 5),
                   "rms_error": round(float(error.norm() / reference.norm()), 5)}
            for name, error in errors.items()}


def _inputs(shape, sharpness: float, dtype):
    """q, k, v laid out as the UNet makes them: heads split out of one [B, N, heads·d] projection."""
    import torch

    batch, heads, tokens, width = shape
    generator = torch.Generator().manual_seed(0)

    def make(scale: float):
        x = torch.randn(batch, tokens, heads * width, generator=generator) * scale
        return x.to(dtype).view(batch, tokens, heads, width).transpose(1, 2)

    return make(sharpness), make(sharpness), make(1.0)


def scores_in_input_dtype(q, k, v):
    """attention_in_bf16_blocks without the shift: the raw scores are rounded to the input's dtype."""
    import torch

    from sd_cli.models.cpu_attention import BLOCK_SCORES

    block = max(1, BLOCK_SCORES // k.shape[2])
    out = torch.empty(q.shape, dtype=q.dtype)
    scaled_q = q * q.shape[-1] ** -0.5
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            keys_t, values = k[b, h].t(), v[b, h]
            for start in range(0, q.shape[2], block):
                scores = torch.mm(scaled_q[b, h, start:start + block], keys_t)
                torch.mm(torch.softmax(scores, dim=-1), values, out=out[b, h, start:start + block])
    return out
