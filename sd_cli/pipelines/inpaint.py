"""inpaint on a loaded model: image, mask and prompts in, images in [-1, 1] out.

The method depends on the checkpoint's UNet (original-scripts.md §9):
- "concat", inpainting checkpoints (9 input channels: SD 1.5 / SD 2 inpainting), as the original
  LatentInpaintDiffusion: the UNet input is [x_t, mask, masked-image latent], where the mask is
  resized to latent size by nearest (each cell takes its 8x8 block's top-left pixel), the masked
  image is image × (mask < 0.5) in [-1, 1] (the hole is mid-grey), and the unconditional branch gets
  the same extra channels.
- "blend", ordinary checkpoints (4 channels): after every step the known (unmasked) region is
  replaced by the image latent noised to the step's new noise level with the image's first draw,
  and by the clean image latent after the last step (diffusers' inpainting pipeline does the same
  for 4-channel UNets).

Start: strength 1 (the default) is a full generation from each image's first draw, as the original.
With strength < 1 the image latent is noised to DDIM index int(strength · steps) with that draw and
denoised from one index below, img2img's rule. Latents of the image are the VAE posterior mean.

k-diffusion samplers (both methods): strength s runs the last int(s · steps) σ of the schedule
(pipeline.k_sigmas), from the first draw times σ_max at strength 1, else from the image latent plus
the first draw times the first σ; "blend" puts the known region back after every step as the image
latent plus the first draw times the step's new σ (the clean latent at σ = 0).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sd_cli.models.latent_diffusion import LatentDiffusion
from sd_cli.pipelines.pipeline import (
    DOWNSAMPLING, LATENT_CHANNELS, Progress, SamplingParams, denoise, guided_model, is_k_sampler, k_sigmas, sample_k,
)
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.schedule import make_ddim_schedule

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
    guided = guided_model(model, prompts, negative_prompts, params.scale)
    latent_size = (image.shape[-2] // DOWNSAMPLING, image.shape[-1] // DOWNSAMPLING)
    latent_mask = F.interpolate(mask.float(), size=latent_size).to(device)  # [1, 1, h, w]
    # 2. The image latent (a start with strength < 1, the known region for "blend").
    needs_x0 = method == "blend" or strength < 1.0
    x0 = model.encode_image(image).float().expand(batch, -1, -1, -1) if needs_x0 else None
    # 3. "concat": the extra UNet channels [mask, masked-image latent], the same in both CFG branches.
    if method == "concat":
        masked_latent = model.encode_image(image * (mask < 0.5)).float()
        guided.concat = torch.cat([latent_mask, masked_latent], dim=1).expand(batch, -1, -1, -1)
    # 4. Start from each image's first draw, or from the image noised with it (strength < 1).
    noise = NoiseSource(seeds)
    first = noise.draw((LATENT_CHANNELS, *latent_size), device)
    known = KnownRegion(x0, latent_mask, first) if method == "blend" else None
    if is_k_sampler(params):
        sigmas = k_sigmas(model, params, min(strength, 1.0))
        x = first * float(sigmas[0]) if strength >= 1.0 else x0 + first * float(sigmas[0])
        after_step = known.after_k_step if known else None
        return model.decode_latents(sample_k(model, guided, x, sigmas, noise, params, progress, after_step))
    x, start_index = _start(model, x0, first, params, strength)
    # 5. Denoise ("blend": the known region put back after every step), then decode.
    latents = denoise(model, guided, x, noise, params, progress, start_index=start_index, after_step=known)
    return model.decode_latents(latents)


def _start(model: LatentDiffusion, x0: torch.Tensor | None, first: torch.Tensor, params: SamplingParams,
           strength: float) -> tuple[torch.Tensor, int | None]:
    """x at DDIM index t_enc = int(strength · steps), and the start index; (first, None) for a full run."""
    if strength >= 1.0:
        return first, None
    schedule = make_ddim_schedule(model.alphas_cumprod, params.steps, params.eta)
    t_enc = int(strength * params.steps)
    if t_enc >= len(schedule):
        return first, None
    a_t = schedule.alphas[t_enc].to(first.device)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * first, t_enc


@dataclass
class KnownRegion:
    """The "blend" method's after-step hook: outside the mask, x follows the image's own forward diffusion."""

    x0: torch.Tensor  # [B, 4, h, w] image latent
    mask: torch.Tensor  # [1, 1, h, w] 1 = repaint
    noise: torch.Tensor  # [B, 4, h, w] each image's first draw

    def __call__(self, x: torch.Tensor, alpha_bar) -> torch.Tensor:
        if alpha_bar is None:  # after the last step: the clean latent
            known = self.x0
        else:
            known = alpha_bar ** 0.5 * self.x0 + (1 - alpha_bar) ** 0.5 * self.noise
        return ((1 - self.mask) * known + self.mask * x).to(x.dtype)

    def after_k_step(self, i: int, x: torch.Tensor, sigma_next: float) -> torch.Tensor:
        """The same for a k-diffusion sampler: the known region at x₀ + σ_next·ε (x₀ at σ_next = 0)."""
        known = self.x0 + sigma_next * self.noise if sigma_next > 0 else self.x0
        return ((1 - self.mask) * known + self.mask * x).to(x.dtype)
