"""LoRA in the kohya / AUTOMATIC1111 safetensors format, merged into the weights and restored after.

A file holds, per adapted module, `<name>.lora_down.weight` [r, in(, kh, kw)], `<name>.lora_up.weight`
[out, r(, 1, 1)] and optionally `<name>.alpha` (default r). Merging adds

    ΔW = weight · (alpha / r) · up @ down        (convolutions: flattened, then reshaped to W)

Names: `lora_unet_<module path with _>` in diffusers' UNet naming (kohya) or the original's
(`lora_unet_input_blocks_1_1_proj_in`, kohya's SDXL naming), and `lora_te_text_model_encoder_layers_N_<part>`
for the text encoder (Hugging Face CLIP names: q/k/v land in slices of our fused `attn.in_proj_weight`).
SDXL's files name its towers `lora_te1_` (CLIP-L) and `lora_te2_` (OpenCLIP bigG, in the same Hugging
Face names, which kohya converts bigG to). A name that matches no module is an error naming it.

Prompts use `<lora:name:0.8>` (weight 1 when left out); the tags are stripped before the prompt
reaches the text encoder, and the prompt is recorded as typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sd_cli import log
from sd_cli.errors import CheckpointError, UsageError
from sd_cli.fields import LORA_DIR as DEFAULT_DIR

TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?>")
SUFFIXES = (".safetensors",)
TEXT_PARTS = {"self_attn_out_proj": "attn.out_proj", "mlp_fc1": "mlp.c_fc", "mlp_fc2": "mlp.c_proj"}
QKV = ("q_proj", "k_proj", "v_proj")
RESNET_PARTS = {"norm1": "in_layers_0", "conv1": "in_layers_2", "time_emb_proj": "emb_layers_1",
                "norm2": "out_layers_0", "conv2": "out_layers_3", "conv_shortcut": "skip_connection"}


@dataclass(frozen=True)
class LoraUse:
    """One LoRA to apply: the file and its weight (the multiplier of `<lora:name:weight>`)."""

    path: Path
    weight: float

    @property
    def name(self) -> str:
        return self.path.stem


# -- prompt syntax and flags -------------------------------------------------------------------

def prompt_tags(prompt: str) -> tuple[tuple[str, float], ...]:
    """The `<lora:name:weight>` tags of a prompt as (name, weight) pairs, in order."""
    tags = []
    for name, weight in TAG.findall(prompt):
        try:
            tags.append((name.strip(), float(weight) if weight.strip() else 1.0))
        except ValueError:
            raise UsageError(f"<lora:{name}:{weight}>: the weight must be a number, e.g. <lora:{name}:0.8>") from None
    return tuple(tags)


def tag_key(prompt: str) -> tuple:
    """The raw tags of a prompt, unparsed: jobs with different ones never share a batch."""
    return tuple(TAG.findall(prompt))


def strip_tags(prompt: str) -> str:
    """The prompt the text encoder sees: LoRA tags removed, the spaces around them tidied."""
    return re.sub(r"\s+,", ",", re.sub(r" {2,}", " ", TAG.sub("", prompt))).strip()


def parse_flag(value: str) -> tuple[str, float]:
    """--lora PATH[:weight] -> (PATH, weight); a Windows drive letter is not taken for a weight."""
    path, sep, weight = value.rpartition(":")
    if sep and path and re.fullmatch(r"-?\d+(\.\d*)?|-?\.\d+", weight):
        return path, float(weight)
    return value, 1.0


def resolve(name: str, lora_dir: Path) -> Path:
    """A LoRA named in a prompt or by --lora: a path as given, else <lora-dir>/<name>.safetensors."""
    direct = Path(name).expanduser()
    candidates = [direct, lora_dir / name] + [lora_dir / (name + s) for s in SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UsageError(f"LoRA {name} not found (looked for {direct} and {lora_dir / (name + '.safetensors')}); "
                     "put it in --lora-dir or give its path")


def uses_for(flag_loras, prompt: str, lora_dir: Path) -> tuple[LoraUse, ...]:
    """The LoRAs one image uses: --lora's (name, weight) pairs, then the prompt's tags, as files."""
    named = list(flag_loras) + list(prompt_tags(prompt))
    return tuple(LoraUse(resolve(name, lora_dir), weight) for name, weight in named)


# -- merging -----------------------------------------------------------------------------------

class LoraMerger:
    """Keeps the model's weights as loaded and merges one set of LoRAs at a time into them.

    `apply(uses)` restores every weight touched by the previous set, then merges the new one, so
    consecutive batches with the same set cost nothing. `restore()` brings back the original weights.
    With `weights_frozen` (--compile on the CPU) the first batch's weights are final, so a later
    change of set is refused.
    """

    def __init__(self, model, weights_frozen: bool = False):
        self.model = model
        self.weights_frozen = weights_frozen
        self.originals: dict = {}  # parameter name -> its value as loaded
        self.current: tuple[LoraUse, ...] = ()
        self.applied = False  # whether any batch has run (with --compile on the CPU, its weights are final)
        self._files: dict[Path, dict] = {}

    def apply(self, uses: tuple[LoraUse, ...]) -> None:
        if uses == self.current and self.applied:
            return
        if self.applied and self.weights_frozen:
            shown = ", ".join(u.name for u in uses) or "none"
            raise UsageError(f"--compile on the CPU (and --backend openvino) builds the first batch's weights into the compiled UNet, so a "
                             f"later batch cannot change its LoRAs (to: {shown}); render those prompts in a "
                             "separate run, or drop --compile")
        self.applied = True
        self.restore()
        import torch

        deferred = self.model.deferred
        if deferred is not None and any(use.weight != 0 for use in uses):
            deferred.pin()  # merged in place: the weights must exist, and are kept (--backend openvino)

        params = _parameters(self.model)
        for use in uses:
            if use.weight == 0:
                continue
            for target, rows, delta in self._deltas(use.path):
                param = params[target]
                if target not in self.originals:
                    self.originals[target] = param.detach().clone()
                with torch.no_grad():
                    view = param if rows is None else param[rows[0]:rows[1]]
                    view += (use.weight * delta).to(param.device, param.dtype)
        self.current = uses
        if uses:
            log.info("LoRA: " + ", ".join(f"{u.name} ×{u.weight:g}" for u in uses))

    def restore(self) -> None:
        import torch

        params = _parameters(self.model)
        with torch.no_grad():
            for target, original in self.originals.items():
                params[target].copy_(original)
        self.originals.clear()
        self.current = ()

    def _deltas(self, path: Path) -> list:
        """(parameter name, row slice or None, ΔW at weight 1) per module of the file; read once."""
        if path not in self._files:
            self._files[path] = lora_deltas(self.model, read_lora(path), path.name)
        return self._files[path]


def read_lora(path: Path) -> dict:
    from sd_cli.loading.checkpoint import read_checkpoint

    if path.suffix.lower() != ".safetensors":
        raise UsageError(f"LoRA {path}: only .safetensors LoRA files are supported")
    return read_checkpoint(path).state_dict


def lora_deltas(model, tensors: dict, name: str) -> list:
    """The merge of every module a LoRA file adapts: (parameter name, rows or None, ΔW)."""
    groups: dict[str, dict] = {}
    for key, value in tensors.items():
        stem, _, part = key.partition(".")
        groups.setdefault(stem, {})[part] = value
    modules = _module_names(model)
    towers = text_tower_prefixes(model)
    per = int(model.config.unet_params.get("num_res_blocks", 2)) + 1  # diffusers' blocks per UNet level
    deltas = []
    for stem, parts in groups.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise CheckpointError(f"LoRA {name}: {stem} has no lora_down/lora_up weights "
                                  f"({', '.join(sorted(parts))}); only plain LoRA is supported")
        target, rows = _target(stem, modules, per, towers)
        if target is None:
            raise CheckpointError(f"LoRA {name}: {stem} matches no module of this model "
                                  "(a LoRA for another model family?)")
        deltas.append((target, rows, _delta(parts, modules[target], rows, f"{name}: {stem}")))
    return deltas


def _delta(parts: dict, weight_shape: tuple, rows, where: str):
    import torch

    down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
    rank = down.shape[0]
    alpha = float(parts["alpha"]) if "alpha" in parts else rank
    shape = weight_shape if rows is None else (rows[1] - rows[0], *weight_shape[1:])
    delta = up.flatten(1) @ down.flatten(1)  # [out, in·kh·kw]
    if delta.numel() != torch.Size(shape).numel() or delta.shape[0] != shape[0]:
        raise CheckpointError(f"LoRA {where}: up @ down is {tuple(delta.shape)}, the module's weight is "
                              f"{tuple(shape)} (a LoRA for another model size?)")
    return delta.reshape(shape) * (alpha / rank)


def _parameters(model) -> dict:
    """Parameters under their checkpoint names: a --compile'd UNet adds `_orig_mod.` to its own."""
    return {name.replace("._orig_mod.", "."): p for name, p in model.named_parameters()}


