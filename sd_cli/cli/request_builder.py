"""From the parsed flags of a rendering command to a RunRequest: every check of the flags
themselves (conflicts, ranges, the original's unsupported flags) happens here, before any model loads."""

import secrets
from pathlib import Path
from typing import Optional

from sd_cli import fields, log
from sd_cli.cli.control_flags import control_options, take_png_control
from sd_cli.cli.options import UNSUPPORTED, Emphasis, OnError
from sd_cli.errors import UsageError


def build_request(mode: str, args: dict):
    """The RunRequest for subcommand `mode`, from typer's parsed arguments (UsageError if they conflict)."""
    _check_run_flags(args)
    return _request(mode, args)


def _check_run_flags(args: dict) -> None:
    if args["threads"] is not None:
        _positive("--threads", args["threads"])
    for flag, message in UNSUPPORTED.items():
        if args.get(flag):
            raise UsageError(message)
    if args["C"] != 4 or args["f"] != 8:
        raise UsageError("--C must be 4 and --f must be 8: Stable Diffusion's VAE has 4 latent channels and downsamples by 8")


# Random base seeds stay below 2**31 so that base + image number fits MAX_SEED (2**32 - 1) in any run.
RANDOM_SEEDS = 2**31
# Flags that are RunRequest fields of the same name and need no check here.
AS_GIVEN = ("config", "ema", "device", "output", "n_rows", "skip_grid", "skip_save", "skip_existing", "vae_tiling",
            "offload")


def _request(mode: str, args: dict):
    from sd_cli.run import jobs
    from sd_cli.run.render import RunRequest

    png_values, png_model = _from_png(args)
    requests, bad_lines = _requests(mode, args, png_values)
    count = _positive("--repeat", args["repeat"]) if args["from_file"] else _positive("--n-samples", args["n_samples"])
    if args["from_file"] and args["n_samples"] > 1:
        log.info(f"--n-samples {args['n_samples']} with --from-file: up to {args['n_samples']} lines render together, "
                 "one image each, as in the original scripts; --repeat N gives each line N images")
    values = _default_values(args, png_values)
    random_seed = None
    if values.get("seed") is None:
        values["seed"] = random_seed = _random_seed()
    plot, requests = _plot(mode, args, requests, values, count)
    defaults = jobs.Defaults(values=values, count=count,
                             n_iter=_positive("--n-iter", args["n_iter"]), fixed_code=args["fixed_code"],
                             name_template=args["name"], model_defaults=_model_defaults(args, png_values))
    request = RunRequest(
        mode=mode, jobs=jobs.build_jobs(requests, defaults), batch_size=_positive("--n-samples", args["n_samples"]),
        bad_lines=bad_lines, checkpoint=_checkpoint(args, png_model), precision=_precision(args["precision"]),
        outdir=args["outdir"] or Path(f"outputs/{mode}-samples"), watermark=not args["no_watermark"],
        on_error=args["on_error"].value, json=args["json_out"], compile=args["compile_unet"],
        inpaint=_mask_options(args) if mode == "inpaint" else None,
        depth=_depth_options(args) if mode == "depth2img" else None, **_addon_options(args), **_refiner_options(args),
        upscale=_upscale_options(args) if mode == "upscale" else None,
        emphasis=args["emphasis"].value, clip_skip=_clip_skip(args["clip_skip"]), embeddings=_embeddings_dir(args["embeddings"]),
        random_seed=random_seed,
        preview=_preview(args["preview"]), control=control_options(mode, args),
        xy=plot,
        size_flags=_size_flags(args),
        **{name: args[name] for name in AS_GIVEN},
        backend=_backend(args["backend"], args["compile_unet"], args["offload"], args["device"]),
    )
    if request.offload and request.compile:
        raise UsageError("--offload and --compile do not go together (compiled GPU code keeps the UNet's weights "
                         "where they were); drop one of them")
    if request.skip_save and request.skip_grid:
        raise UsageError("--skip-save together with --skip-grid would write nothing; drop one of them")
    if args["from_png"] is not None:
        _warn_other_model(request.checkpoint, png_model, args["from_png"])
    return request


