"""What each `sd-cli` command accepts: one typer declaration per flag, grouped as the commands use them.

Every flag of the original v1/v2 txt2img.py and img2img.py is accepted under its original
spelling as an alias of the readable one (`--ddim_steps` = `--steps`, `--H` = `--height`, ...).
The functions below carry option groups in their signatures; sd_cli.cli.app joins them into commands.
The generation parameters' flag spellings and defaults are their rows in sd_cli/fields.py; the help
texts are here.
No torch import here: `sd-cli --help` must stay fast.
"""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from sd_cli.cli.completion import complete_checkpoint, complete_sampler
from sd_cli.fields import EMBEDDINGS_DIR, LORA_DIR, default, flags


class OnError(str, Enum):
    stop = "stop"
    continue_ = "continue"


class ProgressMode(str, Enum):
    auto = "auto"
    bar = "bar"
    plain = "plain"
    none = "none"


class Emphasis(str, Enum):
    original = "original"
    none = "none"


class UpscaleFit(str, Enum):  # upscale --upscale-fit (files/low_res.py)
    floor = "floor"
    pad = "pad"


# The help's panels, in the order `--help` shows them (sd_cli.cli.help sorts by it).
ESSENTIALS = "Essentials"
BATCH = "Batch and prompt files"
QUALITY = "Quality and speed"
AUTOMATION = "Automation and output"
ORIGINAL = "Original scripts' flags"
# A model family's own flags come after the aliases: `--help` keeps the common ones on its first page.
SDXL = "SDXL and its refiner"
CONTROL = "ControlNet"
BACKENDS = "CPU backend"  # --backend openvino (after the aliases: the first page is full)
PANELS = (ESSENTIALS, BATCH, QUALITY, AUTOMATION, ORIGINAL, SDXL, CONTROL, BACKENDS)

