"""generative-models' discretizations, σ quantisation, start scaling and img2img rule."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sd_cli.errors import UsageError
from sd_cli.sampling import sgm
from sd_cli.sampling.denoising import SamplingParams, start
from sd_cli.sampling.schedule import alphas_cumprod

TABLE = sgm.sigma_table(0.00085, 0.012, 1000)
SGM_MODEL = SimpleNamespace(family=SimpleNamespace(sampling="sgm", description="SDXL"), sigma_table=TABLE,
                            alphas_cumprod=alphas_cumprod(0.00085, 0.012))
DRAW = torch.linspace(-1, 1, 16).reshape(1, 4, 2, 2)
X0 = torch.full((1, 4, 2, 2), 0.25)


def timesteps(sigmas: torch.Tensor) -> list[int]:
    denoiser = sgm.QuantizedDenoiser(None, TABLE)
    return [denoiser.index(float(s)) for s in sigmas[:-1]]


@pytest.mark.slow
@pytest.mark.parametrize("steps", [4, 10, 20, 50])
def test_legacy_ddpm_matches_diffusers_trailing_spacing_where_steps_divide_1000(steps):
    import diffusers

    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    ours = sgm.legacy_ddpm(steps, TABLE)
    assert timesteps(ours) == scheduler.timesteps.tolist()
    assert float(ours[-1]) == 0.0
    assert torch.allclose(ours, scheduler.sigmas, rtol=1e-5)


def test_legacy_ddpm_takes_integer_parts_of_a_linspace_that_excludes_zero():
    # 1000 / 30 is not an integer: int(999 - k * 33.3)
    assert timesteps(sgm.legacy_ddpm(30, TABLE))[:4] == [999, 965, 932, 899]
    assert timesteps(sgm.legacy_ddpm(30, TABLE))[-1] == 33  # 999 - 29 * 33.3


def test_the_table_is_float32_sqrt_of_the_float64_ratio():
    a = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    expected = torch.tensor((1 - a) / a, dtype=torch.float32).sqrt()
    assert torch.equal(TABLE, expected) and TABLE.dtype == torch.float32
    assert float(TABLE[0]) == pytest.approx(0.029168, abs=1e-6) and float(TABLE[-1]) == pytest.approx(14.6146, abs=1e-4)


def test_img2img_keeps_the_strength_share_of_the_smallest_sigmas():
    sigmas = sgm.legacy_ddpm(20, TABLE)
    kept = sgm.img2img_sigmas(sigmas, 0.6)  # the reference: 11 steps from t = 549
    assert len(kept) == 12 and timesteps(kept)[0] == 549
    assert sgm.img2img_sigmas(sigmas, 0.0).tolist() == [0.0]
    assert torch.equal(sgm.img2img_sigmas(sigmas, 1.0), sigmas)


def test_turbo_runs_t_999_899_799_699():
    assert timesteps(sgm.turbo(4, TABLE)) == [999, 899, 799, 699]
    assert timesteps(sgm.turbo(1, TABLE)) == [999] and sgm.turbo(1, TABLE).tolist()[-1] == 0.0
    with pytest.raises(UsageError, match="turbo schedule runs 1 to 4 steps"):
        sgm.turbo(5, TABLE)


def test_edm_runs_from_the_demos_sigma_max_to_sigma_min():
    sigmas = sgm.edm(10, **sgm.EDM_DEMO)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 11
    assert float(sigmas[0]) == pytest.approx(14.61, rel=1e-6) and float(sigmas[-2]) == pytest.approx(0.03, rel=1e-5)
    ramp = torch.linspace(0, 1, 10)
    assert torch.allclose(sigmas[:-1], (14.61 ** (1 / 3) + ramp * (0.03 ** (1 / 3) - 14.61 ** (1 / 3))) ** 3)


def test_the_denoiser_quantises_sigma_and_feeds_the_integer_index():
    seen = {}

    def eps(x, t, alpha, sigma):
        seen.update(x=x, t=t, alpha=alpha, sigma=sigma)
        return torch.ones_like(x)

    denoiser = sgm.QuantizedDenoiser(SimpleNamespace(eps=eps), TABLE)
    sigma = float(TABLE[500]) * 1.0001  # between grid points, nearest to 500
    x = torch.full((2, 4, 2, 2), 3.0)
    out = denoiser(x, sigma)
    sigma_q = float(TABLE[500])
    assert seen["t"].tolist() == [500, 500] and seen["t"].dtype == torch.long
    assert seen["alpha"] == pytest.approx(1 / (sigma_q**2 + 1) ** 0.5, rel=1e-12)
    assert torch.allclose(seen["x"], x / (sigma_q**2 + 1) ** 0.5)
    assert torch.allclose(out, x - sigma_q)


def test_sgm_start_scales_txt2img_noise_and_follows_img2img_rule():
    params = SamplingParams(sampler="euler", steps=20)
    begin = start(SGM_MODEL, params, DRAW)
    sigma_0 = float(begin.sigmas[0])
    assert timesteps(begin.sigmas)[0] == 999
    assert torch.allclose(begin.x, DRAW * (1 + sigma_0**2) ** 0.5)
    i2i = start(SGM_MODEL, params, DRAW, X0, 0.6)
    assert len(i2i.sigmas) == 12 and torch.equal(i2i.x, X0 + DRAW * float(i2i.sigmas[0]))
    edm = start(SGM_MODEL, SamplingParams(sampler="euler_edm", steps=5), DRAW)
    assert float(edm.sigmas[0]) == pytest.approx(14.61, rel=1e-6)


def test_sgm_models_refuse_the_original_samplers_and_ldm_models_refuse_sgm_schedules():
    with pytest.raises(UsageError, match="use one of its samplers"):
        start(SGM_MODEL, SamplingParams(sampler="ddim", steps=4), DRAW)
    ldm = SimpleNamespace(family=SimpleNamespace(sampling="ldm", description="SD 1.x"),
                          alphas_cumprod=SGM_MODEL.alphas_cumprod)
    with pytest.raises(UsageError, match="schedule turbo is generative-models'"):
        start(ldm, SamplingParams(sampler="euler_a_turbo", steps=4), DRAW)
