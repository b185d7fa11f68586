"""SDXL's networks against independent implementations built from the same tiny sgm checkpoints.

- UNet: diffusers' UNet2DConditionModel through diffusers' own LDM converter, configured as
  diffusers configures SDXL (addition_embed_type "text_time"): diffusers builds the size part of
  y itself from the raw numbers (add_time_proj), so the comparison also checks our vector y;
- text: transformers' CLIPTextModel (CLIP-L `hidden_states[11]`) and CLIPTextModelWithProjection
  (bigG `hidden_states[-2]` and `text_embeds`), tokens from transformers' CLIPTokenizer;
- the size embedding: the formula in float64, and diffusers' get_timestep_embedding as SDXL's
  add_time_proj uses it (flip_sin_to_cos=True, downscale_freq_shift=0).
"""

import math

import pytest
import torch
from omegaconf import OmegaConf
from tiny_models import (
    BIGG_PROJECTION,
    BIGG_WIDTH,
    CLIP_L_LAYERS,
    CONFIGS,
    SGM_CLIP,
    TEXT_WIDTH,
    tiny_state_dict,
    write_tiny_checkpoint,
)

from sd_cli.loading.checkpoint import read_checkpoint
from sd_cli.models.sdxl_conditioning import (
    SDXLConditioner,
    SizeConditioning,
    TextConditioning,
    size_embedding,
    zero_text,
)
from sd_cli.models.text_encoder import SDXLCLIPTextEncoder, SDXLOpenCLIPTextEncoder
from sd_cli.models.unet import UNetModel

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402
from sdxl_reference import (  # noqa: E402
    EOT, diffusers_unet, emb_models, hf_tokens, hf_tower, reference_text, time_ids,
)

TOLERANCE = 1e-5  # max abs difference, float32
UNET = "model.diffusion_model."
PROMPTS = ["a red circle on a blue square", "", "two green triangles, " * 20]  # the last is cut at 75 tokens
SIZES = SizeConditioning(original_size=(768, 1024), crop_top_left=(16, 48), target_size=(1024, 896))
REFINER_SIZES = SizeConditioning(original_size=(1024, 1024), crop_top_left=(0, 8), aesthetic_score=6.0)


# ---------------------------------------------------------------- building both sides


@pytest.fixture(scope="module", params=["sdxl", "sdxl-refiner", "sd-turbo"])
def family(request):
    weights, config = tiny_state_dict(request.param)
    return request.param, weights, config


@pytest.fixture(scope="module")
def sdxl():
    return tiny_state_dict("sdxl")


@pytest.fixture(scope="module")
def refiner():
    return tiny_state_dict("sdxl-refiner")


def our_conditioner(weights, config) -> SDXLConditioner:
    with torch.device("meta"):
        conditioner = SDXLConditioner.from_config(emb_models(config), weights)
    mapped, _ignored, unknown = conditioner.module_state_dict_from_checkpoint(weights)
    assert unknown == []
    conditioner.load_state_dict(mapped, strict=True, assign=True)
    return conditioner.eval()


def our_unet(weights, config) -> UNetModel:
    unet = UNetModel(**config["model"]["params"]["network_config"]["params"]).eval()
    unet.load_state_dict({k[len(UNET):]: v for k, v in weights.items() if k.startswith(UNET)}, strict=True)
    return unet


def assert_close(ours, theirs, tolerance=TOLERANCE):
    assert ours.shape == theirs.shape
    assert ours.abs().max() > 1e-2, "(nearly) all zero: the comparison would prove little"
    diff = (ours - theirs).abs().max().item()
    assert diff < tolerance, f"max abs diff {diff}"


# ---------------------------------------------------------------- text towers


@torch.no_grad()
def test_text_conditioning_matches_transformers(family):
    name, weights, config = family
    text = our_conditioner(weights, config).encode_text(PROMPTS)
    reference = reference_text(weights, config, PROMPTS)
    width = {"sdxl": TEXT_WIDTH + BIGG_WIDTH, "sdxl-refiner": BIGG_WIDTH, "sd-turbo": TEXT_WIDTH}[name]
    assert text.crossattn.shape == (3, 77, width)
    assert_close(text.crossattn, reference.crossattn)
    if name == "sd-turbo":
        assert text.pooled is None and reference.pooled is None
    else:
        assert text.pooled.shape == (3, BIGG_PROJECTION)
        assert_close(text.pooled, reference.pooled)


