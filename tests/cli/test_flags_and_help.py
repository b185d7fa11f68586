"""Flags people know from other tools, "did you mean", and a --help a person can read; no rendering."""

import json
import shlex
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import cli
from sd_cli import log
from sd_cli.cli.app import app
from sd_cli.cli.help import EXAMPLES
from sd_cli.sampling import samplers

RENDER_COMMANDS = ("txt2img", "img2img", "inpaint", "depth2img", "upscale")


# -- flags of other tools: aliases with our meaning ------------------------------------------------

SD_CPP = ["-p", "a cat", "-n", "blurry", "-m", "m.ckpt", "-s", "5", "-W", "128", "-H", "192", "--cfg-scale", "5",
          "--sampling-method", "dpm++2m", "-b", "3", "--steps", "20", "--clip-skip", "2", "--vae", "v.pt",
          "-t", "2", "-o", "o.png"]
OURS = ["--prompt", "a cat", "--negative-prompt", "blurry", "--ckpt", "m.ckpt", "--seed", "5", "--width", "128",
        "--height", "192", "--scale", "5", "--sampler", "dpm++2m", "--n-iter", "3", "--steps", "20",
        "--clip-skip", "2", "--vae", "v.pt", "--threads", "2", "--output", "o.png"]


def test_stable_diffusion_cpp_flags_mean_ours(parse):
    theirs = parse("txt2img", *SD_CPP)
    assert theirs == parse("txt2img", *OURS)
    assert (theirs["n_iter"], theirs["n_samples"]) == (3, 1)  # sd.cpp's -b is a count of images in turn, not a batch
    assert theirs["ckpt"] == Path("m.ckpt") and theirs["threads"] == 2


def test_img2img_flags_of_stable_diffusion_cpp(parse):
    theirs = parse("img2img", "x", "-i", "in.png", "--strength", "0.4", "--model", "m.ckpt")
    assert theirs == parse("img2img", "x", "--init-img", "in.png", "--strength", "0.4", "--ckpt", "m.ckpt")
    assert theirs["init_img"] == Path("in.png") and theirs["strength"] == 0.4


@pytest.mark.parametrize("value, clip_skip", [("-1", None), ("2", 2)])
def test_stable_diffusion_cpp_clip_skip_minus_one_is_the_models_own(capsys, monkeypatch, no_defaults_file, value, clip_skip):
    import sd_cli.run.render

    made = []
    monkeypatch.setattr(sd_cli.run.render, "run", made.append)
    code, _, err = cli(capsys, "txt2img", "x", "--clip-skip", value, "--seed", "1")
    assert (code, err) == (0, "")
    assert made[0].clip_skip == clip_skip


def test_clip_skip_zero_says_what_it_takes(capsys, no_defaults_file):
    code, out, err = cli(capsys, "txt2img", "x", "--clip-skip", "0", "--seed", "1")
    assert (code, out, err) == (2, "", "error: --clip-skip must be at least 1 (or -1 for the model's own layer), got 0\n")


def test_prompt_file_keys_are_flags(parse):
    keys = parse("img2img", "x", "--negative_prompt", "blurry", "--cfg_scale", "5", "--sampler_name", "Euler a",
                 "--batch_size", "2", "--denoising_strength", "0.3", "--init_image", "in.png", "--ddim_steps", "9")
    ours = parse("img2img", "x", "-n", "blurry", "--scale", "5", "--sampler", "Euler a", "--n-samples", "2",
                 "--strength", "0.3", "--init-img", "in.png", "--steps", "9")
    assert keys == ours


def test_no_spelling_has_two_meanings():
    """Every name of every option of every command belongs to one option only."""
    import typer.main

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        spellings = [s for param in command.params for s in param.opts + param.secondary_opts]
        assert len(spellings) == len(set(spellings)), (name, sorted({s for s in spellings if spellings.count(s) > 1}))


def test_original_scripts_keep_their_flags(parse):
    """The original spellings (--H, --ddim_steps, --n_samples, --C) still mean what the original scripts meant."""
    original = parse("txt2img", "x", "--H", "128", "--W", "64", "--ddim_steps", "7", "--n_samples", "2", "--n_iter", "3",
                     "--ddim_eta", "0.5", "--C", "4", "--f", "8", "--plms")
    assert (original["height"], original["width"], original["steps"], original["n_samples"], original["n_iter"],
            original["eta"], original["C"], original["f"], original["plms"]) == (128, 64, 7, 2, 3, 0.5, 4, 8, True)


