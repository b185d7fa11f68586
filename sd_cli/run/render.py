"""A whole run: load the model once, render the jobs batch by batch, write each image as it is done.

The jobs (one per image, from jobs.py) carry their own seed and file name. So:
- `--skip-existing` drops the jobs whose file is already there, and a rerun renders what is missing;
- under torchrun each rank renders its share (distributed.py) and the union is the plain run;
- with `--on-error continue` a failing batch is reported and the run goes on (exit code 3);
- Ctrl-C stops after the image being written (no half file) and reports what was written.
"""

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from sd_cli import log
from sd_cli.run import distributed, modes
from sd_cli.errors import OutputError, PartialFailure, SdCliError, UsageError
from sd_cli.fields import AESTHETIC_SCORES, LORA_DIR
from sd_cli.files.writer import ImageWriter
from sd_cli.run.jobs import Job


@dataclass
class RunRequest:
    """Everything a txt2img/img2img/inpaint/depth2img/upscale command asks for, in sd_cli's own terms."""

    mode: str  # "txt2img", "img2img", "inpaint", "depth2img" or "upscale"
    jobs: list[Job]  # every image of the run, in order (all ranks)
    batch_size: int = 1  # --n-samples: consecutive jobs with equal settings share a batch
    bad_lines: int = 0  # prompt-file lines skipped under --on-error continue (count as failed)
    checkpoint: Path | None = None
    config: Path | None = None
    ema: bool = False
    device: str = "auto"
    precision: str = "auto"
    outdir: Path = Path("outputs/txt2img-samples")
    output: str | None = None  # -o: exact file or pattern, instead of the outdir layout
    n_rows: int = 0  # grid images per row; 0 = batch_size
    skip_grid: bool = False
    skip_save: bool = False
    watermark: bool = True
    skip_existing: bool = False
    on_error: str = "stop"  # or "continue"
    json: bool = False  # one JSON object per written image on stdout instead of its path
    inpaint: "MaskOptions | None" = None  # inpaint: mask blur, invert, paste-back, outpaint (masks.py)
    depth: "DepthOptions | None" = None  # depth2img: --depth-map, --depth-model, --save-depth (depth.py)
    upscale: "UpscaleOptions | None" = None  # upscale: --noise-level, --upscale-fit, --tile (pipelines/upscale.py)
    compile: bool = False  # --compile: torch.compile the UNet (speed.py)
    backend: str = "torch"  # --backend: torch, or openvino (runtime/openvino_backend.py)
    vae_tiling: bool = False  # --vae-tiling: decode large images in tiles (tiling.py)
    offload: bool = False  # --offload: weights in host memory, one part on the GPU at a time (offload.py)
    emphasis: str = "original"  # --emphasis: AUTOMATIC1111's (text:1.2) weights, or "none" (prompts.py)
    clip_skip: int | None = None  # --clip-skip N; None: the model's own layer
    embeddings: Path | None = None  # --embeddings DIR; None: checkpoints/embeddings if it exists
    vae: Path | None = None  # --vae: a separate VAE file (vae_file.py)
    loras: tuple = ()  # --lora PATH[:weight], as (name or path, weight) pairs (lora.py)
    lora_dir: Path = LORA_DIR  # where <lora:name:w> and --lora names are looked up
    hires: "HiresOptions | None" = None  # txt2img --hires-scale/--hires-steps/--hires-strength (hires.py)
    random_seed: int | None = None  # the seed drawn when none was given, announced when the run starts
    preview: Path | None = None  # --preview: a small PNG of the batch being sampled, rewritten every few steps (preview.py)
    # -- the SDXL refiner (pipelines/refine.py)
    refiner: Path | None = None  # --refiner: the SDXL refiner file the base hands over to
    refiner_config: Path | None = None  # --refiner-config; None: a YAML beside it, else detected
    refining: "RefinerOptions | None" = None  # its strength, steps and scores; set exactly when refiner is
    aesthetic_scores: tuple[float, float] = AESTHETIC_SCORES  # --aesthetic-score, --negative-aesthetic-score
    control: "ControlOptions | None" = None  # --control-net, --control-image, ...: ControlNet units (control/units.py)
    on_step: "Callable[[int, int], None] | None" = None  # told (done, total) after every step; may raise to stop
    xy: "Plot | None" = None  # --xy: the X/Y/Z plot the jobs are the cells of (plot.py); its grid replaces the plain one
    size_flags: "SizeFlags | None" = None  # SDXL's --original-*, --crop-*, --target-* (models/sdxl_conditioning.py)


