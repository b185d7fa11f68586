"""Measure how well the tiny model follows prompts, with the shape detectors of builtin_model.shapes.

    python -m builtin_model.evaluate                  # the shipped model: a table on stdout
    python -m builtin_model.evaluate --json           # the same numbers as JSON
    python -m builtin_model.evaluate --save grid.png  # and a contact sheet, one row per prompt

A fixed set of 48 prompts (every colour as shape and as background, every shape, position,
size and count) is rendered through sd_cli's own txt2img pipeline with seeds no run has used
before (--seed), and each attribute a prompt names is compared with what the detectors see:
background colour, shape colour, shape class, position, count. Attributes a prompt leaves open
are not scored.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builtin_model import shapes  # noqa: E402

ATTRIBUTES = ("background", "shape_colour", "shape_class", "position", "count")


def eval_prompts() -> list[str]:
    """The fixed prompt set: 24 colour x shape prompts on a background, 15 with size and
    position, 6 with two shapes, 3 without a background."""
    c, s, positions = shapes.COLOURS, shapes.SHAPES, list(shapes.POSITIONS)
    a = shapes.with_article
    prompts = []
    for i in range(24):  # every (colour, shape) pair once, as 8 and 3 are coprime
        prompts.append(f"{a(c[i % 8] + ' ' + s[i % 3])} on {a(c[(i + 1 + i // 8) % 8])} background")
    for j in range(15):  # every position three times, with each shape
        pos = positions[j % 5]
        where = f"in the {pos} corner" if pos != "center" and j % 2 else f"in the {pos}"
        colour, background = c[(3 * j + 2) % 8], c[(3 * j + 5 + j // 8) % 8]
        prompts.append(f"a {shapes.SIZES[j % 2]} {colour} {s[j % 3]} {where} on {a(background)} background")
    for k in range(6):
        prompts.append(f"two {c[(5 * k + 1) % 8]} {s[k % 3]}s on {a(c[(5 * k + 4) % 8])} background")
    for m in range(3):
        prompts.append(a(f"{c[(3 * m + 6) % 8]} {s[m]}"))
    return prompts


def render(model, prompts: list[str], seeds: list[int], steps: int, scale: float, size: int,
           batch: int) -> list[np.ndarray]:
    """The one place that draws images: sd_cli's txt2img, uint8 [size, size, 3] per prompt."""
    from sd_cli.files.images import to_uint8
    from sd_cli.sampling.denoising import SamplingParams
    from sd_cli.pipelines.txt2img import txt2img

    params = SamplingParams(sampler="ddim", steps=steps, scale=scale, eta=0.0)
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        decoded = txt2img(model, chunk, [""] * len(chunk), seeds[i : i + batch], params, size, size)
        images += to_uint8(decoded)
    return images


def score(prompts: list[str], images: list[np.ndarray]) -> dict[str, tuple[int, int]]:
    """(correct, scored) per attribute, over every image whose prompt names that attribute."""
    tally = {name: [0, 0] for name in ATTRIBUTES}
    for prompt, image in zip(prompts, images):
        expected, found = shapes.parse_prompt(prompt), shapes.detect(image)
        for name in ATTRIBUTES:
            wanted = getattr(expected, name)
            if wanted is not None:
                tally[name][0] += getattr(found, name) == wanted
                tally[name][1] += 1
    return {name: (right, total) for name, (right, total) in tally.items()}


def print_table(results: dict[str, tuple[int, int]]) -> None:
    print(f"{'attribute':<14}{'correct':>9}{'scored':>8}{'accuracy':>10}")
    for name, (right, total) in results.items():
        print(f"{name:<14}{right:>9}{total:>8}{right / max(total, 1):>10.1%}")


def save_sheet(path: Path, images: list[np.ndarray], per_prompt: int) -> None:
    from PIL import Image

    from sd_cli.files.images import make_grid

    Image.fromarray(make_grid(images, per_row=per_prompt)).save(path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, default=ROOT / "sd_cli" / "data" / "sd-cli-tiny.safetensors")
    p.add_argument("--config", type=Path, default=ROOT / "sd_cli" / "data" / "configs" / "sd-cli-tiny.yaml")
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=1_000_000, help="first seed; image k uses seed + k")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--scale", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--save", type=Path, default=None, help="write a contact sheet PNG here")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from sd_cli.loading.loader import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model = load_model(args.ckpt, args.config, device=args.device).model
    prompts = [p for p in eval_prompts() for _ in range(args.n)]
    seeds = [args.seed + k for k in range(len(prompts))]
    images = render(model, prompts, seeds, args.steps, args.scale, args.size, args.batch)
    results = score(prompts, images)
    if args.save:
        save_sheet(args.save, images, args.n)
    if args.json:
        accuracy = {name: right / max(total, 1) for name, (right, total) in results.items()}
        print(json.dumps({"accuracy": accuracy, "counts": results, "images": len(images),
                          "steps": args.steps, "scale": args.scale, "seed": args.seed,
                          "seconds": round(time.time() - start, 1)}, indent=2))
    else:
        print_table(results)
        print(f"{len(images)} images ({len(eval_prompts())} prompts x {args.n}), DDIM {args.steps} steps, "
              f"scale {args.scale}, seeds {args.seed}..{args.seed + len(images) - 1}, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
