"""`sd-cli txt2img|img2img|inpaint ... --server URL` (or SD_CLI_SERVER): the run's batches rendered by a running
`sd-cli serve`, the files written here as a local run writes them (names, numbering, -o, --json,
the grid), so a loop or a cron job pays no model load.

Each batch becomes one /sdapi/v1 request with the batch's seeds (AUTOMATIC1111 gives image i of a
request seed + i, as sd_cli does), so the server renders the same batches as a local run and the
pixels are the same on the same device and precision. Only the standard library speaks HTTP here:
the client needs none of the server's packages.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from sd_cli import log
from sd_cli.errors import SdCliError, UsageError
from sd_cli.fields import AESTHETIC_SCORES

SERVER_TIMEOUT_S = 3600  # one request is one batch; a long batch on a slow device is not a failure

# RunRequest values that a local run honours and a server cannot be told (flag -> is it set?).
LOCAL_ONLY = {
    "--config": lambda r: r.config is not None, "--ema": lambda r: r.ema,
    "--compile": lambda r: r.compile, "--vae-tiling": lambda r: r.vae_tiling, "--offload": lambda r: r.offload,
    "--vae": lambda r: r.vae is not None, "--lora": lambda r: bool(r.loras),
    "--emphasis none": lambda r: r.emphasis != "original", "--embeddings": lambda r: r.embeddings is not None,
    "--no-watermark": lambda r: not r.watermark, "--device": lambda r: r.device != "auto",
    "--precision": lambda r: r.precision != "auto",
    # the SDXL refiner: the server loads one model
    "--refiner": lambda r: r.refiner is not None,
    "--aesthetic-score": lambda r: r.aesthetic_scores != AESTHETIC_SCORES,
}


SERVED_MODES = ("txt2img", "img2img", "inpaint")
ENV_VAR = "SD_CLI_SERVER"


def chosen_server(mode: str, args: dict) -> str | None:
    """The --server URL for this command, or None to render here.

    SD_CLI_SERVER set for the shell does not stop depth2img, which no server renders: that command
    says so and renders here. --server given on its command line is refused instead (run_remote)."""
    url = args.get("server")
    if not url or mode in SERVED_MODES:
        return url or None
    source = args["ctx"].get_parameter_source("server")
    if source is not None and source.name == "ENVIRONMENT":
        log.info(f"{ENV_VAR} is set, but {mode} renders here: a server renders {', '.join(SERVED_MODES)}")
        return None
    return url


def run_remote(request, server: str):
    """Render `request` (a run.render.RunRequest) on the server at `server`; write its files here."""
    from sd_cli.run import distributed
    from sd_cli.run.render import RunReport, _grid_wanted, _targets, _todo, batches

    _check_sendable(request)
    rank = distributed.current()
    if rank.distributed:
        raise UsageError("--server: one process sends the run; drop torchrun")
    connection = _Connection(server)
    targets = _targets(request)
    jobs, skipped = _todo(request, targets, rank)  # --skip-existing, as a local run
    report = RunReport(skipped=skipped)
    if not jobs:
        return report
    writer = _LocalFiles(request, {job.index: targets[job.index] for job in jobs}, report.written,
                         grid=_grid_wanted(request, rank))
    groups = batches(jobs, request.batch_size)
    if request.random_seed is not None:
        log.info(f"seed {request.random_seed} (random; pass --seed {request.random_seed} to repeat this run)")
    log.info(f"{len(jobs)} image(s) on the server at {connection.shown}")
    for number, batch in enumerate(groups, start=1):
        started = time.perf_counter()
        answer = connection.post(f"/sdapi/v1/{'txt2img' if request.mode == 'txt2img' else 'img2img'}",
                                 _body(request, batch))
        images = answer.get("images") or []
        info = json.loads(answer.get("info") or "{}")
        if len(images) != len(batch):
            raise SdCliError(f"the server returned {len(images)} of the {len(batch)} image(s) of batch {number} "
                             + ("(interrupted there)" if info.get("interrupted") else "") + "; nothing more is written")
        writer.add(batch, [_decoded(b64) for b64 in images], time.perf_counter() - started, info.get("watermark"))
    writer.finish()
    log.info(f"wrote {len(report.written)} image(s)")
    return report


def _check_sendable(request) -> None:
    if request.mode not in SERVED_MODES:
        raise UsageError(f"--server renders {', '.join(SERVED_MODES)}; run {request.mode} locally (drop --server)")
    if request.xy is not None:
        raise UsageError("--xy's labelled grid is drawn by a local run; drop --server (or --xy)")
    if request.mode == "inpaint":
        _check_inpaint_sendable(request)
    given = [flag for flag, is_set in LOCAL_ONLY.items() if is_set(request)]
    if given:
        raise UsageError(f"{', '.join(given)}: the server renders with its own settings and cannot be told this; "
                         "drop it or run locally (drop --server)")
    if request.on_error != "stop":
        raise UsageError("--on-error continue: a --server run stops at the server's first refusal; drop --on-error")
    if request.lora_dir != _default_lora_dir():
        raise UsageError("--lora-dir: <lora:name:w> tags name LoRAs in the server's own folder; drop --lora-dir")


def _check_inpaint_sendable(request) -> None:
    if any(job.mask is None for job in request.jobs):
        raise UsageError("--server inpaint needs --mask: the server takes the mask as an image of its own, "
                         "not the input's transparent pixels")
    if request.inpaint.outpaint != (0, 0, 0, 0) or not request.inpaint.paste_back:
        raise UsageError("--outpaint and --no-paste-back are not part of AUTOMATIC1111's API; run them locally "
                         "(drop --server)")


def _default_lora_dir():
    from sd_cli.fields import LORA_DIR

    return LORA_DIR


def _body(request, batch: list) -> dict:
    """The AUTOMATIC1111 request for one batch (jobs with equal settings, seeds counting up)."""
    job = batch[0]
    if any(j.prompt != job.prompt or j.negative_prompt != job.negative_prompt for j in batch):
        raise UsageError("--server sends one prompt per request, and this batch mixes prompts; "
                         "use --n-samples 1 with --from-file")
    if [j.seed for j in batch] != list(range(job.seed, job.seed + len(batch))):
        raise UsageError("--server: a request's images have seeds seed, seed+1, ...; --fixed-code or per-line "
                         "seeds inside one batch cannot be sent; use --n-samples 1")
    body = {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "seed": job.seed,
            "sampler_name": job.sampler, "steps": job.steps, "cfg_scale": job.scale, "batch_size": len(batch),
            "n_iter": 1, "width": job.width, "height": job.height, "send_images": True, "save_images": False,
            "override_settings": _settings(request), "override_settings_restore_afterwards": True}
    if job.eta:
        body["eta"] = job.eta
    if request.hires is not None:
        from sd_cli.fields import HIRES_UPSCALER_LABELS

        body.update(enable_hr=True, hr_scale=request.hires.scale, hr_second_pass_steps=request.hires.steps,
                    denoising_strength=request.hires.strength, hr_upscaler=HIRES_UPSCALER_LABELS[request.hires.upscaler])
    if request.mode in ("img2img", "inpaint"):
        body.update(init_images=[_file_b64(job.init_img)], denoising_strength=job.strength)
    if request.mode == "inpaint":  # sd_cli's inpaint in AUTOMATIC1111's terms (serve/translate.py)
        body.update(mask=_file_b64(job.mask), mask_blur=request.inpaint.blur,
                    inpainting_mask_invert=int(request.inpaint.invert), inpainting_fill=1, inpaint_full_res=False)
    return {k: v for k, v in body.items() if v is not None}


def _settings(request) -> dict:
    settings = {}
    if request.checkpoint is not None:
        settings["sd_model_checkpoint"] = Path(request.checkpoint).name  # the server finds it by its file name
    if request.clip_skip is not None:
        settings["CLIP_stop_at_last_layers"] = request.clip_skip
    return settings


def _file_b64(path: Path) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}; check the path") from None


def _decoded(b64: str):
    """(uint8 [H, W, 3] pixels, parameters text) of a returned PNG."""
    import numpy as np
    from PIL import Image

    from sd_cli.files.infotext import PNG_KEY

    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB")), image.info.get(PNG_KEY)


class _LocalFiles:
    """Writes the server's images where a local run would (files/output.py), announcing each as
    files/writer.py does: its path, or with --json the record `sd-cli info --json` reads from it."""

    def __init__(self, request, targets: dict, written: list, grid: bool):
        from sd_cli.files.output import OutputPlan, check_writable, SAMPLES_DIR

        self.request, self.targets, self.written = request, targets, written
        for folder in sorted({t.parent if t else request.outdir / SAMPLES_DIR for t in targets.values()}):
            check_writable(folder)
        self.plan = OutputPlan(request.outdir)
        self.grid_images, self.grid_text, self.mark = ([] if grid else None), None, None

    def add(self, batch: list, images: list, seconds: float, mark: str | None) -> None:
        from sd_cli.files.output import save_image

        self.mark = mark
        for job, (pixels, infotext) in zip(batch, images):
            if self.grid_images is not None:
                self.grid_images.append(pixels)
                self.grid_text = self.grid_text or infotext
            if self.request.skip_save:
                continue
            started = time.perf_counter()
            target = self.targets[job.index]
            path = self.plan.save_sample(pixels, infotext) if target is None else save_image(pixels, target, infotext)
            self.written.append(path)
            timings = {"sample_s": round(seconds / len(batch), 4), "write_s": round(time.perf_counter() - started, 4)}
            log.output(json.dumps(self._record(path, job, timings), ensure_ascii=False) if self.request.json else str(path))

    def finish(self) -> None:
        if self.grid_images is None or len(self.grid_images) < 2:
            return
        from sd_cli.files.images import make_grid

        grid = make_grid(self.grid_images, self.request.n_rows or self.request.batch_size)
        if self.mark:
            from sd_cli.files.watermark import add_watermark

            grid = add_watermark(grid, self.mark)
        path = self.plan.save_grid(grid, self.grid_text)
        log.output(json.dumps({"path": str(path), "grid": True}) if self.request.json else str(path))

    def _record(self, path: Path, job, timings: dict) -> dict:
        """The fields of a local run's --json record: the job's values, the size and model the PNG records."""
        from sd_cli.fields import FIELDS
        from sd_cli.files.reading import info_record

        recorded = info_record(path)
        values = {"prompt": job.prompt, "negative_prompt": job.negative_prompt, "steps": job.steps,
                  "sampler": job.sampler, "scale": job.scale, "seed": job.seed, "eta": job.eta,
                  **{k: recorded[k] for k in ("width", "height", "model_hash", "model") if k in recorded}}
        if job.init_img is not None:
            values.update(strength=job.strength, init_img=str(job.init_img))
        if job.mask is not None:
            values["mask"] = str(job.mask)
        record = {"path": str(path), "index": job.index, "line": job.line}
        record.update({f.name: values[f.name] for f in FIELDS if f.json and f.name in values})
        record["parameters"] = recorded["parameters"]
        record["timings"] = timings
        return record


class _Connection:
    """POSTs JSON to the server; http://user:password@host:port gives basic auth."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"--server {url!r} is not an http(s) URL such as http://127.0.0.1:7860")
        netloc = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
        self.base = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/"), "", ""))
        self.shown = self.base
        self.auth = None
        if parsed.username is not None:
            pair = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
            self.auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")

    def post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json", **({"Authorization": self.auth} if self.auth else {})}
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=SERVER_TIMEOUT_S) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            raise _refusal(err, self.shown) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SdCliError(f"cannot reach the server at {self.shown} ({reason}); start it with `sd-cli serve` "
                             "or check --server / SD_CLI_SERVER") from None


def _refusal(err: "urllib.error.HTTPError", shown: str) -> SdCliError:
    try:
        detail = json.loads(err.read()).get("detail") or err.reason
    except (ValueError, AttributeError):
        detail = err.reason
    if err.code == 401:
        return UsageError(f"the server at {shown} wants credentials: use --server http://USER:PASSWORD@host:port")
    message = f"the server at {shown} answered {err.code}: {detail}"
    return UsageError(message) if 400 <= err.code < 500 else SdCliError(message)
