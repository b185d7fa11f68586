"""--vae, LoRA and the hires fix, with files built here in the real formats (diffusers AutoencoderKL
key names, kohya LoRA safetensors) for the tiny SD 1.x checkpoint."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sd_cli.files.infotext import parse_infotext
from tiny_models import tiny_config

FAST = ["--steps", "2", "--seed", "7", "--no-watermark"]
RANK = 4
ALPHA = 2.0


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _fields(path):
    return parse_infotext(Image.open(path).info["parameters"])[2]


def _diffusers_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=(32, 32, 64, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=32).eval()


# -- --vae ---------------------------------------------------------------------------------------

def test_diffusers_vae_keys_map_to_the_original(tmp_path):
    from sd_cli.loading.checkpoint import read_checkpoint
    from sd_cli.models.vae import AutoencoderKL
    from sd_cli.loading.vae_file import original_vae_keys

    theirs = _diffusers_vae(3)
    theirs.save_pretrained(tmp_path / "vae", safe_serialization=True)
    weights = original_vae_keys(read_checkpoint(tmp_path / "vae" / "diffusion_pytorch_model.safetensors").state_dict)
    params = tiny_config("sd1")["model"]["params"]["first_stage_config"]["params"]
    ours = AutoencoderKL(ddconfig=params["ddconfig"], embed_dim=params["embed_dim"]).eval()
    ours.load_state_dict(weights, strict=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean, _ = ours.encode_moments(x)
        torch.testing.assert_close(mean, theirs.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.decode(mean), theirs.decode(mean).sample, atol=1e-5, rtol=1e-4)


def _checkpoint_vae(sd1_ckpt, folder):
    """The checkpoint's own VAE as an EMA-style VAE .ckpt ({"state_dict"}, no prefix) and a prefixed safetensors."""
    from sd_cli.loading.checkpoint import read_checkpoint

    weights = read_checkpoint(sd1_ckpt).state_dict
    vae = {k[len("first_stage_model."):]: v for k, v in weights.items() if k.startswith("first_stage_model.")}
    torch.save({"state_dict": vae}, folder / "same-vae.ckpt")
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in vae.items()}, str(folder / "same-vae.safetensors"))
    return vae


def test_vae_identical_gives_identical_image_and_another_differs(run_cli, sd1_ckpt, tmp_path):
    _checkpoint_vae(sd1_ckpt, tmp_path)
    _diffusers_vae(5).save_pretrained(tmp_path / "other", safe_serialization=True)
    other = tmp_path / "other" / "diffusion_pytorch_model.safetensors"
    base = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "-o", tmp_path / "base.png")
    assert base.code == 0, base.stderr
    for name in ("same-vae.ckpt", "same-vae.safetensors"):
        result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--vae", tmp_path / name, "-o", tmp_path / f"{name}.png")
        assert result.code == 0, result.stderr
        assert np.array_equal(_pixels(tmp_path / f"{name}.png"), _pixels(tmp_path / "base.png"))
        fields = _fields(tmp_path / f"{name}.png")
        assert fields["VAE"] == name and len(fields["VAE hash"]) == 10
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--vae", other, "-o", tmp_path / "other.png")
    assert result.code == 0, result.stderr
    assert not np.array_equal(_pixels(tmp_path / "other.png"), _pixels(tmp_path / "base.png"))


def test_vae_with_a_missing_tensor_is_named(run_cli, sd1_ckpt, tmp_path):
    vae = _checkpoint_vae(sd1_ckpt, tmp_path)
    del vae["decoder.conv_out.bias"]
    save_file({k: v.contiguous() for k, v in vae.items()}, str(tmp_path / "broken.safetensors"))
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--vae", tmp_path / "broken.safetensors",
                     "-o", tmp_path / "x.png")
    assert result.code == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: --vae broken.safetensors") and "decoder.conv_out.bias" in error


# -- LoRA ----------------------------------------------------------------------------------------

# kohya names (diffusers UNet paths, Hugging Face CLIP paths) and the parameter each one adapts.
TARGETS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", None),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k":
        ("model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight", None),
    "lora_unet_mid_block_attentions_0_proj_in":  # 1x1 conv
        ("model.diffusion_model.middle_block.1.proj_in.weight", None),
    "lora_unet_up_blocks_1_resnets_0_conv1":  # 3x3 conv
        ("model.diffusion_model.output_blocks.2.0.in_layers.2.weight", None),
    "lora_unet_up_blocks_0_upsamplers_0_conv":
        ("model.diffusion_model.output_blocks.1.2.conv.weight", None),
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj":  # rows 64..128 of the fused in_proj
        ("cond_stage_model.transformer.resblocks.0.attn.in_proj_weight", (64, 128)),
    "lora_te_text_model_encoder_layers_1_mlp_fc1":
        ("cond_stage_model.transformer.resblocks.1.mlp.c_fc.weight", None),
}


