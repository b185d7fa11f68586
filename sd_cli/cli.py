"""The `sd-cli` command: typer definitions only, no tensor code, no torch import at module level.

Every flag of the original v1/v2 txt2img.py and img2img.py is accepted under its original
spelling as an alias of the readable one (`--ddim_steps` = `--steps`, `--H` = `--height`, ...).
"""

import inspect
import secrets
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sd_cli import log
from sd_cli.errors import SdCliError, UsageError
from sd_cli.sampling.samplers import SAMPLERS, SCHEDULES

app = typer.Typer(
    name="sd-cli",
    help="Stable Diffusion from the command line: original checkpoints and configs, safe loading, faithful numerics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class OnError(str, Enum):
    stop = "stop"
    continue_ = "continue"


class Emphasis(str, Enum):
    original = "original"
    none = "none"


# Shared option types: one definition per flag, used by every subcommand.
PromptArg = Annotated[Optional[str], typer.Argument(help="The prompt (same as --prompt).", show_default=False)]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to draw.")]
NegativeOpt = Annotated[str, typer.Option("--negative-prompt", "-n", help="What to steer away from (the unconditional branch).")]
StepsOpt = Annotated[int, typer.Option("--steps", "--ddim_steps", help="Sampling steps (DDIM/PLMS run the original's count for it).")]
ScaleOpt = Annotated[float, typer.Option("--scale", help="Classifier-free guidance scale; 1.0 skips the unconditional pass.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Base seed; image i uses seed+i. Random (and printed) if not given.")]
SamplerOpt = Annotated[str, typer.Option("--sampler", help=f"Sampler: {', '.join(SAMPLERS)}, or an AUTOMATIC1111 name (\"Euler a\", \"DPM++ 2M Karras\"); any case.")]
ScheduleOpt = Annotated[Optional[str], typer.Option("--schedule", help=f"σ schedule of the k-diffusion samplers: {', '.join(SCHEDULES)} (default: the sampler's own; the original ddim/plms/dpm have none).", show_default=False)]
PlmsOpt = Annotated[bool, typer.Option("--plms", help="Same as --sampler plms (original flag).")]
DpmOpt = Annotated[bool, typer.Option("--dpm", help="Same as --sampler dpm (v2 flag; --plms wins over it, as in v2).")]
DpmSolverOpt = Annotated[bool, typer.Option("--dpm_solver", help="Same as --sampler dpm (v1 flag; wins over --plms, as in v1).")]
EtaOpt = Annotated[float, typer.Option("--eta", "--ddim_eta", help="DDIM eta (0 = deterministic).")]
HeightOpt = Annotated[Optional[int], typer.Option("--height", "--H", help="Image height in pixels, a multiple of 64 (default: the model's native size).")]
WidthOpt = Annotated[Optional[int], typer.Option("--width", "--W", help="Image width in pixels, a multiple of 64 (default: the model's native size).")]
ChannelsOpt = Annotated[int, typer.Option("--C", help="Latent channels (original flag; must be 4).")]
FactorOpt = Annotated[int, typer.Option("--f", help="Downsampling factor (original flag; must be 8).")]
SamplesOpt = Annotated[int, typer.Option("--n-samples", "--n_samples", help="Images per prompt per iteration (the batch size).")]
IterOpt = Annotated[int, typer.Option("--n-iter", "--n_iter", help="How many times to repeat the batches.")]
RowsOpt = Annotated[int, typer.Option("--n-rows", "--n_rows", help="Grid images per row (0 = n-samples).")]
SkipGridOpt = Annotated[bool, typer.Option("--skip-grid", "--skip_grid", help="Do not write the grid.")]
SkipSaveOpt = Annotated[bool, typer.Option("--skip-save", "--skip_save", help="Do not write the individual samples.")]
FixedCodeOpt = Annotated[bool, typer.Option("--fixed-code", "--fixed_code", help="Every image uses the base seed's noise.")]
FromFileOpt = Annotated[Optional[str], typer.Option("--from-file", help="Prompt file ('-' for stdin): plain lines, JSON Lines or AUTOMATIC1111 '--prompt ... --seed 5' lines.")]
OnErrorOpt = Annotated[OnError, typer.Option("--on-error", help="When an image or prompt-file line fails: stop, or continue and exit 3.", case_sensitive=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="stdout: one JSON object per written image (path, seed, prompt, parameters, timings).")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="File name template inside --outdir, e.g. '{index:05}-{seed}-{prompt_slug}.png'.")]
SkipExistingOpt = Annotated[bool, typer.Option("--skip-existing", help="Do not render images whose file (from --name or -o) already exists.")]
FromPngOpt = Annotated[Optional[Path], typer.Option("--from-png", help="Re-render with the parameters recorded in this PNG (flags given win).")]
RepeatOpt = Annotated[int, typer.Option("--repeat", help="Repeat each prompt of --from-file this many times.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16, bf16; the original's full/autocast too.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
CkptOpt = Annotated[Optional[Path], typer.Option("--ckpt", help="Checkpoint (.ckpt or .safetensors); default: sd_cli's own small model.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Original model YAML; default: beside the checkpoint, or detected.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights (model_ema.*).")]
OutdirOpt = Annotated[Optional[Path], typer.Option("--outdir", help="Output folder: samples/NNNNN.png and grid-NNNN.png inside.")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Write exactly this file (a pattern like out-{index}.png for several).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the UNet (CUDA graphs on CUDA): a slow first step, then much faster steps; for long runs.")]
VaeTilingOpt = Annotated[bool, typer.Option("--vae-tiling", help="Decode large images in overlapping tiles to bound memory (slightly different pixels).")]
OffloadOpt = Annotated[bool, typer.Option("--offload", help="Low GPU memory: keep the model in host memory and put only the part at work (text encoder, UNet, VAE) on the GPU; costs one copy of each part per batch.")]
EmphasisOpt = Annotated[Emphasis, typer.Option("--emphasis", help="original: AUTOMATIC1111's (word), ((word)), [word], (word:1.3) weights (\\( for a literal bracket); none: brackets are plain text.", case_sensitive=False)]
ClipSkipOpt = Annotated[Optional[int], typer.Option("--clip-skip", help="Use the text encoder's output N blocks from the end (AUTOMATIC1111's Clip skip; 2 = penultimate). Default: the model's own (SD 1.x 1, SD 2.x 2).", show_default=False)]
EmbeddingsOpt = Annotated[Optional[Path], typer.Option("--embeddings", help="Textual inversion folder (.pt/.safetensors, used by file name in the prompt); default: checkpoints/embeddings if it exists.", show_default=False)]
VaeOpt = Annotated[Optional[Path], typer.Option("--vae", help="A separate VAE (.ckpt/.safetensors; original or diffusers key names), e.g. the ft-MSE VAE.")]
LoraOpt = Annotated[Optional[list[str]], typer.Option("--lora", help="LoRA file or name in --lora-dir, PATH[:weight] (weight 1 by default); repeatable. Prompts can also say <lora:name:0.8>.")]
LoraDirOpt = Annotated[Path, typer.Option("--lora-dir", help="Folder where <lora:name:weight> and --lora names are looked up.")]
HiresScaleOpt = Annotated[Optional[float], typer.Option("--hires-scale", help="Hires fix: upscale the latent by this factor (size floored to multiples of 64), then a second img2img pass.", show_default=False)]
HiresStepsOpt = Annotated[int, typer.Option("--hires-steps", help="Hires fix: steps of the second pass (0 = --steps).")]
HiresStrengthOpt = Annotated[float, typer.Option("--hires-strength", help="Hires fix: denoising strength of the second pass, 0..1.")]
HiresUpscalerOpt = Annotated[str, typer.Option("--hires-upscaler", help="Hires fix: latent (bilinear, AUTOMATIC1111's \"Latent\") or latent-nearest.")]
NoWatermarkOpt = Annotated[bool, typer.Option("--no-watermark", help="Do not embed the invisible watermark.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
StrengthOpt = Annotated[float, typer.Option("--strength", help="img2img: how much to change the input, 0..1 (1 = start from noise).")]
InitImgOpt = Annotated[Optional[Path], typer.Option("--init-img", "--init_img", help="img2img: the input image.")]
ImageOpt = Annotated[Optional[Path], typer.Option("--image", "--init-img", "--init_img", help="The input image.")]
MaskOpt = Annotated[Optional[Path], typer.Option("--mask", help="Mask image: white = repaint, black = keep; converted to grey and binarised at 50% as the original. Default: the image's transparent pixels.")]
InvertMaskOpt = Annotated[bool, typer.Option("--invert-mask", help="Repaint the black part of the mask instead of the white.")]
MaskBlurOpt = Annotated[float, typer.Option("--mask-blur", help="Gaussian blur of the mask in pixels (AUTOMATIC1111's 'Mask blur'): soft paste-back edges; 0 = the original's hard mask.")]
PasteBackOpt = Annotated[bool, typer.Option("--paste-back/--no-paste-back", help="Copy the kept pixels from the input into the result, so they are unchanged (the original returns the whole VAE output).")]
OutpaintOpt = Annotated[Optional[str], typer.Option("--outpaint", help="LEFT,RIGHT,UP,DOWN: add that many pixels on each side (filled with the nearest edge pixels) and paint them.")]
InpaintStrengthOpt = Annotated[float, typer.Option("--strength", help="1 (default): the masked area is painted from noise, as the original; below 1: start from the image noised that far (img2img's rule).")]
DepthStrengthOpt = Annotated[float, typer.Option("--strength", help="How much to change the input, 0..1: noise to index min(int(strength*steps), steps-1) as the original depth2img; 1 starts from noise.")]
DepthMapOpt = Annotated[Optional[Path], typer.Option("--depth-map", help="Use this depth image (greyscale, white = near) instead of estimating one with MiDaS.")]
DepthModelOpt = Annotated[Optional[Path], typer.Option("--depth-model", help="MiDaS weights (dpt_hybrid-midas-501f0c75.pt) for a depth checkpoint without depth_model.* weights.")]
SaveDepthOpt = Annotated[Optional[Path], typer.Option("--save-depth", help="Write the depth map used as a PNG (white = near).")]
# Original flags that cannot apply to sd_cli: accepted by the parser only to give a clear error.
Laion400mOpt = Annotated[bool, typer.Option("--laion400m", hidden=True)]
TorchscriptOpt = Annotated[bool, typer.Option("--torchscript", hidden=True)]
IpexOpt = Annotated[bool, typer.Option("--ipex", hidden=True)]
Bf16FlagOpt = Annotated[bool, typer.Option("--bf16", hidden=True)]

UNSUPPORTED = {
    "laion400m": "--laion400m selects the 2021 LDM text2img model, which sd_cli does not run; pass --ckpt and --config instead",
    "torchscript": "--torchscript is not supported; sd_cli runs eager PyTorch (see --precision)",
    "ipex": "--ipex (Intel Extension for PyTorch) is not supported; sd_cli runs plain PyTorch on the CPU",
    "bf16": "--bf16 is an IPEX/torchscript flag; use --precision bf16",
}


def _leading_options(
    ctx: typer.Context, prompt_arg: PromptArg = None, prompt: PromptOpt = None, negative_prompt: NegativeOpt = "",
): ...


def _sampling_options(
    steps: StepsOpt = 50, scale: ScaleOpt = 7.5, seed: SeedOpt = None,
    sampler: SamplerOpt = "ddim", schedule: ScheduleOpt = None, plms: PlmsOpt = False, dpm: DpmOpt = False, dpm_solver: DpmSolverOpt = False,
    eta: EtaOpt = 0.0,
): ...


def _run_options(
    C: ChannelsOpt = 4, f: FactorOpt = 8,
    n_samples: SamplesOpt = 1, n_iter: IterOpt = 1, n_rows: RowsOpt = 0,
    skip_grid: SkipGridOpt = False, skip_save: SkipSaveOpt = False, fixed_code: FixedCodeOpt = False,
    from_file: FromFileOpt = None, repeat: RepeatOpt = 1, on_error: OnErrorOpt = OnError.stop,
    from_png: FromPngOpt = None, name: NameOpt = None, skip_existing: SkipExistingOpt = False, json_out: JsonOpt = False,
    precision: PrecisionOpt = "auto", device: DeviceOpt = "auto",
    ckpt: CkptOpt = None, config: ConfigOpt = None, ema: EmaOpt = False,
    outdir: OutdirOpt = None, output: OutputOpt = None, no_watermark: NoWatermarkOpt = False, compile_unet: CompileOpt = False, vae_tiling: VaeTilingOpt = False,
    offload: OffloadOpt = False,
    emphasis: EmphasisOpt = Emphasis.original, clip_skip: ClipSkipOpt = None, embeddings: EmbeddingsOpt = None,
    vae: VaeOpt = None, lora: LoraOpt = None, lora_dir: LoraDirOpt = Path("checkpoints/lora"),
    quiet: QuietOpt = False, debug: DebugOpt = False,
    laion400m: Laion400mOpt = False, torchscript: TorchscriptOpt = False, ipex: IpexOpt = False, bf16: Bf16FlagOpt = False,
): ...


def _render_command(mode: str, own_options, after_sampling=None):
    """Register subcommand `mode` with the options every rendering command shares.

    Typer reads a command's options from its signature, so the shared ones are written once (the
    three functions above) and joined here with the command's own: `own_options` after the prompt,
    `after_sampling` after the sampling options. The docstring of `own_options` is the help text.
    """
    parts = [_leading_options, own_options, _sampling_options, after_sampling, _run_options]
    params = [p for part in parts if part is not None for p in inspect.signature(part).parameters.values()]

    def command(**args):
        _start(args)
        _render(mode, args)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = own_options.__doc__
    app.command(mode)(command)


def _txt2img_options():
    """Generate images from a text prompt."""


def _txt2img_size_options(
    height: HeightOpt = None, width: WidthOpt = None,
    hires_scale: HiresScaleOpt = None, hires_steps: HiresStepsOpt = 0, hires_strength: HiresStrengthOpt = 0.7,
    hires_upscaler: HiresUpscalerOpt = "latent",
): ...


def _img2img_options(init_img: InitImgOpt = None, strength: StrengthOpt = 0.75):
    """Change an input image following a text prompt (the image's size is floored to multiples of 64)."""


def _inpaint_options(
    init_img: ImageOpt = None, mask: MaskOpt = None, invert_mask: InvertMaskOpt = False, mask_blur: MaskBlurOpt = 4.0,
    paste_back: PasteBackOpt = True, outpaint: OutpaintOpt = None, strength: InpaintStrengthOpt = 1.0,
):
    """Repaint the masked part of an image (white in --mask, or the image's transparent pixels).

    Inpainting checkpoints (9-channel UNet: SD 1.5 / SD 2 inpainting) get the mask and the masked
    image as extra UNet input, as the original. Ordinary 4-channel checkpoints inpaint by blending
    the kept area's noised latent back in after every step. The image keeps its size (padded to
    multiples of 64 for the model and cropped back); the kept pixels are pasted back unchanged.
    """


def _depth2img_options(
    init_img: ImageOpt = None, strength: DepthStrengthOpt = 0.9,
    depth_map: DepthMapOpt = None, depth_model: DepthModelOpt = None, save_depth: SaveDepthOpt = None,
):
    """Change an image following a prompt while keeping its depth (the SD 2 depth model, 512-depth-ema).

    The depth comes from MiDaS DPT-Hybrid, built from the checkpoint's own depth_model.* weights
    (or --depth-model), or from --depth-map. The image's size is floored to multiples of 64.
    """


_render_command("txt2img", _txt2img_options, after_sampling=_txt2img_size_options)
_render_command("img2img", _img2img_options)
_render_command("inpaint", _inpaint_options)
_render_command("depth2img", _depth2img_options)


ImagesArg = Annotated[list[Path], typer.Argument(help="PNG files.", show_default=False)]
InfoJsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per image (the fields of txt2img --json).")]


@app.command()
def info(images: ImagesArg, json_out: InfoJsonOpt = False):
    """Print the generation parameters recorded in images (exit 1 if one has none)."""
    import json

    from sd_cli.image_info import info_record, read_infotext

    failed = 0
    for path in images:
        try:
            text = json.dumps(info_record(path), ensure_ascii=False) if json_out else read_infotext(path)
        except SdCliError as err:
            log.error(str(err))
            failed += 1
            continue
        print(text if json_out or len(images) == 1 else f"{path}:\n{text}\n", flush=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def verify(images: ImagesArg, json_out: InfoJsonOpt = False):
    """Tell which known invisible watermark images carry: exit 0 when every image has one, 1 otherwise."""
    import json

    from sd_cli.image_info import describe_verify, verify_record

    unmarked = 0
    for path in images:
        try:
            record = verify_record(path)
        except SdCliError as err:
            log.error(str(err))
            unmarked += 1
            continue
        unmarked += record["watermark"] is None
        print(json.dumps(record) if json_out else describe_verify(record), flush=True)
    if unmarked:
        raise typer.Exit(1)


def _start(args: dict) -> None:
    log.set_quiet(args["quiet"])
    for flag, message in UNSUPPORTED.items():
        if args.get(flag):
            raise UsageError(message)
    if args["C"] != 4 or args["f"] != 8:
        raise UsageError("--C must be 4 and --f must be 8: Stable Diffusion's VAE has 4 latent channels and downsamples by 8")


def _render(mode: str, args: dict) -> None:
    from sd_cli import jobs
    from sd_cli.render import RunRequest, run

    png_values, png_model = _from_png(args)
    requests, bad_lines = _requests(mode, args, png_values)
    count = _positive("--repeat", args["repeat"]) if args["from_file"] else _positive("--n-samples", args["n_samples"])
    defaults = jobs.Defaults(values=_default_values(args, png_values), count=count,
                             n_iter=_positive("--n-iter", args["n_iter"]), fixed_code=args["fixed_code"],
                             name_template=args["name"])
    request = RunRequest(
        mode=mode, jobs=jobs.build_jobs(requests, defaults), batch_size=_positive("--n-samples", args["n_samples"]),
        bad_lines=bad_lines, checkpoint=_checkpoint(args, png_model), config=args["config"], ema=args["ema"],
        device=args["device"], precision=_precision(args["precision"]),
        outdir=args["outdir"] or Path(f"outputs/{mode}-samples"), output=args["output"], n_rows=args["n_rows"],
        skip_grid=args["skip_grid"], skip_save=args["skip_save"], watermark=not args["no_watermark"],
        skip_existing=args["skip_existing"], on_error=args["on_error"].value, json=args["json_out"],
        inpaint=_mask_options(args) if mode == "inpaint" else None,
        depth=_depth_options(args) if mode == "depth2img" else None, **_addon_options(args),
        compile=args["compile_unet"], vae_tiling=args["vae_tiling"], offload=args["offload"],
        emphasis=args["emphasis"].value, clip_skip=_clip_skip(args["clip_skip"]), embeddings=_embeddings_dir(args["embeddings"]),
    )
    if request.offload and request.compile:
        raise UsageError("--offload and --compile do not go together (compiled GPU code keeps the UNet's weights "
                         "where they were); drop one of them")
    if request.skip_save and request.skip_grid:
        raise UsageError("--skip-save together with --skip-grid would write nothing; drop one of them")
    if args["from_png"] is not None:
        _warn_other_model(request.checkpoint, png_model, args["from_png"])
    run(request)


def _requests(mode: str, args: dict, png_values: dict) -> tuple[list, int]:
    """One request per prompt-file line (and the number of bad lines skipped), or the one prompt."""
    from sd_cli import jobs

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
        raise UsageError(f"{mode} needs an input image: pass {'--image' if mode == 'inpaint' else '--init-img'} PATH")
    return [jobs.Request({"prompt": prompt})], 0


def _good_lines(parsed: list, args: dict) -> tuple[list, int]:
    from sd_cli.jobs import BadLine

    source = "stdin" if args["from_file"] == "-" else args["from_file"]
    bad = [p for p in parsed if isinstance(p, BadLine)]
    if bad and args["on_error"] == OnError.stop:
        more = f" (and {len(bad) - 1} more bad line(s))" if len(bad) > 1 else ""
        raise UsageError(f"{source} line {bad[0].line}: {bad[0].message}{more}; fix it or use --on-error continue")
    for line in bad:
        log.error(f"{source} line {line.line}: {line.message} (skipped, --on-error continue)")
    return [p for p in parsed if not isinstance(p, BadLine)], len(bad)


FLAG_NAMES = {"steps": "--steps", "scale": "--scale", "seed": "--seed", "eta": "--eta", "width": "--width",
              "height": "--height", "strength": "--strength", "sampler": "--sampler",
              "negative_prompt": "--negative-prompt", "init_img": "--init-img", "mask": "--mask"}


def _default_values(args: dict, png_values: dict) -> dict:
    """The command line's values for every job, over those of --from-png; checked like a prompt-file line."""
    from sd_cli import jobs

    flags = {"negative_prompt": args["negative_prompt"], "sampler": _sampler(args), "steps": args["steps"],
             "scale": args["scale"], "eta": args["eta"], "width": args.get("width"), "height": args.get("height"),
             "strength": args.get("strength", 0.75), "init_img": args.get("init_img"), "seed": args["seed"],
             "mask": args.get("mask")}
    values = {k: v for k, v in png_values.items() if k != "prompt"}
    values.update({k: v for k, v in flags.items() if v is not None and (k not in values or _explicit(args, k))})
    for key in ("init_img", "mask"):
        values[key] = str(values[key]) if values.get(key) is not None else None
    try:
        values = jobs.check_values({k: v for k, v in values.items() if v is not None}, FLAG_NAMES.get)
    except ValueError as err:
        raise UsageError(str(err)) from None
    values["seed"] = _seed(values.get("seed"))
    return values


def _addon_options(args: dict) -> dict:
    """--vae, --lora, --lora-dir and the hires fix, as RunRequest fields."""
    from sd_cli.lora import parse_flag

    hires = None
    if args.get("hires_scale") is not None:
        from sd_cli.hires import HiresOptions

        hires = HiresOptions(scale=args["hires_scale"], steps=args["hires_steps"], strength=args["hires_strength"],
                             upscaler=args["hires_upscaler"])
    elif args.get("hires_steps") or args.get("hires_strength", 0.7) != 0.7 or args.get("hires_upscaler", "latent") != "latent":
        raise UsageError("--hires-steps, --hires-strength and --hires-upscaler belong to the hires fix: add --hires-scale")
    return {"vae": args["vae"], "loras": tuple(parse_flag(value) for value in args["lora"] or ()),
            "lora_dir": args["lora_dir"], "hires": hires}


def _mask_options(args: dict):
    from sd_cli.masks import MaskOptions, parse_outpaint

    if args["mask_blur"] < 0:
        raise UsageError(f"--mask-blur {args['mask_blur']} must be 0 or more")
    outpaint = parse_outpaint(args["outpaint"]) if args["outpaint"] else (0, 0, 0, 0)
    return MaskOptions(invert=args["invert_mask"], blur=args["mask_blur"], paste_back=args["paste_back"],
                       outpaint=outpaint)


def _depth_options(args: dict):
    from sd_cli.depth import DepthOptions

    if args["depth_map"] is not None and args["depth_model"] is not None:
        raise UsageError("--depth-map replaces MiDaS, so --depth-model would not be used; give one of them")
    return DepthOptions(depth_map=args["depth_map"], depth_model=args["depth_model"], save_depth=args["save_depth"])


def _sampler(args: dict) -> str:
    """The canonical sampler name (samplers.py): "euler_a", "dpmpp_2m_karras", ..."""
    from sd_cli.sampling import samplers

    # Precedence of the original flags: v1 --dpm_solver > --plms; v2 --plms > --dpm.
    name = "dpm" if args["dpm_solver"] else "plms" if args["plms"] else "dpm" if args["dpm"] else args["sampler"]
    try:
        schedule = None if args["schedule"] is None else samplers.schedule_id(args["schedule"])
    except samplers.UnknownSampler as err:
        raise UsageError(f"--schedule {err}") from None
    try:
        return samplers.canonical(name, schedule)
    except samplers.UnknownSampler as err:
        raise UsageError(f"--sampler {err}") from None


def _explicit(args: dict, key: str) -> bool:
    """Whether the flag for `key` was given on the command line (it then wins over --from-png)."""
    names = {"sampler": ("sampler", "schedule", "plms", "dpm", "dpm_solver")}.get(key, (key,))
    sources = [args["ctx"].get_parameter_source(name) for name in names]
    return any(source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP") for source in sources)


def _from_png(args: dict) -> tuple[dict, dict]:
    if args["from_png"] is None:
        return {}, {}
    from sd_cli.image_info import render_values

    values, model = render_values(args["from_png"])
    log.info(f"parameters from {args['from_png']}: seed {values['seed']}, {values['sampler']} "
             f"{values['steps']} steps, scale {values['scale']}; flags given on the command line win")
    _take_png_run_options(args)
    return values, model


def _take_png_run_options(args: dict) -> None:
    """Clip skip, emphasis and the hires fix recorded in the --from-png image, unless flags say otherwise."""
    from sd_cli.image_info import run_options

    recorded = run_options(args["from_png"])
    vae_name = recorded.pop("vae_name", None)
    if vae_name and args.get("vae") is None:
        log.warn(f"{args['from_png']} was made with the separate VAE {vae_name}; pass --vae to use it again")
    for key, value in recorded.items():
        if key in args and not _explicit(args, key):
            args[key] = Emphasis(value) if key == "emphasis" else value


def _checkpoint(args: dict, png_model: dict):
    """--ckpt; for --from-png without it, the recorded model when it is found in checkpoints/."""
    if args["ckpt"] is not None or not png_model.get("model"):
        return args["ckpt"]
    from sd_cli.errors import CheckpointError
    from sd_cli.models_on_disk import resolve_checkpoint

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
    from sd_cli.checkpoint import model_hash
    from sd_cli.errors import CheckpointError
    from sd_cli.models_on_disk import resolve_checkpoint

    recorded = png_model.get("model_hash")
    try:
        actual = model_hash(resolve_checkpoint(checkpoint)) if recorded else None
    except CheckpointError:
        return  # the run itself reports the missing checkpoint
    if actual and actual != recorded:
        log.warn(f"{png} was made with model hash {recorded} ({png_model.get('model')}), this checkpoint has "
                 f"{actual}: the image will differ")


def _seed(seed: Optional[int]) -> int:
    if seed is None:
        from sd_cli.distributed import current

        if current().distributed:
            raise UsageError("several processes (torchrun) must render the same run: pass --seed")
        seed = secrets.randbelow(2**32)
        log.info(f"seed {seed} (random; pass --seed {seed} to repeat this run)")
    return seed


def _clip_skip(value: Optional[int]) -> Optional[int]:
    return None if value is None else _positive("--clip-skip", value)


def _embeddings_dir(folder: Optional[Path]) -> Optional[Path]:
    """--embeddings: checked before the model loads (the files are read when a prompt uses them)."""
    if folder is not None and not folder.is_dir():
        raise UsageError(f"--embeddings {folder}: no such folder")
    return folder


def _positive(flag: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
    return value


def _precision(value: str) -> str:
    from sd_cli.device import normalize_precision

    return normalize_precision(value)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: one line per error, exit codes 0 / 1 failure / 2 usage / 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["--help"]
    debug = "--debug" in argv
    try:
        code = app(args=argv, prog_name="sd-cli", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into Exit(130), which comes back as a return value here
            _fail("interrupted", 130)
        if isinstance(code, int) and code:  # typer.Exit(code) likewise
            sys.exit(code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        _fail("interrupted", 130)
    except _usage_error_class() as err:
        _fail(err.format_message(), 2)
    except SdCliError as err:
        if debug:
            raise
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as err:  # an sd_cli bug or an environment problem: still one line unless --debug
        if debug:
            raise
        _fail(f"unexpected {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} (rerun with --debug for details)", 1)


def _usage_error_class():
    """Typer ships its own copy of click; its UsageError lives there (click's in older typer)."""
    try:
        from typer._click.exceptions import UsageError as ParserUsageError
    except ImportError:
        from click import UsageError as ParserUsageError
    return ParserUsageError


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
