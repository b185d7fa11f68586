"""The one way through sampling: every mode prepares its start with `start` and runs it with `denoise`.

`start` turns strength into a start latent for every sampler family, and decides the family once:

- The original samplers (DDIM, PLMS, DPM-Solver) noise the image latent x₀ to DDIM index
  t_enc = int(strength · steps) with the image's first draw, √ᾱ·x₀ + √(1-ᾱ)·ε, and denoise from one
  index below (the original img2img's off-by-one). t_enc = 0 noises to index 0 and runs no step.
  Where t_enc is past the schedule (the original crashes, index out of range) the run starts from
  the draw at the top.
- The k-diffusion samplers run the last int(strength · steps) σ of their schedule, from
  x₀ + ε·σ_first (strength 0: x₀ itself, no step; strength 1: x₀ + ε·σ_max).
- txt2img (no x₀) starts from the draw alone at the top, ε·σ_max for the k-diffusion samplers.

A mode's StartRule states where it departs from img2img, as the original scripts do: inpainting
generates from the draw alone at strength 1; depth2img caps t_enc at steps - 1 and starts from the
draw alone there, one index below the top; the SDXL refiner continues the base's still-noisy latent
without adding noise (REFINER).

`handoff` (generative-models' models only) is the refiner's strength: the base's schedule stops
where the refiner takes over (sgm.txt2noisy_sigmas), and its latent is handed over undecoded.
"""

from dataclasses import dataclass

import torch

from sd_cli.errors import UsageError
from sd_cli.runtime.allocator import reusing_freed_memory
from sd_cli.sampling import samplers, sgm, sigma_schedules
from sd_cli.sampling.ddim import sample_ddim, sample_plms
from sd_cli.sampling.denoiser import KDenoiser, LCMDenoiser
from sd_cli.sampling.dpm_solver import sample_dpm_solver
from sd_cli.sampling.guidance import GuidedModel
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.schedule import make_ddim_schedule
from sd_cli.sampling.steps import NO_HOOKS, StepHooks


@dataclass(frozen=True)
class SamplingParams:
    sampler: str = "ddim"  # a name samplers.choose accepts: "euler_a", "dpmpp_2m_karras", "DPM++ 2M Karras", ...
    steps: int = 50  # requested steps; DDIM/PLMS may run the original's count for it (see schedule.py)
    scale: float = 7.5  # classifier-free guidance scale; 1.0 skips the unconditional pass
    eta: float = 0.0  # DDIM η; PLMS needs 0, DPM-Solver ignores it


@dataclass(frozen=True)
class StartRule:
    """Where a mode's start departs from img2img's."""

    draw_alone_at_full: bool = False  # strength 1, original samplers: the draw alone, not x₀ noised
    k_draw_alone_at_full: bool = False  # the same for the k-diffusion samplers (ε·σ_max)
    cap_index: bool = False  # t_enc = min(int(strength · steps), steps - 1), also for the draw alone
    add_noise: bool = True  # False: x₀ is already noisy (the refiner's hand-off); the draw is made but unused


IMG2IMG = StartRule()
INPAINT = StartRule(draw_alone_at_full=True, k_draw_alone_at_full=True)
DEPTH2IMG = StartRule(draw_alone_at_full=True, cap_index=True)
# The demo's refiner after the base (do_img2img with add_noise=False): it still draws its img2img noise
# (randn_like), so the draw is made and the ancestral samplers' later draws follow the demo's order.
REFINER = StartRule(add_noise=False)


@dataclass(frozen=True)
class Start:
    """A start latent and where on its sampler's schedule it stands."""

    x: torch.Tensor
    start_index: int | None = None  # original samplers: denoise from DDIM index start_index - 1; None: the top
    sigmas: torch.Tensor | None = None  # k-diffusion samplers: the σ schedule from x's level down to 0


def is_k_sampler(params: SamplingParams) -> bool:
    """A k-diffusion sampler (not ddim, plms or dpm)."""
    return not samplers.choose(params.sampler).sampler.original


def start(model, params: SamplingParams, draw: torch.Tensor, x0: torch.Tensor | None = None,
          strength: float = 1.0, rule: StartRule = IMG2IMG, handoff: float | None = None) -> Start:
    """The start of a run: draw [B, 4, h, w] is each image's first draw; x0 the image latent (None: txt2img);
    handoff: the refiner's strength, where the base stops (None: it denoises to the end)."""
    if model.family.engine == "sgm":
        return _sgm_start(model, params, draw, x0, strength, rule, handoff)
    if handoff is not None or not rule.add_noise:
        raise UsageError(f"the refiner hand-off is generative-models' (SDXL); {model.family.description} has none")
    if is_k_sampler(params):
        return _k_start(model, params, draw, x0, strength, rule)
    return _original_start(model, params, draw, x0, strength, rule)


def _original_start(model, params, draw, x0, strength, rule: StartRule) -> Start:
    t_enc = int(strength * params.steps)
    if rule.cap_index:
        t_enc = min(t_enc, params.steps - 1)
    if x0 is None or (rule.draw_alone_at_full and strength >= 1.0):
        return Start(draw, start_index=t_enc if rule.cap_index else None)
    schedule = make_ddim_schedule(model.alphas_cumprod, params.steps, params.eta)
    if t_enc >= len(schedule):
        return Start(draw)
    a_t = schedule.alphas[t_enc].to(draw.device)
    return Start(a_t.sqrt() * x0 + (1 - a_t).sqrt() * draw, start_index=t_enc)


