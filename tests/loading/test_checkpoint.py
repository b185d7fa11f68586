"""Checkpoint reading: Lightning-format files load without Lightning, malicious pickles are refused
with the name of what they call and never run, broken files give one-line errors, and the model
hash is AUTOMATIC1111's and cached."""

import builtins
import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd_cli.loading.checkpoint import model_hash, read_checkpoint
from sd_cli.errors import CheckpointError

LIGHTNING_MODULES = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
FORMATS = {"zip": True, "legacy": False}


@pytest.fixture(autouse=True)
def hash_cache_dir(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("SD_CLI_CACHE_DIR", str(cache_dir))
    return cache_dir


def small_state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3, generator=g),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(8, generator=g).half(),
        "first_stage_model.decoder.conv_out.weight": torch.randn(3, 8, 3, 3, generator=g),
        "model_ema.num_updates": torch.tensor(470000, dtype=torch.int32),
        "alphas_cumprod": torch.linspace(0.99, 0.01, 1000, dtype=torch.float64),
    }


@contextlib.contextmanager
def fake_lightning():
    """A `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` that exists only while saving."""
    modules = {name: types.ModuleType(name) for name in LIGHTNING_MODULES}

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = LIGHTNING_MODULES[-1], "ModelCheckpoint"
    modules[LIGHTNING_MODULES[-1]].ModelCheckpoint = ModelCheckpoint
    sys.modules.update(modules)
    try:
        yield ModelCheckpoint
    finally:
        for name in LIGHTNING_MODULES:
            del sys.modules[name]


def save_lightning_checkpoint(path, state_dict, zip_format=True):
    """Saved the way pytorch-lightning 1.4.2 saved the released SD checkpoints (optimizer pruned)."""
    with fake_lightning() as ModelCheckpoint:
        checkpoint = {
            "epoch": 6,
            "global_step": 470000,
            "pytorch-lightning_version": "1.4.2",
            "state_dict": state_dict,
            "callbacks": {
                ModelCheckpoint: {
                    "monitor": None,
                    "best_model_score": None,
                    "best_model_path": "/fsx/logs/checkpoints/last.ckpt",
                    "current_score": np.float64(0.1234),  # old SD files hold numpy scalars here
                    "dirpath": "/fsx/logs/checkpoints",
                    "kept": np.int64(3),
                }
            },
            "lr_schedulers": [
                {"base_lrs": [1e-4], "last_epoch": 470000, "_step_count": 470001, "verbose": False,
                 "_last_lr": [1e-4], "lr_lambdas": [None]}
            ],
        }
        torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)


def assert_no_lightning():
    assert "pytorch_lightning" not in sys.modules
    assert importlib.util.find_spec("pytorch_lightning") is None


def assert_same_tensors(actual, expected):
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


def read_error(path):
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- files that load -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_lightning_checkpoint_loads_without_lightning(tmp_path, fmt):
    expected = small_state_dict()
    path = tmp_path / "sd-v1-4.ckpt"
    save_lightning_checkpoint(path, expected, zip_format=FORMATS[fmt])
    assert_no_lightning()
    safe_globals_before = set(torch.serialization.get_safe_globals())  # a set: its list order is arbitrary

    checkpoint = read_checkpoint(path)

    assert_no_lightning()
    assert checkpoint.path == path
    assert checkpoint.global_step == 470000
    assert_same_tensors(checkpoint.state_dict, expected)
    assert set(torch.serialization.get_safe_globals()) == safe_globals_before  # nothing left allowed


@pytest.mark.parametrize("fmt", FORMATS)
def test_bare_state_dict_loads(tmp_path, fmt):
    expected = small_state_dict()
    path = tmp_path / "bare.pt"
    torch.save(expected, path, _use_new_zipfile_serialization=FORMATS[fmt])
    checkpoint = read_checkpoint(str(path))
    assert checkpoint.global_step is None
    assert_same_tensors(checkpoint.state_dict, expected)


def test_global_step_as_numpy_scalar_is_read(tmp_path):
    path = tmp_path / "np_step.ckpt"
    torch.save({"state_dict": small_state_dict(), "global_step": np.int64(875000)}, path)
    assert read_checkpoint(path).global_step == 875000


def test_safetensors_loads(tmp_path):
    expected = small_state_dict()
    path = tmp_path / "model.safetensors"
    save_file(expected, str(path), metadata={"format": "pt"})
    checkpoint = read_checkpoint(path)
    assert checkpoint.global_step is None
    assert_same_tensors(checkpoint.state_dict, expected)