# Shared option types: one definition per flag, used by every subcommand. Help texts are one line
# at 100 columns where they can be (about 60 characters with the default); rich markup is on,
# so a literal "[" would be written "\\[".
PromptArg = Annotated[Optional[str], typer.Argument(help="The prompt (same as --prompt).", metavar="PROMPT", show_default=False)]
PromptOpt = Annotated[Optional[str], typer.Option(*flags("prompt"), help="What to draw.", metavar="TEXT", rich_help_panel=ESSENTIALS)]
NegativeOpt = Annotated[str, typer.Option(*flags("negative_prompt"), help="What to steer away from.", metavar="TEXT", show_default=False, rich_help_panel=ESSENTIALS)]
CkptOpt = Annotated[Optional[Path], typer.Option("--ckpt", "-m", "--model", help="Checkpoint file (or $SD_CLI_CKPT); default: the built-in model.", metavar="PATH", envvar="SD_CLI_CKPT", show_envvar=False, autocompletion=complete_checkpoint, rich_help_panel=ESSENTIALS)]
StepsOpt = Annotated[int, typer.Option(*flags("steps"), help="Sampling steps.", metavar="N", rich_help_panel=ESSENTIALS)]
ScaleOpt = Annotated[float, typer.Option(*flags("scale"), help="Guidance scale (CFG); 1 skips the negative pass.", metavar="X", rich_help_panel=ESSENTIALS)]
SeedOpt = Annotated[Optional[int], typer.Option(*flags("seed"), help="Base seed; image i gets seed+i (default: random, printed).", metavar="N", rich_help_panel=ESSENTIALS)]
SamplerOpt = Annotated[str, typer.Option(*flags("sampler"), help="euler_a, dpmpp_2m, ... or A1111/sd.cpp names.", metavar="NAME", autocompletion=complete_sampler, rich_help_panel=ESSENTIALS)]
HeightOpt = Annotated[Optional[int], typer.Option(*flags("height"), help="Height in pixels, a multiple of 64 (default: the model's own).", metavar="N", rich_help_panel=ESSENTIALS)]
WidthOpt = Annotated[Optional[int], typer.Option(*flags("width"), help="Width in pixels, a multiple of 64 (default: the model's own).", metavar="N", rich_help_panel=ESSENTIALS)]
OutdirOpt = Annotated[Optional[Path], typer.Option("--outdir", help="Folder for samples/NNNNN.png and grid-NNNN.png.", metavar="DIR", rich_help_panel=ESSENTIALS)]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="Exact file: .png, .jpg or .webp (several: out-{index}.png).", metavar="PATH", rich_help_panel=ESSENTIALS)]
ScheduleOpt = Annotated[Optional[str], typer.Option("--schedule", help="σ schedule: karras, exponential, ... (SDXL: edm, turbo).", metavar="NAME", show_default=False, rich_help_panel=QUALITY)]
PlmsOpt = Annotated[bool, typer.Option("--plms", help="Same as --sampler plms.", rich_help_panel=ORIGINAL)]
DpmOpt = Annotated[bool, typer.Option("--dpm", help="Same as --sampler dpm (v2; --plms wins over it, as in v2).", rich_help_panel=ORIGINAL)]
DpmSolverOpt = Annotated[bool, typer.Option("--dpm_solver", help="Same as --sampler dpm (v1; wins over --plms, as in v1).", rich_help_panel=ORIGINAL)]
EtaOpt = Annotated[float, typer.Option(*flags("eta"), help="DDIM eta (0 = deterministic).", metavar="X", rich_help_panel=QUALITY)]
ChannelsOpt = Annotated[int, typer.Option("--C", help="Latent channels (must be 4).", metavar="N", rich_help_panel=ORIGINAL)]
FactorOpt = Annotated[int, typer.Option("--f", help="Downsampling factor (must be 8).", metavar="N", rich_help_panel=ORIGINAL)]
SamplesOpt = Annotated[int, typer.Option(*flags("n_samples"), help="Batch size (for --from-file: lines per batch).", metavar="N", rich_help_panel=BATCH)]
IterOpt = Annotated[int, typer.Option(*flags("n_iter"), help="Repeat the whole run this many times.", metavar="N", rich_help_panel=BATCH)]
RowsOpt = Annotated[int, typer.Option("--n-rows", "--n_rows", help="Grid images per row (0 = the batch size).", metavar="N", rich_help_panel=BATCH)]
SkipGridOpt = Annotated[bool, typer.Option("--skip-grid", "--skip_grid", help="Do not write the grid.", rich_help_panel=BATCH)]
SkipSaveOpt = Annotated[bool, typer.Option("--skip-save", "--skip_save", help="Write only the grid.", rich_help_panel=BATCH)]
FixedCodeOpt = Annotated[bool, typer.Option("--fixed-code", "--fixed_code", help="Every image uses the base seed's noise.", rich_help_panel=ORIGINAL)]
FromFileOpt = Annotated[Optional[str], typer.Option("--from-file", help="Prompt file, a line an image, blank lines skipped ('-': stdin).", metavar="FILE", rich_help_panel=BATCH)]
RepeatOpt = Annotated[int, typer.Option("--repeat", help="Images per line of --from-file.", metavar="N", rich_help_panel=BATCH)]
# X/Y/Z plots (run/plot.py): `--xy "steps=10,20" "scale=5,7.5"`; app.py gives each axis word after --xy its own --xy.
XyOpt = Annotated[Optional[list[str]], typer.Option("--xy", "--xyz", help="X/Y/Z plot: every combination of FIELD=V1,V2 axes (1-3), one grid.", metavar="AXIS", show_default=False, rich_help_panel=BATCH)]
OnErrorOpt = Annotated[OnError, typer.Option("--on-error", help="On a failure: stop, or continue and exit 3.", metavar="MODE", case_sensitive=False, rich_help_panel=AUTOMATION)]
JsonOpt = Annotated[bool, typer.Option("--json", help="stdout: one JSON object per image written.", rich_help_panel=AUTOMATION)]
NameOpt = Annotated[Optional[str], typer.Option(*flags("name"), help="File names in --outdir, e.g. '{index:05}-{seed}.png'.", metavar="TEMPLATE", rich_help_panel=AUTOMATION)]
SkipExistingOpt = Annotated[bool, typer.Option("--skip-existing", help="Skip images whose file (--name, -o) exists.", rich_help_panel=AUTOMATION)]
FromPngOpt = Annotated[Optional[Path], typer.Option("--from-png", help="Re-render with a PNG's recorded parameters.", metavar="PNG", rich_help_panel=AUTOMATION)]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA), fp32, fp16, bf16.", metavar="NAME", rich_help_panel=QUALITY)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", metavar="NAME", rich_help_panel=QUALITY)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads for torch (default: torch's own).", metavar="N", show_default=False, rich_help_panel=QUALITY)]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Model YAML (default: beside the checkpoint, or detected).", metavar="YAML", rich_help_panel=QUALITY)]
EmaOpt = Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.", rich_help_panel=QUALITY)]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the UNet: a slow first step, then faster.", rich_help_panel=QUALITY)]
VaeTilingOpt = Annotated[bool, typer.Option("--vae-tiling", help="Encode and decode in tiles to bound memory (pixels differ).", rich_help_panel=QUALITY)]
# --backend openvino (runtime/openvino_backend.py)
BackendOpt = Annotated[str, typer.Option("--backend", help="torch, or openvino: compiled CPU graphs, cached (pip install openvino).", metavar="NAME", rich_help_panel=BACKENDS)]
OffloadOpt = Annotated[bool, typer.Option("--offload", help="Low GPU memory: only the part at work on the GPU.", rich_help_panel=QUALITY)]
EmphasisOpt = Annotated[Emphasis, typer.Option(*flags("emphasis"), help="Prompt weights: original (A1111's) or none.", metavar="MODE", case_sensitive=False, rich_help_panel=QUALITY)]
ClipSkipOpt = Annotated[Optional[int], typer.Option(*flags("clip_skip"), help="Text encoder layer N from the end (-1 or unset: the model's).", metavar="N", show_default=False, rich_help_panel=QUALITY)]
EmbeddingsOpt = Annotated[Optional[Path], typer.Option("--embeddings", help=f"Textual inversion folder (default {EMBEDDINGS_DIR.as_posix()}).", metavar="DIR", show_default=False, rich_help_panel=QUALITY)]
VaeOpt = Annotated[Optional[Path], typer.Option(*flags("vae"), help="A separate VAE file, e.g. the ft-MSE VAE.", metavar="PATH", rich_help_panel=QUALITY)]
LoraOpt = Annotated[Optional[list[str]], typer.Option("--lora", help="LoRA file or name, PATH:WEIGHT; repeatable; or <lora:name:w>.", metavar="PATH", rich_help_panel=QUALITY)]
LoraDirOpt = Annotated[Path, typer.Option("--lora-dir", help="Where LoRA names are looked up.", metavar="DIR", rich_help_panel=QUALITY)]
HiresScaleOpt = Annotated[Optional[float], typer.Option(*flags("hires_scale"), help="Hires fix: upscale the latent by X, then an img2img pass.", metavar="X", show_default=False, rich_help_panel=QUALITY)]
HiresStepsOpt = Annotated[int, typer.Option(*flags("hires_steps"), help="Hires fix: steps of the second pass (0 = --steps).", metavar="N", rich_help_panel=QUALITY)]
HiresStrengthOpt = Annotated[float, typer.Option(*flags("hires_strength"), help="Hires fix: strength of the second pass, 0..1.", metavar="X", rich_help_panel=QUALITY)]
HiresUpscalerOpt = Annotated[str, typer.Option(*flags("hires_upscaler"), help="Hires fix: latent or latent-nearest.", metavar="NAME", rich_help_panel=QUALITY)]
NoWatermarkOpt = Annotated[bool, typer.Option("--no-watermark", help="Do not embed the invisible watermark.", rich_help_panel=AUTOMATION)]
ServerOpt = Annotated[Optional[str], typer.Option("--server", envvar="SD_CLI_SERVER", show_envvar=False, help="Render on a running sd-cli serve (or $SD_CLI_SERVER).", metavar="URL", show_default=False, rich_help_panel=AUTOMATION)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only.", rich_help_panel=AUTOMATION)]
ProgressOpt = Annotated[ProgressMode, typer.Option("--progress", help="auto (bar on a terminal, else lines), bar, plain, none.", metavar="MODE", show_default=False, case_sensitive=False, rich_help_panel=AUTOMATION)]
PreviewOpt = Annotated[Optional[Path], typer.Option("--preview", help="Rewrite this small PNG of the image every 5 steps.", metavar="PNG", show_default=False, rich_help_panel=AUTOMATION)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.", rich_help_panel=AUTOMATION)]
StrengthOpt = Annotated[float, typer.Option(*flags("strength"), help="How much to change the input, 0..1 (1 = from noise).", metavar="X", rich_help_panel=ESSENTIALS)]
InitImgOpt = Annotated[Optional[Path], typer.Option(*flags("init_img"), help="The input image.", metavar="PATH", rich_help_panel=ESSENTIALS)]
ImageOpt = Annotated[Optional[Path], typer.Option("--image", *flags("init_img"), help="The input image.", metavar="PATH", rich_help_panel=ESSENTIALS)]
MaskOpt = Annotated[Optional[Path], typer.Option(*flags("mask"), help="White repaints, black keeps (default: the alpha channel).", metavar="PATH", rich_help_panel=ESSENTIALS)]
InvertMaskOpt = Annotated[bool, typer.Option("--invert-mask", help="Repaint the black part of the mask instead.", rich_help_panel=ESSENTIALS)]
MaskBlurOpt = Annotated[float, typer.Option(*flags("mask_blur"), help="Blur of the mask in pixels (A1111's Mask blur); 0 = the original's hard mask.", metavar="X", rich_help_panel=QUALITY)]
PasteBackOpt = Annotated[bool, typer.Option("--paste-back/--no-paste-back", help="Keep the unmasked pixels exactly (the original returns the VAE's).", rich_help_panel=QUALITY)]
OutpaintOpt = Annotated[Optional[str], typer.Option("--outpaint", help="Add pixels on the left, right, top, bottom and paint them.", metavar="L,R,U,D", rich_help_panel=ESSENTIALS)]
InpaintStrengthOpt = Annotated[float, typer.Option(*flags("strength"), help="1: from noise (the original); <1: as img2img.", metavar="X", rich_help_panel=ESSENTIALS)]
DepthStrengthOpt = Annotated[float, typer.Option(*flags("strength"), help="How much to change the input, 0..1, as the original depth2img.", metavar="X", rich_help_panel=ESSENTIALS)]
DepthMapOpt = Annotated[Optional[Path], typer.Option("--depth-map", help="Use this depth image (white = near) instead of MiDaS.", metavar="PNG", rich_help_panel=ESSENTIALS)]
DepthModelOpt = Annotated[Optional[Path], typer.Option("--depth-model", help="MiDaS weights for a checkpoint without depth_model.*.", metavar="PATH", rich_help_panel=QUALITY)]
SaveDepthOpt = Annotated[Optional[Path], typer.Option("--save-depth", help="Also write the depth map used (white = near).", metavar="PNG", rich_help_panel=AUTOMATION)]
# -- the SDXL refiner (pipelines/refine.py), txt2img and img2img, in the SDXL panel
RefinerOpt = Annotated[Optional[Path], typer.Option(*flags("refiner"), help="SDXL refiner file: the base hands its noisy latent over to it.", metavar="PATH", rich_help_panel=SDXL)]
RefinerConfigOpt = Annotated[Optional[Path], typer.Option("--refiner-config", help="The refiner's YAML (default: beside it, or detected).", metavar="YAML", rich_help_panel=SDXL)]
RefinerStrengthOpt = Annotated[float, typer.Option(*flags("refiner_strength"), help="Share of the schedule the refiner runs, 0..1.", metavar="X", rich_help_panel=SDXL)]
RefinerStepsOpt = Annotated[int, typer.Option(*flags("refiner_steps"), help="The refiner's own steps (0 = --steps).", metavar="N", rich_help_panel=SDXL)]
AestheticScoreOpt = Annotated[float, typer.Option(*flags("aesthetic_score"), help="Refiner: the aesthetic score the prompt asks for.", metavar="X", rich_help_panel=SDXL)]
NegativeAestheticScoreOpt = Annotated[float, typer.Option(*flags("negative_aesthetic_score"), help="Refiner: the aesthetic score of the negative pass.", metavar="X", rich_help_panel=SDXL)]
# -- end of the SDXL refiner's options
# SDXL's size and crop conditioning (sdxl-base): the demo's value_dict, default the image's size and 0.
OriginalWidthOpt = Annotated[Optional[int], typer.Option(*flags("original_width"), help="Size conditioning: the original image's width (default: the image's).", metavar="N", show_default=False, rich_help_panel=SDXL)]
OriginalHeightOpt = Annotated[Optional[int], typer.Option(*flags("original_height"), help="Size conditioning: the original image's height (default: the image's).", metavar="N", show_default=False, rich_help_panel=SDXL)]
CropTopOpt = Annotated[Optional[int], typer.Option(*flags("crop_top"), help="Crop conditioning: pixels cropped from the top (default 0).", metavar="N", show_default=False, rich_help_panel=SDXL)]
CropLeftOpt = Annotated[Optional[int], typer.Option(*flags("crop_left"), help="Crop conditioning: pixels cropped from the left (default 0).", metavar="N", show_default=False, rich_help_panel=SDXL)]
TargetWidthOpt = Annotated[Optional[int], typer.Option(*flags("target_width"), help="Size conditioning: the target width (default: the image's).", metavar="N", show_default=False, rich_help_panel=SDXL)]
TargetHeightOpt = Annotated[Optional[int], typer.Option(*flags("target_height"), help="Size conditioning: the target height (default: the image's).", metavar="N", show_default=False, rich_help_panel=SDXL)]
# -- upscale: the SD 2 x4 upscaler (#21) --
UpscaleImageOpt = Annotated[Optional[Path], typer.Option("--image", *flags("init_img"), help="The image to upscale 4x.", metavar="PATH", rich_help_panel=ESSENTIALS)]
NoiseLevelOpt = Annotated[int, typer.Option("--noise-level", "--noise_level", help="Noise added to the input first, 0..350.", metavar="N", rich_help_panel=ESSENTIALS)]
UpscaleFitOpt = Annotated[UpscaleFit, typer.Option("--upscale-fit", help="floor: resize to multiples of 64; pad: repeat edges.", metavar="MODE", case_sensitive=False, rich_help_panel=ESSENTIALS)]
UpscaleTileOpt = Annotated[int, typer.Option("--tile", help="UNet tiles of N input pixels (0 = whole; pixels differ).", metavar="N", rich_help_panel=QUALITY)]
# -- end of upscale --
# ControlNet (docs/controlnet.md): txt2img, img2img and inpaint; the unit flags repeat, one per --control-net.
ControlNetOpt = Annotated[Optional[list[Path]], typer.Option("--control-net", help="ControlNet file (v1.1, diffusers, fp16); repeat for several.", metavar="FILE", rich_help_panel=CONTROL)]
ControlNetConfigOpt = Annotated[Optional[Path], typer.Option("--control-net-config", help="ControlNet YAML (default: beside the file, or cldm_v15.yaml).", metavar="YAML", rich_help_panel=CONTROL)]
ControlImageOpt = Annotated[Optional[list[Path]], typer.Option("--control-image", help="The image the ControlNet follows; one per --control-net.", metavar="IMG", rich_help_panel=CONTROL)]
ControlPreprocessOpt = Annotated[Optional[list[str]], typer.Option("--control-preprocess", help="Hint from the image: none (the image is the hint), canny, ...", metavar="NAME", show_default=False, rich_help_panel=CONTROL)]
CannyLowOpt = Annotated[int, typer.Option("--canny-low", help="Canny's low threshold.", metavar="N", rich_help_panel=CONTROL)]
CannyHighOpt = Annotated[int, typer.Option("--canny-high", help="Canny's high threshold.", metavar="N", rich_help_panel=CONTROL)]
DetectResolutionOpt = Annotated[Optional[int], typer.Option("--detect-resolution", help="Preprocess at this short side (default: the output's).", metavar="N", show_default=False, rich_help_panel=CONTROL)]
ControlStrengthOpt = Annotated[Optional[list[float]], typer.Option("--control-strength", help="How strongly it steers (default 1); one per --control-net.", metavar="S", show_default=False, rich_help_panel=CONTROL)]
GuessModeOpt = Annotated[bool, typer.Option("--guess-mode", help="Guess mode: decaying scales, no control on the negative pass.", rich_help_panel=CONTROL)]
ControlStartOpt = Annotated[float, typer.Option("--control-start", help="Steer from this fraction of the steps.", metavar="X", rich_help_panel=CONTROL)]
ControlEndOpt = Annotated[float, typer.Option("--control-end", help="Stop steering after this fraction of the steps.", metavar="X", rich_help_panel=CONTROL)]
AnnotatorWeightsOpt = Annotated[Optional[Path], typer.Option("--annotator-weights", help="The annotator's local weights (hed, lineart, mlsd, depth).", metavar="FILE", rich_help_panel=CONTROL)]
SaveHintOpt = Annotated[Optional[Path], typer.Option("--save-hint", help="Also write the hint the model saw (unit k: name-k.png).", metavar="PNG", rich_help_panel=CONTROL)]
# info and verify.
ImagesArg = Annotated[list[Path], typer.Argument(help="PNG files.", metavar="IMAGE", show_default=False)]
InfoJsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per image: the fields of txt2img --json, and every recorded field under \"parameters\".")]
VerifyJsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per image: path, watermark (the text found, or null), score (0.5 is chance), and a note where one applies.")]
ModelsJsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per checkpoint: name, path, where, family (or null and a problem), size_bytes, hash (or null), builtin.")]
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


