"""generative-models' YAMLs, shipped unmodified, read through the one allow-list."""

from pathlib import Path

import pytest

from sd_cli.errors import UsageError
from sd_cli.loading.config import load_config, parse_config
from sd_cli.models.families import family_of

CONFIGS = Path(__file__).resolve().parents[2] / "sd_cli" / "data" / "configs"


@pytest.mark.parametrize("name, text, context, adm, native, description", [
    ("sd_xl_base.yaml", "sdxl", 2048, 2816, 1024, "SDXL"),
    ("sd_xl_refiner.yaml", "sdxl-refiner", [1280] * 4, 2560, 1024, "SDXL refiner"),
    ("sd_2_1.yaml", "sgm-openclip", 1024, None, 512, "SD 2.1 (generative-models layout, e.g. SD-Turbo)"),
])
def test_the_original_sgm_yamls_parse(name, text, context, adm, native, description):
    config = load_config(CONFIGS / name)
    assert (config.engine, config.kind, config.parameterization, config.text_encoder) == ("sgm", "txt2img", "eps", text)
    assert config.unet_params["context_dim"] == context and config.unet_params.get("adm_in_channels") == adm
    assert (config.linear_start, config.linear_end, config.timesteps) == (0.00085, 0.012, 1000)
    assert config.native_size == native
    assert "attn_type" not in config.vae_params["ddconfig"]
    family = family_of(config)
    assert (family.description, family.sampling, family.subcommands) == (description, "sgm", ("txt2img", "img2img"))


def test_sdxl_embedders_in_order():
    embedders = load_config(CONFIGS / "sd_xl_base.yaml").text_params["embedders"]
    assert [(role, key) for role, key, _ in embedders] == [
        ("clip", "txt"), ("openclip-pooled", "txt"), ("size-embedding", "original_size_as_tuple"),
        ("size-embedding", "crop_coords_top_left"), ("size-embedding", "target_size_as_tuple")]
    assert embedders[0][2] == {"layer": "hidden", "layer_idx": 11}
    assert embedders[2][2] == {"outdim": 256}


def _engine(**changes) -> dict:
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(CONFIGS / "sd_xl_base.yaml"))
    params = raw["model"]["params"]
    for path, value in changes.items():
        node = params
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[leaf] = value
    return raw


@pytest.mark.parametrize("changes, message", [
    ({"denoiser_config__target": "os.system"}, "denoiser_config target 'os.system' is not supported"),
    ({"conditioner_config__params__emb_models__0__target": "sgm.modules.encoders.modules.FrozenT5Embedder"},
     "conditioner embedder 0 target 'sgm.modules.encoders.modules.FrozenT5Embedder' is not supported"),
    ({"denoiser_config__params__scaling_config__target":
      "sgm.modules.diffusionmodules.denoiser_scaling.EDMScaling"}, "denoiser scaling_config target"),
    ({"first_stage_config__params__ddconfig__attn_type": "linear"}, "attn_type is not vanilla attention"),
    ({"conditioner_config__params__emb_models": []}, "conditioner_config has no emb_models"),
    ({"mystery": 1}, "unsupported model params mystery"),
])
def test_sgm_yamls_outside_the_allow_list_are_refused(changes, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(_engine(**changes), "x.yaml")


def test_an_sgm_model_is_named_and_refused_before_any_weight_is_read():
    from sd_cli.loading.loader import build_and_load

    with pytest.raises(UsageError, match=r"^x.safetensors: SDXL refiner models \(generative-models' DiffusionEngine, "
                                         r".*sd_xl_refiner.yaml\) do not run in sd_cli yet"):
        build_and_load(load_config(CONFIGS / "sd_xl_refiner.yaml"), {}, "x.safetensors")
