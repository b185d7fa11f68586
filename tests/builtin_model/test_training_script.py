"""builtin_model/train.py: the noise it trains on, and a miniature end-to-end run whose file
sd_cli loads like any original checkpoint (the real recipe takes an hour; its result is tested in
test_builtin_model.py)."""

import contextlib
import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread

MINIATURE = ["--seed", "3", "--vae-steps", "2", "--vae-batch", "2", "--steps", "3", "--batch", "4",
             "--latent-scenes", "8", "--noise-offset", "0.25", "--log-every", "1"]


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_tiny_model", ROOT / "builtin_model" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zero_offset_is_plain_gaussian_noise(train):
    """Recipes without an offset draw exactly the noise they drew before the flag existed."""
    got = train.training_noise((3, 4, 8, 8), 0.0, torch.Generator().manual_seed(7))
    assert torch.equal(got, torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(7)))


def test_offset_adds_one_constant_per_image_and_channel(train):
    noise = train.training_noise((512, 4, 32, 32), 0.25, torch.Generator().manual_seed(0))
    means = noise.mean(dim=(2, 3))  # plain noise alone: std 1/32 per (image, channel)
    assert 0.23 < means.std().item() < 0.27  # sqrt(0.25² + 1/32²) = 0.252
    within = (noise - noise.mean(dim=(2, 3), keepdim=True)).std().item()
    assert abs(within - 1.0) < 0.01  # around the constant, still unit Gaussian noise


def test_offset_only_on_the_rows_asked_for(train):
    """--noise-offset-from: images below the threshold timestep get the plain noise, the others
    plain noise plus one constant per (image, channel), drawn after it from the same generator."""
    rows = torch.tensor([True, False, True, False])
    got = train.training_noise((4, 4, 8, 8), 0.25, torch.Generator().manual_seed(3), offset_rows=rows)
    generator = torch.Generator().manual_seed(3)
    plain = torch.randn((4, 4, 8, 8), generator=generator)
    constants = 0.25 * torch.randn((4, 4, 1, 1), generator=generator)
    assert torch.equal(got[~rows], plain[~rows])
    assert torch.equal(got[rows], (plain + constants)[rows])
    assert constants[rows].abs().min() > 0


def miniature_run(train, folder: Path, extra: tuple = ()) -> tuple[Path, Path, str]:
    """(the YAML copy it rewrote, the checkpoint, its log); `extra` flags override MINIATURE's."""
    folder.mkdir(parents=True, exist_ok=True)
    config, out = folder / "tiny.yaml", folder / "tiny.safetensors"
    shutil.copy(ROOT / "sd_cli" / "data" / "configs" / "sd-cli-tiny.yaml", config)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        train.main(MINIATURE + ["--config", str(config), "--out", str(out), *extra])
    return config, out, log.getvalue()


@pytest.fixture(scope="module")
def miniature(train, tmp_path_factory):
    return miniature_run(train, tmp_path_factory.mktemp("first"))


def test_miniature_run_writes_an_original_checkpoint_sd_cli_loads(miniature):
    from safetensors import safe_open

    from sd_cli.loading.loader import load_model
    from sd_cli.sampling.denoising import SamplingParams
    from sd_cli.pipelines.txt2img import txt2img

    config, out, log = miniature
    assert "unet 3/3" in log and "vae 2/2" in log
    with safe_open(str(out), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
        assert f.get_tensor("alphas_cumprod").dtype == torch.float32
    assert {"betas", "alphas_cumprod", "alphas_cumprod_prev"} <= keys
    assert any(k.startswith("first_stage_model.encoder.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    # the measured scale_factor went into the YAML copy and the file's metadata, and nowhere else
    written = [line for line in config.read_text().splitlines() if line.strip().startswith("scale_factor:")]
    assert written == [f"    scale_factor: {metadata['scale_factor']}  # measured: 1 / std of the latents "
                       "(written by the training script)"]
    assert '"noise_offset": 0.25' in metadata["recipe"] and '"steps": 3' in metadata["recipe"]

    model = load_model(out, config, device="cpu").model  # strict: every key matched
    with safe_open(str(out), "pt") as f:  # and the values are the file's
        assert torch.equal(model.model.diffusion_model.out[2].weight, f.get_tensor("model.diffusion_model.out.2.weight").float())
    assert model.config.scale_factor == pytest.approx(float(metadata["scale_factor"]))
    params = SamplingParams(sampler="ddim", steps=2, scale=5.0, eta=0.0)
    image = txt2img(model, ["a red circle"], [""], [0], params, 128, 128)
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()


def test_same_seed_same_weights(train, miniature, tmp_path):
    from safetensors.torch import load_file

    first = load_file(str(miniature[1]))
    second = load_file(str(miniature_run(train, tmp_path)[1]))
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert different == []
    assert not np.allclose(first["model.diffusion_model.out.2.weight"].float().numpy(), 0)  # it did train


def test_vae_from_takes_the_given_checkpoints_vae(train, miniature, tmp_path):
    """--vae-from skips stage (a): the new file's VAE is the given one, tensor for tensor."""
    from safetensors.torch import load_file

    source = load_file(str(miniature[1]))
    config, out, log = miniature_run(train, tmp_path, extra=["--seed", "4", "--vae-from", str(miniature[1])])
    assert "VAE taken from" in log and "vae 1/2" not in log
    made = load_file(str(out))
    vae_keys = [k for k in source if k.startswith("first_stage_model.")]
    assert vae_keys and all(torch.equal(made[k], source[k]) for k in vae_keys)
    assert not torch.equal(made["model.diffusion_model.out.2.weight"], source["model.diffusion_model.out.2.weight"])


def test_shipped_model_was_made_by_the_scripts_defaults(train):
    """docs/builtin-model.md: `python -m builtin_model.train --seed 0` makes the shipped model. Its
    recorded recipe must match the defaults, and its measured scale_factor the one in
    sd_cli/data/configs/sd-cli-tiny.yaml."""
    import json
    import re

    from safetensors import safe_open

    with safe_open(str(ROOT / "sd_cli" / "data" / "sd-cli-tiny.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["recipe"]) == json.loads(train.recipe_json(train.parse_args([])))
    assert json.loads(metadata["recipe"])["seed"] == 0
    yaml_text = (ROOT / "sd_cli" / "data" / "configs" / "sd-cli-tiny.yaml").read_text()
    assert re.search(r"scale_factor: ([0-9.]+)", yaml_text).group(1) == metadata["scale_factor"]
