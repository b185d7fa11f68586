"""The command line end to end on tiny checkpoints: files written, metadata, numbering, errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_cli.files.infotext import parse_infotext

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--seed", "7"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_help_does_not_import_torch():
    probe = ("import sys, io, contextlib\nfrom sd_cli.cli.app import main\n"
             "for args in (['--help'], ['txt2img', '--help'], ['img2img', '--help']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             "        try: main(args)\n"
             "        except SystemExit as e: assert e.code == 0, e.code\n"
             "print('torch' in sys.modules, 'open_clip' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_txt2img_writes_png_with_infotext(run_cli, sd1_ckpt, tmp_path):
    out = tmp_path / "one.png"
    result = run_cli("txt2img", "a red circle", "--ckpt", sd1_ckpt, *FAST, "-n", "blurry", "-o", out)
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    image = Image.open(out)
    assert image.size == (64, 64)
    prompt, negative, fields = parse_infotext(image.text["parameters"])
    assert (prompt, negative) == ("a red circle", "blurry")
    assert fields["Steps"] == "2" and fields["Sampler"] == "DDIM" and fields["Seed"] == "7"
    assert fields["CFG scale"] == "7.5" and fields["Size"] == "64x64" and fields["Model"] == "tiny-sd1"
    assert len(fields["Model hash"]) == 10


def test_same_seed_same_image_and_batch_invariance(run_cli, sd1_ckpt, tmp_path):
    assert run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--n-samples", "2", "-o", tmp_path / "b-{index}.png").code == 0
    assert run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "2", "--seed", "8", "-o", tmp_path / "single.png").code == 0
    assert run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "-o", tmp_path / "again.png").code == 0
    # Same noise; only batch-size-dependent float rounding in CPU kernels may flip a truncated LSB.
    assert np.abs(pixels(tmp_path / "b-1.png") - pixels(tmp_path / "single.png")).max() <= 1  # image 1 has seed 8
    assert np.abs(pixels(tmp_path / "b-0.png") - pixels(tmp_path / "again.png")).max() <= 1
    assert np.array_equal(pixels(tmp_path / "b-0.png"), pixels(run_again(run_cli, sd1_ckpt, tmp_path)))
    assert not np.array_equal(pixels(tmp_path / "b-0.png"), pixels(tmp_path / "b-1.png"))


def run_again(run_cli, ckpt, folder) -> Path:
    """The same batch-of-2 run once more: bit-identical on the same machine."""
    assert run_cli("txt2img", "a cat", "--ckpt", ckpt, *FAST, "--n-samples", "2", "-o", folder / "r-{index}.png").code == 0
    return folder / "r-0.png"


def test_fixed_code_gives_every_image_the_base_seed(run_cli, sd1_ckpt, tmp_path):
    assert run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--n_samples", "2", "--fixed_code",
                   "-o", tmp_path / "f-{index}-{seed}.png").code == 0
    assert np.array_equal(pixels(tmp_path / "f-0-7.png"), pixels(tmp_path / "f-1-7.png"))


def test_outdir_layout_numbering_and_grid(run_cli, sd1_ckpt, tmp_path):
    outdir = tmp_path / "out"
    first = run_cli("txt2img", "a dog", "--ckpt", sd1_ckpt, *FAST, "--n_samples", "2", "--outdir", outdir)
    assert first.code == 0, first.stderr
    second = run_cli("txt2img", "a dog", "--ckpt", sd1_ckpt, *FAST, "--n_samples", "2", "--outdir", outdir, "--skip_grid")
    assert second.code == 0
    assert sorted(p.name for p in (outdir / "samples").iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert sorted(p.name for p in outdir.glob("grid-*.png")) == ["grid-0000.png"]
    grid = Image.open(outdir / "grid-0000.png")
    assert grid.size == (2 * (64 + 2) + 2, 64 + 2 + 2)  # 2 per row, 2-px black gutters
    assert np.asarray(grid)[:2].max() == 0
    assert second.stdout.split() == [str(outdir / "samples" / "00002.png"), str(outdir / "samples" / "00003.png")]


def test_original_txt2img_command_line(sd1_ckpt, tmp_path):
    yaml = sd1_ckpt.with_suffix(".yaml")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "txt2img.py"), "--prompt", "an astronaut riding a horse",
                             "--plms", "--ckpt", str(sd1_ckpt), "--config", str(yaml), "--ddim_steps", "2",
                             "--H", "64", "--W", "64", "--outdir", str(tmp_path / "orig")],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # v1 defaults: 3 samples x 2 iterations, seed 42, and one grid of 3 per row.
    assert len(list((tmp_path / "orig" / "samples").glob("*.png"))) == 6
    grid = Image.open(tmp_path / "orig" / "grid-0000.png")
    assert grid.size == (3 * 66 + 2, 2 * 66 + 2)
    fields = parse_infotext(Image.open(tmp_path / "orig" / "samples" / "00005.png").text["parameters"])[2]
    assert fields["Seed"] == "47" and fields["Sampler"] == "PLMS" and fields["CFG scale"] == "7.5"


def test_from_file_with_short_last_batch(run_cli, sd1_ckpt, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    result = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--n_samples", "2",
                     "--outdir", tmp_path / "o", "--skip_grid")
    assert result.code == 0, result.stderr
    written = sorted((tmp_path / "o" / "samples").glob("*.png"))
    assert [parse_infotext(Image.open(p).text["parameters"])[0] for p in written] == \
        ["a red circle", "a blue square", "a green triangle"]


def test_img2img_floors_size_and_records_strength(run_cli, sd1_ckpt, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 140, 3), dtype=np.uint8)).save(source)
    result = run_cli("img2img", "--prompt", "winter", "--init-img", source, "--strength", "0.5", "--ckpt", sd1_ckpt,
                     *FAST, "-o", tmp_path / "i.png")
    assert result.code == 0, result.stderr
    image = Image.open(tmp_path / "i.png")
    assert image.size == (128, 64)
    assert parse_infotext(image.text["parameters"])[2]["Denoising strength"] == "0.5"
    assert "resized 140x100 -> 128x64" in result.stderr


def test_watermark_decodes_per_family(run_cli, sd1_ckpt, sd2_ckpt, tmp_path):
    from sd_cli.files.watermark import identify_watermark

    for ckpt, expected in ((sd1_ckpt, "StableDiffusionV1"), (sd2_ckpt, "SDV2")):
        out = tmp_path / f"{ckpt.stem}.png"
        assert run_cli("txt2img", "x", "--ckpt", ckpt, *FAST, "--H", "256", "--W", "256", "-o", out).code == 0
        assert identify_watermark(np.asarray(Image.open(out).convert("RGB")))[0] == expected
    out = tmp_path / "plain.png"
    assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--H", "256", "--W", "256", "--no-watermark", "-o", out).code == 0
    assert identify_watermark(np.asarray(Image.open(out).convert("RGB")))[0] is None


def test_safetensors_and_ckpt_render_identically(run_cli, sd1_ckpt, sd1_safetensors, tmp_path):
    assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "-o", tmp_path / "a.png").code == 0
    assert run_cli("txt2img", "x", "--ckpt", sd1_safetensors, *FAST, "-o", tmp_path / "b.png").code == 0
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))


def test_ema_weights_change_the_image(run_cli, sd1_ckpt, sd1_safetensors, tmp_path):
    assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "-o", tmp_path / "a.png").code == 0
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--ema", "-o", tmp_path / "ema.png")
    assert result.code == 0 and "using the EMA weights" in result.stderr
    assert np.abs(pixels(tmp_path / "a.png") - pixels(tmp_path / "ema.png")).max() > 0
    result = run_cli("txt2img", "x", "--ckpt", sd1_safetensors, *FAST, "--ema", "-o", tmp_path / "none.png")
    assert result.code == 1 and "run without --ema" in result.stderr
    assert not (tmp_path / "none.png").exists()


def test_detection_names_family_and_mismatched_tensors(run_cli, tmp_path):
    from tiny_models import write_tiny_checkpoint

    bare = write_tiny_checkpoint("sd1", tmp_path, yaml_beside=False, stem="no-yaml")
    result = run_cli("txt2img", "x", "--ckpt", bare, *FAST, "-o", tmp_path / "x.png")
    assert result.code == 1
    assert "detected SD 1.x" in result.stderr and "configs/v1-inference.yaml" in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: no-yaml.ckpt does not match config")
    assert "339 tensors differ in shape" in error
    assert "first_stage_model.decoder.conv_in.weight (64, 4, 3, 3) vs (512, 4, 3, 3)" in error
    assert "--config" in error


def test_malicious_pickle_is_refused_without_running(run_cli, tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    result = run_cli("txt2img", "x", "--ckpt", path, *FAST, "-o", tmp_path / "x.png")
    assert result.code == 1 and "os.system" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("args, message", [
    (["--sampler", "euler_b"], "--sampler 'euler_b' is unknown (did you mean euler or euler_a?); use one of ddim, plms, dpm, euler, euler_a"),
    (["--sampler", "ddim", "--schedule", "karras"], "--sampler 'ddim' runs the original script's own timesteps"),
    (["--steps", "0"], "--steps 0 is out of range"),
    (["--H", "100"], "--height 100 is not a multiple of 64"),
    (["--laion400m"], "--laion400m selects"),
    (["--torchscript"], "--torchscript is not supported"),
    (["--C", "3"], "--C must be 4"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--plms", "--eta", "0.5"], "PLMS is deterministic"),
    (["--n_samples", "0"], "--n-samples must be at least 1"),
])
def test_usage_errors_exit_2_with_one_line(run_cli, sd1_ckpt, tmp_path, args, message):
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, *args, "-o", tmp_path / "x.png")
    assert result.code == 2
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_img2img_input_errors(run_cli, sd1_ckpt, tmp_path):
    assert run_cli("img2img", "x", "--ckpt", sd1_ckpt, *FAST).code == 2
    result = run_cli("img2img", "x", "--ckpt", sd1_ckpt, "--init-img", tmp_path / "missing.png", *FAST)
    assert result.code == 1 and "missing.png" in result.stderr
    assert run_cli("img2img", "x", "--strength", "1.5", "--init-img", tmp_path / "m.png").code == 2


def test_prompt_file_errors(run_cli, sd1_ckpt, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    result = run_cli("txt2img", "--from-file", bad, "--ckpt", sd1_ckpt, *FAST)
    assert result.code == 2 and "not UTF-8" in result.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert run_cli("txt2img", "--from-file", empty, "--ckpt", sd1_ckpt, *FAST).code == 2


def test_missing_checkpoint_exit_1(run_cli, tmp_path):
    result = run_cli("txt2img", "x", "--ckpt", tmp_path / "nope.ckpt", *FAST)
    assert result.code == 1 and "checkpoint not found" in result.stderr
