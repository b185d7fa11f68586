"""`sd-cli --help-all` and `sd-cli man`: every command's options, panels and examples, from the same
parameters --help reads."""

import shutil
import subprocess

import pytest
import typer.main

from cli_helpers import cli
from sd_cli.cli.app import app
from sd_cli.cli.help import EXAMPLES, own_names

MACROS = {".TH", ".SH", ".SS", ".TP", ".PP", ".B", ".nf", ".fi"}


def visible_commands() -> dict:
    return {name: c for name, c in typer.main.get_command(app).commands.items() if not c.hidden}


def visible_options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option" and not p.hidden]


@pytest.fixture
def wide(monkeypatch, no_defaults_file):
    monkeypatch.setenv("COLUMNS", "100")


def test_help_all_holds_every_command_with_its_options_and_examples(capsys, wide):
    code, out, err = cli(capsys, "--help-all")
    assert (code, err) == (0, "")
    assert out.index("Usage: sd-cli [OPTIONS] COMMAND") < out.index("Usage: sd-cli txt2img")
    starts = [out.index(f"Usage: sd-cli {name} ") for name in visible_commands()]
    assert starts == sorted(starts)  # in the order the top-level help lists them
    for (name, command), start, end in zip(visible_commands().items(), starts, starts[1:] + [len(out)]):
        section = out[start:end]
        for param in visible_options(command):
            assert own_names(param.opts)[0] in section, (name, param.opts)
        for example in EXAMPLES.get(name, ()):
            assert example in section, example
    assert "X/Y/Z plot: every combination" in out and "Print every command's full help" in out


def test_help_all_is_the_commands_own_help(capsys, wide):
    _, all_help, _ = cli(capsys, "--help-all")
    _, txt2img_help, _ = cli(capsys, "txt2img", "--help")
    assert txt2img_help.strip() in all_help


def test_man_page_is_troff_with_every_option(capsys, no_defaults_file):
    code, out, err = cli(capsys, "man")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith('.TH SD-CLI 1 "') and ".SH NAME" in lines and ".SH SYNOPSIS" in lines
    assert {line.split()[0] for line in lines if line.startswith(".")} <= MACROS  # no text taken for a request
    for name, command in visible_commands().items():
        assert f".SH SD-CLI {name.upper()}" in lines
        for param in visible_options(command):
            assert f"\\fB{own_names(param.opts)[0].replace('-', chr(92) + '-')}\\fR" in out, (name, param.opts)
    txt2img = out[out.index(".SH SD-CLI TXT2IMG"):out.index(".SH SD-CLI IMG2IMG")]
    assert ".SS Essentials" in txt2img and ".SS Batch and prompt files" in txt2img and ".SS Examples" in txt2img
    assert "\\fB\\-\\-steps\\fR \\fIN\\fR\nSampling steps. [default: 50]" in txt2img
    assert "\\fB\\-\\-ckpt\\fR, \\fB\\-m\\fR \\fIPATH\\fR" in txt2img


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_page_formats_without_warnings(capsys, no_defaults_file, tmp_path):
    _, out, _ = cli(capsys, "man")
    formatted = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=out, capture_output=True, text=True)
    assert formatted.returncode == 0 and formatted.stderr == ""


def test_top_level_help_lists_models_man_and_help_all(capsys, wide):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    assert "│ models     List the checkpoints sd-cli finds" in out
    assert "│ man        Print sd-cli's man page (troff): every command and option, as --help-all gives them." in out
    assert "--help-all" in out and "Print every command's full help, one after another." in out
