"""inpaint: parity with diffusers' StableDiffusionInpaintPipeline on tiny weights, and the mask handling.

The reference is diffusers' own pipeline run end to end from the image and mask files (its own
image and mask preprocessing, mask latents, 9-channel concat, 4-channel blending, guidance and
scheduler), given sd_cli's conventions through its public arguments: the prompt embeddings of the
transformers text encoder from support/parity_reference.py, x_T = each image's first draw (`latents=`),
and the VAE posterior mean for the image latents (diffusers samples it; `retrieve_latents` is
switched to its "argmax" mode, the mean). strength < 1 follows img2img's original rule (noise at
DDIM index t_enc, start one below), which diffusers' pipeline does not have: that case runs
diffusers' pipeline parts (preprocessing, prepare_mask_latents, scheduler) in a loop written here.
"""

import functools

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as diffusers_inpaint  # noqa: E402
from parity_reference import BETAS, Generators, Reference  # noqa: E402
from tiny_models import write_tiny_checkpoint  # noqa: E402

from sd_cli.errors import UsageError  # noqa: E402
from sd_cli.pipelines.inpaint import inpaint, inpaint_method  # noqa: E402
from sd_cli.loading.loader import load_model  # noqa: E402
from sd_cli.files.masks import MaskOptions, gaussian_blur, load_inpaint_canvas, parse_outpaint  # noqa: E402
from sd_cli.sampling.denoising import SamplingParams  # noqa: E402

