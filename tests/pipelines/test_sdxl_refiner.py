"""The SDXL base handing over to its refiner, from tiny sgm files, against an independent loop.

The reference is diffusers' UNets (tests/support/sdxl_reference.py) for the base and the refiner,
transformers' text towers, and diffusers' EulerDiscreteScheduler's "trailing" σ (generative-models'
legacy DDPM discretization where the step count divides 1000). The demo's two cuts of those σ
(scripts/demo/discretization.py) and its starts are written out here from its formulas:
- the base: ascending σ without their max(min(int(s·(S+1)) - 1, S), 0) smallest, from n·sqrt(1 + σ₀²);
- the refiner: the max(int(s·(S₂+1)), 1) smallest of its own σ, from the base's latent as it is.
"""

import pytest
import torch
from sdxl_reference import diffusers_unet, reference_text, time_ids
from tiny_models import tiny_state_dict, write_tiny_checkpoint

from sd_cli.loading.loader import load_model
from sd_cli.models.sdxl_conditioning import SizeConditioning
from sd_cli.pipelines.refine import RefinerOptions, refine_latents, switch_at
from sd_cli.pipelines.txt2img import txt2img_latents
from sd_cli.sampling import sgm
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource

diffusers = pytest.importorskip("diffusers")

SIZE = 128  # 16x16 latents
SEEDS = [3, 4]
PROMPTS = ["a red circle on a blue square", "two green triangles"]
NEGATIVES = ["blurry", ""]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refiner")
    return {family: (write_tiny_checkpoint(family, folder / family, fmt="safetensors"), *tiny_state_dict(family))
            for family in ("sdxl", "sdxl-refiner")}


def trailing(steps):
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    return list(scheduler.timesteps) + [None], scheduler.sigmas  # S timesteps then σ = 0; S + 1 σ


@torch.no_grad()
def euler(unet, x, timesteps, sigmas, cond, uncond, added, scale):
    """Guided Euler over the given σ (the UNet sees x / sqrt(σ² + 1) and x̂₀ = x - σ·ε)."""
    for t, sigma, sigma_next in zip(timesteps, sigmas, sigmas[1:]):
        x_in = torch.cat([x, x]) / (sigma**2 + 1) ** 0.5
        eps = unet(x_in, t, encoder_hidden_states=torch.cat([uncond.crossattn, cond.crossattn]),
                   added_cond_kwargs=added).sample
        eps_u, eps_c = eps.chunk(2)
        x = x + (eps_u + scale * (eps_c - eps_u)) * (sigma_next - sigma)
    return x


def conditioning(weights, config, negatives, cond_sizes, uncond_sizes, zero_empty):
    cond = reference_text(weights, config, PROMPTS)
    if zero_empty and not any(negatives):
        uncond = type(cond)(torch.zeros_like(cond.crossattn), torch.zeros_like(cond.pooled))
    else:
        uncond = reference_text(weights, config, negatives)
    added = {"text_embeds": torch.cat([uncond.pooled, cond.pooled]),
             "time_ids": torch.cat([time_ids(uncond_sizes, len(PROMPTS)), time_ids(cond_sizes, len(PROMPTS))])}
    return cond, uncond, added