# Option groups: each function's signature is a group of options (its body is never run); the
# shared groups come first, then each command's own, whose docstring is the command's help.


def leading_options(
    ctx: typer.Context, prompt_arg: PromptArg = None, prompt: PromptOpt = None, negative_prompt: NegativeOpt = default("negative_prompt"),
    ckpt: CkptOpt = None,
): ...


def sampling_options(
    steps: StepsOpt = default("steps"), scale: ScaleOpt = default("scale"), seed: SeedOpt = default("seed"),
    sampler: SamplerOpt = default("sampler"), schedule: ScheduleOpt = None, plms: PlmsOpt = False, dpm: DpmOpt = False, dpm_solver: DpmSolverOpt = False,
    eta: EtaOpt = default("eta"),
): ...


def run_options(
    outdir: OutdirOpt = None, output: OutputOpt = None,
    n_samples: SamplesOpt = default("n_samples"), n_iter: IterOpt = default("n_iter"),
    from_file: FromFileOpt = None, repeat: RepeatOpt = 1, xy: XyOpt = None, n_rows: RowsOpt = 0,
    skip_grid: SkipGridOpt = False, skip_save: SkipSaveOpt = False, fixed_code: FixedCodeOpt = False,
    config: ConfigOpt = None, ema: EmaOpt = False, vae: VaeOpt = default("vae"), lora: LoraOpt = None, lora_dir: LoraDirOpt = LORA_DIR,
    embeddings: EmbeddingsOpt = None, emphasis: EmphasisOpt = Emphasis(default("emphasis")), clip_skip: ClipSkipOpt = default("clip_skip"),
    device: DeviceOpt = "auto", precision: PrecisionOpt = "auto", threads: ThreadsOpt = None,
    compile_unet: CompileOpt = False, vae_tiling: VaeTilingOpt = False, offload: OffloadOpt = False,
    backend: BackendOpt = "torch",
    name: NameOpt = default("name"), skip_existing: SkipExistingOpt = False, json_out: JsonOpt = False,
    on_error: OnErrorOpt = OnError.stop, from_png: FromPngOpt = None, no_watermark: NoWatermarkOpt = False,
    server: ServerOpt = None, quiet: QuietOpt = False, progress: ProgressOpt = ProgressMode.auto, preview: PreviewOpt = None,
    debug: DebugOpt = False,
    C: ChannelsOpt = 4, f: FactorOpt = 8,
    laion400m: Laion400mOpt = False, torchscript: TorchscriptOpt = False, ipex: IpexOpt = False, bf16: Bf16FlagOpt = False,
): ...