SIZE = 64
TOLERANCE = 1e-4  # max abs difference of images in [0, 1]
PROMPTS = ["a red circle on a blue square", "two green triangles"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


pytestmark = [pytestmark, pytest.mark.usefixtures("one_thread")]  # tiny models: see conftest.one_thread


@pytest.fixture(autouse=True)
def posterior_mean(monkeypatch):
    """diffusers' pipeline samples the VAE posterior; sd_cli uses its mean (a documented difference)."""
    monkeypatch.setattr(diffusers_inpaint, "retrieve_latents",
                        functools.partial(diffusers_inpaint.retrieve_latents, sample_mode="argmax"))


def write_inputs(folder):
    """A smooth test image and a colour mask with grey levels (so L conversion and binarising matter)."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    image = np.stack([128 + 100 * np.sin(xs / 7), 128 + 100 * np.cos(ys / 5), (xs * ys) % 255], -1).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[10:40, 20:60] = (200, 180, 90)  # L 176: repaint
    mask[40:50, 5:30] = (90, 100, 110)  # L 97: keep
    mask[50:60, 30:50] = (128, 128, 128)  # L 128 = 0.502: repaint
    Image.fromarray(image).save(folder / "image.png")
    Image.fromarray(mask).save(folder / "mask.png")
    return folder / "image.png", folder / "mask.png"


class Model:
    def __init__(self, folder, family):
        path = write_tiny_checkpoint(family, folder, fmt="safetensors")
        self.ours = load_model(path).model
        self.ref = Reference(path, path.with_suffix(".yaml"))
        self.image_path, self.mask_path = write_inputs(folder)

    def pipe(self, scheduler):
        pipe = diffusers.StableDiffusionInpaintPipeline(
            vae=self.ref.vae, text_encoder=self.ref.text, tokenizer=self.ref.tokenizer, unet=self.ref.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def ours_inpaint(self, seeds, params, strength=1.0):
        canvas = load_inpaint_canvas(self.image_path, self.mask_path, MaskOptions(blur=0))
        image, mask = canvas.tensors()
        decoded = inpaint(self.ours, image, mask, PROMPTS[:len(seeds)], [""] * len(seeds), seeds, params, strength)
        return ((decoded + 1) / 2).clamp(0, 1)

    def diffusers_inpaint(self, seeds, params, scheduler):
        prompts = PROMPTS[:len(seeds)]
        out = self.pipe(scheduler)(
            image=Image.open(self.image_path), mask_image=Image.open(self.mask_path), height=SIZE, width=SIZE,
            num_inference_steps=params.steps, guidance_scale=params.scale,
            prompt_embeds=self.ref.encode_text(prompts), negative_prompt_embeds=self.ref.encode_text([""] * len(seeds)),
            latents=Generators(seeds).draw(), output_type="pt")
        return out.images

    @torch.no_grad()
    def partial_reference(self, seeds, params, strength):
        """strength < 1 with DDIM: diffusers' preprocessing and mask latents, the original's start index."""
        pipe, ref, batch = self.pipe(self.ref.ddim_scheduler()), self.ref, len(seeds)
        image = pipe.image_processor.preprocess(Image.open(self.image_path), height=SIZE, width=SIZE)
        mask = pipe.mask_processor.preprocess(Image.open(self.mask_path), height=SIZE, width=SIZE)
        latent_mask, masked_latent = pipe.prepare_mask_latents(
            mask, image * (mask < 0.5), batch, SIZE, SIZE, torch.float32, "cpu", None, False)
        cond, uncond = ref.encode_text(PROMPTS[:batch]), ref.encode_text([""] * batch)
        x0 = ref.encode_image(image).expand(batch, -1, -1, -1)
        first = Generators(seeds).draw()
        sched = pipe.scheduler
        sched.set_timesteps(params.steps)
        t_enc = int(strength * params.steps)
        timesteps = sched.timesteps[len(sched.timesteps) - t_enc:]
        a = sched.alphas_cumprod[sched.timesteps.flip(0)[t_enc]]
        x = a.sqrt() * x0 + (1 - a).sqrt() * first
        nine = ref.unet.config.in_channels == 9
        for i, t in enumerate(timesteps):
            x_in = torch.cat([x, latent_mask, masked_latent], dim=1) if nine else x
            x = sched.step(ref.guided(x_in, t, cond, uncond, params.scale), t, x).prev_sample
            if not nine:
                known = x0 if i == len(timesteps) - 1 else sched.add_noise(x0, first, timesteps[i + 1:i + 2])
                x = (1 - latent_mask) * known + latent_mask * x
        return (ref.decode(x) / 2 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def sd1_inpaint(tmp_path_factory):
    return Model(tmp_path_factory.mktemp("sd1i"), "sd1-inpaint")


@pytest.fixture(scope="module")
def sd2_inpaint(tmp_path_factory):
    return Model(tmp_path_factory.mktemp("sd2i"), "sd2-inpaint")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return Model(tmp_path_factory.mktemp("sd1"), "sd1")


@pytest.fixture(params=["sd1_inpaint", "sd2_inpaint", "sd1"])
def model(request):
    return request.getfixturevalue(request.param)


def dpm_scheduler():
    return diffusers.DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2,
                                                 lower_order_final=True, timestep_spacing="linspace", steps_offset=1,
                                                 final_sigmas_type="sigma_min")


def assert_parity(ours, theirs):
    assert ours.shape == theirs.shape
    assert torch.isfinite(ours).all() and ours.std() > 1e-2
    diff = (ours - theirs).abs().max().item()
    print(f"max abs diff {diff:.2e}")
    assert diff < TOLERANCE


# ---------------------------------------------------------------- parity


def test_method_follows_the_unet(sd1_inpaint, sd2_inpaint, sd1):
    assert inpaint_method(sd1_inpaint.ours) == inpaint_method(sd2_inpaint.ours) == "concat"
    assert inpaint_method(sd1.ours) == "blend"


def test_ddim_matches_diffusers_pipeline(model):
    params = SamplingParams(sampler="ddim", steps=10, scale=5.0)
    assert_parity(model.ours_inpaint([8, 9], params), model.diffusers_inpaint([8, 9], params, model.ref.ddim_scheduler()))


@pytest.mark.parametrize("name", ["sd2_inpaint", "sd1"])
def test_dpm_matches_diffusers_pipeline(request, name):
    model = request.getfixturevalue(name)
    params = SamplingParams(sampler="dpm", steps=9, scale=5.0)
    assert_parity(model.ours_inpaint([3], params), model.diffusers_inpaint([3], params, dpm_scheduler()))


@pytest.mark.parametrize("name", ["sd1_inpaint", "sd1"])
def test_strength_below_one_uses_img2img_rule(request, name):
    model = request.getfixturevalue(name)
    params = SamplingParams(sampler="ddim", steps=10, scale=5.0)
    assert_parity(model.ours_inpaint([5, 6], params, strength=0.6), model.partial_reference([5, 6], params, 0.6))


def test_blending_ends_on_the_image_latent_outside_the_mask(sd1, monkeypatch):
    """4-channel blending: after the last step the kept latent cells are exactly the image's latent."""
    decoded = []
    monkeypatch.setattr(sd1.ours, "decode_latents", lambda latents: decoded.append(latents) or latents)
    canvas = load_inpaint_canvas(sd1.image_path, sd1.mask_path, MaskOptions(blur=0))
    image, mask = canvas.tensors()
    params = SamplingParams(sampler="ddim", steps=4, scale=5.0)
    inpaint(sd1.ours, image, mask, PROMPTS[:1], [""], [1], params)
    with torch.inference_mode():
        x0 = sd1.ours.encode_image(image)
    keep = torch.nn.functional.interpolate(mask, size=(8, 8)).eq(0).expand_as(x0)
    assert 0 < keep.float().mean() < 1
    assert torch.equal(decoded[0][keep], x0[keep])
    assert (decoded[0] - x0)[~keep].abs().max() > 0.1


# ---------------------------------------------------------------- mask files


def save(array, path):
    Image.fromarray(array).save(path)
    return path


def test_mask_is_luma_binarised_at_half(tmp_path):
    image = save(np.full((8, 8, 3), 100, np.uint8), tmp_path / "i.png")
    mask = np.zeros((8, 8, 3), np.uint8)
    mask[0] = 127  # L 127 = 0.498: keep
    mask[1] = 128  # 0.502: repaint
    mask[2] = (255, 0, 0)  # L 76: keep
    mask[3] = (0, 255, 0)  # L 150: repaint
    canvas = load_inpaint_canvas(image, save(mask, tmp_path / "m.png"), MaskOptions(blur=0))
    assert canvas.model_mask[:4, 0].tolist() == [0, 1, 0, 1]
    assert canvas.model_mask[4:].max() == 0


def test_mask_from_alpha_and_invert(tmp_path):
    rgba = np.full((16, 16, 4), 200, np.uint8)
    rgba[4:8, 4:12, 3] = 0  # transparent: repaint
    image = save(rgba, tmp_path / "a.png")
    canvas = load_inpaint_canvas(image, None, MaskOptions(blur=0))
    assert canvas.model_mask.sum() == 32 and canvas.model_mask[4:8, 4:12].min() == 1
    inverted = load_inpaint_canvas(image, None, MaskOptions(blur=0, invert=True))
    assert np.array_equal(inverted.model_mask, 1 - canvas.model_mask)


def test_mask_errors_and_messages(tmp_path, capsys):
    image = save(np.full((16, 16, 3), 50, np.uint8), tmp_path / "i.png")
    with pytest.raises(UsageError, match="inpaint needs a mask"):
        load_inpaint_canvas(image, None, MaskOptions())
    black = save(np.zeros((16, 16), np.uint8), tmp_path / "black.png")
    with pytest.raises(UsageError, match="the mask is empty"):
        load_inpaint_canvas(image, black, MaskOptions())
    white = save(np.full((16, 16), 255, np.uint8), tmp_path / "white.png")
    assert load_inpaint_canvas(image, white, MaskOptions(blur=0)).model_mask.min() == 1
    assert "covers the whole image" in capsys.readouterr().err
    small = save(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((4, 4), np.uint8)), tmp_path / "small.png")
    canvas = load_inpaint_canvas(image, small, MaskOptions(blur=0))
    assert "mask 8x8 differs from the image's 16x16: resized" in capsys.readouterr().err
    assert canvas.model_mask[:6, :6].min() == 1 and canvas.model_mask[:6, 10:].max() == 0


