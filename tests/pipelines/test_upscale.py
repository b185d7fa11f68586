"""upscale: the SD 2 x4 upscaler against diffusers' StableDiffusionUpscalePipeline on the same tiny weights.

The reference (support/upscale_reference.py) is diffusers' own pipeline, UNet, VAE and schedulers,
built by diffusers' LDM converter from a tiny x4 file in the original format; it is given the
same start latent (the seed's first draw) and draws its augmentation noise from the same
generator next, which is sd_cli's convention. Images are compared as floats in [0, 1] (diffusers
rounds to uint8, the original truncates). The fitted inputs are computed here with PIL and NumPy
as the two scripts do, independently of files/low_res.py.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from references import smooth_image  # noqa: E402
from tiny_models import tiny_config, tiny_state_dict, write_tiny_checkpoint  # noqa: E402
from upscale_reference import UpscaleReference  # noqa: E402

from sd_cli.errors import UsageError  # noqa: E402
from sd_cli.files.low_res import load_low_res  # noqa: E402
from sd_cli.loading.config import load_config  # noqa: E402
from sd_cli.loading.detection import detect_family  # noqa: E402
from sd_cli.loading.loader import load_model  # noqa: E402
from sd_cli.loading.packaged import packaged_config  # noqa: E402
from sd_cli.models.families import family_of  # noqa: E402
from sd_cli.models.noise_augmentation import NoiseAugmentation  # noqa: E402
from sd_cli.pipelines.upscale import upscale  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams  # noqa: E402

TOLERANCE = 1e-4  # max abs difference of images in [0, 1], float32
STEPS = 5  # divides 1000: diffusers' "leading" DDIM grid is then the original's
SCALE = 9.0
PROMPT = "a professional photograph of a cat"

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def x4(tmp_path_factory):
    path = write_tiny_checkpoint("sd2-x4", tmp_path_factory.mktemp("x4"), fmt="safetensors")
    return path, load_model(path).model, UpscaleReference(path, path.with_suffix(".yaml"))


def ours_01(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1) / 2).clamp(0, 1)


def assert_parity(ours, theirs, shape):
    assert ours.shape == theirs.shape == shape
    assert torch.isfinite(ours).all() and ours.std() > 1e-2, "a (nearly) constant image proves little"
    diff = (ours_01(ours) - theirs).abs().max().item()
    print(f"max abs diff {diff:.2e}")
    assert diff < TOLERANCE, diff


# -- the model: config, detection, family -------------------------------------------------------------


def test_the_packaged_yaml_is_the_original_upscaler():
    config = load_config(packaged_config("x4-upscaling.yaml"))
    assert (config.kind, config.parameterization, config.scale_factor) == ("upscale", "v", 0.08333)
    assert (config.linear_start, config.linear_end, config.unet_in_channels) == (0.0001, 0.02, 7)
    assert config.low_scale_params == {"noise_schedule_config": {"linear_start": 0.0001, "linear_end": 0.02},
                                       "max_noise_level": 350}
    family = family_of(config)
    assert (family.name, family.subcommands, family.watermark_text) == ("sd2-x4-upscaler", ("upscale",), "SDV2")
    assert family.latent_shape(512, 384) == (4, 128, 96)  # the latent has the low-res image's size


def test_the_full_size_unet_is_the_released_layout():
    """Built on meta from the packaged YAML: the released x4 file's tensor shapes."""
    from sd_cli.models.empty import empty_modules
    from sd_cli.models.unet import UNetModel

    with empty_modules():
        unet = UNetModel(**load_config(packaged_config("x4-upscaling.yaml")).unet_params)
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert shapes["input_blocks.0.0.weight"] == (256, 7, 3, 3)
    assert shapes["label_emb.weight"] == (1000, 1024)
    # levels 1 and 2 attend to the text in attn1 (context 1024 wide); level 3 and the middle to the pixels
    assert shapes["input_blocks.4.1.transformer_blocks.0.attn1.to_k.weight"] == (512, 1024)
    assert shapes["input_blocks.10.1.transformer_blocks.0.attn1.to_k.weight"] == (1024, 1024)
    assert shapes["middle_block.1.transformer_blocks.0.attn1.to_k.weight"] == (1024, 1024)
    assert shapes["output_blocks.8.1.transformer_blocks.0.attn1.to_k.weight"] == (512, 1024)
    assert "input_blocks.1.1.norm.weight" not in shapes  # attention_resolutions [2, 4, 8]: none at level 0


