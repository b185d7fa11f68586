"""SDXL and SD-Turbo through the CLI, from tiny sgm files: the watermark, the size and crop flags, the
model's own defaults, the Turbo and EDM schedules, the PNG's parameters and --from-png, the hires fix.

Each test compares what the CLI writes with the pipeline run on the values the feature should give
(the pipelines' own parity with the reference is tests/pipelines/test_sdxl.py's)."""

import numpy as np
import pytest
import torch
from PIL import Image
from sgm_watermark_reference import demo_saved_pixels
from tiny_models import write_tiny_checkpoint

from sd_cli.files import watermark
from sd_cli.files.images import to_uint8
from sd_cli.loading.loader import load_model
from sd_cli.pipelines.txt2img import txt2img_latents
from sd_cli.sampling.denoising import SamplingParams

SIZE = 128


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sgm-cli")
    return {family: write_tiny_checkpoint(family, folder / family, fmt="safetensors") for family in ("sdxl", "sd-turbo")}


@pytest.fixture(scope="module")
def models(files):
    return {family: load_model(path).model for family, path in files.items()}


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_sdxl_renders_carry_the_demos_float_watermark(files, models, run_cli, tmp_path):
    out = tmp_path / "marked.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--sampler", "euler", "--steps", 2,
                     "--scale", 4, "--height", 256, "--width", 256, "--seed", 7, "-o", out)
    assert result.code == 0, result.stderr
    model = models["sdxl"]
    latents = txt2img_latents(model, ["a red circle"], [""], [7], SamplingParams("euler", 2, 4.0), 256, 256)
    assert np.array_equal(pixels(out), demo_saved_pixels(model.decode_latents(latents))[0])
    assert watermark.NOTE_KEY not in Image.open(out).text
    verified = run_cli("verify", out)
    assert verified.code == 0 and verified.stdout.startswith(f"{out}: {watermark.WATERMARK_SGM} (match ")


def test_no_watermark_writes_the_plain_pixels(files, models, run_cli, tmp_path):
    out = tmp_path / "plain.png"
    assert run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--sampler", "euler", "--steps", 2,
                   "--scale", 4, "--height", SIZE, "--width", SIZE, "--seed", 7, "--no-watermark", "-o", out).code == 0
    model = models["sdxl"]
    latents = txt2img_latents(model, ["a red circle"], [""], [7], SamplingParams("euler", 2, 4.0), SIZE, SIZE)
    assert np.array_equal(pixels(out), to_uint8(model.decode_latents(latents))[0])


def test_sdxl_defaults_are_the_demos_guidance_and_sampler(files, models, run_cli, tmp_path):
    """No --scale or --sampler: guidance 5.0 and Euler, as the demo."""
    out = tmp_path / "default.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--steps", 2, "--seed", 3, "-H", SIZE,
                     "-W", SIZE, "--no-watermark", "--json", "-o", out)
    assert result.code == 0, result.stderr
    record = __import__("json").loads(result.stdout)
    assert (record["sampler"], record["scale"]) == ("euler", 5.0)
    model = models["sdxl"]
    latents = txt2img_latents(model, ["a red circle"], [""], [3], SamplingParams("euler", 2, 5.0), SIZE, SIZE)
    assert np.array_equal(pixels(out), to_uint8(model.decode_latents(latents))[0])


def test_sdxl_renders_at_1024_and_sd_turbo_at_512_without_a_size(models):
    from sd_cli.run.jobs import Job
    from sd_cli.run.modes import MODES

    job = Job(index=0, prompt="a")
    assert MODES["txt2img"].size(job, models["sdxl"].family, None) == (1024, 1024)
    assert MODES["txt2img"].size(job, models["sd-turbo"].family, None) == (512, 512)


def test_a_defaults_file_scale_and_sampler_win_over_the_models(files, run_cli, tmp_path, monkeypatch):
    defaults = tmp_path / "defaults.toml"
    defaults.write_text('scale = 3.0\n[txt2img]\nsampler = "heun"\n')
    monkeypatch.setenv("SD_CLI_DEFAULTS", str(defaults))
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--steps", 1, "--seed", 3, "-H", SIZE,
                     "-W", SIZE, "--no-watermark", "--json", "-o", tmp_path / "a.png")
    assert result.code == 0, result.stderr
    record = __import__("json").loads(result.stdout)
    assert (record["sampler"], record["scale"]) == ("heun", 3.0)


