"""txt2img and img2img on a loaded model: prompts and seeds in, images in [-1, 1] out.

Each function is a short sequence of numbered steps; file handling, batching over a prompt list
and the command line live elsewhere (render.py, cli.py).
"""

from dataclasses import dataclass
from typing import Callable

import torch

from sd_cli.runtime.allocator import reusing_freed_memory
from sd_cli.errors import UsageError
from sd_cli.models.latent_diffusion import LatentDiffusion
from sd_cli.prompting.prompts import match_lengths
from sd_cli.sampling import k_samplers, samplers, sigma_schedules
from sd_cli.sampling.ddim import AfterStep, sample_ddim, sample_plms
from sd_cli.sampling.denoiser import KDenoiser, LCMDenoiser
from sd_cli.sampling.dpm_solver import sample_dpm_solver
from sd_cli.sampling.guidance import GuidedModel
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.schedule import make_ddim_schedule

LATENT_CHANNELS = 4
DOWNSAMPLING = 8

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SamplingParams:
    sampler: str = "ddim"  # a name samplers.choose accepts: "euler_a", "dpmpp_2m_karras", "DPM++ 2M Karras", ...
    steps: int = 50  # requested steps; DDIM/PLMS may run the original's count for it (see schedule.py)
    scale: float = 7.5  # classifier-free guidance scale; 1.0 skips the unconditional pass
    eta: float = 0.0  # DDIM η; PLMS needs 0, DPM-Solver ignores it


@torch.inference_mode()
def txt2img(model: LatentDiffusion, prompts: list[str], negative_prompts: list[str], seeds: list[int],
            params: SamplingParams, height: int, width: int, progress: Progress | None = None) -> torch.Tensor:
    return model.decode_latents(txt2img_latents(model, prompts, negative_prompts, seeds, params, height, width, progress))


