"""k-diffusion samplers in depth2img and in 4-channel ("blend") inpainting, on the tiny checkpoints.

depth2img: strength as img2img's k-sampler rule (the last int(s · steps) σ from the image latent
plus each image's first draw times the first of them), the depth channel concatenated to the UNet
input in both guidance halves; the reference is the diffusers scheduler loop of test_k_samplers with
diffusers' depth map preparation and UNet. Inpainting: after every step the known region is the image
latent plus the first draw times the step's new σ, the clean latent after the last step.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from test_k_samplers import CASES  # noqa: E402
from parity_reference import Generators, Reference  # noqa: E402
from references import smooth_image  # noqa: E402

from sd_cli.pipelines.depth2img import depth2img, estimate_depth  # noqa: E402
from sd_cli.pipelines.inpaint import inpaint  # noqa: E402
from sd_cli.loading.loader import load_model  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams, Start, denoise, k_sigmas  # noqa: E402
from sd_cli.sampling.steps import StepHooks  # noqa: E402

SIZE = 64
PROMPTS = ["a cabin interior", "a room at night"]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread




@torch.no_grad()
def reference_k_depth2img(ref: Reference, name, image, depth, seeds, scale, strength):
    steps, factory, vp, unet_t = CASES[name]
    made = factory("v_prediction" if ref.v else "epsilon")
    sched, timesteps = made if isinstance(made, tuple) else (made, None)
    sched.set_timesteps(steps) if timesteps is None else sched.set_timesteps(timesteps=timesteps)
    start = steps - int(strength * steps)
    sched.set_begin_index(start)
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.__new__(diffusers.StableDiffusionDepth2ImgPipeline)
    pipe.vae_scale_factor = 8
    batch = len(seeds)
    concat = pipe.prepare_depth_map(image, depth[:, 0], batch, False, torch.float32, torch.device("cpu"))
    cond, uncond = ref.encode_text(PROMPTS[:batch]), ref.encode_text([""] * batch)
    sigma = float(sched.sigmas[start])
    x = ref.encode_image(image).expand(batch, -1, -1, -1) + Generators(seeds).draw() * sigma
    if vp:
        x = x / math.sqrt(sigma**2 + 1)
    for i, t in enumerate(sched.timesteps[start:], start):
        x_in = torch.cat([sched.scale_model_input(x, t), concat], dim=1)
        out = ref.guided(x_in, unet_t(sched, i) if unet_t else t, cond, uncond, scale)
        x = sched.step(out, t, x).prev_sample
    return ref.decode(x)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_k_depth2img_matches_diffusers_loop(depth_model, name):
    path, model = depth_model
    ref = Reference(path, path.with_suffix(".yaml"))
    depth = estimate_depth(model, smooth_image(SIZE))
    params = SamplingParams(sampler=name, steps=CASES[name][0], scale=5.0)
    ours = depth2img(model, smooth_image(SIZE), depth, PROMPTS, [""] * 2, [4, 5], params, 0.6)
    again = depth2img(model, smooth_image(SIZE), depth, PROMPTS, [""] * 2, [4, 5], params, 0.6)
    theirs = reference_k_depth2img(ref, name, smooth_image(SIZE), depth, [4, 5], 5.0, 0.6)
    assert torch.isfinite(ours).all() and ours[0].std() > 1e-2
    assert torch.equal(ours, again)
    diff = (ours - theirs).abs().max().item()
    print(f"{name}: max abs diff {diff:.2e}")
    assert diff < 1e-4
    flat = depth2img(model, smooth_image(SIZE), torch.zeros_like(depth), PROMPTS, [""] * 2, [4, 5], params, 0.6)
    assert (flat - ours).abs().max() > 1e-3  # the depth channel reaches the UNet


def test_k_depth2img_cli(run_cli, depth_model, tmp_path):
    path, model = depth_model
    Image.fromarray(((smooth_image(SIZE)[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(tmp_path / "i.png")
    outs = []
    for run in range(2):
        out = tmp_path / f"d{run}.png"
        result = run_cli("depth2img", "a cabin", "--ckpt", path, "--init-img", tmp_path / "i.png", "--sampler",
                         "euler_a", "--steps", "3", "--seed", "3", "--strength", "0.7", "-o", out)
        assert result.code == 0, result.stderr
        outs.append(np.asarray(Image.open(out)))
    assert np.array_equal(*outs)


def test_after_step_hook_runs_once_per_step_with_the_next_sigma(sd1_ckpt):
    model = load_model(sd1_ckpt).model
    from sd_cli.pipelines.conditioning import guided_model
    from sd_cli.sampling.noise import NoiseSource

    for name in ["euler", "heun", "dpmpp_2m", "dpmpp_sde", "unipc", "lms"]:
        params = SamplingParams(sampler=name, steps=4, scale=3.0)
        sigmas = k_sigmas(model, params)
        calls = []

        def hook(x, level):
            calls.append(("hook", level.sigma))
            return x

        guided = guided_model(model, ["x"], [""], 3.0, (64, 64))
        x = NoiseSource([1]).draw((4, 8, 8), model.device) * float(sigmas[0])
        begin = Start(x, sigmas=sigmas)
        plain = denoise(model, guided, begin, NoiseSource([2]), params)
        hooks = StepHooks(progress=lambda done, total: calls.append(("progress", done, total)), after_step=hook)
        hooked = denoise(model, guided, begin, NoiseSource([2]), params, hooks)
        assert torch.equal(plain, hooked), name  # an identity hook changes nothing
        expected = [call for i, s in enumerate(sigmas[1:]) for call in (("hook", float(s)), ("progress", i + 1, 4))]
        assert calls == expected, name


@pytest.mark.parametrize("name", ["euler_a", "dpmpp_2m"])
def test_blend_inpaint_keeps_the_known_latent(sd1_ckpt, monkeypatch, name):
    """Before the VAE: outside the mask the latent is the image latent exactly."""
    model = load_model(sd1_ckpt).model
    monkeypatch.setattr(model, "decode_latents", lambda latents: latents)
    image = smooth_image(SIZE)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 16:48, 8:40] = 1
    params = SamplingParams(sampler=name, steps=4, scale=5.0)
    latents = inpaint(model, image, mask, PROMPTS, ["", ""], [3, 4], params)
    x0 = model.encode_image(image).float()
    keep = (torch.nn.functional.interpolate(mask, size=(8, 8)) == 0).expand_as(latents)
    assert torch.equal(latents[keep], x0.expand_as(latents)[keep])
    assert (latents - x0).abs()[~keep].mean() > 1e-2
    alone = inpaint(model, image, mask, PROMPTS[1:], [""], [4], params)
    assert (alone[0] - latents[1]).abs().max() < 1e-4  # each image's own noise
    partial = inpaint(model, image, mask, PROMPTS, ["", ""], [3, 4], params, strength=0.5)
    assert torch.equal(partial[keep], x0.expand_as(latents)[keep]) and torch.isfinite(partial).all()


def test_blend_inpaint_cli_with_euler_a(run_cli, sd1_ckpt, tmp_path):
    photo = np.random.default_rng(4).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    mask = np.zeros((70, 100), np.uint8)
    mask[20:50, 30:70] = 255
    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    outs = []
    for run in range(2):
        out = tmp_path / f"o{run}.png"
        result = run_cli("inpaint", "a red door", "--ckpt", sd1_ckpt, "--image", tmp_path / "p.png", "--mask",
                         tmp_path / "m.png", "--sampler", "euler_a", "--steps", "3", "--seed", "7", "--mask-blur", "0",
                         "-o", out)
        assert result.code == 0, result.stderr
        outs.append(np.asarray(Image.open(out).convert("RGB")).astype(np.int16))
    repaint = mask > 127
    assert np.array_equal(outs[0][~repaint], photo[~repaint])
    assert np.abs(outs[0][repaint] - photo[repaint]).mean() > 10
    assert np.array_equal(outs[0], outs[1])