def test_sd_keeps_its_own_defaults(sd1_ckpt, run_cli, tmp_path):
    result = run_cli("txt2img", "a red circle", "--ckpt", sd1_ckpt, "--steps", 1, "--seed", 3, "-H", 64, "-W", 64,
                     "--json", "-o", tmp_path / "a.png")
    record = __import__("json").loads(result.stdout)
    assert result.code == 0 and (record["sampler"], record["scale"]) == ("ddim", 7.5)


def test_a_prompt_file_lines_own_scale_is_kept(files, run_cli, tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text('{"prompt": "a", "scale": 7.5}\nb\n')
    result = run_cli("txt2img", "--from-file", lines, "--ckpt", files["sdxl"], "--steps", 1, "--seed", 3, "-H", SIZE,
                     "-W", SIZE, "--no-watermark", "--json", "--outdir", tmp_path / "out")
    assert result.code == 0, result.stderr
    records = [__import__("json").loads(line) for line in result.stdout.splitlines() if '"grid"' not in line]
    assert [(r["scale"], r["sampler"]) for r in records] == [(7.5, "euler"), (5.0, "euler")]


def test_name_placeholders_of_model_defaults_are_refused(files, run_cli, tmp_path):
    result = run_cli("txt2img", "a", "--ckpt", files["sdxl"], "--name", "{scale}-{seed}.png", "--outdir", tmp_path)
    assert result.code == 2 and "{scale} is the model's own default when scale is not given" in result.stderr
    assert run_cli("txt2img", "a", "--ckpt", files["sdxl"], "--name", "{scale}.png", "--scale", 2, "--steps", 1,
                   "-H", SIZE, "-W", SIZE, "--outdir", tmp_path, "--no-watermark").code == 0
    assert (tmp_path / "2.0.png").exists()


SIZE_FLAGS = ["--original-width", 768, "--original-height", 1024, "--crop-top", 32, "--crop-left", 48,
              "--target-width", 512, "--target-height", 640]


def test_size_and_crop_flags_reach_the_render(files, models, run_cli, tmp_path):
    from sd_cli.loading.loader import LoadedModel
    from sd_cli.models.sdxl_conditioning import SizeFlags
    from sd_cli.prompting.prompts import TextOptions
    from sd_cli.run.session import Session

    out = tmp_path / "sized.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--steps", 2, "--seed", 3, "-H", SIZE,
                     "-W", SIZE, "--no-watermark", *SIZE_FLAGS, "-o", out)
    assert result.code == 0, result.stderr
    flags = SizeFlags(original_width=768, original_height=1024, crop_top=32, crop_left=48, target_width=512,
                      target_height=640)
    session = Session(LoadedModel(models["sdxl"], files["sdxl"], "test", None), TextOptions(), None, size_flags=flags)
    latents = txt2img_latents(session, ["a red circle"], [""], [3], SamplingParams("euler", 2, 5.0), SIZE, SIZE)
    assert np.array_equal(pixels(out), to_uint8(models["sdxl"].decode_latents(latents))[0])


@pytest.mark.parametrize("flag", ["--crop-top", "--target-width"])
def test_size_flags_are_refused_for_a_model_without_them(files, sd1_ckpt, run_cli, tmp_path, flag):
    sd1 = run_cli("txt2img", "a", "--ckpt", sd1_ckpt, "-H", 64, "-W", 64, "--steps", 1, flag, 8, "-o", tmp_path / "a.png")
    assert sd1.code == 2 and sd1.stderr.strip().endswith(
        f"{flag}: SD 1.x is not conditioned on this value (it has no size conditioning); drop it")
    turbo = run_cli("txt2img", "a", "--ckpt", files["sd-turbo"], "-H", 64, "-W", 64, "--steps", 1, flag, 8,
                    "-o", tmp_path / "b.png")
    assert turbo.code == 2 and "is not conditioned on this value" in turbo.stderr
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def test_bad_size_flag_values_are_refused_before_loading(run_cli, tmp_path):
    result = run_cli("txt2img", "a", "--original-width", 0, "-o", tmp_path / "a.png")
    assert result.code == 2 and "--original-width 0 must be at least 1 (pixels)" in result.stderr
    result = run_cli("txt2img", "a", "--crop-left", -4, "-o", tmp_path / "a.png")
    assert result.code == 2 and "--crop-left -4 must be 0 or more (pixels)" in result.stderr


