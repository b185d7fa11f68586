"""Freed memory is reused while sampling on the CPU, and glibc's own behaviour is back afterwards
(sd_cli/allocator.py). Measured by resident memory: a reused block is already in the process, a
fresh mapping has to be brought in page by page (whatever the page size: huge pages or not)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sd_cli.runtime import allocator
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.pipelines.txt2img import txt2img
from sd_cli.loading.loader import load_model

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="the knobs are glibc's")
BLOCK = 64 * 2**20  # above glibc's largest mapping threshold (32 MiB)

# Each case runs in a fresh process: what an earlier case left in the heap would decide where the
# next block comes from.
PREAMBLE = """
import os, torch
from sd_cli.runtime import allocator
cpu = torch.device("cpu")

def resident_bytes():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def growth_of_a_second_block():
    # Resident bytes that filling a 64 MiB block adds, right after a larger one was freed (torch
    # aligns its blocks, so a freed block of exactly the same size is a few bytes short).
    first = torch.ones(2**25)
    del first
    before = resident_bytes()
    second = torch.ones(2**24)
    return resident_bytes() - before
"""


def run_fresh(code: str, **env: str) -> list[float]:
    """The numbers `code` prints, run after PREAMBLE in a new Python process."""
    inherited = {name: value for name, value in os.environ.items() if not _tunes_malloc(name)}
    out = subprocess.run([sys.executable, "-c", PREAMBLE + textwrap.dedent(code)], capture_output=True, text=True,
                         env={**inherited, **env}, check=True)
    return [float(word) for word in out.stdout.split()]


def _tunes_malloc(variable: str) -> bool:
    """An environment variable that would make sd_cli leave malloc alone (a CI's own tuning)."""
    return variable in allocator.USER_TUNABLES or variable == "GLIBC_TUNABLES"


def test_a_freed_block_is_reused_within():
    outside, inside = run_fresh("""
        outside = growth_of_a_second_block()
        with allocator.reusing_freed_memory(cpu):
            growth_of_a_second_block()  # the heap grows to hold the block once
            print(outside, growth_of_a_second_block())
        """)
    assert outside > 0.9 * BLOCK
    assert inside < 0.05 * BLOCK


def test_leaving_gives_the_freed_blocks_back():
    before, within, after = run_fresh("""
        before = resident_bytes()
        with allocator.reusing_freed_memory(cpu):
            blocks = [torch.ones(2**24) for _ in range(4)]  # 256 MiB, freed but kept while within
            del blocks
            within = resident_bytes()
        print(before, within, resident_bytes())
        """)
    assert within - before > 240 * 2**20
    assert after - before < 16 * 2**20


def test_leaving_an_inner_use_keeps_reusing_until_the_outer_one_ends():
    (growth,) = run_fresh("""
        with allocator.reusing_freed_memory(cpu):
            with allocator.reusing_freed_memory(cpu):
                growth_of_a_second_block()
            print(growth_of_a_second_block())
        """)
    assert growth < 0.05 * BLOCK


def test_other_devices_and_user_tunables_leave_malloc_as_it_is():
    code = """
        with allocator.reusing_freed_memory(torch.device("meta")):
            print(growth_of_a_second_block())
        with allocator.reusing_freed_memory(cpu):
            print(growth_of_a_second_block())
        """
    meta, _ = run_fresh(code)
    assert meta > 0.9 * BLOCK
    _, user_tuned = run_fresh(code, MALLOC_TRIM_THRESHOLD_="131072")
    assert user_tuned > 0.9 * BLOCK


def test_the_unet_samples_reusing_memory_and_the_vae_decodes_without(sd1_ckpt, monkeypatch):
    """Reuse only while sampling: the VAE's doubling buffers would grow the heap instead."""
    for variable in filter(_tunes_malloc, list(os.environ)):
        monkeypatch.delenv(variable)
    model = load_model(sd1_ckpt).model
    depth_seen = {"unet": set(), "vae": set()}
    unet, decode = model.unet, model.decode_latents

    def recording_unet(*args, **kwargs):
        depth_seen["unet"].add(allocator._depth)
        return unet(*args, **kwargs)

    def recording_decode(*args, **kwargs):
        depth_seen["vae"].add(allocator._depth)
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "unet", recording_unet)
    monkeypatch.setattr(model, "decode_latents", recording_decode)
    for sampler in ("ddim", "euler_a"):  # the DDIM family and the k-diffusion samplers
        txt2img(model, ["a cat"], [""], [0], SamplingParams(sampler=sampler, steps=2), 64, 64)
    assert min(depth_seen["unet"]) >= 1  # k-samplers reach sample_k through denoise: depth 2
    assert depth_seen["vae"] == {0}