@torch.no_grad()
def test_sdxl_crossattn_is_clip_l_then_bigg(sdxl):
    weights, config = sdxl
    conditioner = our_conditioner(weights, config)
    clip_l, big_g = conditioner.text_encoders
    assert (type(clip_l), type(big_g)) == (SDXLCLIPTextEncoder, SDXLOpenCLIPTextEncoder)
    assert len(clip_l.transformer.resblocks) == CLIP_L_LAYERS and clip_l.own_clip_skip == 2
    assert big_g.own_clip_skip == 2
    text = conditioner.encode_text(PROMPTS[:1])
    hidden_l = clip_l.encode(clip_l.tokenize(PROMPTS[:1]))
    hidden_g, pooled = big_g.encode_with_pooled(big_g.tokenize(PROMPTS[:1]))
    assert torch.equal(text.crossattn, torch.cat([hidden_l, hidden_g], dim=2))
    assert torch.equal(text.pooled, pooled)


def test_tokens_pad_as_each_original_tokenizer(sdxl):
    weights, config = sdxl
    with torch.device("meta"):
        clip_l, big_g = SDXLConditioner.from_config(emb_models(config), weights).text_encoders
    a, cat = clip_l.bpe().encode("a cat")
    assert clip_l.tokenize(["a cat"])[0, :6].tolist() == [49406, a, cat, EOT, EOT, EOT]
    assert big_g.tokenize(["a cat"])[0, :6].tolist() == [49406, a, cat, EOT, 0, 0]
    long = big_g.tokenize(PROMPTS[2:])[0]
    assert long[0] == 49406 and long[76] == EOT and (long[1:76] != 0).all()


@torch.no_grad()
def test_pooled_ignores_clip_skip_and_reads_the_first_end_token(sdxl):
    weights, config = sdxl
    big_g = our_conditioner(weights, config).text_encoders[1]
    tokens = big_g.tokenize(PROMPTS[:1])
    hidden_2, pooled_2 = big_g.encode_with_pooled(tokens)
    hidden_1, pooled_1 = big_g.encode_with_pooled(tokens, clip_skip=1)
    assert torch.equal(pooled_1, pooled_2) and not torch.allclose(hidden_1, hidden_2)
    end = int(tokens[0].argmax())
    x = big_g.token_embedding(tokens) + big_g.positional_embedding
    mask = torch.full((77, 77), float("-inf")).triu(1)
    for block in big_g.transformer.resblocks:
        x = block(x, attn_mask=mask)
    assert torch.equal(hidden_1, x)  # layer "last" of legacy: False has no ln_final either
    assert_close(pooled_1[0], big_g.ln_final(x)[0, end] @ big_g.text_projection)


@torch.no_grad()
def test_clip_l_layers_count_as_transformers_hidden_states(sdxl):
    weights, config = sdxl
    prefix = "conditioner.embedders.0.transformer."
    mapped = SDXLCLIPTextEncoder.module_state_dict_from_checkpoint(weights, prefix)[0]
    towers = {}
    for name, params in [("11", dict(layer="hidden", layer_idx=11)), ("-2", dict(layer="hidden", layer_idx=-2)),
                         ("0", dict(layer="hidden", layer_idx=0)), ("last", dict(layer="last"))]:
        with torch.device("meta"):
            towers[name] = SDXLCLIPTextEncoder.from_checkpoint(weights, prefix=prefix, **params)
        towers[name].load_state_dict(mapped, strict=True, assign=True)
    assert [tower.own_clip_skip for tower in towers.values()] == [2, 2, 13, 1]
    out = hf_tower(weights, 0, SGM_CLIP)(
        input_ids=hf_tokens(PROMPTS, pad_with_zero=False), output_hidden_states=True)
    tokens = towers["11"].tokenize(PROMPTS)
    assert torch.equal(towers["11"].encode(tokens), towers["-2"].encode(tokens))
    assert_close(towers["11"].encode(tokens), out.hidden_states[11])
    assert_close(towers["0"].encode(tokens), out.hidden_states[0])
    assert_close(towers["last"].encode(tokens), out.last_hidden_state)


# ---------------------------------------------------------------- size embedding and the vector y


