"""What a run says on stderr: -q, warnings once per run, the Ctrl-C hint, the header of a prompt file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "1", "--seed", "3"]


def test_quiet_built_in_model_run_prints_only_the_path(tmp_path):
    """The built-in model renders 128x128, too small for the watermark: -q still prints nothing on stderr."""
    out = tmp_path / "circle.png"
    result = subprocess.run([sys.executable, "-m", "sd_cli", "txt2img", "a red circle on a blue background", *FAST,
                             "-q", "-o", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{out}\n", "")
    assert out.exists()


def test_a_warning_repeated_per_batch_is_shown_once_per_run(run_cli, sd1_ckpt, tmp_path):
    """64x64 is too small for the watermark: said once in each run, not once per batch nor once per process."""
    for run in ("first", "second"):
        result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--n-iter", "3", "-o", tmp_path / f"{run}-{{index}}.png")
        assert result.code == 0, result.stderr
        assert result.stderr.count("warning: 64x64 images are too small for the invisible watermark") == 1, run


@pytest.fixture
def interrupt_after_first_image():
    """Ctrl-C right after the first image is written; calling the fixture's value stops that."""
    from sd_cli.files.writer import ImageWriter

    write = ImageWriter.add

    def add_then_interrupt(self, *args):
        write(self, *args)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:  # its own: undoing it leaves the test's other patches
        patch.setattr(ImageWriter, "add", add_then_interrupt)
        yield patch.undo


def test_interrupted_numbered_run_does_not_advise_skip_existing(run_cli, sd1_ckpt, tmp_path, interrupt_after_first_image):
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--n-iter", "3", "--outdir", tmp_path / "out")
    assert result.code == 130
    assert ("warning: interrupted: 1 of 3 image(s) written; nothing half-written is left; numbered files "
            "(samples/NNNNN.png) cannot be resumed; rerun to render them all again, or add "
            "--name \"{index:05}-{seed}.png\" so that a rerun with --skip-existing finishes\n") in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: interrupted"


def test_interrupted_named_run_is_finished_by_the_advised_rerun(run_cli, sd1_ckpt, tmp_path, interrupt_after_first_image):
    command = ["txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--n-iter", "3", "--outdir", tmp_path / "out",
               "--name", "{index:05}-{seed}.png"]
    result = run_cli(*command)
    assert result.code == 130
    assert ("warning: interrupted: 1 of 3 image(s) written; nothing half-written is left; "
            "rerun the same command with --skip-existing to finish\n") in result.stderr
    interrupt_after_first_image()
    rerun = run_cli(*command, "--skip-existing")
    assert rerun.code == 0, rerun.stderr
    assert "skipping 1 image(s) already written (--skip-existing)" in rerun.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000-3.png", "00001-4.png", "00002-5.png"]


def test_json_lines_header_says_which_settings_vary(run_cli, sd1_ckpt, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in (
        {"prompt": "a", "sampler": "euler", "steps": 2}, {"prompt": "b", "sampler": "ddim", "steps": 1},
        {"prompt": "c", "sampler": "ddim", "steps": 1})) + "\n")
    result = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, "--seed", "1", "--sampler", "plms",
                     "--steps", "9", "--n-samples", "2", "--outdir", tmp_path / "o", "--skip-grid")
    assert result.code == 0, result.stderr
    assert "3 image(s), scale 7.5, native size, sampler, steps per line, float32 on cpu" in result.stderr
    assert "plms" not in result.stderr and "9 steps" not in result.stderr
    assert ("--n-samples 2 with --from-file: up to 2 lines render together, one image each, as in the original "
            "scripts; --repeat N gives each line N images") in result.stderr
    assert len(list((tmp_path / "o" / "samples").glob("*.png"))) == 3


def test_threads_flag_sets_torch_threads(run_cli, sd1_ckpt, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "-t", "1", "-o", tmp_path / "t.png").code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    bad = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--threads", "0", "-o", tmp_path / "u.png")
    assert (bad.code, bad.stderr) == (2, "error: --threads must be at least 1, got 0\n")
