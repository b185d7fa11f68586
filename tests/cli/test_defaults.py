"""Defaults set once: the TOML defaults file, $SD_CLI_CKPT, and `sd-cli defaults`."""

from pathlib import Path

import pytest

from cli_helpers import cli

FILE = '''ckpt = "~/models/base.ckpt"
steps = 30
strength = 0.5
[txt2img]
sampler = "euler_a"
n-samples = 2
lora = "style.safetensors"
'''


@pytest.fixture
def defaults_file(no_defaults_file):
    no_defaults_file.parent.mkdir(parents=True)
    no_defaults_file.write_text(FILE)
    return no_defaults_file


def test_file_values_apply_shared_and_per_subcommand(parse, defaults_file):
    txt2img = parse("txt2img", "x")
    assert (txt2img["steps"], txt2img["sampler"], txt2img["n_samples"], txt2img["lora"]) == \
        (30, "euler_a", 2, ["style.safetensors"])
    assert txt2img["ckpt"] == Path.home() / "models" / "base.ckpt"
    img2img = parse("img2img", "x")
    assert (img2img["steps"], img2img["sampler"], img2img["strength"], img2img["n_samples"]) == (30, "ddim", 0.5, 1)


def test_command_line_wins_then_the_environment_then_the_file(parse, defaults_file, monkeypatch):
    given = parse("txt2img", "x", "--steps", "5", "--sampler", "plms", "--ckpt", "cli.ckpt")
    assert (given["steps"], given["sampler"], given["ckpt"]) == (5, "plms", Path("cli.ckpt"))
    monkeypatch.setenv("SD_CLI_CKPT", "env.ckpt")
    assert parse("txt2img", "x")["ckpt"] == Path("env.ckpt")
    assert parse("txt2img", "x", "-m", "cli.ckpt")["ckpt"] == Path("cli.ckpt")


def test_sd_cli_defaults_names_the_file(parse, defaults_file, monkeypatch, tmp_path):
    other = tmp_path / "ci.toml"
    other.write_text("steps = 4\n")
    monkeypatch.setenv("SD_CLI_DEFAULTS", str(other))
    parsed = parse("txt2img", "x")
    assert (parsed["steps"], parsed["sampler"]) == (4, "ddim")  # the config folder's file is not read


def test_defaults_command_says_where_each_value_comes_from(capsys, defaults_file, monkeypatch):
    monkeypatch.setenv("SD_CLI_CKPT", "env.ckpt")
    code, out, err = cli(capsys, "defaults")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"defaults file: {defaults_file} (found in the config folder)",
        "txt2img --ckpt env.ckpt  ($SD_CLI_CKPT)",
        f"txt2img --steps 30  ({defaults_file} shared)",
        f"txt2img --sampler euler_a  ({defaults_file} [txt2img])",
        f"txt2img --n-samples 2  ({defaults_file} [txt2img])",
        f"txt2img --lora style.safetensors  ({defaults_file} [txt2img])",
        *[line for mode in ("img2img", "inpaint", "depth2img") for line in (
            f"{mode} --ckpt env.ckpt  ($SD_CLI_CKPT)",
            f"{mode} --strength 0.5  ({defaults_file} shared)",
            f"{mode} --steps 30  ({defaults_file} shared)")],
    ]


def test_defaults_command_without_a_file(capsys, no_defaults_file):
    code, out, _ = cli(capsys, "defaults")
    assert code == 0
    assert out.splitlines() == [
        f"defaults file: none (put one at {no_defaults_file} or set $SD_CLI_DEFAULTS)",
        "no defaults set: every option has sd_cli's own default (sd-cli COMMAND --help)"]


def test_help_shows_the_defaults_in_force(capsys, defaults_file, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = cli(capsys, "txt2img", "--help")
    assert code == 0 and "Sampling steps. [default: 30]" in out


@pytest.mark.parametrize("text, message", [
    ("stpes = 3\n", "unknown key 'stpes'; did you mean steps?"),
    ("steps = 'many'\n", "shared key steps = 'many': "),
    ("[txt2img]\nstrength = 0.5\n", "[txt2img] has unknown key 'strength'; did you mean hires-strength or refiner-strength?"),
    ("[txt2im]\nsteps = 3\n", "unknown table [txt2im]; the tables are [txt2img], [img2img], [inpaint], [depth2img]"),
    ("steps = [\n", "is not valid TOML"),
])
def test_bad_defaults_file_is_a_usage_error_naming_it(capsys, no_defaults_file, text, message):
    no_defaults_file.parent.mkdir(parents=True)
    no_defaults_file.write_text(text)
    code, out, err = cli(capsys, "txt2img", "x", "-o", "never.png")
    assert (code, out) == (2, "")
    assert err.startswith(f"error: defaults file {no_defaults_file}") and message in err and err.count("\n") == 1
    assert cli(capsys, "info", "--help")[0] == 0  # only the rendering commands read the file


def test_missing_named_defaults_file(capsys, no_defaults_file, monkeypatch, tmp_path):
    monkeypatch.setenv("SD_CLI_DEFAULTS", str(tmp_path / "missing.toml"))
    assert cli(capsys, "txt2img", "x") == (
        2, "", f"error: $SD_CLI_DEFAULTS names {tmp_path / 'missing.toml'}, which is not a file; "
               "create it or unset SD_CLI_DEFAULTS\n")
