"""The README's commands run as written: every shell line of its ```bash blocks, in order, in one
empty folder, so that a command reading a file an earlier one wrote proves the names match. The
same for docs/automation.md, whose examples chain the same way.

Which lines run: every line of a ```bash block, with `sd-cli` standing for `python -m sd_cli`
from this checkout, except
- comments and blank lines;
- installs (lines starting with `pip` or `pipx`): .ci/run runs those, on a fresh machine;
- lines naming `--ckpt`: they need a checkpoint of the reader's own, and naming it with `--ckpt`
  is the pages' way of saying so. Anything without `--ckpt` must run on the built-in model;
- launcher lines (`torchrun`, `accelerate launch`): they start several processes on several
  devices (tests/run covers the shares they render).
A line ending in `\\` continues on the next. Every image path a page names in backticks
(`out/00000-7-....png`) must exist after its commands ran.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN_PAGES = [README, ROOT / "docs" / "automation.md"]
SD_CLI = re.compile(r"(?<![\w./-])sd-cli(?=\s|$)")


def bash_blocks(text: str) -> list[list[str]]:
    """The lines of each ```bash block, continuations joined."""
    blocks, current = [], None
    for line in text.splitlines():
        if current is None:
            if line.strip() == "```bash":
                current = []
        elif line.strip() == "```":
            blocks.append(current)
            current = None
        elif current and current[-1].endswith("\\"):
            current[-1] = current[-1][:-1] + " " + line.strip()
        else:
            current.append(line.strip())
    assert current is None, "README.md has an unclosed ```bash block"
    return blocks


def skip_reason(line: str) -> str | None:
    if not line or line.startswith("#"):
        return "comment"
    if line.split()[0] in ("pip", "pipx"):
        return "install"
    if line.split()[0] in ("torchrun", "accelerate"):
        return "launcher"
    if "--ckpt" in shlex.split(line, comments=True):
        return "your checkpoint"
    return None


def runnable_commands(text: str) -> list[str]:
    return [line for block in bash_blocks(text) for line in block if skip_reason(line) is None]


def as_local_command(line: str) -> str:
    return SD_CLI.sub(f"{shlex.quote(sys.executable)} -m sd_cli", line)


def check_output(line: str, stdout: str) -> None:
    """info and verify say what the README's images are: made by the built-in model, watermarked."""
    words = shlex.split(line, comments=True)
    if words[:2] == ["sd-cli", "info"]:
        image = words[2]
        if "--json" in words:
            record = json.loads(stdout)
            assert (record["path"], record["model"]) == (image, "sd-cli-tiny"), record
        else:
            assert "Model: sd-cli-tiny" in stdout, stdout
    if words[:2] == ["sd-cli", "verify"]:
        assert stdout.startswith(f"{words[2]}: StableDiffusionV1 (match "), stdout


def test_the_commands_are_found():
    """The parser sees the README's examples: a broken fence would otherwise pass the run below."""
    commands = runnable_commands(README.read_text())
    assert commands[0] == 'sd-cli txt2img "a red circle on a blue background"'
    assert len(commands) >= 12, commands
    assert any(line.startswith("printf ") for line in commands)
    assert all(SD_CLI.match(line) or line.startswith("printf ") for line in commands), commands


def test_the_rules_skip_installs_and_own_checkpoints():
    assert skip_reason('pip install -e . && sd-cli txt2img "x"') == "install"
    assert skip_reason('sd-cli txt2img "x" --ckpt model.ckpt') == "your checkpoint"
    assert skip_reason('sd-cli txt2img "a checkpoint" -o ckpt.png') is None
    assert skip_reason("# a comment") == "comment"
    assert skip_reason("torchrun --standalone --nproc_per_node 4 -m sd_cli txt2img x") == "launcher"
    assert bash_blocks("```bash\nsd-cli txt2img \\\n  --seed 1\n```\n") == [["sd-cli txt2img  --seed 1"]]


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: p.name)
def test_commands_run_in_order_in_one_folder(page, tmp_path):
    text = page.read_text()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for line in runnable_commands(text):
        done = subprocess.run(["bash", "-c", as_local_command(line)], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stderr}"
        check_output(line, done.stdout)
    named = sorted(set(re.findall(r"`([\w./-]+\.png)`", text)))
    assert named and [name for name in named if not (tmp_path / name).is_file()] == [], named