@torch.inference_mode()
def txt2img_latents(model: LatentDiffusion, prompts: list[str], negative_prompts: list[str], seeds: list[int],
                    params: SamplingParams, height: int, width: int, progress: Progress | None = None) -> torch.Tensor:
    """The denoised latents [B, 4, H/8, W/8] of txt2img, before the VAE."""
    # 1. Text conditioning (the unconditional branch encodes the negative prompt).
    guided = guided_model(model, prompts, negative_prompts, params.scale)
    # 2. Start noise: each image's own generator, drawn on the CPU in float32.
    noise = NoiseSource(seeds)
    x_t = noise.draw((LATENT_CHANNELS, height // DOWNSAMPLING, width // DOWNSAMPLING), model.device)
    # 3. Denoise.
    return denoise(model, guided, x_t, noise, params, progress)


@torch.inference_mode()
def img2img(model: LatentDiffusion, init_image: torch.Tensor, prompts: list[str], negative_prompts: list[str],
            seeds: list[int], params: SamplingParams, strength: float,
            progress: Progress | None = None) -> torch.Tensor:
    """init_image [1, 3, H, W] in [-1, 1]; strength in [0, 1] (1.0 starts from pure noise)."""
    # 1. Conditioning, and the init latent: the VAE posterior mean times scale_factor (no sampling).
    guided = guided_model(model, prompts, negative_prompts, params.scale)
    x0 = model.encode_image(init_image).float().expand(len(prompts), -1, -1, -1)
    # 2. Forward-diffuse to DDIM index t_enc = int(strength * steps) with each image's first draw.
    noise = NoiseSource(seeds)
    forward_noise = noise.like(x0)
    if is_k_sampler(params):  # k-diffusion: strength is a slice of the σ schedule
        sigmas = k_sigmas(model, params, strength)
        latents = sample_k(model, guided, x0 + forward_noise * float(sigmas[0]), sigmas, noise, params, progress)
        return model.decode_latents(latents)
    schedule = make_ddim_schedule(model.alphas_cumprod, params.steps, params.eta)
    t_enc = int(strength * params.steps)
    if t_enc >= len(schedule):  # the original crashes here (index out of range); we start from noise
        return model.decode_latents(denoise(model, guided, forward_noise, noise, params, progress))
    a_t = schedule.alphas[t_enc].to(x0.device)
    x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * forward_noise
    # 3. Denoise from index t_enc - 1 down (the original's off-by-one: noise at t_enc, start one below).
    latents = denoise(model, guided, x_t, noise, params, progress, start_index=t_enc)
    return model.decode_latents(latents)


def guided_model(model: LatentDiffusion, prompts: list[str], negative_prompts: list[str], scale: float) -> GuidedModel:
    """Prompt and negative-prompt embeddings with the model's UNet: the guided prediction the samplers call."""
    cond = model.encode_text(prompts)
    uncond = model.encode_text(negative_prompts) if scale != 1.0 else None
    cond, uncond = match_lengths(model, cond, uncond)  # a long prompt or negative: pad the other
    return GuidedModel(model.unet, cond, uncond, scale, model.parameterization)


def denoise(model: LatentDiffusion, guided: GuidedModel, x: torch.Tensor, noise: NoiseSource,
            params: SamplingParams, progress: Progress | None, start_index: int | None = None,
            after_step: AfterStep | None = None) -> torch.Tensor:
    """Run the chosen sampler from DDIM index start_index - 1 (default: the top) to the end."""
    with reusing_freed_memory(model.device):
        return _denoise(model, guided, x, noise, params, progress, start_index, after_step)


def _denoise(model, guided, x, noise, params, progress, start_index, after_step) -> torch.Tensor:
    if is_k_sampler(params):  # x: unit noise, scaled to the first σ
        if start_index is not None or after_step is not None:  # callers start k-samplers with k_sigmas, sample_k
            raise UsageError(f"sampler {params.sampler}: no DDIM start index or DDIM after-step hook")
        sigmas = k_sigmas(model, params)
        return sample_k(model, guided, x * float(sigmas[0]), sigmas, noise, params, progress)
    if params.sampler == "dpm":
        schedule = make_ddim_schedule(model.alphas_cumprod, params.steps, 0.0)
        t_start = None if start_index is None else int(schedule.timesteps[start_index])
        steps = params.steps if start_index is None else start_index
        return sample_dpm_solver(guided, x, model.alphas_cumprod, steps, progress, t_start_timestep=t_start,
                                 after_step=after_step)
    schedule = make_ddim_schedule(model.alphas_cumprod, params.steps, params.eta)
    sample = sample_plms if params.sampler == "plms" else sample_ddim
    return sample(guided, x, schedule, noise, start_index=start_index, progress=progress, after_step=after_step)


def is_k_sampler(params: SamplingParams) -> bool:
    """A k-diffusion sampler (not ddim, plms or dpm)."""
    return not samplers.choose(params.sampler).sampler.original


def k_sigmas(model: LatentDiffusion, params: SamplingParams, strength: float = 1.0) -> torch.Tensor:
    """The σ schedule (float64, ends in 0) of a k-diffusion sampler. img2img runs its last
    t_enc = int(strength · steps) steps: it starts at sigmas[steps - t_enc], the image latent noised to
    that σ (AUTOMATIC1111 starts one σ earlier and runs t_enc + 1 steps); strength 1 noises the image
    to σ_max, strength 0 returns it unchanged."""
    choice = samplers.choose(params.sampler)
    sigmas = sigma_schedules.make_sigmas(choice.schedule, params.steps, model.alphas_cumprod,
                                   choice.sampler.discard_penultimate)
    return sigmas[params.steps - int(strength * params.steps):]


def sample_k(model: LatentDiffusion, guided: GuidedModel, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSource,
             params: SamplingParams, progress: Progress | None,
             after_step: k_samplers.AfterStep | None = None) -> torch.Tensor:
    """Run a k-diffusion sampler from x at noise level sigmas[0] (x₀ + σ·ε) down the schedule;
    after_step(i, x, σ_{i+1}) -> x, if given, ends every step (inpainting's known-region blend)."""
    spec = samplers.choose(params.sampler).sampler
    if params.eta:
        raise UsageError(f"--eta is DDIM's η; {spec.id} runs with AUTOMATIC1111's defaults (η = 1 for the "
                         "ancestral and SDE samplers)")
    denoiser = (LCMDenoiser if spec.denoiser == "lcm" else KDenoiser)(guided, model.alphas_cumprod)
    with reusing_freed_memory(model.device), k_samplers.after_each_step(after_step):
        return spec.function_object()(denoiser, x, sigmas, noise, progress)
