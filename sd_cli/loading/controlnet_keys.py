"""A ControlNet file's keys as sd_cli's ControlNet names them (the original's below `control_model.`).

Three layouts are read by name:
- the original's: `control_model.input_hint_block.0.weight` (v1.0 full files, v1.1 files), or the same bare;
- diffusers' ControlNetModel: `controlnet_cond_embedding.conv_in.weight`, `down_blocks.0.resnets.0.conv1.weight`,
  `controlnet_down_blocks.3.weight`, ... renamed here block by block;
- AUTOMATIC1111's extension's "difference" files: original names plus a `difference` key, holding each
  tensor minus the SD 1.5 UNet's (controlnet_file.py adds the base UNet back).
"""

import re

from sd_cli.errors import CheckpointError

ORIGINAL_PREFIX = "control_model."
DIFFERENCE_KEY = "difference"
DIFFUSERS_MARK = "controlnet_cond_embedding.conv_in.weight"
ORIGINAL_MARKS = ("input_hint_block.0.weight", "zero_convs.0.0.weight")
# A diffusers ResNet's parts -> the original ResBlock's
RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def layout(state_dict: dict) -> str:
    """"original" (control_model.* or bare) or "diffusers"; CheckpointError for anything else."""
    if DIFFUSERS_MARK in state_dict:
        return "diffusers"
    if any(ORIGINAL_PREFIX + mark in state_dict or mark in state_dict for mark in ORIGINAL_MARKS):
        return "original"
    raise CheckpointError("holds no ControlNet (no control_model.input_hint_block.*, input_hint_block.* or "
                          "diffusers' controlnet_cond_embedding.*); pass a ControlNet file with --control-net")


def original_keys(state_dict: dict) -> dict:
    """The ControlNet's tensors by the original's names below control_model., the rest of the file left out
    (a v1.0 full file's SD weights, the difference marker)."""
    if any(key.startswith(ORIGINAL_PREFIX) for key in state_dict):
        return {key[len(ORIGINAL_PREFIX):]: value for key, value in state_dict.items()
                if key.startswith(ORIGINAL_PREFIX)}
    return {key: value for key, value in state_dict.items() if key != DIFFERENCE_KEY}


def from_diffusers(state_dict: dict, per_level: int) -> dict:
    """diffusers' names -> the original's; per_level = num_res_blocks + 1 (the input blocks of a level).
    A key that has no original counterpart keeps its name, so the strict report names it."""
    return {_original_name(key, per_level): value for key, value in state_dict.items()}


def _original_name(key: str, per: int) -> str:
    module, _, tensor = key.rpartition(".")
    return f"{_original_module(module, per)}.{tensor}"


def _original_module(name: str, per: int) -> str:
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0"}
    if name in fixed:
        return fixed[name]
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", name):
        return f"input_hint_block.{2 * (int(m[1]) + 1)}"  # the SiLUs sit at the odd indices
    if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)", name):
        return f"zero_convs.{m[1]}.0"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)", name):
        index = 1 + int(m[1]) * per + int(m[3])
        return f"input_blocks.{index}.{_inner(m[2], m[4])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", name):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op"
    if m := re.fullmatch(r"mid_block\.(attentions|resnets)\.(\d+)\.(.+)", name):
        index = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block.{index}.{RESNET_PARTS.get(m[3], m[3]) if m[1] == 'resnets' else m[3]}"
    return name


def _inner(kind: str, rest: str) -> str:
    """Inside a block: attention parts keep their names (slot 1); ResNet parts are renamed (slot 0)."""
    if kind == "attentions":
        return f"1.{rest}"
    return f"0.{RESNET_PARTS.get(rest, rest)}"