def _requests(mode: str, args: dict, png_values: dict) -> tuple[list, int]:
    """One request per prompt-file line (and the number of bad lines skipped), or the one prompt."""
    from sd_cli.run import jobs

    given = [p for p in (args["prompt_arg"], args["prompt"]) if p is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise UsageError("the prompt was given twice (as an argument and with --prompt); give it once")
    if args["from_file"] is not None:
        if given or args["from_png"]:
            raise UsageError("give either a prompt, --from-png or --from-file, not two of them")
        return _good_lines(jobs.parse_prompt_file(jobs.read_prompt_file(args["from_file"])), args)
    prompt = given[0] if given else png_values.get("prompt")
    if prompt is None:
        raise UsageError("no prompt: pass it as the first argument, with --prompt, or use --from-file")
    if mode != "txt2img" and args["init_img"] is None:
        raise UsageError(f"{mode} needs an input image: pass {'--image' if mode in ('inpaint', 'upscale') else '--init-img'} PATH")
    return [jobs.Request({"prompt": prompt})], 0


def _plot(mode: str, args: dict, requests: list, values: dict, count: int) -> tuple:
    """--xy: the plot and one request per cell in place of the one prompt; (None, requests) without it."""
    if not args["xy"]:
        return None, requests
    from sd_cli.run.plot import parse_plot

    if args["from_file"] is not None:
        raise UsageError("--xy plots one prompt; drop --from-file (or plot each prompt in its own run)")
    if args["output"] is not None:
        raise UsageError("--xy writes every cell and the plot's grid into --outdir; drop -o (--name names the cells)")
    prompt, negative = requests[0].values["prompt"], values.get("negative_prompt", "")
    plot = parse_plot(args["xy"], prompt, negative, mode, per_cell=count)
    return plot, plot.requests(prompt, negative, values["seed"])


def _good_lines(parsed: list, args: dict) -> tuple[list, int]:
    from sd_cli.run.jobs import BadLine

    source = "stdin" if args["from_file"] == "-" else args["from_file"]
    bad = [p for p in parsed if isinstance(p, BadLine)]
    if bad and args["on_error"] == OnError.stop:
        more = f" (and {len(bad) - 1} more bad line(s))" if len(bad) > 1 else ""
        raise UsageError(f"{source} line {bad[0].line}: {bad[0].message}{more}; fix it or use --on-error continue")
    for line in bad:
        log.error(f"{source} line {line.line}: {line.message} (skipped, --on-error continue)")
    return [p for p in parsed if not isinstance(p, BadLine)], len(bad)


def _default_values(args: dict, png_values: dict) -> dict:
    """The command line's values for every job, over those of --from-png; checked like a prompt-file line."""
    from sd_cli.run import jobs

    flags = _job_flags(args)
    values = {k: v for k, v in png_values.items() if k != "prompt"}
    given = {k: v for k, v in flags.items() if v is not None and (k not in values or _explicit(args, k))}
    values.update(given)
    for key in ("init_img", "mask"):
        values[key] = str(values[key]) if values.get(key) is not None else None
    recorded = set(values) - set(given)  # a bad recorded value is the image's, not a flag's

    def label(key: str) -> str:
        if key not in recorded:
            return fields.flag(key)
        field = fields.BY_NAME.get(key)
        return f"{args['from_png']}: recorded {field.label if field and field.label else key}"

    try:
        values = jobs.check_values({k: v for k, v in values.items() if v is not None}, label)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return values


def _job_flags(args: dict) -> dict:
    """Each job value as its flag gives it (None where the command has no such flag); the prompt comes
    from _requests."""
    values = {f.name: args.get(f.name) for f in fields.JOB_FIELDS if f.name != "prompt"}
    values["sampler"] = _sampler(args)  # --sampler with --schedule and the original's --plms, --dpm, --dpm_solver
    return values


def _addon_options(args: dict) -> dict:
    """--vae, --lora, --lora-dir and the hires fix, as RunRequest fields."""
    from sd_cli.loading.lora import parse_flag

    return {"vae": args["vae"], "loras": tuple(parse_flag(value) for value in args["lora"] or ()),
            "lora_dir": args["lora_dir"], "hires": _hires(args)}


def _hires(args: dict):
    """HiresOptions from the --hires-* flags (its fields are their names without "hires_"), or None."""
    hires = {f.name: args.get(f.name, f.default) for f in fields.HIRES_FIELDS}  # txt2img's flags only
    if hires["hires_scale"] is None:
        changed = [fields.flag(name) for name, value in hires.items() if value != fields.default(name)]
        if changed:
            raise UsageError(f"{', '.join(changed)}: part of the hires fix, which --hires-scale turns on; add it")
        return None
    from sd_cli.pipelines.hires import HiresOptions

    return HiresOptions(**{name.removeprefix("hires_"): value for name, value in hires.items()})


# -- the SDXL refiner (pipelines/refine.py)

# Flags meaningless without --refiner, and their defaults.
REFINER_ONLY = {"refiner_config": None, "refiner_strength": fields.default("refiner_strength"),
                "refiner_steps": fields.default("refiner_steps")}


def _refiner_options(args: dict) -> dict:
    """--refiner and its settings as RunRequest fields; the aesthetic scores also condition a refiner
    run on its own (--ckpt refiner)."""
    if "refiner" not in args:  # inpaint, depth2img: no refiner flags
        return {}
    from sd_cli.pipelines.refine import RefinerOptions

    scores = (args["aesthetic_score"], args["negative_aesthetic_score"])
    if args["refiner"] is None:
        changed = [f"--{name.replace('_', '-')}" for name, unset in REFINER_ONLY.items() if args[name] != unset]
        if changed:
            raise UsageError(f"{', '.join(changed)}: part of the refiner hand-off, which --refiner turns on; add it")
        return {"aesthetic_scores": scores}
    if args.get("hires_scale") is not None:
        raise UsageError("--refiner and --hires-scale do not go together (the refiner finishes the base's own "
                         "latent); drop one of them")
    refining = RefinerOptions(strength=args["refiner_strength"], steps=args["refiner_steps"], aesthetic_scores=scores)
    return {"refiner": args["refiner"], "refiner_config": args["refiner_config"], "refining": refining,
            "aesthetic_scores": scores}
def _size_flags(args: dict):
    """SDXL's size and crop conditioning flags (txt2img and img2img have them), checked; None if none is given."""
    given = {f.name: args[f.name] for f in fields.SIZE_CONDITIONING_FIELDS if args.get(f.name) is not None}
    for name, value in given.items():
        problem = fields.BY_NAME[name].check(value)
        if problem:
            raise UsageError(f"{fields.flag(name)} {value} {problem}")
    if not given:
        return None
    from sd_cli.models.sdxl_conditioning import SizeFlags

    return SizeFlags(**given)


def _mask_options(args: dict):
    from sd_cli.files.masks import MaskOptions, parse_outpaint

    if args["mask_blur"] < 0:
        raise UsageError(f"--mask-blur {args['mask_blur']} must be 0 or more")
    outpaint = parse_outpaint(args["outpaint"]) if args["outpaint"] else (0, 0, 0, 0)
    return MaskOptions(invert=args["invert_mask"], blur=args["mask_blur"], paste_back=args["paste_back"],
                       outpaint=outpaint)


def _depth_options(args: dict):
    from sd_cli.pipelines.depth2img import DepthOptions

    if args["depth_map"] is not None and args["depth_model"] is not None:
        raise UsageError("--depth-map replaces MiDaS, so --depth-model would not be used; give one of them")
    return DepthOptions(depth_map=args["depth_map"], depth_model=args["depth_model"], save_depth=args["save_depth"])


# -- upscale: the SD 2 x4 upscaler (#21) --
MAX_NOISE_LEVEL = 350  # x4-upscaling.yaml's max_noise_level, the scripts' UI limit (the model checks its own)
TILE_MULTIPLE = 8  # the x4 UNet halves its latent three times


def _upscale_options(args: dict):
    from sd_cli.pipelines.upscale import UpscaleOptions

    if not 0 <= args["noise_level"] <= MAX_NOISE_LEVEL:
        raise UsageError(f"--noise-level {args['noise_level']} is out of range: the x4 upscaler takes 0 to "
                         f"{MAX_NOISE_LEVEL}")
    tile = args["tile"]
    if tile < 0 or tile % TILE_MULTIPLE or 0 < tile < 2 * TILE_MULTIPLE:
        raise UsageError(f"--tile {tile}: give a multiple of {TILE_MULTIPLE} of at least {2 * TILE_MULTIPLE} "
                         "input pixels, or 0 for no tiling")
    return UpscaleOptions(noise_level=args["noise_level"], fit=args["upscale_fit"].value, tile=tile)
# -- end of upscale --


def _sampler(args: dict) -> str:
    """The canonical sampler name (samplers.py): "euler_a", "dpmpp_2m_karras", ..."""
    from sd_cli.sampling import samplers

    # Precedence of the original flags: v1 --dpm_solver > --plms; v2 --plms > --dpm.
    name = "dpm" if args["dpm_solver"] else "plms" if args["plms"] else "dpm" if args["dpm"] else args["sampler"]
    try:
        schedule = None if args["schedule"] is None else samplers.schedule_id(args["schedule"])
    except samplers.UnknownSampler as err:
        raise UsageError(f"--schedule {err}") from None
    if schedule in samplers.SCHEDULE_SAMPLERS and not _given(args, "sampler", ("sampler", "plms", "dpm", "dpm_solver")):
        name = samplers.SCHEDULE_SAMPLERS[schedule]
    try:
        return samplers.canonical(name, schedule)
    except samplers.UnknownSampler as err:
        raise UsageError(f"--sampler {err}") from None


def _explicit(args: dict, key: str) -> bool:
    """Whether the flag for `key` was given on the command line (it then wins over --from-png)."""
    return _given(args, key, not_by=("DEFAULT", "DEFAULT_MAP"))


# Values that, given nowhere, are the model's own (models/families/: SDXL's demo guides at 5.0 with Euler).
MODEL_DEFAULTS = ("scale", "sampler")
SAMPLER_FLAGS = ("sampler", "schedule", "plms", "dpm", "dpm_solver")


def _model_defaults(args: dict, png_values: dict) -> frozenset[str]:
    """The MODEL_DEFAULTS given neither on the command line, in the defaults file nor by --from-png."""
    return frozenset(key for key in MODEL_DEFAULTS if key not in png_values and not _given(args, key))


def _given(args: dict, key: str, names: tuple[str, ...] | None = None, not_by: tuple[str, ...] = ("DEFAULT",)) -> bool:
    """Whether a flag for `key` (`names`: its flags' parameters) has a value from a source other than
    `not_by`: sd_cli's own default (DEFAULT), or also the defaults file (DEFAULT_MAP)."""
    names = names or {"sampler": SAMPLER_FLAGS}.get(key, (key,))
    sources = [args["ctx"].get_parameter_source(name) for name in names]
    return any(source is not None and source.name not in not_by for source in sources)


def _from_png(args: dict) -> tuple[dict, dict]:
    if args["from_png"] is None:
        return {}, {}
    from sd_cli.files.reading import render_values

    values, model = render_values(args["from_png"])
    log.info(f"parameters from {args['from_png']}: seed {values['seed']}, {values['sampler']} "
             f"{values['steps']} steps, scale {values['scale']}; flags given on the command line win")
    _take_png_run_options(args)
    return values, model


def _take_png_run_options(args: dict) -> None:
    """Clip skip, emphasis and the hires fix recorded in the --from-png image, unless flags say otherwise."""
    from sd_cli.files.reading import run_options

    recorded = run_options(args["from_png"])
    vae_name = recorded.pop("vae_name", None)
    if vae_name and args.get("vae") is None:
        log.warn(f"{args['from_png']} was made with the separate VAE {vae_name}; pass --vae to use it again")
    _take_png_refiner(args, recorded)
    for key, value in recorded.items():
        if key in args and not _explicit(args, key):
            args[key] = Emphasis(value) if key == "emphasis" else value
    take_png_control(args, _explicit)


def _take_png_refiner(args: dict, recorded: dict) -> None:
    """The recorded SDXL refiner, found by name in checkpoints/ as the recorded model is, unless --refiner
    is given; txt2img and img2img only. Without a refiner its recorded strength and steps are dropped."""
    name, recorded_hash = recorded.pop("refiner_name", None), recorded.pop("refiner_hash", None)
    if name is not None and "refiner" in args and args["refiner"] is None:
        _find_png_refiner(args, name, recorded_hash)
    if args.get("refiner") is None:
        for key in ("refiner_strength", "refiner_steps"):
            recorded.pop(key, None)


def _find_png_refiner(args: dict, name: str, recorded_hash: str | None) -> None:
    from sd_cli.errors import CheckpointError
    from sd_cli.loading.checkpoint import model_hash
    from sd_cli.loading.locations import resolve_checkpoint

    for suffix in (".safetensors", ".ckpt"):
        try:
            args["refiner"] = resolve_checkpoint(name + suffix)
        except CheckpointError:
            continue
        if recorded_hash and model_hash(args["refiner"]) != recorded_hash:
            log.warn(f"{args['from_png']} was made with refiner hash {recorded_hash} ({name}), "
                     f"{args['refiner']} has {model_hash(args['refiner'])}: the image will differ")
        return
    log.warn(f"{args['from_png']} was made with the refiner {name}, not found in checkpoints/; "
             "rendering without it (pass --refiner)")


def _checkpoint(args: dict, png_model: dict):
    """--ckpt; for --from-png without it, the recorded model when it is found in checkpoints/."""
    if args["ckpt"] is not None or not png_model.get("model"):
        return args["ckpt"]
    from sd_cli.errors import CheckpointError
    from sd_cli.loading.locations import resolve_checkpoint

    for suffix in (".safetensors", ".ckpt"):
        try:
            return resolve_checkpoint(png_model["model"] + suffix)
        except CheckpointError:
            continue
    log.warn(f"{args['from_png']} was made with model {png_model['model']}, not found in checkpoints/; "
             "using the default model (pass --ckpt)")
    return None


def _warn_other_model(checkpoint, png_model: dict, png: Path) -> None:
    """--from-png with a checkpoint whose hash differs from the recorded one cannot give the same image."""
    from sd_cli.loading.checkpoint import model_hash
    from sd_cli.errors import CheckpointError
    from sd_cli.loading.locations import resolve_checkpoint

    recorded = png_model.get("model_hash")
    try:
        actual = model_hash(resolve_checkpoint(checkpoint)) if recorded else None
    except CheckpointError:
        return  # the run itself reports the missing checkpoint
    if actual and actual != recorded:
        log.warn(f"{png} was made with model hash {recorded} ({png_model.get('model')}), this checkpoint has "
                 f"{actual}: the image will differ")


def _random_seed() -> int:
    """A seed for a run given none; render.run announces it once the inputs have been checked."""
    from sd_cli.run.distributed import current

    if current().distributed:
        raise UsageError("several processes (torchrun) must render the same run: pass --seed")
    return secrets.randbelow(RANDOM_SEEDS)


# stable-diffusion.cpp's --clip-skip default: "the model's own layer", as no --clip-skip is here.
MODEL_CLIP_SKIP = -1


def _clip_skip(value: Optional[int]) -> Optional[int]:
    if value is None or value == MODEL_CLIP_SKIP:
        return None
    if value < 1:
        raise UsageError(f"--clip-skip must be at least 1 (or -1 for the model's own layer), got {value}")
    return value


def _embeddings_dir(folder: Optional[Path]) -> Optional[Path]:
    """--embeddings: checked before the model loads (the files are read when a prompt uses them)."""
    if folder is not None and not folder.is_dir():
        raise UsageError(f"--embeddings {folder}: no such folder")
    return folder


def _preview(path: Optional[Path]) -> Optional[Path]:
    if path is not None and path.suffix.lower() != ".png":
        raise UsageError(f"--preview {path}: the preview is a PNG; give a name ending in .png")
    return path


def _positive(flag: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
    return value


# --backend (runtime/openvino_backend.py)
BACKENDS = ("torch", "openvino")


def _backend(value: str, compile_unet: bool, offload: bool, device: str) -> str:
    """--backend: torch (eager), or openvino for the CPU; it replaces --compile and has nothing to offload."""
    backend = value.lower()
    if backend not in BACKENDS:
        raise UsageError(f"--backend {value}: not a backend; use one of {', '.join(BACKENDS)}")
    if backend == "openvino" and device.lower() not in ("auto", "cpu"):
        raise UsageError(f"--backend openvino runs on the CPU; drop --device {device} or --backend openvino")
    if backend == "openvino" and (compile_unet or offload):
        flag = "--compile" if compile_unet else "--offload"
        raise UsageError(f"--backend openvino and {flag} do not go together (OpenVINO compiles the model itself, "
                         "on the CPU); drop one of them")
    return backend


def _precision(value: str) -> str:
    from sd_cli.runtime.device import normalize_precision

    return normalize_precision(value)


def set_threads(threads: Optional[int]) -> None:
    """--threads N: torch's CPU thread count, set before the model is built (its CPU attention sizes
    its workers from it)."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(_positive("--threads", threads))