def reference_handoff(files, steps, refiner_steps, strength, scale, x0=None, img2img_strength=1.0):
    """(base's still-noisy latents, the refiner's latents) as the demo computes them; with x0 the base runs
    img2img first (the demo wraps Img2ImgDiscretizationWrapper in Txt2NoisyDiscretizationWrapper)."""
    base_path, base_weights, base_config = files["sdxl"]
    _, refiner_weights, refiner_config = files["sdxl-refiner"]
    timesteps, sigmas = trailing(steps)
    if x0 is not None:
        keep = max(int(img2img_strength * (steps + 1)), 1)
        timesteps, sigmas = timesteps[steps + 1 - keep:], sigmas[steps + 1 - keep:]
    drop = max(min(int(strength * (steps + 1)) - 1, steps), 0)  # Txt2NoisyDiscretizationWrapper, S + 1 counted
    timesteps, sigmas = timesteps[:len(sigmas) - drop], sigmas[:len(sigmas) - drop]
    noise = NoiseSource(SEEDS).draw((4, SIZE // 8, SIZE // 8), "cpu")
    start = noise * (sigmas[0] ** 2 + 1) ** 0.5 if x0 is None else x0 + noise * sigmas[0]
    sizes = SizeConditioning((SIZE, SIZE), target_size=(SIZE, SIZE))
    base = euler(diffusers_unet(base_weights, base_config), start, timesteps, sigmas,
                 *conditioning(base_weights, base_config, NEGATIVES, sizes, sizes, zero_empty=True), scale)
    timesteps, sigmas = trailing(refiner_steps)
    keep = max(int(strength * (refiner_steps + 1)), 1)  # Img2ImgDiscretizationWrapper
    timesteps, sigmas = timesteps[refiner_steps + 1 - keep:], sigmas[refiner_steps + 1 - keep:]
    cond_sizes = SizeConditioning((SIZE, SIZE), aesthetic_score=6.0)
    uncond_sizes = SizeConditioning((SIZE, SIZE), aesthetic_score=2.5)
    refined = euler(diffusers_unet(refiner_weights, refiner_config), base, timesteps, sigmas,
                    *conditioning(refiner_weights, refiner_config, NEGATIVES, cond_sizes, uncond_sizes,
                                  zero_empty=False), scale)
    return base, refined


def assert_close(ours, theirs, tolerance=2e-4):
    assert ours.shape == theirs.shape and ours.abs().max() > 0.1
    difference = (ours - theirs).abs().max().item()
    assert difference <= tolerance * max(1.0, theirs.abs().max().item()), difference


@pytest.mark.parametrize("steps, refiner_steps, strength", [(20, 20, 0.15), (20, 10, 0.3)])
def test_the_base_hands_its_noisy_latent_to_the_refiner_as_the_demo_does(files, steps, refiner_steps, strength):
    base = load_model(files["sdxl"][0]).model
    refiner = load_model(files["sdxl-refiner"][0]).model
    params = SamplingParams(sampler="euler", steps=steps, scale=5.0)
    options = RefinerOptions(strength=strength, steps=refiner_steps)
    noise = NoiseSource(SEEDS)
    handed = txt2img_latents(base, PROMPTS, NEGATIVES, SEEDS, params, SIZE, SIZE, noise=noise, handoff=strength)
    ours = refine_latents(refiner, handed, PROMPTS, NEGATIVES, noise, params, options)
    their_handed, theirs = reference_handoff(files, steps, refiner_steps, strength, 5.0)
    assert_close(handed, their_handed)
    assert_close(ours, theirs)
    assert (ours - handed).abs().max() > 1e-3  # the refiner did run steps


def test_the_base_img2img_hands_over_after_both_cuts(files):
    """img2img 0.6 of 20 steps keeps 12 σ (11 steps from t = 549); the hand-off at 0.15 then drops 2."""
    from sd_cli.pipelines.refine import img2img_refined

    base = load_model(files["sdxl"][0]).model
    refiner = load_model(files["sdxl-refiner"][0]).model
    image = torch.linspace(-1, 1, 3 * SIZE * SIZE).reshape(1, 3, SIZE, SIZE)
    params = SamplingParams(sampler="euler", steps=20, scale=5.0)
    ours = img2img_refined(base, refiner, image, PROMPTS, NEGATIVES, SEEDS, params, 0.6, RefinerOptions(0.15))
    x0 = base.encode_image(image).float().expand(2, -1, -1, -1)
    _, theirs = reference_handoff(files, 20, 20, 0.15, 5.0, x0=x0, img2img_strength=0.6)
    assert_close(ours, refiner.decode_latents(theirs))


def test_the_demo_cuts_stop_the_base_at_t_99_and_run_the_refiner_from_there():
    table = sgm.sigma_table(0.00085, 0.012, 1000)
    full = sgm.legacy_ddpm(20, table)
    base = sgm.txt2noisy_sigmas(full, 0.15, 20)
    refiner = sgm.img2img_sigmas(full, 0.15)
    assert len(base) == 19 and float(base[-1]) == float(table[99])  # 18 steps, ending at t = 99
    assert refiner.tolist() == [float(table[99]), float(table[49]), 0.0]  # 2 steps from t = 99
    assert switch_at(0.15, 20) == 0.9
    assert len(sgm.txt2noisy_sigmas(full, 0.0, 20)) == 21 and switch_at(0.0, 20) == 1.0  # the base runs it all
    assert len(sgm.txt2noisy_sigmas(full, 1.0, 20)) == 1 and switch_at(1.0, 20) == 0.0  # the refiner runs it all
    # after img2img's cut the demo still counts S + 1: where it would drop every σ the largest stays
    assert sgm.txt2noisy_sigmas(sgm.img2img_sigmas(full, 0.1), 0.5, 20).tolist() == [float(table[49])]


def test_the_refiner_alone_runs_img2img_with_the_given_aesthetic_scores(files):
    """img2img on the refiner file: its encoded empty negative, original size = the image's, scores 7 / 1."""
    from sd_cli.pipelines.conditioning import guided_model
    from sd_cli.pipelines.img2img import img2img_latents

    path, weights, config = files["sdxl-refiner"]
    refiner = load_model(path).model
    params = SamplingParams(sampler="euler", steps=10, scale=4.0)
    x0 = torch.linspace(-1, 1, 2 * 4 * 16 * 16).reshape(2, 4, 16, 16)
    guided = guided_model(refiner, PROMPTS, ["", ""], 4.0, (SIZE, SIZE), aesthetic_scores=(7.0, 1.0))
    ours = img2img_latents(refiner, guided, x0, SEEDS, params, 0.5)
    timesteps, sigmas = trailing(10)
    keep = max(int(0.5 * 11), 1)
    timesteps, sigmas = timesteps[11 - keep:], sigmas[11 - keep:]
    start = x0 + NoiseSource(SEEDS).draw((4, 16, 16), "cpu") * sigmas[0]
    cond = conditioning(weights, config, ["", ""], SizeConditioning((SIZE, SIZE), aesthetic_score=7.0),
                        SizeConditioning((SIZE, SIZE), aesthetic_score=1.0), zero_empty=False)
    assert_close(ours, euler(diffusers_unet(weights, config), start, timesteps, sigmas, *cond, 4.0))


# -- the command line ---------------------------------------------------------------------------

def read_png(path):
    import numpy as np
    from PIL import Image

    image = Image.open(path)
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()), image.info["parameters"]


@pytest.fixture(scope="module")
def checkpoints(files, tmp_path_factory):
    """checkpoints/ with the base and the refiner (YAMLs beside them), where --from-png finds them by name."""
    folder = tmp_path_factory.mktemp("work")
    for family in ("sdxl", "sdxl-refiner"):
        write_tiny_checkpoint(family, folder / "checkpoints", fmt="safetensors")
    return folder


def test_txt2img_with_the_refiner_writes_the_handed_over_image_and_its_parameters(checkpoints, run_cli,
                                                                                   monkeypatch):
    from sd_cli.files.images import to_uint8

    monkeypatch.chdir(checkpoints)
    base_path, refiner_path = (checkpoints / "checkpoints" / f"tiny-{f}.safetensors" for f in ("sdxl", "sdxl-refiner"))
    result = run_cli("txt2img", "a red circle", "-n", "blurry", "--ckpt", base_path, "--refiner", refiner_path,
                     "--refiner-strength", "0.5", "--refiner-steps", "6", "--aesthetic-score", "7",
                     "--sampler", "euler", "--steps", "5", "--scale", "4", "-H", str(SIZE), "-W", str(SIZE),
                     "--seed", "7", "--no-watermark", "-o", "out.png")
    assert result.code == 0, result.stderr
    assert (checkpoints / "out.png").is_file()
    base, refiner = load_model(base_path).model, load_model(refiner_path).model
    params = SamplingParams("euler", 5, 4.0)
    noise = NoiseSource([7])
    handed = txt2img_latents(base, ["a red circle"], ["blurry"], [7], params, SIZE, SIZE, noise=noise, handoff=0.5)
    options = RefinerOptions(strength=0.5, steps=6, aesthetic_scores=(7.0, 2.5))
    latents = refine_latents(refiner, handed, ["a red circle"], ["blurry"], noise, params, options)
    pixels, infotext = read_png(checkpoints / "out.png")
    expected = torch.from_numpy(to_uint8(refiner.decode_latents(latents))[0])
    # float rounding (oneDNN's reduction order) may move a value across a quantisation step
    assert (pixels.int() - expected.int()).abs().max() <= 1 and (pixels != expected).float().mean() < 1e-3
    from sd_cli.loading.checkpoint import model_hash

    # 0.5 of 5 steps: int(0.5 · 6) - 1 = 2 σ dropped, the base runs 3 of 5 steps
    assert (f"Refiner: tiny-sdxl-refiner [{model_hash(refiner_path)}], Refiner switch at: 0.6, "
            "Refiner strength: 0.5, Refiner steps: 6, Aesthetic score: 7, Negative aesthetic score: 2.5") in infotext

    again = run_cli("txt2img", "--from-png", "out.png", "--no-watermark", "-o", "again.png")
    assert again.code == 0, again.stderr
    repeated, repeated_infotext = read_png(checkpoints / "again.png")
    assert torch.equal(repeated, pixels) and repeated_infotext == infotext


def test_the_switch_point_follows_the_demo_strength(checkpoints, run_cli, monkeypatch):
    monkeypatch.chdir(checkpoints)
    result = run_cli("txt2img", "a red circle", "--ckpt", "tiny-sdxl.safetensors", "--refiner",
                     "tiny-sdxl-refiner.safetensors", "--sampler", "euler", "--steps", "20", "--scale", "4",
                     "-H", "64", "-W", "64", "--seed", "1", "--no-watermark", "-o", "twenty.png")
    assert result.code == 0, result.stderr
    _, infotext = read_png(checkpoints / "twenty.png")
    assert "Refiner switch at: 0.9, Refiner strength: 0.15, Refiner steps: 20," in infotext  # 18 of 20 steps


def test_the_refiner_alone_takes_img2img_with_its_config_given(files, run_cli, tmp_path):
    from omegaconf import OmegaConf

    refiner = write_tiny_checkpoint("sdxl-refiner", tmp_path / "bare", fmt="safetensors", yaml_beside=False)
    yaml = tmp_path / "refiner.yaml"
    OmegaConf.save(OmegaConf.create(files["sdxl-refiner"][2]), yaml)
    image = tmp_path / "in.png"
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (SIZE, SIZE), (200, 40, 40)).save(image)
    result = run_cli("img2img", "a red square", "--ckpt", refiner, "--config", yaml, "-i", image, "--sampler", "euler",
                     "--steps", "4", "--strength", "0.5", "--negative-aesthetic-score", "1", "--no-watermark",
                     "-o", tmp_path / "x.png")
    assert result.code == 0, result.stderr
    assert "Aesthetic score: 6, Negative aesthetic score: 1" in read_png(tmp_path / "x.png")[1]