@dataclass
class RunReport:
    written: list[Path] = field(default_factory=list)
    failed: int = 0
    skipped: int = 0


def run(request: RunRequest) -> RunReport:
    """Render this process's share of the jobs; raise PartialFailure when some failed."""
    rank = distributed.current()
    modes.forget_inputs()
    if not rank.is_main:
        log.set_quiet(True)
        log.set_progress("none")
    if request.skip_save and not _grid_wanted(request, rank):
        raise UsageError("--skip-save writes only the grid, and runs with -o, --name or several processes make none; "
                         "drop --skip-save")
    targets = _targets(request)
    jobs, skipped = _todo(request, targets, rank)
    report = RunReport(skipped=skipped, failed=request.bad_lines if rank.is_main else 0)
    if jobs:
        _check_outputs_writable(request, targets, jobs)
        _render_jobs(request, jobs, targets, rank, report)
    _finish(report, rank, resumable=all(path is not None for path in targets.values()))
    return report


def _targets(request: RunRequest) -> dict[int, Path | None]:
    """Each job's file, where it does not depend on what is already there; None: numbered."""
    from sd_cli.files.output import output_paths

    jobs = request.jobs
    if request.output is not None:
        if any(job.name for job in jobs):
            raise UsageError("-o and file names (--name, or name on a prompt-file line) both say where images go; "
                             "use --outdir with the names, or -o alone")
        paths = output_paths(request.output, len(jobs), [job.seed for job in jobs]) if jobs else []
        return {job.index: path for job, path in zip(jobs, paths)}
    return {job.index: request.outdir / job.name if job.name else None for job in jobs}


def _todo(request: RunRequest, targets: dict, rank) -> tuple[list[Job], int]:
    """This rank's jobs, without those whose file exists under --skip-existing."""
    jobs = distributed.shard(request.jobs, rank)
    if not request.skip_existing:
        return jobs, 0
    if any(targets[job.index] is None for job in request.jobs):
        raise UsageError("--skip-existing needs file names that do not depend on what is already there: "
                         "add --name \"{index:05}-{seed}.png\" (or -o PATTERN, or a name on every line)")
    todo = [job for job in jobs if not targets[job.index].exists()]
    if len(todo) < len(jobs):
        log.info(f"skipping {len(jobs) - len(todo)} image(s) already written (--skip-existing)")
    return todo, len(jobs) - len(todo)


def _check_outputs_writable(request: RunRequest, targets: dict, jobs: list[Job]) -> None:
    """Fail before loading the model when an output folder cannot be written, or a named file is a
    device, a pipe or a link to nothing."""
    from sd_cli.files.output import SAMPLES_DIR, check_writable, replaced_file

    folders = {targets[job.index].parent if targets[job.index] else request.outdir / SAMPLES_DIR for job in jobs}
    for folder in sorted(folders):
        check_writable(folder)
    for job in jobs:
        if targets[job.index] is not None:
            replaced_file(targets[job.index])


