"""Parity of sd_cli's UNet and VAE with an independent implementation (diffusers).

Tiny models get seeded random weights; their state dicts, with the original checkpoint
prefixes, go through diffusers' own LDM converter into diffusers' models, and both must give
the same outputs. The converter knows the original key layout, so this also checks that our
module names are the original checkpoint's keys.
"""

import pytest
import torch

from sd_cli.models.unet import UNetModel
from sd_cli.models.vae import AutoencoderKL

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TOLERANCE = 1e-4  # float32

# Small dims; GroupNorm(32) needs every width divisible by 32.
TINY_DDCONFIG = dict(
    double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
    ch_mult=[1, 1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0,
)
# SD1 layout: fixed head count, 1x1-conv proj_in/proj_out, attention at every level.
TINY_SD1_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=32,
    attention_resolutions=[1, 2], num_res_blocks=1, channel_mult=[1, 2], num_heads=2,
    use_spatial_transformer=True, transformer_depth=1, context_dim=32,
    use_checkpoint=True, legacy=False,
)
# SD2 layout: fixed head width, Linear proj_in/proj_out. Also inpainting-style 9 input
# channels, a level without attention, two res blocks per level and depth-2 transformers.
TINY_SD2_UNET = dict(
    image_size=32, in_channels=9, out_channels=4, model_channels=32,
    attention_resolutions=[2, 4], num_res_blocks=2, channel_mult=[1, 2, 2],
    num_head_channels=16, use_spatial_transformer=True, use_linear_in_transformer=True,
    transformer_depth=2, context_dim=48, use_checkpoint=True, use_fp16=True, legacy=False,
)


def original_yaml(unet_params: dict) -> dict:
    """The slice of an original model YAML that diffusers' config builders read."""
    return {"model": {"params": {
        "scale_factor": 0.18215,
        "unet_config": {"params": unet_params},
        "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": TINY_DDCONFIG}},
    }}}


def seeded(build, seed: int):
    torch.manual_seed(seed)
    return build().eval()


def prefixed(model: torch.nn.Module, prefix: str) -> dict:
    return {prefix + key: value for key, value in model.state_dict().items()}


def diffusers_unet(ours: UNetModel, unet_params: dict):
    checkpoint = prefixed(ours, UNET_PREFIX)
    config = create_unet_diffusers_config_from_ldm(original_yaml(unet_params), checkpoint)
    theirs = diffusers.UNet2DConditionModel(**config).eval()
    theirs.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True)
    return theirs


def diffusers_vae(ours: AutoencoderKL):
    checkpoint = prefixed(ours, VAE_PREFIX)
    config = create_vae_diffusers_config_from_ldm(original_yaml(TINY_SD1_UNET), checkpoint)
    theirs = diffusers.AutoencoderKL(**config).eval()
    theirs.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config), strict=True)
    return theirs


def assert_close_and_nontrivial(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    assert ours.abs().max() > 1e-2, "output is trivially small; the test would prove nothing"
    assert ours.std() > 1e-3
    diff = (ours - theirs).abs().max().item()
    assert diff < TOLERANCE, f"max abs diff {diff}"
    return diff


def unet_inputs(params: dict, timesteps: torch.Tensor):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, params["in_channels"], 16, 16, generator=generator)
    context = torch.randn(2, 7, params["context_dim"], generator=generator)
    return x, timesteps, context


@pytest.mark.parametrize("params", [TINY_SD1_UNET, TINY_SD2_UNET], ids=["sd1", "sd2"])
@pytest.mark.parametrize(
    "timesteps",
    [torch.tensor([999, 3]), torch.tensor([999.0, 500.5])],  # DPM-Solver passes float t
    ids=["long_t", "float_t"],
)
def test_unet_matches_diffusers(params, timesteps):
    ours = seeded(lambda: UNetModel(**params), seed=0)
    theirs = diffusers_unet(ours, params)
    x, t, context = unet_inputs(params, timesteps)
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context).sample
        got = ours(x, t, context)
    assert_close_and_nontrivial(got, expected)