def test_padding_to_64_and_crop(tmp_path):
    image = save(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8), tmp_path / "i.png")
    mask = np.zeros((70, 100), np.uint8)
    mask[20:40, 30:60] = 255
    canvas = load_inpaint_canvas(image, save(mask, tmp_path / "m.png"), MaskOptions(blur=0))
    pixels, model_mask = canvas.tensors()
    assert pixels.shape == (1, 3, 128, 128) and model_mask.shape == (1, 1, 128, 128)
    assert model_mask[..., 70:, :].max() == 0 and model_mask[..., 100:].max() == 0  # padding is kept, not painted
    assert torch.equal(pixels[0, :, 69, 100:], pixels[0, :, 69, 99:100].expand(3, 28))  # edge-repeated
    assert canvas.finish(np.zeros((128, 128, 3), np.uint8)).shape == (70, 100, 3)


def test_paste_back_keeps_unmasked_pixels_exactly(tmp_path):
    original = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    image_path, mask_path = save(original, tmp_path / "i.png"), save(mask, tmp_path / "m.png")
    generated = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for blur in (0, 4):
        canvas = load_inpaint_canvas(image_path, mask_path, MaskOptions(blur=blur))
        out = canvas.finish(generated)
        kept = canvas.soft_mask == 0
        assert kept.sum() > 1000 and np.array_equal(out[kept], original[kept])
        full = canvas.soft_mask == 1
        assert np.array_equal(out[full], generated[full])
    no_paste = load_inpaint_canvas(image_path, mask_path, MaskOptions(paste_back=False)).finish(generated)
    assert np.array_equal(no_paste, generated)


