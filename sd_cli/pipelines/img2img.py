"""img2img on a loaded model: an image, prompts and seeds in, images in [-1, 1] out.

The start follows the original img2img (sampling/denoising.py): the image latent noised to where
strength puts it with each image's first draw, denoised from there.
"""

import torch

from sd_cli.pipelines.conditioning import AESTHETIC_SCORES, guided_model
from sd_cli.sampling import denoising
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.guidance import GuidedModel
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.steps import Progress, StepHooks


@torch.inference_mode()
def img2img(model, init_image: torch.Tensor, prompts: list[str], negative_prompts: list[str],
            seeds: list[int], params: SamplingParams, strength: float,
            progress: Progress | None = None,
            aesthetic_scores: tuple[float, float] = AESTHETIC_SCORES) -> torch.Tensor:
    """init_image [1, 3, H, W] in [-1, 1]; strength in [0, 1] (1.0 starts from pure noise);
    aesthetic_scores condition the SDXL refiner run on its own."""
    # 1. Conditioning, and the init latent: the VAE posterior mean times scale_factor (no sampling).
    guided = guided_model(model, prompts, negative_prompts, params.scale, tuple(init_image.shape[-2:]),
                          aesthetic_scores)
    x0 = init_latents(model, init_image, len(prompts))
    # 2-3. Noise it to where strength puts it and denoise from there.
    return model.decode_latents(img2img_latents(model, guided, x0, seeds, params, strength, progress))


def init_latents(model, init_image: torch.Tensor, batch: int) -> torch.Tensor:
    """The VAE posterior mean of the init image times scale_factor, [batch, 4, h, w] in float32."""
    return model.encode_image(init_image).float().expand(batch, -1, -1, -1)


def img2img_latents(model, guided: GuidedModel, x0: torch.Tensor, seeds: list[int], params: SamplingParams,
                    strength: float, progress: Progress | None = None, noise: NoiseSource | None = None,
                    handoff: float | None = None) -> torch.Tensor:
    """img2img's denoising from a latent x0 [B, 4, h, w] (an encoded image, or the hires fix's upscaled latent);
    `noise` and `handoff` as for txt2img_latents (the SDXL base before its refiner)."""
    noise = NoiseSource(seeds) if noise is None else noise
    draw = noise.like(x0)
    begin = denoising.start(model, params, draw, x0, strength, handoff=handoff)
    return denoising.denoise(model, guided, begin, noise, params, StepHooks(progress))