def test_size_embedding_is_the_cos_sin_formula():
    values = torch.tensor([[1024.0, 768.0], [0.0, 2.5]])
    ours = size_embedding(values, 256)
    assert ours.shape == (2, 512) and ours.dtype == torch.float32
    for row in range(2):
        for col in range(2):
            v = float(values[row, col])
            freqs = [math.exp(-math.log(10000) * i / 128) for i in range(128)]
            expected = torch.tensor([math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs],
                                    dtype=torch.float64)
            # float32's v·f carries a relative error of 2^-24: 6e-5 at v = 1024
            part = ours[row, 256 * col:256 * (col + 1)].double()
            assert (part - expected).abs().max() < 1e-4
    assert torch.equal(ours[1, :128], torch.ones(128)) and torch.equal(ours[1, 128:256], torch.zeros(128))


def test_size_embedding_matches_diffusers_add_time_proj():
    numbers = time_ids(SIZES, 2)
    theirs = get_timestep_embedding(numbers.flatten(), 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert_close(size_embedding(numbers, 256), theirs.reshape(2, -1), tolerance=1e-6)


@torch.no_grad()
def test_vector_is_pooled_then_sizes_in_yaml_order(sdxl, refiner):
    for (weights, config), sizes in [(sdxl, SIZES), (refiner, REFINER_SIZES)]:
        conditioner = our_conditioner(weights, config)
        text = conditioner.encode_text(PROMPTS[:2])
        y = conditioner.vector(text, sizes)
        adm = config["model"]["params"]["network_config"]["params"]["adm_in_channels"]
        assert y.shape == (2, adm) and y.dtype == torch.float32
        assert torch.equal(y[:, :BIGG_PROJECTION], text.pooled)
        numbers = time_ids(sizes, 2)
        assert torch.equal(y[:, BIGG_PROJECTION:], size_embedding(numbers, 256))


@torch.no_grad()
def test_zero_text_zeroes_crossattn_and_pooled_but_not_sizes(sdxl):
    weights, config = sdxl
    conditioner = our_conditioner(weights, config)
    text = conditioner.encode_text(PROMPTS[:2])
    zeros = zero_text(text)
    assert torch.equal(zeros.crossattn, torch.zeros(2, 77, TEXT_WIDTH + BIGG_WIDTH))
    assert torch.equal(zeros.pooled, torch.zeros(2, BIGG_PROJECTION))
    y_zero, y = conditioner.vector(zeros, SIZES), conditioner.vector(text, SIZES)
    assert torch.equal(y_zero[:, :BIGG_PROJECTION], torch.zeros(2, BIGG_PROJECTION))
    assert torch.equal(y_zero[:, BIGG_PROJECTION:], y[:, BIGG_PROJECTION:])


# ---------------------------------------------------------------- UNet


@torch.no_grad()
def test_unet_matches_diffusers(family):
    name, weights, config = family
    ours, theirs = our_unet(weights, config), diffusers_unet(weights, config)
    generator = torch.Generator().manual_seed(3)
    # 16x16 latents: at 8x8 the refiner's deepest level is 1x1, where each GroupNorm normalises two
    # numbers and magnifies float32 rounding to ~4e-5 on both sides (each as far from float64)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([999, 49])
    context = torch.randn(2, 77, ours.context_dim, generator=generator)
    if name == "sd-turbo":
        assert not hasattr(ours, "label_emb")
        assert_close(ours(x, t, context), theirs(x, t, encoder_hidden_states=context).sample)
        return
    sizes = SIZES if name == "sdxl" else REFINER_SIZES
    pooled = torch.randn(2, BIGG_PROJECTION, generator=generator)
    y = our_conditioner(weights, config).vector(TextConditioning(context, pooled), sizes)
    expected = theirs(x, t, encoder_hidden_states=context,
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids(sizes, 2)}).sample
    assert_close(ours(x, t, context, y=y), expected)


def test_unet_layout_of_the_sdxl_yaml(sdxl):
    weights, config = sdxl
    unet = our_unet(weights, config)
    assert [k for k in weights if "label_emb" in k] == [UNET + f"label_emb.0.{i}.{kind}"
                                                      for i in (0, 2) for kind in ("weight", "bias")]
    assert unet.label_emb[0][0].in_features == 96 + 6 * 256
    assert [len(block) for block in unet.input_blocks] == [1, 1, 1, 1, 2, 2, 1, 2, 2]  # level 0: no attention
    depths = [len(layer.transformer_blocks) for block in unet.input_blocks for layer in block
              if hasattr(layer, "transformer_blocks")]
    assert depths == [1, 1, 2, 2] and len(unet.middle_block[1].transformer_blocks) == 2


