"""--offload (sd_cli/offload.py): the part at work is moved in, the others wait in host memory.

This machine has no GPU, so the execution device here is the CPU too: the tests prove the order
of the moves and that offloading changes no value; the GPU memory it saves is measured by the
benchmark (docs/benchmarks.md).
"""

import torch

from sd_cli import pipeline
from sd_cli.loading import load_model

PARAMS = pipeline.SamplingParams(steps=2)


def test_each_part_is_moved_in_when_used_and_the_image_is_unchanged(sd1_ckpt):
    plain = load_model(sd1_ckpt).model
    offloaded = load_model(sd1_ckpt, device="cpu", offload=True).model
    args = (["a red cube"], [""], [7], PARAMS, 64, 64)
    expected = pipeline.txt2img(plain, *args)
    first = pipeline.txt2img(offloaded, *args)
    second = pipeline.txt2img(offloaded, *args)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    # once per batch, not per step: the UNet stays in for both of its steps
    assert offloaded.offload.moves == ["text encoder", "UNet", "VAE"] * 2


def test_img2img_moves_the_vae_in_to_encode_the_image(sd1_ckpt):
    model = load_model(sd1_ckpt, device="cpu", offload=True).model
    image = torch.zeros(1, 3, 64, 64)
    pipeline.img2img(model, image, ["a red cube"], [""], [7], PARAMS, strength=0.5)
    assert model.offload.moves == ["text encoder", "VAE", "UNet", "VAE"]


def test_offload_with_compile_is_refused(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "1", "--offload", "--compile",
                     "--device", "cuda", "-o", tmp_path / "x.png")
    assert result.code == 2
    assert "--offload and --compile do not go together" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_offload_on_the_cpu_says_there_is_nothing_to_offload(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "1", "--seed", "3", "--offload",
                     "-o", tmp_path / "x.png")
    assert result.code == 0, result.stderr
    assert "nothing to offload" in result.stderr
    assert (tmp_path / "x.png").exists()