def refiner_options(
    refiner: RefinerOpt = None, refiner_config: RefinerConfigOpt = None,
    refiner_strength: RefinerStrengthOpt = default("refiner_strength"), refiner_steps: RefinerStepsOpt = default("refiner_steps"),
    aesthetic_score: AestheticScoreOpt = default("aesthetic_score"),
    negative_aesthetic_score: NegativeAestheticScoreOpt = default("negative_aesthetic_score"),
): ...


def sdxl_size_options(
    original_width: OriginalWidthOpt = None, original_height: OriginalHeightOpt = None,
    crop_top: CropTopOpt = None, crop_left: CropLeftOpt = None,
    target_width: TargetWidthOpt = None, target_height: TargetHeightOpt = None,
): ...


def control_options(
    control_net: ControlNetOpt = None, control_net_config: ControlNetConfigOpt = None, control_image: ControlImageOpt = None,
    control_preprocess: ControlPreprocessOpt = None, canny_low: CannyLowOpt = 100, canny_high: CannyHighOpt = 200,
    detect_resolution: DetectResolutionOpt = None, control_strength: ControlStrengthOpt = None, guess_mode: GuessModeOpt = False,
    control_start: ControlStartOpt = 0.0, control_end: ControlEndOpt = 1.0, save_hint: SaveHintOpt = None,
    annotator_weights: AnnotatorWeightsOpt = None,
): ...


