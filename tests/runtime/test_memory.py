"""The memory check before sampling: every stage counted (the VAE encoder too), advice that names a fix that exists."""

from types import SimpleNamespace

import pytest
import torch

from sd_cli.errors import UsageError
from sd_cli.runtime import memory

GiB = 2**30


def sd_like_model(dtype=torch.float32):
    """What the estimate reads of a model: SD 1.x widths (UNet 320, VAE 128 at full resolution)."""
    config = SimpleNamespace(unet_params={"model_channels": 320}, vae_params={"ddconfig": {"ch": 128, "ch_mult": [1, 2, 4, 4]}})
    return SimpleNamespace(dtype=dtype, config=config, device=torch.device("cpu"))


def test_parts_of_an_img2img_batch():
    parts = memory.needed_parts(sd_like_model(), 2, 1024, 768, guided=True, encodes_input=True)
    pixels = 1024 * 768
    assert parts == {"UNet": 2 * 2 * (pixels // 64) * 320 * 16 * 4, "VAE decoder": 2 * pixels * 128 * 4 * 4,
                     "VAE encoder": pixels * 128 * 3 * 4}
    assert "VAE encoder" not in memory.needed_parts(sd_like_model(), 2, 1024, 768, guided=True)


def test_tiling_bounds_both_vae_stages():
    parts = memory.needed_parts(sd_like_model(), 1, 8000, 8000, guided=True, vae_tiling=True, encodes_input=True)
    assert parts["VAE encoder"] == 512 * 512 * 128 * 3 * 4 and parts["VAE decoder"] == 512 * 512 * 128 * 4 * 4


@pytest.fixture
def free(monkeypatch):
    def set_free(count):
        monkeypatch.setattr(memory, "available_bytes", lambda device: count)
    return set_free


def test_img2img_advice_names_the_input_and_vae_tiling(free):
    free(8 * GiB)
    with pytest.raises(UsageError) as err:
        memory.check_fits(sd_like_model(), 1, 8000, 8000, guided=True, encodes_input=True)
    assert str(err.value) == ("8000x8000 at batch 1 needs at least 122.1 GiB on cpu (the VAE decoder), but only 8.0 GiB "
                              "is free; use a smaller input image (its size sets the output's) or --vae-tiling")
    assert "--height" not in str(err.value)


def test_img2img_with_vae_tiling_names_the_unet_and_the_input(free):
    free(8 * GiB)
    with pytest.raises(UsageError) as err:
        memory.check_fits(sd_like_model(), 2, 8000, 8000, guided=True, vae_tiling=True, encodes_input=True)
    assert str(err.value) == ("8000x8000 at batch 2 needs at least 76.3 GiB on cpu (the UNet), but only 8.0 GiB is free; "
                              "use a smaller input image (its size sets the output's) or a smaller --n-samples")


def test_txt2img_advice_keeps_the_size_flags(free):
    free(8 * GiB)
    with pytest.raises(UsageError, match=r"\(the VAE decoder\), but only 8\.0 GiB is free; use a smaller --height/--width or --vae-tiling$"):
        memory.check_fits(sd_like_model(), 1, 4096, 4096, guided=False)


def test_what_fits_passes(free):
    free(64 * GiB)
    memory.check_fits(sd_like_model(), 1, 1024, 1024, guided=True, encodes_input=True)
    free(None)
    memory.check_fits(sd_like_model(), 8, 8000, 8000, guided=True)


@pytest.mark.usefixtures("one_thread")
def test_img2img_refusal_through_the_cli(run_cli, sd1_ckpt, tmp_path, free):
    import numpy as np
    from PIL import Image

    init = tmp_path / "init.png"
    Image.fromarray(np.zeros((128, 192, 3), np.uint8)).save(init)
    free(1000)
    result = run_cli("img2img", "a cat", "--ckpt", sd1_ckpt, "--init-img", init, "--steps", "1", "--seed", "1",
                     "-o", tmp_path / "out.png")
    assert result.code == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 192x128 at batch 1 needs at least ") and "but only 1000 bytes is free" in error
    assert error.endswith("use a smaller input image (its size sets the output's) or --vae-tiling")
    assert not (tmp_path / "out.png").exists()