def test_blur_widens_the_repainted_band(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    paths = save(np.zeros((64, 64, 3), np.uint8), tmp_path / "i.png"), save(mask, tmp_path / "m.png")
    sharp = load_inpaint_canvas(*paths, MaskOptions(blur=0))
    soft = load_inpaint_canvas(*paths, MaskOptions(blur=4))
    assert (soft.soft_mask > 0).sum() > (sharp.soft_mask > 0).sum() + 4 * 32 * 8  # at least 8 px wider all round
    assert soft.soft_mask[32, 16 - 9] > 0 and soft.soft_mask[32, 16 - 11] == 0  # reach int(2.5·4 + 0.5) = 10 px
    assert np.array_equal(soft.model_mask[32], sharp.model_mask[32])  # straight edges stay where they were;
    assert 0 < sharp.model_mask.sum() - soft.model_mask.sum() <= 4 * 16  # only the corners round off
    assert np.allclose(gaussian_blur(np.full((5, 7), 0.3, np.float32), 3), 0.3)  # a flat mask stays flat


def test_outpaint_canvas(tmp_path):
    original = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:8, :8] = 255
    paths = save(original, tmp_path / "i.png"), save(mask, tmp_path / "m.png")
    canvas = load_inpaint_canvas(*paths, MaskOptions(blur=0, outpaint=parse_outpaint("10,20,0,30")))
    assert canvas.output_size == (94, 94) and canvas.padded_size == (128, 128)
    assert canvas.model_mask[:, :10].min() == 1 and canvas.model_mask[:, 74:].min() == 1
    assert canvas.model_mask[64:].min() == 1 and canvas.model_mask[8:64, 10:74].max() == 0
    assert np.array_equal(canvas.pixels[:64, 10:74], original)
    assert np.array_equal(canvas.pixels[70, 0], original[63, 0])  # filled from the nearest edge pixel
    alone = load_inpaint_canvas(paths[0], None, MaskOptions(blur=0, outpaint=(0, 0, 64, 0)))  # no mask, no alpha
    assert alone.output_size == (128, 64) and alone.model_mask[:64].min() == 1 and alone.model_mask[64:].max() == 0
    with pytest.raises(UsageError, match="LEFT,RIGHT,UP,DOWN"):
        parse_outpaint("10,20")
    with pytest.raises(UsageError, match="LEFT,RIGHT,UP,DOWN"):
        parse_outpaint("1,2,3,-4")


# ---------------------------------------------------------------- the command line

