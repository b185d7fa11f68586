"""txt2img on a loaded model: prompts and seeds in, images in [-1, 1] out."""

import torch

from sd_cli.pipelines.conditioning import guided_model
from sd_cli.sampling import denoising
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.steps import Progress, StepHooks


@torch.inference_mode()
def txt2img(model, prompts: list[str], negative_prompts: list[str], seeds: list[int],
            params: SamplingParams, height: int, width: int, progress: Progress | None = None) -> torch.Tensor:
    return model.decode_latents(txt2img_latents(model, prompts, negative_prompts, seeds, params, height, width, progress))


@torch.inference_mode()
def txt2img_latents(model, prompts: list[str], negative_prompts: list[str], seeds: list[int],
                    params: SamplingParams, height: int, width: int, progress: Progress | None = None,
                    noise: NoiseSource | None = None, handoff: float | None = None) -> torch.Tensor:
    """The denoised latents [B, 4, H/8, W/8] of txt2img, before the VAE. With `handoff` (the SDXL
    refiner's strength) the base stops early and the latents are still noisy (pipelines/refine.py);
    `noise` is then the run's NoiseSource, which the refiner's stage goes on drawing from."""
    # 1. Text conditioning.
    guided = guided_model(model, prompts, negative_prompts, params.scale, (height, width))
    # 2. Start noise: each image's own generator, drawn on the CPU in float32.
    noise = NoiseSource(seeds) if noise is None else noise
    draw = noise.draw(model.family.latent_shape(height, width), model.device)
    # 3. Denoise from the top (to where the refiner takes over, with a hand-off).
    begin = denoising.start(model, params, draw, handoff=handoff)
    return denoising.denoise(model, guided, begin, noise, params, StepHooks(progress))
