"""Tiled VAE decoding and encoding: coverage, exactness for small inputs, closeness to a whole pass."""

import pytest
import torch

from sd_cli.runtime.tiling import decode_tiled, encode_tiled, tile_starts


def test_tile_starts_cover_with_overlap():
    assert tile_starts(64) == [0]
    assert tile_starts(100) == [0, 36]
    starts = tile_starts(200)
    assert starts[0] == 0 and starts[-1] + 64 == 200
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))


def upsample_decode(z):
    """A stand-in decoder that is local (each pixel depends on its latent cell only)."""
    return torch.nn.functional.interpolate(z[:, :3], scale_factor=8, mode="nearest")


def test_small_latents_decode_untouched():
    z = torch.randn(1, 4, 8, 8)
    assert torch.equal(decode_tiled(upsample_decode, z), upsample_decode(z))


def test_local_decoder_is_reproduced_exactly_by_tiles():
    z = torch.randn(2, 4, 100, 150)
    tiled = decode_tiled(upsample_decode, z)
    assert tiled.shape == (2, 3, 800, 1200)
    assert torch.allclose(tiled, upsample_decode(z), atol=1e-5)


def test_tiled_decode_of_tiny_vae_is_close(sd1_ckpt):
    from sd_cli.loading.loader import load_model

    model = load_model(sd1_ckpt).model
    torch.manual_seed(0)
    z = torch.randn(1, 4, 24, 40) * 0.5
    with torch.inference_mode():
        whole = model.decode_latents(z)
        tiled = decode_tiled(model.decode_latents, z, tile=16, overlap=4)
    assert tiled.shape == whole.shape
    difference = (tiled - whole).abs()
    # GroupNorm statistics and the mid-block attention see one tile at a time, so tiles differ from
    # a whole decode; with random weights that shows strongly (about 20% here), but stays bounded.
    assert difference.mean() < 0.3 * whole.abs().mean()
    assert difference.max() > 0


# -- encoding ----------------------------------------------------------------------------------

def pool_encode(x):
    """A stand-in encoder that is local (each latent cell depends on its 8x8 pixels only)."""
    return torch.nn.functional.avg_pool2d(torch.cat([x, x[:, :1]], dim=1), 8)


def test_small_images_encode_untouched():
    x = torch.randn(1, 3, 512, 256)
    assert torch.equal(encode_tiled(pool_encode, x), pool_encode(x))


def test_local_encoder_is_reproduced_exactly_by_tiles():
    x = torch.randn(2, 3, 800, 1200)  # 100x150 latents: 2x3 tiles
    calls = []
    tiled = encode_tiled(lambda part: calls.append(part.shape[-2:]) or pool_encode(part), x)
    assert tiled.shape == (2, 4, 100, 150) and len(calls) == 6 and max(max(c) for c in calls) == 512
    assert torch.allclose(tiled, pool_encode(x), atol=1e-6)


def test_encode_tiled_needs_whole_latent_cells():
    with pytest.raises(ValueError, match="multiples of 8, got 100x804"):
        encode_tiled(pool_encode, torch.zeros(1, 3, 804, 100))


def test_tiled_encode_of_tiny_vae_is_close_and_untiled_is_unchanged(sd1_ckpt):
    from sd_cli.loading.loader import load_model

    model = load_model(sd1_ckpt).model
    torch.manual_seed(0)
    image = torch.rand(1, 3, 128, 640) * 2 - 1  # 16x80 latents: two 64x64 tiles
    with torch.inference_mode():
        mean, _ = model.first_stage_model.encode_moments(image)
        whole = model.encode_image(image)
        tiled = model.encode_image(image, tiled=True)
    assert torch.equal(whole, mean * model.config.scale_factor)
    assert tiled.shape == whole.shape and tiled.dtype == whole.dtype
    difference = (tiled - whole).abs()
    assert 0 < difference.mean() < 0.3 * whole.abs().mean()  # per-tile GroupNorm: close, not equal


@pytest.mark.usefixtures("one_thread")
def test_img2img_with_vae_tiling_encodes_in_tiles(run_cli, sd1_ckpt, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from sd_cli.runtime import tiling

    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 576, 3), dtype=np.uint8)).save(init)  # 2 tiles
    encoded = []
    real = tiling.encode_tiled
    monkeypatch.setattr(tiling, "encode_tiled", lambda *a, **k: encoded.append(a[1].shape) or real(*a, **k))
    result = run_cli("img2img", "a cat", "--ckpt", sd1_ckpt, "--init-img", init, "--steps", "1", "--seed", "1",
                     "--vae-tiling", "--no-watermark", "-o", tmp_path / "out.png")
    assert result.code == 0, result.stderr
    assert encoded == [(1, 3, 64, 576)]
    assert Image.open(tmp_path / "out.png").size == (576, 64)
