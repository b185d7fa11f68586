"""Sampling as the generative-models code (`sgm`: SDXL, its refiner, SDXL-Turbo, SD-Turbo) does it.

The samplers are the k-diffusion ones (k_samplers.py); what differs from the SD 1.x/2.x path
(docs/reference/sdxl.md §3):

- The denoiser quantises: a sampler's σ is replaced by the nearest of the model's 1000 σ (the
  DiscreteDenoiser's table), the UNet sees the integer index of that σ, and x̂₀ = x - σ_q·ε.
- The default discretization is the legacy DDPM one: S integer timesteps
  int(linspace(999, 0, S, endpoint=False)), so t = 999 is always the first (the CompVis DDIM grid
  and k-diffusion's "discrete" differ). EDM's (--schedule edm, the demo's σ 0.03..14.61, ρ 3) and
  Turbo's subset of the 1000-step list (t = 999, 899, 799, 699; 1-4 steps) are the others.
- txt2img starts from n·sqrt(1 + σ₀²), not n·σ₀; img2img keeps the max(int(strength·(S+1)), 1)
  smallest of the S + 1 σ (the final 0 included) and starts from z + n·σ₀.
- The refiner hand-off (the demo's "Finish denoising with refiner"): the base's σ lose their smallest
  ones (Txt2NoisyDiscretizationWrapper, txt2noisy_sigmas) and the refiner runs img2img's share of its
  own σ from the base's still-noisy latent, adding no noise.

σ values are float32, as the reference computes them; the samplers read them as Python floats.
"""

import math

import numpy as np
import torch

from sd_cli.errors import UsageError
from sd_cli.sampling.guidance import GuidedModel

EDM_DEMO = {"sigma_min": 0.03, "sigma_max": 14.61, "rho": 3.0}  # the demo's EDM discretization
TURBO_INDICES = (0, 100, 200, 300)  # turbo.py's SubstepSampler over the 1000-step list
SCHEDULES = ("discrete", "edm", "turbo")  # the sgm meaning of --schedule


def sigma_table(linear_start: float, linear_end: float, timesteps: int) -> torch.Tensor:
    """The DiscreteDenoiser's σ for every training timestep, ascending: [T] float32.

    ᾱ in float64 (linear in sqrt β), then sqrt of (1 - ᾱ)/ᾱ taken in float32, as LegacyDDPMDiscretization."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5


def legacy_ddpm(steps: int, table: torch.Tensor) -> torch.Tensor:
    """steps + 1 descending σ ending in 0: the table at int(linspace(T-1, 0, steps, endpoint=False))."""
    total = len(table)
    if not 1 <= steps <= total:
        raise UsageError(f"--steps {steps}: the model's discretization has 1 to {total} steps")
    timesteps = np.linspace(total - 1, 0, steps, endpoint=False).astype(int)
    return _append_zero(table[torch.from_numpy(timesteps)])


def edm(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """EDMDiscretization: Karras et al.'s ramp between sigma_max and sigma_min in float32, then 0."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def turbo(steps: int, table: torch.Tensor) -> torch.Tensor:
    """SDXL-Turbo / SD-Turbo: the first `steps` of t = 999, 899, 799, 699 of the 1000-step list, then 0."""
    if not 1 <= steps <= len(TURBO_INDICES):
        raise UsageError(f"--steps {steps}: the turbo schedule runs 1 to {len(TURBO_INDICES)} steps")
    full = legacy_ddpm(len(table), table)
    return full[list(TURBO_INDICES[:steps]) + [len(table)]]


def make_sigmas(schedule: str, steps: int, table: torch.Tensor) -> torch.Tensor:
    """steps + 1 descending float64 σ (float32 values) ending in 0, for an sgm --schedule."""
    if schedule == "discrete":
        sigmas = legacy_ddpm(steps, table)
    elif schedule == "edm":
        sigmas = edm(steps, **EDM_DEMO)
    elif schedule == "turbo":
        sigmas = turbo(steps, table)
    else:
        raise UsageError(f"--schedule {schedule}: this model's samplers follow generative-models; "
                         f"use {', '.join(SCHEDULES)}")
    return sigmas.double()


def img2img_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """Img2ImgDiscretizationWrapper: the max(int(strength · len), 1) smallest σ, still descending."""
    keep = max(int(strength * len(sigmas)), 1)
    return sigmas[len(sigmas) - keep:]


def txt2noisy_sigmas(sigmas: torch.Tensor, strength: float, steps: int) -> torch.Tensor:
    """Txt2NoisyDiscretizationWrapper(strength, original_steps=steps): without the
    max(min(int(strength · (steps + 1)) - 1, steps), 0) smallest σ, still descending.

    0.15 of 20 steps drops σ = 0 and t = 49: the base stops at t = 99 after 18 steps. The demo's
    wrapper counts steps + 1 even when img2img has already cut the list; where that would drop every
    σ (the demo then fails on an empty list) the largest is kept and the base runs no step."""
    drop = max(min(int(strength * (steps + 1)) - 1, steps), 0)
    return sigmas[:max(len(sigmas) - drop, 1)]


def start_scale(sigma_0: float) -> float:
    """txt2img's start: unit noise times sqrt(1 + σ₀²) (prepare_sampling_loop)."""
    return math.sqrt(1.0 + sigma_0**2)


class QuantizedDenoiser:
    """DiscreteDenoiser with EpsScaling (or VScaling for v-models): D(x; σ) at the table's nearest σ."""

    def __init__(self, model: GuidedModel, table: torch.Tensor):
        self.model = model
        self.table = table  # [T] ascending float32

    def index(self, sigma: float) -> int:
        return int((self.table - sigma).abs().argmin())

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        index = self.index(sigma)
        sigma_q = float(self.table[index])
        c_in = 1.0 / math.sqrt(sigma_q**2 + 1.0)
        t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
        eps = self.model.eps(x * c_in, t, c_in, sigma_q * c_in)
        return x - sigma_q * eps


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(1)])
