"""The `sd-cli` command: typer definitions only, no tensor code, no torch import at module level.

Every flag of the original v1/v2 txt2img.py and img2img.py is accepted under its original
spelling as an alias of the readable one (`--ddim_steps` = `--steps`, `--H` = `--height`, ...).
"""

import secrets
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sd_cli import log
from sd_cli.errors import SdCliError, UsageError

app = typer.Typer(
    name="sd-cli",
    help="Stable Diffusion from the command line: original checkpoints and configs, safe loading, faithful numerics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Sampler(str, Enum):
    ddim = "ddim"
    plms = "plms"
    dpm = "dpm"


# Shared option types: one definition per flag, used by every subcommand.
PromptArg = Annotated[Optional[str], typer.Argument(help="The prompt (same as --prompt).", show_default=False)]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to draw.")]
NegativeOpt = Annotated[str, typer.Option("--negative-prompt", "-n", help="What to steer away from (the unconditional branch).")]
StepsOpt = Annotated[int, typer.Option("--steps", "--ddim_steps", help="Sampling steps (DDIM/PLMS run the original's count for it).")]
ScaleOpt = Annotated[float, typer.Option("--scale", help="Classifier-free guidance scale; 1.0 skips the unconditional pass.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Base seed; image i uses seed+i. Random (and printed) if not given.")]
SamplerOpt = Annotated[Sampler, typer.Option("--sampler", help="Sampler.", case_sensitive=False)]
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
FromFileOpt = Annotated[Optional[Path], typer.Option("--from-file", help="Read prompts from a file, one per line.")]
RepeatOpt = Annotated[int, typer.Option("--repeat", help="Repeat each prompt of --from-file this many times.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, fp16, bf16; the original's full/autocast too.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
CkptOpt = Annotated[Optional[Path], typer.Option("--ckpt", help="Checkpoint (.ckpt or .safetensors); default: sd_cli's own small model.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Original model YAML; default: beside the checkpoint, or detected.")]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights (model_ema.*).")]
OutdirOpt = Annotated[Optional[Path], typer.Option("--outdir", help="Output folder: samples/NNNNN.png and grid-NNNN.png inside.")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Write exactly this file (a pattern like out-{index}.png for several).")]
NoWatermarkOpt = Annotated[bool, typer.Option("--no-watermark", help="Do not embed the invisible watermark.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
StrengthOpt = Annotated[float, typer.Option("--strength", help="img2img: how much to change the input, 0..1 (1 = start from noise).")]
InitImgOpt = Annotated[Optional[Path], typer.Option("--init-img", "--init_img", help="img2img: the input image.")]
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


@app.command()
def txt2img(
    prompt_arg: PromptArg = None, prompt: PromptOpt = None, negative_prompt: NegativeOpt = "",
    steps: StepsOpt = 50, scale: ScaleOpt = 7.5, seed: SeedOpt = None,
    sampler: SamplerOpt = Sampler.ddim, plms: PlmsOpt = False, dpm: DpmOpt = False, dpm_solver: DpmSolverOpt = False,
    eta: EtaOpt = 0.0, height: HeightOpt = None, width: WidthOpt = None, C: ChannelsOpt = 4, f: FactorOpt = 8,
    n_samples: SamplesOpt = 1, n_iter: IterOpt = 1, n_rows: RowsOpt = 0,
    skip_grid: SkipGridOpt = False, skip_save: SkipSaveOpt = False, fixed_code: FixedCodeOpt = False,
    from_file: FromFileOpt = None, repeat: RepeatOpt = 1, precision: PrecisionOpt = "auto", device: DeviceOpt = "auto",
    ckpt: CkptOpt = None, config: ConfigOpt = None, ema: EmaOpt = False,
    outdir: OutdirOpt = None, output: OutputOpt = None, no_watermark: NoWatermarkOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
    laion400m: Laion400mOpt = False, torchscript: TorchscriptOpt = False, ipex: IpexOpt = False, bf16: Bf16FlagOpt = False,
):
    """Generate images from a text prompt."""
    args = dict(locals())
    _start(args)
    _render("txt2img", args)


@app.command()
def img2img(
    prompt_arg: PromptArg = None, prompt: PromptOpt = None, negative_prompt: NegativeOpt = "",
    init_img: InitImgOpt = None, strength: StrengthOpt = 0.75,
    steps: StepsOpt = 50, scale: ScaleOpt = 7.5, seed: SeedOpt = None,
    sampler: SamplerOpt = Sampler.ddim, plms: PlmsOpt = False, dpm: DpmOpt = False, dpm_solver: DpmSolverOpt = False,
    eta: EtaOpt = 0.0, C: ChannelsOpt = 4, f: FactorOpt = 8,
    n_samples: SamplesOpt = 1, n_iter: IterOpt = 1, n_rows: RowsOpt = 0,
    skip_grid: SkipGridOpt = False, skip_save: SkipSaveOpt = False, fixed_code: FixedCodeOpt = False,
    from_file: FromFileOpt = None, repeat: RepeatOpt = 1, precision: PrecisionOpt = "auto", device: DeviceOpt = "auto",
    ckpt: CkptOpt = None, config: ConfigOpt = None, ema: EmaOpt = False,
    outdir: OutdirOpt = None, output: OutputOpt = None, no_watermark: NoWatermarkOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
    laion400m: Laion400mOpt = False, torchscript: TorchscriptOpt = False, ipex: IpexOpt = False, bf16: Bf16FlagOpt = False,
):
    """Change an input image following a text prompt (the image's size is floored to multiples of 64)."""
    args = dict(locals())
    _start(args)
    _render("img2img", args)


def _start(args: dict) -> None:
    log.set_quiet(args["quiet"])
    for flag, message in UNSUPPORTED.items():
        if args.get(flag):
            raise UsageError(message)
    if args["C"] != 4 or args["f"] != 8:
        raise UsageError("--C must be 4 and --f must be 8: Stable Diffusion's VAE has 4 latent channels and downsamples by 8")


def _render(mode: str, args: dict) -> None:
    from sd_cli.render import RunRequest, run

    request = RunRequest(
        mode=mode, prompts=_prompts(args), negative_prompt=args["negative_prompt"], sampling=_sampling(args),
        seed=_seed(args["seed"]), n_samples=_positive("--n-samples", args["n_samples"]),
        n_iter=_positive("--n-iter", args["n_iter"]), fixed_code=args["fixed_code"],
        height=args.get("height"), width=args.get("width"), strength=_strength(args.get("strength", 0.75)),
        init_img=args.get("init_img"), checkpoint=args["ckpt"], config=args["config"], ema=args["ema"],
        device=args["device"], precision=_precision(args["precision"]),
        outdir=args["outdir"] or Path(f"outputs/{mode}-samples"), output=args["output"], n_rows=args["n_rows"],
        skip_grid=args["skip_grid"], skip_save=args["skip_save"], watermark=not args["no_watermark"],
    )
    if request.skip_save and request.skip_grid:
        raise UsageError("--skip-save together with --skip-grid would write nothing; drop one of them")
    run(request)


def _prompts(args: dict) -> list[str]:
    given = [p for p in (args["prompt_arg"], args["prompt"]) if p is not None]
    if len(given) == 2 and given[0] != given[1]:
        raise UsageError("the prompt was given twice (as an argument and with --prompt); give it once")
    if args["from_file"] is not None:
        if given:
            raise UsageError("give either a prompt or --from-file, not both")
        lines = _read_prompt_file(args["from_file"])
        return [line for line in lines for _ in range(_positive("--repeat", args["repeat"]))]
    if not given:
        raise UsageError("no prompt: pass it as the first argument, with --prompt, or use --from-file")
    return [given[0]] * _positive("--n-samples", args["n_samples"])


def _read_prompt_file(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UsageError(f"cannot read prompt file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UsageError(f"prompt file {path} is not UTF-8 text; re-save it as UTF-8") from None
    lines = text.splitlines()
    if not lines:
        raise UsageError(f"prompt file {path} is empty; put one prompt per line")
    return lines


def _sampling(args: dict):
    from sd_cli.pipeline import SamplingParams

    sampler = args["sampler"].value
    # Precedence of the original flags: v1 --dpm_solver > --plms; v2 --plms > --dpm.
    if args["dpm_solver"]:
        sampler = "dpm"
    elif args["plms"]:
        sampler = "plms"
    elif args["dpm"]:
        sampler = "dpm"
    steps = args["steps"]
    if steps < 1 or steps > 1000:
        raise UsageError(f"--steps {steps} is out of range; use 1 to 1000")
    if sampler == "plms" and args["eta"] != 0:
        raise UsageError("PLMS is deterministic and needs --eta 0; use --sampler ddim for eta > 0")
    if args["eta"] < 0:
        raise UsageError("--eta must be 0 or more")
    return SamplingParams(sampler=sampler, steps=steps, scale=args["scale"], eta=args["eta"])


def _seed(seed: Optional[int]) -> int:
    if seed is None:
        seed = secrets.randbelow(2**32)
        log.info(f"seed {seed} (random; pass --seed {seed} to repeat this run)")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed {seed} is out of range; use 0 to 2**63-1")
    return seed


def _positive(flag: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
    return value


def _strength(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--strength {value} is outside [0, 1]")
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
        app(args=argv, prog_name="sd-cli", standalone_mode=False)
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
