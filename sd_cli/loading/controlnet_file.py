"""--control-net FILE and a ControlNet v1.0 full checkpoint's own ControlNet: read safely, renamed, loaded strictly.

Files people have (docs/controlnet.md): v1.0 `control_sd15_*.pth` (a whole SD 1.5 checkpoint plus
`control_model.*`, given as --ckpt), v1.1 `control_v11p_sd15_*.pth` (only `control_model.*`, or the same
keys bare), either as fp16 .safetensors, diffusers' ControlNetModel files, and AUTOMATIC1111's extension's
"difference" files (a `difference` key; the base UNet's weights are added back, as the extension does).

The YAML is found as for --ckpt: --control-net-config, else a YAML beside the file with its stem, else
the packaged cldm_v15.yaml once the weights show an SD 1.5 ControlNet (768-wide cross-attention).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from sd_cli import log
from sd_cli.errors import CheckpointError, UsageError
from sd_cli.loading import controlnet_keys
from sd_cli.loading.checkpoint import model_hash, read_checkpoint
from sd_cli.loading.config import ControlConfig, load_control_config
from sd_cli.loading.packaged import packaged_config
from sd_cli.loading.strict import compare
from sd_cli.models.controlnet import ControlNet
from sd_cli.models.empty import empty_modules

PACKAGED_CONFIG = "cldm_v15.yaml"
SD15_CONTEXT_DIM = 768  # CLIP ViT-L's width: what every SD 1.5 ControlNet's cross-attention takes
CONTEXT_KEY = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # [heads·dim, context_dim]


@dataclass
class LoadedControlNet:
    net: ControlNet
    config: ControlConfig
    name: str  # the file's stem, as AUTOMATIC1111's extension names the model
    short_hash: str  # the first 8 hex digits of the file's sha256, in the extension's "Model: name [hash]"

    @property
    def label(self) -> str:
        return f"{self.name} [{self.short_hash}]"


def load_controlnet(path: Path, config_path: Path | None, base) -> LoadedControlNet:
    """--control-net FILE for the loaded base model (a LatentDiffusion), on its device and in its dtype."""
    check_base(base, path.name)
    state = read_checkpoint(path).state_dict
    try:
        kind = controlnet_keys.layout(state)
    except CheckpointError as err:
        raise CheckpointError(f"{path.name}: {err}") from None
    original = controlnet_keys.original_keys(state) if kind == "original" else None
    config = _choose_config(path, config_path, original if original is not None else state, kind)
    if original is None:
        per_level = int(config.params["num_res_blocks"]) + 1
        original = controlnet_keys.from_diffusers(state, per_level)
    if controlnet_keys.DIFFERENCE_KEY in state:
        original = _add_base(original, base, path.name)
    net = _build(config, original, path.name, base)
    return LoadedControlNet(net, config, path.stem, model_hash(path)[:8])


def load_embedded(base, checkpoint_path: Path) -> LoadedControlNet:
    """A v1.0 full file's own control_model.* (set aside by the loader), with its ControlLDM YAML's
    control_stage_config, else the packaged cldm_v15.yaml's."""
    check_base(base, checkpoint_path.name)
    if base.control_weights is None:
        raise UsageError(f"{checkpoint_path.name} carries no ControlNet (no control_model.* tensors); "
                         "pass one with --control-net FILE")
    config = base.config.control or load_control_config(packaged_config(PACKAGED_CONFIG))
    weights = controlnet_keys.original_keys(base.control_weights)
    return LoadedControlNet(_build(config, weights, checkpoint_path.name, base), config, checkpoint_path.stem,
                            model_hash(checkpoint_path)[:8])


def check_base(base, name: str) -> None:
    """The ControlNets sd_cli runs steer SD 1.x UNets (CLIP text, the original ldm layout)."""
    config = base.config
    if config.engine != "ldm" or config.text_encoder != "clip":
        raise UsageError(f"{name}: ControlNet steers SD 1.5, but the checkpoint is {base.family.description}; "
                         "pass an SD 1.5 checkpoint with --ckpt")


def _choose_config(path: Path, config_path: Path | None, weights: dict, kind: str) -> ControlConfig:
    if config_path is not None:
        return load_control_config(config_path)
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if candidate.is_file():
            log.info(f"using ControlNet config {candidate} (named after the file)")
            return load_control_config(candidate)
    context_key = CONTEXT_KEY if kind == "original" else "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    width = weights[context_key].shape[1] if context_key in weights else None
    if width != SD15_CONTEXT_DIM:
        raise UsageError(f"{path.name}: its cross-attention takes {width or 'no'}-wide text, not SD 1.5's "
                         f"{SD15_CONTEXT_DIM} (SD 2.x ControlNets take 1024); sd_cli runs SD 1.5 ControlNets, "
                         "or pass its YAML with --control-net-config")
    config = packaged_config(PACKAGED_CONFIG)
    log.info(f"{path.name}: an SD 1.5 ControlNet; using {config}")
    return load_control_config(config)


def _add_base(weights: dict, base, name: str) -> dict:
    """A difference file: each tensor the base UNet also has is stored minus the UNet's; add it back."""
    unet = base.model.diffusion_model.state_dict()
    log.info(f"{name}: a difference ControlNet; the base checkpoint's UNet weights are added in")
    return {key: value.float() + unet[key].detach().float().cpu() if key in unet else value
            for key, value in weights.items()}


def _build(config: ControlConfig, weights: dict, name: str, base) -> ControlNet:
    """The ControlNet on meta, every tensor from the file (strict report), on the base's device and dtype."""
    try:
        with empty_modules():
            net = ControlNet(**config.params)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{config.source}: {err}") from None
    compare(net.state_dict(), weights).raise_if_any(
        f"{name} does not match ControlNet config {config.source}", sides="file vs config",
        hint=". Pass the ControlNet's own YAML with --control-net-config")
    _check_fits(net, base, name)
    device, dtype = base.device, base.dtype
    net.load_state_dict({key: value.to(device=device, dtype=dtype) for key, value in weights.items()},
                        strict=True, assign=True)
    return net.eval()


def _check_fits(net: ControlNet, base, name: str) -> None:
    """Its residuals must have the shapes of the base UNet's skips: the same encoder sizes."""
    unet = base.model.diffusion_model
    sizes = lambda m: (m.model_channels, m.channel_mult, m.num_res_blocks, m.context_dim)  # noqa: E731
    if sizes(net) != sizes(unet):
        raise UsageError(f"{name}: this ControlNet's encoder (channels, levels, blocks, text width {sizes(net)}) is "
                         f"not the base UNet's {sizes(unet)}; pass a ControlNet made for this base")