def test_the_png_records_every_sdxl_value_and_from_png_reapplies_them(files, run_cli, tmp_path):
    import json

    first = tmp_path / "first.png"
    assert run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--steps", 3, "--seed", 11, "-H", SIZE,
                   "-W", SIZE, "--schedule", "edm", "--sampler", "heun", "--scale", 3, "--no-watermark",
                   *SIZE_FLAGS, "-o", first).code == 0
    text = Image.open(first).text["parameters"]
    assert ("Steps: 3, Sampler: Heun, Schedule type: EDM, CFG scale: 3.0, Seed: 11, Size: 128x128" in text
            and "Original width: 768, Original height: 1024, Crop top: 32, Crop left: 48, Target width: 512, "
                "Target height: 640, Version: " in text), text
    record = json.loads(run_cli("info", "--json", first).stdout)
    assert (record["sampler"], record["parameters"]["Target height"]) == ("heun_edm", "640")
    again = tmp_path / "again.png"
    result = run_cli("txt2img", "--from-png", first, "--ckpt", files["sdxl"], "--no-watermark", "-o", again)
    assert result.code == 0, result.stderr
    assert np.array_equal(pixels(again), pixels(first))
    assert Image.open(again).text["parameters"] == text
    plain = tmp_path / "plain.png"
    assert run_cli("txt2img", "--from-png", first, "--ckpt", files["sdxl"], "--no-watermark", "--target-width", 128,
                   "-o", plain).code == 0
    assert "Target width: 128, Target height: 640" in Image.open(plain).text["parameters"]
    assert not np.array_equal(pixels(plain), pixels(first))


def test_automatic1111s_schedule_type_reads_back_into_the_sampler(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    from sd_cli.files.reading import info_record

    for written, sampler in [("Sampler: DPM++ 2M, Schedule type: Karras", "dpmpp_2m_karras"),
                             ("Sampler: Euler a, Schedule type: Automatic", "euler_a"),
                             ("Sampler: DDIM, Schedule type: Automatic", "ddim"),
                             ("Sampler: Euler, Schedule type: Align Your Steps", "euler")]:
        info = PngInfo()
        info.add_text("parameters", f"a cat\n{written}, Steps: 20, Seed: 1")
        path = tmp_path / "a.png"
        Image.new("RGB", (8, 8)).save(path, pnginfo=info)
        assert info_record(path)["sampler"] == sampler


@pytest.mark.parametrize("family, steps", [("sd-turbo", 1), ("sdxl", 4)])
def test_turbo_schedule_from_the_cli(files, models, run_cli, tmp_path, family, steps):
    """SD-Turbo and SDXL-Turbo (the base's layout): --schedule turbo --scale 1 runs turbo.py's Euler
    ancestral over t = 999, 899, ... with no unconditional pass."""
    out = tmp_path / "turbo.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files[family], "--schedule", "turbo", "--steps", steps,
                     "--scale", 1, "--seed", 5, "-H", SIZE, "-W", SIZE, "--no-watermark", "--json", "-o", out)
    assert result.code == 0, result.stderr
    assert __import__("json").loads(result.stdout)["sampler"] == "euler_a_turbo"
    model = models[family]
    calls = []
    original = model.unet

    def counting(x, *args):
        calls.append(x.shape[0])
        return original(x, *args)

    model.unet = counting
    try:
        latents = txt2img_latents(model, ["a red circle"], [""], [5], SamplingParams("euler_a_turbo", steps, 1.0),
                                  SIZE, SIZE)
    finally:
        del model.unet
    assert calls == [1] * steps  # one UNet call a step, on the conditional batch alone
    assert np.array_equal(pixels(out), to_uint8(model.decode_latents(latents))[0])


def test_turbo_schedule_limits(files, sd1_ckpt, run_cli, tmp_path):
    common = ["--schedule", "turbo", "--scale", 1, "-H", 64, "-W", 64, "-o", tmp_path / "a.png"]
    five = run_cli("txt2img", "a", "--ckpt", files["sd-turbo"], "--steps", 5, *common)
    assert five.code == 2 and "--steps 5: the turbo schedule runs 1 to 4 steps" in five.stderr
    sd1 = run_cli("txt2img", "a", "--ckpt", sd1_ckpt, "--steps", 1, *common)
    assert sd1.code == 2 and "schedule turbo is generative-models' (SDXL, SD-Turbo)" in sd1.stderr
    assert not (tmp_path / "a.png").exists()


