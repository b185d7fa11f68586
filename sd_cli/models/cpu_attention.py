"""bfloat16 attention on x86 CPUs with AVX-512 BF16 and no AMX: bf16 matrix products, one head per thread.

Why not torch's fused kernel there: on the UNet's shapes it is slower in bfloat16 than in float32,
and in float32 it runs at the CPU's float32 rate, while oneDNN multiplies bf16 matrices at up to 4x
that rate (AVX-512 BF16; 500-750 GFLOP/s against 190 on this project's 2-core EPYC). Attention is
half of a bf16 UNet step there, so this is where a bf16 step is won (docs/benchmarks.md).
On a CPU with AMX the fused kernel multiplies in AMX tiles with float32 sums: 3-6x faster than
these blocks on SD's shapes and as close to exact as float32 attention, so it is used instead
(FUSED_BF16).

How: per (batch, head) pair and block of queries, three products and a softmax, with the scores
rounded to bf16 only after subtracting their row's maximum (attention_in_bf16_blocks says why).
Each pair runs whole on one worker thread with torch single-threaded in it. Run as one op per
product on torch's own threads, every op would be a parallel region, and a sleeping OpenMP
worker (sd_cli sets OMP_WAIT_POLICY=PASSIVE, which keeps sd_cli fast beside other busy
processes) takes tens of microseconds to wake in a virtual machine, hundreds of times per layer.
"""

from __future__ import annotations

import ctypes
import functools
import math
import platform
from concurrent.futures import ThreadPoolExecutor

import torch

# A block's scores (queries x keys bf16 values) stay within 2M values (4 MB), so that every
# worker's block and its softmax stay in the shared L3 cache: 512 queries over 4096 keys, 227
# over 9216 (at 9216 keys, blocks of 512 queries took 1.6 s instead of 1.0).
BLOCK_SCORES = 1 << 21
# Below this many keys (cross-attention over the 77 text tokens, the 8x8 level's 64) torch's fused
# kernel in float32 is as fast.
MIN_KEYS = 256


def _available() -> bool:
    """Where this was measured: x86 with AVX-512 BF16 (bf16 products in hardware), and torch on
    GNU OpenMP (whose per-thread count _single_threaded sets)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return False
    try:
        return "libgomp" in open("/proc/self/maps").read()
    except OSError:
        return False


def _fused_kernel_has_amx() -> bool:
    """torch's fused CPU kernel runs bf16 on AMX tiles where the CPU has them."""
    return getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


# Decided once at import (torch is imported, so its OpenMP library is loaded): torch.compile
# traces worth_it, and this way it sees constants.
FUSED_BF16 = _fused_kernel_has_amx()
BF16_PRODUCTS = _available()
AVAILABLE = BF16_PRODUCTS and not FUSED_BF16
WORKERS = torch.get_num_threads()  # as many as torch computes with


def worth_it(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Enough keys, and a (batch, head) pair for every worker (else the fused kernel, which
    parallelises within a head, keeps more cores busy)."""
    return AVAILABLE and k.shape[2] >= MIN_KEYS and q.shape[0] * q.shape[1] >= WORKERS


@torch.library.custom_op("sd_cli::attention_in_bf16_blocks", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """attention_in_bf16_blocks as one op, which torch.compile keeps as it is instead of tracing
    (and unrolling) its loops."""
    return attention_in_bf16_blocks(q, k, v)


@attention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, width = q.shape
    return q.new_empty(batch, tokens, heads, width).transpose(1, 2)


def attention_in_bf16_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over [B, heads, tokens, d] bf16 CPU tensors, one (batch, head) pair at a
    time per worker thread.

    A bf16 product accumulates in float32 and rounds its result once, to 8 significant bits:
    rounding raw scores would cost the largest most, and those carry the softmax. So each block
    is multiplied twice: once for an estimate m of every row's maximum, then as [q, m]·[k, -1]ᵀ,
    which is q·kᵀ - m computed inside the product (softmax ignores a per-row constant). The scores
    that matter are near 0 when rounded: the error this adds is about what q and k already carry
    from being bf16 (sharp attention: 0.5% of the output's norm, against 1.7% for raw bf16
    scores; a whole UNet's output is as far from float32 as with float32 attention). The
    probabilities are rounded to bf16 for the product with v, as torch's fused bf16 kernel does.
    The original's own CPU bf16 path (v2 under CPU autocast) rounds the raw scores.
    """
    batch, heads, tokens, width = q.shape
    # The output laid out as [B, tokens, heads, d], so that merging the heads after is a view.
    out = torch.empty(batch, tokens, heads, width, dtype=q.dtype).transpose(1, 2)
    # Per pair: [q/√d | m] with m's column filled block by block, and [k | -1]. The buffer starts
    # as zeros, with one spare element after it: oneDNN's bf16 product reads the element after
    # each row of a strided operand (measured with torch 2.14 on AMX, at K of 63, 80 and 81), so
    # NaN bits left in fresh memory there would turn whole rows of scores into NaN.
    shape = (batch, heads, tokens, width + 1)
    queries_and_max = q.new_zeros(math.prod(shape) + 1)[:-1].view(shape)
    torch.mul(q, width ** -0.5, out=queries_and_max[..., :width])
    keys_and_minus_one = k.new_empty(batch, heads, k.shape[2], width + 1)
    keys_and_minus_one[..., :width] = k
    keys_and_minus_one[..., width] = -1
    block = max(1, BLOCK_SCORES // k.shape[2])
    inference = torch.is_inference_mode_enabled()

    def attend(pairs):
        with torch.inference_mode(inference), torch.no_grad():
            for b, h in pairs:
                _one_head(queries_and_max[b, h], keys_and_minus_one[b, h], v[b, h], out[b, h], block)

    pairs = [(b, h) for b in range(batch) for h in range(heads)]
    list(_workers().map(attend, [pairs[i::WORKERS] for i in range(WORKERS)]))
    return out


def _one_head(queries_and_max, keys_and_minus_one, values, out, block: int) -> None:
    width = values.shape[1]
    keys_t = keys_and_minus_one[:, :width].t()
    keys_and_minus_one_t = keys_and_minus_one.t()
    for start in range(0, queries_and_max.shape[0], block):
        rows = queries_and_max[start:start + block]
        torch.amax(torch.mm(rows[:, :width], keys_t), dim=-1, keepdim=True, out=rows[:, width:])
        scores = torch.mm(rows, keys_and_minus_one_t)  # q·kᵀ - m, rounded near 0 where it matters
        torch.mm(torch.softmax(scores, dim=-1), values, out=out[start:start + block])


@functools.cache
def _workers() -> ThreadPoolExecutor:
    """WORKERS threads that each run torch single-threaded."""
    return ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="sd_cli-attention",
                              initializer=_single_threaded)


def _single_threaded() -> None:
    # torch sets a new thread's OpenMP thread count at the thread's first parallel op (to the
    # process's count), so that op comes first; then this thread alone is set to one thread.
    # torch.set_num_threads would also change MKL's count for the whole process.
    torch.ones(1 << 16).sum()
    _libgomp().omp_set_num_threads(1)


@functools.cache
def _libgomp():
    return ctypes.CDLL("libgomp.so.1")
