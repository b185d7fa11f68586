"""upscale on the SD 2 x4 upscaler: a low-res image and prompts in, images 4x its size in [-1, 1] out.

As the original superresolution scripts (docs/reference/controlnet-x4.md, "x4 upscaler"):

1. Noise: image i's generator (seed + i) draws first the start latent [1, 4, h, w] (the latent has
   the low-res image's size), then the augmentation noise [1, 3, h, w] (the scripts take NumPy's and
   torch's global streams; sd_cli keeps one stream per image, as everywhere).
2. The low-res image noised to the noise level on its own schedule (models/noise_augmentation.py);
   it joins the latent as 3 more UNet channels, and the level is the UNet's class label, the same
   in both guidance branches (the unconditional one only changes the text).
3. Sampling from the draw at the top (DDIM by default, on v), then decode(z / 0.08333).

With `tile` the UNet runs on overlapping tiles of the latent (runtime/tiling.py): bounded memory for
large inputs, at the cost of seams the size of docs/performance.md's figures.
"""

from dataclasses import dataclass

import torch

from sd_cli.pipelines.conditioning import guided_model
from sd_cli.sampling import denoising
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.steps import Progress, StepHooks

TILE_OVERLAP = 32  # latent cells (= input pixels) shared by neighbouring UNet tiles


@dataclass(frozen=True)
class UpscaleOptions:
    """What upscale's own flags ask for, the same for every job of a run."""

    noise_level: int = 20  # the streamlit and gradio scripts' default
    fit: str = "floor"  # "floor" (streamlit) or "pad" (gradio): files/low_res.py
    tile: int = 0  # UNet tile side in latent cells (= input pixels); 0: the whole latent at once


@torch.inference_mode()
def upscale(model, low_res: torch.Tensor, prompts: list[str], negative_prompts: list[str], seeds: list[int],
            params: SamplingParams, noise_level: int, progress: Progress | None = None,
            tile: int = 0) -> torch.Tensor:
    """low_res [1, 3, h, w] in [-1, 1] (sides multiples of 64) -> [B, 3, 4h, 4w] in [-1, 1]."""
    model.family.check_serves("upscale")
    augmentation = model.noise_augmentation
    augmentation.check_level(noise_level)
    batch, device = len(prompts), model.device
    factor = model.family.vae_downsampling
    size = (low_res.shape[-2] * factor, low_res.shape[-1] * factor)
    # 1. Each image's start latent, then its augmentation noise, from its own generator.
    noise = NoiseSource(seeds)
    first = noise.draw(model.family.latent_shape(*size), device)
    augmentation_noise = noise.draw(tuple(low_res.shape[1:]), device)
    # 2. Text, the noised low-res image and the level (the same for both guidance branches).
    guided = guided_model(model, prompts, negative_prompts, params.scale, size)
    guided.concat = augmentation.augment(low_res.to(device).expand(batch, -1, -1, -1), noise_level,
                                         augmentation_noise)
    guided.vector = guided.uncond_vector = torch.full((batch,), noise_level, dtype=torch.long, device=device)
    if tile:
        guided.unet = _tiled(guided.unet, tile)
    # 3. Sample from the draw at the top and decode.
    latents = denoising.denoise(model, guided, denoising.start(model, params, first), noise, params,
                                StepHooks(progress))
    return model.decode_latents(latents)


def _tiled(unet, tile: int):
    """The UNet call on overlapping tiles of its input (latent and low-res channels cut together)."""
    from sd_cli.runtime.tiling import unet_tiled

    def call(x, t, context, *y):
        return unet_tiled(lambda part: unet(part, t, context, *y), x, tile, min(TILE_OVERLAP, tile // 2))

    return call
