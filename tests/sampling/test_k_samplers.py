"""k-diffusion samplers and σ schedules against independent implementations, on the tiny checkpoints.

The reference (parity_reference.Reference) is diffusers' UNet and VAE and transformers' text
encoder built from the same checkpoint; the samplers are diffusers' schedulers in the configuration
that is the k-diffusion / AUTOMATIC1111 algorithm, in a plain loop written here. Fresh noise: the
schedulers' `randn_tensor` (and DPMSolverSDE's Brownian noise sampler) are replaced by draws from
each image's own generator in sd_cli's order (first draw x_T, then one per request), so stochastic
samplers are compared exactly.

Where diffusers (0.42) differs from k-diffusion / AUTOMATIC1111, what sd_cli does and how it is tested:
- Between timesteps diffusers interpolates σ linearly (np.interp), k-diffusion linearly in log σ.
  The discrete schedule is compared at 10 steps, where every timestep is an integer (999, 888, ..., 0).
- DPMSolverMultistep and KDPM2 round the UNet's timestep for Karras σ; k-diffusion (and sd_cli)
  feed the fractional one. The reference calls the UNet at diffusers' own unrounded _sigma_to_t.
- DPMSolverMultistep's and UniPC's timestep_spacing="linspace" is the SGM-uniform schedule (n + 1
  timesteps from 999 to 0 without the last), not k-diffusion's discrete one; custom timesteps
  999, 888, ..., 0 give the discrete one.
- DPM2 and DPM2 a: AUTOMATIC1111 builds steps + 1 σ and drops the next-to-last; diffusers does not.
  The sampler functions are compared on diffusers' grid, the dropping in the schedule tests.
- UniPC: diffusers' B(h) = "bh1" with a last σ of 0 gives NaN (B(h)·0 with B(h) = -h = -inf); sd_cli
  returns x̂₀ on the step to σ = 0 (the first-order limit). bh1 is compared on diffusers' grid ending
  at σ_min (AUTOMATIC1111's UniPC grid ends there too), the step to 0 with bh2.
- DPM++ 2S a has no diffusers scheduler: the reference does each step with DPMSolverSinglestep's
  DPM-Solver++(2S) from σ to σ_down through the log-σ midpoint, then adds σ_up of noise.
- DPMSolverSDEScheduler imports torchsde only for its Brownian tree, replaced here; a stub module
  lets it import without torchsde.
- LCM: diffusers' LCMScheduler applies c_skip to the DDPM latent, AUTOMATIC1111 (and sd_cli) to the
  sampler's latent; c_skip < 1e-5 on the grid, far below the tolerance.
- Euler a and the SDE solvers: diffusers also draws noise on the last step (multiplied by 0).
"""

import inspect
import math
import re
import sys
import types

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from references import smooth_image  # noqa: E402
from parity_reference import BETAS, PROMPTS, SIZE, Generators, Model, assert_parity  # noqa: E402

from sd_cli.pipelines.conditioning import guided_model  # noqa: E402
from sd_cli.pipelines.img2img import img2img  # noqa: E402
from sd_cli.pipelines.txt2img import txt2img  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams  # noqa: E402
from sd_cli.sampling import k_samplers, samplers, sigma_schedules  # noqa: E402
from sd_cli.sampling.denoiser import KDenoiser  # noqa: E402
from sd_cli.sampling.noise import NoiseSource  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning",
                                        "ignore:__array_wrap__ must accept context:DeprecationWarning")
