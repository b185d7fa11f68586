"""The hires fix's second pass starts as img2img does, at every strength and for every sampler family."""

import torch
import torch.nn.functional as F

from sd_cli.loading.loader import load_model
from sd_cli.pipelines.hires import HiresOptions, txt2img_hires
from sd_cli.pipelines.txt2img import txt2img_latents
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.schedule import make_ddim_schedule


def _first_pass_upscaled(model, params):
    first = txt2img_latents(model, ["a red cube"], [""], [5], params, 64, 64)
    return F.interpolate(first.float(), size=(16, 16), mode="bilinear", align_corners=False)


def test_hires_strength_zero_follows_img2img(sd1_ckpt, monkeypatch):
    """DDIM at strength 0 noises the upscaled latent to DDIM index 0 and runs no step (the original
    img2img's t_enc = 0); a k-diffusion sampler returns it unchanged (no σ left)."""
    model = load_model(sd1_ckpt).model
    monkeypatch.setattr(model, "decode_latents", lambda latents: latents)
    hires = HiresOptions(scale=2.0, strength=0.0)

    ddim = SamplingParams(steps=4, scale=3.0)
    got = txt2img_hires(model, ["a red cube"], [""], [5], ddim, 64, 64, hires)
    x0 = _first_pass_upscaled(model, ddim)
    a = make_ddim_schedule(model.alphas_cumprod, 4, 0.0).alphas[0]
    draw = NoiseSource([5]).draw((4, 16, 16), model.device)
    assert torch.equal(got, a.sqrt() * x0 + (1 - a).sqrt() * draw)

    euler = SamplingParams(sampler="euler", steps=4, scale=3.0)
    got = txt2img_hires(model, ["a red cube"], [""], [5], euler, 64, 64, hires)
    assert torch.equal(got, _first_pass_upscaled(model, euler))
