"""The table of generation parameters (sd_cli/fields.py) against everything that uses it: the
infotext writer and reader, the prompt-file reader, the CLI's flags and defaults, Job and RunRequest."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sd_cli import fields
from sd_cli.cli import options
from sd_cli.files.infotext import format_infotext, parse_infotext
from sd_cli.files.reading import recorded_values
from sd_cli.run import jobs

# A value of every recorded field, chosen to need the field's own text form where it has one.
RECORDED = {
    "steps": 30, "sampler": "euler_a", "scale": 5.5, "seed": 7, "size": (128, 192), "model_hash": "0123abcd",
    "model": "v2-1_512", "strength": 0.4, "mask_blur": 4.0, "eta": 0.5, "hires_strength": 0.6, "hires_scale": 1.5,
    "hires_steps": 2, "hires_upscaler": "latent-nearest", "vae_hash": "feed", "vae": "ft-mse.safetensors",
    "lora_hashes": "a: 0123, b: 4567", "sampler_id": "dpmpp_2m", "clip_skip": 2, "ti_hashes": "style: 89ab",
    "emphasis": "none", "version": "sd_cli 0.1",
    "refiner": "sd_xl_refiner_1.0 [7440042bbd]", "refiner_switch_at": 0.9, "refiner_strength": 0.15,
    "refiner_steps": 12, "aesthetic_score": 7.0, "negative_aesthetic_score": 2.5,
    "original_width": 768, "original_height": 1024, "crop_top": 32, "crop_left": 0, "target_width": 512,
    "target_height": 640, "schedule_type": "EDM",
}
# Every prompt-file key as a line's text gives it, and the value it stands for.
LINE_TEXT = {
    "prompt": ("a cat", "a cat"), "negative_prompt": ("blurry", "blurry"), "steps": ("30", 30),
    "sampler": ("Euler a", "euler_a"), "scale": ("5.5", 5.5), "seed": ("7", 7), "width": ("128", 128),
    "height": ("192", 192), "strength": ("0.4", 0.4), "eta": ("0.5", 0.5), "init_img": ("in.png", Path("in.png")),
    "mask": ("mask.png", Path("mask.png")), "n_samples": ("2", 2), "n_iter": ("3", 3), "name": ("x.png", "x.png"),
}
OPTION_GROUPS = (options.leading_options, options.sampling_options, options.run_options,
                 options.txt2img_size_options, options.img2img_options, options.inpaint_options,
                 options.refiner_options, options.sdxl_size_options)


def test_every_recorded_field_has_a_sample():
    assert set(RECORDED) == {f.name for f in fields.FIELDS if f.label is not None}
    assert set(LINE_TEXT) == set(fields.LINE_KEYS)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_label_round_trips_write_then_read(name):
    field = fields.BY_NAME[name]
    text = format_infotext("a prompt", "", {"Steps": 1, "Seed": 2, **fields.infotext_fields({name: RECORDED[name]})})
    _prompt, _negative, found = parse_infotext(text)
    assert recorded_values(found, (field,), "x.png") == {name: RECORDED[name]}


def test_labels_are_unique_but_for_denoising_strength():
    """AUTOMATIC1111 writes img2img's strength and the hires fix's under one label; a PNG has one of them."""
    labels = [f.label for f in fields.FIELDS if f.label is not None]
    shared = {label for label in labels if labels.count(label) > 1}
    assert shared == {"Denoising strength"}
    assert [f.name for f in fields.FIELDS if f.label in shared] == ["strength", "hires_strength"]


def test_infotext_follows_the_table_order():
    values = {k: v for k, v in reversed(list(RECORDED.items())) if k != "hires_strength"}
    labels = list(fields.infotext_fields(values))
    assert labels == [f.label for f in fields.FIELDS if f.name in values]
    assert labels[:6] == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size"] and labels[-1] == "Version"


def test_infotext_leaves_out_none_and_unlabelled():
    assert fields.infotext_fields({"steps": 3, "seed": None, "prompt": "x", "width": 64}) == {"Steps": 3}


@pytest.mark.parametrize("name", sorted(LINE_TEXT))
def test_every_prompt_file_spelling_gives_the_same_value(name):
    """JSON key, every flag spelling (AUTOMATIC1111 line syntax) and every alias: one value."""
    field = fields.LINE_KEYS[name]
    text, value = LINE_TEXT[name]
    json_value = value if not isinstance(value, Path) else text
    base = {} if name == "prompt" else {"prompt": "p"}
    spellings = [f for f in field.flags if f.startswith("--")] + ["--" + alias for alias in field.aliases]
    assert jobs.check_values({**base, name: json_value})[name] == value
    for spelling in spellings:
        prefix = "" if name == "prompt" else "--prompt p "
        assert jobs.parse_line(f"{prefix}{spelling} {json.dumps(text)}")[name] == value, spelling
    for alias in field.aliases:
        assert jobs.check_values({**base, alias: json_value})[name] == value, alias


def _parameter(name: str):
    for group in OPTION_GROUPS:
        parameters = inspect.signature(group).parameters
        if name in parameters:
            return group, parameters[name]
    return None, None


def _cli_value(group, argv: list[str]):
    """What typer gives the parameters of option group `group` for `argv`."""
    got = {}

    def command(**kwargs):
        got.update(kwargs)

    command.__signature__ = inspect.signature(group)
    app = typer.Typer()
    app.command()(command)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    return got


@pytest.mark.parametrize("name", sorted(set(LINE_TEXT) - {"prompt"}))
def test_every_flag_parses_like_its_prompt_file_key(name):
    group, _parameter_ = _parameter(name)
    text, value = LINE_TEXT[name]
    for spelling in fields.flags(name):
        given = _cli_value(group, [spelling, text])[name]
        if name == "name":  # --name is a template for every file; on a line it is that line's file
            assert given == text
            continue
        given = str(given) if isinstance(given, Path) else given
        assert jobs.check_values({name: given})[name] == value, spelling


@pytest.mark.parametrize("field", [f for f in fields.FIELDS if f.flags], ids=lambda f: f.name)
def test_cli_declares_the_table_flags_and_defaults(field):
    group, parameter = _parameter(field.name)
    assert parameter is not None, f"no option group declares {field.name}"
    info = parameter.annotation.__metadata__[0]
    declared = {d for d in (info.default, *info.param_decls) if isinstance(d, str)}  # typer keeps the first in `default`
    assert set(field.flags) <= set(declared)
    assert getattr(parameter.default, "value", parameter.default) == field.default


def test_job_defaults_are_the_table_defaults():
    job_fields = {f.name: f for f in dataclasses.fields(jobs.Job)}
    for field in fields.JOB_FIELDS:
        assert field.name in job_fields
        if field.default is not None:
            assert job_fields[field.name].default == field.default, field.name


def test_folders_are_defined_once():
    from sd_cli.loading import lora
    from sd_cli.prompting import embeddings
    from sd_cli.run.render import RunRequest

    assert lora.DEFAULT_DIR is fields.LORA_DIR and embeddings.DEFAULT_DIR is fields.EMBEDDINGS_DIR
    assert RunRequest(mode="txt2img", jobs=[]).lora_dir is fields.LORA_DIR
    assert inspect.signature(options.run_options).parameters["lora_dir"].default is fields.LORA_DIR


def test_no_torch_at_import():
    import subprocess
    import sys

    code = "import sys, sd_cli.fields, sd_cli.cli.options; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