def _render_jobs(request: RunRequest, jobs: list[Job], targets: dict, rank, report: RunReport) -> None:
    if request.on_error == "stop":  # a bad input fails before the model loads
        modes.mode_of(request).read_input(request, jobs[0])
    session = _load(request, rank)
    jobs = with_model_defaults(jobs, session.family)
    _check_model_fits(request, session.family)
    if request.random_seed is not None:  # announced once the inputs and the model are known to be good
        log.info(f"seed {request.random_seed} (random; pass --seed {request.random_seed} to repeat this run)")
    writer = ImageWriter(request, session, targets, report.written, grid=_grid_wanted(request, rank))
    settings = _describe(jobs, "cell" if request.xy else "line")
    log.info(f"{len(jobs)} image(s), {settings}, {str(session.dtype).replace('torch.', '')} "
             f"on {session.device}" + (f" (rank {rank.rank} of {rank.world})" if rank.distributed else ""))
    done = 0
    try:
        with log.run_progress(len(jobs)) as progress:
            for batch in batches(jobs, request.batch_size):
                step = progress.batch(done, len(batch), passes=_passes(request, batch[0]))
                done += len(batch)
                images, seconds = _try_batch(session, request, batch, report, step)
                if images is not None:
                    progress.end()
                    writer.add(batch, _finished(request, batch, images, float_mark_of(request, session)), seconds)
                del images
        writer.finish()
    except KeyboardInterrupt:
        log.warn(f"interrupted: {len(report.written)} of {len(jobs)} image(s) written; nothing half-written "
                 f"is left; {_resume_hint(targets)}")
        raise
    except SdCliError:
        if report.written:
            log.warn(f"stopped after writing {len(report.written)} of {len(jobs)} image(s)")
        raise
    finally:
        session.loras.restore()  # the weights as loaded, whatever happened


def with_model_defaults(jobs: list[Job], family) -> list[Job]:
    """The jobs with the model's own value wherever nothing gave one (Job.model_defaults): SDXL's
    guidance 5.0 and Euler, SD's 7.5 and DDIM (models/families/)."""
    own = {"scale": family.default_scale, "sampler": family.default_sampler}
    return [replace(job, **{key: own[key] for key in job.model_defaults}) if job.model_defaults else job
            for job in jobs]


def _resume_hint(targets: dict) -> str:
    """How to finish an interrupted run: --skip-existing needs file names fixed in advance."""
    if all(path is not None for path in targets.values()):
        return "rerun the same command with --skip-existing to finish"
    return ("numbered files (samples/NNNNN.png) cannot be resumed; rerun to render them all again, "
            "or add --name \"{index:05}-{seed}.png\" so that a rerun with --skip-existing finishes")


def _describe(jobs: list[Job], varies_by: str = "line") -> str:
    """The run's settings; one that prompt-file lines (or --xy's cells) set differently is said to vary."""
    settings = {"sampler": lambda j: j.sampler, "steps": lambda j: f"{j.steps} steps",
                "scale": lambda j: f"scale {j.scale}",
                "size": lambda j: f"{j.width}x{j.height}" if j.width and j.height else "native size"}
    shared = [value(jobs[0]) for value in settings.values() if len({value(j) for j in jobs}) == 1]
    varying = [name for name, value in settings.items() if len({value(j) for j in jobs}) > 1]
    return ", ".join(shared + ([f"{', '.join(varying)} per {varies_by}"] if varying else []))


def _passes(request: RunRequest, job: Job) -> int:
    """Sampling passes of the job's batch: the hires fix samples twice."""
    return modes.mode_of(request).passes(request, job)