def test_unet_long_and_float_timesteps_agree():
    ours = seeded(lambda: UNetModel(**TINY_SD1_UNET), seed=0)
    x, _, context = unet_inputs(TINY_SD1_UNET, None)
    with torch.no_grad():
        from_long = ours(x, torch.tensor([999, 3]), context)
        from_float = ours(x, torch.tensor([999.0, 3.0]), context)
    torch.testing.assert_close(from_long, from_float, rtol=0, atol=0)


def test_vae_encode_matches_diffusers():
    ours = seeded(lambda: AutoencoderKL(TINY_DDCONFIG, embed_dim=4), seed=0)
    theirs = diffusers_vae(ours)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        mean, logvar = ours.encode_moments(image)
        posterior = theirs.encode(image).latent_dist
    assert mean.shape == (2, 4, 4, 4)
    assert_close_and_nontrivial(mean, posterior.mean)
    assert_close_and_nontrivial(logvar, posterior.logvar)


def test_vae_decode_matches_diffusers():
    ours = seeded(lambda: AutoencoderKL(TINY_DDCONFIG, embed_dim=4), seed=0)
    theirs = diffusers_vae(ours)
    latent = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = ours.decode(latent)
        expected = theirs.decode(latent).sample  # diffusers applies post_quant_conv itself
    assert got.shape == (2, 3, 32, 32)
    assert_close_and_nontrivial(got, expected)


def test_vae_logvar_is_clamped():
    vae = seeded(lambda: AutoencoderKL(TINY_DDCONFIG, embed_dim=4), seed=0)
    with torch.no_grad():
        vae.quant_conv.bias[4:] = 100.0  # logvar channels
        _, logvar = vae.encode_moments(torch.zeros(1, 3, 16, 16))
    assert logvar.max().item() == 20.0


@pytest.mark.parametrize(
    "build, inputs",
    [
        (lambda: UNetModel(**TINY_SD2_UNET), lambda: unet_inputs(TINY_SD2_UNET, torch.tensor([10, 20]))),
        (lambda: AutoencoderKL(TINY_DDCONFIG, embed_dim=4, monitor="val/rec_loss",
                               lossconfig={"target": "torch.nn.Identity"}),
         lambda: (torch.randn(1, 3, 16, 16),)),
    ],
    ids=["unet", "vae"],
)
def test_builds_on_meta_and_loads_strictly(build, inputs):
    reference = seeded(build, seed=0)
    with torch.device("meta"):
        model = build()
    assert all(p.is_meta for p in model.parameters())
    model.load_state_dict(reference.state_dict(), strict=True, assign=True)
    model.eval()
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    args = inputs()
    run = (lambda m: m(*args)) if isinstance(model, UNetModel) else (lambda m: m.encode_moments(*args)[0])
    with torch.no_grad():
        torch.testing.assert_close(run(model), run(reference), rtol=0, atol=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"num_classes": "continuous"}, "num_classes"),
        ({"disable_self_attentions": [True]}, "disable_self_attentions needs one entry per channel_mult level"),
        ({"use_spatial_transformer": False}, "use_spatial_transformer"),
        ({"num_heads": -1}, "num_heads or num_head_channels"),
        ({"no_such_param": 1}, "unknown"),
    ],
)
def test_unet_rejects_unsupported_params(override, message):
    with pytest.raises(ValueError, match=message):
        UNetModel(**{**TINY_SD1_UNET, **override})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ckpt_path": "x.ckpt"}, "ckpt_path"),
        ({"ddconfig": {**TINY_DDCONFIG, "attn_resolutions": [16]}}, "attn_resolutions"),
        ({"ddconfig": {**TINY_DDCONFIG, "double_z": False}}, "double_z"),
        ({"ddconfig": {**TINY_DDCONFIG, "no_such_key": 1}}, "unknown"),
    ],
)
def test_vae_rejects_unsupported_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderKL(**{"ddconfig": TINY_DDCONFIG, "embed_dim": 4, **kwargs})
