"""Tiny random-weight ControlNet files in the formats people have, for tests.

The ControlLDM YAML is lllyasviel/ControlNet's cldm_v15.yaml with the tiny SD 1.x sizes of tiny_models.py
(so a tiny SD 1.x checkpoint is a valid base), and the ControlNet's weights are seeded random, zero convs
included (released files are trained away from zero; zeros would make a test blind to them). Formats:
- "full": a v1.0 control_sd15_*.pth: the base SD 1.x weights plus control_model.* (a Lightning .ckpt);
- "control": a v1.1 control_v11p_sd15_*.pth: only control_model.* (or bare keys with prefix="");
- "diffusers": diffusers' ControlNetModel names, converted by diffusers' own single-file converter;
- "difference": AUTOMATIC1111's extension's difference file: control_model.* minus the base UNet's tensor
  wherever the UNet has one, and a `difference` key.
"""

from pathlib import Path

import torch
from omegaconf import OmegaConf
from tiny_models import CONFIGS, save_lightning_ckpt, tiny_config, tiny_state_dict

CONTROL_PREFIX = "control_model."


def tiny_control_config() -> dict:
    """cldm_v15.yaml with the tiny SD 1.x sizes (UNet, ControlNet, VAE, image size)."""
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "cldm_v15.yaml"))
    base = tiny_config("sd1")["model"]["params"]
    params = config["model"]["params"]
    params["image_size"] = base["image_size"]
    unet = dict(base["unet_config"]["params"])
    params["unet_config"]["params"].update(unet)
    control = params["control_stage_config"]["params"]
    control.update({k: v for k, v in unet.items() if k in control and k != "in_channels"})
    params["first_stage_config"]["params"]["ddconfig"].update(base["first_stage_config"]["params"]["ddconfig"])
    return config


def control_weights(seed: int, config: dict | None = None) -> dict:
    """A ControlNet's tensors by the original's names (without control_model.), seeded random."""
    from sd_cli.models.controlnet import ControlNet

    config = config or tiny_control_config()
    torch.manual_seed(seed)
    net = ControlNet(**config["model"]["params"]["control_stage_config"]["params"])
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.add_(0.05 * torch.randn_like(value))  # zero convs and hint convs away from their init
    return {key: value.clone() for key, value in net.state_dict().items()}


def diffusers_controlnet_config(config: dict, unet_weights: dict) -> dict:
    """ControlNetModel's config from the ControlLDM YAML. diffusers 0.42's own
    create_controlnet_diffusers_config_from_ldm calls its UNet helper without the checkpoint (a TypeError),
    so the UNet part is asked for here with the base UNet's weights and the ControlNet's entries taken."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    unet = create_unet_diffusers_config_from_ldm(config, unet_weights)
    wanted = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
              "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
              "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")
    hint_channels = config["model"]["params"]["control_stage_config"]["params"]["hint_channels"]
    return {"conditioning_channels": hint_channels, **{key: unet[key] for key in wanted if key in unet}}


def to_diffusers(weights: dict, config: dict) -> dict:
    """The ControlNet's tensors by diffusers' ControlNetModel names (diffusers' own converter)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    prefixed = {CONTROL_PREFIX + k: v for k, v in weights.items()}
    unet = {"model.diffusion_model." + k: v for k, v in weights.items()}
    return convert_controlnet_checkpoint(prefixed, diffusers_controlnet_config(config, unet))


def write_controlnet(folder: Path, fmt: str, seed: int = 10, suffix: str = "pth", stem: str | None = None,
                     prefix: str = CONTROL_PREFIX, fp16: bool = False, yaml_beside: bool = True,
                     base_seed: int = 0) -> Path:
    """Write <folder>/<stem>.<suffix> in format `fmt` (and the tiny YAML beside it); returns its path."""
    config = tiny_control_config()
    weights = control_weights(seed, config)
    if fmt == "full":
        base, _ = tiny_state_dict("sd1", base_seed)
        tensors = {**base, **{CONTROL_PREFIX + k: v for k, v in weights.items()}}
    elif fmt == "control":
        tensors = {prefix + k: v for k, v in weights.items()}
    elif fmt == "diffusers":
        tensors = to_diffusers(weights, config)
    elif fmt == "difference":
        base, _ = tiny_state_dict("sd1", base_seed)
        unet = {k[len("model.diffusion_model."):]: v for k, v in base.items() if k.startswith("model.diffusion_model.")}
        tensors = {CONTROL_PREFIX + k: v - unet[k] if k in unet else v for k, v in weights.items()}
        tensors["difference"] = torch.tensor(1.0)
    else:
        raise ValueError(fmt)
    if fp16:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or f"tiny-control-{fmt}"
    path = folder / f"{stem}.{suffix}"
    if suffix == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    elif fmt == "full":
        save_lightning_ckpt(tensors, path)
    else:
        torch.save(tensors, path)
    if yaml_beside:
        OmegaConf.save(OmegaConf.create(config), folder / f"{stem}.yaml")
    return path