FAST = ["--steps", "2", "--seed", "7"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Tiny SD 1.x inpainting, SD 2.x inpainting and SD 1.x checkpoints; a 100x70 photo and its mask."""
    folder = tmp_path_factory.mktemp("cli")
    ckpts = {family: write_tiny_checkpoint(family, folder) for family in ("sd1-inpaint", "sd2-inpaint")}
    photo = np.random.default_rng(4).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    mask = np.zeros((70, 100), np.uint8)
    mask[20:50, 30:70] = 255
    return ckpts, save(photo, folder / "photo.png"), save(mask, folder / "mask.png")


def test_cli_keeps_size_and_unmasked_pixels(run_cli, cli_files, tmp_path):
    ckpts, photo, mask = cli_files
    out = tmp_path / "o.png"
    result = run_cli("inpaint", "a red door", "--ckpt", ckpts["sd1-inpaint"], "--image", photo, "--mask", mask,
                     *FAST, "--mask-blur", "0", "-o", out)
    assert result.code == 0, result.stderr
    assert "mask and masked-image latent as extra UNet input" in result.stderr
    written, original, repaint = pixels(out), pixels(photo), np.asarray(Image.open(mask)) > 127
    assert written.shape == original.shape  # 100x70: padded to 128x128 for the model, cropped back
    assert np.array_equal(written[~repaint], original[~repaint])
    assert np.abs(written[repaint] - original[repaint]).mean() > 10
    from sd_cli.files.infotext import parse_infotext

    fields = parse_infotext(Image.open(out).text["parameters"])[2]
    assert fields["Size"] == "100x70" and fields["Denoising strength"] == "1.0" and fields["Mask blur"] == "0"
    no_paste = tmp_path / "n.png"
    assert run_cli("inpaint", "a red door", "--ckpt", ckpts["sd1-inpaint"], "--image", photo, "--mask", mask,
                   *FAST, "--mask-blur", "0", "--no-paste-back", "-o", no_paste).code == 0
    assert not np.array_equal(pixels(no_paste)[~repaint], original[~repaint])  # the VAE round trip
    assert np.array_equal(pixels(no_paste)[repaint], written[repaint])


def test_cli_blur_widens_the_changed_band(run_cli, cli_files, tmp_path):
    ckpts, photo, mask = cli_files
    changed = []
    for blur in ("0", "6"):
        out = tmp_path / f"b{blur}.png"
        assert run_cli("inpaint", "x", "--ckpt", ckpts["sd2-inpaint"], "--image", photo, "--mask", mask, *FAST,
                       "--mask-blur", blur, "-o", out).code == 0
        changed.append(int((pixels(out) != pixels(photo)).any(-1).sum()))
    assert changed[1] > changed[0] + 2 * (30 + 40) * 5  # at least 5 px more all round


def test_cli_outpaint_and_alpha_mask(run_cli, cli_files, tmp_path):
    ckpts, photo, _ = cli_files
    out = tmp_path / "wide.png"
    assert run_cli("inpaint", "x", "--ckpt", ckpts["sd1-inpaint"], "--image", photo, "--outpaint", "0,60,10,0",
                   *FAST, "-o", out).code == 0
    assert Image.open(out).size == (160, 80)
    assert np.array_equal(pixels(out)[10 + 11:, :100 - 11], pixels(photo)[11:, :89])  # beyond the blur (10 px)
    rgba = np.dstack([np.asarray(Image.open(photo)), np.full((70, 100), 255, np.uint8)])
    rgba[10:30, 10:40, 3] = 0
    holed = save(rgba, tmp_path / "holed.png")
    out = tmp_path / "alpha.png"
    result = run_cli("inpaint", "x", "--ckpt", ckpts["sd1-inpaint"], "--image", holed, *FAST, "--mask-blur", "0",
                     "-o", out)
    assert result.code == 0 and "transparent pixels" in result.stderr
    diff = (pixels(out) != pixels(photo)).any(-1)
    assert diff[10:30, 10:40].mean() > 0.9 and diff.sum() == diff[10:30, 10:40].sum()


def test_cli_watermark_texts(run_cli, cli_files, tmp_path):
    from sd_cli.files.watermark import identify_watermark

    ckpts, photo, mask = cli_files
    big, big_mask = tmp_path / "big.png", tmp_path / "big-mask.png"
    Image.open(photo).resize((256, 256)).save(big)
    Image.open(mask).resize((256, 256)).save(big_mask)
    for family, text in (("sd1-inpaint", "StableDiffusionV1-Inpainting"), ("sd2-inpaint", "SDV2")):
        out = tmp_path / f"{family}.png"
        assert run_cli("inpaint", "x", "--ckpt", ckpts[family], "--image", big, "--mask", big_mask, "--steps", "1",
                       "--seed", "1", "-o", out).code == 0
        assert identify_watermark(np.asarray(Image.open(out).convert("RGB")))[0] == text


@pytest.mark.parametrize("args, message", [
    ([], "inpaint needs a mask"),
    (["--mask", "BLACK"], "the mask is empty"),
    (["--outpaint", "1,2"], "LEFT,RIGHT,UP,DOWN"),
    (["--mask-blur", "-1"], "--mask-blur -1.0 must be 0 or more"),
])
def test_cli_input_errors_before_loading(run_cli, cli_files, tmp_path, args, message):
    ckpts, photo, _ = cli_files
    save(np.zeros((70, 100), np.uint8), tmp_path / "black.png")
    args = [str(tmp_path / "black.png") if a == "BLACK" else a for a in args]
    result = run_cli("inpaint", "x", "--ckpt", ckpts["sd1-inpaint"], "--image", photo, *FAST, *args,
                     "-o", tmp_path / "x.png")
    assert result.code == 2 and message in result.stderr
    assert "loaded" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_cli_refuses_other_models_and_missing_image(run_cli, cli_files, sd1_ckpt, tmp_path):
    ckpts, photo, mask = cli_files
    result = run_cli("txt2img", "x", "--ckpt", ckpts["sd1-inpaint"], *FAST, "-o", tmp_path / "t.png")
    assert result.code == 2 and "use sd-cli inpaint" in result.stderr
    assert run_cli("inpaint", "x", "--ckpt", sd1_ckpt, "--mask", mask, *FAST).code == 2  # no --image
    result = run_cli("img2img", "x", "--ckpt", sd1_ckpt, "--init-img", photo, "--strength", "0.5", *FAST,
                     "-o", tmp_path / "i.png")
    assert result.code == 0, result.stderr


def test_cli_ordinary_checkpoint_blends(run_cli, cli_files, sd1_ckpt, tmp_path):
    _, photo, mask = cli_files
    out = tmp_path / "blend.png"
    result = run_cli("inpaint", "x", "--ckpt", sd1_ckpt, "--image", photo, "--mask", mask, *FAST, "--strength", "0.7",
                     "-o", out)
    assert result.code == 0, result.stderr
    assert "known region blended back after every step" in result.stderr
    assert Image.open(out).size == (100, 70)


def test_original_inpaint_command_line(cli_files, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    ckpts, photo, mask = cli_files
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(root / "scripts" / "inpaint.py"), "--prompt", "a red door",
                             "--init-img", str(photo), "--mask", str(mask), "--ckpt", str(ckpts["sd1-inpaint"]),
                             "--ddim_steps", "2", "--n_samples", "2"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from sd_cli.files.infotext import parse_infotext

    written = sorted((tmp_path / "outputs" / "inpaint-samples" / "samples").glob("*.png"))
    assert len(written) == 2 and (tmp_path / "outputs" / "inpaint-samples" / "grid-0000.png").exists()
    fields = parse_infotext(Image.open(written[1]).text["parameters"])[2]
    assert fields["Seed"] == "1" and fields["Eta"] == "1.0" and fields["CFG scale"] == "7.5"  # inpaint_st defaults
    assert not np.array_equal(pixels(written[0])[:10], pixels(photo)[:10])  # no paste-back, as the original


def test_help_describes_methods_without_importing_torch():
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys, io, contextlib\nfrom sd_cli.cli.app import main\nout = io.StringIO()\n"
             "for args in (['inpaint', '--help'], ['depth2img', '--help']):\n"
             "    with contextlib.redirect_stdout(out):\n"
             "        try: main(args)\n"
             "        except SystemExit as e: assert e.code == 0, e.code\n"
             "print(out.getvalue())\nprint('torch' in sys.modules, 'timm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"
    text = " ".join(out.split())
    assert "9-channel UNet" in text and "4-channel checkpoints" in text and "--outpaint" in text
    assert "--depth-map" in text and "--save-depth" in text