def _k_start(model, params, draw, x0, strength, rule: StartRule) -> Start:
    sigmas = k_sigmas(model, params, min(strength, 1.0))
    if x0 is None or (rule.k_draw_alone_at_full and strength >= 1.0):
        return Start(draw * float(sigmas[0]), sigmas=sigmas)
    return Start(x0 + draw * float(sigmas[0]), sigmas=sigmas)


def _sgm_start(model, params, draw, x0, strength, rule: StartRule, handoff: float | None) -> Start:
    if not is_k_sampler(params):
        raise UsageError(f"{model.family.description} samples as generative-models does: use one of its samplers "
                         "(euler, euler_a, heun, dpmpp_2m, dpmpp_2s_a, lms, ...), not the original "
                         f"{params.sampler}")
    if samplers.choose(params.sampler).sampler.denoiser != "k":
        raise UsageError(f"{params.sampler} needs its own denoiser, which generative-models' models do not have")
    sigmas = sgm_sigmas(model, params)
    if x0 is not None:
        sigmas = sgm.img2img_sigmas(sigmas, strength)
    if handoff is not None:  # the demo wraps img2img's cut in the hand-off's: both apply
        sigmas = sgm.txt2noisy_sigmas(sigmas, handoff, params.steps)
    if x0 is None:
        return Start(draw * sgm.start_scale(float(sigmas[0])), sigmas=sigmas)
    if not rule.add_noise:
        return Start(x0, sigmas=sigmas)
    return Start(x0 + draw * float(sigmas[0]), sigmas=sigmas)


def sgm_sigmas(model, params: SamplingParams) -> torch.Tensor:
    """The σ of an sgm model's run: its own discretizations, or a k-diffusion schedule over its σ range."""
    choice = samplers.choose(params.sampler)
    if choice.schedule in sgm.SCHEDULES:
        return sgm.make_sigmas(choice.schedule, params.steps, model.sigma_table)
    return sigma_schedules.make_sigmas(choice.schedule, params.steps, model.alphas_cumprod,
                                       choice.sampler.discard_penultimate)


def k_sigmas(model, params: SamplingParams, strength: float = 1.0) -> torch.Tensor:
    """The σ schedule (float64, ends in 0) of a k-diffusion sampler, from sigmas[steps - t_enc]:
    its last t_enc = int(strength · steps) steps (AUTOMATIC1111 starts one σ earlier and runs t_enc + 1)."""
    choice = samplers.choose(params.sampler)
    if choice.schedule in sgm.SCHEDULES[1:]:
        raise UsageError(f"schedule {choice.schedule} is generative-models' (SDXL, SD-Turbo); "
                         f"{model.family.description} takes {', '.join(sigma_schedules.SCHEDULES)}")
    sigmas = sigma_schedules.make_sigmas(choice.schedule, params.steps, model.alphas_cumprod,
                                         choice.sampler.discard_penultimate)
    return sigmas[params.steps - int(strength * params.steps):]


def denoise(model, guided: GuidedModel, begin: Start, noise: NoiseSource, params: SamplingParams,
            hooks: StepHooks = NO_HOOKS) -> torch.Tensor:
    """Run params' sampler from the start down to clean latents; every step ends through hooks."""
    with reusing_freed_memory(model.device):
        if begin.sigmas is not None:
            return _run_k(model, guided, begin, noise, params, hooks)
        return _run_original(model, guided, begin, noise, params, hooks)


def _run_original(model, guided, begin: Start, noise, params, hooks) -> torch.Tensor:
    if params.sampler == "dpm":
        schedule = make_ddim_schedule(model.alphas_cumprod, params.steps, 0.0)
        t_start = None if begin.start_index is None else int(schedule.timesteps[begin.start_index])
        steps = params.steps if begin.start_index is None else begin.start_index
        return sample_dpm_solver(guided, begin.x, model.alphas_cumprod, steps, t_start_timestep=t_start, hooks=hooks)
    schedule = make_ddim_schedule(model.alphas_cumprod, params.steps, params.eta)
    sample = sample_plms if params.sampler == "plms" else sample_ddim
    return sample(guided, begin.x, schedule, noise, start_index=begin.start_index, hooks=hooks)


def _run_k(model, guided, begin: Start, noise, params, hooks) -> torch.Tensor:
    spec = samplers.choose(params.sampler).sampler
    if params.eta:
        raise UsageError(f"--eta is DDIM's η; {spec.id} runs with AUTOMATIC1111's defaults (η = 1 for the "
                         "ancestral and SDE samplers)")
    if model.family.engine == "sgm":
        denoiser = sgm.QuantizedDenoiser(guided, model.sigma_table)
    else:
        denoiser = (LCMDenoiser if spec.denoiser == "lcm" else KDenoiser)(guided, model.alphas_cumprod)
    return spec.function_object()(denoiser, begin.x, begin.sigmas, noise, hooks)
