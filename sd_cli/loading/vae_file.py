"""--vae PATH: replace the checkpoint's VAE with a separate one (e.g. the ft-MSE VAE).

Accepted layouts, all loaded strictly (every tensor used, every tensor present, shapes equal):
- original names (`encoder.down.0.block.0.conv1.weight`, `quant_conv.*`), optionally under
  `first_stage_model.`; a `.ckpt` of the EMA-style VAE releases wraps them in {"state_dict"};
- diffusers' AutoencoderKL names (`encoder.down_blocks.0.resnets.0.conv1.weight`), mapped here.
Training-only extras (`loss.*`, `model_ema.*`) are ignored.
"""

import re
from pathlib import Path

from sd_cli import log
from sd_cli.loading.checkpoint import model_hash, read_checkpoint
from sd_cli.loading.strict import compare

IGNORED_PREFIXES = ("loss.", "model_ema.")

# diffusers ResNet / attention part names -> the original's (attention: current and pre-0.14 names)
RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                "conv_shortcut": "nin_shortcut"}
ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                   "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
TOP_PARTS = {"conv_norm_out": "norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}


def load_vae(model, path) -> str:
    """Load the VAE at `path` into model.first_stage_model; returns its AUTOMATIC1111 hash (10 hex)."""
    path = Path(path)
    weights = original_vae_keys(read_checkpoint(path).state_dict)
    vae = model.first_stage_model
    compare(vae.state_dict(), weights).raise_if_any(f"--vae {path.name} does not fit this model's VAE")
    reference = next(vae.parameters())
    vae.load_state_dict({k: v.to(reference.device, reference.dtype) for k, v in weights.items()}, strict=True)
    log.info(f"using the VAE of {path}")
    return model_hash(path)


def original_vae_keys(state_dict: dict) -> dict:
    """A VAE state dict in any accepted layout -> original key names (diffusers mapped, 1x1 convs reshaped)."""
    weights = {}
    for key, value in state_dict.items():
        key = key.removeprefix("first_stage_model.")
        if key.startswith(IGNORED_PREFIXES):
            continue
        weights[key] = value
    if any(".down_blocks." in key or ".up_blocks." in key or ".mid_block." in key for key in weights):
        weights = _from_diffusers(weights)
    return weights


def _from_diffusers(weights: dict) -> dict:
    levels = 1 + max((int(m[1]) for key in weights if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", key))),
                     default=-1)
    mapped = {}
    for key, value in weights.items():
        new = _diffusers_name(key, levels)
        if ".mid.attn_1." in new and value.ndim == 2:  # diffusers' attention is Linear, the original's 1x1 conv
            value = value[:, :, None, None]
        mapped[new] = value
    return mapped


def _diffusers_name(key: str, levels: int) -> str:
    """One diffusers AutoencoderKL key -> its original name (keys with no diffusers form pass unchanged)."""
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    for theirs, ours in TOP_PARTS.items():
        if rest.startswith(theirs + "."):
            return f"{side}.{ours}{rest[len(theirs):]}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", rest):
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])  # diffusers' up blocks run deepest first
        return f"{side}.{m[1]}.{level}.block.{m[3]}.{RESNET_PARTS.get(m[4], m[4])}.{m[5]}"
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(\w+)", rest):
        level = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
        return f"{side}.{m[1]}.{level}.{m[1]}sample.conv.{m[4]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)\.(\w+)", rest):
        return f"{side}.mid.block_{int(m[1]) + 1}.{RESNET_PARTS.get(m[2], m[2])}.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", rest):
        return f"{side}.mid.attn_1.{ATTENTION_PARTS.get(m[1], m[1])}.{m[2]}"
    return key
