"""The two Stable Diffusion text encoders: CLIP text towers with open_clip's parameter names.

- SD 1.x `FrozenCLIPEmbedder`: OpenAI CLIP ViT-L/14, stored in the checkpoint as a Hugging Face
  `CLIPTextModel` (renamed here to open_clip's layout, q/k/v fused); quick-GELU; padding 49407;
  output `last_hidden_state`.
- SD 2.x `FrozenOpenCLIPEmbedder`: OpenCLIP ViT-H/14, stored with open_clip's own names; GELU;
  padding 0; output of the penultimate block (YAML `layer: "penultimate"`) through `ln_final`.

Both are [SOT] + BPE + [EOT] padded to 77, a causal mask and no padding mask, and give
[B, 77, width]. Sizes (width, blocks, vocabulary, context) are read from the checkpoint's tensors,
so the same classes serve the full models and tiny test checkpoints. The blocks are written here
rather than taken from `open_clip.transformer`: that module imports torchvision, which imports
torch's compiler stack (about 1.5 s of every load); only open_clip's tokenizer is used.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from sd_cli import log
from sd_cli.errors import CheckpointError
from sd_cli.models.linear import Linear

HEAD_WIDTH = 64  # both CLIPs use 64-wide attention heads: 768 → 12 heads, 1024 → 16
SD1_PREFIX = "cond_stage_model.transformer."
SD2_PREFIX = "cond_stage_model.model."
# The original constructors' arguments: none changes the network here (the sizes come from the
# checkpoint, nothing is downloaded, the CLI picks the device), except `layer`.
YAML_PARAMS = frozenset({"version", "device", "max_length", "freeze", "layer", "arch"})

# SD1: Hugging Face CLIPTextModel names (under `text_model.`) → open_clip names (ours).
HF_TOP_LEVEL = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
HF_BLOCK = {  # inside encoder.layers.N / transformer.resblocks.N; q, k, v are fused separately
    "layer_norm1": "ln_1",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
HF_BLOCK_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
OPEN_CLIP_BLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)[._](weight|bias)")  # also in_proj_weight
QKV = ("q_proj", "k_proj", "v_proj")


class _TextTower(nn.Module):
    """Token + position embeddings, pre-norm residual attention blocks, final layer norm.

    The attribute names are open_clip's, so SD2 checkpoints map by dropping their prefix.
    """

    checkpoint_prefix: ClassVar[str]
    pad_id: ClassVar[int]
    quick_gelu: ClassVar[bool]
    hf_cleaning: ClassVar[bool]  # clean prompts as transformers' CLIPTokenizer did (SD1), else as open_clip
    layers_supported: ClassVar[tuple[str, ...]]

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, mlp_width: int,
                 layer: str = "last"):
        super().__init__()
        if layer not in self.layers_supported:
            raise ValueError(f"{type(self).__name__}: layer {layer!r} is not supported "
                             f"(choose from {', '.join(self.layers_supported)})")
        self.layer = layer
        self.clip_skip: int | None = None  # N: stop N - 1 blocks before the last unless encode is told; None: `layer`
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        activation = QuickGELU if self.quick_gelu else nn.GELU
        self.transformer = _Blocks(width, layers, max(1, width // HEAD_WIDTH), mlp_width, activation)
        self.ln_final = nn.LayerNorm(width)

    @classmethod
    def from_checkpoint(cls, state_dict: Mapping[str, Tensor], **yaml_params) -> _TextTower:
        """Build on the current default device (meta included) with sizes read from the checkpoint."""
        unknown = sorted(set(yaml_params) - YAML_PARAMS)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config parameter(s) {', '.join(unknown)} "
                             f"(the original accepts {', '.join(sorted(YAML_PARAMS))})")
        return cls(**cls._sizes(state_dict), layer=yaml_params.get("layer", "last"))

    @classmethod
    def _sizes(cls, state_dict: Mapping[str, Tensor]) -> dict[str, int]:
        raise NotImplementedError

    def tokenize(self, prompts: list[str]) -> Tensor:
        """[B, 77] int64 on the CPU: SOT, at most 75 BPE tokens, EOT, then padding."""
        bpe = _bpe_tokenizer(self.hf_cleaning)
        room = self.context_length - 2
        encoded = {prompt: bpe.encode(prompt) for prompt in prompts}  # one warning per distinct prompt
        for prompt, ids in encoded.items():
            if len(ids) > room:
                _warn_cut(bpe, ids, room)
        rows = [[bpe.sot_token_id] + encoded[prompt][:room] + [bpe.eot_token_id] for prompt in prompts]
        return torch.tensor([row + [self.pad_id] * (self.context_length - len(row)) for row in rows])

    def forward(self, prompts: list[str]) -> Tensor:
        """Prompts → [B, 77, width] on the module's device and dtype."""
        return self.encode(self.tokenize(prompts).to(self.token_embedding.weight.device))

    def encode(self, tokens: Tensor, clip_skip: int | None = None) -> Tensor:
        """[B, L] token ids → [B, L, width] hidden states after `ln_final`."""
        return self.encode_embedded(self.token_embedding(tokens), clip_skip)

    def encode_embedded(self, embedded: Tensor, clip_skip: int | None = None) -> Tensor:
        """[B, L, width] token embeddings (textual inversion vectors included) → hidden states.

        clip_skip: a run's --clip-skip; None: the encoder's own `clip_skip`, else its `layer`.
        """
        x = embedded + self.positional_embedding[: embedded.shape[1]]
        # additive causal mask, built here so that a module built on meta needs no buffer fix-up
        mask = torch.full((embedded.shape[1],) * 2, float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        blocks = self.transformer.resblocks
        clip_skip = self.clip_skip if clip_skip is None else clip_skip
        skipped = clip_skip - 1 if clip_skip is not None else int(self.layer == "penultimate")
        for block in blocks[: len(blocks) - skipped]:
            x = block(x, attn_mask=mask)
        return self.ln_final(x)

    def bpe(self):
        """The BPE tokenizer this encoder's prompts are cleaned and split with."""
        return _bpe_tokenizer(self.hf_cleaning)


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU, which SD 1.x's text encoder was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); names as open_clip stores them."""

    def __init__(self, width: int, heads: int, mlp_width: int, activation: type[nn.Module]):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)  # in_proj_* holds q, k, v fused
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=Linear(width, mlp_width), gelu=activation(), c_proj=Linear(mlp_width, width)))

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        q = self.ln_1(x)
        x = x + self.attn(q, q, q, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Blocks(nn.Module):
    """Holds the blocks as `transformer.resblocks.N`, the checkpoints' path to them."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, activation: type[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(width, heads, mlp_width, activation)
                                       for _ in range(layers))


class CLIPTextEncoder(_TextTower):
    """SD 1.x `FrozenCLIPEmbedder`: `cond_stage_model.transformer.[text_model.]*`, Hugging Face names.

    The checkpoint's `embeddings.position_ids` is ignored: positions are always 0..76 (some merged
    checkpoints carry damaged copies of it).
    """

    checkpoint_prefix = SD1_PREFIX
    pad_id = 49407  # transformers' CLIP tokenizer pads with <|endoftext|>
    quick_gelu = True
    hf_cleaning = True
    layers_supported = ("last",)

    @classmethod
    def _sizes(cls, state_dict):
        prefix = _hf_prefix(state_dict)
        return _infer_sizes(state_dict, prefix + "embeddings.token_embedding.weight",
                            prefix + "embeddings.position_embedding.weight",
                            prefix + "encoder.layers.", "mlp.fc1.weight")

    @classmethod
    def module_state_dict_from_checkpoint(cls, state_dict):
        """(module state dict, ignored checkpoint keys, unknown checkpoint keys under `cond_stage_model.`).

        q, k and v projections are concatenated into `attn.in_proj_*`, in that order, one `torch.cat`
        per layer and tensor kind; every other tensor is passed on as it is.
        """
        prefix = _hf_prefix(state_dict)
        mapped, ignored, unknown = {}, [], []
        qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
        for key, tensor in state_dict.items():
            if not key.startswith("cond_stage_model."):
                continue
            name = key[len(prefix):] if key.startswith(prefix) else None
            block = HF_BLOCK_KEY.fullmatch(name or "")
            if name == "embeddings.position_ids":
                ignored.append(key)
            elif name in HF_TOP_LEVEL:
                mapped[HF_TOP_LEVEL[name]] = tensor
            elif block and block[2] in HF_BLOCK:
                mapped[f"transformer.resblocks.{block[1]}.{HF_BLOCK[block[2]]}.{block[3]}"] = tensor
            elif block and block[2] in (f"self_attn.{p}" for p in QKV):
                qkv.setdefault((block[1], block[3]), {})[block[2][len("self_attn."):]] = tensor
            else:
                unknown.append(key)
        for (index, kind), parts in qkv.items():
            missing = [p for p in QKV if p not in parts]
            if missing:
                raise CheckpointError(f"missing text encoder tensor {prefix}encoder.layers.{index}.self_attn."
                                      f"{missing[0]}.{kind}")
            mapped[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in QKV])
        return mapped, ignored, unknown

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """Our weights under the original keys (`cond_stage_model.transformer.text_model.*`)."""
        prefix = self.checkpoint_prefix + "text_model."
        to_hf = {ours: theirs for theirs, ours in HF_TOP_LEVEL.items()}
        block_to_hf = {ours: theirs for theirs, ours in HF_BLOCK.items()}
        out = {}
        for key, tensor in self.state_dict().items():
            block = OPEN_CLIP_BLOCK_KEY.fullmatch(key)
            if key in to_hf:
                out[prefix + to_hf[key]] = tensor
            elif block[2] == "attn.in_proj":
                # clones: q, k and v must not share storage (safetensors refuses to save that)
                for part, chunk in zip(QKV, tensor.chunk(3)):
                    out[f"{prefix}encoder.layers.{block[1]}.self_attn.{part}.{block[3]}"] = chunk.clone()
            else:
                out[f"{prefix}encoder.layers.{block[1]}.{block_to_hf[block[2]]}.{block[3]}"] = tensor
        device = self.positional_embedding.device
        out[prefix + "embeddings.position_ids"] = torch.arange(self.context_length, device=device)[None]
        return out


class OpenCLIPTextEncoder(_TextTower):
    """SD 2.x `FrozenOpenCLIPEmbedder`: `cond_stage_model.model.*`, open_clip names (ours as they are).

    `text_projection`, `logit_scale` and `attn_mask` are ignored. With `layer: "penultimate"` the last
    block is not run, but it is built and loaded all the same, as in the original.
    """

    checkpoint_prefix = SD2_PREFIX
    pad_id = 0  # open_clip pads with 0 (the token "!"); there is no pad token
    quick_gelu = False
    hf_cleaning = False
    layers_supported = ("last", "penultimate")  # "last" is the original's default; SD2's YAMLs all say "penultimate"
    unused = ("text_projection", "logit_scale", "attn_mask")

    @classmethod
    def _sizes(cls, state_dict):
        return _infer_sizes(state_dict, SD2_PREFIX + "token_embedding.weight", SD2_PREFIX + "positional_embedding",
                            SD2_PREFIX + "transformer.resblocks.", "mlp.c_fc.weight")

    @classmethod
    def module_state_dict_from_checkpoint(cls, state_dict):
        """(module state dict, ignored checkpoint keys, unknown checkpoint keys under `cond_stage_model.`)."""
        mapped, ignored, unknown = {}, [], []
        for key, tensor in state_dict.items():
            if not key.startswith("cond_stage_model."):
                continue
            name = key[len(SD2_PREFIX):] if key.startswith(SD2_PREFIX) else None
            if name in cls.unused:
                ignored.append(key)
            elif name is not None and _is_open_clip_tower_key(name):
                mapped[name] = tensor
            else:
                unknown.append(key)
        return mapped, ignored, unknown

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """Our weights under the original keys (`cond_stage_model.model.*`), without the unused ones."""
        return {self.checkpoint_prefix + key: tensor for key, tensor in self.state_dict().items()}


@functools.cache
def _import_open_clip_tokenizer() -> None:
    """Import open_clip's tokenizer module without its package __init__.

    `import open_clip` registers every model family and imports torchvision, timm, transformers
    and huggingface_hub: seconds of every load, for a tokenizer that needs none of them. So the
    package is registered unexecuted, only `open_clip.tokenizer` is imported, and the package runs
    its own __init__ the first time any other name is asked of it, so that a later
    `open_clip.create_model(...)` in the same process still works.
    """
    import importlib.util
    import sys

    if "open_clip" in sys.modules:
        return
    spec = importlib.util.find_spec("open_clip")
    package = importlib.util.module_from_spec(spec)

    def finish_import(name: str):
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = finish_import
    sys.modules["open_clip"] = package
    import open_clip.tokenizer  # noqa: F401


@functools.cache
def _bpe_tokenizer(hf_cleaning: bool):
    """open_clip's BPE tokenizer with its bundled vocabulary."""
    import copy

    import ftfy

    _import_open_clip_tokenizer()
    from open_clip import tokenizer as open_clip_tokenizer

    # Importing the module already built one with the bundled vocabulary (0.15 s here): a shallow
    # copy shares its tables instead of building them a second time. Only clean_fn differs.
    built = getattr(open_clip_tokenizer, "_tokenizer", None)
    is_built = isinstance(built, open_clip_tokenizer.SimpleTokenizer)
    bpe = copy.copy(built) if is_built else open_clip_tokenizer.SimpleTokenizer()
    whitespace_clean = open_clip_tokenizer.whitespace_clean
    if hf_cleaning:
        # SD1 used transformers' CLIPTokenizer: ftfy, whitespace, lower case. It differs from open_clip's
        # cleaning only where ftfy leaves HTML entities alone (text with a "<"): "<b> &amp;" stays as it is
        bpe.clean_fn = lambda text: whitespace_clean(ftfy.fix_text(text)).lower()
    return bpe


