"""The guided model as a k-diffusion denoiser: D(x; σ) → x̂₀.

A latent at noise level σ is x = x₀ + σ·ε (the variance-exploding view, k-diffusion's); the DDPM
latent the UNet was trained on is x_t = x / sqrt(σ² + 1) at the timestep t whose σ_t is σ
(sigma_schedules.sigma_to_t). So, as k-diffusion's CompVisDenoiser / CompVisVDenoiser:

    c_in = 1 / sqrt(σ² + 1),   ε = GuidedModel.eps(c_in·x, t)  (v → ε for v-models),   x̂₀ = x - σ·ε

For a v-model this is x̂₀ = x / (σ² + 1) - σ / sqrt(σ² + 1) · v, CompVisVDenoiser's c_skip/c_out.
"""

import math

import torch

from sd_cli.sampling import sigma_schedules
from sd_cli.sampling.guidance import GuidedModel


class KDenoiser:
    """D(x; σ) for one batch of prompts; σ is a Python float shared by the batch."""

    def __init__(self, model: GuidedModel, alphas_cumprod: torch.Tensor):
        self.model = model
        self.sigmas = sigma_schedules.model_sigmas(alphas_cumprod)  # [T] ascending, float64

    def timestep(self, sigma: float) -> float:
        """The UNet's (fractional) timestep for σ."""
        return sigma_schedules.sigma_to_t(sigma, self.sigmas)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """x [B, 4, h, w] at noise level σ -> x̂₀ [B, 4, h, w], in x's dtype."""
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
        t = torch.full((x.shape[0],), self.timestep(sigma), device=x.device, dtype=torch.float32)
        eps = self.model.eps(x * c_in, t, c_in, sigma * c_in)
        return x - sigma * eps


class LCMDenoiser(KDenoiser):
    """AUTOMATIC1111's LCM denoiser (LCMCompVisDenoiser): the UNet sees the nearest timestep of the
    LCM grid (19, 39, ..., 999), and x̂₀ goes through the consistency model's boundary condition

        D_LCM(x; σ) = c_skip·x + c_out·x̂₀,  c_skip = σ_d² / (τ² + σ_d²),  c_out = τ / sqrt(τ² + σ_d²)

    with τ = 10·t and σ_d = 0.5 (LCM's timestep_scaling and sigma_data). c_skip multiplies the
    latent as the sampler holds it (x₀ + σ·ε), as AUTOMATIC1111 does; diffusers' LCMScheduler
    multiplies the DDPM latent x / sqrt(σ² + 1) instead (c_skip < 1e-5 on this grid).
    """

    SIGMA_DATA = 0.5
    TIMESTEP_SCALING = 10.0

    def __init__(self, model: GuidedModel, alphas_cumprod: torch.Tensor):
        super().__init__(model, alphas_cumprod)
        self.grid_t = sigma_schedules.lcm_timesteps(self.sigmas)
        self.grid_log_sigmas = self.sigmas[self.grid_t].log()

    def timestep(self, sigma: float) -> float:
        return float(self.grid_t[(self.grid_log_sigmas - math.log(sigma)).abs().argmin()])

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        x0 = super().__call__(x, sigma)
        tau = self.timestep(sigma) * self.TIMESTEP_SCALING
        c_skip = self.SIGMA_DATA**2 / (tau**2 + self.SIGMA_DATA**2)
        c_out = tau / math.sqrt(tau**2 + self.SIGMA_DATA**2)
        return c_out * x0 + c_skip * x
