"""ControlNet from the command line: the flags reach the render (pixels against diffusers' pipeline), the hint
and the infotext are written, --from-png re-applies the units, img2img and inpaint are steered, and bad
input is one line before anything is written."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_controlnet import write_controlnet
from tiny_models import write_tiny_checkpoint

from sd_cli.files.infotext import parse_infotext

cv2 = pytest.importorskip("cv2")
STEPS, SEED, SCALE = 4, 3, 5.0


def control_image(size: int = 64) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 2] = (xs * 4).astype(np.uint8)
    image[(xs - 30) ** 2 + (ys - 34) ** 2 < 200] = (240, 60, 20)
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnet-cli")
    Image.fromarray(control_image()).save(folder / "control.png")
    Image.fromarray(255 - control_image()).save(folder / "other.png")
    return {"folder": folder, "image": folder / "control.png", "other": folder / "other.png",
            "base": write_tiny_checkpoint("sd1", folder, fmt="safetensors"),
            "sd2": write_tiny_checkpoint("sd2", folder, fmt="safetensors"),
            "net": write_controlnet(folder, "control", seed=31, stem="ctl"),
            "second": write_controlnet(folder, "control", seed=32, stem="ctl2", suffix="safetensors", fp16=True),
            "full": write_controlnet(folder, "full", seed=33, suffix="safetensors")}


def render(run_cli, files, out, *flags, ckpt=None, mode="txt2img"):
    result = run_cli(mode, "a disc", "--ckpt", ckpt or files["base"], "--steps", STEPS, "--seed", SEED,
                     "--scale", SCALE, "--no-watermark", "-o", out, *flags)
    assert result.code == 0, result.stderr
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def fields(path) -> dict:
    return parse_infotext(Image.open(path).info["parameters"])[2]


def test_txt2img_canny_matches_diffusers_pipeline_and_writes_hint_and_infotext(run_cli, files, tmp_path):
    from controlnet_reference import ControlReference, canny_hint
    from parity_reference import Generators

    out, hint = tmp_path / "out.png", tmp_path / "hint.png"
    pixels = render(run_cli, files, out, "--control-net", files["net"], "--control-image", files["image"],
                    "--control-preprocess", "canny", "--control-strength", "0.5", "--save-hint", hint)
    expected_hint = canny_hint(control_image())
    assert (np.asarray(Image.open(hint)) == expected_hint).all() and expected_hint.max() == 255
    reference = ControlReference(files["base"], files["base"].with_suffix(".yaml"))
    latents = reference.pipeline_latents([reference.controlnet(files["net"])], [expected_hint], "a disc",
                                         Generators([SEED]).draw(), STEPS, SCALE, [0.5])
    theirs = ((reference.base.decode(latents)[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()
    # the scripts' truncation of the float values (their float noise: 1e-2 of a level)
    assert (pixels <= theirs + 1e-2).all() and (pixels > theirs - 1 - 1e-2).all()
    recorded = fields(out)
    short_hash = __import__("hashlib").sha256(files["net"].read_bytes()).hexdigest()[:8]
    assert recorded["ControlNet 0"] == (f"Module: canny, Model: ctl [{short_hash}], Weight: 0.5, Threshold A: 100, "
                                        "Threshold B: 200, Guidance Start: 0, Guidance End: 1, Control Mode: Balanced")
    assert list(recorded)[-1] == "Version"


def test_from_png_reapplies_the_units(run_cli, files, tmp_path):
    first = tmp_path / "first.png"
    pixels = render(run_cli, files, first, "--control-net", files["net"], "--control-image", files["image"],
                    "--control-strength", "0.7", "--guess-mode", "--control-start", "0.25", "--control-end", "0.75")
    again = tmp_path / "again.png"
    result = run_cli("txt2img", "--from-png", first, "--ckpt", files["base"], "--no-watermark", "-o", again,
                     "--control-net", files["net"], "--control-image", files["image"])
    assert result.code == 0, result.stderr
    assert (np.asarray(Image.open(again).convert("RGB")).astype(int) == pixels).all()
    assert "Weight: 0.7" in fields(again)["ControlNet 0"]
    assert "Control Mode: ControlNet is more important" in fields(again)["ControlNet 0"]
    # the units' settings change the image: the re-render took them from the PNG
    default = render(run_cli, files, tmp_path / "default.png", "--control-net", files["net"],
                     "--control-image", files["image"])
    assert np.abs(default - pixels).max() > 0
    without = run_cli("txt2img", "--from-png", first, "--ckpt", files["base"], "--no-watermark", "-o",
                      tmp_path / "plain.png")
    assert without.code == 0 and "was made with ControlNet ctl [" in without.stderr


def test_two_units_each_with_its_image_and_strength(run_cli, files, tmp_path):
    out, hint = tmp_path / "two.png", tmp_path / "hint.png"
    two = render(run_cli, files, out, "--control-net", files["net"], "--control-net", files["second"],
                 "--control-image", files["image"], "--control-image", files["other"],
                 "--control-strength", "1", "--control-strength", "0.5", "--save-hint", hint)
    assert (np.asarray(Image.open(tmp_path / "hint-1.png")) == 255 - control_image()).all()
    recorded = fields(out)
    assert "Weight: 1" in recorded["ControlNet 0"] and "Model: ctl2 [" in recorded["ControlNet 1"]
    assert "Weight: 0.5" in recorded["ControlNet 1"]
    one = render(run_cli, files, tmp_path / "one.png", "--control-net", files["net"], "--control-image", files["image"])
    assert np.abs(two - one).max() > 0


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_img2img_and_inpaint_are_steered(run_cli, files, tmp_path, mode):
    image_flag = "--init-img" if mode == "img2img" else "--image"
    source = tmp_path / "source.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(source)
    flags = [image_flag, source, "--strength", "0.8"]
    if mode == "inpaint":
        mask = tmp_path / "mask.png"
        Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16)).save(mask)
        flags += ["--mask", mask]
    plain = render(run_cli, files, tmp_path / "plain.png", *flags, mode=mode)
    unit = ["--control-net", files["net"], "--control-image", files["image"]]
    zero = render(run_cli, files, tmp_path / "zero.png", *flags, *unit, "--control-strength", "0", mode=mode)
    steered = render(run_cli, files, tmp_path / "steered.png", *flags, *unit, mode=mode)
    assert (zero == plain).all()  # strength 0 adds nothing
    assert np.abs(steered - plain).max() > 2


def test_inpaint_hands_its_mask_to_the_inpaint_hint(run_cli, files, tmp_path, monkeypatch):
    """--control-preprocess inpaint in the inpaint command: the hint is the control image with -1 exactly
    where the command's own mask (white = repaint, at the render size: 80 wide padded to 128) is above 0.5
    after the script's Gaussian blur (sigma 5); the padding is kept, so never -1."""
    from sd_cli.control import steering

    source, mask_file, hint_file = tmp_path / "source.png", tmp_path / "mask.png", tmp_path / "hint.png"
    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(source)
    mask = np.zeros((64, 80), np.uint8)
    mask[16:48, 24:64] = 255
    Image.fromarray(mask).save(mask_file)
    seen = []
    residuals = steering.SteeringUnit.residuals
    monkeypatch.setattr(steering.SteeringUnit, "residuals",
                        lambda unit, *args: seen.append(unit.hint.clone()) or residuals(unit, *args))
    flags = ["--image", source, "--mask", mask_file, "--mask-blur", "0", "--control-net", files["net"],
             "--control-image", source]
    steered = render(run_cli, files, tmp_path / "steered.png", *flags, "--control-preprocess", "inpaint",
                     "--save-hint", hint_file, mode="inpaint")
    padded = np.pad(mask, ((0, 0), (0, 48))).astype(np.float32) / 255.0  # the render is 128 wide
    white = cv2.GaussianBlur(padded, (0, 0), 5.0) > 0.5
    assert white.sum() > 600 and not white[:, 80:].any()
    hint = seen[0][0]  # [3, 64, 128], what the net is handed at every step
    assert hint.shape == (3, 64, 128) and len(seen) == STEPS  # one batched [uncond, cond] call a step
    assert torch.equal(hint == -1, torch.from_numpy(white)[None].expand(3, -1, -1))
    assert torch.allclose(hint[:, ~torch.from_numpy(white)], torch.tensor(90 / 255))
    saved = np.asarray(Image.open(hint_file))
    assert (saved[white] == 0).all() and (saved[~white] == 90).all()
    plain = render(run_cli, files, tmp_path / "plain.png", *flags, "--control-strength", "0", mode="inpaint")
    assert np.abs(steered - plain).max() > 2


