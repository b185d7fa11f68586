"""The one start: strength turned into a start latent for every mode and sampler family."""

from types import SimpleNamespace

import pytest
import torch

from sd_cli.sampling import denoising
from sd_cli.sampling.denoising import DEPTH2IMG, IMG2IMG, INPAINT, SamplingParams, start
from sd_cli.sampling.schedule import alphas_cumprod, make_ddim_schedule
from sd_cli.sampling.steps import CLEAN, NoiseLevel, StepHooks

MODEL = SimpleNamespace(alphas_cumprod=alphas_cumprod(0.00085, 0.0120), family=SimpleNamespace(sampling="ldm"))
X0 = torch.full((1, 4, 2, 2), 0.5)
DRAW = torch.linspace(-1, 1, 16).reshape(1, 4, 2, 2)
DDIM = SamplingParams(sampler="ddim", steps=10)
EULER = SamplingParams(sampler="euler", steps=10)


def alpha(index: int) -> torch.Tensor:
    return make_ddim_schedule(MODEL.alphas_cumprod, 10, 0.0).alphas[index]


def test_txt2img_starts_from_the_draw_at_the_top():
    begin = start(MODEL, DDIM, DRAW)
    assert torch.equal(begin.x, DRAW) and begin.start_index is None and begin.sigmas is None
    k = start(MODEL, EULER, DRAW)
    assert k.sigmas is not None and len(k.sigmas) == 11
    assert torch.equal(k.x, DRAW * float(k.sigmas[0]))


@pytest.mark.parametrize("strength, index", [(0.5, 5), (0.0, 0), (0.25, 2)])
def test_img2img_noises_the_latent_to_the_strengths_ddim_index(strength, index):
    begin = start(MODEL, DDIM, DRAW, X0, strength)
    a = alpha(index)
    assert begin.start_index == index
    assert torch.equal(begin.x, a.sqrt() * X0 + (1 - a).sqrt() * DRAW)


def test_strength_zero_on_the_original_samplers_still_noises_to_index_zero():
    """The original img2img at t_enc = 0: x₀ noised to the first DDIM timestep, then no step."""
    begin = start(MODEL, DDIM, DRAW, X0, 0.0)
    assert begin.start_index == 0 and not torch.equal(begin.x, X0)
    a = alpha(0)
    assert torch.equal(begin.x, a.sqrt() * X0 + (1 - a).sqrt() * DRAW)


def test_strength_one_past_the_schedule_starts_from_the_draw():
    begin = start(MODEL, DDIM, DRAW, X0, 1.0)
    assert torch.equal(begin.x, DRAW) and begin.start_index is None


def test_k_samplers_run_the_last_strength_share_of_sigmas():
    full = start(MODEL, EULER, DRAW).sigmas
    half = start(MODEL, EULER, DRAW, X0, 0.5)
    assert torch.equal(half.sigmas, full[5:])
    assert torch.equal(half.x, X0 + DRAW * float(full[5]))
    zero = start(MODEL, EULER, DRAW, X0, 0.0)
    assert torch.equal(zero.x, X0) and zero.sigmas.tolist() == [0.0]
    one = start(MODEL, EULER, DRAW, X0, 1.0)  # img2img keeps the image at strength 1
    assert torch.equal(one.x, X0 + DRAW * float(full[0]))


def test_inpaint_generates_from_the_draw_alone_at_full_strength():
    assert torch.equal(start(MODEL, DDIM, DRAW, X0, 1.0, INPAINT).x, DRAW)
    k = start(MODEL, EULER, DRAW, X0, 1.0, INPAINT)
    assert torch.equal(k.x, DRAW * float(k.sigmas[0]))
    below, img2img = start(MODEL, DDIM, DRAW, X0, 0.5, INPAINT), start(MODEL, DDIM, DRAW, X0, 0.5, IMG2IMG)
    assert torch.equal(below.x, img2img.x) and below.start_index == img2img.start_index == 5


def test_depth2img_caps_the_index_below_the_top():
    full = start(MODEL, DDIM, DRAW, X0, 1.0, DEPTH2IMG)
    assert torch.equal(full.x, DRAW) and full.start_index == 9
    near = start(MODEL, DDIM, DRAW, X0, 0.95, DEPTH2IMG)
    a = alpha(9)
    assert near.start_index == 9 and torch.equal(near.x, a.sqrt() * X0 + (1 - a).sqrt() * DRAW)


def test_noise_levels_noise_as_their_family_does():
    a = torch.tensor(0.25)
    assert torch.equal(NoiseLevel(alpha_bar=a).noised(X0, DRAW), 0.5 * X0 + 0.75 ** 0.5 * DRAW)
    assert torch.equal(NoiseLevel(sigma=2.0).noised(X0, DRAW), X0 + 2.0 * DRAW)
    assert torch.equal(NoiseLevel(sigma=0.0).noised(X0, DRAW), X0)
    assert torch.equal(CLEAN.noised(X0, DRAW), X0)


def test_step_hooks_change_x_before_reporting_progress():
    calls = []
    hooks = StepHooks(progress=lambda done, total: calls.append((done, total)),
                      after_step=lambda x, level: calls.append(level.sigma) or x + 1)
    assert torch.equal(hooks.end_step(X0, NoiseLevel(sigma=3.0), 2, 5), X0 + 1)
    assert calls == [3.0, (2, 5)]


def test_eta_is_refused_for_k_samplers():
    begin = start(MODEL, EULER, DRAW)
    with pytest.raises(Exception, match="--eta is DDIM's η"):
        denoising.denoise(SimpleNamespace(device=torch.device("cpu"), alphas_cumprod=MODEL.alphas_cumprod,
                                          family=MODEL.family),
                          None, begin, None, SamplingParams(sampler="euler", steps=10, eta=0.5))