def _grid_wanted(request: RunRequest, rank) -> bool:
    """The original's grid: only in the numbered layout of a plain (single-process) run; an --xy plot's
    grid also beside named images (the names say which cell is which, the grid compares them)."""
    if request.skip_grid or rank.distributed:
        return False
    named = request.output is not None or any(job.name for job in request.jobs)
    return request.xy is not None or not named


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Consecutive jobs with equal settings, at most `size` to a batch."""
    groups: list[list[Job]] = []
    for job in jobs:
        if groups and len(groups[-1]) < size and groups[-1][0].batch_key() == job.batch_key():
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _load(request: RunRequest, rank):
    """The model and this run's options beside it (run.session.Session)."""
    from sd_cli.runtime.device import resolve_device, resolve_dtype
    from sd_cli.loading.loader import load_prepared, prepare_checkpoint
    from sd_cli.loading.locations import resolve_checkpoint
    from sd_cli.loading.lora import LoraMerger
    from sd_cli.prompting.prompts import text_options
    from sd_cli.run.session import Session
    from sd_cli.runtime.compiling import compile_if_asked

    checkpoint = resolve_checkpoint(request.checkpoint)
    # --backend openvino computes on the CPU, so there "auto" is the CPU (request_builder refuses others).
    asked = "cpu" if request.backend == "openvino" else request.device
    device = resolve_device(distributed.device_name(asked, rank))
    dtype = resolve_dtype(request.precision, device)
    if request.backend == "openvino":
        from sd_cli.runtime.openvino_backend import check_device

        check_device(device, dtype)
    offload = _wants_offload(request, device)
    started = time.perf_counter()
    prepared = prepare_checkpoint(checkpoint, request.config, mode=request.mode)
    refiner = None
    if request.refiner is not None:  # both files are known to be right before either's weights load
        from sd_cli.run.refiner import prepare_refiner

        refiner = prepare_refiner(request, prepared)
    waits = _waits_in_file(request, device, offload)
    loaded = load_prepared(prepared, device=device, dtype=dtype, use_ema=request.ema, offload=offload,
                           defer=_deferred_keys(request, waits))
    if waits:
        from sd_cli.runtime.waiting_parts import wait_in_file

        wait_in_file(loaded.model)
    log.info(f"loaded {checkpoint} in {time.perf_counter() - started:.1f}s")
    text = text_options(loaded.model.text_towers[0], request.emphasis, request.clip_skip, request.embeddings)
    if request.vae is not None:
        from sd_cli.loading.vae_file import load_vae

        load_vae(loaded.model, request.vae)
    weights_frozen = compile_if_asked(loaded.model, request.compile)
    merger = LoraMerger(loaded.model, weights_frozen or request.backend == "openvino")
    if request.backend == "openvino":
        from sd_cli.runtime.openvino_backend import use_openvino

        use_openvino(loaded.model, lambda: _weights_key(request, checkpoint, merger))
    session = Session(loaded, text, merger, vae_tiling=request.vae_tiling, size_flags=request.size_flags)
    if refiner is not None:
        from sd_cli.run.refiner import load_refiner

        session.refiner = load_refiner(request, refiner, session, device, dtype, offload)
    _attach_control(session, request)
    return session


def _attach_control(session, request: RunRequest) -> None:
    """--control-net/--control-image: the ControlNets and control images, loaded before any rendering; a
    v1.0 ControlNet checkpoint given without --control-image is said to render as plain SD 1.5."""
    model = session.model
    if request.control is None:
        if getattr(model, "control_weights", None) is not None:
            log.info(f"{session.name} carries a ControlNet (control_model.*); pass --control-image to use it "
                     "(without, it renders as plain Stable Diffusion)")
        return
    from sd_cli.control.steering import load_control_set

    session.control = load_control_set(request.control, model, session.checkpoint_path)


def _deferred_keys(request: RunRequest, waits: bool):
    """The keys left in the file (loading/deferred.py). --backend openvino: the parts its graphs replace;
    the eager CPU path: the parts a step does not use (runtime/waiting_parts.py). --vae's weights are
    loaded over the VAE after loading, so its decoder (openvino) or encoder (eager) is then read as usual."""
    if request.backend == "openvino":
        from sd_cli.runtime.openvino_backend import deferred_keys

        return deferred_keys(decoder=request.vae is None)
    if waits:
        from sd_cli.runtime.waiting_parts import waiting_keys

        return waiting_keys(vae_encoder=request.vae is None)
    return None