def test_detected_from_its_keys_without_a_yaml():
    weights, _ = tiny_state_dict("sd2-x4")
    assert detect_family(weights, "x4.safetensors").config_name == "x4-upscaling.yaml"


def test_the_augmentation_is_the_originals():
    """q_sample on the low-res schedule: level 0 still adds 0.01 * noise (sqrt(beta_0))."""
    augmentation = NoiseAugmentation.from_config(tiny_config("sd2-x4")["model"]["params"]["low_scale_config"]["params"],
                                                 "x4")
    betas = np.linspace(1e-4 ** 0.5, 0.02 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    x, noise = smooth_image(16), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for level in (0, 20, 100, 350):
        a, s = np.float32(np.sqrt(alphas_cumprod[level])), np.float32(np.sqrt(1 - alphas_cumprod[level]))
        torch.testing.assert_close(augmentation.augment(x, level, noise), float(a) * x + float(s) * noise,
                                   rtol=0, atol=1e-7)
    assert augmentation.sqrt_one_minus_alphas_cumprod[0].item() == pytest.approx(0.01, abs=1e-7)
    with pytest.raises(UsageError, match="--noise-level 351 is out of range: this upscaler takes 0 to 350"):
        augmentation.augment(x, 351, noise)


# -- parity with diffusers ------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_level", [0, 20, 100])
def test_parity_at_noise_levels(x4, noise_level):
    _, model, ref = x4
    low = smooth_image(64)
    ours = upscale(model, low, [PROMPT], [""], [7], SamplingParams(steps=STEPS, scale=SCALE), noise_level)
    assert_parity(ours, ref.upscale(low, PROMPT, "", 7, STEPS, SCALE, noise_level), (1, 3, 256, 256))


def test_the_noise_level_and_the_negative_prompt_change_the_image(x4):
    """The level reaches the UNet (class label and augmentation): a test blind to it could not fail."""
    _, model, _ = x4
    low, params = smooth_image(64), SamplingParams(steps=2, scale=SCALE)
    at = {level: upscale(model, low, [PROMPT], [""], [7], params, level) for level in (0, 100)}
    assert (at[0] - at[100]).abs().max() > 0.05
    other = upscale(model, low, [PROMPT], ["blurry"], [7], params, 0)
    assert (other - at[0]).abs().max() > 0.01


def test_a_batch_is_its_images_alone(x4):
    """Image i's start latent and augmentation noise come from seed + i alone."""
    _, model, _ = x4
    low, params = smooth_image(64), SamplingParams(steps=2, scale=SCALE)
    both = upscale(model, low, [PROMPT, "a dog"], ["", ""], [3, 4], params, 20)
    alone = upscale(model, low, ["a dog"], [""], [4], params, 20)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)


def _write(path, width, height):
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x * y) % 251], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_floor_fit_is_the_streamlit_scripts(tmp_path):
    """140x70 (not multiples of 64, not square) -> 128x64, PIL's default (bicubic) resize, x / 127.5 - 1."""
    _write(tmp_path / "in.png", 140, 70)
    expected = np.asarray(Image.open(tmp_path / "in.png").convert("RGB").resize((128, 64))).astype(np.float32)
    got = load_low_res(tmp_path / "in.png", "floor")
    assert got.shape == (1, 3, 64, 128)
    torch.testing.assert_close(got, torch.from_numpy(expected / 127.5 - 1.0).permute(2, 0, 1)[None], rtol=0, atol=0)
    _write(tmp_path / "small.png", 140, 60)
    with pytest.raises(UsageError, match="is 140x60: --upscale-fit floor needs at least 64x64 pixels; use "
                                         "--upscale-fit pad"):
        load_low_res(tmp_path / "small.png", "floor")


