"""Writing a run's images: watermark, infotext, the PNG (or its place in the numbered layout), the
path or --json record on stdout, and the grid at the end."""

import json
import sys
import time
from pathlib import Path

from sd_cli import __version__
from sd_cli.run.jobs import Job, sampler_id
from sd_cli.sampling.samplers import label as sampler_label


def _emit(line: str) -> None:
    """One line on stdout in one write, so lines of parallel ranks sharing a pipe do not interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class ImageWriter:
    """Turns finished batches into watermarked PNGs with metadata; builds the grid at the end.

    `request` is the run's RunRequest, `loaded` its run.session.Session, `targets` each job's file (None:
    numbered in the outdir); every path written is appended to `written`.
    """

    def __init__(self, request, loaded, targets: dict, written: list[Path], grid: bool):
        from sd_cli.files.output import OutputPlan

        self.request, self.loaded, self.targets, self.written = request, loaded, targets, written
        self.plan = OutputPlan(request.outdir)
        self.grid_images = [] if grid else None
        self.first: tuple | None = None  # the first image's job and shape, for the grid's infotext

    def add(self, batch: list[Job], images: list, seconds: float) -> None:
        """Write one batch's images (uint8 [H, W, 3], in job order) that took `seconds` to render."""
        for job, image in zip(batch, images):
            self.first = self.first or (job, image.shape)
            started = time.perf_counter()
            image = self._watermarked(image)
            if self.grid_images is not None:
                self.grid_images.append(image)
            if not self.request.skip_save:
                infotext = self._infotext(job, image.shape)  # once: the PNG and the --json record share it
                path = self._save(job, image, infotext)
                timings = {"sample_s": round(seconds / len(batch), 4), "write_s": round(time.perf_counter() - started, 4)}
                self._announce(path, job, image.shape, infotext, timings)

    def finish(self) -> None:
        if self.grid_images is None or len(self.grid_images) < 2:
            return
        from sd_cli.files.images import make_grid

        grid = self._watermarked(make_grid(self.grid_images, self.request.n_rows or self.request.batch_size))
        path = self.plan.save_grid(grid, self._infotext(*self.first))  # not counted: the samples are the images
        _emit(json.dumps({"path": str(path), "grid": True}) if self.request.json else str(path))

    def _save(self, job: Job, image, infotext: str) -> Path:
        from sd_cli.files.output import save_png

        target = self.targets[job.index]
        return self.plan.save_sample(image, infotext) if target is None else save_png(image, target, infotext)

    def _announce(self, path: Path, job: Job, shape, infotext: str, timings: dict) -> None:
        self.written.append(path)
        if self.request.json:
            _emit(json.dumps(self._record(path, job, shape, infotext, timings), ensure_ascii=False))
        else:
            _emit(str(path))

    def _watermarked(self, image):
        if not self.request.watermark:
            return image
        from sd_cli.files.watermark import add_watermark

        return add_watermark(image, self.loaded.model.watermark_text)

    def _record(self, path: Path, job: Job, shape, infotext: str, timings: dict) -> dict:
        """The --json object of a written image (the same fields `sd-cli info --json` reads back)."""
        from sd_cli.loading.checkpoint import model_hash
        from sd_cli.files.infotext import parse_infotext

        record = {"path": str(path), "index": job.index, "line": job.line, "prompt": job.prompt,
                  "negative_prompt": job.negative_prompt, "seed": job.seed, "sampler": job.sampler,
                  "steps": job.steps, "scale": job.scale, "eta": job.eta, "width": shape[1], "height": shape[0],
                  "model": self.loaded.name, "model_hash": model_hash(self.loaded.checkpoint_path)}
        if job.init_img is not None:
            record.update(strength=job.strength, init_img=str(job.init_img))
        if job.mask is not None:
            record["mask"] = str(job.mask)
        # every field of the PNG's infotext (Clip skip, Lora hashes, VAE, Hires ...), as `info --json` gives them
        record["parameters"] = parse_infotext(infotext)[2]
        record["timings"] = timings
        return record

    def _infotext(self, job: Job, shape) -> str:
        from sd_cli.loading.checkpoint import model_hash
        from sd_cli.files.infotext import format_infotext

        fields = {"Steps": job.steps, "Sampler": sampler_label(job.sampler), "CFG scale": job.scale,
                  "Seed": job.seed, "Size": f"{shape[1]}x{shape[0]}", "Model hash": model_hash(self.loaded.checkpoint_path),
                  "Model": self.loaded.name}
        if job.init_img is not None:
            fields["Denoising strength"] = job.strength
        if self.request.inpaint is not None:
            blur = self.request.inpaint.blur
            fields["Mask blur"] = int(blur) if blur == int(blur) else blur
        if job.eta:
            fields["Eta"] = job.eta
        fields.update(self._addon_fields(job))
        if sampler_id(fields["Sampler"]) != job.sampler:  # "DPM++ 2M" reads back as dpmpp_2m, not dpm
            fields["Sampler id"] = job.sampler
        from sd_cli.prompting.prompts import infotext_fields

        fields.update(infotext_fields(self.loaded, job.prompt, job.negative_prompt))
        fields["Version"] = f"sd_cli {__version__}"
        return format_infotext(job.prompt, job.negative_prompt, fields)

    def _addon_fields(self, job: Job) -> dict:
        """AUTOMATIC1111's fields for hires fix, --vae and LoRA."""
        from sd_cli.loading.checkpoint import model_hash
        from sd_cli.loading.lora import lora_hashes, uses_for

        fields = {}
        hires = self.request.hires
        if hires is not None and job.init_img is None:
            native = self.loaded.model.config.native_size  # AUTOMATIC1111: Size is the first pass's size
            fields.update({"Size": f"{job.width or native}x{job.height or native}",
                           "Denoising strength": hires.strength, "Hires upscale": hires.scale,
                           "Hires steps": hires.steps or job.steps, "Hires upscaler": hires.upscaler_label})
        if self.request.vae is not None:
            fields.update({"VAE hash": model_hash(self.request.vae), "VAE": self.request.vae.name})
        uses = uses_for(self.request.loras, job.prompt, self.request.lora_dir)
        if uses:
            fields["Lora hashes"] = lora_hashes(uses)
        return fields
