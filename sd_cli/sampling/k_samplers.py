"""Samplers as functions over a denoiser and a σ schedule, with k-diffusion's definitions.

Every sampler has the signature

    sample_X(denoiser, x, sigmas, noise, hooks=NO_HOOKS, **options) -> x

- denoiser(x, σ) -> x̂₀ (denoiser.py); x [B, 4, h, w] starts at noise level sigmas[0]
  (txt2img: unit noise · sigmas[0]); sigmas descend and end in 0 (sigma_schedules.py).
- noise: the run's NoiseSource. Ancestral and SDE samplers draw their fresh noise with
  noise.like(x), i.e. from each image's own generator, so an image does not depend on its batch.
- hooks (steps.py): every step ends in _end_step, which hands x at σ_{i+1} to the run's
  after-step hook (inpainting's known-region blend) and then reports progress.

Notation: d = (x - x̂₀) / σ is the probability-flow ODE's derivative dx/dσ (Karras et al. 2022);
DPM-Solver++ works in t = -log σ (the half-log-SNR λ), h = t_next - t.

Where sd_cli differs from AUTOMATIC1111 (k-diffusion behind it): DPM++ SDE and DPM++ 2M SDE take
their noise from the image's generator (independent normal draws), where AUTOMATIC1111 uses a
Brownian tree seeded per image (torchsde): the same distribution and the same batch invariance,
different numbers for a seed. s_churn (Euler/Heun/DPM2) is not offered; it is 0 in
AUTOMATIC1111 by default.
"""

import math
from typing import Callable, Iterator

import numpy as np
import torch

from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.steps import NO_HOOKS, NoiseLevel, StepHooks

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def _steps(sigmas: torch.Tensor) -> Iterator[tuple[int, float, float]]:
    """(i, σ_i, σ_{i+1}) for every step."""
    values = [float(s) for s in sigmas]
    for i in range(len(values) - 1):
        yield i, values[i], values[i + 1]


def _end_step(hooks: StepHooks, x: torch.Tensor, i: int, sigmas: torch.Tensor) -> torch.Tensor:
    """The end of step i, σ_i -> σ_{i+1}: x after the run's hooks."""
    return hooks.end_step(x, NoiseLevel(sigma=float(sigmas[i + 1])), i + 1, len(sigmas) - 1)


