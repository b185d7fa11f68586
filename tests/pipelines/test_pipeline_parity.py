"""Whole-run parity: sd_cli's txt2img/img2img against an independent pipeline on the same tiny weights
(the reference and how it is configured: support/parity_reference.py)."""

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from parity_reference import BETAS, PROMPTS, SIZE, Model, assert_parity  # noqa: E402
from references import smooth_image  # noqa: E402

from sd_cli.pipelines.txt2img import txt2img  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams  # noqa: E402
from sd_cli.sampling.schedule import ddim_timesteps  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return Model(tmp_path_factory.mktemp("sd1"), "sd1")


@pytest.fixture(scope="module")
def sd2v(tmp_path_factory):
    return Model(tmp_path_factory.mktemp("sd2v"), "sd2-v")


@pytest.fixture(params=["sd1", "sd2v"])
def model(request):
    return request.getfixturevalue(request.param)



# ---------------------------------------------------------------- tests


def test_scheduler_schedule_and_grid_are_the_originals(sd1):
    """diffusers' ᾱ (float32 cumprod) vs sd_cli's (the checkpoint's float64-derived buffer); DDIM grids.

    For S = 9 and 37 the original's grid ends in 1000 and crashes; diffusers' and sd_cli's omit it.
    """
    sched = diffusers.DDIMScheduler(**BETAS, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    assert (sched.alphas_cumprod - sd1.ours.alphas_cumprod).abs().max() < 1e-6
    assert sched.final_alpha_cumprod == sched.alphas_cumprod[0]  # the original's a_prev at t = 1
    for steps, grid in [(10, range(901, 0, -100)), (9, range(889, 0, -111)), (37, range(973, 0, -27))]:
        sched.set_timesteps(steps)
        assert sched.timesteps.tolist() == list(grid)
        assert ddim_timesteps(steps).tolist() == list(grid)[::-1]


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_txt2img_ddim(model, eta):
    params = SamplingParams(sampler="ddim", steps=10, scale=5.0, eta=eta)
    ours, theirs = model.txt2img(PROMPTS[:1], [42], params)
    assert_parity(ours, theirs)
    assert model.unet_calls == model.ref.unet_calls == [2] * 10


def test_txt2img_no_guidance_is_one_pass(model):
    params = SamplingParams(sampler="ddim", steps=10, scale=1.0)
    ours, theirs = model.txt2img(PROMPTS[:1], [7], params)
    assert_parity(ours, theirs)
    assert model.unet_calls == [1] * 10


def test_txt2img_negative_prompt_is_the_uncond(sd1):
    params = SamplingParams(sampler="ddim", steps=10, scale=5.0)
    ours, theirs = sd1.txt2img(PROMPTS[:1], [3], params, negatives=["blurry"])
    assert_parity(ours, theirs)
    default, _ = sd1.txt2img(PROMPTS[:1], [3], params)
    assert (ours - default).abs().max() > 1e-3


def test_txt2img_plms(model):
    params = SamplingParams(sampler="plms", steps=10, scale=5.0)
    ours, theirs = model.txt2img(PROMPTS[:1], [5], params)
    assert_parity(ours, theirs)
    assert model.unet_calls == model.ref.unet_calls == [2] * 11  # the first step costs two calls


def test_dpm_scheduler_grid_is_the_originals():
    sched = diffusers.DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", timestep_spacing="linspace",
                                                  final_sigmas_type="sigma_min")
    sched.set_timesteps(9)
    assert sched.timesteps.tolist() == list(range(999, 0, -111))
    original_times = np.linspace(1.0, 0.001, 10)  # the original's continuous grid, as model timesteps
    assert np.allclose((original_times - 0.001) * 1000, [*range(999, 0, -111), 0])


def test_txt2img_dpm(model):
    params = SamplingParams(sampler="dpm", steps=9, scale=5.0)
    ours, theirs = model.txt2img(PROMPTS[:1], [11], params)
    assert_parity(ours, theirs)
    assert model.unet_calls == model.ref.unet_calls == [2] * 9


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 0.5), ("dpm", 0.0)])
def test_batch_of_two(sd2v, sampler, eta):
    params = SamplingParams(sampler=sampler, steps=10 if sampler == "ddim" else 9, scale=4.0, eta=eta)
    ours, theirs = sd2v.txt2img(PROMPTS, [100, 101], params)
    assert_parity(ours, theirs, batch=2)
    assert sd2v.unet_calls[0] == 4  # [uncond x2, cond x2] in one call
    assert (ours[0] - ours[1]).abs().max() > 1e-2
    # batch invariance: image 2 of the batch is the batch-1 run with its seed and prompt
    alone = txt2img(sd2v.ours, PROMPTS[1:], [""], [101], params, SIZE, SIZE)
    assert (ours[1] - alone[0]).abs().max() < 1e-5


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_img2img_ddim(model, strength, eta):
    params = SamplingParams(sampler="ddim", steps=10, scale=5.0, eta=eta)
    ours, theirs = model.img2img(smooth_image(SIZE), PROMPTS, [8, 9], params, strength)
    assert_parity(ours, theirs, batch=2)
    steps = 5 if strength == 0.5 else 10
    assert model.unet_calls == model.ref.unet_calls == [4] * steps


@pytest.mark.parametrize("steps", [9, 37])
def test_step_counts_where_the_original_crashes(sd1, steps):
    """999 % (1000 // S) == 0: the original's last timestep is 1000 (IndexError); sd_cli drops it.

    diffusers' "leading" grid for these S is exactly the original's without 1000, so parity holds too.
    """
    params = SamplingParams(sampler="ddim", steps=steps, scale=5.0)
    ours, theirs = sd1.txt2img(PROMPTS[:1], [13], params)
    assert torch.isfinite(ours).all()
    assert sd1.unet_calls == [2] * steps
    assert_parity(ours, theirs)
