"""Automation: prompt files into jobs, --json, resume, info/verify, --from-png, exit codes, faults, scale-out."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sd_cli.run import jobs
from sd_cli.errors import UsageError
from sd_cli.files.infotext import parse_infotext

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "1", "--seed", "7"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def fields(path) -> dict:
    return parse_infotext(Image.open(path).text["parameters"])[2]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- prompt files into jobs ------------------------------------------------------------------------


def test_three_line_syntaxes_and_line_numbers():
    text = ('a red circle\n\n{"prompt": "a cat", "seed": 5, "cfg_scale": 3, "n_samples": 2}\n'
            '--prompt "a dog, running" --seed 9 --steps 30 --sampler_name "DPM++ 2M" --W 128\n'
            '{"prompt": "x", "steps": 0}\n--prompt "y" --restore_faces true\n{"seed": 1}\n{not json}\n')
    parsed = jobs.parse_prompt_file(text)
    assert [p.line for p in parsed] == [1, 3, 4, 5, 6, 7, 8]
    assert parsed[0].values == {"prompt": "a red circle"}
    assert parsed[1].values == {"prompt": "a cat", "seed": 5, "scale": 3.0, "n_samples": 2}
    assert parsed[2].values == {"prompt": "a dog, running", "seed": 9, "steps": 30, "sampler": "dpmpp_2m", "width": 128}
    messages = [p.message for p in parsed[3:]]
    assert messages[0] == "steps 0 is out of range; use 1 to 1000"
    assert messages[1].startswith("unknown option 'restore_faces'")
    assert messages[2].startswith("no prompt on this line")
    assert messages[3].startswith("not valid JSON")


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "seed": "5"}', 'seed must be an integer, got "5"'),
    ('{"prompt": "x", "height": 100}', "height 100 is not a multiple of 64, which the UNet needs (not rounded); try 64 or 128"),
    ('{"prompt": "x", "strength": 1.5}', "strength 1.5 is outside [0, 1]"),
    ('{"prompt": "x", "sampler": "euler_x"}', "sampler 'euler_x' is unknown"),
    ('{"prompt": "x", "name": "../up.png"}', "must be a relative file name"),
    ('{"prompt": "x",}', "not valid JSON"),
    ('--prompt "x" --steps', "without a value"),
    ('--prompt "unclosed', "check the quotes"),
    ('--prompt x --seed five', "seed must be an integer, got 'five'"),
])
def test_bad_line_messages(line, message):
    with pytest.raises(ValueError) as err:
        jobs.parse_line(line)
    assert message in str(err.value)


def test_jobs_seeds_counts_and_names():
    requests = [jobs.Request({"prompt": "a"}, line=1), jobs.Request({"prompt": "b", "seed": 100, "n_samples": 2}, line=2),
                jobs.Request({"prompt": "c", "seed": -1 + 1, "name": "fixed"}, line=3)]
    defaults = jobs.Defaults({"prompt": "", "seed": 10}, count=1, n_iter=2, name_template="{index:03}-{seed}-{prompt_slug}")
    built = jobs.build_jobs(requests, defaults)
    assert [(j.index, j.prompt, j.seed) for j in built] == [
        (0, "a", 10), (1, "b", 100), (2, "b", 101), (3, "c", 0),
        (4, "a", 14), (5, "b", 102), (6, "b", 103), (7, "c", 1)]
    assert [j.name for j in built[:4]] == ["000-10-a.png", "001-100-b.png", "002-101-b.png", "fixed-0.png"]
    assert built[7].name == "fixed-1.png" and built[7].line == 3


def test_fixed_code_and_duplicate_names():
    defaults = jobs.Defaults({"seed": 3}, count=2, fixed_code=True)
    assert [j.seed for j in jobs.build_jobs([jobs.Request({"prompt": "a"})], defaults)] == [3, 3]
    with pytest.raises(UsageError, match="line 1 and line 2 would both be written to same.png"):
        jobs.build_jobs([jobs.Request({"prompt": "a", "name": "same"}, 1), jobs.Request({"prompt": "b", "name": "same.png"}, 2)],
                        jobs.Defaults({"seed": 0}))
    with pytest.raises(UsageError, match="unknown placeholder {colour}"):
        jobs.build_jobs([jobs.Request({"prompt": "a"})], jobs.Defaults({"seed": 0}, name_template="{colour}.png"))


def test_slug():
    assert jobs.slug("A Red Circle, on blue!") == "a-red-circle-on-blue"
    assert jobs.slug("猫 ?") == "empty" and len(jobs.slug("x" * 200)) == 48


def test_prompt_file_from_stdin_and_empty(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffone\ntwo\n".encode())))
    assert jobs.read_prompt_file("-") == "one\ntwo\n"
    with pytest.raises(UsageError, match="is empty"):
        jobs.read_prompt_file(write(tmp_path / "blank.txt", "\n  \n"))
    with pytest.raises(UsageError, match="cannot read prompt file"):
        jobs.read_prompt_file(tmp_path / "missing.txt")


# --- whole runs ------------------------------------------------------------------------------------


def test_prompt_file_with_json_output(run_cli, sd1_ckpt, tmp_path):
    prompts = write(tmp_path / "p.jsonl", 'a red circle\n{"prompt": "a blue square", "seed": 100, "steps": 2, '
                    '"negative_prompt": "green", "name": "blue"}\n--prompt "a green triangle" --cfg_scale 3 --sampler plms\n')
    result = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--outdir", tmp_path / "o", "--json")
    assert result.code == 0, result.stderr
    records = json_lines(result.stdout)  # stdout carries only JSON
    assert [r["prompt"] for r in records] == ["a red circle", "a blue square", "a green triangle"]
    assert [(r["seed"], r["steps"], r["scale"], r["sampler"]) for r in records] == [
        (7, 1, 7.5, "ddim"), (100, 2, 7.5, "ddim"), (9, 1, 3.0, "plms")]
    assert records[1]["path"] == str(tmp_path / "o" / "blue.png") and records[1]["negative_prompt"] == "green"
    assert records[0]["line"] == 1 and records[2]["line"] == 3 and records[0]["model"] == "tiny-sd1"
    assert set(records[0]["timings"]) == {"sample_s", "write_s"} and records[0]["width"] == 64
    for record in records:
        recorded = fields(record["path"])
        assert (int(recorded["Seed"]), int(recorded["Steps"])) == (record["seed"], record["steps"])
    assert not list((tmp_path / "o").glob("grid-*"))  # named files: no grid


def test_bad_line_stops_before_loading_or_continues_with_exit_3(run_cli, sd1_ckpt, tmp_path):
    prompts = write(tmp_path / "p.txt", 'good one\n{"prompt": "bad", "steps": 0}\ngood two\n')
    stop = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--outdir", tmp_path / "s")
    assert stop.code == 2 and "p.txt line 2: steps 0 is out of range" in stop.stderr
    assert "loaded" not in stop.stderr and not (tmp_path / "s").exists()
    go_on = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--outdir", tmp_path / "c",
                    "--on-error", "continue", "--skip-grid")
    assert go_on.code == 3, go_on.stderr
    assert len(go_on.stdout.split()) == 2 and "1 of 3 image(s) failed" in go_on.stderr.splitlines()[-1]


def test_failing_image_under_continue_and_stop(run_cli, sd1_ckpt, tmp_path):
    prompts = write(tmp_path / "p.txt", f'one\n{{"prompt": "two", "init_img": "{tmp_path / "missing.png"}"}}\nthree\n')
    go_on = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--outdir", tmp_path / "c",
                    "--on-error", "continue", "--name", "{index}")
    assert go_on.code == 3
    assert "error: line 2: init image not found" in go_on.stderr
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["0.png", "2.png"]
    assert "rerun with --skip-existing" in go_on.stderr
    stop = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--outdir", tmp_path / "s", "--name", "{index}")
    assert stop.code == 1 and "stopped after writing 1 of 3" in stop.stderr
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["0.png"]


def test_every_line_bad_is_exit_1(run_cli, sd1_ckpt, tmp_path):
    prompts = write(tmp_path / "p.txt", '{"prompt": "a", "steps": -1}\n')
    result = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--on-error", "continue",
                     "--outdir", tmp_path / "o")
    assert result.code == 1 and "all 1 image(s) failed" in result.stderr


def test_line_with_init_img_is_img2img(run_cli, sd1_ckpt, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(source)
    prompts = write(tmp_path / "p.txt", f'--prompt "winter" --init_img {source} --denoising_strength 0.5\nplain\n')
    result = run_cli("txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--json", "-o", tmp_path / "{index}.png")
    assert result.code == 0, result.stderr
    records = json_lines(result.stdout)
    assert records[0]["strength"] == 0.5 and (records[0]["width"], records[0]["height"]) == (128, 64)
    assert fields(tmp_path / "0.png")["Denoising strength"] == "0.5" and "strength" not in records[1]


def test_skip_existing_resumes_only_what_is_missing(run_cli, sd1_ckpt, tmp_path):
    prompts = write(tmp_path / "p.txt", "a\nb\nc\n")
    args = ["txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--outdir", tmp_path / "o",
            "--name", "{index:05}-{seed}-{prompt_slug}.png", "--skip-existing"]
    first = run_cli(*args)
    assert first.code == 0 and len(first.stdout.split()) == 3
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["00000-7-a.png", "00001-8-b.png", "00002-9-c.png"]
    before = pixels(tmp_path / "o" / names[1])
    (tmp_path / "o" / names[1]).unlink()
    again = run_cli(*args)
    assert again.code == 0 and again.stdout.split() == [str(tmp_path / "o" / names[1])]
    assert "2 already there" in again.stderr and np.array_equal(pixels(tmp_path / "o" / names[1]), before)
    done = run_cli(*args)
    assert done.code == 0 and done.stdout == "" and "loaded" not in done.stderr


def test_skip_existing_needs_deterministic_names(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--outdir", tmp_path, "--skip-existing")
    assert result.code == 2 and "--skip-existing needs file names" in result.stderr


def test_a_run_that_would_write_nothing_is_refused(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--n-samples", "2", "-o", tmp_path / "{index}.png", "--skip-save")
    assert result.code == 2 and "drop --skip-save" in result.stderr and not list(tmp_path.iterdir())


# --- info, verify, --from-png --------------------------------------------------------------------------


def test_info_text_and_json(run_cli, sd1_ckpt, tmp_path):
    out = tmp_path / "a.png"
    made = run_cli("txt2img", "a fox, at night", "-n", "blurry", "--ckpt", sd1_ckpt, *FAST, "--clip-skip", "2",
                   "-o", out, "--json")
    assert made.code == 0, made.stderr
    text = run_cli("info", out)
    assert text.code == 0 and text.stdout.startswith("a fox, at night\nNegative prompt: blurry\nSteps: 1, Sampler: DDIM")
    info = run_cli("info", "--json", out)
    record, written = json.loads(info.stdout), json.loads(made.stdout)
    for key in ("path", "prompt", "negative_prompt", "seed", "steps", "scale", "sampler", "width", "height", "model", "model_hash"):
        assert record[key] == written[key], key
    assert record["parameters"]["Version"].startswith("sd_cli")
    assert written["parameters"] == record["parameters"]  # every infotext field, e.g. Clip skip, in both
    assert written["parameters"]["Clip skip"] == "2"


def test_info_errors_are_one_line(run_cli, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    write(tmp_path / "notes.png", "not an image")
    for path, message in ((tmp_path / "plain.png", "has no recorded parameters"), (tmp_path / "notes.png", "not an image file"),
                          (tmp_path / "nope.png", "image not found")):
        result = run_cli("info", path)
        assert result.code == 1 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_verify_names_the_watermark(run_cli, sd1_ckpt, sd2_ckpt, tmp_path):
    big = ["--H", "256", "--W", "256"]
    assert run_cli("txt2img", "x", "--ckpt", sd2_ckpt, *FAST, *big, "-o", tmp_path / "v2.png").code == 0
    assert run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, *big, "--no-watermark", "-o", tmp_path / "none.png").code == 0
    marked = run_cli("verify", tmp_path / "v2.png")
    assert marked.code == 0 and marked.stdout.startswith(f"{tmp_path / 'v2.png'}: SDV2 (match ")
    plain = run_cli("verify", "--json", tmp_path / "none.png")
    assert plain.code == 1 and json.loads(plain.stdout)["watermark"] is None
    assert run_cli("verify", tmp_path / "v2.png", tmp_path / "none.png").code == 1


def test_from_png_renders_the_same_image(run_cli, sd1_ckpt, tmp_path):
    original = tmp_path / "orig.png"
    assert run_cli("txt2img", "a blue square", "-n", "red", "--ckpt", sd1_ckpt, "--steps", "2", "--seed", "123",
                   "--scale", "5", "--sampler", "plms", "--H", "128", "-o", original).code == 0
    again = run_cli("txt2img", "--from-png", original, "--ckpt", sd1_ckpt, "-o", tmp_path / "again.png")
    assert again.code == 0, again.stderr
    assert np.array_equal(pixels(original), pixels(tmp_path / "again.png"))
    assert Image.open(original).text == Image.open(tmp_path / "again.png").text
    dpm = run_cli("txt2img", "--from-png", original, "--ckpt", sd1_ckpt, "--sampler", "dpm", "-o", tmp_path / "dpm.png")
    assert dpm.code == 0 and fields(tmp_path / "dpm.png")["Sampler id"] == "dpm"  # its label, "DPM++ 2M", is dpmpp_2m's
    assert run_cli("txt2img", "--from-png", tmp_path / "dpm.png", "--ckpt", sd1_ckpt, "-o", tmp_path / "dpm2.png").code == 0
    assert np.array_equal(pixels(tmp_path / "dpm.png"), pixels(tmp_path / "dpm2.png"))
    changed = run_cli("txt2img", "--from-png", original, "--ckpt", sd1_ckpt, "--steps", "1", "-o", tmp_path / "one.png")
    assert changed.code == 0 and fields(tmp_path / "one.png")["Steps"] == "1"
    assert fields(tmp_path / "one.png")["Seed"] == "123" and fields(tmp_path / "one.png")["Size"] == "64x128"


def test_from_png_keeps_clip_skip_emphasis_and_hires(run_cli, sd1_ckpt, tmp_path):
    original = tmp_path / "orig.png"
    made = run_cli("txt2img", "a (blue) square", "--ckpt", sd1_ckpt, *FAST, "--clip-skip", "2", "--emphasis", "none",
                   "--hires-scale", "2", "--hires-steps", "2", "--hires-strength", "0.5", "-o", original)
    assert made.code == 0, made.stderr
    recorded = fields(original)
    assert (recorded["Clip skip"], recorded["Emphasis"], recorded["Hires upscale"]) == ("2", "None", "2.0")
    again = run_cli("txt2img", "--from-png", original, "--ckpt", sd1_ckpt, "-o", tmp_path / "again.png")
    assert again.code == 0, again.stderr
    assert Image.open(tmp_path / "again.png").size == (128, 128)
    assert np.array_equal(pixels(original), pixels(tmp_path / "again.png"))
    assert Image.open(original).text == Image.open(tmp_path / "again.png").text
    plain = run_cli("txt2img", "--from-png", original, "--ckpt", sd1_ckpt, "--clip-skip", "1", "-o", tmp_path / "p.png")
    assert plain.code == 0 and "Clip skip" not in fields(tmp_path / "p.png")  # a flag given wins


def test_from_png_img2img_and_other_model_warning(run_cli, sd1_ckpt, sd2_ckpt, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    first = tmp_path / "first.png"
    assert run_cli("img2img", "snow", "--init-img", source, "--strength", "0.6", "--ckpt", sd1_ckpt, *FAST, "-o", first).code == 0
    again = run_cli("img2img", "--from-png", first, "--init-img", source, "--ckpt", sd1_ckpt, "-o", tmp_path / "again.png")
    assert again.code == 0 and np.array_equal(pixels(first), pixels(tmp_path / "again.png"))
    other = run_cli("txt2img", "--from-png", first, "--ckpt", sd2_ckpt, "-o", tmp_path / "other.png")
    assert other.code == 0 and "the image will differ" in other.stderr


# --- faults --------------------------------------------------------------------------------------


def test_nan_in_unet_output_is_an_error(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    from sd_cli.models.unet import UNetModel

    forward = UNetModel.forward
    monkeypatch.setattr(UNetModel, "forward", lambda self, *a: forward(self, *a) * float("nan"))
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "-o", tmp_path / "x.png")
    assert result.code == 1 and "the UNet produced NaN or inf" in result.stderr
    assert not (tmp_path / "x.png").exists() and "Traceback" not in result.stderr


@pytest.mark.parametrize("always", [False, True])
def test_nan_in_vae_is_retried_in_float32(run_cli, sd1_ckpt, tmp_path, monkeypatch, always):
    from sd_cli.models.vae import AutoencoderKL

    decode = AutoencoderKL.decode

    def overflowing(self, z):
        out = decode(self, z)
        return out * float("inf") if always or z.dtype != torch.float32 else out

    monkeypatch.setattr(AutoencoderKL, "decode", overflowing)
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--precision", "bf16", "-o", tmp_path / "x.png")
    assert "decoding again in float32" in result.stderr
    if always:
        assert result.code == 1 and "even in float32" in result.stderr and not (tmp_path / "x.png").exists()
    else:
        assert result.code == 0 and pixels(tmp_path / "x.png").std() > 0


def test_size_too_large_for_memory_is_refused_before_sampling(run_cli, sd1_ckpt, tmp_path):
    started = time.perf_counter()
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--H", "65536", "--W", "65536", "-o", tmp_path / "x.png")
    assert result.code == 2 and "65536x65536 at batch 1 needs at least" in result.stderr
    assert "use a smaller --height/--width" in result.stderr and time.perf_counter() - started < 30


def test_size_is_never_rounded(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--W", "72", "-o", tmp_path / "x.png")
    assert result.code == 2 and "--width 72 is not a multiple of 64, which the UNet needs (not rounded); try 64 or 128" in result.stderr


def test_unwritable_outdir_fails_before_loading(run_cli, sd1_ckpt, tmp_path):
    blocker = write(tmp_path / "file", "x")
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, *FAST, "--outdir", blocker / "out")
    assert result.code == 1 and "is a file, not a folder" in result.stderr and "loaded" not in result.stderr


def test_disk_full_stops_even_under_continue(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    result = run_cli("txt2img", "--from-file", write(tmp_path / "p.txt", "a\nb\n"), "--ckpt", sd1_ckpt, *FAST,
                     "--outdir", tmp_path / "o", "--on-error", "continue")
    assert result.code == 1 and "No space left on device; free some disk space" in result.stderr
    assert not list((tmp_path / "o").rglob("*.png")) and no_temp_files(tmp_path / "o")


def test_interrupt_while_writing_leaves_whole_files(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    from sd_cli.files import output

    original, calls = output._write_temp, []

    def interrupted(image, path, infotext):
        calls.append(path)
        if len(calls) == 2:  # Ctrl-C in the middle of the second image's write
            original(image, path, infotext)  # the temporary file exists when Ctrl-C arrives
            raise KeyboardInterrupt
        return original(image, path, infotext)

    monkeypatch.setattr(output, "_write_temp", interrupted)
    result = run_cli("txt2img", "--from-file", write(tmp_path / "p.txt", "a\nb\nc\n"), "--ckpt", sd1_ckpt, *FAST,
                     "--outdir", tmp_path / "o")
    assert result.code == 130 and "interrupted: 1 of 3 image(s) written" in result.stderr
    assert [p.name for p in (tmp_path / "o" / "samples").iterdir() if not p.name.endswith(".tmp")] == ["00000.png"]


def test_ctrl_c_and_kill_leave_no_truncated_png_and_resume_finishes(run_cli, sd1_ckpt, tmp_path):
    prompts = write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(16)))
    args = ["txt2img", "--from-file", prompts, "--ckpt", sd1_ckpt, "--steps", "2", "--seed", "1",
            "--outdir", tmp_path / "o", "--name", "{index:03}", "--skip-existing"]
    for sig in (signal.SIGINT, signal.SIGKILL):
        process = subprocess.Popen([sys.executable, "-m", "sd_cli", *map(str, args)], cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        process.stdout.readline()  # one image written
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert process.returncode == 130 and "interrupted:" in err and "error: interrupted" in err
        for png in (tmp_path / "o").glob("*.png"):
            Image.open(png).verify()  # whole files only
    written = len(list((tmp_path / "o").glob("*.png")))
    assert 2 <= written < 16
    resumed = run_cli(*args)
    assert resumed.code == 0 and len(resumed.stdout.split()) == 16 - written
    assert len(list((tmp_path / "o").glob("*.png"))) == 16


# --- scale-out -----------------------------------------------------------------------------------------


def test_sharding_and_rank_from_environment(monkeypatch):
    from sd_cli.run import distributed

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    rank = distributed.current()
    assert (rank.rank, rank.world, rank.local, rank.is_main) == (1, 3, 1, False)
    assert distributed.shard(list(range(8)), rank) == [1, 4, 7]
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(UsageError, match="do not fit together"):
        distributed.current()


def test_torchrun_two_processes_equal_one(run_cli, sd1_ckpt, tmp_path):
    prompts = write(tmp_path / "p.txt", 'a\n{"prompt": "b", "seed": 50}\nc\nd\ne\n')
    common = ["--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--name", "{index}-{seed}", "--json"]
    single = run_cli("txt2img", *common, "--outdir", tmp_path / "one")
    assert single.code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "sd_cli", "txt2img", *map(str, common), "--outdir", str(tmp_path / "two")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["0-7.png", "1-50.png", "2-9.png", "3-10.png", "4-11.png"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert np.array_equal(pixels(tmp_path / "one" / name), pixels(tmp_path / "two" / name)), name
    assert sorted(r["index"] for r in json_lines(result.stdout)) == [0, 1, 2, 3, 4]
    assert result.stderr.count("wrote 5 image(s) by 2 processes") == 1


def test_accelerate_launch_two_processes_equal_one(run_cli, sd1_ckpt, tmp_path):
    """accelerate launch sets the same RANK/WORLD_SIZE/LOCAL_RANK variables torchrun does."""
    pytest.importorskip("accelerate")
    prompts = write(tmp_path / "p.txt", "a\nb\nc\n")
    common = ["--from-file", prompts, "--ckpt", sd1_ckpt, *FAST, "--name", "{index}-{seed}"]
    assert run_cli("txt2img", *common, "--outdir", tmp_path / "one").code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "sd_cli", "txt2img", *map(str, common), "--outdir", str(tmp_path / "two")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["0-7.png", "1-8.png", "2-9.png"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert np.array_equal(pixels(tmp_path / "one" / name), pixels(tmp_path / "two" / name)), name
    assert result.stderr.count("wrote 3 image(s) by 2 processes") == 1


def test_torchrun_needs_a_seed(run_cli, sd1_ckpt, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = run_cli("txt2img", "x", "--ckpt", sd1_ckpt, "--steps", "1")
    assert result.code == 2 and "pass --seed" in result.stderr


# --- soak ------------------------------------------------------------------------------------------------


PROJECT_MODEL = ROOT / "sd_cli" / "data" / "sd-cli-tiny.safetensors"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_soak_200_prompts_flat_memory(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    """200 prompts on the project's own model (the tiny random one until it exists), one step, 64 px."""
    from sd_cli.files import output

    ckpt = PROJECT_MODEL if PROJECT_MODEL.is_file() else sd1_ckpt
    save, samples = output.save_image, []

    def measured(*args, **kwargs):
        path = save(*args, **kwargs)
        samples.append(rss_bytes())
        return path

    monkeypatch.setattr(output, "save_image", measured)
    prompts = write(tmp_path / "p.txt", "".join(f"shape number {i}\n" for i in range(200)))
    result = run_cli("txt2img", "--from-file", prompts, "--ckpt", ckpt, "--steps", "1", "--seed", "0", "--H", "64", "--W", "64",
                     "--outdir", tmp_path / "o", "--name", "{index:03}", "--quiet")
    assert result.code == 0, result.stderr
    files = sorted((tmp_path / "o").glob("*.png"))
    assert len(files) == 200 and len(samples) == 200
    for path in files:
        with Image.open(path) as image:
            image.verify()
    growth = (np.median(samples[-20:]) - np.median(samples[50:70])) / 2**20
    assert growth < 8, f"RSS grew {growth:.1f} MiB over 130 images"