def test_help_and_version_switches(capsys):
    from sd_cli import __version__

    assert cli(capsys, "--version") == (0, f"sd-cli {__version__}\n", "")
    code, out, _ = cli(capsys, "-h")
    assert code == 0 and "Usage: sd-cli [OPTIONS] COMMAND" in out
    code, out, _ = cli(capsys, "txt2img", "-h")
    assert code == 0 and "Usage: sd-cli txt2img [OPTIONS] [PROMPT]" in out


@pytest.mark.parametrize("typed, message", [
    ("--stesp", "error: no such option --stesp; did you mean --steps?"),
    ("--Steps", "error: no such option --Steps; did you mean --steps?"),
    ("--negative-promt", "error: no such option --negative-promt; did you mean --negative-prompt?"),
    ("--cfg-scal", "error: no such option --cfg-scal; did you mean --cfg-scale?"),
    ("--samples", "error: no such option --samples; did you mean --n-samples, --sampler or --scale?"),
    ("--zzz", "error: no such option --zzz; see --help for the options"),
])
def test_mistyped_flag_gets_a_suggestion(capsys, typed, message):
    assert cli(capsys, "txt2img", "x", typed, "1") == (2, "", message + "\n")


@pytest.mark.parametrize("name, sampler", [
    ("dpm++2m", "dpmpp_2m"), ("dpm++2s_a", "dpmpp_2s_a"), ("euler_a", "euler_a"), ("Euler A", "euler_a"),
    ("DPM++ 2M Karras", "dpmpp_2m_karras"), ("dpm++2m karras", "dpmpp_2m_karras"), ("dpm2", "dpm2"),
    ("k_dpm_2_a", "dpm2_a"), ("DPM++ 2M SDE", "dpmpp_2m_sde"),
])
def test_other_tools_sampler_spellings(name, sampler):
    assert samplers.canonical(name) == sampler


def test_every_sampler_is_found_by_its_plain_spellings():
    """No two samplers share a spelling once case, spaces, "_", "-" and "++" are set aside."""
    for spec in samplers.SAMPLERS.values():
        assert samplers.canonical(spec.id.replace("_", "")) == spec.id
        if spec.id != "dpm":  # its label "DPM++ 2M" is dpmpp_2m's, as in AUTOMATIC1111
            assert samplers.canonical(spec.label.replace(" ", "-").upper()) == spec.id


@pytest.mark.parametrize("name, hint", [
    ("eular", "(did you mean euler or euler_a?)"),
    ("dpmpp2", "(did you mean dpmpp_2m or dpmpp_2s_a or dpm2?)"),
    ("ipndm", ""),  # stable-diffusion.cpp's iPNDM: sd_cli has no such sampler, and nothing is close
])
def test_mistyped_sampler_gets_a_suggestion(name, hint):
    with pytest.raises(samplers.UnknownSampler) as err:
        samplers.canonical(name)
    assert str(err.value).startswith(f"{name!r} is unknown{' ' + hint if hint else ''}; use one of ddim, plms, dpm, ")


def test_mistyped_sampler_on_the_command_line(capsys):
    code, out, err = cli(capsys, "txt2img", "x", "--sampler", "eular", "-o", "never.png")
    assert (code, out) == (2, "")
    assert err.startswith("error: --sampler 'eular' is unknown (did you mean euler or euler_a?); use one of ddim, ")
    assert not Path("never.png").exists()


# -- help ------------------------------------------------------------------------------------------

@pytest.fixture
def help_text(capsys, monkeypatch, no_defaults_file):
    """help_text(*command): `sd-cli COMMAND --help` at 100 columns, as a terminal of that width shows it."""
    monkeypatch.setenv("COLUMNS", "100")

    def run(*command: str) -> str:
        code, out, err = cli(capsys, *command, "--help")
        assert (code, err) == (0, "")
        return out

    return run


def panel_titles(text: str) -> list[str]:
    return [line.split("─ ", 1)[1].split(" ─")[0] for line in text.splitlines() if line.startswith("╭─ ")]