def test_every_sampler_family_is_steered(run_cli, files, tmp_path):
    unit = ["--control-net", files["net"], "--control-image", files["image"]]
    for sampler in ("euler_a", "dpmpp_2m", "plms", "dpm"):
        plain = render(run_cli, files, tmp_path / f"{sampler}-plain.png", "--sampler", sampler)
        zero = render(run_cli, files, tmp_path / f"{sampler}-zero.png", "--sampler", sampler, *unit,
                      "--control-strength", "0")
        steered = render(run_cli, files, tmp_path / f"{sampler}.png", "--sampler", sampler, *unit)
        assert (zero == plain).all() and np.abs(steered - plain).max() > 2, sampler


def test_a_v10_checkpoint_uses_its_own_controlnet(run_cli, files, tmp_path):
    plain = render(run_cli, files, tmp_path / "plain.png")  # the base: the same SD weights (seed 0)
    result = run_cli("txt2img", "a disc", "--ckpt", files["full"], "--steps", STEPS, "--seed", SEED, "--scale", SCALE,
                     "--no-watermark", "-o", tmp_path / "as-sd.png")
    assert result.code == 0 and "carries a ControlNet (control_model.*); pass --control-image" in result.stderr
    assert (np.asarray(Image.open(tmp_path / "as-sd.png").convert("RGB")).astype(int) == plain).all()
    steered = render(run_cli, files, tmp_path / "steered.png", "--control-image", files["image"], ckpt=files["full"])
    assert np.abs(steered - plain).max() > 2


