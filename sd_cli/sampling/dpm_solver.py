"""DPM-Solver++ (2M) configured as the original `DPMSolverSampler` runs it.

Continuous time t ∈ [1/1000, 1]; log α_t is ldm's discrete schedule ½·log ᾱ, interpolated
piecewise-linearly on the grid t_i = (i+1)/1000; λ_t = log α_t − log σ_t. The original calls
`sample(steps=S, skip_type="time_uniform", method="multistep", order=2, lower_order_final=True)`
with data (x₀) prediction: S+1 times linspace(1, 0.001), a first-order first step, second-order
multistep after it, and a first-order last step when S < 15. The UNet sees t as the float
(t − 1/1000)·1000.
"""

import torch

from sd_cli.sampling.guidance import GuidedModel
from sd_cli.sampling.steps import CLEAN, NO_HOOKS, NoiseLevel, StepHooks


class DiscreteVPSchedule:
    """α_t, σ_t, λ_t of the continuous-time view of a discrete ᾱ schedule (float64 internally)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        n = len(alphas_cumprod)
        self.total = n
        self.t_grid = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)[1:]
        self.log_alpha_grid = 0.5 * torch.log(alphas_cumprod.double())

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return _interpolate(t, self.t_grid, self.log_alpha_grid)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _interpolate(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear through (xs, ys), xs ascending, extended linearly beyond the ends."""
    i = torch.searchsorted(xs, x).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _data_prediction(model: GuidedModel, x, t: torch.Tensor, ns: DiscreteVPSchedule) -> torch.Tensor:
    """x̂₀ from the guided model at continuous time t (scalar float64 tensor)."""
    alpha, sigma = float(ns.alpha(t)), float(ns.sigma(t))
    t_model = torch.full((x.shape[0],), float((t - 1.0 / ns.total) * ns.total), device=x.device)
    eps = model.eps(x, t_model, alpha, sigma)  # Python floats: no host-device copy per step
    return (x - sigma * eps) / alpha


def _first_order_update(x, x0_s, s, t, ns: DiscreteVPSchedule):
    h = ns.lambda_(t) - ns.lambda_(s)
    return float(ns.sigma(t) / ns.sigma(s)) * x - float(ns.alpha(t) * torch.expm1(-h)) * x0_s


def _second_order_update(x, x0_prev, x0_last, t_prev, t_last, t, ns: DiscreteVPSchedule):
    """Multistep DPM-Solver++(2M) from t_last to t using x̂₀ at t_prev and t_last."""
    lam_prev, lam_last, lam_t = ns.lambda_(t_prev), ns.lambda_(t_last), ns.lambda_(t)
    h, h_0 = lam_t - lam_last, lam_last - lam_prev
    d1 = float(h / h_0) * (x0_last - x0_prev)
    phi = float(ns.alpha(t) * torch.expm1(-h))
    return float(ns.sigma(t) / ns.sigma(t_last)) * x - phi * x0_last - 0.5 * phi * d1


def sample_dpm_solver(model: GuidedModel, x: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int,
                      t_start_timestep: int | None = None, hooks: StepHooks = NO_HOOKS) -> torch.Tensor:
    """S model evaluations; deterministic after x_T (η is ignored, as in the original).

    The original asserts steps >= 2; one step here is a single first-order update.
    t_start_timestep (img2img, not in the original): start at the continuous time of that DDPM
    timestep, (t + 1) / 1000, instead of 1.
    """
    if steps == 0:
        return x
    ns = DiscreteVPSchedule(alphas_cumprod)
    t_start = 1.0 if t_start_timestep is None else (t_start_timestep + 1) / ns.total
    times = torch.linspace(t_start, 1.0 / ns.total, steps + 1, dtype=torch.float64)
    x0_history = [_data_prediction(model, x, times[0], ns)]
    for step in range(1, steps + 1):
        second_order = step >= 2 and not (steps < 15 and step == steps)
        if second_order:
            x = _second_order_update(x, x0_history[-2], x0_history[-1], times[step - 2], times[step - 1], times[step], ns)
        else:
            x = _first_order_update(x, x0_history[-1], times[step - 1], times[step], ns)
        level = NoiseLevel(alpha_bar=float(ns.alpha(times[step])) ** 2) if step < steps else CLEAN
        x = hooks.end_step(x, level, step, steps)
        if step < steps:  # the last model value is never used
            x0_history = (x0_history + [_data_prediction(model, x, times[step], ns)])[-2:]
    return x