def test_safetensors_content_under_ckpt_name_loads(tmp_path):
    expected = small_state_dict()
    path = tmp_path / "renamed.ckpt"
    save_file(expected, str(path))
    assert_same_tensors(read_checkpoint(path).state_dict, expected)


# --- malicious pickles ---------------------------------------------------------------------------


class Payload:
    """Unpickling this calls `function(*args)`: what a malicious checkpoint does."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker):
    touch = f"touch {marker}"
    return {
        "os.system": Payload(os.system, (touch,)),
        "subprocess.Popen": Payload(subprocess.Popen, (["touch", str(marker)],)),
        "builtins.eval": Payload(builtins.eval, (f"__import__('os').system({touch!r})",)),
        "builtins.exec": Payload(builtins.exec, (f"import os; os.system({touch!r})",)),
    }


PLACEMENTS = {
    "top_level": lambda payload: payload,
    "deep_in_state_dict": lambda payload: {
        "state_dict": {"w": torch.ones(2), "x": {"y": [1, {"z": (2, payload)}]}}, "global_step": 1
    },
    "extra_key": lambda payload: {"state_dict": {"w": torch.ones(2)}, "global_step": 1, "hparams": payload},
}


def test_payload_corpus_is_live(tmp_path):
    """The control: an unrestricted load of the corpus does run the payload."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.ckpt"
    torch.save(PLACEMENTS["extra_key"](payloads(marker)["os.system"]), path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "builtins.eval", "builtins.exec"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, name, placement, fmt):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.ckpt"
    torch.save(PLACEMENTS[placement](payloads(marker)[name]), path, _use_new_zipfile_serialization=FORMATS[fmt])
    safe_globals_before = set(torch.serialization.get_safe_globals())  # a set: its list order is arbitrary

    message = read_error(path)

    assert "refused" in message and name in message and "malicious" in message
    assert not marker.exists()
    assert set(torch.serialization.get_safe_globals()) == safe_globals_before


def test_numpy_object_scalar_is_refused(tmp_path):
    """numpy's scalar() with an object dtype turns file bytes into a pointer; the stand-in refuses it."""
    path = tmp_path / "pointer.ckpt"
    numpy_core = getattr(np, "_core", None) or np.core  # renamed in numpy 2
    evil = Payload(numpy_core.multiarray.scalar, (np.dtype("O"), b"\x00" * 8))
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": evil}, path)
    message = read_error(path)
    assert "refused" in message and "numpy dtype 'O8'" in message


def test_numpy_array_is_refused_by_name(tmp_path):
    path = tmp_path / "array.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": np.arange(3)}, path)
    message = read_error(path)
    assert "refused" in message and "multiarray._reconstruct" in message


def test_lightning_callback_instance_is_refused(tmp_path):
    """Released files name the ModelCheckpoint class; building an instance is more than they need."""
    path = tmp_path / "instance.ckpt"
    with fake_lightning() as ModelCheckpoint:
        torch.save({"state_dict": {"w": torch.ones(1)}, "callback": ModelCheckpoint()}, path)
    message = read_error(path)
    assert "refused" in message and "ModelCheckpoint object" in message


def test_unknown_class_is_refused_by_name(tmp_path):
    modules = {name: types.ModuleType(name) for name in ("ldm", "ldm.models")}

    class LatentDiffusion:
        pass

    LatentDiffusion.__module__, LatentDiffusion.__qualname__ = "ldm.models", "LatentDiffusion"
    modules["ldm.models"].LatentDiffusion = LatentDiffusion
    path = tmp_path / "custom.ckpt"
    with pytest.MonkeyPatch.context() as patch:
        for name, module in modules.items():
            patch.setitem(sys.modules, name, module)
        torch.save({"state_dict": {"w": torch.ones(1)}, "model": LatentDiffusion}, path)
    message = read_error(path)
    assert "refused" in message and "ldm.models.LatentDiffusion" in message


# --- broken files --------------------------------------------------------------------------------


def write(path, data):
    path.write_bytes(data)
    return path


