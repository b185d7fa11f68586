"""What every sampler does at the end of a step, whatever its family.

A step ends with x at a new noise level. The run may change x there (after_step: inpainting's
known-region blend, and any later per-step control) and then hears how far it is (progress). DDIM,
PLMS, DPM-Solver and the k-diffusion samplers all end their steps through StepHooks.end_step, so a
hook written once works with every sampler.
"""

from dataclasses import dataclass
from typing import Callable

import torch

Progress = Callable[[int, int], None]  # (steps done, steps total)


@dataclass(frozen=True)
class NoiseLevel:
    """Where x stands after a step: ᾱ for the original samplers, σ for the k-diffusion ones; neither
    (or σ = 0) once x is clean."""

    alpha_bar: "torch.Tensor | float | None" = None  # x = √ᾱ·x₀ + √(1-ᾱ)·ε
    sigma: float = 0.0  # x = x₀ + σ·ε

    def noised(self, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x₀ forward-diffused to this level with the draw eps."""
        if self.alpha_bar is not None:
            return self.alpha_bar ** 0.5 * x0 + (1 - self.alpha_bar) ** 0.5 * eps
        return x0 + self.sigma * eps if self.sigma > 0 else x0


CLEAN = NoiseLevel()

# Called after every step with the new x and its noise level; returns x, possibly changed.
AfterStep = Callable[[torch.Tensor, NoiseLevel], torch.Tensor]


@dataclass(frozen=True)
class StepHooks:
    progress: Progress | None = None
    after_step: AfterStep | None = None

    def end_step(self, x: torch.Tensor, level: NoiseLevel, done: int, total: int) -> torch.Tensor:
        """x after the step's hook (the hook first, so progress counts a finished step)."""
        if self.after_step is not None:
            x = self.after_step(x, level)
        if self.progress is not None:
            self.progress(done, total)
        return x


NO_HOOKS = StepHooks()