def test_unet_refuses_a_missing_or_unexpected_y(sdxl):
    weights, config = sdxl
    unet = our_unet(weights, config)
    x, t, context = torch.zeros(1, 4, 8, 8), torch.tensor([10]), torch.zeros(1, 77, 192)
    with pytest.raises(ValueError, match=r"y must be \[1, 1632\], got None"):
        unet(x, t, context)
    with pytest.raises(ValueError, match=r"y must be \[1, 1632\], got \(1, 1631\)"):
        unet(x, t, context, y=torch.zeros(1, 1631))
    params = dict(config["model"]["params"]["network_config"]["params"])
    del params["adm_in_channels"], params["num_classes"]
    with pytest.raises(ValueError, match="takes no vector conditioning"):
        UNetModel(**params)(x, t, context, y=torch.zeros(1, 1632))


@pytest.mark.parametrize("change, message", [
    (dict(num_classes="continuous"), "num_classes='continuous' is not supported"),
    (dict(num_classes="sequential", adm_in_channels=None), "needs an int adm_in_channels"),
    (dict(context_dim=[192, 128]), r"context_dim \[192, 128\] is not supported"),
    (dict(spatial_transformer_attn_type="linear"), "spatial_transformer_attn_type 'linear' is not supported"),
    (dict(transformer_depth=[1, 2]), "transformer_depth needs one entry per channel_mult level"),
    (dict(disable_middle_transformer=True), "disable_middle_transformer=True is not supported"),
])
def test_unet_refuses_what_it_does_not_build(change, message):
    params = dict(in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2], num_res_blocks=1,
                  channel_mult=[1, 2, 2], num_head_channels=16, context_dim=192, num_classes="sequential",
                  adm_in_channels=64)
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        UNetModel(**{**params, **change})


# ---------------------------------------------------------------- the conditioner's config and keys


def test_conditioner_maps_every_key_and_reports_strays(sdxl):
    weights, config = sdxl
    with torch.device("meta"):
        conditioner = SDXLConditioner.from_config(emb_models(config), weights)
    stray = dict(weights, **{"conditioner.embedders.5.scale": torch.zeros(1)})
    mapped, ignored, unknown = conditioner.module_state_dict_from_checkpoint(stray)
    assert set(mapped) == set(conditioner.state_dict())
    assert sorted(ignored) == ["conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                               "conditioner.embedders.1.model.logit_scale"]
    assert unknown == ["conditioner.embedders.5.scale"]
    assert [type(e).__name__ for e in conditioner.embedders] == [
        "SDXLCLIPTextEncoder", "SDXLOpenCLIPTextEncoder", "SizeEmbedder", "SizeEmbedder", "SizeEmbedder"]
    assert conditioner.has_vector


@pytest.mark.parametrize("index, change, message", [
    (1, dict(legacy=True), "legacy=True is not supported"),
    (1, dict(always_return_pooled=False), "always_return_pooled=False is not supported"),
    (1, dict(layer="pooled"), "layer 'pooled' is not supported"),
    (0, dict(layer_idx=13), "layer_idx from -13 to 12 for this 12-block text encoder, got 13"),
    (0, dict(always_return_pooled=True), "always_return_pooled=True is not supported"),
])
def test_conditioner_refuses_tower_settings_it_does_not_build(sdxl, index, change, message):
    weights, config = sdxl
    models = [dict(entry) for entry in emb_models(config)]
    models[index]["params"] = {**models[index]["params"], **change}
    with torch.device("meta"), pytest.raises(ValueError, match=message):
        SDXLConditioner.from_config(models, weights)


def test_conditioner_refuses_unknown_embedders(sdxl):
    weights, config = sdxl
    models = emb_models(config)
    for entry, message in [
        ({"target": "sgm.modules.encoders.modules.FrozenT5Embedder", "input_key": "txt"},
         "embedder 5: 'sgm.modules.encoders.modules.FrozenT5Embedder' is not supported"),
        ({"target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND", "input_key": "fps",
          "params": {"outdim": 256}}, "embedder 5: input_key 'fps' is not supported"),
    ]:
        with torch.device("meta"), pytest.raises(ValueError, match=message):
            SDXLConditioner.from_config([*models, entry], weights)
    refiner_sizes_only = SizeConditioning(original_size=(64, 64))
    conditioner = our_conditioner(weights, config)
    with pytest.raises(ValueError, match="conditioned on target_size_as_tuple and none was given"):
        conditioner.vector(conditioner.encode_text([""]), refiner_sizes_only)


# ---------------------------------------------------------------- the shipped YAMLs at full size


@pytest.mark.parametrize("yaml", ["sd_xl_base.yaml", "sd_xl_refiner.yaml", "sd_2_1.yaml"])
def test_full_size_unet_has_the_shapes_diffusers_builds(yaml):
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / yaml))
    with torch.device("meta"):
        ours = UNetModel(**config["model"]["params"]["network_config"]["params"])
        checkpoint = {UNET + key: value for key, value in ours.state_dict().items()}
        unet_config = create_unet_diffusers_config_from_ldm(config, checkpoint)
        theirs = diffusers.UNet2DConditionModel(**unet_config)
    converted = convert_ldm_unet_checkpoint(checkpoint, unet_config)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    if yaml == "sd_xl_base.yaml":
        assert sum(value.numel() for value in checkpoint.values()) == 2_567_463_684  # SDXL base's UNet