def test_truncated_zip(tmp_path):
    whole = tmp_path / "whole.ckpt"
    save_lightning_checkpoint(whole, small_state_dict())
    data = whole.read_bytes()
    message = read_error(write(tmp_path / "half.ckpt", data[: len(data) // 2]))
    assert "truncated or corrupt" in message


def test_truncated_legacy_file_is_never_called_malicious(tmp_path):
    whole = tmp_path / "whole.ckpt"
    save_lightning_checkpoint(whole, {"w": torch.ones(3)}, zip_format=False)
    data = whole.read_bytes()
    for size in range(1, len(data), 3):
        message = read_error(write(tmp_path / "cut.ckpt", data[:size]))
        assert "refused" not in message, (size, message)


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("random.ckpt", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a checkpoint"),
        ("notes.ckpt", b"these are not weights\n" * 10, "text file"),
        ("page.ckpt", b"<!DOCTYPE html><html><body>Sign in</body></html>", "web page"),
        ("pointer.ckpt", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 4265380512\n", "git lfs"),
        ("empty.ckpt", b"", "empty"),
        ("empty.safetensors", b"", "empty"),
        ("huge_header.safetensors", (2**62).to_bytes(8, "little") + b"{}", "not a valid .safetensors"),
        ("bad_json.safetensors", (12).to_bytes(8, "little") + b"{not json!!}", "not a valid .safetensors"),
        ("short.safetensors", b"\x05\x00", "not a valid .safetensors"),
    ],
)
def test_broken_file_gives_one_line(tmp_path, name, data, expected):
    message = read_error(write(tmp_path / name, data))
    assert expected.lower() in message.lower()
    assert message.startswith(str(tmp_path / name))


def test_truncated_safetensors(tmp_path):
    whole = tmp_path / "whole.safetensors"
    save_file(small_state_dict(), str(whole))
    data = whole.read_bytes()
    assert "not a valid .safetensors" in read_error(write(tmp_path / "cut.safetensors", data[: len(data) - 100]))


def test_pickle_under_safetensors_name_is_not_unpickled(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save(small_state_dict(), path)
    assert "rename it to .ckpt" in read_error(path)


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in read_error(tmp_path / "missing.ckpt")
    assert "is a directory" in read_error(tmp_path)


@pytest.mark.parametrize(
    "content, expected",
    [
        ([torch.ones(1)], "holds a list"),
        ({"epoch": 6, "global_step": 10}, "no 'state_dict' and entry 'epoch' is a int"),
        ({}, "no 'state_dict' and it holds no tensors"),
        ({"state_dict": {}}, "holds no tensors"),
        ({"state_dict": [torch.ones(1)]}, "'state_dict' is a list"),
        ({"state_dict": {"w": torch.ones(1), "step": 3}}, "entry 'step' is a int"),
    ],
)
def test_not_a_stable_diffusion_checkpoint(tmp_path, content, expected):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    message = read_error(path)
    assert "not a Stable Diffusion checkpoint" in message and expected in message


# --- model hash ----------------------------------------------------------------------------------


def test_model_hash_is_sha256_prefix_and_cached(tmp_path, hash_cache_dir):
    path = write(tmp_path / "model.ckpt", os.urandom(100_000))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_hash(path) == expected[:10]
    cache = json.loads((hash_cache_dir / "hashes.json").read_text())
    assert cache["files"][str(path.resolve())]["sha256"] == expected
    assert [p.name for p in hash_cache_dir.iterdir()] == ["hashes.json"]  # no temp files left

    # Same size and mtime: the cache answers and the file is not read again.
    stat = path.stat()
    write(path, os.urandom(100_000))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_hash(path) == expected[:10]

    # A new mtime invalidates the entry.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2]", b'{"files": {"x": 1}}', b"\xff\xfe"])
def test_corrupt_hash_cache_is_tolerated(tmp_path, hash_cache_dir, garbage):
    path = write(tmp_path / "model.ckpt", b"weights" * 1000)
    hash_cache_dir.mkdir()
    write(hash_cache_dir / "hashes.json", garbage)
    assert model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    json.loads((hash_cache_dir / "hashes.json").read_text())  # rewritten as valid JSON


def test_unwritable_hash_cache_is_tolerated(tmp_path, monkeypatch):
    blocker = write(tmp_path / "not_a_dir", b"")
    monkeypatch.setenv("SD_CLI_CACHE_DIR", str(blocker / "cache"))
    path = write(tmp_path / "model.ckpt", b"weights" * 1000)
    assert model_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_model_hash_of_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        model_hash(tmp_path / "missing.ckpt")