def _kohya_lora(model, path, seed=0, extra=None):
    """A kohya-format LoRA for TARGETS: lora_down/lora_up/alpha, conv LoRAs with 4-d tensors."""
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for stem, (target, rows) in TARGETS.items():
        shape = params[target].shape if rows is None else (rows[1] - rows[0], *params[target].shape[1:])
        down = torch.randn(RANK, *shape[1:], generator=g) * 0.1
        up = torch.randn(shape[0], RANK, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.1
        tensors.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                        f"{stem}.alpha": torch.tensor(ALPHA)})
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return tensors


def test_lora_merge_matches_w_plus_scale_up_down_and_restores(sd1_ckpt, tmp_path):
    from sd_cli.loading.loader import load_model
    from sd_cli.loading.lora import LoraMerger, LoraUse

    model = load_model(sd1_ckpt).model
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    tensors = _kohya_lora(model, tmp_path / "style.safetensors")
    merger = LoraMerger(model)
    merger.apply((LoraUse(tmp_path / "style.safetensors", 0.8),))
    params = dict(model.named_parameters())
    for stem, (target, rows) in TARGETS.items():
        up, down = tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"]
        expected = before[target].clone()
        part = expected if rows is None else expected[rows[0]:rows[1]]
        part += 0.8 * (ALPHA / RANK) * (up.flatten(1) @ down.flatten(1)).reshape(part.shape)
        torch.testing.assert_close(params[target].detach(), expected, atol=1e-6, rtol=1e-5)
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {target for target, _ in TARGETS.values()}
    merger.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_lora_in_prompt_zero_weight_is_identical_and_recorded(run_cli, sd1_ckpt, tmp_path):
    from sd_cli.loading.loader import load_model

    lora_dir = tmp_path / "lora"
    lora_dir.mkdir()
    _kohya_lora(load_model(sd1_ckpt).model, lora_dir / "style.safetensors")
    common = ["--ckpt", sd1_ckpt, *FAST, "--lora-dir", lora_dir]
    assert run_cli("txt2img", "a cat", *common, "-o", tmp_path / "base.png").code == 0
    zero = run_cli("txt2img", "a cat <lora:style:0>", *common, "-o", tmp_path / "zero.png")
    assert zero.code == 0, zero.stderr
    assert np.array_equal(_pixels(tmp_path / "zero.png"), _pixels(tmp_path / "base.png"))
    full = run_cli("txt2img", "a cat <lora:style:1>", *common, "-o", tmp_path / "full.png")
    assert full.code == 0, full.stderr
    assert not np.array_equal(_pixels(tmp_path / "full.png"), _pixels(tmp_path / "base.png"))
    prompt, _, fields = parse_infotext(Image.open(tmp_path / "full.png").info["parameters"])
    assert prompt == "a cat <lora:style:1>"
    assert fields["Lora hashes"].startswith("style: ") and len(fields["Lora hashes"]) == len("style: ") + 10
    flag = run_cli("txt2img", "a cat", *common, "--lora", "style:1", "-o", tmp_path / "flag.png")
    assert flag.code == 0, flag.stderr
    assert np.array_equal(_pixels(tmp_path / "flag.png"), _pixels(tmp_path / "full.png"))


