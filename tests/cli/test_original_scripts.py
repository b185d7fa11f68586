"""The original scripts' entry points (scripts/*.py) read prompt files as the original does."""

import json

import pytest

from sd_cli.run import jobs

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = "a red circle\n\na blue square\n"


def test_sd_cli_skips_blank_lines():
    parsed = jobs.parse_prompt_file(PROMPTS)
    assert [(r.line, r.values["prompt"]) for r in parsed] == [(1, "a red circle"), (3, "a blue square")]


def test_original_scripts_read_a_blank_line_as_the_empty_prompt():
    with jobs.blank_lines_are_prompts():
        parsed = jobs.parse_prompt_file(PROMPTS + "   \n")
    assert [(r.line, r.values["prompt"]) for r in parsed] == [(1, "a red circle"), (2, ""), (3, "a blue square"), (4, "")]
    assert len(jobs.parse_prompt_file(PROMPTS)) == 2  # the rule ends with the entry point's run


def rendered_prompts(stdout: str) -> list[str]:
    return [json.loads(line)["prompt"] for line in stdout.splitlines()]


def test_txt2img_script_renders_the_blank_line(sd1_ckpt, tmp_path, capsys):
    from sd_cli.cli.original_scripts import run_original_script

    prompts = tmp_path / "f.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    args = ["--from-file", str(prompts), "--ckpt", str(sd1_ckpt), "--ddim_steps", "1", "--n_iter", "1",
            "--outdir", str(tmp_path / "out"), "--skip_grid", "--json"]
    try:
        run_original_script("txt2img", args)
    except SystemExit as done:
        assert not done.code, capsys.readouterr().err
    assert rendered_prompts(capsys.readouterr().out) == ["a red circle", "", "a blue square"]
    assert len(list((tmp_path / "out" / "samples").iterdir())) == 3


def test_a_file_of_blank_lines_is_empty_prompts_for_the_original_only(tmp_path):
    from sd_cli.errors import UsageError

    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UsageError, match="is empty; put one prompt per line"):
        jobs.read_prompt_file(blank)
    with jobs.blank_lines_are_prompts():
        assert [r.values for r in jobs.parse_prompt_file(jobs.read_prompt_file(blank))] == [{"prompt": ""}, {"prompt": ""}]
        (tmp_path / "zero.txt").write_bytes(b"")
        with pytest.raises(UsageError, match="is empty"):
            jobs.read_prompt_file(tmp_path / "zero.txt")