def _waits_in_file(request: RunRequest, device, offload: bool) -> bool:
    """The eager CPU path: the parts a step does not use wait in the file (runtime/waiting_parts.py)."""
    return request.backend != "openvino" and device.type == "cpu" and not offload


def _weights_key(request: RunRequest, checkpoint: Path, merger) -> str:
    """What decides the weights a --backend openvino graph is converted with (its cache key)."""
    from sd_cli.loading.checkpoint import model_hash
    from sd_cli.loading.lora import lora_hashes

    vae = model_hash(request.vae) if request.vae is not None else "-"
    return f"{model_hash(checkpoint)}|ema={request.ema}|vae={vae}|lora={lora_hashes(merger.current)}|{[u.weight for u in merger.current]}"


def _wants_offload(request: RunRequest, device) -> bool:
    if not request.offload:
        return False
    if device.type == "cpu":
        log.info("--offload: the model already runs in host memory on the CPU; nothing to offload")
        return False
    return True


def _try_batch(session, request: RunRequest, batch: list[Job], report: RunReport, progress):
    """(images, seconds) of one batch, or (None, 0) when it failed under --on-error continue;
    progress(done, total) is called after every sampling step."""
    import torch

    started = time.perf_counter()
    try:
        images = _render_batch(session, request, batch, progress)
    except (SdCliError, torch.OutOfMemoryError) as err:
        message = _with_place(err, batch[0])
        if isinstance(err, OutputError) or request.on_error == "stop":
            raise _as_error(err, message) from None
        log.error(f"{message} (skipped, --on-error continue)")
        report.failed += len(batch)
        return None, 0.0
    return images, time.perf_counter() - started


def _with_place(err: Exception, job: Job) -> str:
    message = str(err) if isinstance(err, SdCliError) else f"out of memory ({str(err).splitlines()[0]})"
    return f"{job.where}: {message}" if job.line is not None else message


def _as_error(err: Exception, message: str) -> SdCliError:
    if isinstance(err, SdCliError):
        return type(err)(message)
    return SdCliError(f"{message}; use a smaller size or --n-samples")


def _render_batch(session, request: RunRequest, batch: list[Job], progress):
    """Decoded images [B, 3, H, W] in [-1, 1] for one batch of jobs with equal settings.

    The pipelines get the session as their model: it encodes and decodes with the run's options."""
    from sd_cli.runtime import memory
    from sd_cli.sampling.denoising import SamplingParams

    model, job, mode = session, batch[0], modes.mode_of(request)
    if request.preview is not None:
        from sd_cli.run.preview import Preview

        model, progress = Preview(request.preview, job.scale).watching(session, progress)
    init = mode.read_input(request, job)
    height, width = mode.size(job, session.family, init)
    memory.check_fits(model, len(batch), height, width, guided=job.scale != 1.0, vae_tiling=session.vae_tiling,
                      encodes_input=mode.encodes_input(init), unet_tile=mode.unet_tile(request))
    prompts, negatives, seeds = _apply_loras(session, request, batch), [j.negative_prompt for j in batch], [j.seed for j in batch]
    params = SamplingParams(sampler=job.sampler, steps=job.steps, scale=job.scale, eta=job.eta)
    if session.control is not None:  # the shuffle hint draws from each image's seed; inpaint's hint marks its mask
        session.control.seeds = seeds
        session.control.use_mask(mode.control_mask(init))
    if request.on_step is not None:
        progress = _AlsoTelling(progress, request.on_step)
    return mode.render(model, request, job, init, prompts, negatives, seeds, params, progress)


def _apply_loras(session, request: RunRequest, batch: list[Job]) -> list[str]:
    """Merge the batch's LoRAs (--lora and the prompt's <lora:...> tags); the prompts without the tags.

    This is the one place the tags leave the prompt: the text encoder never sees them, the PNG
    records the prompt as typed. The jobs of a batch share their tags (Job.batch_key).
    """
    from sd_cli.loading.lora import strip_tags, uses_for

    session.loras.apply(uses_for(request.loras, batch[0].prompt, request.lora_dir))
    return [strip_tags(job.prompt) for job in batch]