def test_pad_fit_is_the_gradio_scripts(tmp_path):
    """Edge padding at the bottom and right to max(2, ceil(side / 64)) * 64: 150x40 -> 192x128."""
    pixels = _write(tmp_path / "in.png", 150, 40)
    got = load_low_res(tmp_path / "in.png", "pad")
    assert got.shape == (1, 3, 128, 192) == (1, 3, max(2, math.ceil(40 / 64)) * 64, max(2, math.ceil(150 / 64)) * 64)
    as_uint8 = ((got[0].permute(1, 2, 0) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    assert (as_uint8[:40, :150] == pixels).all()  # the image itself, unscaled, at the top left
    assert (as_uint8[40:, :150] == pixels[-1:, :]).all() and (as_uint8[:40, 150:] == pixels[:, -1:]).all()
    assert (as_uint8[40:, 150:] == pixels[-1, -1]).all()


@pytest.mark.parametrize("fit, size, low_res_shape", [("floor", (140, 70), (64, 128)), ("pad", (70, 40), (128, 128))])
def test_parity_for_both_fits(x4, tmp_path, fit, size, low_res_shape):
    """A non-square, non-multiple-of-64 input through each fit; the reference gets the scripts' own fit."""
    _, model, ref = x4
    pixels = _write(tmp_path / "in.png", *size)
    if fit == "floor":
        fitted = np.asarray(Image.fromarray(pixels).resize(low_res_shape[::-1]))
    else:
        pad_h, pad_w = low_res_shape[0] - size[1], low_res_shape[1] - size[0]
        fitted = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    theirs_input = torch.from_numpy(fitted.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    params = SamplingParams(steps=2, scale=SCALE)
    ours = upscale(model, load_low_res(tmp_path / "in.png", fit), [PROMPT], [""], [11], params, 20)
    theirs = ref.upscale(theirs_input, PROMPT, "", 11, 2, SCALE, 20)
    assert_parity(ours, theirs, (1, 3, 4 * low_res_shape[0], 4 * low_res_shape[1]))


# -- tiled sampling -------------------------------------------------------------------------------------


def test_tiles_as_large_as_the_latent_change_nothing(x4):
    _, model, _ = x4
    low, params = smooth_image(64), SamplingParams(steps=2, scale=SCALE)
    whole = upscale(model, low, [PROMPT], [""], [5], params, 20)
    torch.testing.assert_close(upscale(model, low, [PROMPT], [""], [5], params, 20, tile=64), whole, rtol=0, atol=0)


def test_tiled_sampling_stays_near_the_whole(x4):
    """Four overlapping 48-cell tiles of a 64x64 latent: the seams are small against the image's range.

    The bound is loose on purpose (docs/performance.md has the measured figures): the tiles' own
    attention and GroupNorm statistics make a tiled image differ everywhere a little."""
    _, model, _ = x4
    low, params = smooth_image(64), SamplingParams(steps=2, scale=SCALE)
    whole = upscale(model, low, [PROMPT], [""], [5], params, 20)
    tiled = upscale(model, low, [PROMPT], [""], [5], params, 20, tile=48)
    diff = (ours_01(tiled) - ours_01(whole)).abs()
    print(f"tiled vs whole: max {diff.max():.3f}, mean {diff.mean():.4f}")
    assert 0 < diff.mean() < 0.05 and diff.max() < 0.5


# -- the command line ---------------------------------------------------------------------------------


def test_cli_writes_the_4x_image_of_the_original_formula(x4, tmp_path, run_cli):
    """No watermark: the written pixels are the reference's truncated to uint8, as the scripts do."""
    path, _, ref = x4
    _write(tmp_path / "in.png", 64, 64)
    result = run_cli("upscale", PROMPT, "--ckpt", path, "--image", tmp_path / "in.png", "--steps", STEPS,
                     "--seed", 7, "--noise-level", 0, "--no-watermark", "-o", tmp_path / "out.png")
    assert result.code == 0, result.stderr
    written = np.asarray(Image.open(tmp_path / "out.png"))
    low = load_low_res(tmp_path / "in.png", "floor")
    theirs = ref.upscale(low, PROMPT, "", 7, STEPS, SCALE, 0)  # scale 9: upscale's default
    expected = (theirs[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert written.shape == (256, 256, 3)
    off = np.abs(written.astype(int) - expected.astype(int))
    assert off.max() <= 1 and (off > 0).mean() < 0.02  # float noise at truncation boundaries only
    info = Image.open(tmp_path / "out.png").info["parameters"]
    assert "Steps: 5, Sampler: DDIM, CFG scale: 9.0, Seed: 7, Size: 256x256" in info and "Noise level: 0" in info
    assert "Denoising strength" not in info


def test_cli_watermarks_with_sdv2(x4, tmp_path, run_cli):
    from sd_cli.files.watermark import identify_watermark

    path, _, _ = x4
    _write(tmp_path / "in.png", 128, 64)
    result = run_cli("upscale", PROMPT, "--ckpt", path, "--image", tmp_path / "in.png", "--steps", 1, "--seed", 1,
                     "-o", tmp_path / "out.png")
    assert result.code == 0, result.stderr
    text, score = identify_watermark(np.asarray(Image.open(tmp_path / "out.png").convert("RGB")))
    assert (Image.open(tmp_path / "out.png").size, text) == ((512, 256), "SDV2"), score


def test_cli_refuses_another_model_before_its_weights_load(tmp_path, run_cli, monkeypatch):
    from sd_cli.loading import loader

    sd2 = write_tiny_checkpoint("sd2", tmp_path, fmt="safetensors")
    _write(tmp_path / "in.png", 64, 64)
    monkeypatch.setattr(loader, "build_and_load", lambda *a, **k: pytest.fail("weights were loaded"))
    result = run_cli("upscale", "x", "--ckpt", sd2, "--image", tmp_path / "in.png", "-o", tmp_path / "out.png")
    assert result.code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: upscale needs the SD 2 x4 upscaler (x4-upscaler-ema.ckpt: a UNet with 7 input channels and a "
        "noise-level embedding); this checkpoint is SD 2.x; use img2img for it")
    assert not (tmp_path / "out.png").exists()


def test_the_upscaler_refuses_other_subcommands(x4, tmp_path, run_cli):
    path, _, _ = x4
    result = run_cli("txt2img", "x", "--ckpt", path, "-o", tmp_path / "out.png")
    assert (result.code, result.stderr.strip().splitlines()[-1]) == (
        2, "error: this checkpoint's UNet takes 7 input channels (SD 2 x4 upscaler): use sd-cli upscale")


@pytest.mark.parametrize("flags, message", [
    (["--noise-level", "351"], "error: --noise-level 351 is out of range: the x4 upscaler takes 0 to 350"),
    (["--noise-level", "-1"], "error: --noise-level -1 is out of range: the x4 upscaler takes 0 to 350"),
    (["--tile", "12"], "error: --tile 12: give a multiple of 8 of at least 16 input pixels, or 0 for no tiling"),
    (["--upscale-fit", "crop"], "'crop' is not one of 'floor', 'pad'."),  # the parser's own message
])
def test_bad_flags_are_one_line_errors(tmp_path, run_cli, flags, message):
    result = run_cli("upscale", "x", "--image", tmp_path / "in.png", *flags)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and lines[-1].startswith("error: ") and lines[-1].endswith(message), lines


def test_original_superresolution_command_line(x4, tmp_path):
    """scripts/superresolution.py: the streamlit script's defaults (seed 0, scale 9, its prompt), the outdir layout."""
    import subprocess
    import sys
    from pathlib import Path

    from sd_cli.files.infotext import parse_infotext

    path, _, _ = x4
    _write(tmp_path / "in.png", 100, 70)  # floored to 64x64
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "scripts" / "superresolution.py"), "--image", str(tmp_path / "in.png"),
                             "--ckpt", str(path), "--ddim_steps", "1", "--skip-grid"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "outputs" / "superresolution-samples" / "samples").glob("*.png"))
    assert len(written) == 1 and Image.open(written[0]).size == (256, 256)
    prompt, _, fields = parse_infotext(Image.open(written[0]).text["parameters"])
    assert prompt == "a high quality professional photograph"
    assert (fields["Seed"], fields["CFG scale"], fields["Steps"], fields["Noise level"]) == ("0", "9.0", "1", "20")
