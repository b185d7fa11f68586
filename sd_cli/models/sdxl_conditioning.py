"""sgm's `GeneralConditioner` as the SDXL, refiner and SD 2.1 (SD-Turbo) YAMLs configure it.

The embedders sit in `embedders.N` in the YAML's order, so the checkpoint's
`conditioner.embedders.N.*` tensors belong to `embedders[N]`. Each embedder's output goes, by its
rank, to one of two places, concatenated in embedder order:
- crossattn [B, 77·k, context_dim]: the text towers' hidden states, on the channel axis
  (SDXL base: CLIP-L 768 + bigG 1280 = 2048);
- vector y [B, adm_in_channels]: bigG's pooled vector, then each size embedder's Fourier features
  (base: pooled, original size, crop, target size = 1280 + 3·512; refiner: pooled, original size,
  crop, aesthetic score = 1280 + 2·512 + 256).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sd_cli.models import text_encoder
from sd_cli.models.unet import timestep_embedding

TEXT_KEY = "txt"
ENCODERS = "sgm.modules.encoders.modules."
TEXT_TOWERS = {  # YAML target -> (tower class, the tower's sub-module in the checkpoint)
    ENCODERS + "FrozenCLIPEmbedder": (text_encoder.SDXLCLIPTextEncoder, "transformer."),
    ENCODERS + "FrozenOpenCLIPEmbedder2": (text_encoder.SDXLOpenCLIPTextEncoder, "model."),
    ENCODERS + "FrozenOpenCLIPEmbedder": (text_encoder.OpenCLIPTextEncoder, "model."),
}
SIZE_EMBEDDER = ENCODERS + "ConcatTimestepEmbedderND"
SIZE_NUMBERS = {"original_size_as_tuple": 2, "crop_coords_top_left": 2, "target_size_as_tuple": 2, "aesthetic_score": 1}
SIZE_KEYS = tuple(SIZE_NUMBERS)
# GeneralConditioner's per-embedder settings: training-time dropout of the conditioning (ucg_rate,
# legacy_ucg_value), which get_unconditional_conditioning switches off, and trainability.
EMBEDDER_SETTINGS = frozenset({"target", "params", "input_key", "is_trainable", "ucg_rate", "legacy_ucg_value"})


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's size and crop conditioning (the demo's value_dict), in pixels, (height, width) and (top, left).

    target_size is the base's, aesthetic_score the refiner's; a model whose YAML asks for a value
    that is None refuses to run.
    """

    original_size: tuple[int, int]
    crop_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    aesthetic_score: float | None = None

    def values(self, input_key: str) -> tuple[float, ...]:
        """The numbers a size embedder with this YAML `input_key` embeds, in the original's order."""
        score = None if self.aesthetic_score is None else (self.aesthetic_score,)
        value = dict(zip(SIZE_KEYS, (self.original_size, self.crop_top_left, self.target_size, score)))[input_key]
        if value is None:
            raise ValueError(f"this model is conditioned on {input_key} and none was given")
        return tuple(value)


# The flags of each size input (sd_cli/fields.py): (height or top, width or left).
SIZE_FLAGS = {"original_size_as_tuple": ("original_height", "original_width"),
              "crop_coords_top_left": ("crop_top", "crop_left"),
              "target_size_as_tuple": ("target_height", "target_width")}


@dataclass(frozen=True)
class SizeFlags:
    """--original-width/-height, --crop-top/-left, --target-width/-height as given; None is the demo's
    default: the size of the image being sampled, and no crop."""

    original_width: int | None = None
    original_height: int | None = None
    crop_top: int | None = None
    crop_left: int | None = None
    target_width: int | None = None
    target_height: int | None = None

    def given(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if value is not None}

    def conditioning(self, size: tuple[int, int], aesthetic_score: float | None) -> SizeConditioning:
        """The SizeConditioning of an image of size (height, width) sampled with these flags."""
        def pair(input_key: str, default: tuple[int, int]) -> tuple[int, int]:
            first, second = (getattr(self, name) for name in SIZE_FLAGS[input_key])
            return (default[0] if first is None else first, default[1] if second is None else second)

        return SizeConditioning(original_size=pair("original_size_as_tuple", size),
                                crop_top_left=pair("crop_coords_top_left", (0, 0)),
                                target_size=pair("target_size_as_tuple", size), aesthetic_score=aesthetic_score)

    def unused_by(self, size_inputs: tuple[str, ...]) -> list[str]:
        """The given flags' names that none of a model's size inputs takes."""
        taken = {name for key in size_inputs for name in SIZE_FLAGS.get(key, ())}
        return [name for name in self.given() if name not in taken]


