"""Fit the live preview's latent-to-RGB table for the built-in model's VAE (sd_cli/run/preview.py).

    python -m builtin_model.preview_table            # fit on 256 scenes, print the table and its error
    python -m builtin_model.preview_table --json     # the same numbers as JSON

The built-in model's VAE was trained apart from SD's, so SD's published projection does not give
its colours. This fits one of the same form, plus a constant: RGB ≈ latent · A + b per latent
cell, by least squares, with latents the VAE's own encoding of procedural scenes (shapes.py, as
the model was trained on) and as target the VAE's decoding of them averaged over each cell's
8x8 pixels, in [-1, 1]. The error of both tables is measured on scenes not used for the fit.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builtin_model import shapes  # noqa: E402

FIT_SCENES, HELD_OUT_SCENES, SEED = 256, 64, 2024


def cells_and_colours(model, scenes) -> tuple[np.ndarray, np.ndarray]:
    """(latent cells [N, 4], the decoded picture's mean colour over each cell [N, 3]) for the scenes."""
    import torch

    images = torch.from_numpy(np.stack([shapes.render(scene) for scene in scenes])).permute(0, 3, 1, 2)
    images = images.float() / 127.5 - 1
    with torch.no_grad():
        latents = model.encode_image(images)
        decoded = model.decode_latents(latents).float().clamp(-1, 1)
    factor = decoded.shape[-1] // latents.shape[-1]
    colours = torch.nn.functional.avg_pool2d(decoded, factor)
    return (latents.float().permute(0, 2, 3, 1).reshape(-1, 4).numpy(),
            colours.permute(0, 2, 3, 1).reshape(-1, 3).numpy())


def fit(cells: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A [4, 3], b [3]) minimising |cells · A + b - colours|²."""
    design = np.concatenate([cells, np.ones((len(cells), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, colours, rcond=None)
    return solution[:4], solution[4]


def error(cells, colours, table, bias) -> float:
    """Mean absolute error of the projection, in 0..255 levels, after the preview's clamp to [-1, 1]."""
    predicted = np.clip(cells @ np.asarray(table) + np.asarray(bias), -1, 1)
    return float(np.abs(predicted - colours).mean() * 127.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from sd_cli.loading.loader import load_model
    from sd_cli.loading.packaged import builtin_checkpoint
    from sd_cli.run.preview import BUILTIN_LATENT_RGB, LATENT_RGB

    model = load_model(builtin_checkpoint()).model
    rng = np.random.default_rng(SEED)
    scenes = [shapes.sample_scene(rng) for _ in range(FIT_SCENES + HELD_OUT_SCENES)]
    cells, colours = cells_and_colours(model, scenes[:FIT_SCENES])
    held_cells, held_colours = cells_and_colours(model, scenes[FIT_SCENES:])
    table, bias = fit(cells, colours)
    shipped_table, shipped_bias = BUILTIN_LATENT_RGB
    result = {
        "table": np.round(table, 3).tolist(), "bias": np.round(bias, 3).tolist(),
        "held_out_error_levels": {
            "sd_table": round(error(held_cells, held_colours, LATENT_RGB, (0, 0, 0)), 1),
            "fitted": round(error(held_cells, held_colours, table, bias), 1),
            "shipped": round(error(held_cells, held_colours, shipped_table, shipped_bias), 1),
        },
    }
    if args.json:
        print(json.dumps(result))
        return
    print("table (latent channel -> R, G, B):")
    for row in result["table"]:
        print("   ", row)
    print("bias:", result["bias"])
    for name, value in result["held_out_error_levels"].items():
        print(f"mean abs error on {HELD_OUT_SCENES} held-out scenes, {name}: {value} levels of 255")


if __name__ == "__main__":
    main()
