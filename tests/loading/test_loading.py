"""Config allow-list, family detection, the eps/v measurement and strict loading."""

import torch
import pytest

from sd_cli.loading.config import load_config, parse_config
from sd_cli.loading.detection import FAMILIES, detect_family, is_v_prediction
from sd_cli.errors import CheckpointError, UsageError
from sd_cli.loading.loader import build_and_load, load_model
from sd_cli.loading.packaged import packaged_config
from tiny_models import tiny_state_dict, write_tiny_checkpoint
from omegaconf import OmegaConf

ORIGINAL_CONFIGS = {
    "v1-inference.yaml": ("txt2img", "eps", "clip", 4),
    "v1-inpainting-inference.yaml": ("inpaint", "eps", "clip", 9),
    "v2-inference.yaml": ("txt2img", "eps", "openclip", 4),
    "v2-inference-v.yaml": ("txt2img", "v", "openclip", 4),
    "v2-inpainting-inference.yaml": ("inpaint", "eps", "openclip", 9),
    "v2-midas-inference.yaml": ("depth", "eps", "openclip", 5),
}


@pytest.mark.parametrize("name, expected", ORIGINAL_CONFIGS.items())
def test_original_configs_parse_unmodified(name, expected):
    config = load_config(packaged_config(name))
    assert (config.kind, config.parameterization, config.text_encoder, config.unet_in_channels) == expected
    assert config.scale_factor == 0.18215 and config.native_size == 512


def test_unknown_target_is_refused_and_nothing_imported():
    raw = OmegaConf.to_container(OmegaConf.load(packaged_config("v1-inference.yaml")))
    raw["model"]["params"]["unet_config"]["target"] = "os.system"
    with pytest.raises(UsageError, match="target 'os.system' is not supported"):
        parse_config(raw, "evil.yaml")


def test_missing_config_file_is_a_usage_error():
    with pytest.raises(UsageError, match="config not found"):
        load_config("no/such.yaml")


def _fingerprint_dict(text: str, unet_in: int, depth: bool = False) -> dict:
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.empty(320, unet_in, 3, 3)}
    if text == "clip":
        sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.empty(49408, 768)
    elif text == "openclip":
        sd["cond_stage_model.model.token_embedding.weight"] = torch.empty(49408, 1024)
    elif text == "sdxl":
        sd["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = torch.empty(49408, 768)
        sd["conditioner.embedders.1.model.token_embedding.weight"] = torch.empty(49408, 1280)
    else:  # the refiner (bigG, a vector input) or SD-Turbo (OpenCLIP-H, none)
        sd["conditioner.embedders.0.model.token_embedding.weight"] = torch.empty(49408, 1280)
        if text == "sdxl-refiner":
            sd["model.diffusion_model.label_emb.0.0.weight"] = torch.empty(1536, 2560)
    if depth:
        sd["depth_model.model.pretrained.act_postprocess3.0.project.0.bias"] = torch.empty(256)
    return sd


@pytest.mark.parametrize("key, family", FAMILIES.items())
def test_detection_table(key, family):
    text, unet_in, depth = key
    assert detect_family(_fingerprint_dict(text, unet_in, depth), "m.ckpt") == family


def test_detection_without_match_asks_for_config():
    with pytest.raises(CheckpointError, match="pass its YAML with --config"):
        detect_family(_fingerprint_dict("clip", 5), "odd.ckpt")


def test_v_prediction_is_measured_not_guessed():
    eps_like = lambda x, t, c: x + 0.01  # noqa: E731  predicts its input back at t=999
    v_like = lambda x, t, c: -3 * x - 1  # noqa: E731  predicts about -x0
    assert is_v_prediction(eps_like, 8, "cpu", torch.float32)[0] is False
    assert is_v_prediction(v_like, 8, "cpu", torch.float32) == (True, pytest.approx(-3.0))


def test_unexpected_and_missing_tensors_are_named():
    weights, raw = tiny_state_dict("sd1")
    config = parse_config(raw, "tiny.yaml")
    extra = dict(weights, **{"model.diffusion_model.surprise": torch.zeros(1)})
    del extra["first_stage_model.quant_conv.bias"]
    with pytest.raises(CheckpointError) as err:
        build_and_load(config, extra, "x.ckpt")
    message = str(err.value)
    assert "1 missing tensors: first_stage_model.quant_conv.bias" in message
    assert "1 unexpected tensors: model.diffusion_model.surprise" in message


def test_loaded_model_uses_checkpoint_weights_and_schedule(sd1_ckpt):
    loaded = load_model(sd1_ckpt)
    weights, _ = tiny_state_dict("sd1", ema=True)
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(loaded.model.state_dict()[key], weights[key])
    assert torch.allclose(loaded.model.alphas_cumprod[[0, 999]], torch.tensor([0.99915, 0.0046601]), atol=1e-6)
    assert loaded.global_step == 470000
    assert not any(p.device.type == "meta" for p in loaded.model.parameters())


def test_on_the_cpu_convolution_weights_are_laid_out_channels_last_with_the_files_values(sd1_ckpt):
    model = load_model(sd1_ckpt).model
    weights, _ = tiny_state_dict("sd1", ema=True)
    convs = {name: p for name, p in model.named_parameters() if p.dim() == 4 and p.shape[-1] > 1}
    assert any(name.startswith("model.diffusion_model.") for name in convs)
    assert any(name.startswith("first_stage_model.") for name in convs)
    for name, param in convs.items():
        assert param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous(), name
        assert torch.equal(param, weights[name]), name
    assert all(p.is_contiguous() for p in model.parameters() if p.dim() < 4)


def test_without_channels_last_convs_the_layout_is_the_files():
    weights, raw = tiny_state_dict("sd1")
    model = build_and_load(parse_config(raw, "tiny.yaml"), dict(weights), "tiny")
    assert all(p.is_contiguous() for p in model.parameters())


def test_yaml_beside_checkpoint_wins_over_detection(tmp_path, capsys):
    path = write_tiny_checkpoint("sd2-v", tmp_path)
    loaded = load_model(path)
    assert loaded.model.parameterization == "v"
    assert "named after the checkpoint" in capsys.readouterr().err


def test_precision_bf16_runs_close_to_fp32(sd1_ckpt):
    from sd_cli.sampling.denoising import SamplingParams
    from sd_cli.pipelines.txt2img import txt2img

    params = SamplingParams(steps=3)
    images = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(sd1_ckpt, dtype=dtype).model
        images[dtype] = txt2img(model, ["a"], [""], [3], params, 64, 64).float()
    assert images[torch.bfloat16].dtype == torch.float32
    assert (images[torch.bfloat16] - images[torch.float32]).abs().mean() < 0.05
