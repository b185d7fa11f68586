"""The denoising UNet of Stable Diffusion 1.x/2.x and SDXL (ldm's and sgm's openaimodel UNetModel).

Module names equal the original checkpoint's keys below `model.diffusion_model.`
(`time_embed.0`, `input_blocks.1.0.in_layers.0`, `output_blocks.2.1.conv`, `out.2`, ...), so
an original state dict loads with `load_state_dict(sd, strict=True, assign=True)`.

Nothing is zero-initialised and nothing is computed from parameter values in `__init__`:
weights always come from a checkpoint, and the model must be constructible under
`torch.device("meta")`.
"""

import math

import torch
from torch import nn

from sd_cli.models.attention import GroupNorm32, SpatialTransformer
from sd_cli.models.linear import Linear

# UNet GroupNorms (`normalization()` in the original) use torch's default eps.
RESBLOCK_NORM_EPS = 1e-5

# Further original UNetModel params that change nothing here (see also the ignored
# arguments of UNetModel.__init__).
IGNORED_PARAMS = {
    "use_bf16",  # like use_fp16: the caller picks the dtype
    "num_heads_upsample",  # only used by the non-transformer AttentionBlock
    "use_new_attention_order",  # only used by the non-transformer AttentionBlock
}

# Original UNetModel params that sd_cli accepts only at their default (no-op) value: architectures
# that no Stable Diffusion or SDXL checkpoint sd_cli runs has.
UNSUPPORTED_UNLESS_DEFAULT = {
    "disable_middle_transformer": False,
    "num_attention_blocks": None,
    "n_embed": None,  # codebook-id prediction head
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "conv_resample": True,
    "dims": 2,
}


# sgm's attention kinds: both are softmax(q·kᵀ/√d)·v, xformers only changes the kernel.
ATTENTION_TYPES = ("softmax", "softmax-xformers")


def check_extra_params(extra: dict) -> None:
    """Raise ValueError for original params that sd_cli does not implement."""
    for name, value in extra.items():
        if name in IGNORED_PARAMS:
            continue
        if name not in UNSUPPORTED_UNLESS_DEFAULT:
            raise ValueError(f"UNetModel: unknown unet_config param {name!r}")
        default = UNSUPPORTED_UNLESS_DEFAULT[name]
        if value != default:
            raise ValueError(f"UNetModel: {name}={value!r} is not supported (only {default!r}); "
                             "sd_cli builds the UNets of Stable Diffusion 1.x, 2.x and SDXL")


def check_vector_conditioning(num_classes, adm_in_channels) -> None:
    """What conditions the UNet beside t: nothing, SDXL's `num_classes: sequential` (a vector y of
    adm_in_channels), or an int num_classes (a class label y: the x4 upscaler's noise level)."""
    if num_classes is None and adm_in_channels is None:
        return
    if isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes > 0:
        return
    if num_classes != "sequential":
        raise ValueError(f"UNetModel: num_classes={num_classes!r} is not supported (None, 'sequential' "
                         "or a number of classes)")
    if not isinstance(adm_in_channels, int):
        raise ValueError("UNetModel: num_classes 'sequential' needs an int adm_in_channels (the width of y)")


def single_context_dim(context_dim) -> int:
    """The cross-attention context width: an int, or sgm's per-block list when every entry is the same.

    One context tensor feeds every block, so differing widths cannot be served.
    """
    if isinstance(context_dim, int):
        return context_dim
    dims = list(context_dim) if isinstance(context_dim, (list, tuple)) else []
    if not dims or any(not isinstance(d, int) or d != dims[0] for d in dims):
        raise ValueError(f"UNetModel: context_dim {context_dim!r} is not supported "
                         "(an int, or a list of one repeated int)")
    return dims[0]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos | sin], float32.

    timesteps: [B], long or float (DPM-Solver passes values like 999.0). Returns [B, dim].
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = timesteps.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """Two norm-SiLU-conv stages with the timestep embedding added in between."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, RESBLOCK_NORM_EPS), nn.SiLU(), conv3x3(channels, out_channels)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_channels, out_channels))
        # Slot 2 held dropout in the original; Identity keeps the conv at key `out_layers.3`.
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, RESBLOCK_NORM_EPS), nn.SiLU(), nn.Identity(),
            conv3x3(out_channels, out_channels),
        )
        if channels == out_channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W]; emb: [B, emb_channels]
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h  # [B, C_out, H, W]


class Downsample(nn.Module):
    """Stride-2 3x3 conv (padding 1) halving H and W."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = conv3x3(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that hands each layer the inputs it needs (emb, context, or neither)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def _check_architecture(use_spatial_transformer, context_dim, attn_type: str, num_heads: int,
                        num_head_channels: int) -> None:
    """The UNet variants this module builds: cross-attention with a context, softmax attention, a head size."""
    # ldm's YAMLs say use_spatial_transformer: True; sgm's UNet has no such switch (it always is one).
    if use_spatial_transformer is False or context_dim is None:
        raise ValueError("UNetModel: only the cross-attention UNet (use_spatial_transformer: "
                         "True with a context_dim) is supported")
    if attn_type not in ATTENTION_TYPES:
        raise ValueError(f"UNetModel: spatial_transformer_attn_type {attn_type!r} "
                         f"is not supported (choose from {', '.join(ATTENTION_TYPES)})")
    if num_heads == -1 and num_head_channels == -1:
        raise ValueError("UNetModel: set num_heads or num_head_channels")


