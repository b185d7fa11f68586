"""On the CPU the text encoder and the VAE encoder wait in the checkpoint file (runtime/waiting_parts.py).

A run loaded that way must give exactly the numbers of a model loaded whole, read the text encoder
once per batch and give it back when the UNet runs, read the VAE encoder once, keep whatever a
LoRA merge or a --vae file changed, and leave SDXL-family models whole.
"""

import pytest
import torch

from sd_cli.loading.loader import load_model
from sd_cli.pipelines.img2img import img2img
from sd_cli.pipelines.txt2img import txt2img
from sd_cli.run.render import RunRequest, load_session
from sd_cli.sampling.denoising import SamplingParams

PARAMS = SamplingParams(sampler="euler", steps=2)
ARGS = (["a red cube"], [""], [7], PARAMS, 64, 64)


def session_model(ckpt, precision="fp32", **request):
    """The model as `sd-cli` loads it on the CPU."""
    return load_session(RunRequest(mode="txt2img", jobs=[], checkpoint=ckpt, device="cpu", precision=precision,
                                   **request)).model


def is_waiting(module) -> bool:
    return all(t.is_meta for t in [*module.parameters(), *module.buffers()])


def text_blocks(model):
    return model.cond_stage_model.transformer


def test_a_cpu_run_leaves_the_text_blocks_and_the_vae_encoder_in_the_file(sd1_ckpt):
    model = session_model(sd1_ckpt)
    assert is_waiting(text_blocks(model)) and is_waiting(model.first_stage_model.encoder)
    assert is_waiting(model.first_stage_model.quant_conv)
    assert not model.cond_stage_model.token_embedding.weight.is_meta  # the prompt parser and embeddings read it
    for held in (model.model.diffusion_model, model.first_stage_model.decoder, model.first_stage_model.post_quant_conv):
        assert not any(p.is_meta for p in held.parameters())
    assert model.device == torch.device("cpu") and model.dtype == torch.float32


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_text_encoder_is_read_for_each_batch_and_the_images_are_the_whole_models(sd1_ckpt, precision, dtype):
    model = session_model(sd1_ckpt, precision)
    whole = load_model(sd1_ckpt, dtype=dtype).model
    encode = model.encode_text
    seen = []

    def watched(*args, **kwargs):
        out = encode(*args, **kwargs)
        seen.append(is_waiting(text_blocks(model)))
        return out

    model.encode_text = watched
    first, second = txt2img(model, *ARGS), txt2img(model, *ARGS)
    expected = txt2img(whole, *ARGS)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert seen == [False, False, False, False]  # in memory while encoding (prompt and negative, twice)
    assert is_waiting(text_blocks(model))  # given back once the UNet ran
    assert model.deferred.materialisations == 2  # one read per batch
    assert is_waiting(model.first_stage_model.encoder)  # txt2img never encodes an image


@pytest.mark.parametrize("checkpoint", ["builtin", "sd1"])  # an fp16 file cast to fp32, an fp32 file viewed
def test_a_batch_read_under_inference_mode_encodes_as_the_whole_model(sd1_ckpt, checkpoint, monkeypatch):
    """Read inside inference mode, the weights must still be normal tensors: torch runs
    nn.MultiheadAttention on inference tensors by another path, whose rounding differs in a batch of two."""
    from sd_cli.loading.packaged import builtin_checkpoint

    ckpt = builtin_checkpoint() if checkpoint == "builtin" else sd1_ckpt
    model = session_model(ckpt)
    monkeypatch.setattr("sd_cli.run.render._waits_in_file", lambda *args: False)
    whole = session_model(ckpt)
    prompts = ["a red circle on a blue background", "a green square"]
    with torch.inference_mode():
        assert torch.equal(model.encode_text(prompts), whole.encode_text(prompts))
    assert not any(p.is_inference() for p in text_blocks(model).parameters())


