"""multi_head_attention (sd_cli/models/attention.py): bfloat16 on the CPU runs as bf16 matrix products
over long key sequences where the CPU has them (cpu_attention.py: scores shifted by their row's
maximum before rounding, one head per thread) and in float32 otherwise."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.attention import scores_in_input_dtype
from sd_cli.models import cpu_attention
from sd_cli.models.attention import CrossAttention, GroupNorm32, multi_head_attention
from sd_cli.models.cpu_attention import attention_in_bf16_blocks
from sd_cli.loading.packaged import builtin_checkpoint

BUILTIN = builtin_checkpoint()


def qkv(dtype, tokens=300, keys=None, sharpness=1.0, width=40):
    generator = torch.Generator().manual_seed(0)
    shapes = ((2, 8, tokens, width), (2, 8, keys or tokens, width), (2, 8, keys or tokens, width))
    scales = (sharpness, sharpness, 1.0)
    return [(torch.randn(shape, generator=generator) * scale).to(dtype) for shape, scale in zip(shapes, scales)]


def rms_error(out, q, k, v):
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    return float((out.double() - exact).norm() / exact.norm())


def test_bfloat16_over_few_keys_is_float32_attention_rounded_once():
    q, k, v = qkv(torch.bfloat16, tokens=300, keys=77)  # cross-attention over the text tokens
    with torch.inference_mode():
        out = multi_head_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16())
    # ... which is closer to exact attention than the bfloat16 kernel's own result
    assert rms_error(out, q, k, v) < rms_error(F.scaled_dot_product_attention(q, k, v), q, k, v)


needs_bf16_products = pytest.mark.skipif(not cpu_attention.BF16_PRODUCTS,
                                         reason="the CPU has no AVX-512 BF16 (or torch no GNU OpenMP)")
uses_the_blocks = pytest.mark.skipif(not cpu_attention.AVAILABLE,
                                     reason="the CPU has no AVX-512 BF16, or has AMX (the fused kernel is used)")
needs_amx = pytest.mark.skipif(not cpu_attention.FUSED_BF16, reason="the CPU has no AMX")


def fused_bfloat16(q, k, v):
    """What bf16 attention is when the blocks are not used: the fused kernel in bf16 with AMX (over
    many keys), else in float32 rounded once."""
    if cpu_attention.FUSED_BF16 and k.shape[2] >= cpu_attention.MIN_KEYS:
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()


@uses_the_blocks
def test_bfloat16_over_many_keys_runs_as_bf16_blocks_with_shifted_scores():
    q, k, v = qkv(torch.bfloat16, tokens=600, sharpness=2.5)
    with torch.inference_mode():
        out = multi_head_attention(q, k, v)
        assert torch.equal(out, attention_in_bf16_blocks(q, k, v))
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    # Merging the heads afterwards is a view, as after the fused kernel.
    assert out.transpose(1, 2).reshape(2, 600, 320).data_ptr() == out.data_ptr()
    # Sharp attention: rounding the raw scores costs 3-4x more than shifting them first.
    shifted, raw = rms_error(out, q, k, v), rms_error(scores_in_input_dtype(q, k, v), q, k, v)
    assert shifted < 0.006 and shifted < raw / 2.5


@needs_bf16_products
def test_the_blocks_ignore_what_fresh_memory_holds(monkeypatch):
    """oneDNN's bf16 product reads one element past each row of a strided operand (torch 2.14 on
    AMX, 80-wide heads as in SD 1.5's middle levels): with every fresh buffer full of NaN bits the
    output is still finite and the same attention."""
    q, k, v = qkv(torch.bfloat16, tokens=512, width=80)
    with torch.inference_mode():
        clean = attention_in_bf16_blocks(q, k, v)
        real_new_empty = torch.Tensor.new_empty
        monkeypatch.setattr(torch.Tensor, "new_empty",
                            lambda self, *size, **kw: real_new_empty(self, *size, **kw).fill_(float("nan")))
        poisoned = attention_in_bf16_blocks(q, k, v)
    assert torch.isfinite(poisoned).all()
    assert torch.equal(poisoned, clean)


def test_the_blocks_compute_attention(monkeypatch):
    """In float32 (no rounding to speak of) the blocked product is the fused kernel's attention:
    the subtracted row maximum cancels in softmax, and every block, the last one partial included,
    lands in its place."""
    monkeypatch.setattr(cpu_attention, "BLOCK_SCORES", 256 * 700)  # blocks of 256 queries: 4 and a part
    q, k, v = qkv(torch.float32, tokens=1100, keys=700, sharpness=3.0)
    torch.testing.assert_close(attention_in_bf16_blocks(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               atol=5e-5, rtol=1e-4)  # float32 sums in another order, scores up to ~30


@uses_the_blocks
def test_the_workers_run_torch_single_threaded_and_leave_the_callers_count_alone():
    q, k, v = qkv(torch.bfloat16, tokens=600)
    before = torch.get_num_threads()
    with torch.inference_mode():
        multi_head_attention(q, k, v)
    assert torch.get_num_threads() == before
    counts = {cpu_attention._workers().submit(torch.get_num_threads).result() for _ in range(8)}
    assert counts == {1}


def test_fewer_heads_than_workers_stay_on_the_fused_kernel(monkeypatch):
    """Each worker takes whole (batch, head) pairs; with fewer pairs than workers the fused kernel,
    which parallelises within a head, keeps more cores busy."""
    monkeypatch.setattr(cpu_attention, "WORKERS", 32)
    q, k, v = qkv(torch.bfloat16, tokens=600)  # 2 x 8 = 16 pairs
    with torch.inference_mode():
        out = multi_head_attention(q, k, v)
    assert torch.equal(out, fused_bfloat16(q, k, v))


def test_with_gradients_bfloat16_stays_on_the_fused_kernel():
    q, k, v = qkv(torch.bfloat16)
    with torch.enable_grad():
        out = multi_head_attention(q, k, v)
    assert torch.equal(out, fused_bfloat16(q, k, v))


@needs_amx
def test_with_amx_bfloat16_is_the_fused_kernel_as_close_as_float32_attention():
    """With AMX torch's fused kernel sums in float32 on AMX tiles: on sharp attention its bf16
    output is as close to exact as float32 attention rounded once (and the blocks' is further)."""
    q, k, v = qkv(torch.bfloat16, tokens=600, sharpness=2.5)
    with torch.inference_mode():
        out = multi_head_attention(q, k, v)
        blocks = attention_in_bf16_blocks(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    float32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()
    assert rms_error(out, q, k, v) < 1.2 * rms_error(float32, q, k, v)
    assert rms_error(out, q, k, v) < rms_error(blocks, q, k, v)


@uses_the_blocks
@pytest.mark.skipif(not BUILTIN.is_file(), reason="the built-in model is not in checkpoints/")
def test_the_builtin_unet_in_bf16_is_as_close_to_float32_with_the_blocks(monkeypatch):
    """Trained weights (the built-in model; some of its heads are sharp): the UNet's bf16 output is
    as far from its float32 output with the blocked attention as with float32 attention."""
    from sd_cli.loading.loader import load_model

    fp32 = load_model(BUILTIN, dtype=torch.float32).model
    bf16 = load_model(BUILTIN, dtype=torch.bfloat16).model
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=generator)  # 256²: 1024 and 256 tokens, both blocked
    t = torch.tensor([500, 500])
    blocked_calls = []
    monkeypatch.setattr(cpu_attention, "attention_in_bf16_blocks",
                        lambda *a: blocked_calls.append(1) or attention_in_bf16_blocks(*a))
    with torch.inference_mode():
        context = fp32.encode_text(["a red circle on a blue background", ""])
        reference = fp32.unet(x, t, context)
        blocked = bf16.unet(x, t, context).float()
        monkeypatch.setattr(cpu_attention, "MIN_KEYS", 10**9)
        fused = bf16.unet(x, t, context).float()
    assert blocked_calls
    error = lambda out: float((out - reference).norm() / reference.norm())  # noqa: E731
    assert error(blocked) < 0.006
    assert error(blocked) < 1.15 * error(fused)


@needs_amx
@pytest.mark.skipif(not BUILTIN.is_file(), reason="the built-in model is not in checkpoints/")
def test_with_amx_the_builtin_unet_in_bf16_is_as_close_to_float32_with_the_fused_kernel(monkeypatch):
    """Trained weights: with AMX the UNet's bf16 output is as far from its float32 output with the
    fused kernel's bf16 attention as with float32 attention."""
    from sd_cli.loading.loader import load_model

    fp32 = load_model(BUILTIN, dtype=torch.float32).model
    bf16 = load_model(BUILTIN, dtype=torch.bfloat16).model
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=generator)  # 256²: 1024 and 256 tokens
    t = torch.tensor([500, 500])
    with torch.inference_mode():
        context = fp32.encode_text(["a red circle on a blue background", ""])
        reference = fp32.unet(x, t, context)
        fused = bf16.unet(x, t, context).float()
        monkeypatch.setattr(cpu_attention, "FUSED_BF16", False)
        monkeypatch.setattr(cpu_attention, "AVAILABLE", False)
        float_attention = bf16.unet(x, t, context).float()
    assert not torch.equal(fused, float_attention)
    error = lambda out: float((out - reference).norm() / reference.norm())  # noqa: E731
    assert error(fused) < 0.006
    assert error(fused) < 1.15 * error(float_attention)


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


@needs_bf16_products
@uses_the_blocks
def test_compiled_code_keeps_the_blocks_as_one_op(monkeypatch):
    """torch.compile (fullgraph, as --compile runs the UNet) calls the blocks as an opaque op
    rather than tracing their loops, and gets the eager result."""
    calls = []
    monkeypatch.setattr(cpu_attention, "attention_in_bf16_blocks",
                        lambda *a: calls.append(1) or attention_in_bf16_blocks(*a))
    q, k, v = qkv(torch.bfloat16, tokens=600)
    compiled = torch.compile(lambda q, k, v: multi_head_attention(q, k, v) * 2, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        out = compiled(q, k, v)
        expected = attention_in_bf16_blocks(q, k, v) * 2
    assert calls and torch.equal(out, expected)
