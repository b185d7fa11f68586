"""Progress: plain timestamped lines off a terminal, a tqdm bar on one, messages never glued to a bar."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from sd_cli import log

ROOT = Path(__file__).resolve().parents[2]
PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (images? [\d-]+/\d+): step (\d+)/(\d+)(?: \(pass \d/\d\))?, "
                        r"(\d+\.\d\d) s/it, ETA (\d+:\d\d:\d\d|\?)$")


@pytest.fixture(autouse=True)
def default_progress(monkeypatch):
    yield
    monkeypatch.delenv(log.INTERVAL_VARIABLE, raising=False)  # a test's bad value must not fail the reset
    log.set_progress("auto")
    log.set_quiet(False)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_lines(text: str) -> list[str]:
    """The progress lines without their timestamps."""
    return [line[20:] for line in text.splitlines() if PLAIN_LINE.match(line)]


def test_non_tty_render_prints_progress_lines_before_the_image_is_written(sd1_ckpt, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), log.INTERVAL_VARIABLE: "0"}
    out = tmp_path / "a.png"
    done = subprocess.run([sys.executable, "-m", "sd_cli", "txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "20",
                           "--seed", "1", "--height", "64", "--width", "64", "--no-watermark", "-o", out],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    written = lines.index(str(out))
    before = [PLAIN_LINE.match(line) for line in lines[:written]]
    steps = [int(m.group(2)) for m in before if m]
    assert steps == list(range(1, 21))  # period 0: a line per step; the last step's line is the image's end
    assert all(m.group(1) == "image 1/1" and m.group(3) == "20" for m in before if m)


def test_plain_lines_keep_a_steady_pace_and_end_each_batch(monkeypatch, capsys):
    monkeypatch.setenv(log.INTERVAL_VARIABLE, "10")
    log.set_progress("plain")
    clock = FakeClock()
    with log.run_progress(4) as progress:
        progress.clock = clock
        for first in (0, 2):  # two batches of two images, 6 steps of 3 s each
            step = progress.batch(first, 2)
            for done in range(1, 7):
                clock.now += 3
                step(done, 6)
            clock.now += 2  # decoding
            progress.end()
    assert plain_lines(capsys.readouterr().err) == [
        "images 1-2/4: step 1/6, 3.00 s/it, ETA 0:00:33",  # the first step, then every 10 s or more
        "images 1-2/4: step 5/6, 3.00 s/it, ETA 0:00:21",
        "images 1-2/4: step 6/6, 3.33 s/it, ETA 0:00:20",  # the batch's end: 20 s for half the run
        "images 3-4/4: step 4/6, 3.00 s/it, ETA 0:00:06",
        "images 3-4/4: step 6/6, 3.33 s/it, ETA 0:00:00",
    ]


def test_hires_passes_count_towards_the_run(monkeypatch, capsys):
    monkeypatch.setenv(log.INTERVAL_VARIABLE, "0")
    log.set_progress("plain")
    clock = FakeClock()
    with log.run_progress(1) as progress:
        progress.clock = clock
        step = progress.batch(0, 1, passes=2)
        for total in (2, 2):
            for done in range(1, total + 1):
                clock.now += 1
                step(done, total)
    assert plain_lines(capsys.readouterr().err) == [
        "image 1/1: step 1/2 (pass 1/2), 1.00 s/it, ETA 0:00:03",
        "image 1/1: step 2/2 (pass 1/2), 1.00 s/it, ETA 0:00:02",
        "image 1/1: step 1/2 (pass 2/2), 1.00 s/it, ETA 0:00:01",
        "image 1/1: step 2/2 (pass 2/2), 1.00 s/it, ETA 0:00:00",
    ]


def test_messages_during_a_bar_start_on_their_own_line(capsys):
    log.set_progress("bar")
    with log.run_progress(2) as progress:
        step = progress.batch(0, 1)
        step(1, 4)
        log.warn("interrupted")
        warnings.warn("torch says so")
        step(2, 4)
        log.output("/tmp/x.png")
    out, err = capsys.readouterr()
    assert out == "/tmp/x.png\n"
    line_start = r"(?:^|\n|\r|\x1b\[A)"  # tqdm lifts the bars off with \r and cursor-up before a message
    assert re.search(line_start + r"warning: interrupted\n", err)
    assert re.search(line_start + r"[^\r\n\x1b]*test_progress.py:\d+: UserWarning: torch says so\n", err)
    assert re.search(r"image 1/2:  50%\|.*\| 2/4 \[\d\d:\d\d<\d\d:\d\d", err)  # the batch's steps, with ETA
    assert re.search(r"run 0/2 images:  25%\|.*\| \[\d\d:\d\d<\d\d:\d\d\]", err)  # the run's, with ETA


@pytest.mark.parametrize("flags, shown", [(["--progress", "none"], False), (["-q"], False),
                                          (["-q", "--progress", "plain"], True), ([], True)])
def test_progress_flag(run_cli, sd1_ckpt, tmp_path, monkeypatch, flags, shown):
    monkeypatch.setenv(log.INTERVAL_VARIABLE, "0")
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "3", "--seed", "1", "--height", "64",
                     "--width", "64", "-o", tmp_path / "a.png", *flags)
    assert result.code == 0, result.stderr
    assert len(plain_lines(result.stderr)) == (3 if shown else 0)


def test_bar_on_request_off_a_terminal(run_cli, sd1_ckpt, tmp_path):
    result = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, "--steps", "3", "--seed", "1", "--height", "64",
                     "--width", "64", "-o", tmp_path / "a.png", "--progress", "bar")
    assert result.code == 0, result.stderr
    assert re.search(r"\rrun 1/1 images: 100%\|.*\| \[\d\d:\d\d<00:00\]\n", result.stderr)
    assert not plain_lines(result.stderr)


def test_bad_interval_is_a_usage_error_before_loading(run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv(log.INTERVAL_VARIABLE, "soon")
    result = run_cli("txt2img", "a cat", "--ckpt", tmp_path / "missing.ckpt", "-o", tmp_path / "a.png")
    assert result.code == 2
    assert result.stderr == ("error: SD_CLI_PROGRESS_INTERVAL='soon' must be a number of seconds (0 or more); "
                             "unset it for 10 s\n")