@pytest.mark.parametrize("args, message", [
    (("--ckpt", "tiny-sdxl.safetensors", "--refiner", "tiny-sdxl.safetensors"),
     "--refiner tiny-sdxl.safetensors is SDXL, not the SDXL refiner (sd_xl_refiner_1.0): pass the refiner's file"),
    (("--ckpt", "tiny-sdxl-refiner.safetensors", "--refiner", "tiny-sdxl-refiner.safetensors"),
     "--refiner finishes an SDXL base's images, and tiny-sdxl-refiner.safetensors is SDXL refiner: pass an SDXL "
     "base with --ckpt, or drop --refiner"),
    (("--ckpt", "tiny-sdxl.safetensors", "--refiner-strength", "0.3"),
     "--refiner-strength: part of the refiner hand-off, which --refiner turns on; add it"),
    (("--ckpt", "tiny-sdxl.safetensors", "--refiner", "tiny-sdxl-refiner.safetensors", "--refiner-strength", "2"),
     "--refiner-strength 2.0 must be between 0 and 1"),
])
def test_a_wrong_refiner_or_base_is_one_line_before_anything_loads(checkpoints, run_cli, monkeypatch, args, message):
    monkeypatch.chdir(checkpoints)
    result = run_cli("txt2img", "a red circle", *args, "--sampler", "euler", "--steps", "2", "--no-watermark",
                     "-o", "never.png")
    assert result.code == 2 and result.stderr.strip().endswith(message), result.stderr
    assert "loaded" not in result.stderr and "Traceback" not in result.stderr
    assert not (checkpoints / "never.png").exists()


