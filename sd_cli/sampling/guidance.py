"""The model as the samplers see it: a guided prediction for a batch of latents at timestep t.

Classifier-free guidance is batched as the original does it: one UNet call on [uncond, cond]
(unconditional half first), then uncond + scale * (cond - uncond) on the raw output (ε or v).
A scale of exactly 1.0 skips the unconditional half.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from sd_cli.control.steering import Steering

UNetFn = Callable[..., torch.Tensor]  # (x, t, context) -> raw prediction; SDXL: (x, t, context, y)


@dataclass
class GuidedModel:
    unet: UNetFn  # (x [B, C, h, w], t [B], context [B, 77, D][, y [B, adm]]) -> raw prediction [B, 4, h, w]
    cond: torch.Tensor  # [B, 77, D] prompt embedding
    uncond: torch.Tensor | None  # [B, 77, D] negative-prompt embedding; None when scale == 1
    scale: float
    parameterization: str  # "eps" or "v"
    concat: torch.Tensor | None = None  # [B, k, h, w] extra UNet input channels (inpaint mask, depth)
    vector: torch.Tensor | None = None  # [B, adm] SDXL's vector input y (pooled text and size embeddings)
    uncond_vector: torch.Tensor | None = None  # [B, adm] y of the unconditional branch

    control: "Steering | None" = None  # the ControlNets' steering (control/steering.py); None: plain UNet

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided raw model output (ε or v, as the model predicts), in x's dtype."""
        x_in = x if self.concat is None else torch.cat([x, self.concat.to(x.dtype)], dim=1)
        if self.uncond is None or self.scale == 1.0:
            return self._unet(x, x_in, t, self.cond, self.vector).to(x.dtype)
        if self.control is not None and self.control.guess_mode:
            # guess mode (cldm's ControlLDM): the unconditional branch runs the plain UNet
            uncond_out = self._unet(x, x_in, t, self.uncond, self.uncond_vector, controlled=False).to(x.dtype)
            cond_out = self._unet(x, x_in, t, self.cond, self.vector).to(x.dtype)
        else:
            vector = None if self.vector is None else torch.cat([self.uncond_vector, self.vector])
            both = self._unet(torch.cat([x, x]), torch.cat([x_in, x_in]), torch.cat([t, t]),
                              torch.cat([self.uncond, self.cond]), vector)
            uncond_out, cond_out = both.to(x.dtype).chunk(2)
        return uncond_out + self.scale * (cond_out - uncond_out)

    def _unet(self, x, x_in, t, context, vector, controlled: bool = True):
        """SD 1.x/2.x UNets take (x, t, context); SDXL's also its vector y; a ControlNet sees the latent x
        without the extra channels of inpainting models (as diffusers' ControlNet inpaint pipeline)."""
        if vector is not None:
            return self.unet(x_in, t, context, vector)
        if self.control is None or not controlled:
            return self.unet(x_in, t, context)
        return self.unet(x_in, t, context, control=self.control.residuals(x, t, context))

    def eps(self, x: torch.Tensor, t: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """Guided ε given sqrt(ᾱ_t)=alpha and sqrt(1-ᾱ_t)=sigma; converts v → ε for v-models."""
        out = self.raw(x, t)
        if self.parameterization == "v":
            return alpha * out + sigma * x
        return out
