"""The x4 upscaler's low-res conditioning: the original ImageConcatWithNoiseAugmentation.

The low-res image x (in [-1, 1], pixel space) is noised to `level` on a schedule of its own (ldm's
"linear", 1e-4..0.02 over 1000 steps in x4-upscaling.yaml, not the latent's):
x_aug = sqrt(ᾱ[level])·x + sqrt(1 - ᾱ[level])·noise, and the level is the UNet's class label. Even
level 0 adds noise: sqrt(1 - ᾱ[0]) = sqrt(β₀) = 0.01. The coefficients are computed in float64 and
stored in float32, as the original's registered buffers.
"""

from dataclasses import dataclass

import numpy as np
import torch

from sd_cli.errors import UsageError

SCHEDULE_KEYS = ("linear_start", "linear_end", "timesteps", "beta_schedule")


@dataclass(frozen=True)
class NoiseAugmentation:
    sqrt_alphas_cumprod: torch.Tensor  # [T] float32
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # [T] float32
    max_noise_level: int  # the highest level the model was trained with (the scripts' UI limit)

    @classmethod
    def from_config(cls, params: dict, source: str) -> "NoiseAugmentation":
        """From low_scale_config.params: noise_schedule_config and max_noise_level."""
        schedule = dict(params.get("noise_schedule_config") or {})
        unknown = sorted(set(schedule) - set(SCHEDULE_KEYS)) + sorted(set(params) - {"noise_schedule_config",
                                                                                     "max_noise_level", "to_cuda"})
        if unknown:
            raise UsageError(f"{source}: unsupported low_scale_config params {', '.join(unknown)}")
        if schedule.get("beta_schedule", "linear") != "linear":
            raise UsageError(f"{source}: the low-res noise schedule {schedule['beta_schedule']!r} is not supported "
                             "(only ldm's linear)")
        alphas_cumprod = linear_alphas_cumprod(float(schedule.get("linear_start", 1e-4)),
                                               float(schedule.get("linear_end", 2e-2)),
                                               int(schedule.get("timesteps", 1000)))
        # on the CPU explicitly: the model is built under torch.device("meta") (models/empty.py)
        return cls(torch.tensor(np.sqrt(alphas_cumprod), dtype=torch.float32, device="cpu"),
                   torch.tensor(np.sqrt(1.0 - alphas_cumprod), dtype=torch.float32, device="cpu"),
                   int(params.get("max_noise_level", 1000)))

    def check_level(self, level: int) -> None:
        if not 0 <= level <= self.max_noise_level:
            raise UsageError(f"--noise-level {level} is out of range: this upscaler takes 0 to {self.max_noise_level} "
                             "(its max_noise_level)")

    def augment(self, low_res: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
        """low_res [B, 3, h, w] in [-1, 1] and noise like it -> x_aug [B, 3, h, w], in float32."""
        self.check_level(level)
        a = self.sqrt_alphas_cumprod[level].to(low_res.device)
        s = self.sqrt_one_minus_alphas_cumprod[level].to(low_res.device)
        return a * low_res.float() + s * noise.float()


def linear_alphas_cumprod(linear_start: float, linear_end: float, timesteps: int) -> np.ndarray:
    """ᾱ of ldm's "linear" schedule (linear in sqrt β), float64."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)
