"""Shell completion (typer's protocol, run in this process) and `sd-cli models`, on tiny checkpoints
written in the original formats."""

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import cli
from sd_cli.cli.listing import human_size
from sd_cli.loading.checkpoint import model_hash
from sd_cli.loading.packaged import builtin_checkpoint
from tiny_models import write_tiny_checkpoint

BUILTIN = builtin_checkpoint().name


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("listed")
    return {"sd1": write_tiny_checkpoint("sd1", folder, fmt="safetensors", yaml_beside=False),
            "sd2": write_tiny_checkpoint("sd2", folder, yaml_beside=False)}


@pytest.fixture
def shelf(tmp_path, monkeypatch, no_defaults_file, tiny_files):
    """A working folder with a checkpoint in it, one in checkpoints/, a LoRA, a YAML and a hash cache of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SD_CLI_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(tiny_files["sd1"], tmp_path / "here-sd1.safetensors")
    shutil.copy(tiny_files["sd2"], tmp_path / "checkpoints" / "kept-sd2.ckpt")
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "style-lora.safetensors"))
    (tmp_path / "notes.yaml").write_text("not a model\n")
    (tmp_path / "checkpoints" / "lora").mkdir()
    save_file({"lora_te_x.lora_down.weight": torch.zeros(1)}, str(tmp_path / "checkpoints" / "lora" / "in-sub.safetensors"))
    return tmp_path


def complete(capsys, monkeypatch, words: str) -> list[str]:
    """What bash gets for `words` with the cursor after the last one (typer's complete_bash protocol)."""
    from sd_cli.cli.app import main

    monkeypatch.setenv("_SD_CLI_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    with pytest.raises(SystemExit):
        main([])
    return capsys.readouterr().out.splitlines()


# -- completion --------------------------------------------------------------------------------------

def test_ckpt_completes_the_checkpoints_found(shelf, capsys, monkeypatch):
    found = complete(capsys, monkeypatch, "sd-cli txt2img --ckpt ")
    assert found == ["here-sd1.safetensors", "style-lora.safetensors", "kept-sd2.ckpt", BUILTIN]
    assert complete(capsys, monkeypatch, "sd-cli img2img -m ke") == ["kept-sd2.ckpt"]


def test_ckpt_completes_a_typed_path_with_checkpoints_and_folders(shelf, capsys, monkeypatch):
    assert complete(capsys, monkeypatch, "sd-cli txt2img --ckpt checkpoints/") == [
        "checkpoints/kept-sd2.ckpt", "checkpoints/lora/"]


def test_ckpt_completes_the_folders_of_sd_cli_ckpt_and_the_defaults_file(shelf, capsys, monkeypatch, no_defaults_file):
    elsewhere, other = shelf / "models" / "a" / "env-model.ckpt", shelf / "models" / "b" / "file-model.safetensors"
    for path in (elsewhere, other):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")  # completion lists names: the contents are not read
    monkeypatch.setenv("SD_CLI_CKPT", str(elsewhere))
    no_defaults_file.parent.mkdir(parents=True)
    no_defaults_file.write_text(f'[txt2img]\nckpt = "{other}"\n')
    found = complete(capsys, monkeypatch, "sd-cli txt2img --ckpt ")
    assert found[-2:] == [str(elsewhere), str(other)]


def test_sampler_completes_ids_and_other_tools_spellings(shelf, capsys, monkeypatch):
    assert complete(capsys, monkeypatch, "sd-cli txt2img --sampler dpmpp_2") == ["dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_a"]
    assert complete(capsys, monkeypatch, "sd-cli txt2img --sampling-method dpm++2") == ["dpm++2m", "dpm++2msde", "dpm++2s_a"]
    assert complete(capsys, monkeypatch, "sd-cli txt2img --sampler k_euler") == ["k_euler", "k_euler_a", "k_euler_ancestral"]
    assert "Euler a" in complete(capsys, monkeypatch, "sd-cli txt2img --sampler Eu")


def test_every_completed_sampler_name_is_accepted():
    from sd_cli.sampling.samplers import canonical, completion_names

    for name in completion_names():
        canonical(name)  # raises UnknownSampler otherwise


def test_install_and_show_completion_are_there(capsys, no_defaults_file):
    code, out, _ = cli(capsys, "--show-completion", "bash")
    assert code == 0
    assert "_SD_CLI_COMPLETE=complete_bash" in out and "complete -o default -F _sd_cli_completion sd-cli" in out
    code, out, _ = cli(capsys, "--help")
    assert "--install-completion" in out and "--show-completion" in out


# -- sd-cli models -------------------------------------------------------------------------------------

def test_models_lists_family_size_where_and_the_builtin_model(shelf, capsys):
    code, out, err = cli(capsys, "models", "--json")
    assert (code, err) == (0, "")
    records = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert list(records) == ["here-sd1.safetensors", "style-lora.safetensors", "kept-sd2.ckpt", BUILTIN]
    here, lora, kept, builtin = records.values()
    assert (here["family"], here["where"], here["builtin"]) == ("SD 1.x", "current directory", False)
    assert here["size_bytes"] == (shelf / "here-sd1.safetensors").stat().st_size
    assert here["path"] == str((shelf / "here-sd1.safetensors").resolve())
    assert (kept["family"], kept["where"]) == ("SD 2.x", "checkpoints/")
    assert lora["family"] is None and lora["problem"].startswith("is a LoRA, not a checkpoint; pass it with --lora")
    assert (builtin["family"], builtin["builtin"], builtin["where"]) == ("SD 1.x", True, "sd_cli's own files")
    assert {r["hash"] for r in (here, lora, kept)} == {None}  # never hashed here: not read to hash it


def test_models_shows_a_hash_once_cached(shelf, capsys):
    expected = model_hash(shelf / "checkpoints" / "kept-sd2.ckpt")  # fills the cache
    code, out, _ = cli(capsys, "models", "--json")
    kept = next(r for r in map(json.loads, out.splitlines()) if r["name"] == "kept-sd2.ckpt")
    assert kept["hash"] == expected and len(expected) == 10
    (shelf / "checkpoints" / "kept-sd2.ckpt").write_bytes((shelf / "checkpoints" / "kept-sd2.ckpt").read_bytes() + b"x")
    code, out, _ = cli(capsys, "models", "--json")  # the file changed: the cached hash is not its hash
    assert next(r for r in map(json.loads, out.splitlines()) if r["name"] == "kept-sd2.ckpt")["hash"] is None


def test_models_reads_only_a_safetensors_header(shelf, capsys):
    whole = (shelf / "here-sd1.safetensors").read_bytes()
    header_end = 8 + struct.unpack("<Q", whole[:8])[0]
    (shelf / "here-sd1.safetensors").write_bytes(whole[:header_end])  # the tensors cut off: the header still tells
    code, out, _ = cli(capsys, "models", "--json")
    assert json.loads(out.splitlines()[0])["family"] == "SD 1.x"


def test_models_table(shelf, capsys):
    code, out, _ = cli(capsys, "models")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "(--ckpt)", "SIZE", "HASH", "FOUND", "IN", "FAMILY"]
    assert lines[1].startswith("here-sd1.safetensors ") and lines[1].endswith("current directory   SD 1.x")
    assert lines[2].endswith("current directory   is a LoRA, not a checkpoint; pass it with --lora (or <lora:name:weight> in the prompt)")
    assert lines[4].startswith(f"{BUILTIN} (built-in)")
    assert f" {human_size(builtin_checkpoint().stat().st_size)} " in lines[4] and " MB " in lines[4]