def test_img2img_reads_the_vae_encoder_once_and_keeps_it(sd1_ckpt):
    model = session_model(sd1_ckpt)
    whole = load_model(sd1_ckpt).model
    init = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    args = (init, ["a red cube"], [""], [7], PARAMS, 0.6)
    first, second = img2img(model, *args), img2img(model, *args)
    assert torch.equal(first, img2img(whole, *args)) and torch.equal(second, first)
    assert not is_waiting(model.first_stage_model.encoder)
    assert model.deferred.materialisations == 3  # the text encoder twice, the VAE encoder once


def test_a_merged_lora_keeps_the_text_encoder_in_memory(sd1_ckpt):
    from sd_cli.loading.lora import LoraMerger

    model = session_model(sd1_ckpt)
    LoraMerger(model).apply(())  # no LoRA: nothing is read
    assert is_waiting(text_blocks(model))
    model.deferred.pin()  # what LoraMerger.apply does before it merges a LoRA in place
    txt2img(model, *ARGS)
    assert not is_waiting(text_blocks(model)) and not is_waiting(model.first_stage_model.encoder)


def test_a_lora_in_the_prompt_renders_as_with_the_whole_model(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    """The CLI merges the LoRA into waiting text blocks: the PNG must be the one of a model loaded whole."""
    import numpy as np
    from PIL import Image
    from tests.loading.test_addons import _kohya_lora

    lora_dir = tmp_path / "lora"
    lora_dir.mkdir()
    _kohya_lora(load_model(sd1_ckpt).model, lora_dir / "style.safetensors")
    common = ("txt2img", "a cat <lora:style:1>", "--ckpt", sd1_ckpt, "--steps", "2", "-W", "64", "-H", "64",
              "--seed", "3", "--lora-dir", lora_dir, "--no-watermark")
    assert run_cli(*common, "-o", tmp_path / "waiting.png").code == 0
    monkeypatch.setattr("sd_cli.run.render._waits_in_file", lambda *args: False)
    assert run_cli(*common, "-o", tmp_path / "whole.png").code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "waiting.png")), np.asarray(Image.open(tmp_path / "whole.png")))


def test_with_a_vae_file_the_vae_encoder_is_the_files(sd1_ckpt, tmp_path):
    from tests.loading.test_addons import _diffusers_vae

    _diffusers_vae(5).save_pretrained(tmp_path / "other", safe_serialization=True)
    vae_file = tmp_path / "other" / "diffusion_pytorch_model.safetensors"
    model = session_model(sd1_ckpt, vae=vae_file)
    assert not is_waiting(model.first_stage_model.encoder)  # loaded over by --vae, so not left in the file
    assert is_waiting(text_blocks(model))
    whole = load_model(sd1_ckpt).model
    from sd_cli.loading.vae_file import load_vae

    load_vae(whole, vae_file)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(model.encode_image(image), whole.encode_image(image))


def test_an_sdxl_model_is_loaded_whole(tmp_path):
    from tests.support.tiny_models import write_tiny_checkpoint

    model = session_model(write_tiny_checkpoint("sdxl", tmp_path, fmt="safetensors"))
    assert model.deferred is None and model.waiting is None


@pytest.mark.parametrize("channels", [(32, 32), (32, 64)])  # with and without the 1x1 shortcut
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_lean_vae_block_gives_the_straightforward_numbers(channels, dtype):
    """In-place SiLU and residual add compute exactly what the original's out-of-place forward does."""
    import torch.nn.functional as F
    from sd_cli.models.vae import ResnetBlock

    torch.manual_seed(0)
    block = ResnetBlock(*channels).to(dtype)
    x = torch.randn(2, channels[0], 16, 16, dtype=dtype)
    with torch.inference_mode():
        h = block.conv2(F.silu(block.norm2(block.conv1(F.silu(block.norm1(x))))))
        expected = block.nin_shortcut(x) + h
        got = block(x)
    assert torch.equal(got, expected)