@dataclass
class TextConditioning:
    """The text part of a conditioning: crossattn [B, 77·k, context_dim], pooled [B, P] (None without one)."""

    crossattn: Tensor
    pooled: Tensor | None


def size_embedding(values: Tensor, width: int) -> Tensor:
    """`ConcatTimestepEmbedderND`: [B, k] numbers → [B, k·width], value by value, each [cos | sin].

    The features are the UNet's timestep embedding of the float value: cos(v·f_i), then sin(v·f_i),
    f_i = exp(-ln(10000)·i / (width/2)). float32, like the original's.
    """
    values = values[:, None] if values.dim() == 1 else values
    batch, count = values.shape
    return timestep_embedding(values.reshape(-1), width).reshape(batch, count * width)


class SizeEmbedder(nn.Module):
    """One `ConcatTimestepEmbedderND`: no weights, the Fourier features of one conditioning input."""

    def __init__(self, input_key: str, outdim: int):
        super().__init__()
        self.input_key = input_key
        self.outdim = outdim

    def forward(self, sizes: SizeConditioning, batch: int, device=None) -> Tensor:
        values = torch.tensor(sizes.values(self.input_key), dtype=torch.float32, device=device)
        return size_embedding(values.expand(batch, -1), self.outdim)  # [batch, k·outdim]


class SDXLConditioner(nn.Module):
    """The text towers and size embedders of an sgm YAML's `conditioner_config`.

    encode_text(prompts) gives the TextConditioning of plain 77-token prompts; a pipeline that
    chunks, weights or embeds its own tokens runs `text_encoders` itself and joins their outputs
    with join_text. vector(text, sizes) builds the UNet's y; zero_text gives the unconditional
    branch's zeros for an empty negative prompt.
    """

    def __init__(self, embedders: list[nn.Module]):
        super().__init__()
        self.embedders = nn.ModuleList(embedders)

    @classmethod
    def from_config(cls, emb_models: list[Mapping], state_dict: Mapping[str, Tensor]) -> SDXLConditioner:
        """Build from `conditioner_config.params.emb_models`, text tower sizes read from the checkpoint."""
        return cls([_embedder(index, entry, state_dict) for index, entry in enumerate(emb_models)])

    @property
    def text_encoders(self) -> list[text_encoder._TextTower]:
        return [embedder for embedder in self.embedders if not isinstance(embedder, SizeEmbedder)]

    @property
    def context_dim(self) -> int:
        """The width of crossattn: the text towers' widths added up (the UNet's context_dim)."""
        return sum(tower.token_embedding.embedding_dim for tower in self.text_encoders)

    @property
    def vector_dim(self) -> int:
        """The width of y (the UNet's adm_in_channels); 0 without one."""
        return sum(_vector_part_width(embedder) for embedder in self.embedders)

    @property
    def has_vector(self) -> bool:
        """Whether the UNet takes a vector y (SDXL base and refiner; not SD 2.1 / SD-Turbo)."""
        return self.vector_dim > 0

    def encode_text(self, prompts: list[str]) -> TextConditioning:
        """Each tower on its own tokens of the prompts (CLIP-L pads with 49407, OpenCLIP with 0)."""
        outputs = []
        for tower in self.text_encoders:
            tokens = tower.tokenize(prompts).to(tower.token_embedding.weight.device)
            outputs.append(tower.encode_with_pooled(tokens) if returns_pooled(tower) else (tower.encode(tokens), None))
        return self.join_text(outputs)

    def join_text(self, outputs: list[tuple[Tensor, Tensor | None]]) -> TextConditioning:
        """One (hidden [B, L, width], pooled [B, P] or None) per text tower, in `text_encoders` order."""
        pooled = [vector for _, vector in outputs if vector is not None]
        return TextConditioning(torch.cat([hidden for hidden, _ in outputs], dim=2),
                                torch.cat(pooled, dim=1) if pooled else None)

    def vector(self, text: TextConditioning, sizes: SizeConditioning | None) -> Tensor | None:
        """The UNet's y [B, adm_in_channels] in float32 (as autocast's concatenation gives it), or None.

        Parts in embedder order: a tower's pooled vector, a size embedder's features.
        """
        if not self.has_vector:
            return None
        batch, device = text.crossattn.shape[0], text.crossattn.device
        parts, pooled_at = [], 0
        for embedder in self.embedders:
            if isinstance(embedder, SizeEmbedder):
                if sizes is None:
                    raise ValueError(f"this model is conditioned on {embedder.input_key} and no sizes were given")
                parts.append(embedder(sizes, batch, device))
            elif returns_pooled(embedder):
                width = embedder.text_projection.shape[1]
                parts.append(text.pooled[:, pooled_at:pooled_at + width].float())
                pooled_at += width
        return torch.cat(parts, dim=1)

    def module_state_dict_from_checkpoint(self, state_dict: Mapping[str, Tensor]):
        """(module state dict under `embedders.N.`, ignored checkpoint keys, unknown keys under `conditioner.`)."""
        mapped, ignored, unknown = {}, [], []
        for index, embedder in enumerate(self.embedders):
            if isinstance(embedder, SizeEmbedder):
                continue
            tower_weights, tower_ignored, tower_unknown = type(embedder).module_state_dict_from_checkpoint(
                state_dict, embedder.checkpoint_prefix)
            mapped.update({f"embedders.{index}.{key}": value for key, value in tower_weights.items()})
            ignored += tower_ignored
            unknown += tower_unknown
        owned = tuple(text_encoder._namespace(tower.checkpoint_prefix) for tower in self.text_encoders)
        unknown += [key for key in state_dict if key.startswith("conditioner.") and not key.startswith(owned)]
        return mapped, ignored, unknown


