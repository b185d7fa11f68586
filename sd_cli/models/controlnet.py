"""ControlNet (lllyasviel/ControlNet's cldm.cldm.ControlNet): a copy of the UNet's encoder that turns a hint
image into one residual per UNet skip connection plus one for the middle block.

Module names equal the original checkpoint's keys below `control_model.` (`input_hint_block.0`,
`input_blocks.1.0.in_layers.0`, `zero_convs.3.0`, `middle_block_out.0`), so an original state dict loads
with `load_state_dict(sd, strict=True, assign=True)`. Built from `control_stage_config.params` of a
ControlLDM YAML (cldm_v15.yaml), the UNet's params plus `hint_channels`.

The hint joins after the first input conv only: `h = input_blocks[0](x) + input_hint_block(hint)`. Each
input block's output goes through its 1x1 zero conv to a residual; the middle block's through
`middle_block_out`. The hint has the image's size: `input_hint_block` downsamples by 8 (three stride-2
convs) to the latent's.
"""

import torch
from torch import nn

from sd_cli.models.unet import UNetModel, conv3x3

# input_hint_block's widths, fixed in the original whatever the model's: 3 -> 16 -> 16 -> 32/2 -> 32 -> 96/2 -> 96 -> 256/2
HINT_WIDTHS = ((16, 1), (16, 1), (32, 2), (32, 1), (96, 2), (96, 1), (256, 2))


def zero_conv(channels: int) -> nn.Sequential:
    """A 1x1 conv, nested once as the original's TimestepEmbedSequential (keys `zero_convs.k.0.*`)."""
    return nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1))


def hint_block(hint_channels: int, model_channels: int) -> nn.Sequential:
    """Convs with SiLU between (keys 0, 2, ..., 14), from the hint image to model_channels at 1/8 of its size."""
    layers: list[nn.Module] = []
    width = hint_channels
    for out, stride in HINT_WIDTHS:
        layers += [conv3x3(width, out, stride=stride), nn.SiLU()]
        width = out
    layers.append(conv3x3(width, model_channels))
    return nn.Sequential(*layers)


class ControlNet(UNetModel):
    """forward(x [B, 4, h, w], hint [B, hint_channels, 8h, 8w], timesteps [B], context [B, M, D]) ->
    residuals [B, C_k, h_k, w_k], one per UNet input block, then the middle block's."""

    def __init__(self, *, hint_channels: int, **unet_params):
        # A ControlNet has no decoder, hence no output channels (cldm's ControlNet takes none).
        super().__init__(out_channels=None, **unet_params)
        self.input_hint_block = hint_block(hint_channels, self.model_channels)

    def _build_head(self, skip_channels: list[int], emb: int, out_channels) -> None:
        self.zero_convs = nn.ModuleList(zero_conv(channels) for channels in skip_channels)
        self.middle_block_out = zero_conv(self.model_channels * self.channel_mult[-1])

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor) -> list[torch.Tensor]:
        emb = self._embedding(x, timesteps, None)
        guided_hint = self.input_hint_block(hint)
        residuals = []
        h = x
        for index, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if index == 0:
                h = h + guided_hint
            residuals.append(zero(h))
        h = self.middle_block(h, emb, context)
        residuals.append(self.middle_block_out(h))
        return residuals