def to_d(x: torch.Tensor, sigma: float, x0: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dσ = (x - x̂₀) / σ."""
    return (x - x0) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up): step deterministically to σ_down, then add σ_up of fresh noise, so that
    σ_down² + σ_up² = σ_next²; η = 1 is DDPM's ancestral step, η = 0 none."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def _lambda_mid(sigma: float, sigma_next: float, r: float = 0.5) -> float:
    """σ at fraction r of the way from σ to σ_next in t = -log σ."""
    return math.exp((1 - r) * math.log(sigma) + r * math.log(sigma_next))


def _dpm_solver_1(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """First-order DPM-Solver++ (= DDIM = Euler) with data prediction x0: from σ to σ_next."""
    return x0 + (sigma_next / sigma) * (x - x0)


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS):
    """Euler steps on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    for i, sigma, sigma_next in _steps(sigmas):
        x = x + to_d(x, sigma, denoiser(x, sigma)) * (sigma_next - sigma)
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS,
                           eta: float = 1.0):
    """Euler step down to σ_down, then σ_up of fresh noise ("Euler a")."""
    for i, sigma, sigma_next in _steps(sigmas):
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoiser(x, sigma)) * (sigma_down - sigma)
        if sigma_up:
            x = x + noise.like(x) * sigma_up
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS):
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); an Euler step to σ = 0."""
    for i, sigma, sigma_next in _steps(sigmas):
        d = to_d(x, sigma, denoiser(x, sigma))
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, denoiser(x_2, sigma_next))
            x = x + (d + d_2) / 2 * dt
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_dpm_2(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS):
    """DPM-Solver-2 style midpoint steps, the midpoint halfway in log σ; an Euler step to σ = 0."""
    for i, sigma, sigma_next in _steps(sigmas):
        d = to_d(x, sigma, denoiser(x, sigma))
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            sigma_mid = _lambda_mid(sigma, sigma_next)
            x_2 = x + d * (sigma_mid - sigma)
            x = x + to_d(x_2, sigma_mid, denoiser(x_2, sigma_mid)) * (sigma_next - sigma)
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS,
                           eta: float = 1.0):
    """DPM2 midpoint step down to σ_down, then σ_up of fresh noise ("DPM2 a")."""
    for i, sigma, sigma_next in _steps(sigmas):
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoiser(x, sigma))
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = _lambda_mid(sigma, sigma_down)
            x_2 = x + d * (sigma_mid - sigma)
            x = x + to_d(x_2, sigma_mid, denoiser(x_2, sigma_mid)) * (sigma_down - sigma)
            if sigma_up:
                x = x + noise.like(x) * sigma_up
        x = _end_step(hooks, x, i, sigmas)
    return x


def lms_coefficient(order: int, sigmas: list[float], i: int, j: int) -> float:
    """∫ from σ_i to σ_{i+1} of the Lagrange basis polynomial through σ_i, ..., σ_{i-order+1}
    that is 1 at σ_{i-j}; exact polynomial integration (k-diffusion integrates numerically)."""
    others = [sigmas[i - k] for k in range(order) if k != j]
    numerator = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
    basis = numerator / np.prod([sigmas[i - j] - s for s in others])
    antiderivative = basis.integ()
    return float(antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i]))


@torch.no_grad()
def sample_lms(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS,
               order: int = 4):
    """Linear multistep: the last `order` derivatives integrated with Lagrange polynomials in σ."""
    values = [float(s) for s in sigmas]
    derivatives: list[torch.Tensor] = []
    for i, sigma, _ in _steps(sigmas):
        derivatives = (derivatives + [to_d(x, sigma, denoiser(x, sigma))])[-order:]
        current = len(derivatives)
        coefficients = [lms_coefficient(current, values, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(derivatives)))
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep with data prediction; first-order
    on the first step and on the step to σ = 0."""
    x0_prev, h_prev = None, None
    for i, sigma, sigma_next in _steps(sigmas):
        x0 = denoiser(x, sigma)
        if sigma_next == 0:
            x = x0
        else:
            h = math.log(sigma / sigma_next)
            if x0_prev is None:
                x = _dpm_solver_1(x, x0, sigma, sigma_next)
            else:
                r = h_prev / h
                x = _dpm_solver_1(x, (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev, sigma, sigma_next)
            h_prev = h
        x0_prev = x0
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS,
                        eta: float = 1.0):
    """DPM-Solver++(2M) SDE, midpoint variant (k-diffusion's sample_dpmpp_2m_sde)."""
    x0_prev, h_prev = None, None
    for i, sigma, sigma_next in _steps(sigmas):
        x0 = denoiser(x, sigma)
        if sigma_next == 0:
            x = x0
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            data_weight = -math.expm1(-h - eta_h)
            x = (sigma_next / sigma) * math.exp(-eta_h) * x + data_weight * x0
            if x0_prev is not None:
                x = x + 0.5 * data_weight * (h / h_prev) * (x0 - x0_prev)
            if eta:
                x = x + noise.like(x) * sigma_next * math.sqrt(-math.expm1(-2 * eta_h))
            h_prev = h
        x0_prev = x0
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS,
                     eta: float = 1.0, r: float = 0.5):
    """DPM-Solver++ SDE (k-diffusion's sample_dpmpp_sde): two ancestral DPM-Solver++ stages per step,
    the first to the midpoint in log σ; an Euler step to σ = 0. Noise: see the module docstring."""
    for i, sigma, sigma_next in _steps(sigmas):
        x0 = denoiser(x, sigma)
        if sigma_next == 0:
            x = x + to_d(x, sigma, x0) * (sigma_next - sigma)
        else:
            sigma_mid = _lambda_mid(sigma, sigma_next, r)
            sigma_down, sigma_up = ancestral_step(sigma, sigma_mid, eta)
            x_2 = _dpm_solver_1(x, x0, sigma, sigma_down)
            if sigma_up:
                x_2 = x_2 + noise.like(x) * sigma_up
            x0_2 = denoiser(x_2, sigma_mid)
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            x = _dpm_solver_1(x, (1 - 1 / (2 * r)) * x0 + (1 / (2 * r)) * x0_2, sigma, sigma_down)
            if sigma_up:
                x = x + noise.like(x) * sigma_up
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS,
                              eta: float = 1.0):
    """DPM-Solver++(2S) down to σ_down, the intermediate point halfway in log σ, then σ_up of fresh
    noise ("DPM++ 2S a"); an Euler step to σ = 0."""
    for i, sigma, sigma_next in _steps(sigmas):
        x0 = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, x0) * (sigma_down - sigma)
        else:
            sigma_mid = _lambda_mid(sigma, sigma_down)
            x_2 = _dpm_solver_1(x, x0, sigma, sigma_mid)
            x = _dpm_solver_1(x, denoiser(x_2, sigma_mid), sigma, sigma_down)
        if sigma_up:
            x = x + noise.like(x) * sigma_up
        x = _end_step(hooks, x, i, sigmas)
    return x


