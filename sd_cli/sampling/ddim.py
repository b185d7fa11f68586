"""DDIM and PLMS as the original ldm samplers compute them.

Both walk the DDIM index list from the top down; the step at index i uses a_t = ᾱ at timesteps[i],
a_prev = ᾱ one index lower (ᾱ[0] at the bottom), and σ_i = η·sqrt((1-a_prev)/(1-a_t))·sqrt(1-a_t/a_prev).
"""

import torch

from sd_cli.sampling.guidance import GuidedModel
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.schedule import DdimSchedule
from sd_cli.sampling.steps import CLEAN, NO_HOOKS, NoiseLevel, StepHooks


def _coefficient(values: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
    """A per-index scalar as a [1, 1, 1, 1] float32 tensor, as torch.full builds it in the original.

    `values` already lives on x's device (DdimSchedule.to), so no host-device copy (and no
    synchronisation) happens inside the sampling loop.
    """
    return values[index].reshape(1, 1, 1, 1)


def _timestep(schedule: DdimSchedule, index: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(schedule.timesteps[index]), device=x.device, dtype=torch.long)


def _eps(model: GuidedModel, x: torch.Tensor, schedule: DdimSchedule, index: int) -> torch.Tensor:
    a_t = _coefficient(schedule.alphas, index, x)
    return model.eps(x, _timestep(schedule, index, x), a_t.sqrt(), (1 - a_t).sqrt())


def ddim_update(x, eps, schedule: DdimSchedule, index: int, noise: torch.Tensor | None) -> torch.Tensor:
    """One DDIM step from index to index-1: predict x̂₀, then re-noise towards a_prev."""
    a_t = _coefficient(schedule.alphas, index, x)
    a_prev = _coefficient(schedule.alphas_prev, index, x)
    sigma_t = _coefficient(schedule.sigmas, index, x)
    pred_x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * eps
    x_prev = a_prev.sqrt() * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + sigma_t * noise
    return x_prev.to(x.dtype)


def _level_below(schedule: DdimSchedule, index: int) -> NoiseLevel:
    """The noise level a step from index lands on: ᾱ one index lower, clean below index 0."""
    return NoiseLevel(alpha_bar=schedule.alphas_prev[index]) if index > 0 else CLEAN


def sample_ddim(model: GuidedModel, x: torch.Tensor, schedule: DdimSchedule, noise: NoiseSource,
                start_index: int | None = None, hooks: StepHooks = NO_HOOKS) -> torch.Tensor:
    """Denoise x from DDIM index start_index-1 (default: the top) down to index 0."""
    top = len(schedule) if start_index is None else start_index
    has_noise = bool((schedule.sigmas[:top] > 0).any())
    schedule = schedule.to(x.device)
    for done, index in enumerate(reversed(range(top))):
        eps = _eps(model, x, schedule, index)
        x = ddim_update(x, eps, schedule, index, noise.like(x) if has_noise else None)
        x = hooks.end_step(x, _level_below(schedule, index), done + 1, top)
    return x


def _plms_eps(eps_t: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the current and up to three previous raw ε."""
    if len(history) == 1:
        return (3 * eps_t - history[-1]) / 2
    if len(history) == 2:
        return (23 * eps_t - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * eps_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


def sample_plms(model: GuidedModel, x: torch.Tensor, schedule: DdimSchedule, noise: NoiseSource,
                start_index: int | None = None, hooks: StepHooks = NO_HOOKS) -> torch.Tensor:
    """PLMS (pseudo linear multistep), η = 0.

    Unlike the original, ε is obtained through GuidedModel.eps, so v-prediction models work too.
    """
    del noise  # deterministic: PLMS requires η = 0
    top = len(schedule) if start_index is None else start_index
    schedule = schedule.to(x.device)
    history: list[torch.Tensor] = []
    for done, index in enumerate(reversed(range(top))):
        eps_t = _eps(model, x, schedule, index)
        if not history:
            # Pseudo improved Euler: average ε here and at the next (lower) timestep after a DDIM step.
            next_index = max(index - 1, 0)
            x_next = ddim_update(x, eps_t, schedule, index, None)
            eps_prime = (eps_t + _eps(model, x_next, schedule, next_index)) / 2
        else:
            eps_prime = _plms_eps(eps_t, history)
        x = ddim_update(x, eps_prime, schedule, index, None)
        history = (history + [eps_t])[-3:]
        x = hooks.end_step(x, _level_below(schedule, index), done + 1, top)
    return x
