"""The DDPM noise schedule and the original code's DDIM timestep grid.

Notation (as in the original ldm code): alphas_cumprod[t] is ᾱ_t for DDPM timestep t in 0..999;
a DDIM "index" i points into the sub-sampled timestep list, and a_t, a_prev are ᾱ at index i and
at the index below it.
"""

from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def alphas_cumprod(linear_start: float, linear_end: float, timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """ᾱ for ldm's "linear" schedule (linear in sqrt β), computed in float64, stored float32 as the original."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)


def ddim_timesteps(num_steps: int, total: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The original 'uniform' grid: range(0, total, total // num_steps) + 1.

    The original keeps the +1 offset and so crashes when 999 is a multiple of the stride
    (num_steps 3, 9, 27, 36, 37, 101-111, ...): the last timestep becomes 1000. We drop that one
    out-of-range timestep instead; every other step count gives exactly the original grid.
    """
    if num_steps < 1:
        raise ValueError("steps must be at least 1")
    if num_steps > total:
        raise ValueError(f"steps must be at most {total}")
    stride = total // num_steps
    steps = np.arange(0, total, stride) + 1
    return steps[steps < total]


@dataclass(frozen=True)
class DdimSchedule:
    """Per-index DDIM coefficients (float32), indexed 0 (t=1) .. len-1 (largest t)."""

    timesteps: np.ndarray  # DDPM timestep per index, ascending
    alphas: torch.Tensor  # ᾱ at each timestep
    alphas_prev: torch.Tensor  # ᾱ one index below; index 0 uses ᾱ[0], not 1.0, as the original
    sigmas: torch.Tensor  # η-scaled DDIM noise level

    def __len__(self) -> int:
        return len(self.timesteps)

    def to(self, device) -> "DdimSchedule":
        """The same schedule with its coefficient tensors on `device` (timesteps stay numpy)."""
        return DdimSchedule(self.timesteps, self.alphas.to(device), self.alphas_prev.to(device), self.sigmas.to(device))


def make_ddim_schedule(alphas_cumprod: torch.Tensor, num_steps: int, eta: float) -> DdimSchedule:
    timesteps = ddim_timesteps(num_steps, len(alphas_cumprod))
    ac = alphas_cumprod.double()
    alphas = ac[timesteps]
    alphas_prev = torch.cat([ac[:1], ac[timesteps[:-1]]])
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    return DdimSchedule(timesteps, alphas.float(), alphas_prev.float(), sigmas.float())
