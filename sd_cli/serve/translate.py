"""An AUTOMATIC1111 request in sd_cli's terms: the jobs and options of a RunRequest.

Values are checked as a prompt-file line's are (run/jobs.py, sd_cli/fields.py), with messages that
name the API's fields. A field that would change the image and that sd_cli cannot honour is a
Refused (422 naming it), never dropped.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path

from sd_cli import fields
from sd_cli.errors import UsageError
from sd_cli.serve.refusal import Refused
from sd_cli.serve.schemas import DEFAULT_HIRES_STRENGTH, GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from sd_cli.serve.settings import Limits

# API field -> sd_cli's job value.
JOB_VALUES = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "cfg_scale": "scale",
              "width": "width", "height": "height", "eta": "eta", "seed": "seed"}
API_NAME = {value: key for key, value in JOB_VALUES.items()} | {"sampler": "sampler_name", "strength": "denoising_strength"}
HONOURED_SETTINGS = {"CLIP_stop_at_last_layers", "sd_model_checkpoint", "sd_vae"}
VAE_DEFAULTS = {None, "", "Automatic", "None"}
HIRES_UPSCALERS = {None: "latent", "Latent": "latent", "Latent (nearest)": "latent-nearest"}
RESIZE_JUST_RESIZE = 0


@dataclass
class Plan:
    """What the worker renders for one request."""

    mode: str  # "txt2img", "img2img" or "inpaint"
    values: dict  # the jobs' values (sd_cli names), seed included
    batch_size: int
    n_iter: int
    checkpoint: str | None  # override_settings.sd_model_checkpoint, or None: the current model
    clip_skip: int | None
    hires: object = None  # pipelines.hires.HiresOptions
    inpaint: object = None  # files.masks.MaskOptions
    init_image: bytes | None = None  # the decoded-safe file bytes of the init image
    mask: bytes | None = None
    save_images: bool = False
    send_images: bool = True

    @property
    def count(self) -> int:
        return self.batch_size * self.n_iter


def plan(request: GenerationRequest, limits: Limits) -> Plan:
    refuse_unhonoured(request)
    values = _job_values(request)
    _check_limits(values, request, limits)
    mode = "txt2img"
    result = Plan(mode=mode, values=values, batch_size=request.batch_size, n_iter=request.n_iter,
                  checkpoint=request.override_settings.get("sd_model_checkpoint"),
                  clip_skip=_clip_skip(request.override_settings), save_images=request.save_images,
                  send_images=request.send_images)
    if isinstance(request, Txt2ImgRequest) and request.enable_hr:
        result.hires = _hires(request, values, limits)
    if isinstance(request, Img2ImgRequest):
        _img2img(request, result, limits)
    return result


def refuse_unhonoured(request: GenerationRequest) -> None:
    """422 naming every field set to something sd_cli would not do."""
    named = [name for name, wanted in _unhonoured(request) if wanted]
    if named:
        raise Refused(f"sd_cli cannot honour {', '.join(named)}; leave them out or at their defaults")


def _unhonoured(request: GenerationRequest):
    yield "restore_faces", bool(request.restore_faces)
    yield "tiling", bool(request.tiling)
    yield "subseed_strength", bool(request.subseed_strength)
    yield "seed_resize_from_w/h", request.seed_resize_from_w > 0 or request.seed_resize_from_h > 0
    yield "styles", bool(request.styles)
    yield "script_name", bool(request.script_name)
    yield "alwayson_scripts", bool(request.alwayson_scripts)
    yield "s_churn/s_tmin/s_tmax/s_noise/s_min_uncond", bool(request.s_churn or request.s_tmin or request.s_min_uncond
                                                             or (request.s_tmax not in (None, 0, math.inf))
                                                             or (request.s_noise not in (None, 1)))
    yield "refiner_checkpoint", bool(request.refiner_checkpoint)
    yield "disable_extra_networks", request.disable_extra_networks
    yield "sd_vae", request.override_settings.get("sd_vae") not in VAE_DEFAULTS
    for key in request.override_settings:
        yield f"override_settings.{key}", key not in HONOURED_SETTINGS
    if isinstance(request, Txt2ImgRequest) and request.enable_hr:
        yield "hr_resize_x/hr_resize_y", bool(request.hr_resize_x or request.hr_resize_y)
        yield "hr_checkpoint_name", request.hr_checkpoint_name not in (None, "", "Use same checkpoint")
        yield "hr_sampler_name", request.hr_sampler_name not in (None, "", "Use same sampler")
        yield "hr_scheduler", request.hr_scheduler not in (None, "", "Use same scheduler")
        yield "hr_prompt", request.hr_prompt not in ("", request.prompt)
        yield "hr_negative_prompt", request.hr_negative_prompt not in ("", request.negative_prompt)
        yield "hr_upscaler", request.hr_upscaler not in HIRES_UPSCALERS
        yield "firstpass_image", bool(request.firstpass_image)
    if isinstance(request, Img2ImgRequest):
        yield "initial_noise_multiplier", request.initial_noise_multiplier not in (None, 1, 1.0)
        if request.mask is not None:
            yield "inpainting_fill (sd_cli inpaints from the image itself: 1, \"original\")", \
                request.inpainting_fill not in (None, 1)
            yield "inpaint_full_res (sd_cli inpaints the whole picture: false)", bool(request.inpaint_full_res)
            yield "mask_blur_x/mask_blur_y (one mask_blur)", _separate_blur(request)


def _separate_blur(request: Img2ImgRequest) -> bool:
    blurs = {b for b in (request.mask_blur_x, request.mask_blur_y) if b is not None}
    if request.mask_blur is not None:
        blurs.add(request.mask_blur)
    return len(blurs) > 1


def _job_values(request: GenerationRequest) -> dict:
    from sd_cli.run import jobs

    values = {sd_name: getattr(request, api_name) for api_name, sd_name in JOB_VALUES.items()}
    values["sampler"] = _sampler(request)
    values["eta"] = _eta(request.eta, values["sampler"])
    if isinstance(request, Img2ImgRequest):
        values["strength"] = 0.75 if request.denoising_strength is None else request.denoising_strength
    try:
        checked = jobs.check_values({k: v for k, v in values.items() if v is not None}, lambda key: API_NAME.get(key, key))
    except ValueError as err:
        raise Refused(str(err)) from None
    for name in ("batch_size", "n_iter"):
        if getattr(request, name) < 1:
            raise Refused(f"{name} {getattr(request, name)} must be at least 1")
    checked.setdefault("seed", secrets.randbelow(2**32))  # seed -1: AUTOMATIC1111's random seed
    return checked


def _sampler(request: GenerationRequest) -> str:
    from sd_cli.sampling import samplers

    name = request.sampler_name or request.sampler_index
    scheduler = None if request.scheduler in (None, "", "Automatic", "automatic") else request.scheduler
    try:
        return samplers.canonical(name, None if scheduler is None else samplers.schedule_id(scheduler))
    except samplers.UnknownSampler as err:
        field = "scheduler" if scheduler is not None and "schedule" in str(err) else "sampler_name"
        raise Refused(f"{field} {err}") from None


def _eta(eta: float | None, sampler: str) -> float | None:
    """AUTOMATIC1111's eta is DDIM's η, or the ancestral noise of the k-diffusion samplers, which
    sd_cli runs at 1 (AUTOMATIC1111's default); the other samplers do not use it."""
    from sd_cli.sampling import samplers

    spec = samplers.choose(sampler).sampler
    if eta is None or (spec.original and spec.id != "ddim") or (not spec.original and not spec.stochastic):
        return None
    if spec.original:
        return eta
    if eta != 1:
        raise Refused(f"eta {eta}: sd_cli runs {spec.label} with η = 1, AUTOMATIC1111's default; leave eta out or send 1")
    return None


def _clip_skip(settings: dict) -> int | None:
    value = settings.get("CLIP_stop_at_last_layers")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Refused(f"override_settings.CLIP_stop_at_last_layers must be an integer of at least 1, got {value!r}")
    return value


def _check_limits(values: dict, request: GenerationRequest, limits: Limits) -> None:
    if values["steps"] > limits.max_steps:
        raise Refused(f"steps {values['steps']} is past this server's limit of {limits.max_steps}")
    if request.batch_size > limits.max_batch:
        raise Refused(f"batch_size {request.batch_size} is past this server's limit of {limits.max_batch}")
    if request.batch_size * request.n_iter > limits.max_images:
        raise Refused(f"batch_size * n_iter = {request.batch_size * request.n_iter} images is past this server's "
                      f"limit of {limits.max_images} per request")
    _check_pixels(values.get("width"), values.get("height"), limits, "width x height")


def _check_pixels(width: int | None, height: int | None, limits: Limits, what: str) -> None:
    if width and height and width * height > limits.max_pixels:
        raise Refused(f"{what} {width}x{height} is past this server's limit of {limits.max_pixels} pixels")


def _hires(request: Txt2ImgRequest, values: dict, limits: Limits):
    from sd_cli.pipelines.hires import HiresOptions

    strength = DEFAULT_HIRES_STRENGTH if request.denoising_strength is None else request.denoising_strength
    try:
        hires = HiresOptions(scale=request.hr_scale, steps=request.hr_second_pass_steps, strength=strength,
                             upscaler=HIRES_UPSCALERS[request.hr_upscaler])
    except UsageError as err:
        raise Refused(str(err).replace("--hires-scale", "hr_scale").replace("--hires-steps", "hr_second_pass_steps")
                      .replace("--hires-strength", "denoising_strength")) from None
    if hires.steps > limits.max_steps:
        raise Refused(f"hr_second_pass_steps {hires.steps} is past this server's limit of {limits.max_steps}")
    width, height = values.get("width"), values.get("height")
    if width and height:
        _check_pixels(int(width * hires.scale), int(height * hires.scale), limits, "the hires fix's size")
    return hires


def _img2img(request: Img2ImgRequest, result: Plan, limits: Limits) -> None:
    from sd_cli.files.masks import MaskOptions
    from sd_cli.serve.images import decode_image, resized_png

    if not request.init_images:
        raise Refused("img2img needs init_images: a list with one base64 image")
    if len(request.init_images) > 1:
        raise Refused(f"init_images has {len(request.init_images)} images; sd_cli takes one per request")
    data, size = decode_image(request.init_images[0], "init_images[0]", limits)
    width, height = result.values.get("width"), result.values.get("height")
    if width and height and (width, height) != size:
        if request.resize_mode != RESIZE_JUST_RESIZE:
            raise Refused(f"resize_mode {request.resize_mode}: sd_cli resizes with 0 (\"Just resize\") only; "
                          f"send a {width}x{height} image or use resize_mode 0")
        data = resized_png(data, (width, height))
    result.init_image = data
    result.mode = "img2img"
    if request.mask is not None:
        result.mask, _ = decode_image(request.mask, "mask", limits)
        result.mode = "inpaint"
        blur = next((b for b in (request.mask_blur, request.mask_blur_x, request.mask_blur_y) if b is not None), None)
        blur = fields.default("mask_blur") if blur is None else float(blur)
        if blur < 0:
            raise Refused(f"mask_blur {blur} must be 0 or more")
        result.inpaint = MaskOptions(invert=bool(request.inpainting_mask_invert), blur=blur, paste_back=True,
                                     outpaint=(0, 0, 0, 0))


def lora_names_problem(prompt: str, lora_dir: Path) -> str | None:
    """A <lora:name:w> tag must name a file inside the LoRA folder: no paths (this is a network request)."""
    from sd_cli.loading.lora import SUFFIXES, prompt_tags

    for name, _ in prompt_tags(prompt):
        path = Path(name)
        if path.is_absolute() or len(path.parts) != 1 or name in ("..", "."):
            return f"<lora:{name}> must be a LoRA name from GET /sdapi/v1/loras, not a path"
        if not any((lora_dir / (name + suffix)).is_file() for suffix in ("", *SUFFIXES)):
            return f"<lora:{name}>: no such LoRA in the server's LoRA folder; GET /sdapi/v1/loras lists them"
    return None