def _module_names(model) -> dict[str, tuple]:
    """Parameter name -> shape, for the UNet and text encoder weights a LoRA may adapt."""
    return {name: tuple(p.shape) for name, p in _parameters(model).items()
            if name.endswith("weight") and name.startswith(("model.diffusion_model.", "cond_stage_model.",
                                                            "conditioner.embedders."))}


def text_tower_prefixes(model) -> dict[str, str]:
    """The LoRA name part of each text tower -> its parameters' prefix: `te` for SD 1.x/2.x's one tower,
    `te1` / `te2` for SDXL's CLIP-L and bigG (the refiner has bigG alone, still `te2`)."""
    from sd_cli.models import text_encoder

    named = {id(module): name for name, module in model.named_modules()}
    kinds = {text_encoder.SDXLCLIPTextEncoder: "te1", text_encoder.SDXLOpenCLIPTextEncoder: "te2"}
    return {kinds.get(type(tower), "te"): named[id(tower)] + "." for tower in model.text_towers}


def _target(stem: str, modules: dict, per: int, towers: dict[str, str]) -> tuple[str | None, tuple[int, int] | None]:
    if stem.startswith("lora_unet_"):
        flat = _unet_flat_index(modules)
        name = stem[len("lora_unet_"):]
        for candidate in (name, *_compvis_names(name, per)):
            if candidate in flat:
                return flat[candidate], None
        return None, None
    kind, _, name = stem.removeprefix("lora_").partition("_")
    if stem.startswith("lora_") and kind in towers:
        return _text_target(name, modules, towers[kind])
    return None, None