def _check_model_fits(request: RunRequest, family) -> None:
    """Before any rendering: the model must serve the subcommand; inpaint says how it will work."""
    family.check_serves(request.mode)
    _check_size_flags(request, family)
    modes.mode_of(request).announce(family)


def _check_size_flags(request: RunRequest, family) -> None:
    """SDXL's size and crop flags need a model conditioned on those values."""
    from sd_cli.fields import flag

    unused = request.size_flags.unused_by(family.size_inputs) if request.size_flags else []
    if unused:
        taken = f"it takes {', '.join(family.size_inputs)}" if family.size_inputs else "it has no size conditioning"
        raise UsageError(f"{', '.join(flag(name) for name in unused)}: {family.description} is not conditioned on "
                         f"{'this value' if len(unused) == 1 else 'these values'} ({taken}); drop "
                         f"{'it' if len(unused) == 1 else 'them'}")


def _finished(request: RunRequest, batch: list[Job], decoded, float_mark: str | None) -> list:
    """The batch's images as uint8 [H, W, 3] arrays, carrying `float_mark` where one is embedded before
    quantisation (float_mark_of); inpaint: the padding cropped and the kept pixels pasted back, in
    uint8 so that they stay exact."""
    from sd_cli.files.images import to_uint8

    return modes.mode_of(request).finish(request, batch, to_uint8(decoded, float_mark))


def float_mark_of(request: RunRequest, session) -> str | None:
    """The watermark to embed in the float image (generative-models' models), or None; the writer
    embeds the others in the uint8 image (files/writer.py)."""
    from sd_cli.files.watermark import embeds_in_float

    text = session.model.watermark_text
    return text if request.watermark and embeds_in_float(text) else None


def _finish(report: RunReport, rank, resumable: bool) -> None:
    """Rank 0 sums every rank's counts; a run with failures raises (exit 3, or 1 if nothing was written)."""
    counts = distributed.gather((len(report.written), report.failed, report.skipped), rank)
    written, failed, skipped = (sum(c[i] for c in counts) for i in range(3))
    where = f" by {rank.world} processes" if rank.distributed else ""
    log.info(f"wrote {written} image(s){where}" + (f", {skipped} already there" if skipped else "")
             + (f", {failed} failed" if failed else ""))
    if failed and not (written or skipped):
        raise SdCliError(f"all {failed} image(s) failed; see the errors above")
    if failed:
        hint = "; fix them and rerun with --skip-existing to render only what is missing" if resumable else ""
        raise PartialFailure(f"{failed} of {written + failed + skipped} image(s) failed (see above){hint}")


class _AlsoTelling:
    """The progress line, and the caller's on_step after it (sd_cli/serve's /progress and interrupt)."""

    def __init__(self, progress, on_step):
        self.progress, self.on_step = progress, on_step

    def __call__(self, done: int, total: int) -> None:
        self.progress(done, total)
        self.on_step(done, total)


# -- for callers that keep the model loaded and the images in memory (sd_cli/serve) ----------------

def load_session(request: RunRequest):
    """The model and the request's options (run.session.Session), as a run loads them, for any
    subcommand: render_images checks that the model serves each request's."""
    from dataclasses import replace

    return _load(replace(request, mode=None), distributed.current())


def render_images(session, request: RunRequest, batch: list[Job]) -> list:
    """One batch's finished images (uint8 [H, W, 3], in job order), as a run renders them; no file is
    written, no progress shown (request.on_step hears every step). The batch's LoRAs stay merged: the
    caller restores the weights (session.loras.restore())."""
    _check_model_fits(request, session.family)
    return _finished(request, batch, _render_batch(session, request, batch, lambda done, total: None),
                     float_mark_of(request, session))
