"""--offload (sd_cli/offload.py): the part at work is moved in, the others wait in host memory.

This machine has no GPU, so the execution device here is the CPU too: the tests prove the order
of the moves and that offloading changes no value; the GPU memory it saves is measured by the
benchmark (docs/benchmarks.md).
"""

import torch

from sd_cli.sampling.denoising import SamplingParams
from sd_cli.pipelines.img2img import img2img
from sd_cli.pipelines.txt2img import txt2img
from sd_cli.loading.loader import load_model

PARAMS = SamplingParams(steps=2)


def test_each_part_is_moved_in_when_used_and_the_image_is_unchanged(sd1_ckpt):
    plain = load_model(sd1_ckpt).model
    offloaded = load_model(sd1_ckpt, device="cpu", offload=True).model
    args = (["a red cube"], [""], [7], PARAMS, 64, 64)
    expected = txt2img(plain, *args)
    first = txt2img(offloaded, *args)
    second = txt2img(offloaded, *args)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    # once per batch, not per step: the UNet stays in for both of its steps
    assert offloaded.offload.moves == ["text encoder", "UNet", "VAE"] * 2


def test_img2img_moves_the_vae_in_to_encode_the_image(sd1_ckpt):
    model = load_model(sd1_ckpt, device="cpu", offload=True).model
    image = torch.zeros(1, 3, 64, 64)
    img2img(model, image, ["a red cube"], [""], [7], PARAMS, strength=0.5)
    assert model.offload.moves == ["text encoder", "VAE", "UNet", "VAE"]


def test_offload_with_compile_is_refused(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "1", "--offload", "--compile",
                     "--device", "cuda", "-o", tmp_path / "x.png")
    assert result.code == 2
    assert "--offload and --compile do not go together" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_offload_on_the_cpu_says_there_is_nothing_to_offload(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "1", "--seed", "3", "--offload",
                     "--device", "cpu", "-o", tmp_path / "x.png")
    assert result.code == 0, result.stderr
    assert "nothing to offload" in result.stderr
    assert (tmp_path / "x.png").exists()


def _shares_memory_with(tensor: torch.Tensor, flat: torch.Tensor) -> bool:
    start = flat.data_ptr()
    return start <= tensor.data_ptr() < start + flat.numel()


def test_each_part_waits_in_one_flat_host_buffer_with_its_layout(sd1_ckpt):
    model = load_model(sd1_ckpt, device="cpu", offload=True).model
    reference = load_model(sd1_ckpt).model
    for name, part in model.offload.offloaded.items():
        module = model.offload.parts[name]
        assert all(_shares_memory_with(t, part.host) for t in [*module.parameters(), *module.buffers()])
        assert not part.host.is_pinned()  # page-locked only for a CUDA device
    conv = model.model.diffusion_model.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the CPU layout survives
    for (key, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(ours, theirs), key


def test_a_change_made_while_a_part_is_in_survives_moving_out(sd1_ckpt):
    """What a LoRA merged between batches does: the change is copied back, not lost."""
    model = load_model(sd1_ckpt, device="cpu", offload=True).model
    unet = model.model.diffusion_model
    weight = unet.out[2].weight
    expected = weight.detach().clone() + 1
    model.offload.use("UNet")
    with torch.no_grad():
        weight += 1
    model.offload.use("VAE")
    model.offload.use("UNet")
    assert torch.equal(weight, expected)


def test_tensors_replaced_while_in_are_copied_back_into_the_buffer(sd1_ckpt):
    """The VAE's float32 retry casts the part and back, which makes new tensors: moving out copies
    them into the host buffer one by one and points the part at it again."""
    model = load_model(sd1_ckpt, device="cpu", offload=True).model
    vae = model.first_stage_model
    model.offload.use("VAE")
    vae.double()
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(0.25)
    vae.float()
    model.offload.use("UNet")
    host = model.offload.offloaded["VAE"].host
    assert all(_shares_memory_with(p, host) for p in vae.parameters())
    assert torch.equal(vae.decoder.conv_out.bias, torch.full_like(vae.decoder.conv_out.bias, 0.25))
