"""The benchmark's own measuring helpers (sd_cli/bench.py): the numbers it reports are read right.
No timings are asserted; only what the figures are made of."""

import sys

import pytest
import torch

from sd_cli import bench

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
