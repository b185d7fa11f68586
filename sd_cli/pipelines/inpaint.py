"""inpaint on a loaded model: image, mask and prompts in, images in [-1, 1] out.

The method depends on the checkpoint's UNet (docs/reference/original-scripts.md §9):
- "concat", inpainting checkpoints (9 input channels: SD 1.5 / SD 2 inpainting), as the original
  LatentInpaintDiffusion: the UNet input is [x_t, mask, masked-image latent], where the mask is
  resized to latent size by nearest (each cell takes its 8x8 block's top-left pixel), the masked
  image is image × (mask < 0.5) in [-1, 1] (the hole is mid-grey), and the unconditional branch gets
  the same extra channels.
- "blend", ordinary checkpoints (4 channels): after every step the known (unmasked) region is
  replaced by the image latent noised to the step's new noise level with the image's first draw,
  and by the clean image latent after the last step (diffusers' inpainting pipeline does the same
  for 4-channel UNets).

Start (sampling/denoising.py, the INPAINT rule): strength 1 (the default) is a full generation
from each image's first draw, as the original, for every sampler; below 1, img2img's start. The
latents of the image are the VAE posterior mean. "blend" puts the known region back after every
step, the image latent noised to the step's new level with the first draw (the clean latent after
the last step), through the one after-step hook every sampler calls.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sd_cli.models.latent_diffusion import LatentDiffusion
from sd_cli.pipelines.conditioning import guided_model
from sd_cli.sampling import denoising
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.steps import NoiseLevel, Progress, StepHooks


def inpaint_method(model: LatentDiffusion) -> str:
    """"concat" for inpainting checkpoints, "blend" for ordinary ones; other models cannot inpaint."""
    model.family.check_serves("inpaint")
    return model.family.inpaint_method


@torch.inference_mode()
def inpaint(model: LatentDiffusion, image: torch.Tensor, mask: torch.Tensor, prompts: list[str],
            negative_prompts: list[str], seeds: list[int], params: SamplingParams, strength: float = 1.0,
            progress: Progress | None = None) -> torch.Tensor:
    """image [1, 3, H, W] in [-1, 1], mask [1, 1, H, W] in {0, 1} (1 = repaint) -> [B, 3, H, W]."""
    method = inpaint_method(model)
    batch, device = len(prompts), model.device
    # 1. Text conditioning; the mask at latent size, nearest as the original's interpolate default.
    guided = guided_model(model, prompts, negative_prompts, params.scale, tuple(image.shape[-2:]))
    latent_shape = model.family.latent_shape(*image.shape[-2:])
    latent_mask = F.interpolate(mask.float(), size=latent_shape[1:]).to(device)  # [1, 1, h, w]
    # 2. The image latent (a start with strength < 1, the known region for "blend").
    needs_x0 = method == "blend" or strength < 1.0
    x0 = model.encode_image(image).float().expand(batch, -1, -1, -1) if needs_x0 else None
    # 3. "concat": the extra UNet channels [mask, masked-image latent], the same in both CFG branches.
    if method == "concat":
        masked_latent = model.encode_image(image * (mask < 0.5)).float()
        guided.concat = torch.cat([latent_mask, masked_latent], dim=1).expand(batch, -1, -1, -1)
    # 4. Start from each image's first draw, or from the image noised with it (strength < 1).
    noise = NoiseSource(seeds)
    first = noise.draw(latent_shape, device)
    begin = denoising.start(model, params, first, x0, strength, denoising.INPAINT)
    # 5. Denoise ("blend": the known region put back after every step), then decode.
    known = KnownRegion(x0, latent_mask, first) if method == "blend" else None
    latents = denoising.denoise(model, guided, begin, noise, params, StepHooks(progress, known))
    return model.decode_latents(latents)


@dataclass
class KnownRegion:
    """The "blend" method's after-step hook: outside the mask, x follows the image's own forward diffusion."""

    x0: torch.Tensor  # [B, 4, h, w] image latent
    mask: torch.Tensor  # [1, 1, h, w] 1 = repaint
    noise: torch.Tensor  # [B, 4, h, w] each image's first draw

    def __call__(self, x: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        known = level.noised(self.x0, self.noise)
        return ((1 - self.mask) * known + self.mask * x).to(x.dtype)
