"""A whole run: load the model once, render every batch, write samples and the grid.

Image i of a run (counting across iterations and batches) gets seed = base seed + i, or the base
seed for every image with --fixed_code.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

from sd_cli import __version__, log
from sd_cli.errors import UsageError
from sd_cli.pipeline import SamplingParams

SAMPLER_LABELS = {"ddim": "DDIM", "plms": "PLMS", "dpm": "DPM++ 2M"}


@dataclass
class RunRequest:
    """Everything a txt2img/img2img command asks for, in sd_cli's own terms."""

    mode: str  # "txt2img" or "img2img"
    prompts: list[str]  # one entry per prompt line; each renders n_samples images per iteration
    negative_prompt: str
    sampling: SamplingParams
    seed: int
    n_samples: int = 1
    n_iter: int = 1
    fixed_code: bool = False
    height: int | None = None  # None: the model's native size
    width: int | None = None
    strength: float = 0.75
    init_img: Path | None = None
    checkpoint: Path | None = None
    config: Path | None = None
    ema: bool = False
    device: str = "auto"
    precision: str = "auto"
    outdir: Path = Path("outputs/txt2img-samples")
    output: str | None = None  # -o: exact file or pattern, instead of the outdir layout
    n_rows: int = 0  # grid images per row; 0 = n_samples
    skip_grid: bool = False
    skip_save: bool = False
    watermark: bool = True
    batches: list[list[str]] = field(init=False)

    def __post_init__(self):
        self.batches = [self.prompts[i:i + self.n_samples] for i in range(0, len(self.prompts), self.n_samples)]

    @property
    def image_count(self) -> int:
        return self.n_iter * len(self.prompts)


def run(request: RunRequest) -> list[Path]:
    """Render everything the request asks for; return the written paths."""
    import torch

    from sd_cli.device import resolve_device, resolve_dtype
    from sd_cli.models_on_disk import resolve_checkpoint

    device = resolve_device(request.device)
    dtype = resolve_dtype(request.precision, device)
    loaded = _load(resolve_checkpoint(request.checkpoint), request, device, dtype)
    height, width = _size(request, loaded.model)
    init = _init_image(request)
    writer = _Writer(request, loaded, height, width, image_seeds(request))
    log.info(f"base seed {request.seed}; {request.image_count} image(s) at {width}x{height}, "
             f"{request.sampling.sampler} {request.sampling.steps} steps, scale {request.sampling.scale}, "
             f"{str(dtype).replace('torch.', '')} on {device}")
    seeds_by_image = image_seeds(request)
    index = 0
    for _ in range(request.n_iter):
        for prompts in request.batches:
            seeds = seeds_by_image[index:index + len(prompts)]
            images = _render_batch(loaded.model, request, prompts, seeds, init, height, width, index)
            writer.add(images, prompts, seeds)
            index += len(prompts)
            del images
            torch.cuda.empty_cache() if device.type == "cuda" else None
    return writer.finish()


def image_seeds(request: RunRequest) -> list[int]:
    """Seed of every image of the run, in the order they are rendered."""
    count = request.image_count
    return [request.seed] * count if request.fixed_code else [request.seed + i for i in range(count)]


def _load(checkpoint: Path, request: RunRequest, device, dtype):
    from sd_cli.loading import load_model

    started = time.perf_counter()
    loaded = load_model(checkpoint, request.config, device=device, dtype=dtype, use_ema=request.ema)
    log.info(f"loaded {checkpoint} in {time.perf_counter() - started:.1f}s")
    return loaded


def _size(request: RunRequest, model) -> tuple[int, int]:
    native = model.config.native_size
    height, width = request.height or native, request.width or native
    for name, value in (("height", height), ("width", width)):
        if value % 64:
            raise UsageError(f"--{name} {value} is not a multiple of 64, which the UNet needs; try {max(64, value // 64 * 64)}")
    return height, width


def _init_image(request: RunRequest):
    if request.mode != "img2img":
        return None
    from sd_cli.images import load_init_image

    if request.init_img is None:
        raise UsageError("img2img needs an input image: pass --init-img PATH")
    return load_init_image(request.init_img)


def _render_batch(model, request: RunRequest, prompts, seeds, init, height, width, first_index):
    from sd_cli import pipeline

    negatives = [request.negative_prompt] * len(prompts)
    progress = log.Progress(f"images {first_index + 1}-{first_index + len(prompts)} of {request.image_count}")
    if init is None:
        decoded = pipeline.txt2img(model, prompts, negatives, seeds, request.sampling, height, width, progress)
    else:
        decoded = pipeline.img2img(model, init, prompts, negatives, seeds, request.sampling, request.strength, progress)
    progress.close()
    return decoded


class _Writer:
    """Turns decoded batches into watermarked PNGs with metadata; builds the grid at the end."""

    def __init__(self, request: RunRequest, loaded, height: int, width: int, seeds: list[int]):
        from sd_cli.output import OutputPlan, output_paths

        self.request = request
        self.loaded = loaded
        self.size = f"{width}x{height}"
        self.plan = OutputPlan(request.outdir) if request.output is None else None
        self.exact_paths = None if request.output is None else output_paths(request.output, len(seeds), seeds)
        self.grid_images = []
        self.written: list[Path] = []
        self.index = 0

    def add(self, decoded, prompts: list[str], seeds: list[int]) -> None:
        from sd_cli.images import to_uint8

        for image, prompt, seed in zip(to_uint8(decoded), prompts, seeds):
            image = self._watermarked(image)
            if not self.request.skip_grid:
                self.grid_images.append(image)
            if not self.request.skip_save:
                self._save_sample(image, self._infotext(prompt, seed))
            self.index += 1

    def finish(self) -> list[Path]:
        if self.grid_images and len(self.grid_images) > 1 and self.request.output is None:
            from sd_cli.images import make_grid

            grid = self._watermarked(make_grid(self.grid_images, self.request.n_rows or self.request.n_samples))
            self._announce(self.plan.save_grid(grid, self._infotext(self.request.prompts[0], self.request.seed)))
        return self.written

    def _save_sample(self, image, infotext: str) -> None:
        if self.plan is not None:
            self._announce(self.plan.save_sample(image, infotext))
        else:
            from sd_cli.output import save_png

            self._announce(save_png(image, self.exact_paths[self.index], infotext))

    def _announce(self, path: Path) -> None:
        self.written.append(path)
        print(path, flush=True)

    def _watermarked(self, image):
        if not self.request.watermark:
            return image
        from sd_cli.watermark import add_watermark

        return add_watermark(image, self.loaded.model.watermark_text)

    def _infotext(self, prompt: str, seed: int) -> str:
        from sd_cli.checkpoint import model_hash
        from sd_cli.metadata import format_infotext

        sampling = self.request.sampling
        fields = {"Steps": sampling.steps, "Sampler": SAMPLER_LABELS[sampling.sampler], "CFG scale": sampling.scale,
                  "Seed": seed, "Size": self.size, "Model hash": model_hash(self.loaded.checkpoint_path),
                  "Model": self.loaded.name}
        if self.request.mode == "img2img":
            fields["Denoising strength"] = self.request.strength
        if sampling.eta:
            fields["Eta"] = sampling.eta
        fields["Version"] = f"sd_cli {__version__}"
        return format_infotext(prompt, self.request.negative_prompt, fields)