@pytest.mark.parametrize("num_res_blocks", [1, 2])  # 2 is SD's own layout
def test_kohya_unet_names_agree_with_diffusers_conversion(num_res_blocks):
    """Every diffusers UNet module name (kohya's LoRA names) maps to the original module that
    diffusers' own checkpoint converter puts there."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm

    from sd_cli.loading.lora import _compvis_names
    from sd_cli.models.unet import UNetModel

    config = tiny_config("sd1")
    config["model"]["params"]["unet_config"]["params"]["num_res_blocks"] = num_res_blocks
    torch.manual_seed(0)
    ours = UNetModel(**config["model"]["params"]["unet_config"]["params"]).state_dict()
    original = {f"model.diffusion_model.{k}": v for k, v in ours.items()}
    converted = convert_ldm_unet_checkpoint(original, create_unet_diffusers_config_from_ldm(config, original))
    where = {v.data_ptr(): k for k, v in ours.items()}  # the converter moves tensors, it does not copy them
    checked = 0
    for key, tensor in converted.items():
        if key.endswith(".weight") and tensor.ndim >= 2:
            theirs, want = key[:-len(".weight")].replace(".", "_"), where[tensor.data_ptr()][:-len(".weight")]
            assert want.replace(".", "_") in [theirs, *_compvis_names(theirs, num_res_blocks + 1)], key
            checked += 1
    assert checked > 100


def test_lora_key_matching_no_module_is_named(run_cli, sd1_ckpt, tmp_path):
    from sd_cli.loading.loader import load_model

    stray = {"lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": torch.zeros(RANK, 8, 1, 1),
             "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": torch.zeros(8, RANK, 1, 1)}
    _kohya_lora(load_model(sd1_ckpt).model, tmp_path / "bad.safetensors", extra=stray)
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--lora", tmp_path / "bad.safetensors",
                     "-o", tmp_path / "x.png")
    assert result.code == 1
    assert "lora_unet_down_blocks_9_attentions_0_proj_in" in result.stderr
    missing = run_cli("txt2img", "a cat <lora:nothere:1>", "--ckpt", sd1_ckpt, *FAST, "--lora-dir", tmp_path,
                      "-o", tmp_path / "y.png")
    assert missing.code == 2 and "nothere" in missing.stderr


# -- hires fix -----------------------------------------------------------------------------------

def test_hires_fix_doubles_the_size_and_records_fields(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--hires-scale", "2", "--hires-steps", "2",
                     "--hires-strength", "0.5", "-o", tmp_path / "big.png")
    assert result.code == 0, result.stderr
    assert Image.open(tmp_path / "big.png").size == (128, 128)
    fields = _fields(tmp_path / "big.png")
    assert (fields["Hires upscale"], fields["Hires steps"], fields["Denoising strength"]) == ("2.0", "2", "0.5")
    assert fields["Size"] == "64x64" and fields["Hires upscaler"] == "Latent"  # AUTOMATIC1111: the first pass
    nearest = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--hires-scale", "1.5", "--hires-upscaler",
                      "latent-nearest", "-o", tmp_path / "nearest.png")
    assert nearest.code == 0, nearest.stderr
    assert Image.open(tmp_path / "nearest.png").size == (64, 64)  # 96 floored to a multiple of 64
    assert _fields(tmp_path / "nearest.png")["Hires upscaler"] == "Latent (nearest)"
    bad = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--hires-strength", "0.5", "-o", tmp_path / "x.png")
    assert bad.code == 2


def test_hires_strength_zero_with_a_k_sampler_keeps_the_nearest_upscaled_latent(sd1_ckpt):
    """No σ is left at strength 0 for a k-diffusion sampler (the original samplers noise to DDIM
    index 0 as img2img does: tests/pipelines/test_hires.py)."""
    from sd_cli.sampling.denoising import SamplingParams
    from sd_cli.pipelines.txt2img import txt2img_latents
    from sd_cli.pipelines.hires import HiresOptions, txt2img_hires
    from sd_cli.loading.loader import load_model

    model = load_model(sd1_ckpt).model
    params = SamplingParams(sampler="euler", steps=2)
    small = txt2img_latents(model, ["a cat"], [""], [7], params, 64, 64)
    big = txt2img_hires(model, ["a cat"], [""], [7], params, 64, 64, HiresOptions(scale=2, strength=0.0, upscaler="latent-nearest"))
    expected = model.decode_latents(small.repeat_interleave(2, -1).repeat_interleave(2, -2))
    torch.testing.assert_close(big, expected)


def test_cpu_compile_keeps_the_first_batchs_lora_and_refuses_a_change(run_cli, sd1_ckpt, tmp_path):
    """--compile on the CPU freezes the UNet's weights at the first step: one LoRA set renders as eager
    does; a later batch asking for another set is refused, not rendered with stale weights."""
    from sd_cli.loading.loader import load_model

    lora_dir = tmp_path / "lora"
    lora_dir.mkdir()
    _kohya_lora(load_model(sd1_ckpt).model, lora_dir / "style.safetensors")
    common = ["--ckpt", sd1_ckpt, *FAST, "--lora-dir", lora_dir]
    eager = run_cli("txt2img", "a cat <lora:style:1>", *common, "-o", tmp_path / "eager.png")
    compiled = run_cli("txt2img", "a cat <lora:style:1>", *common, "--compile", "-o", tmp_path / "compiled.png")
    assert eager.code == 0 and compiled.code == 0, compiled.stderr
    assert np.abs(_pixels(tmp_path / "eager.png").astype(int) - _pixels(tmp_path / "compiled.png")).max() <= 2
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat <lora:style:1>\na dog\n")
    switched = run_cli("txt2img", "--from-file", prompts, *common, "--compile", "--outdir", tmp_path / "out")
    assert switched.code == 2
    assert "cannot change its LoRAs (to: none)" in switched.stderr
    assert "Traceback" not in switched.stderr
