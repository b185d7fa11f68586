"""Shared fixtures: tiny original-format checkpoints built once per test session, and a CLI runner."""

import sys

import sd_cli  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported; see sd_cli/__init__.py)
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from tiny_models import write_tiny_checkpoint  # noqa: E402

# `python -m pytest -m "not slow"` runs the fast unit tests alone. Slow: whole modules that render
# or compare against diffusers/transformers, and any test that asks for a model-building fixture.
SLOW_MODULES = {
    "test_golden", "test_sdxl", "test_sdxl_refiner", "test_pipeline_parity", "test_inpaint", "test_depth2img", "test_k_samplers",
    "test_k_samplers_extras", "test_unet_vae_parity", "test_text_encoder", "test_sdxl_models", "test_builtin_model", "test_addons",
    "test_automation", "test_cli", "test_training_script", "test_speed_flags", "test_bench", "test_allocator",
    "test_offload", "test_attention", "test_tiling", "test_mapped_pages", "test_readme_examples", "test_serve",
}
SLOW_FIXTURES = {"run_cli", "sd1_ckpt", "sd1_safetensors", "sd2_ckpt", "sd2v_ckpt", "sd2_depth_ckpt", "depth_model",
                 "one_thread"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: renders, builds models or compares with diffusers (deselect: -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] == "test_gpu":
            item.add_marker(pytest.mark.gpu)
            item.add_marker(pytest.mark.slow)
        elif item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_user_defaults(monkeypatch, tmp_path_factory):
    """The tests never read the user's defaults file or $SD_CLI_CKPT (sd_cli/cli/defaults.py)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "no-config"))
    monkeypatch.delenv("SD_CLI_DEFAULTS", raising=False)
    monkeypatch.delenv("SD_CLI_CKPT", raising=False)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def sd1_ckpt(tiny_dir) -> Path:
    """SD 1.x tiny checkpoint (.ckpt, Lightning-style pickle, EMA shadows) with its YAML beside it."""
    return write_tiny_checkpoint("sd1", tiny_dir, ema=True)


@pytest.fixture(scope="session")
def sd1_safetensors(tiny_dir) -> Path:
    return write_tiny_checkpoint("sd1", tiny_dir / "st", fmt="safetensors")


@pytest.fixture(scope="session")
def sd2_ckpt(tiny_dir) -> Path:
    return write_tiny_checkpoint("sd2", tiny_dir)


@pytest.fixture(scope="session")
def sd2v_ckpt(tiny_dir) -> Path:
    return write_tiny_checkpoint("sd2-v", tiny_dir)


@pytest.fixture(scope="session")
def sd2_depth_ckpt(tiny_dir) -> Path:
    """SD 2.x depth tiny checkpoint with a tiny MiDaS DPT-Hybrid under depth_model.model.*."""
    return write_tiny_checkpoint("sd2-depth", tiny_dir / "depth", fmt="safetensors")


@pytest.fixture(scope="module")
def depth_model(sd2_depth_ckpt):
    """(path, loaded model) of the depth checkpoint, loaded once per test module."""
    from sd_cli.loading.loader import load_model

    return sd2_depth_ckpt, load_model(sd2_depth_ckpt).model


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread: two threads' hand-offs cost more than the work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run `sd-cli ARGS` in this process; returns exit code and captured output."""
    from cli_helpers import cli

    def run(*args) -> CliResult:
        return CliResult(*cli(capsys, *args))

    return run
