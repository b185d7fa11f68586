"""The KL autoencoder (VAE) of Stable Diffusion 1.x/2.x.

Module names equal the original checkpoint's keys below `first_stage_model.`
(`encoder.down.0.block.1.norm1`, `decoder.up.3.upsample.conv`, `quant_conv`, ...), so an
original state dict loads with `load_state_dict(sd, strict=True, assign=True)`. Training-only
keys of a full training checkpoint (`loss.*`) are the loader's to drop.
"""

import torch
import torch.nn.functional as F
from torch import nn

from sd_cli.models.attention import GroupNorm32

NORM_EPS = 1e-6

# ddconfig keys that sd_cli accepts only at their default value.
DDCONFIG_DEFAULTS = {
    "attn_resolutions": [],  # attention inside down/up levels: no SD VAE uses it
    "resamp_with_conv": True,
    "give_pre_end": False,
    "tanh_out": False,
    "use_linear_attn": False,
}
# Both are the same single-head softmax attention; xformers only changes the kernel.
SUPPORTED_ATTN_TYPES = ("vanilla", "vanilla-xformers")
DDCONFIG_USED = ("double_z", "z_channels", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_type")
DDCONFIG_UNUSED = ("resolution", "dropout")  # input size is free; dropout is training-only


def check_ddconfig(ddconfig: dict) -> None:
    """Raise ValueError for ddconfig values whose architecture sd_cli does not build."""
    known = {*DDCONFIG_USED, *DDCONFIG_UNUSED, *DDCONFIG_DEFAULTS}
    unknown = sorted(set(ddconfig) - known)
    if unknown:
        raise ValueError(f"AutoencoderKL: unknown ddconfig keys {unknown}")
    if not ddconfig.get("double_z", True):
        raise ValueError("AutoencoderKL: double_z must be true (the KL autoencoder needs mean and logvar)")
    if ddconfig.get("attn_type", "vanilla") not in SUPPORTED_ATTN_TYPES:
        raise ValueError(f"AutoencoderKL: attn_type {ddconfig['attn_type']!r} is not supported")
    for name, default in DDCONFIG_DEFAULTS.items():
        value = ddconfig.get(name, default)
        if isinstance(default, list):
            value = list(value)  # OmegaConf ListConfig never equals a plain list
        if value != default:
            raise ValueError(f"AutoencoderKL: ddconfig {name}={value!r} is not supported (only {default!r})")


def swish_(x: torch.Tensor) -> torch.Tensor:
    """SiLU in place: every caller passes a fresh activation (a GroupNorm's output)."""
    return F.silu(x, inplace=True)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class ResnetBlock(nn.Module):
    """Two norm-swish-conv stages with a residual (1x1 `nin_shortcut` when channels change)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = GroupNorm32(in_channels, NORM_EPS)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = GroupNorm32(out_channels, NORM_EPS)
        self.conv2 = conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = conv1x1(in_channels, out_channels)
        else:
            self.nin_shortcut = nn.Identity()  # no parameters, so no checkpoint key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each result replaces the one before it (SiLU and the residual add in place): besides x, at
        # most two activations of the block's size are alive, which is what bounds the decoder's
        # memory at full resolution. The same operations, so the same numbers.
        h = self.conv1(swish_(self.norm1(x)))
        h = swish_(self.norm2(h))
        h = self.conv2(h)
        return h.add_(self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm32(channels, NORM_EPS)
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W]
        _, _, height, width = x.shape
        h = self.norm(x)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head whose width is all C channels
        q, k, v = (proj(h).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale C^-0.5, as the original
        out = out[:, 0].transpose(1, 2).unflatten(2, (height, width))  # [B, C, H, W]
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad right and bottom by one, then a stride-2 3x3 conv with no padding.

    The asymmetric pad is the original's; a symmetric padding=1 would shift the result by a pixel.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution (keys block_1/attn_1/block_2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), then at most one resampler.

    The resampler is passed by keyword (`downsample=` or `upsample=`) and registered under that
    name, which is its name in the original keys.
    """

    def __init__(self, blocks: list[ResnetBlock], **resampler: nn.Module):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resampler_names = list(resampler)
        for name, module in resampler.items():
            self.add_module(name, module)

    def stages(self) -> list[nn.Module]:
        """The blocks, then the resampler. The encoder and decoder run these one by one rather than
        calling the level, whose caller would hold the level's input (at full resolution the
        decoder's largest activation) until the whole level returns."""
        return [*self.block, *(getattr(self, name) for name in self.resampler_names)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] -> moments [B, 2*z_channels, H/f, W/f], f = 2^(levels-1)."""

    def __init__(self, ch: int, ch_mult, num_res_blocks: int, in_channels: int, z_channels: int):
        super().__init__()
        self.conv_in = conv3x3(in_channels, ch)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out) for i in range(num_res_blocks)]
            block_in = block_out
            is_last = level == len(ch_mult) - 1
            resampler = {} if is_last else {"downsample": Downsample(block_in)}
            self.down.append(Level(blocks, **resampler))
        self.mid = MidBlock(block_in)
        self.norm_out = GroupNorm32(block_in, NORM_EPS)
        self.conv_out = conv3x3(block_in, 2 * z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for stage in level.stages():
                h = stage(h)
        h = self.mid(h)
        return self.conv_out(swish_(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, z_channels, h, w] -> image [B, out_ch, h*f, w*f].

    `up` is indexed by resolution level like the encoder's `down` (up.0 is the full-resolution
    level), although it runs from the last index to the first.
    """

    def __init__(self, ch: int, ch_mult, num_res_blocks: int, out_ch: int, z_channels: int):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = conv3x3(z_channels, block_in)
        self.mid = MidBlock(block_in)
        levels = []
        for level in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[level]
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out) for i in range(num_res_blocks + 1)]
            block_in = block_out
            resampler = {"upsample": Upsample(block_in)} if level > 0 else {}
            levels.append(Level(blocks, **resampler))
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = GroupNorm32(block_in, NORM_EPS)
        self.conv_out = conv3x3(block_in, out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for stage in level.stages():
                h = stage(h)
        return self.conv_out(swish_(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """The SD VAE, built from the original YAML's `first_stage_config.params`.

    `monitor`, `lossconfig`, `image_key`, `ignore_keys` and `learn_logvar` only matter for
    training and are ignored. `ckpt_path` is rejected: the original would load a second
    checkpoint from inside the constructor; sd_cli loads weights in one place.
    """

    def __init__(self, ddconfig: dict, embed_dim: int, ckpt_path=None, colorize_nlabels=None,
                 ema_decay=None, **ignored):
        super().__init__()
        if ckpt_path is not None:
            raise ValueError("AutoencoderKL: ckpt_path in the config is not supported; "
                             "load the weights from the main checkpoint instead")
        if colorize_nlabels is not None or ema_decay is not None:
            raise ValueError("AutoencoderKL: colorize_nlabels and ema_decay (training features) "
                             "are not supported")
        check_ddconfig(ddconfig)
        z_channels = ddconfig["z_channels"]
        shared = dict(ch=ddconfig["ch"], ch_mult=list(ddconfig["ch_mult"]),
                      num_res_blocks=ddconfig["num_res_blocks"], z_channels=z_channels)
        self.encoder = Encoder(in_channels=ddconfig["in_channels"], **shared)
        self.decoder = Decoder(out_ch=ddconfig["out_ch"], **shared)
        self.quant_conv = conv1x1(2 * z_channels, 2 * embed_dim)
        self.post_quant_conv = conv1x1(embed_dim, z_channels)

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image [B, 3, H, W] in [-1, 1] -> (mean, logvar), each [B, embed_dim, H/8, W/8]."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        # The original's DiagonalGaussianDistribution clamps logvar to this range.
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, embed_dim, h, w], already divided by scale_factor -> image [B, 3, 8h, 8w], ~[-1, 1]."""
        return self.decoder(self.post_quant_conv(z))