def txt2img_options():
    """Generate images from a text prompt."""


def txt2img_size_options(
    width: WidthOpt = default("width"), height: HeightOpt = default("height"),
    hires_scale: HiresScaleOpt = default("hires_scale"), hires_steps: HiresStepsOpt = default("hires_steps"),
    hires_strength: HiresStrengthOpt = default("hires_strength"), hires_upscaler: HiresUpscalerOpt = default("hires_upscaler"),
): ...


def img2img_options(init_img: InitImgOpt = default("init_img"), strength: StrengthOpt = default("strength")):
    """Change an image following a prompt (its size is floored to multiples of 64)."""


def inpaint_options(
    init_img: ImageOpt = default("init_img"), mask: MaskOpt = default("mask"), invert_mask: InvertMaskOpt = False,
    mask_blur: MaskBlurOpt = default("mask_blur"), paste_back: PasteBackOpt = True, outpaint: OutpaintOpt = None,
    strength: InpaintStrengthOpt = 1.0,  # not img2img's default: the original inpaints from noise
):
    """Repaint the masked part of an image (white in --mask, or its transparent pixels).

    Inpainting checkpoints (9-channel UNet: SD 1.5 / SD 2 inpainting) get the mask and the masked
    image as extra UNet input, as the original. Ordinary 4-channel checkpoints inpaint by blending
    the kept area's noised latent back in after every step. The image keeps its size (padded to
    multiples of 64 for the model and cropped back); the kept pixels are pasted back unchanged.
    """


def depth2img_options(
    init_img: ImageOpt = default("init_img"),
    strength: DepthStrengthOpt = 0.9,  # not img2img's default: the original depth2img's
    depth_map: DepthMapOpt = None, depth_model: DepthModelOpt = None, save_depth: SaveDepthOpt = None,
):
    """Change an image following a prompt, keeping its depth (the SD 2 depth model).

    The checkpoint is 512-depth-ema. The depth comes from MiDaS DPT-Hybrid, built from the
    checkpoint's own depth_model.* weights (or --depth-model), or from --depth-map. The image's
    size is floored to multiples of 64.
    """


def upscale_options(
    init_img: UpscaleImageOpt = default("init_img"), noise_level: NoiseLevelOpt = 20,
    upscale_fit: UpscaleFitOpt = UpscaleFit.floor, tile: UpscaleTileOpt = 0,
):
    """Upscale an image 4x following a prompt (the SD 2 x4 upscaler, x4-upscaler-ema.ckpt).

    The input is fitted to multiples of 64 (--upscale-fit), noised to --noise-level and given to the
    UNet beside the latent, as the original superresolution scripts do. --tile and --vae-tiling bound
    the memory of large inputs (a 512x512 input makes a 2048x2048 image).
    """

