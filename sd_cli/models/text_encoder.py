"""The Stable Diffusion text encoders: CLIP text towers with open_clip's parameter names.

- SD 1.x `FrozenCLIPEmbedder`: OpenAI CLIP ViT-L/14, stored in the checkpoint as a Hugging Face
  `CLIPTextModel` (renamed here to open_clip's layout, q/k/v fused); quick-GELU; padding 49407;
  output `last_hidden_state`.
- SD 2.x `FrozenOpenCLIPEmbedder`: OpenCLIP ViT-H/14, stored with open_clip's own names; GELU;
  padding 0; output of the penultimate block (YAML `layer: "penultimate"`) through `ln_final`.
  sgm's class of the same name (SD-Turbo, `conditioner.embedders.0.model.*`) computes the same.
- SDXL's two (sgm, `conditioner.embedders.N.*`): `FrozenCLIPEmbedder` with `layer: hidden`, the
  CLIP ViT-L tower's `hidden_states[layer_idx]` without the final layer norm; and
  `FrozenOpenCLIPEmbedder2` (OpenCLIP ViT-bigG/14), its penultimate block's output without
  `ln_final`, plus the pooled vector: `ln_final` of the last block's output at the first
  end-of-text token, times `text_projection`.

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

HEAD_WIDTH = 64  # every CLIP here uses 64-wide attention heads: 768 → 12 heads, 1024 → 16, 1280 → 20
SD1_PREFIX = "cond_stage_model.transformer."
SD2_PREFIX = "cond_stage_model.model."
# The original constructors' arguments: none changes the network here (the sizes come from the
# checkpoint, nothing is downloaded, the CLI picks the device), except `layer` and `layer_idx`.
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

    checkpoint_prefix: ClassVar[str]  # the default; from_checkpoint(prefix=...) sets one per instance
    pad_id: ClassVar[int]
    quick_gelu: ClassVar[bool]
    hf_cleaning: ClassVar[bool]  # clean prompts as transformers' CLIPTokenizer did (SD1), else as open_clip
    layers_supported: ClassVar[tuple[str, ...]]
    embedding_key: ClassVar[str | None] = None  # this tower's tensor in an SDXL embedding file; None: one tower
    raw_layers: ClassVar[tuple[str, ...]] = ()  # layers whose output skips ln_final
    yaml_params: ClassVar[frozenset[str]] = YAML_PARAMS
    # Constructor arguments that change the output and are built only at one value:
    # name -> (the original's default, the one value sd_cli builds).
    fixed_params: ClassVar[dict[str, tuple[object, object]]] = {}

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, mlp_width: int,
                 layer: str = "last", layer_idx: int | None = None):
        super().__init__()
        if layer not in self.layers_supported:
            raise ValueError(f"{type(self).__name__}: layer {layer!r} is not supported "
                             f"(choose from {', '.join(self.layers_supported)})")
        _blocks_for_layer(type(self).__name__, layer, layer_idx, layers)  # refuses a layer_idx out of range
        self.layer = layer
        self.layer_idx = layer_idx
        self.clip_skip: int | None = None  # N: stop N - 1 blocks before the last unless encode is told; None: `layer`
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        activation = QuickGELU if self.quick_gelu else nn.GELU
        self.transformer = _Blocks(width, layers, max(1, width // HEAD_WIDTH), mlp_width, activation)
        self.ln_final = nn.LayerNorm(width)

    @classmethod
    def from_checkpoint(cls, state_dict: Mapping[str, Tensor], prefix: str | None = None,
                        **yaml_params) -> _TextTower:
        """Build on the current default device (meta included) with sizes read from the checkpoint.

        prefix: where the tower's tensors are (`conditioner.embedders.1.model.`); default the class's.
        """
        cls._check_yaml_params(yaml_params)
        prefix = prefix or cls.checkpoint_prefix
        tower = cls(**cls._sizes(state_dict, prefix), layer=yaml_params.get("layer", "last"),
                    layer_idx=yaml_params.get("layer_idx"))
        tower.checkpoint_prefix = prefix
        return tower

    @classmethod
    def _check_yaml_params(cls, yaml_params: dict) -> None:
        unknown = sorted(set(yaml_params) - cls.yaml_params)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config parameter(s) {', '.join(unknown)} "
                             f"(the original accepts {', '.join(sorted(cls.yaml_params))})")
        for name, (original_default, built) in cls.fixed_params.items():
            value = yaml_params.get(name, original_default)
            if value != built:
                raise ValueError(f"{cls.__name__}: {name}={value!r} is not supported (only {built!r})")

    @classmethod
    def _sizes(cls, state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, int]:
        raise NotImplementedError

    @property
    def own_blocks(self) -> int:
        """How many blocks the YAML's `layer` (and `layer_idx`) runs."""
        return _blocks_for_layer(type(self).__name__, self.layer, self.layer_idx, len(self.transformer.resblocks))

    @property
    def normalize_output(self) -> bool:
        return self.layer not in self.raw_layers

    @property
    def own_clip_skip(self) -> int:
        """The encoder's own layer in --clip-skip terms: 1 the last block, 2 the penultimate, ..."""
        return len(self.transformer.resblocks) - self.own_blocks + 1

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
        hidden, _ = self._run_blocks(embedded, self._blocks_to_run(clip_skip))
        return self._output(hidden)

    def _blocks_to_run(self, clip_skip: int | None) -> int:
        clip_skip = self.clip_skip if clip_skip is None else clip_skip
        return self.own_blocks if clip_skip is None else len(self.transformer.resblocks) - (clip_skip - 1)

    def _run_blocks(self, embedded: Tensor, stop: int, to_the_end: bool = False) -> tuple[Tensor, Tensor]:
        """(the residual stream after `stop` blocks, after the last block run): all blocks when `to_the_end`."""
        x = embedded + self.positional_embedding[: embedded.shape[1]]
        # additive causal mask, built here so that a module built on meta needs no buffer fix-up
        mask = torch.full((embedded.shape[1],) * 2, float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
        blocks = self.transformer.resblocks
        hidden = x
        for index, block in enumerate(blocks[: len(blocks) if to_the_end else stop]):
            x = block(x, attn_mask=mask)
            if index + 1 == stop:
                hidden = x
        return hidden, x

    def _output(self, hidden: Tensor) -> Tensor:
        return self.ln_final(hidden) if self.normalize_output else hidden

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
    def _sizes(cls, state_dict, prefix):
        prefix = _hf_prefix(state_dict, prefix)
        return _infer_sizes(state_dict, prefix + "embeddings.token_embedding.weight",
                            prefix + "embeddings.position_embedding.weight",
                            prefix + "encoder.layers.", "mlp.fc1.weight")

    @classmethod
    def module_state_dict_from_checkpoint(cls, state_dict, prefix: str | None = None):
        """(module state dict, ignored checkpoint keys, unknown checkpoint keys in the tower's namespace).

        The namespace is the prefix without its last part (`cond_stage_model.`, `conditioner.embedders.0.`).
        q, k and v projections are concatenated into `attn.in_proj_*`, in that order, one `torch.cat`
        per layer and tensor kind; every other tensor is passed on as it is.
        """
        namespace = _namespace(prefix or cls.checkpoint_prefix)
        prefix = _hf_prefix(state_dict, prefix or cls.checkpoint_prefix)
        mapped, ignored, unknown = {}, [], []
        qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
        for key, tensor in state_dict.items():
            if not key.startswith(namespace):
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
        """Our weights under the original keys (`<prefix>text_model.*`, SD 1.x `cond_stage_model.transformer.`)."""
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
    def _sizes(cls, state_dict, prefix):
        return _infer_sizes(state_dict, prefix + "token_embedding.weight", prefix + "positional_embedding",
                            prefix + "transformer.resblocks.", "mlp.c_fc.weight")

    @classmethod
    def module_state_dict_from_checkpoint(cls, state_dict, prefix: str | None = None):
        """(module state dict, ignored checkpoint keys, unknown checkpoint keys in the tower's namespace).

        The namespace is the prefix without its last part (`cond_stage_model.`, `conditioner.embedders.1.`).
        """
        prefix = prefix or cls.checkpoint_prefix
        namespace = _namespace(prefix)
        mapped, ignored, unknown = {}, [], []
        for key, tensor in state_dict.items():
            if not key.startswith(namespace):
                continue
            name = key[len(prefix):] if key.startswith(prefix) else None
            if name in cls.unused:
                ignored.append(key)
            elif name is not None and cls._is_tower_key(name):
                mapped[name] = tensor
            else:
                unknown.append(key)
        return mapped, ignored, unknown

    @classmethod
    def _is_tower_key(cls, name: str) -> bool:
        return _is_open_clip_tower_key(name)

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """Our weights under the original keys (`<prefix>*`, SD 2.x `cond_stage_model.model.`), unused ones left out."""
        return {self.checkpoint_prefix + key: tensor for key, tensor in self.state_dict().items()}


class SDXLCLIPTextEncoder(CLIPTextEncoder):
    """sgm's `FrozenCLIPEmbedder` (SDXL base, `conditioner.embedders.0.transformer.[text_model.]*`).

    The SDXL YAML's `layer: hidden, layer_idx: 11` is transformers' `hidden_states[11]`: the output of
    block 11 of 12, without the final layer norm. `layer: last` is `last_hidden_state` (with it).
    """

    checkpoint_prefix = "conditioner.embedders.0.transformer."
    embedding_key = "clip_l"
    layers_supported = ("last", "hidden")
    raw_layers = ("hidden",)
    yaml_params = YAML_PARAMS | {"layer_idx", "always_return_pooled"}
    # CLIP-L's own pooled output would join the vector conditioning: no SDXL YAML asks for it
    fixed_params = {"always_return_pooled": (False, False)}


class SDXLOpenCLIPTextEncoder(OpenCLIPTextEncoder):
    """sgm's `FrozenOpenCLIPEmbedder2` (OpenCLIP ViT-bigG: SDXL base `conditioner.embedders.1.model.*`,
    refiner `conditioner.embedders.0.model.*`).

    `legacy: False`: the chosen block's output (`penultimate`: the last block's input) is returned
    without `ln_final`. `always_return_pooled: True`: encode_with_pooled also gives the pooled vector.
    """

    checkpoint_prefix = "conditioner.embedders.1.model."
    embedding_key = "clip_g"
    layers_supported = ("last", "penultimate")
    raw_layers = ("last", "penultimate")
    yaml_params = YAML_PARAMS | {"always_return_pooled", "legacy"}
    fixed_params = {"legacy": (True, False), "always_return_pooled": (False, True)}
    unused = ("logit_scale", "attn_mask")

    def __init__(self, *, projection_dim: int, **sizes):
        super().__init__(**sizes)
        self.text_projection = nn.Parameter(torch.empty(self.token_embedding.embedding_dim, projection_dim))

    @classmethod
    def _sizes(cls, state_dict, prefix):
        sizes = super()._sizes(state_dict, prefix)
        return dict(sizes, projection_dim=_require(state_dict, prefix + "text_projection").shape[1])

    @classmethod
    def _is_tower_key(cls, name: str) -> bool:
        return name == "text_projection" or _is_open_clip_tower_key(name)

    def encode_with_pooled(self, tokens: Tensor, clip_skip: int | None = None,
                           embedded: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """([B, L, width] hidden states, [B, projection_dim] pooled) for [B, L] token ids.

        embedded: the tokens' embeddings when textual inversion vectors replace some of them. The
        pooled vector always comes from the last block, whatever clip_skip says, and is read at the
        first end-of-text token (the largest id in each row; open_clip pads with 0).
        """
        embedded = self.token_embedding(tokens) if embedded is None else embedded
        hidden, last = self._run_blocks(embedded, self._blocks_to_run(clip_skip), to_the_end=True)
        end_of_text = self.ln_final(last)[torch.arange(last.shape[0], device=last.device), tokens.argmax(dim=-1)]
        return self._output(hidden), end_of_text @ self.text_projection


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


def _hf_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> str:
    """`<prefix>text_model.`, or `prefix` itself without `text_model.` (some third-party files)."""
    with_level = prefix + "text_model."
    return with_level if any(key.startswith(with_level) for key in state_dict) else prefix


def _namespace(prefix: str) -> str:
    """The part of a checkpoint a tower's keys live in: `cond_stage_model.transformer.` → `cond_stage_model.`."""
    return prefix.rstrip(".").rsplit(".", 1)[0] + "."


def _blocks_for_layer(owner: str, layer: str, layer_idx: int | None, layers: int) -> int:
    """How many blocks a YAML `layer` runs: last all, penultimate all but one, hidden `hidden_states[layer_idx]`."""
    if layer == "last":
        return layers
    if layer == "penultimate":
        return layers - 1
    # transformers' hidden_states: [embeddings, block 1's output, ..., block L's output]
    if not isinstance(layer_idx, int) or not -(layers + 1) <= layer_idx <= layers:
        raise ValueError(f"{owner}: layer 'hidden' needs a layer_idx from {-(layers + 1)} to {layers} "
                         f"for this {layers}-block text encoder, got {layer_idx!r}")
    return layer_idx if layer_idx >= 0 else layers + 1 + layer_idx


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