class UNetModel(nn.Module):
    """The SD UNet, built from the original YAML's `unet_config.params` (ldm) or `network_config.params` (sgm).

    forward(x [B, in_channels, h, w], timesteps [B], context [B, M, context_dim], y [B, adm_in_channels])
    -> [B, out_channels, h, w]. Channels concatenated for inpainting/depth/upscaling are already in x;
    y is SDXL's vector conditioning (`num_classes: sequential`) or the x4 upscaler's int64 class label
    [B] (an int `num_classes`), required exactly when the config has num_classes.
    """

    def __init__(self, *, in_channels: int, out_channels: int, model_channels: int,
                 attention_resolutions, num_res_blocks, channel_mult,
                 num_heads: int = -1, num_head_channels: int = -1,
                 use_spatial_transformer: bool | None = None, use_linear_in_transformer: bool = False,
                 transformer_depth: int | list[int] = 1, transformer_depth_middle: int | None = None,
                 context_dim: int | list[int] | None = None,
                 num_classes: str | int | None = None, adm_in_channels: int | None = None,
                 disable_self_attentions: list[bool] | None = None, disable_middle_self_attn: bool = False,
                 spatial_transformer_attn_type: str = "softmax",
                 image_size=None, use_checkpoint: bool = False, use_fp16: bool = False,
                 legacy: bool = True, dropout: float = 0.0, **extra):
        super().__init__()
        # Accepted for YAML compatibility, deliberately unused:
        # - image_size: the YAML itself marks it unused;
        # - use_checkpoint: gradient checkpointing only matters for training;
        # - use_fp16: the caller picks the dtype by casting the whole module (the original's
        #   flag only cast the input and relied on autocast, see docs/reference/original-scripts.md §6.2);
        # - legacy: only changes head sizes of the non-transformer AttentionBlock;
        # - dropout: training-time only, the dropout slots here are Identity.
        del image_size, use_checkpoint, use_fp16, legacy, dropout
        check_extra_params(extra)
        check_vector_conditioning(num_classes, adm_in_channels)
        _check_architecture(use_spatial_transformer, context_dim, spatial_transformer_attn_type, num_heads,
                            num_head_channels)
        self.model_channels = model_channels
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.attention_resolutions = set(attention_resolutions)
        self.channel_mult = list(channel_mult)
        self.num_res_blocks = self._per_level(num_res_blocks, "num_res_blocks")
        self.transformer_depth = self._per_level(transformer_depth, "transformer_depth")
        self.context_dim = single_context_dim(context_dim)
        self.use_linear = use_linear_in_transformer
        self.adm_in_channels = adm_in_channels
        self.num_classes = num_classes if isinstance(num_classes, int) else None
        # Levels whose first attention attends to the text instead of the pixels (the x4 upscaler).
        self.disable_self_attentions = self._per_level(disable_self_attentions or False, "disable_self_attentions")

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            Linear(model_channels, time_embed_dim), nn.SiLU(),
            Linear(time_embed_dim, time_embed_dim),
        )
        if self.num_classes is not None:  # a class label y (the x4 upscaler's noise level), key label_emb.weight
            self.label_emb = nn.Embedding(self.num_classes, time_embed_dim)
        elif adm_in_channels is not None:
            # sgm nests the MLP one level deeper than time_embed: keys label_emb.0.0.* and label_emb.0.2.*
            self.label_emb = nn.Sequential(nn.Sequential(
                Linear(adm_in_channels, time_embed_dim), nn.SiLU(), Linear(time_embed_dim, time_embed_dim)))
        skip_channels = self._build_input_blocks(in_channels, time_embed_dim)
        ch = model_channels * self.channel_mult[-1]
        middle_depth = self.transformer_depth[-1] if transformer_depth_middle is None else transformer_depth_middle
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim, ch),
            self._spatial_transformer(ch, middle_depth, disable_middle_self_attn),  # the middle always has attention
            ResBlock(ch, time_embed_dim, ch),
        )
        self._build_head(skip_channels, time_embed_dim, out_channels)

    def _build_head(self, skip_channels: list[int], emb: int, out_channels: int) -> None:
        """What follows the middle block: the decoder and the output conv (a ControlNet builds its zero convs)."""
        self._build_output_blocks(skip_channels, emb)
        self.out = nn.Sequential(
            GroupNorm32(self.model_channels, RESBLOCK_NORM_EPS), nn.SiLU(),
            conv3x3(self.model_channels, out_channels),
        )

    def _per_level(self, value, name: str) -> list:
        """An int (or bool) for every level, or one entry per channel_mult level."""
        if isinstance(value, (int, bool)):
            return [value] * len(self.channel_mult)
        if len(value) != len(self.channel_mult):
            raise ValueError(f"UNetModel: {name} needs one entry per channel_mult level")
        return list(value)

    def _heads(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) at a width: num_head_channels fixes head_dim, else num_heads fixes heads."""
        if self.num_head_channels != -1:
            per_head = self.num_head_channels
            if channels % per_head:
                raise ValueError(f"UNetModel: {channels} channels not divisible by num_head_channels {per_head}")
            return channels // per_head, per_head
        if channels % self.num_heads:
            raise ValueError(f"UNetModel: {channels} channels not divisible by num_heads {self.num_heads}")
        return self.num_heads, channels // self.num_heads

    def _spatial_transformer(self, channels: int, depth: int, disable_self_attn: bool) -> SpatialTransformer:
        heads, dim_head = self._heads(channels)
        return SpatialTransformer(channels, heads, dim_head, depth, self.context_dim, self.use_linear,
                                  bool(disable_self_attn))

    def _res_and_attention(self, ch_in: int, emb: int, ch_out: int, ds: int, level: int) -> list[nn.Module]:
        layers = [ResBlock(ch_in, emb, ch_out)]
        if ds in self.attention_resolutions:
            layers.append(self._spatial_transformer(ch_out, self.transformer_depth[level],
                                                    self.disable_self_attentions[level]))
        return layers

    def _build_input_blocks(self, in_channels: int, emb: int) -> list[int]:
        """Build `input_blocks`; return the channel count of every skip they emit, in order."""
        ch = self.model_channels
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv3x3(in_channels, ch))])
        skip_channels = [ch]
        ds = 1  # downsampling rate of the current level
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks[level]):
                layers = self._res_and_attention(ch, emb, mult * self.model_channels, ds, level)
                ch = mult * self.model_channels
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        return skip_channels

    def _build_output_blocks(self, skip_channels: list[int], emb: int) -> None:
        """Build `output_blocks`, consuming `skip_channels` from the end (deepest first)."""
        skip_channels = list(skip_channels)
        ch = self.model_channels * self.channel_mult[-1]
        ds = 2 ** (len(self.channel_mult) - 1)
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(self.channel_mult))):
            ch_out = self.model_channels * self.channel_mult[level]
            for i in range(self.num_res_blocks[level] + 1):
                layers = self._res_and_attention(ch + skip_channels.pop(), emb, ch_out, ds, level)
                ch = ch_out
                if level > 0 and i == self.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, control: list | None = None) -> torch.Tensor:
        # x: [B, in_channels, h, w]; timesteps: [B] (or []) long or float; context: [B, M, context_dim];
        # y: [B, adm_in_channels] (SDXL) or [B] long (class labels) for a UNet with label_emb, else None;
        # control: a ControlNet's residuals, one per input block then the middle block's (None entries add nothing)
        emb = self._embedding(x, timesteps, y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        residuals = _residuals(control, len(skips) + 1)
        h = _plus(h, residuals.pop())
        for block in self.output_blocks:
            # cldm's ControlledUnetModel: each skip gets its residual before the concatenation, consumed from the end
            h = block(torch.cat([h, _plus(skips.pop(), residuals.pop())], dim=1), emb, context)
        return self.out(h)  # [B, out_channels, h, w]

    def _embedding(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The timestep embedding [B, 4*model_channels], plus label_emb(y) (SDXL's vector or a class label)."""
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        t_emb = timestep_embedding(timesteps, self.model_channels)  # [B, model_channels] float32
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        return self._add_vector(emb, y)

    def _add_vector(self, emb: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """emb + label_emb(y): SDXL's pooled text and size conditioning, or the class label's embedding,
        joins the timestep embedding."""
        if self.num_classes is not None:
            if y is None or y.shape != (emb.shape[0],) or y.is_floating_point():
                got = None if y is None else f"{tuple(y.shape)} {y.dtype}"
                raise ValueError(f"UNetModel: y must be [{emb.shape[0]}] integer class labels, got {got}")
            return emb + self.label_emb(y).to(emb.dtype)
        if self.adm_in_channels is None:
            if y is not None:
                raise ValueError("UNetModel: this UNet takes no vector conditioning y "
                                 "(its config has no adm_in_channels)")
            return emb
        if y is None or y.shape != (emb.shape[0], self.adm_in_channels):
            got = None if y is None else tuple(y.shape)
            raise ValueError(f"UNetModel: y must be [{emb.shape[0]}, {self.adm_in_channels}], got {got}")
        return emb + self.label_emb(y.to(emb.dtype))


def _residuals(control: list | None, count: int) -> list:
    """The ControlNet residuals as a list to pop from (all None without control); their count is the UNet's."""
    if control is None:
        return [None] * count
    if len(control) != count:
        raise ValueError(f"UNetModel: {len(control)} control residuals for a UNet with {count} skips and middle block")
    return list(control)


def _plus(h: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    return h if residual is None else h + residual.to(h.dtype)