def test_txt2img_help_panels_essentials_first_and_short(help_text):
    text = help_text("txt2img")
    lines = text.splitlines()
    assert panel_titles(text) == ["Arguments", "Essentials", "Batch and prompt files", "Quality and speed",
                                  "Automation and output", "Original scripts' flags", "SDXL and its refiner", "ControlNet",
                                  "CPU backend",
                                  "Other spellings: the original scripts, stable-diffusion.cpp, AUTOMATIC1111 "
                                  "(same meaning)"]
    before_aliases = next(i for i, line in enumerate(lines) if "Original scripts' flags" in line)
    assert before_aliases <= 67  # the figure in docs/cli-help.md (126 flat lines before)
    start = next(i for i, line in enumerate(lines) if "Essentials" in line)
    essentials = [line.split()[1] for line in lines[start + 1:] if line.startswith("│ --")][:11]
    assert essentials == ["--prompt", "--negative-prompt", "--ckpt", "--width", "--height", "--steps", "--scale",
                          "--seed", "--sampler", "--outdir", "--output"]
    other_spellings = dict(line.strip("│ ").split(None, 1) for line in lines[before_aliases:]
                           if line.startswith("│  --"))
    assert other_spellings["--steps"] == "--ddim_steps"
    assert other_spellings["--n-iter"] == "--batch-count, --n_iter, --batch_count"
    assert other_spellings["--ckpt"] == "--model"


@pytest.mark.parametrize("command", [*RENDER_COMMANDS, "info", "verify", "defaults"])
def test_help_shows_no_python_types_and_has_examples(help_text, command):
    text = help_text(command)
    for python_type in ("<str>", "<int>", "<float>", "<bool>", "<path>", "list[", "<original|none>"):
        assert python_type not in text, python_type
    examples = text.split("Examples:", 1)[1].split("\n")
    assert [line.strip() for line in examples if line.strip()] == list(EXAMPLES[command])


@pytest.mark.parametrize("command", RENDER_COMMANDS)
def test_examples_parse(parse, command):
    for example in EXAMPLES[command]:
        argv = shlex.split(example)
        assert argv[:2] == ["sd-cli", command]
        parse(*argv[1:])


def test_top_level_help_gives_each_command_its_full_line(help_text):
    text = help_text()
    for command, description in [
        ("txt2img", "Generate images from a text prompt."),
        ("img2img", "Change an image following a prompt (its size is floored to multiples of 64)."),
        ("inpaint", "Repaint the masked part of an image (white in --mask, or its transparent pixels)."),
        ("depth2img", "Change an image following a prompt, keeping its depth (the SD 2 depth model)."),
        ("info", "Print the generation parameters recorded in images (exit 1 if one has none)."),
        ("verify", "Name the known invisible watermark images carry (exit 1 if one has none)."),
        ("defaults", "Print the defaults in force (defaults file, $SD_CLI_CKPT) and where each comes from."),
    ]:
        assert f"│ {command:<9}  {description}" in text


def test_verify_json_help_names_the_fields_it_prints(help_text, capsys, tmp_path):
    image = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    code, out, _ = cli(capsys, "verify", "--json", image)
    assert code == 1  # a plain image carries no watermark
    record = json.loads(out)
    described = " ".join(help_text("verify").split())
    assert "the fields of txt2img --json" not in described
    for key in record:
        assert key in described, key


def test_xy_is_one_line_in_the_batch_panel(help_text):
    lines = help_text("txt2img").splitlines()
    batch = lines.index(next(line for line in lines if "Batch and prompt files" in line))
    end = next(i for i in range(batch + 1, len(lines)) if lines[i].startswith("╰"))
    xy = [line for line in lines[batch:end] if "--xy" in line]
    assert len(xy) == 1 and "X/Y/Z plot: every combination of FIELD=V1,V2 axes (1-3), one grid." in xy[0]


def test_n_samples_help_says_what_it_does_with_a_prompt_file(help_text):
    text = " ".join(help_text("txt2img").split())
    assert "--n-samples N Batch size (for --from-file: lines per batch)." in text
    assert "--repeat N Images per line of --from-file." in text


# -- quiet ----------------------------------------------------------------------------------------

def test_a_warning_is_given_once_per_run(capsys):
    with log.run_scope(quiet=False):
        for _ in range(3):
            log.warn("the same thing")
        log.warn("another thing")
    with log.run_scope(quiet=False):
        log.warn("the same thing")
    assert capsys.readouterr().err == ("warning: the same thing\nwarning: another thing\n"
                                       "warning: the same thing\n")


def test_quiet_prints_errors_only_and_ends_with_the_run(capsys):
    with log.run_scope(quiet=True):
        log.info("loaded")
        log.warn("too small for the watermark")
        log.error("line 2: bad")
    log.info("after the run")
    assert capsys.readouterr().err == "error: line 2: bad\nafter the run\n"