def _warn_cut(bpe, ids: list[int], room: int) -> None:
    dropped = bpe.decode(ids[room:]).strip()
    dropped = dropped if len(dropped) <= 60 else dropped[:57] + "..."
    log.warn(f"prompt is {len(ids)} tokens long and the text encoder reads {room}: "
             f"the last {len(ids) - room} tokens are dropped ({dropped!r})")


def _hf_prefix(state_dict: Mapping[str, Tensor]) -> str:
    """`cond_stage_model.transformer.text_model.`, or without `text_model.` (some third-party files)."""
    with_level = SD1_PREFIX + "text_model."
    return with_level if any(key.startswith(with_level) for key in state_dict) else SD1_PREFIX


def _infer_sizes(state_dict, token_key: str, position_key: str, block_prefix: str, fc1: str) -> dict[str, int]:
    vocab_size, width = _require(state_dict, token_key).shape
    context_length = _require(state_dict, position_key).shape[0]
    mlp_width = _require(state_dict, f"{block_prefix}0.{fc1}").shape[0]
    block = re.compile(re.escape(block_prefix) + r"(\d+)\.")
    layers = 1 + max(int(m[1]) for m in map(block.match, state_dict) if m)
    return dict(vocab_size=vocab_size, context_length=context_length, width=width, layers=layers,
                mlp_width=mlp_width)


def _require(state_dict: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state_dict:
        raise CheckpointError(f"the checkpoint has no text encoder weights: {key} is missing")
    return state_dict[key]


def _is_open_clip_tower_key(name: str) -> bool:
    block = OPEN_CLIP_BLOCK_KEY.fullmatch(name)
    return name in HF_TOP_LEVEL.values() or bool(block and block[2] in (*HF_BLOCK.values(), "attn.in_proj"))