def full_size_text_checkpoint(layout: list[tuple[str, int, int, int | None]]) -> dict:
    """Meta tensors with the shapes of released text towers: (prefix, width, blocks, projection or None)."""
    ckpt = {}
    for prefix, width, blocks, projection in layout:
        hf = prefix.endswith("transformer.")
        names = (["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"]
                 if hf else ["token_embedding.weight", "positional_embedding"])
        ckpt[prefix + names[0]] = torch.empty(49408, width, device="meta")
        ckpt[prefix + names[1]] = torch.empty(77, width, device="meta")
        fc1 = "text_model.encoder.layers.{}.mlp.fc1.weight" if hf else "transformer.resblocks.{}.mlp.c_fc.weight"
        ckpt.update({prefix + fc1.format(i): torch.empty(4 * width, width, device="meta") for i in range(blocks)})
        if projection:
            ckpt[prefix + "text_projection"] = torch.empty(width, projection, device="meta")
    return ckpt


@pytest.mark.parametrize("yaml, layout", [
    ("sd_xl_base.yaml", [("conditioner.embedders.0.transformer.", 768, 12, None),
                         ("conditioner.embedders.1.model.", 1280, 32, 1280)]),
    ("sd_xl_refiner.yaml", [("conditioner.embedders.0.model.", 1280, 32, 1280)]),
    ("sd_2_1.yaml", [("conditioner.embedders.0.model.", 1024, 24, None)]),
])
def test_full_size_conditioner_fits_the_unet_of_its_yaml(yaml, layout):
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / yaml))
    unet = config["model"]["params"]["network_config"]["params"]
    with torch.device("meta"):
        conditioner = SDXLConditioner.from_config(emb_models(config), full_size_text_checkpoint(layout))
    context_dim = unet["context_dim"] if isinstance(unet["context_dim"], int) else unet["context_dim"][0]
    assert (conditioner.context_dim, conditioner.vector_dim) == (context_dim, unet.get("adm_in_channels", 0))
    heads = [tower.transformer.resblocks[0].attn.num_heads for tower in conditioner.text_encoders]
    assert heads == [width // 64 for _, width, _, _ in layout]


# ---------------------------------------------------------------- the tiny files themselves


@pytest.mark.parametrize("family, fmt, towers", [
    ("sdxl", "safetensors", ["conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."]),
    ("sdxl-refiner", "ckpt", ["conditioner.embedders.0.model."]),
    ("sd-turbo", "safetensors", ["conditioner.embedders.0.model."]),
])
def test_tiny_sgm_files_have_the_released_layout(tmp_path, family, fmt, towers):
    path = write_tiny_checkpoint(family, tmp_path, fmt=fmt)
    weights = read_checkpoint(path).state_dict
    roots = {"model.diffusion_model.", "first_stage_model.", *towers}
    found = {next(root for root in roots if key.startswith(root)) for key in weights if key != "denoiser.sigmas"}
    assert found == roots
    sigmas = weights["denoiser.sigmas"]
    assert sigmas.shape == (1000,) and sigmas.dtype == torch.float32 and (sigmas.diff() > 0).all()
    assert abs(sigmas[0].item() - 0.0292) < 1e-4 and abs(sigmas[-1].item() - 14.6146) < 1e-4  # sgm's EDM defaults
    config = OmegaConf.to_container(OmegaConf.load(path.with_suffix(".yaml")))
    assert config["model"]["target"] == "sgm.models.diffusion.DiffusionEngine"
    assert config["model"]["params"]["scale_factor"] == (0.18215 if family == "sd-turbo" else 0.13025)
    assert ("model.diffusion_model.label_emb.0.0.weight" in weights) == (family != "sd-turbo")
