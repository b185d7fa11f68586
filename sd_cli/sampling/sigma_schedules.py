"""Noise-level (σ) schedules for the k-diffusion samplers, over a model's discrete DDPM schedule.

Notation (k-diffusion's): σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) is the noise level of training timestep t,
ascending in t (t = 0 .. T-1, T = 1000 for Stable Diffusion). Between grid points, σ ↔ t is linear
interpolation of log σ (k-diffusion's DiscreteSchedule, diffusers' `_sigma_to_t`). A schedule of
n steps is n + 1 descending values, the last one 0 (the clean image).

All values are float64 on the CPU; the samplers read them as Python floats.
"""

import math

import torch

RHO = 7.0  # Karras et al. (2022), and AUTOMATIC1111's default
LCM_ORIGINAL_STEPS = 50  # the LCM distillation's timestep grid: 19, 39, ..., 999


def model_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t for every training timestep t, ascending: [T] float64."""
    ac = alphas_cumprod.detach().double().cpu()
    return ((1 - ac) / ac).sqrt()


def sigma_to_t(sigma: float, sigmas: torch.Tensor) -> float:
    """The (fractional) timestep of a noise level, clamped to [0, T-1]."""
    log_sigmas = sigmas.log()
    i = int(torch.searchsorted(log_sigmas, torch.tensor(math.log(sigma), dtype=torch.float64)))
    low = min(max(i - 1, 0), len(sigmas) - 2)
    w = (math.log(sigma) - float(log_sigmas[low])) / float(log_sigmas[low + 1] - log_sigmas[low])
    return low + min(max(w, 0.0), 1.0)


def t_to_sigma(t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """σ at (fractional) timesteps t: log σ interpolated linearly between grid points."""
    t = t.double()
    low, high = t.floor().long(), t.ceil().long()
    w = t - low
    log_sigmas = sigmas.log()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(1)])


def discrete(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """The model's own timesteps: n evenly spaced from T-1 down to 0 (k-diffusion's get_sigmas,
    AUTOMATIC1111's "Automatic"/"Uniform"/"Normal", diffusers' timestep_spacing="linspace")."""
    t = torch.linspace(len(sigmas) - 1, 0, n, dtype=torch.float64)
    return _append_zero(t_to_sigma(t, sigmas))


def karras(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """Karras et al. (2022) eq. 5, ρ = 7, between the model's σ_max and σ_min."""
    sigma_min, sigma_max = float(sigmas[0]), float(sigmas[-1])
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / RHO), sigma_max ** (1 / RHO)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** RHO)


def exponential(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """Evenly spaced in log σ from the model's σ_max to σ_min."""
    sigma_min, sigma_max = float(sigmas[0]), float(sigmas[-1])
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def sgm_uniform(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """SGM's (and AUTOMATIC1111's "SGM Uniform"): n + 1 evenly spaced timesteps from T-1 to 0,
    the last (t = 0) replaced by σ = 0. Equal to the discrete schedule of n + 1 steps without its
    next-to-last value, and to diffusers' DPM-Solver/UniPC timestep_spacing="linspace"."""
    t = torch.linspace(len(sigmas) - 1, 0, n + 1, dtype=torch.float64)[:-1]
    return _append_zero(t_to_sigma(t, sigmas))


def lcm(n: int, sigmas: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's LCM schedule: the model's σ restricted to the LCM grid t = 19, 39, ..., 999,
    n timesteps evenly spaced from 999 to 19, log σ interpolated between grid points."""
    skip = len(sigmas) // LCM_ORIGINAL_STEPS
    grid = sigmas[skip - 1::skip]  # σ at t = skip-1, 2·skip-1, ..., T-1
    index = torch.linspace(len(grid) - 1, 0, n, dtype=torch.float64)
    return _append_zero(t_to_sigma(index, grid))


def lcm_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The timesteps of the LCM grid, ascending: 19, 39, ..., 999."""
    skip = len(sigmas) // LCM_ORIGINAL_STEPS
    return torch.arange(skip - 1, len(sigmas), skip)


SCHEDULES = {"discrete": discrete, "karras": karras, "exponential": exponential, "sgm_uniform": sgm_uniform,
             "lcm": lcm}


def make_sigmas(schedule: str, steps: int, alphas_cumprod: torch.Tensor,
                discard_penultimate: bool = False) -> torch.Tensor:
    """steps + 1 descending σ ending in 0. discard_penultimate (AUTOMATIC1111's DPM2/DPM2 a): build
    steps + 1 steps and drop the next-to-last σ, so the last step goes from a larger σ to 0."""
    sigmas = model_sigmas(alphas_cumprod)
    if not discard_penultimate:
        return SCHEDULES[schedule](steps, sigmas)
    longer = SCHEDULES[schedule](steps + 1, sigmas)
    return torch.cat([longer[:-2], longer[-1:]])