@pytest.mark.parametrize("flags, message", [
    (["--control-image", "{missing}"], "error: --control-image {missing}: no such file; pass the image the ControlNet follows"),
    (["--control-net", "{net}", "--control-net", "{net}", "--control-image", "{image}"],
     "error: 2 --control-net but 1 --control-image: give one image per ControlNet"),
    (["--control-net", "{net}"], "error: --control-net steer with a control image: add --control-image IMG"),
    (["--control-image", "{image}", "--control-net", "{net}", "--control-strength", "1", "--control-strength", "2"],
     "error: 2 --control-strength for 1 ControlNet unit(s): give one value, or one per --control-net"),
    (["--control-image", "{image}", "--control-net", "{net}", "--control-start", "0.8", "--control-end", "0.2"],
     "error: --control-start 0.8 and --control-end 0.2: need 0 <= start <= end <= 1"),
    (["--control-image", "{image}", "--control-net", "{net}", "--ckpt", "{sd2}"],
     "error: ctl.pth: ControlNet steers SD 1.5, but the checkpoint is SD 2"),
    (["--control-image", "{image}"], "error: tiny-sd1.safetensors carries no ControlNet (no control_model.* tensors)"),
    (["--control-image", "{image}", "--control-net", "{net}", "--control-preprocess", "inpaint"],
     "error: --control-preprocess inpaint needs a mask: use it in the inpaint command (--mask), or give a "
     "prepared hint with --control-preprocess none"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, files, tmp_path, flags, message):
    names = {"missing": tmp_path / "missing.png", "net": files["net"], "image": files["image"], "sd2": files["sd2"]}
    flags = [str(flag).format(**names) for flag in flags]
    if "--ckpt" not in flags:
        flags += ["--ckpt", str(files["base"])]
    out = tmp_path / "never.png"
    result = run_cli("txt2img", "x", "--steps", 1, "--no-watermark", "-o", out, *flags)
    assert result.code == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 or result.stderr.splitlines()[-1].startswith("error:")
    assert result.stderr.splitlines()[-1].startswith(message.format(**names)), result.stderr
    assert not out.exists()