def _unipc_coefficients(rks: list[float], hh: float, b_h: float, order: int) -> np.ndarray:
    """Solve UniPC's order conditions Σ_k ρ_k r_k^(i-1) = i!·g_i(hh)/B(h), i = 1..order (float64),
    g_1 = expm1(hh)/hh - 1, g_{i+1} = g_i/hh - 1/(i+1)!  (Zhao et al. 2023, Algorithm 2)."""
    phi = math.expm1(hh) / hh - 1
    factorial = 1
    rows, rhs = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        rhs.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1 / factorial
    return np.linalg.solve(np.array(rows), np.array(rhs))


def _unipc_update(x, x0_history: list, sigma_history: list[float], sigma_next: float, order: int,
                  variant: str, x0_new: torch.Tensor | None = None) -> torch.Tensor:
    """One UniP (x0_new None) or UniC (x0_new = x̂₀ at the predicted point) step of UniPC with data
    prediction, B(h) = hh ("bh1") or expm1(hh) ("bh2"), from σ = sigma_history[-1] to sigma_next.

    x0_history / sigma_history: the last `order` model values and their σ, oldest first.
    """
    sigma = sigma_history[-1]
    m0 = x0_history[-1]
    h = math.log(sigma / sigma_next)  # λ = -log σ
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks = [math.log(sigma / sigma_history[-1 - k]) / h for k in range(1, order)]  # (λ_k - λ_0) / h
    d1s = [(x0_history[-1 - k] - m0) / rk for k, rk in zip(range(1, order), rks)]
    x_next = (sigma_next / sigma) * x - math.expm1(hh) * m0
    if x0_new is None:  # predictor: the order - 1 previous differences (order 2: ρ = 1/2, as UniPC's code)
        if not d1s:
            return x_next
        rhos = [0.5] if order == 2 else _unipc_coefficients(rks, hh, b_h, order - 1).tolist()
        return x_next - b_h * sum(rho * d for rho, d in zip(rhos, d1s))
    rhos = [0.5] if order == 1 else _unipc_coefficients(rks + [1.0], hh, b_h, order).tolist()
    correction = sum(rho * d for rho, d in zip(rhos[:-1], d1s)) + rhos[-1] * (x0_new - m0)
    return x_next - b_h * correction


@torch.no_grad()
def sample_unipc(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS,
                 order: int = 3, variant: str = "bh1"):
    """UniPC (Zhao et al. 2023): multistep predictor UniP with the corrector UniC after every model
    evaluation (no extra evaluations), data prediction, warm-up orders 1, 2, ... and lower orders on
    the last steps. AUTOMATIC1111's defaults: order 3, B(h) "bh1". The step to σ = 0 returns x̂₀."""
    x0_history: list[torch.Tensor] = []
    sigma_history: list[float] = []
    last_x, last_order = None, 0
    total = len(sigmas) - 1
    for i, sigma, sigma_next in _steps(sigmas):
        x0 = denoiser(x, sigma)
        if last_x is not None:  # correct the point the predictor reached, with the model value there
            x = _unipc_update(last_x, x0_history, sigma_history, sigma, last_order, variant, x0_new=x0)
        x0_history = (x0_history + [x0])[-order:]
        sigma_history = (sigma_history + [sigma])[-order:]
        step_order = min(order, total - i, i + 1)
        last_x, last_order = x, step_order
        if sigma_next == 0:
            x = x0
        else:
            x = _unipc_update(x, x0_history[-step_order:], sigma_history[-step_order:], sigma_next, step_order, variant)
        x = _end_step(hooks, x, i, sigmas)
    return x


@torch.no_grad()
def sample_lcm(denoiser: Denoiser, x, sigmas, noise: NoiseSource, hooks: StepHooks = NO_HOOKS):
    """Latent Consistency Model sampling: jump to x̂₀, re-noise to the next σ with fresh noise.
    Run it with the LCM denoiser (denoiser.LCMDenoiser) as AUTOMATIC1111 does."""
    for i, sigma, sigma_next in _steps(sigmas):
        x = denoiser(x, sigma)
        if sigma_next > 0:
            x = x + noise.like(x) * sigma_next
        x = _end_step(hooks, x, i, sigmas)
    return x
