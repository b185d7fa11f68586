"""--preview: the linear latent-to-RGB projection, x̂₀ from the UNet call, and the file a render rewrites."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sd_cli.run import preview


def test_projection_of_known_latents():
    latent = torch.zeros(4, 2, 3)
    latent[0, 0, 0] = 1.0  # channel 0 alone: its row of the table, (0.298, 0.207, 0.208)
    latent[3, 1, 2] = 2.0  # 2 x (-0.184, -0.271, -0.473)
    latent[3, 0, 1] = 10.0  # far out: clamped to -1
    rgb = preview.latent_to_rgb(latent)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [165, 154, 154]  # round((1 + 0.298) * 127.5), ...
    assert rgb[1, 2].tolist() == [81, 58, 7]
    assert rgb[0, 1].tolist() == [0, 0, 0]
    assert rgb[1, 0].tolist() == [128, 128, 128]  # a zero latent is mid-grey


@pytest.mark.parametrize("parameterization, expected", [("eps", (3.0 - 0.75**0.5) / 0.5), ("v", 0.5 * 3.0 - 0.75**0.5)])
def test_predicted_x0_from_the_guided_unet_call(parameterization, expected):
    session = SimpleNamespace(alphas_cumprod=torch.full((1000,), 0.25), parameterization=parameterization)
    watched = preview.Preview(None, scale=3.0)
    x = torch.full((2, 5, 1, 1), 3.0)  # [uncond, cond] halves, plus one extra input channel
    out = torch.cat([torch.zeros(1, 4, 1, 1), torch.full((1, 4, 1, 1), 1 / 3)])  # guided: 0 + 3 * (1/3 - 0) = 1
    watched.last_call = (x, torch.tensor([10.0, 10.0]), out)
    assert watched.predicted_x0(session).shape == (4, 1, 1)
    assert watched.predicted_x0(session).flatten().tolist() == pytest.approx([expected] * 4)


def test_render_writes_the_preview_and_the_same_image(run_cli, sd1_ckpt, tmp_path):
    size = ["--steps", "7", "--seed", "3", "--H", "128", "--W", "64", "--no-watermark"]
    shown = tmp_path / "watch" / "preview.png"
    assert run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *size, "-o", tmp_path / "a.png", "--preview", shown).code == 0
    assert run_cli("txt2img", "a cat", "--ckpt", sd1_ckpt, *size, "-o", tmp_path / "b.png").code == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    image = Image.open(shown)
    assert image.size == (8, 16) and image.mode == "RGB"
    assert sorted(p.name for p in shown.parent.iterdir()) == ["preview.png"]  # no temporary file left


def test_preview_is_written_every_few_steps(monkeypatch):
    writes = []
    watched = preview.Preview(None, scale=1.0)
    monkeypatch.setattr(watched, "write", lambda session: writes.append(len(steps)))
    steps = []
    _, step = watched.watching(object(), lambda done, total: steps.append(done))
    for done in range(1, 13):
        step(done, 12)
    assert writes == [5, 10, 12]


def test_preview_must_be_a_png(run_cli, tmp_path):
    result = run_cli("txt2img", "a cat", "--seed", "1", "--preview", tmp_path / "p.jpg", "-o", tmp_path / "a.png")
    assert result.code == 2
    assert result.stderr == f"error: --preview {tmp_path / 'p.jpg'}: the preview is a PNG; give a name ending in .png\n"


def test_the_builtin_model_has_its_own_table_with_a_constant():
    from sd_cli.loading.packaged import builtin_checkpoint

    assert preview.projection_for(builtin_checkpoint()) is preview.BUILTIN_LATENT_RGB
    assert preview.projection_for("checkpoints/v1-5.safetensors") is preview.SD_PROJECTION
    latent = torch.zeros(4, 1, 2)
    latent[0, 0, 1] = 1.0  # channel 0's row plus the constant: (0.663, 0.6, 0.654)
    rgb = preview.latent_to_rgb(latent, preview.BUILTIN_LATENT_RGB)
    assert rgb[0, 0].tolist() == [141, 87, 98]  # the constant alone: round((1 + (0.102, -0.319, -0.233)) * 127.5)
    assert rgb[0, 1].tolist() == [212, 204, 211]


def test_builtin_previews_are_closer_to_the_image_with_its_table(run_cli, tmp_path, monkeypatch):
    """The last preview (x̂₀ of the last step) against the image it becomes, averaged over each 8x8 cell."""
    args = ["a red circle on a blue background", "--seed", "7", "--steps", "10", "--progress", "none"]

    def preview_error(name: str) -> float:
        shown = tmp_path / f"{name}.png"
        assert run_cli("txt2img", *args, "-o", tmp_path / f"{name}-image.png", "--preview", shown).code == 0
        image = np.asarray(Image.open(tmp_path / f"{name}-image.png").convert("RGB"), dtype=np.float64)
        cells = image.reshape(16, 8, 16, 8, 3).mean(axis=(1, 3))
        return float(np.abs(np.asarray(Image.open(shown), dtype=np.float64) - cells).mean())

    own = preview_error("own")
    monkeypatch.setattr(preview, "projection_for", lambda path: preview.SD_PROJECTION)
    sd = preview_error("sd")
    assert own < 0.75 * sd, (own, sd)
