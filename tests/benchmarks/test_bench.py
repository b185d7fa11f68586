"""The benchmark's own measuring helpers (sd_cli/bench.py): the numbers it reports are read right.
No timings are asserted; only what the figures are made of."""

import sys
from pathlib import Path

import pytest
import torch

from benchmarks import compare as bench
from benchmarks import unet_call as bench_unet_call

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


@linux_only
def test_the_peak_is_what_the_work_added_above_what_was_held():
    held = torch.ones(2**26)  # 256 MiB held before and during: not counted

    def work():
        torch.ones(2**26).add_(1)  # 256 MiB, added to in place

    _, added, _ = bench._timed_with_peak(work, torch.device("cpu"))
    assert 0.25 < added < 0.32  # 268 MB, give or take the interpreter's own
    del held


@linux_only
def test_memory_modes_figure_on_a_tiny_checkpoint(sd1_ckpt):
    result = bench.bench_memory_modes(sd1_ckpt, "cpu", "fp32", size=768, steps=1)
    assert set(result) == {"device", "precision", "size", "decode_whole", "decode_tiled", "nan_guard_seconds",
                           "tiling_time_ratio"}  # no offload figure without a GPU
    whole, tiled = result["decode_whole"], result["decode_tiled"]
    # The tiny VAE's decoder at 768²: a whole decode holds full-size maps, a tiled one 512² tiles.
    assert tiled["peak_added_gb"] < whole["peak_added_gb"]
    assert result["tiling_time_ratio"] == pytest.approx(tiled["seconds"] / whole["seconds"], rel=1e-2)


def test_step_rounds_alternate_fresh_processes_and_pool_their_times(monkeypatch):
    """Each round starts every variant once, in turn; the figure is the median over all runs and
    each process's own median is kept, so a slow process shows instead of deciding the ratio."""
    started = []
    times = {"sd_cli": iter([[1.0, 1.2], [3.0, 3.2]]), "diffusers": iter([[2.0, 2.0], [2.0, 4.0]])}

    def fake_child(variant, st, device, precision, steps, size, repeats):
        started.append(variant)
        return {"seconds": next(times[variant]), "peak_vram_gb": 2.5, "device": "GPU"}

    monkeypatch.setattr(bench, "_step_child", fake_child)
    result = bench.bench_steps(Path("x.safetensors"), "cuda", "fp16", repeats=2, steps=3, size=64, rounds=2)
    assert started == ["sd_cli", "diffusers", "sd_cli", "diffusers"]
    assert result["eager"]["sd_cli"] == 2.1 and result["eager"]["diffusers"] == 2.0
    assert result["eager"]["ratio"] == 1.05
    assert result["process_medians"] == {"sd_cli": [1.1, 3.1], "diffusers": [2.0, 3.0]}
    assert result["peak_vram_gb"] == {"sd_cli": 2.5, "diffusers": 2.5} and result["device"] == "GPU"


def test_in_process_calls_alternate_after_one_warm_up_each():
    order = []
    runs = {"sd_cli": lambda: order.append("s"), "diffusers": lambda: order.append("d")}
    times = bench.alternate(runs, rounds=2, calls=3, sync=lambda: None)
    assert "".join(order) == "sd" + "sssddd" * 2
    assert [len(t) for t in times.values()] == [6, 6] and all(x >= 0 for t in times.values() for x in t)


def test_groupnorm_variants_change_the_norm_only_for_their_call():
    from sd_cli.models.attention import GroupNorm32

    norm = GroupNorm32(64, 1e-5).to(torch.bfloat16)
    x = torch.randn(1, 64, 4, 4, generator=torch.Generator().manual_seed(0)).bfloat16()
    own = GroupNorm32.float_affine, GroupNorm32.forward
    seen = {}
    for variant in bench_unet_call.GROUPNORM_VARIANTS:
        seen[variant] = bench_unet_call._with_groupnorm(variant, lambda: (norm.float_affine(), norm(x)))()
        assert (GroupNorm32.float_affine, GroupNorm32.forward) == own
    assert seen["cast_per_call"][0][0] is not norm.float_affine()[0]  # made anew, not the kept one
    assert torch.equal(seen["cast_per_call"][1], norm(x))
    assert torch.equal(seen["input_dtype"][1], torch.nn.functional.group_norm(x, 32, norm.weight, norm.bias, 1e-5))


def test_attention_candidates_compute_attention_and_report_their_distance_from_float32(monkeypatch):
    """The raw-scores candidate is attention (float32 inputs: equal to the fused kernel to rounding);
    in bf16, sd_cli's shifted scores have less than half its error on sharp attention."""
    from benchmarks import attention as bench_attention

    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 600, 16, generator=generator) for _ in range(3))  # 600: a partial last block
    torch.testing.assert_close(bench_attention.scores_in_input_dtype(q, k, v),
                               torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=2e-6, rtol=1e-5)

    monkeypatch.setattr(bench_attention, "SHAPES", ((1, 2, 600, 16),))
    monkeypatch.setattr(bench_attention, "SHARPNESS", (2.5,))
    report = bench_attention.bench_attention("bf16", repeats=1)
    assert report["precision"] == "bfloat16"
    figures = report["1x2x600x16_sharpness_2.5"]
    assert set(figures) == {"sd_cli", "fused_float32", "fused_input_dtype", "scores_in_input_dtype"}
    assert figures["fused_float32"]["rms_error"] < 0.003  # bf16's own rounding of the output: 2^-9 at most
    assert figures["sd_cli"]["rms_error"] < figures["scores_in_input_dtype"]["rms_error"] / 2
    assert all(figure["seconds"] > 0 for figure in figures.values())