def _unet_flat_index(modules: dict) -> dict[str, str]:
    prefix = "model.diffusion_model."
    return {name[len(prefix):-len(".weight")].replace(".", "_"): name
            for name in modules if name.startswith(prefix)}


def _text_target(name: str, modules: dict, tower: str):
    m = re.fullmatch(r"text_model_encoder_layers_(\d+)_(\w+)", name)
    if not m:
        return None, None
    block = f"{tower}transformer.resblocks.{m[1]}."
    if m[2] in TEXT_PARTS:
        target = block + TEXT_PARTS[m[2]] + ".weight"
        return (target, None) if target in modules else (None, None)
    qkv = m[2].removeprefix("self_attn_")
    target = block + "attn.in_proj_weight"
    if qkv in QKV and target in modules:
        width = modules[target][0] // 3
        index = QKV.index(qkv)
        return target, (index * width, (index + 1) * width)
    return None, None


def _compvis_names(name: str, per: int) -> list[str]:
    """Diffusers UNet module names (kohya's) -> the original's, with underscores. `per` is the number
    of blocks per level (num_res_blocks + 1); the up-sampler sits at index 1 or 2 of its block."""
    if name in ("conv_in", "conv_out", "conv_norm_out"):
        return [{"conv_in": "input_blocks_0_0", "conv_out": "out_2", "conv_norm_out": "out_0"}[name]]
    if m := re.fullmatch(r"time_embedding_linear_([12])", name):
        return [f"time_embed_{2 * (int(m[1]) - 1)}"]
    if m := re.fullmatch(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        index = 1 + int(m[1]) * per + int(m[3])
        return [f"input_blocks_{index}_{1 if m[2] == 'attentions' else 0}_{_inner(m[2], m[4])}"]
    if m := re.fullmatch(r"down_blocks_(\d+)_downsamplers_0_conv", name):
        return [f"input_blocks_{(int(m[1]) + 1) * per}_0_op"]
    if m := re.fullmatch(r"mid_block_(attentions|resnets)_(\d+)_(.+)", name):
        index = 1 if m[1] == "attentions" else 2 * int(m[2])
        return [f"middle_block_{index}_{_inner(m[1], m[3])}"]
    if m := re.fullmatch(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        index = int(m[1]) * per + int(m[3])
        return [f"output_blocks_{index}_{1 if m[2] == 'attentions' else 0}_{_inner(m[2], m[4])}"]
    if m := re.fullmatch(r"up_blocks_(\d+)_upsamplers_0_conv", name):
        index = int(m[1]) * per + per - 1
        return [f"output_blocks_{index}_1_conv", f"output_blocks_{index}_2_conv"]
    return []


def _inner(kind: str, rest: str) -> str:
    """Inside a block: attention parts keep their names; ResNet parts are renamed."""
    return RESNET_PARTS.get(rest, rest) if kind == "resnets" else rest


def lora_hashes(uses) -> str:
    """AUTOMATIC1111's `Lora hashes` value: "name: hash10, name: hash10"."""
    from sd_cli.loading.checkpoint import model_hash

    return ", ".join(f"{use.name}: {model_hash(use.path)}" for use in uses)
