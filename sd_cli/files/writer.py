"""Writing a run's images: watermark, infotext, the file (PNG, or JPEG/WebP where its name asks) or its
place in the numbered layout, the path or --json record on stdout, and the grid at the end.

The writer decides each recorded value, by field name; sd_cli/fields.py gives the labels, their
order and their text, and which names the --json record has.
"""

import json
import time
from pathlib import Path

from sd_cli import __version__, log
from sd_cli.fields import FIELDS, infotext_fields
from sd_cli.run.jobs import Job, sampler_id
from sd_cli.sampling.samplers import label as sampler_label


class ImageWriter:
    """Turns finished batches into watermarked PNGs with metadata; builds the grid at the end.

    `request` is the run's RunRequest, `loaded` its run.session.Session, `targets` each job's file (None:
    numbered in the outdir); every path written is appended to `written`.
    """

    def __init__(self, request, loaded, targets: dict, written: list[Path], grid: bool):
        from sd_cli.files.output import OutputPlan

        self.request, self.loaded, self.targets, self.written = request, loaded, targets, written
        self.plan = OutputPlan(request.outdir)
        self.plot = request.xy  # --xy: the plot's labelled grid instead of the plain one
        self.grid_images = [] if grid else None
        self.plot_images: dict[tuple, list] = {}  # --xy: each cell's images, by (x, y, z)
        self.first: tuple | None = None  # the first image's job and shape, for the grid's infotext

    def add(self, batch: list[Job], images: list, seconds: float) -> None:
        """Write one batch's images (uint8 [H, W, 3], in job order) that took `seconds` to render."""
        for job, image in zip(batch, images):
            self.first = self.first or (job, image.shape)
            started = time.perf_counter()
            image, notes = self._watermarked(image)
            if self.grid_images is not None:
                self.grid_images.append(image)
                if self.plot is not None:
                    self.plot_images.setdefault(self.plot.cell_of(job.index), []).append(image)
            if not self.request.skip_save:
                infotext = self._infotext(job, image.shape)  # once: the PNG and the --json record share it
                path = self._save(job, image, infotext, notes)
                timings = {"sample_s": round(seconds / len(batch), 4), "write_s": round(time.perf_counter() - started, 4)}
                self._announce(path, job, image.shape, infotext, timings)

    def finish(self) -> None:
        if self.plot is not None and self.grid_images:
            self._save_plot_grid()
            return
        if self.grid_images is None or len(self.grid_images) < 2:
            return
        from sd_cli.files.images import make_grid

        grid, notes = self._watermarked(make_grid(self.grid_images, self.request.n_rows or self.request.batch_size),
                                         grid=True)
        path = self.plan.save_grid(grid, self._infotext(*self.first), notes)  # not counted: the samples are the images
        log.output(json.dumps({"path": str(path), "grid": True}) if self.request.json else str(path))

    def _save_plot_grid(self) -> None:
        """--xy: the labelled grid, its infotext the first image's plus the plot's axes."""
        from sd_cli.files.images import make_grid
        from sd_cli.files.plot_grid import draw_plot_grid

        plot = self.plot
        missing = len(plot.cells()) - len(self.plot_images)
        if missing:
            log.warn(f"the plot's grid shows {missing} cell(s) grey: their images were not rendered in this run")
        cells = {cell: make_grid(images, len(images)) for cell, images in self.plot_images.items()}
        labels = tuple(axis.labels() for axis in plot.axes) + ([],) * (3 - len(plot.axes))
        grid, notes = self._watermarked(draw_plot_grid(cells, plot.shape, labels))
        path = self.plan.save_grid(grid, self._infotext(*self.first, extra=plot.recorded()), notes)
        log.output(json.dumps({"path": str(path), "grid": True}) if self.request.json else str(path))

    def _save(self, job: Job, image, infotext: str, notes: dict) -> Path:
        from sd_cli.files.output import save_image

        target = self.targets[job.index]
        if target is None:
            return self.plan.save_sample(image, infotext, notes)
        return save_image(image, target, infotext, notes)

    def _announce(self, path: Path, job: Job, shape, infotext: str, timings: dict) -> None:
        self.written.append(path)
        if self.request.json:
            log.output(json.dumps(self._record(path, job, shape, infotext, timings), ensure_ascii=False))
        else:
            log.output(str(path))

    def _watermarked(self, image, grid: bool = False) -> tuple:
        """The image as it is written, and its PNG notes: why it carries no readable mark, where it does not.

        A mark embedded in the float image is already there (run/render.py's float_mark_of), but on
        the grid, made of quantised images. What was embedded is read back, so the file itself says
        when the original algorithm could not carry the mark (or the image is too small for it) and
        `verify` can tell."""
        if not self.request.watermark:
            return image, {}
        from sd_cli.files.watermark import NOTE_KEY, add_watermark, embeds_in_float, unreadable_reason

        text = self.loaded.model.watermark_text
        marked = image if embeds_in_float(text) and not grid else add_watermark(image, text)
        reason = unreadable_reason(marked, text)
        return marked, ({NOTE_KEY: reason} if reason else {})

    def _record(self, path: Path, job: Job, shape, infotext: str, timings: dict) -> dict:
        """The --json object of a written image (the same fields `sd-cli info --json` reads back)."""
        from sd_cli.files.infotext import parse_infotext

        values = {**self._job_values(job, shape), "prompt": job.prompt, "negative_prompt": job.negative_prompt,
                  "width": shape[1], "height": shape[0]}
        if job.init_img is not None:
            values["init_img"] = str(job.init_img)
        if job.mask is not None:
            values["mask"] = str(job.mask)
        record = {"path": str(path), "index": job.index, "line": job.line}
        record.update({f.name: values[f.name] for f in FIELDS if f.json and f.name in values})
        # every field of the PNG's infotext (Clip skip, Lora hashes, VAE, Hires ...), as `info --json` gives them
        record["parameters"] = parse_infotext(infotext)[2]
        record["timings"] = timings
        return record

    def _infotext(self, job: Job, shape, extra: dict | None = None) -> str:
        from sd_cli.files.infotext import format_infotext
        from sd_cli.prompting.prompts import infotext_values

        values = {**self._job_values(job, shape), **self._addon_values(job)}
        if self.request.inpaint is not None:
            values["mask_blur"] = self.request.inpaint.blur
        values["eta"] = job.eta or None  # AUTOMATIC1111 writes Eta only when it is not 0
        if sampler_id(sampler_label(job.sampler)) != job.sampler:  # "DPM++ 2M" reads back as dpmpp_2m, not dpm
            values["sampler_id"] = job.sampler
        values.update(infotext_values(self.loaded, job.prompt, job.negative_prompt))
        values.update(self._sgm_values(job))
        values["version"] = f"sd_cli {__version__}"
        return format_infotext(job.prompt, job.negative_prompt, {**infotext_fields(values), **(extra or {})})

    def _job_values(self, job: Job, shape) -> dict:
        """What the --json record and the infotext share: the job's sampling values, size and model."""
        from sd_cli.loading.checkpoint import model_hash

        values = {"steps": job.steps, "sampler": job.sampler, "scale": job.scale, "seed": job.seed,
                  "size": (shape[1], shape[0]), "model_hash": model_hash(self.loaded.checkpoint_path),
                  "model": self.loaded.name, "eta": job.eta}
        if job.init_img is not None:
            values["strength"] = job.strength
        return values

    def _sgm_values(self, job: Job) -> dict:
        """generative-models' models: the sampler and its schedule apart, as AUTOMATIC1111 1.9 writes
        them ("Sampler: Euler, Schedule type: EDM"), and the size and crop flags given."""
        if self.loaded.model.family.engine != "sgm":
            return {}
        from sd_cli.sampling.samplers import SCHEDULES, choose

        choice = choose(job.sampler)
        values = {"sampler": choice.sampler.id, "schedule_type": SCHEDULES[choice.schedule].label}
        if self.request.size_flags is not None:
            values.update(self.request.size_flags.given())
        return values

    def _addon_values(self, job: Job) -> dict:
        """AUTOMATIC1111's fields for hires fix, --vae and LoRA."""
        from sd_cli.loading.checkpoint import model_hash
        from sd_cli.loading.lora import lora_hashes, uses_for

        values = {}
        hires = self.request.hires
        if hires is not None and job.init_img is None:
            native = self.loaded.model.config.native_size  # AUTOMATIC1111: Size is the first pass's size
            values.update(size=(job.width or native, job.height or native), hires_strength=hires.strength,
                          hires_scale=hires.scale, hires_steps=hires.steps or job.steps, hires_upscaler=hires.upscaler)
        if self.request.vae is not None:
            values.update(vae_hash=model_hash(self.request.vae), vae=self.request.vae.name)
        uses = uses_for(self.request.loras, job.prompt, self.request.lora_dir)
        if uses:
            values["lora_hashes"] = lora_hashes(uses)
        values.update(self._refiner_values(job))
        return values

    def _refiner_values(self, job: Job) -> dict:
        """The SDXL refiner's fields: AUTOMATIC1111's Refiner and Refiner switch at (the share of the base's
        steps before the hand-off), sd_cli's strength and steps, and the aesthetic scores wherever a
        refiner conditioned the image (after a base, or run on its own)."""
        from sd_cli.loading.checkpoint import model_hash
        from sd_cli.pipelines.refine import switch_at

        refiner, refining = self.loaded.refiner, self.request.refining
        values = {}
        if refiner is not None and refining is not None:
            values.update(refiner=f"{refiner.name} [{model_hash(refiner.checkpoint_path)}]",
                          refiner_switch_at=round(switch_at(refining.strength, job.steps), 4),
                          refiner_strength=refining.strength, refiner_steps=refining.steps or job.steps)
        elif not self.loaded.family.aesthetic_conditioned:
            return values
        values["aesthetic_score"], values["negative_aesthetic_score"] = self.request.aesthetic_scores
        return values