LATENT = (4, SIZE // 8, SIZE // 8)
DISCRETE_10 = list(range(999, -1, -111))  # the discrete schedule's timesteps for 10 steps


pytestmark = [pytestmark, pytest.mark.usefixtures("one_thread")]  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return Model(tmp_path_factory.mktemp("k-sd1"), "sd1")


@pytest.fixture(scope="module")
def sd2v(tmp_path_factory):
    return Model(tmp_path_factory.mktemp("k-sd2v"), "sd2-v")


@pytest.fixture(params=["sd1", "sd2v"])
def model(request):
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------- the reference loop


def prediction(model: Model) -> str:
    return "v_prediction" if model.ref.v else "epsilon"


def unrounded_t(sched, sigma) -> float:
    """diffusers' own σ → timestep (log-σ interpolation), without the rounding some schedulers apply."""
    log_sigmas = np.log(((1 - sched.alphas_cumprod) / sched.alphas_cumprod).numpy() ** 0.5)
    return float(sched._sigma_to_t(np.array(float(sigma)), log_sigmas))


class Ref:
    """The reference model's guided output at a float timestep, counting UNet calls."""

    def __init__(self, model: Model, prompts, scale):
        self.ref, self.scale = model.ref, scale
        self.cond = model.ref.encode_text(prompts)
        self.uncond = model.ref.encode_text([""] * len(prompts))
        self.calls = 0

    @torch.no_grad()
    def __call__(self, x, t):
        self.calls += 1
        t = torch.full((x.shape[0],), float(t))
        both = self.ref.unet(torch.cat([x, x]), torch.cat([t, t]),
                             encoder_hidden_states=torch.cat([self.uncond, self.cond])).sample
        uncond, cond = both.chunk(2)
        return uncond + self.scale * (cond - uncond)


def first_sigma(sched) -> float:
    """σ of the first timestep (LCMScheduler keeps no σ list)."""
    if hasattr(sched, "sigmas"):
        return float(sched.sigmas[0])
    a = float(sched.alphas_cumprod[int(sched.timesteps[0])])
    return math.sqrt((1 - a) / a)


@torch.no_grad()
def run_scheduler(ref: Ref, sched, x, vp: bool = False, unet_t=None):
    """The diffusers denoising loop. x: the sampler's latent at the first σ (x₀ + σ·ε); VP
    schedulers (DPM-Solver, UniPC, LCM) hold x / sqrt(σ² + 1) instead. Returns the final latent."""
    if vp:
        x = x / math.sqrt(first_sigma(sched) ** 2 + 1)
    for i, t in enumerate(sched.timesteps):
        model_t = unet_t(sched, i) if unet_t else t
        x = sched.step(ref(sched.scale_model_input(x, t), model_t), t, x).prev_sample
    return x


@pytest.fixture
def patched_noise(monkeypatch):
    """Route every scheduler's randn_tensor to a Generators source set by the test."""
    source = {}

    def randn_tensor(shape, *args, **kwargs):
        return source["noise"].draw()

    for module in ("scheduling_euler_ancestral_discrete", "scheduling_k_dpm_2_ancestral_discrete",
                   "scheduling_dpmsolver_multistep", "scheduling_lcm"):
        monkeypatch.setattr(f"diffusers.schedulers.{module}.randn_tensor", randn_tensor)
    return source


def dpmsolver_sde_class(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsde", sys.modules.get("torchsde", types.ModuleType("torchsde")))
    from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDEScheduler

    return DPMSolverSDEScheduler


# ---------------------------------------------------------------- whole txt2img runs through the registry


def euler(p, **kw):
    return diffusers.EulerDiscreteScheduler(**BETAS, timestep_spacing="linspace", prediction_type=p, **kw)


def dpmpp(p, timesteps=None, **kw):
    sched = diffusers.DPMSolverMultistepScheduler(**BETAS, solver_order=2, lower_order_final=True,
                                                  final_sigmas_type="zero", timestep_spacing="linspace",
                                                  prediction_type=p, **kw)
    return sched, timesteps


def unrounded(sched, i):
    return unrounded_t(sched, sched.sigmas[i])


# name, steps, scheduler factory (prediction type -> scheduler, or (scheduler, custom timesteps)), VP?, UNet t
CASES = {
    "euler": (10, lambda p: euler(p), False, None),
    "euler_karras": (10, lambda p: euler(p, use_karras_sigmas=True), False, None),
    "euler_exponential": (10, lambda p: euler(p, use_exponential_sigmas=True), False, None),
    "euler_a": (10, lambda p: diffusers.EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="linspace",
                                                                        prediction_type=p), False, None),
    "heun": (10, lambda p: diffusers.HeunDiscreteScheduler(**BETAS, timestep_spacing="linspace",
                                                           prediction_type=p), False, None),
    "heun_karras": (10, lambda p: diffusers.HeunDiscreteScheduler(**BETAS, timestep_spacing="linspace",
                                                                  use_karras_sigmas=True, prediction_type=p),
                    False, None),
    "lms": (10, lambda p: diffusers.LMSDiscreteScheduler(**BETAS, timestep_spacing="linspace",
                                                         prediction_type=p), False, None),
    "lms_karras": (10, lambda p: diffusers.LMSDiscreteScheduler(**BETAS, timestep_spacing="linspace",
                                                                use_karras_sigmas=True, prediction_type=p),
                   False, None),
    "dpmpp_2m": (10, lambda p: dpmpp(p, DISCRETE_10, algorithm_type="dpmsolver++"), True, None),
    "dpmpp_2m_karras": (10, lambda p: dpmpp(p, algorithm_type="dpmsolver++", use_karras_sigmas=True), True,
                        unrounded),
    "dpmpp_2m_sgm_uniform": (9, lambda p: dpmpp(p, algorithm_type="dpmsolver++"), True, None),
    "dpmpp_2m_sde": (10, lambda p: dpmpp(p, DISCRETE_10, algorithm_type="sde-dpmsolver++"), True, None),
    "dpmpp_2m_sde_karras": (10, lambda p: dpmpp(p, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True),
                            True, unrounded),
    "lcm": (8, lambda p: (diffusers.LCMScheduler(**BETAS, prediction_type=p), list(range(999, 0, -140))), True,
            None),
}


def reference_txt2img(model: Model, name: str, seeds, scheduler):
    steps, _, vp, unet_t = CASES[name]
    sched, timesteps = scheduler if isinstance(scheduler, tuple) else (scheduler, None)
    if timesteps is None:
        sched.set_timesteps(steps)
    else:
        sched.set_timesteps(timesteps=timesteps)
    ref = Ref(model, PROMPTS[:len(seeds)], 5.0)
    noise = Generators(seeds)
    x = noise.draw() * first_sigma(sched)
    return ref, noise, sched, (lambda: model.ref.decode(run_scheduler(ref, sched, x, vp, unet_t)))


@pytest.mark.parametrize("name", CASES)
def test_txt2img_against_diffusers(model, name, patched_noise, monkeypatch):
    steps, factory, _, _ = CASES[name]
    ref, noise, sched, run = reference_txt2img(model, name, [42], factory(prediction(model)))
    patched_noise["noise"] = noise
    theirs = run()
    model.unet_calls.clear()
    ours = txt2img(model.ours, PROMPTS[:1], [""], [42], SamplingParams(sampler=name, steps=steps, scale=5.0),
                            SIZE, SIZE)
    assert_parity(ours, theirs)
    assert len(model.unet_calls) == ref.calls


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_sde_karras"])
def test_txt2img_dpmpp_sde_against_diffusers(model, name, monkeypatch):
    """DPMSolverSDEScheduler is k-diffusion's sample_dpmpp_sde; its noise sampler draws from the generators."""
    scheduler_class = dpmsolver_sde_class(monkeypatch)
    sched = scheduler_class(**BETAS, timestep_spacing="linspace", prediction_type=prediction(model),
                            use_karras_sigmas=name.endswith("karras"))
    sched.set_timesteps(10)
    ref = Ref(model, PROMPTS[:1], 5.0)
    noise = Generators([42])
    x = noise.draw() * float(sched.sigmas[0])
    sched.noise_sampler = lambda sigma, sigma_next: noise.draw()
    theirs = model.ref.decode(run_scheduler(ref, sched, x))
    model.unet_calls.clear()
    ours = txt2img(model.ours, PROMPTS[:1], [""], [42], SamplingParams(sampler=name, steps=10, scale=5.0),
                            SIZE, SIZE)
    assert_parity(ours, theirs)
    assert len(model.unet_calls) == ref.calls == 19


# ---------------------------------------------------------------- sampler functions on diffusers' own σ grid


@torch.inference_mode()
def ours_on_grid(model: Model, function, sigmas, seeds, **options):
    guided = guided_model(model.ours, PROMPTS[:len(seeds)], [""] * len(seeds), 5.0, (SIZE, SIZE))
    noise = NoiseSource(seeds)
    x = noise.draw(LATENT, model.ours.device) * float(sigmas[0])
    denoiser = KDenoiser(guided, model.ours.alphas_cumprod)
    return model.ours.decode_latents(function(denoiser, x, torch.as_tensor(sigmas, dtype=torch.float64), noise,
                                              **options))


def discrete_sigmas(model: Model, steps: int) -> torch.Tensor:
    return sigma_schedules.discrete(steps, sigma_schedules.model_sigmas(model.ours.alphas_cumprod))


@pytest.mark.parametrize("function, scheduler_class, calls", [
    (k_samplers.sample_dpm_2, diffusers.KDPM2DiscreteScheduler, 19),
    (k_samplers.sample_dpm_2_ancestral, diffusers.KDPM2AncestralDiscreteScheduler, 19),
])
def test_dpm2_against_diffusers(model, function, scheduler_class, calls, patched_noise):
    sched = scheduler_class(**BETAS, timestep_spacing="linspace", prediction_type=prediction(model))
    sched.set_timesteps(10)
    ref = Ref(model, PROMPTS[:2], 5.0)
    noise = patched_noise["noise"] = Generators([3, 4])
    x = noise.draw() * float(sched.sigmas[0])
    theirs = model.ref.decode(run_scheduler(ref, sched, x))
    model.unet_calls.clear()
    ours = ours_on_grid(model, function, discrete_sigmas(model, 10), [3, 4])
    assert_parity(ours, theirs, batch=2)
    assert len(model.unet_calls) == ref.calls == calls


@pytest.mark.parametrize("variant, final", [("bh1", "sigma_min"), ("bh2", "zero")])
def test_unipc_against_diffusers(model, variant, final):
    """Order 3 (AUTOMATIC1111's default) with the corrector after every evaluation, on diffusers'
    linspace grid (999, 888, ..., 111) ending at σ_min (bh1) or at 0 (bh2)."""
    sched = diffusers.UniPCMultistepScheduler(**BETAS, solver_order=3, solver_type=variant, lower_order_final=True,
                                              timestep_spacing="linspace", final_sigmas_type=final,
                                              prediction_type=prediction(model))
    sched.set_timesteps(9)
    ref = Ref(model, PROMPTS[:1], 5.0)
    x = Generators([21]).draw() * float(sched.sigmas[0])
    theirs_latent = run_scheduler(ref, sched, x, vp=True)
    if final == "sigma_min":  # back from the DDPM latent at σ_min to x₀ + σ·ε
        theirs_latent = theirs_latent * math.sqrt(float(sched.sigmas[-1]) ** 2 + 1)
    theirs = model.ref.decode(theirs_latent)
    ours = ours_on_grid(model, k_samplers.sample_unipc, sched.sigmas.double(), [21], order=3, variant=variant)
    assert_parity(ours, theirs)


@torch.no_grad()
def reference_dpmpp_2s_ancestral(model: Model, ref: Ref, sigmas: list[float], noise: Generators):
    """Per step: DPMSolverSinglestep's second-order DPM-Solver++(2S) (midpoint) from σ to σ_down through
    sqrt(σ·σ_down), then σ_up of fresh noise; the step to σ = 0 is its first-order update."""
    x = noise.draw() * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        grid = [sigma, math.sqrt(sigma * sigma_down), sigma_down] if sigma_down > 0 else [sigma, 0.0]
        sched = diffusers.DPMSolverSinglestepScheduler(**BETAS, solver_order=2, algorithm_type="dpmsolver++",
                                                       solver_type="midpoint", lower_order_final=False,
                                                       final_sigmas_type="sigma_min",
                                                       prediction_type=prediction(model))
        sched.set_timesteps(len(grid) - 1)
        sched.sigmas = torch.tensor(grid, dtype=torch.float32)
        assert sched.order_list == [1, 2][:len(grid) - 1]
        x = x / math.sqrt(sigma**2 + 1)
        for i, t in enumerate(sched.timesteps):
            x = sched.step(ref(x, unrounded_t(sched, grid[i])), t, x).prev_sample
        x = x * math.sqrt(sigma_down**2 + 1) + noise.draw() * sigma_up
    return x


def test_dpmpp_2s_ancestral_against_diffusers_steps(model):
    sigmas = discrete_sigmas(model, 10)
    ref = Ref(model, PROMPTS[:2], 5.0)
    theirs = model.ref.decode(reference_dpmpp_2s_ancestral(model, ref, sigmas.tolist(), Generators([5, 6])))
    model.unet_calls.clear()
    ours = ours_on_grid(model, k_samplers.sample_dpmpp_2s_ancestral, sigmas, [5, 6])
    assert_parity(ours, theirs, batch=2)
    assert len(model.unet_calls) == ref.calls == 19


# ---------------------------------------------------------------- img2img, batches


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m_karras"])
def test_img2img_is_diffusers_img2img(model, name):
    """strength s: t_enc = int(s · steps) steps from sigmas[steps - t_enc], the image latent plus each
    image's first draw times that σ; diffusers' img2img starts at the same index with the same noise."""
    steps, factory, vp, unet_t = CASES[name]
    sched, timesteps = (lambda s: s if isinstance(s, tuple) else (s, None))(factory(prediction(model)))
    sched.set_timesteps(steps)
    start = steps - int(0.6 * steps)
    sched.set_begin_index(start)
    ref = Ref(model, PROMPTS, 5.0)
    image = smooth_image(SIZE)
    x = model.ref.encode_image(image).expand(2, -1, -1, -1) + Generators([8, 9]).draw() * float(sched.sigmas[start])
    if vp:
        x = x / math.sqrt(float(sched.sigmas[start]) ** 2 + 1)
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps[start:], start):
            x = sched.step(ref(sched.scale_model_input(x, t), unet_t(sched, i) if unet_t else t), t, x).prev_sample
    theirs = model.ref.decode(x)
    model.unet_calls.clear()
    ours = img2img(model.ours, image, PROMPTS, ["", ""], [8, 9],
                            SamplingParams(sampler=name, steps=steps, scale=5.0), 0.6)
    assert_parity(ours, theirs, batch=2)
    assert len(model.unet_calls) == ref.calls == 6