# -- memory ---------------------------------------------------------------------------------------

def test_offloaded_the_base_leaves_the_device_before_the_refiner_comes_in(files):
    """--offload's path on the CPU "device": the same image, and the base holds nothing there after the hand-off."""
    from sd_cli.pipelines.refine import txt2img_refined
    from sd_cli.runtime.offload import enable_offload

    params = SamplingParams(sampler="euler", steps=4, scale=3.0)
    options = RefinerOptions(strength=0.5)
    plain = txt2img_refined(load_model(files["sdxl"][0]).model, load_model(files["sdxl-refiner"][0]).model,
                            PROMPTS[:1], [""], SEEDS[:1], params, 64, 64, options)
    base, refiner = load_model(files["sdxl"][0]).model, load_model(files["sdxl-refiner"][0]).model
    enable_offload(base, "cpu")
    enable_offload(refiner, "cpu")
    offloaded = txt2img_refined(base, refiner, PROMPTS[:1], [""], SEEDS[:1], params, 64, 64, options)
    assert torch.equal(offloaded, plain)
    assert base.offload.moves == ["text encoder", "UNet"] and base.offload.resident is None
    assert refiner.offload.moves == ["text encoder", "UNet", "VAE"]


def test_the_refiner_goes_beside_the_base_only_where_its_weights_fit(files, monkeypatch):
    from sd_cli.loading.loader import prepare_checkpoint
    from sd_cli.run import refiner as refiner_run
    from sd_cli.runtime import memory

    prepared = prepare_checkpoint(files["sdxl-refiner"][0])
    fp16 = refiner_run.weight_bytes(prepared, torch.float16)
    vae = sum(t.numel() for k, t in prepared.weights.items() if k.startswith("first_stage_model."))
    rest = sum(t.numel() for k, t in prepared.weights.items() if not k.startswith("first_stage_model."))
    assert fp16 == 4 * vae + 2 * rest  # the VAE stays in float32
    gpu = torch.device("cuda")
    monkeypatch.setattr(memory, "available_bytes", lambda device: fp16 / memory.USABLE)
    assert refiner_run.fits_beside_base(prepared, gpu, torch.float16)
    monkeypatch.setattr(memory, "available_bytes", lambda device: fp16 / memory.USABLE - 1)
    assert not refiner_run.fits_beside_base(prepared, gpu, torch.float16)
    assert refiner_run.fits_beside_base(prepared, torch.device("cpu"), torch.float16)  # host memory: both
