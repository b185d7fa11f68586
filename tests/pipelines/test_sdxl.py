"""SDXL, its refiner and SD-Turbo from tiny sgm files: sd_cli's latents against an independent loop.

The reference is diffusers' UNet (through diffusers' LDM converter, "text_time" embedding),
transformers' text towers and diffusers' EulerDiscreteScheduler with "trailing" spacing, which
is generative-models' legacy DDPM discretization wherever the step count divides 1000: the same
timesteps, c_in and x̂₀ = x - σ·ε (tests/sampling/test_sgm.py). The start noise is generative-models'
n·sqrt(1 + σ₀²), set here: diffusers starts this spacing from n·σ₀.
"""

import pytest
import torch
from sdxl_reference import diffusers_unet, reference_text, time_ids
from tiny_models import tiny_state_dict, write_tiny_checkpoint

from sd_cli.loading.loader import load_model
from sd_cli.models.sdxl_conditioning import SizeConditioning
from sd_cli.pipelines.img2img import img2img_latents
from sd_cli.pipelines.conditioning import guided_model
from sd_cli.pipelines.txt2img import txt2img_latents
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource

diffusers = pytest.importorskip("diffusers")

SIZE = 128  # 16x16 latents
SEEDS = [3, 4]
PROMPTS = ["a red circle on a blue square", "two green triangles"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sgm")
    return {family: (write_tiny_checkpoint(family, folder / family, fmt="safetensors"), *tiny_state_dict(family))
            for family in ("sdxl", "sdxl-refiner", "sd-turbo")}


@torch.no_grad()
def reference_latents(weights, config, prompts, negatives, seeds, steps, scale, sizes, start=None, strength=1.0):
    unet = diffusers_unet(weights, config)
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    timesteps, sigmas = scheduler.timesteps, scheduler.sigmas
    noise = NoiseSource(seeds).draw((4, SIZE // 8, SIZE // 8), "cpu")
    if start is None:  # generative-models' start; diffusers' init_noise_sigma is σ_max alone for this spacing
        x = noise * (sigmas[0] ** 2 + 1) ** 0.5
    else:  # img2img: the max(int(strength·(S+1)), 1) smallest σ, from z + n·σ_first
        keep = max(int(strength * (steps + 1)), 1)
        timesteps, sigmas = timesteps[steps + 1 - keep:], sigmas[steps + 1 - keep:]
        x = start + noise * sigmas[0]
    cond = reference_text(weights, config, prompts)
    if negatives is None:  # an empty negative prompt: zeros (diffusers' force_zeros_for_empty_prompt)
        uncond = type(cond)(torch.zeros_like(cond.crossattn), torch.zeros_like(cond.pooled))
    else:
        uncond = reference_text(weights, config, negatives)
    added = {"text_embeds": torch.cat([uncond.pooled, cond.pooled]),
             "time_ids": torch.cat([time_ids(sizes[1], len(prompts)), time_ids(sizes[0], len(prompts))])}
    for t, sigma, sigma_next in zip(timesteps, sigmas, sigmas[1:]):
        x_in = torch.cat([x, x]) / (sigma**2 + 1) ** 0.5
        eps = unet(x_in, t, encoder_hidden_states=torch.cat([uncond.crossattn, cond.crossattn]),
                   added_cond_kwargs=added).sample
        eps_u, eps_c = eps.chunk(2)
        eps = eps_u + scale * (eps_c - eps_u)
        x = x + eps * (sigma_next - sigma)  # Euler: d = (x - x̂₀)/σ = ε
    return x


def assert_close(ours, theirs, tolerance=2e-4):
    assert ours.shape == theirs.shape and ours.abs().max() > 0.1
    difference = (ours - theirs).abs().max().item()
    assert difference <= tolerance * max(1.0, theirs.abs().max().item()), difference


@pytest.mark.parametrize("negatives", [None, ["blurry", "a cat"]])
def test_sdxl_txt2img_euler_matches_the_reference(files, negatives):
    path, weights, config = files["sdxl"]
    model = load_model(path).model
    params = SamplingParams(sampler="euler", steps=4, scale=5.0)
    ours = txt2img_latents(model, PROMPTS, negatives or ["", ""], SEEDS, params, SIZE, SIZE)
    sizes = SizeConditioning((SIZE, SIZE), target_size=(SIZE, SIZE))
    theirs = reference_latents(weights, config, PROMPTS, negatives, SEEDS, 4, 5.0, (sizes, sizes))
    assert_close(ours, theirs)


def test_sdxl_size_and_crop_flags_condition_as_the_reference(files):
    """--original-* 1024x768, --crop-* (32, 48), --target-* 640x512 on a 128x128 render: y carries those
    numbers in both branches (diffusers' time_ids from the same values)."""
    from sd_cli.models.sdxl_conditioning import SizeFlags
    from sd_cli.prompting.prompts import TextOptions
    from sd_cli.run.session import Session

    path, weights, config = files["sdxl"]
    loaded = load_model(path)
    flags = SizeFlags(original_width=768, original_height=1024, crop_top=32, crop_left=48, target_width=512,
                      target_height=640)
    session = Session(loaded, TextOptions(), None, size_flags=flags)
    params = SamplingParams(sampler="euler", steps=4, scale=5.0)
    ours = txt2img_latents(session, PROMPTS, ["blurry", ""], SEEDS, params, SIZE, SIZE)
    sizes = SizeConditioning((1024, 768), crop_top_left=(32, 48), target_size=(640, 512))
    assert flags.conditioning((SIZE, SIZE), None) == sizes
    theirs = reference_latents(weights, config, PROMPTS, ["blurry", ""], SEEDS, 4, 5.0, (sizes, sizes))
    assert_close(ours, theirs)
    plain = txt2img_latents(loaded.model, PROMPTS, ["blurry", ""], SEEDS, params, SIZE, SIZE)
    assert (plain - ours).abs().max() > 1e-2  # the conditioning changed the result


def test_sdxl_edm_schedule_matches_the_reference(files):
    """--schedule edm: the demo's EDMDiscretization (σ 0.03..14.61, ρ 3) written out here; the UNet at the
    nearest of the model's σ (its index as t, c_in from it), x̂₀ = x - σ_q·ε, Euler in the unquantised σ."""
    path, weights, config = files["sdxl"]
    model = load_model(path).model
    steps, scale = 4, 5.0
    ours = txt2img_latents(model, PROMPTS, ["", ""], SEEDS, SamplingParams("euler_edm", steps, scale), SIZE, SIZE)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = ((14.61 ** (1 / 3) + ramp * (0.03 ** (1 / 3) - 14.61 ** (1 / 3))) ** 3).float().tolist() + [0.0]
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    table = ((1 - alphas) / alphas).float() ** 0.5
    unet = diffusers_unet(weights, config)
    cond = reference_text(weights, config, PROMPTS)
    uncond = type(cond)(torch.zeros_like(cond.crossattn), torch.zeros_like(cond.pooled))
    sizes = SizeConditioning((SIZE, SIZE), target_size=(SIZE, SIZE))
    added = {"text_embeds": torch.cat([uncond.pooled, cond.pooled]), "time_ids": time_ids(sizes, 2 * len(PROMPTS))}
    x = NoiseSource(SEEDS).draw((4, SIZE // 8, SIZE // 8), "cpu") * (1 + sigmas[0] ** 2) ** 0.5
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas, sigmas[1:]):
            index = int((table - sigma).abs().argmin())
            sigma_q = float(table[index])
            x_in = torch.cat([x, x]) / (sigma_q**2 + 1) ** 0.5
            eps = unet(x_in, torch.tensor(index), encoder_hidden_states=torch.cat([uncond.crossattn, cond.crossattn]),
                       added_cond_kwargs=added).sample
            denoised_u, denoised_c = (torch.cat([x, x]) - sigma_q * eps).chunk(2)
            denoised = denoised_u + scale * (denoised_c - denoised_u)
            x = x + (x - denoised) / sigma * (sigma_next - sigma)
    assert_close(ours, x)


def test_sdxl_img2img_keeps_the_strength_share_of_sigmas(files):
    path, weights, config = files["sdxl"]
    model = load_model(path).model
    params = SamplingParams(sampler="euler", steps=10, scale=3.0)
    x0 = torch.linspace(-1, 1, 2 * 4 * 16 * 16).reshape(2, 4, 16, 16)
    guided = guided_model(model, PROMPTS, ["", ""], 3.0, (SIZE, SIZE))
    ours = img2img_latents(model, guided, x0, SEEDS, params, 0.6)
    sizes = SizeConditioning((SIZE, SIZE), target_size=(SIZE, SIZE))
    theirs = reference_latents(weights, config, PROMPTS, None, SEEDS, 10, 3.0, (sizes, sizes), start=x0, strength=0.6)
    assert_close(ours, theirs)


def test_the_refiner_encodes_its_empty_negative_with_the_negative_aesthetic_score(files):
    path, weights, config = files["sdxl-refiner"]
    model = load_model(path).model
    params = SamplingParams(sampler="euler", steps=4, scale=5.0)
    ours = txt2img_latents(model, PROMPTS, ["", ""], SEEDS, params, SIZE, SIZE)
    cond = SizeConditioning((SIZE, SIZE), aesthetic_score=6.0)
    uncond = SizeConditioning((SIZE, SIZE), aesthetic_score=2.5)
    theirs = reference_latents(weights, config, PROMPTS, ["", ""], SEEDS, 4, 5.0, (cond, uncond))
    assert_close(ours, theirs)


def test_sd_turbo_one_step_without_guidance(files):
    """One Turbo step from t = 999 at scale 1: x̂₀ itself (Euler to σ = 0), no unconditional pass."""
    path, weights, config = files["sd-turbo"]
    model = load_model(path).model
    params = SamplingParams(sampler="euler_a_turbo", steps=1, scale=1.0)
    ours = txt2img_latents(model, PROMPTS[:1], [""], SEEDS[:1], params, SIZE, SIZE)
    unet = diffusers_unet(weights, config)
    sigma = float(model.sigma_table[999])
    x = NoiseSource(SEEDS[:1]).draw((4, 16, 16), "cpu") * (1 + sigma**2) ** 0.5
    context = reference_text(weights, config, PROMPTS[:1]).crossattn
    with torch.no_grad():
        eps = unet(x / (sigma**2 + 1) ** 0.5, torch.tensor([999]), encoder_hidden_states=context).sample
    assert_close(ours, x - sigma * eps)


def test_the_vae_stays_in_float32_under_bf16(files):
    """A bf16 run decodes with the float32 VAE: the very pixels of a float32 run's decode."""
    path, _, _ = files["sdxl"]
    bf16, fp32 = load_model(path, dtype=torch.bfloat16).model, load_model(path).model
    assert bf16.dtype == torch.bfloat16 and bf16.vae_dtype == torch.float32
    latents = torch.linspace(-2, 2, 4 * 16 * 16).reshape(1, 4, 16, 16)
    image = bf16.decode_latents(latents)
    assert image.dtype == torch.float32 and torch.equal(image, fp32.decode_latents(latents))

def test_the_cli_renders_sdxl_as_the_pipeline_does(files, run_cli, tmp_path):
    from PIL import Image

    from sd_cli.files.images import to_uint8

    path, _, _ = files["sdxl"]
    common = ["a red circle", "--ckpt", path, "--sampler", "euler", "--steps", "2", "--scale", "4",
              "--height", str(SIZE), "--width", str(SIZE), "--seed", "7"]
    assert run_cli("txt2img", *common, "--no-watermark", "-o", tmp_path / "x.png").code == 0
    model = load_model(path).model
    latents = txt2img_latents(model, ["a red circle"], [""], [7], SamplingParams("euler", 2, 4.0), SIZE, SIZE)
    expected = to_uint8(model.decode_latents(latents))[0]
    written = torch.from_numpy(__import__("numpy").asarray(Image.open(tmp_path / "x.png").convert("RGB")).copy())
    assert torch.equal(written, torch.from_numpy(expected))
    ddim = run_cli("txt2img", "a red circle", "--ckpt", path, "--sampler", "ddim", "--steps", "2", "--no-watermark",
                   "-o", tmp_path / "d.png")
    assert ddim.code == 2 and "samples as generative-models does: use one of its samplers" in ddim.stderr