@pytest.mark.parametrize("name", ["euler_a", "dpmpp_sde", "lcm"])
def test_ancestral_noise_is_batch_invariant(sd2v, name):
    """Image 2 of a batch is the image rendered alone with its seed: fresh noise comes from its generator."""
    params = SamplingParams(sampler=name, steps=6, scale=4.0)
    batch = txt2img(sd2v.ours, PROMPTS, ["", ""], [100, 101], params, SIZE, SIZE)
    alone = txt2img(sd2v.ours, PROMPTS[1:], [""], [101], params, SIZE, SIZE)
    assert (batch[1] - alone[0]).abs().max() < 1e-4  # batched kernels round differently, nothing more
    assert (batch[0] - batch[1]).abs().max() > 1e-2


# ---------------------------------------------------------------- σ schedules


def sd_sigmas() -> torch.Tensor:
    """σ_t of Stable Diffusion's "scaled linear" β (0.00085 .. 0.012), computed here in float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    ac = np.cumprod(1 - betas)
    return torch.tensor(np.sqrt((1 - ac) / ac))


def test_schedules_by_hand():
    s = sd_sigmas()
    hi, lo = float(s[-1]), float(s[0])
    assert hi == pytest.approx(14.6146, abs=1e-4) and lo == pytest.approx(0.029168, abs=1e-6)

    def between(t: float) -> float:  # log σ interpolated between the neighbouring timesteps
        low = math.floor(t)
        return math.exp((1 - (t - low)) * math.log(s[low]) + (t - low) * math.log(s[low + 1]))

    expected = {
        "discrete": (4, [hi, float(s[666]), float(s[333]), lo, 0]),  # t = linspace(999, 0, 4)
        "karras": (3, [hi, ((hi ** (1 / 7) + lo ** (1 / 7)) / 2) ** 7, lo, 0]),  # halfway in σ^(1/ρ)
        "exponential": (3, [hi, math.sqrt(hi * lo), lo, 0]),  # halfway in log σ
        "sgm_uniform": (4, [hi, between(749.25), between(499.5), between(249.75), 0]),  # linspace(999, 0, 5)[:-1]
    }
    for name, (steps, values) in expected.items():
        assert sigma_schedules.SCHEDULES[name](steps, s).tolist() == pytest.approx(values, rel=1e-12), name


def test_discard_penultimate_and_lcm_grid():
    s = sd_sigmas()
    ac = 1 / (1 + s**2)
    dropped = sigma_schedules.make_sigmas("discrete", 9, ac, discard_penultimate=True)
    assert dropped.tolist() == pytest.approx([*s[list(range(999, 0, -111))].tolist(), 0], rel=1e-9)
    assert dropped.tolist() == pytest.approx(sigma_schedules.sgm_uniform(9, s).tolist(), rel=1e-12)
    assert sigma_schedules.lcm(8, s).tolist() == pytest.approx([*s[list(range(999, 0, -140))].tolist(), 0], rel=1e-12)
    # 4 LCM steps: grid indices 49, 32.67, 16.33, 0 -> log σ between grid points t = 19 + 20·index
    grid = s[19::20]
    expected_1 = math.exp(math.log(grid[32]) + (2 / 3) * (math.log(grid[33]) - math.log(grid[32])))
    assert float(sigma_schedules.lcm(4, s)[1]) == pytest.approx(expected_1, rel=1e-12)


def test_sigma_timestep_round_trip():
    s = sd_sigmas()
    assert sigma_schedules.sigma_to_t(float(s[500]), s) == pytest.approx(500, abs=1e-9)
    assert sigma_schedules.sigma_to_t(math.sqrt(float(s[10] * s[11])), s) == pytest.approx(10.5, abs=1e-9)
    assert sigma_schedules.sigma_to_t(100.0, s) == 999 and sigma_schedules.sigma_to_t(1e-3, s) == 0
    t = torch.tensor([0.0, 3.25, 998.5, 999.0], dtype=torch.float64)
    assert [sigma_schedules.sigma_to_t(float(v), s) for v in sigma_schedules.t_to_sigma(t, s)] == pytest.approx(t.tolist())


@pytest.mark.parametrize("steps", [10, 7])
def test_schedules_match_diffusers(sd1, steps):
    """On the model's own ᾱ (the checkpoint's buffer; diffusers recomputes it in float32)."""
    ours = sigma_schedules.model_sigmas(sd1.ours.alphas_cumprod)
    for schedule, kwargs in [("karras", {"use_karras_sigmas": True}), ("exponential", {"use_exponential_sigmas": True})]:
        sched = euler("epsilon", **kwargs)
        sched.set_timesteps(steps)
        assert torch.allclose(sigma_schedules.SCHEDULES[schedule](steps, ours).float(), sched.sigmas, rtol=2e-6), schedule
    sched = euler("epsilon")
    sched.set_timesteps(10)  # integer timesteps: diffusers' linear-in-σ interpolation is not involved
    assert torch.allclose(sigma_schedules.discrete(10, ours).float(), sched.sigmas, rtol=2e-6)
    sched, _ = dpmpp("epsilon", algorithm_type="dpmsolver++")
    sched.set_timesteps(9)
    assert torch.allclose(sigma_schedules.sgm_uniform(9, ours).float(), sched.sigmas, rtol=2e-6)


# ---------------------------------------------------------------- samplers on a denoiser with a known answer


S_DATA = 0.5  # data ~ N(0, S_DATA²): D(x; σ) = x·s²/(s² + σ²) exactly, and the ODE maps x_T to x_T·s/sqrt(s² + σ_T²)


def gaussian_denoiser(x, sigma):
    return x * S_DATA**2 / (S_DATA**2 + sigma**2)


# relative error after 100 Karras steps; the higher-order methods are limited by their last step,
# x̂₀ at σ_min (relative error σ_min²/2s² = 1.7e-3)
DETERMINISTIC = {"sample_euler": 0.03, "sample_heun": 3e-3, "sample_lms": 3e-3, "sample_dpm_2": 3e-3,
                 "sample_dpmpp_2m": 3e-3, "sample_unipc": 3e-3}


@pytest.mark.parametrize("function", DETERMINISTIC)
def test_deterministic_samplers_solve_the_ode(function):
    sigmas = sigma_schedules.karras(100, sd_sigmas())
    x_t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = getattr(k_samplers, function)(gaussian_denoiser, x_t * float(sigmas[0]), sigmas, NoiseSource([0]))
    exact = x_t * float(sigmas[0]) * S_DATA / math.sqrt(S_DATA**2 + float(sigmas[0]) ** 2)
    assert ((out - exact).abs().max() / exact.abs().max()).item() < DETERMINISTIC[function]


# (LCM is left out: re-noising the posterior mean keeps the data's spread only for a consistency model)
STOCHASTIC = ["sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2m_sde", "sample_dpmpp_sde",
              "sample_dpmpp_2s_ancestral"]


@pytest.mark.parametrize("function", STOCHASTIC)
def test_stochastic_samplers_reach_the_data_distribution(function):
    """From pure noise the output has the data's spread (and not the noise's): 2 x 4 x 64 x 64 samples."""
    sigmas = sigma_schedules.karras(100, sd_sigmas())
    noise = NoiseSource([1, 2])
    x = noise.draw((4, 64, 64), "cpu") * float(sigmas[0])
    out = getattr(k_samplers, function)(gaussian_denoiser, x, sigmas, noise)
    assert out.std().item() == pytest.approx(S_DATA, rel=0.06) and abs(out.mean().item()) < 0.02


@pytest.mark.parametrize("ancestral, deterministic", [
    ("sample_euler_ancestral", "sample_euler"), ("sample_dpm_2_ancestral", "sample_dpm_2"),
    ("sample_dpmpp_2m_sde", "sample_dpmpp_2m"),
])
def test_eta_zero_is_the_ode_sampler(ancestral, deterministic):
    sigmas = sigma_schedules.discrete(8, sd_sigmas())
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * float(sigmas[0])
    a = getattr(k_samplers, ancestral)(gaussian_denoiser, x, sigmas, NoiseSource([0]), eta=0.0)
    b = getattr(k_samplers, deterministic)(gaussian_denoiser, x, sigmas, NoiseSource([0]))
    assert torch.allclose(a, b, atol=1e-5)


def test_lms_coefficients_integrate_polynomials():
    """Order k integrates any polynomial of degree < k in σ exactly: Σ_j c_j p(σ_{i-j}) = ∫ p."""
    sigmas = [14.6, 9.1, 5.3, 2.8, 1.2]
    p = np.polynomial.Polynomial([0.3, -1.2, 0.7, 0.05])  # degree 3
    coefficients = [k_samplers.lms_coefficient(4, sigmas, 3, j) for j in range(4)]
    assert sum(c * p(sigmas[3 - j]) for j, c in enumerate(coefficients)) == pytest.approx(
        p.integ()(sigmas[4]) - p.integ()(sigmas[3]), rel=1e-10)


# ---------------------------------------------------------------- the registry


@pytest.mark.parametrize("name, canonical, label", [
    ("DPM++ 2M Karras", "dpmpp_2m_karras", "DPM++ 2M Karras"),
    ("dpm++ 2m karras", "dpmpp_2m_karras", "DPM++ 2M Karras"),
    ("dpmpp_2m_karras", "dpmpp_2m_karras", "DPM++ 2M Karras"),
    ("k_dpmpp_2m_ka", "dpmpp_2m_karras", "DPM++ 2M Karras"),
    ("DPM++ 2M", "dpmpp_2m", "DPM++ 2M"),
    ("Euler a", "euler_a", "Euler a"),
    ("k_euler_a", "euler_a", "Euler a"),
    ("DPM++ 2M SDE Exponential", "dpmpp_2m_sde_exponential", "DPM++ 2M SDE Exponential"),
    ("Euler SGM Uniform", "euler_sgm_uniform", "Euler SGM Uniform"),
    ("DPM2 a Karras", "dpm2_a_karras", "DPM2 a Karras"),
    ("LCM", "lcm", "LCM"),
    ("DDIM", "ddim", "DDIM"),
    ("dpm", "dpm", "DPM++ 2M"),
])
def test_sampler_names(name, canonical, label):
    assert samplers.canonical(name) == canonical
    assert samplers.label(name) == label


def test_every_choice_round_trips_and_resolves():
    for spec in samplers.SAMPLERS.values():
        if spec.original:
            assert samplers.choose(spec.label).sampler is spec or spec.id == "dpm"
            continue
        assert list(inspect.signature(spec.function_object()).parameters)[:5] == \
            ["denoiser", "x", "sigmas", "noise", "hooks"]
        for schedule in samplers.SCHEDULES:
            choice = samplers.choose(spec.id, schedule)
            assert samplers.choose(choice.name) == samplers.choose(choice.label) == choice


@pytest.mark.parametrize("name, schedule, message", [
    ("euler_b", None, "'euler_b' is unknown (did you mean euler or euler_a?); use one of ddim, plms, dpm, euler, euler_a,"),
    ("euler", "linear", "'linear' is unknown; use one of discrete, karras"),
    ("DPM++ 2M Karras", "exponential", "already names schedule karras"),
    ("ddim", "karras", "runs the original script's own timesteps"),
])
def test_bad_sampler_names(name, schedule, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        samplers.choose(name, schedule)


# ---------------------------------------------------------------- the command line and the PNG


def test_cli_accepts_a1111_names_and_records_them(run_cli, sd1_ckpt, tmp_path):
    from PIL import Image

    from sd_cli.files.infotext import parse_infotext

    def render(*args):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        result = run_cli("txt2img", "a red circle", "--ckpt", sd1_ckpt, "--steps", "3", "--seed", "7", *args, "-o", out)
        assert result.code == 0, result.stderr
        return Image.open(out)

    a1111 = render("--sampler", "DPM++ 2M Karras")
    assert parse_infotext(a1111.text["parameters"])[2]["Sampler"] == "DPM++ 2M Karras"
    flags = render("--sampler", "dpmpp_2m", "--schedule", "Karras")
    assert parse_infotext(flags.text["parameters"])[2]["Sampler"] == "DPM++ 2M Karras"
    assert np.array_equal(np.asarray(a1111), np.asarray(flags))
    plain = render("--sampler", "euler a")
    assert parse_infotext(plain.text["parameters"])[2]["Sampler"] == "Euler a"
    assert not np.array_equal(np.asarray(a1111), np.asarray(plain))