def zero_text(text: TextConditioning) -> TextConditioning:
    """The unconditional text of an empty negative prompt in the SDXL demo (`force_uc_zero_embeddings=["txt"]`):
    crossattn and pooled vector zero; the size parts of y are the conditional branch's, from vector()."""
    return TextConditioning(torch.zeros_like(text.crossattn),
                            None if text.pooled is None else torch.zeros_like(text.pooled))


def returns_pooled(embedder: nn.Module) -> bool:
    return isinstance(embedder, text_encoder.SDXLOpenCLIPTextEncoder)


def _vector_part_width(embedder: nn.Module) -> int:
    if returns_pooled(embedder):
        return embedder.text_projection.shape[1]
    if isinstance(embedder, SizeEmbedder):
        return SIZE_NUMBERS[embedder.input_key] * embedder.outdim
    return 0


def _embedder(index: int, entry: Mapping, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """One `emb_models` entry: a text tower at `conditioner.embedders.<index>.` or a size embedder."""
    unknown = sorted(set(entry) - EMBEDDER_SETTINGS)
    if unknown:
        raise ValueError(f"conditioner embedder {index}: unknown setting(s) {', '.join(unknown)}")
    target, params, input_key = entry.get("target"), dict(entry.get("params") or {}), entry.get("input_key")
    if target in TEXT_TOWERS:
        if input_key != TEXT_KEY:
            raise ValueError(f"conditioner embedder {index}: a text encoder reads input_key {TEXT_KEY!r}, "
                             f"not {input_key!r}")
        tower_class, sub_module = TEXT_TOWERS[target]
        return tower_class.from_checkpoint(state_dict, prefix=f"conditioner.embedders.{index}.{sub_module}", **params)
    if target == SIZE_EMBEDDER:
        if input_key not in SIZE_KEYS:
            raise ValueError(f"conditioner embedder {index}: input_key {input_key!r} is not supported "
                             f"(choose from {', '.join(SIZE_KEYS)})")
        if set(params) != {"outdim"}:
            raise ValueError(f"conditioner embedder {index}: ConcatTimestepEmbedderND takes exactly outdim")
        return SizeEmbedder(input_key, int(params["outdim"]))
    raise ValueError(f"conditioner embedder {index}: {target!r} is not supported (sd_cli builds "
                     f"{', '.join(name.rsplit('.', 1)[1] for name in [*TEXT_TOWERS, SIZE_EMBEDDER])})")