def test_edm_schedule_from_the_cli(files, models, run_cli, tmp_path):
    out = tmp_path / "edm.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--schedule", "edm", "--steps", 3,
                     "--seed", 5, "-H", SIZE, "-W", SIZE, "--no-watermark", "--json", "-o", out)
    assert result.code == 0, result.stderr
    assert __import__("json").loads(result.stdout)["sampler"] == "euler_edm"
    model = models["sdxl"]
    latents = txt2img_latents(model, ["a red circle"], [""], [5], SamplingParams("euler_edm", 3, 5.0), SIZE, SIZE)
    assert np.array_equal(pixels(out), to_uint8(model.decode_latents(latents))[0])


def test_hires_fix_for_sdxl(files, models, run_cli, tmp_path):
    """The first pass at 64x64, its latent upscaled x2, the second pass conditioned on its own 128x128."""
    from sd_cli.pipelines.hires import HiresOptions, txt2img_hires

    out = tmp_path / "hires.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--steps", 2, "--seed", 5, "-H", 64, "-W", 64,
                     "--hires-scale", 2, "--hires-strength", 0.5, "--no-watermark", "-o", out)
    assert result.code == 0, result.stderr
    model = models["sdxl"]
    images = txt2img_hires(model, ["a red circle"], [""], [5], SamplingParams("euler", 2, 5.0), 64, 64,
                           HiresOptions(scale=2.0, strength=0.5))
    assert np.array_equal(pixels(out), to_uint8(images)[0]) and pixels(out).shape == (128, 128, 3)
    text = Image.open(out).text["parameters"]
    assert "Size: 64x64" in text and "Denoising strength: 0.5, Hires upscale: 2.0" in text


def test_a_bf16_cpu_run_decodes_in_float32(files, models, run_cli, tmp_path):
    """--precision bf16 on the CPU: the UNet and text towers in bf16, the VAE in float32 (the original's
    disable_first_stage_autocast), so the image is the float32 decode of the bf16 latents."""
    out = tmp_path / "bf16.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", files["sdxl"], "--steps", 2, "--seed", 5, "-H", SIZE,
                     "-W", SIZE, "--precision", "bf16", "--device", "cpu", "--no-watermark", "-o", out)
    assert result.code == 0, result.stderr
    bf16 = load_model(files["sdxl"], dtype=torch.bfloat16).model
    assert bf16.vae_dtype == torch.float32
    latents = txt2img_latents(bf16, ["a red circle"], [""], [5], SamplingParams("euler", 2, 5.0), SIZE, SIZE)
    assert np.array_equal(pixels(out), to_uint8(models["sdxl"].decode_latents(latents.float()))[0])
    fp32 = txt2img_latents(models["sdxl"], ["a red circle"], [""], [5], SamplingParams("euler", 2, 5.0), SIZE, SIZE)
    difference = (latents.float() - fp32).abs().max() / fp32.abs().max()
    assert 0 < difference < 0.05, difference  # bf16 rounding, not another image


def test_the_nan_guard_covers_sdxl(run_cli, tmp_path):
    """A UNet that overflows (an inf bias here) is a one-line error; no file is written."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from tiny_models import tiny_state_dict

    weights, config = tiny_state_dict("sdxl")
    weights["model.diffusion_model.out.2.bias"] = torch.full_like(weights["model.diffusion_model.out.2.bias"], float("inf"))
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    OmegaConf.save(OmegaConf.create(config), tmp_path / "broken.yaml")
    out = tmp_path / "nan.png"
    result = run_cli("txt2img", "a", "--ckpt", path, "--steps", 1, "-H", 64, "-W", 64, "--precision", "bf16",
                     "--device", "cpu", "-o", out)
    assert result.code == 1 and not out.exists()
    assert result.stderr.strip().splitlines()[-1].endswith(
        "the UNet produced NaN or inf values in torch.bfloat16; no image was saved. "
        "Try --precision fp32 or other settings (a lower --scale)")
