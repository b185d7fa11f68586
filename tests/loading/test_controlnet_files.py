"""ControlNet files in every format load the same tensors, strictly; what does not fit is one clear error."""

import pytest
import torch
from safetensors.torch import save_file
from tiny_controlnet import CONTROL_PREFIX, control_weights, write_controlnet
from tiny_models import write_tiny_checkpoint

from sd_cli.errors import CheckpointError, UsageError
from sd_cli.loading.config import load_config, load_control_config
from sd_cli.loading.controlnet_file import load_controlnet, load_embedded
from sd_cli.loading.loader import load_model
from sd_cli.loading.packaged import packaged_config

SEED = 21


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("controlnet-files")


@pytest.fixture(scope="module")
def base(folder):
    return load_model(write_tiny_checkpoint("sd1", folder, fmt="safetensors")).model


def loaded_tensors(net) -> dict:
    return {key: value.float() for key, value in net.state_dict().items()}


@pytest.mark.parametrize("fmt, options", [
    ("control", {}), ("control", {"prefix": ""}), ("control", {"suffix": "safetensors"}),
    ("diffusers", {"suffix": "safetensors"}), ("difference", {}),
    ("control", {"suffix": "safetensors", "fp16": True}),
])
def test_every_format_loads_the_same_controlnet(folder, base, fmt, options):
    stem = f"{fmt}-{'-'.join(f'{k}{v}' for k, v in options.items())}"
    path = write_controlnet(folder, fmt, seed=SEED, stem=stem, **options)
    loaded = load_controlnet(path, None, base)
    expected = control_weights(SEED)
    tensors = loaded_tensors(loaded.net)
    assert tensors.keys() == expected.keys()
    tolerance = 1e-3 if options.get("fp16") else 1e-6  # fp16 rounds; a difference file's sum rounds in float32
    worst = max((tensors[key] - expected[key]).abs().max().item() for key in expected)
    assert worst < tolerance, worst
    assert loaded.name == stem and len(loaded.short_hash) == 8


def test_a_v10_full_checkpoint_keeps_its_controlnet_aside(folder):
    path = write_controlnet(folder, "full", seed=SEED, suffix="ckpt")
    loaded = load_model(path)  # the YAML beside it is the tiny cldm_v15.yaml (a ControlLDM)
    assert loaded.model.config.control is not None
    assert loaded.model.config.control.params["hint_channels"] == 3
    net = load_embedded(loaded.model, path).net
    expected = control_weights(SEED)
    assert max((loaded_tensors(net)[k] - expected[k]).abs().max().item() for k in expected) == 0.0


def test_a_checkpoint_without_a_controlnet_says_so(base, folder):
    with pytest.raises(UsageError, match="carries no ControlNet .*pass one with --control-net FILE"):
        load_embedded(base, folder / "tiny-sd1.safetensors")


def test_a_missing_tensor_is_named_by_the_strict_report(folder, base):
    weights = {CONTROL_PREFIX + k: v for k, v in control_weights(SEED).items() if k != "zero_convs.2.0.bias"}
    path = folder / "broken.safetensors"
    save_file(weights, str(path))
    write_controlnet(folder, "control", stem="broken-yaml")  # a YAML to copy beside it
    (folder / "broken.yaml").write_text((folder / "broken-yaml.yaml").read_text())
    with pytest.raises(CheckpointError, match=r"broken.safetensors does not match ControlNet config .*broken.yaml: "
                                              r"1 missing tensors: zero_convs.2.0.bias"):
        load_controlnet(path, None, base)


def test_an_sd2_base_is_refused(folder):
    sd2 = load_model(write_tiny_checkpoint("sd2", folder, fmt="safetensors")).model
    path = write_controlnet(folder, "control", stem="for-sd2")
    with pytest.raises(UsageError, match=r"for-sd2.pth: ControlNet steers SD 1.5, but the checkpoint is SD 2"):
        load_controlnet(path, None, sd2)


def test_without_a_yaml_the_width_decides_and_the_packaged_config_is_used(folder, base):
    path = write_controlnet(folder, "control", stem="no-yaml", yaml_beside=False)
    # the tiny ControlNet's 64-wide text is not SD 1.5's 768: said, not guessed
    with pytest.raises(UsageError, match="its cross-attention takes 64-wide text, not SD 1.5's 768"):
        load_controlnet(path, None, base)


def test_a_controlnet_given_as_ckpt_is_named(folder):
    path = write_controlnet(folder, "control", stem="as-ckpt")
    with pytest.raises(CheckpointError, match="is a ControlNet, not a whole checkpoint; pass it with --control-net"):
        load_model(path)


def test_the_packaged_cldm_v15_yaml_maps_through_the_allow_list():
    config = load_config(packaged_config("cldm_v15.yaml"))
    assert (config.kind, config.text_encoder, config.unet_in_channels) == ("txt2img", "clip", 4)
    control = load_control_config(packaged_config("cldm_v15.yaml"))
    assert control.params["hint_channels"] == 3 and control.params["model_channels"] == 320
    assert (control.only_mid_control, control.global_average_pooling) == (False, False)
    with pytest.raises(UsageError, match="has no control_stage_config"):
        load_control_config(packaged_config("v1-inference.yaml"))


def test_the_full_size_controlnet_has_the_original_keys():
    from sd_cli.models.controlnet import ControlNet
    from sd_cli.models.empty import empty_modules

    with empty_modules():
        net = ControlNet(**load_control_config(packaged_config("cldm_v15.yaml")).params)
    state = net.state_dict()
    assert len([k for k in state if k.startswith("zero_convs.")]) == 24  # 12 zero convs, weight and bias
    assert state["input_hint_block.14.weight"].shape == (320, 256, 3, 3)
    assert state["middle_block_out.0.weight"].shape == (1280, 1280, 1, 1)
    assert not any(k.startswith(("output_blocks.", "out.")) for k in state)
    # diffusers' ControlNetModel with SD 1.5's sizes (cross_attention_dim 768, 8 heads) has as many
    assert sum(v.numel() for v in state.values()) == 361_279_120
