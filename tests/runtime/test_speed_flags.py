"""--compile and --vae-tiling through the CLI: same image (to rounding), different code path."""

import numpy as np
from PIL import Image

FAST = ["--steps", "2", "--seed", "4", "--no-watermark"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_compile_matches_eager(run_cli, sd1_ckpt, tmp_path):
    eager = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "-o", tmp_path / "eager.png")
    compiled = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, "--compile", "-o", tmp_path / "compiled.png")
    assert eager.code == 0 and compiled.code == 0, compiled.stderr
    assert "compiling the UNet with torch.compile" in compiled.stderr
    difference = np.abs(pixels(tmp_path / "eager.png") - pixels(tmp_path / "compiled.png"))
    assert difference.max() <= 2  # fused kernels round differently; the image is the same


def test_vae_tiling_decodes_large_images_in_tiles(run_cli, sd1_ckpt, tmp_path):
    size = ["--H", "576", "--W", "576"]  # 72x72 latents: more than one 64x64 tile
    whole = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, *size, "-o", tmp_path / "whole.png")
    tiled = run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *FAST, *size, "--vae-tiling", "-o", tmp_path / "tiled.png")
    assert whole.code == 0 and tiled.code == 0, tiled.stderr
    a, b = pixels(tmp_path / "whole.png"), pixels(tmp_path / "tiled.png")
    assert a.shape == b.shape == (576, 576, 3)
    assert np.abs(a - b).max() > 0  # really decoded in tiles
    assert np.abs(a - b).mean() < 0.3 * np.abs(a - 127.5).mean()
