"""A request's Plan rendered on the worker thread: jobs built as the CLI builds them, each batch
rendered by the run's own code (run/render.py render_images), each image watermarked and given the
parameters text the CLI writes (files/writer.py), kept as PNG bytes.

Input images are written to a private folder inside the server's outdir for the render to read
(the pipelines read init images and masks from files) and removed after it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sd_cli import __version__, log
from sd_cli.files.writer import ImageWriter
from sd_cli.serve.images import png_bytes
from sd_cli.serve.models import Checkpoint, SessionCache
from sd_cli.serve.settings import Settings
from sd_cli.serve.translate import Plan
from sd_cli.serve.worker import Interrupted, RenderState, Skipped


@dataclass
class Rendered:
    job: object  # run.jobs.Job
    png: bytes
    infotext: str
    size: tuple[int, int]  # (width, height) of the image


@dataclass
class Result:
    images: list[Rendered] = field(default_factory=list)
    jobs: list = field(default_factory=list)  # every job asked for, rendered or not
    checkpoint: Checkpoint | None = None
    clip_skip: int | None = None
    interrupted: bool = False
    watermark: str | None = None  # the invisible mark's text (`sd-cli txt2img --server` marks its grid with it)


class _MemoryWriter(ImageWriter):
    """The CLI writer's watermark and parameters text; the PNG kept in memory (and saved under
    the server's outdir when the request says save_images)."""

    def __init__(self, request, session, keep: list[Rendered], save: bool):
        super().__init__(request, session, targets={}, written=[], grid=False)
        self.keep, self.save = keep, save

    def add(self, batch, images, seconds: float = 0.0) -> None:
        for job, image in zip(batch, images):
            image, notes = self._watermarked(image)
            infotext = self._infotext(job, image.shape)
            if self.save:
                log.info(f"saved {self.plan.save_sample(image, infotext, notes)}")
            self.keep.append(Rendered(job, png_bytes(image, infotext, notes), infotext, (image.shape[1], image.shape[0])))


def render_plan(plan: Plan, checkpoint: Checkpoint, cache: SessionCache, settings: Settings,
                state: RenderState) -> Result:
    from sd_cli.run.render import batches

    result = Result(checkpoint=checkpoint, clip_skip=plan.clip_skip)
    with tempfile.TemporaryDirectory(prefix=".inputs-", dir=_made(settings.outdir)) as inputs:
        request = _run_request(plan, checkpoint, settings, Path(inputs), state)
        result.jobs = request.jobs
        session = cache.session(checkpoint, plan.clip_skip)
        result.watermark = session.model.watermark_text
        writer = _MemoryWriter(request, session, result.images, save=plan.save_images)
        groups = batches(request.jobs, request.batch_size)
        state.begin(plan.mode, len(groups))
        try:
            result.interrupted = _render_groups(groups, session, request, writer, state)
        finally:
            session.loras.restore()  # the weights as loaded, for the next request
    return result


def _render_groups(groups, session, request, writer, state: RenderState) -> bool:
    """Render batch after batch; True when interrupted (the finished images are kept)."""
    from sd_cli.run.render import render_images

    for number, batch in enumerate(groups):
        state.next_batch(number)
        try:
            images = render_images(session, request, batch)
        except Skipped:
            log.info(f"skipped batch {number + 1} of {len(groups)}")
            continue
        except Interrupted:
            log.info(f"interrupted after {len(writer.keep)} image(s)")
            return True
        writer.add(batch, images)
    return False


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_request(plan: Plan, checkpoint: Checkpoint, settings: Settings, inputs: Path, state: RenderState):
    from sd_cli.run import jobs
    from sd_cli.run.render import RunRequest

    values = dict(plan.values)
    if plan.init_image is not None:
        values["init_img"] = _written(inputs / "init", plan.init_image)
    if plan.mask is not None:
        values["mask"] = _written(inputs / "mask", plan.mask)
    defaults = jobs.Defaults(values=values, count=plan.batch_size, n_iter=plan.n_iter)
    return RunRequest(mode=plan.mode, jobs=jobs.build_jobs([jobs.Request({"prompt": values["prompt"]})], defaults),
                      batch_size=plan.batch_size, checkpoint=checkpoint.path, device=settings.device,
                      precision=settings.precision, outdir=settings.outdir / f"{plan.mode}-images",
                      inpaint=plan.inpaint, hires=plan.hires, clip_skip=plan.clip_skip,
                      embeddings=settings.embeddings_dir, lora_dir=settings.lora_dir, on_step=state.step)


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def info_json(result: Result, plan: Plan) -> str:
    """AUTOMATIC1111's `info`: a JSON string describing the images returned."""
    from sd_cli.files.infotext import parse_infotext
    from sd_cli.sampling.samplers import label

    jobs = [r.job for r in result.images] or result.jobs
    first = jobs[0]
    size = result.images[0].size if result.images else (first.width, first.height)
    if plan.hires is not None and result.images:
        size = (first.width or size[0], first.height or size[1])  # AUTOMATIC1111: the first pass's size
    model_hash = parse_infotext(result.images[0].infotext)[2].get("Model hash") if result.images else None
    info = {
        "prompt": first.prompt, "all_prompts": [j.prompt for j in jobs],
        "negative_prompt": first.negative_prompt, "all_negative_prompts": [j.negative_prompt for j in jobs],
        "seed": first.seed, "all_seeds": [j.seed for j in jobs],
        "subseed": first.seed, "all_subseeds": [j.seed for j in jobs], "subseed_strength": 0,
        "width": size[0], "height": size[1], "sampler_name": label(first.sampler), "sampler_id": first.sampler,
        "cfg_scale": first.scale, "steps": first.steps, "batch_size": plan.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": result.checkpoint.model_name if result.checkpoint else None, "sd_model_hash": model_hash,
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": first.strength if plan.mode != "txt2img" else
        (plan.hires.strength if plan.hires is not None else None),
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [r.infotext for r in result.images], "styles": [], "job_timestamp": "",
        "clip_skip": result.clip_skip or 1, "is_using_inpainting_conditioning": plan.mode == "inpaint",
        "version": f"sd_cli {__version__}", "interrupted": result.interrupted, "watermark": result.watermark,
    }
    return json.dumps(info, ensure_ascii=False)
