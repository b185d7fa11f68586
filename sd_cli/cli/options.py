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

from sd_cli.fields import EMBEDDINGS_DIR, LORA_DIR, default, flags
from sd_cli.sampling.samplers import SAMPLERS, SCHEDULES


class OnError(str, Enum):
    stop = "stop"
    continue_ = "continue"


class Emphasis(str, Enum):
    original = "original"
    none = "none"


# Shared option types: one definition per flag, used by every subcommand.
PromptArg = Annotated[Optional[str], typer.Argument(help="The prompt (same as --prompt).", show_default=False)]
PromptOpt = Annotated[Optional[str], typer.Option(*flags("prompt"), help="What to draw.")]
NegativeOpt = Annotated[str, typer.Option(*flags("negative_prompt"), help="What to steer away from (the unconditional branch).")]
StepsOpt = Annotated[int, typer.Option(*flags("steps"), help="Sampling steps (DDIM/PLMS run the original's count for it).")]
ScaleOpt = Annotated[float, typer.Option(*flags("scale"), help="Classifier-free guidance scale; 1.0 skips the unconditional pass.")]
SeedOpt = Annotated[Optional[int], typer.Option(*flags("seed"), help="Base seed; image i uses seed+i. Random (and printed) if not given.")]
SamplerOpt = Annotated[str, typer.Option(*flags("sampler"), help=f"Sampler: {', '.join(SAMPLERS)}, or an AUTOMATIC1111 name (\"Euler a\", \"DPM++ 2M Karras\"); any case.")]
ScheduleOpt = Annotated[Optional[str], typer.Option("--schedule", help=f"σ schedule of the k-diffusion samplers: {', '.join(SCHEDULES)} (default: the sampler's own; the original ddim/plms/dpm have none).", show_default=False)]
PlmsOpt = Annotated[bool, typer.Option("--plms", help="Same as --sampler plms (original flag).")]
DpmOpt = Annotated[bool, typer.Option("--dpm", help="Same as --sampler dpm (v2 flag; --plms wins over it, as in v2).")]
DpmSolverOpt = Annotated[bool, typer.Option("--dpm_solver", help="Same as --sampler dpm (v1 flag; wins over --plms, as in v1).")]
EtaOpt = Annotated[float, typer.Option(*flags("eta"), help="DDIM eta (0 = deterministic).")]
HeightOpt = Annotated[Optional[int], typer.Option(*flags("height"), help="Image height in pixels, a multiple of 64 (default: the model's native size).")]
WidthOpt = Annotated[Optional[int], typer.Option(*flags("width"), help="Image width in pixels, a multiple of 64 (default: the model's native size).")]
ChannelsOpt = Annotated[int, typer.Option("--C", help="Latent channels (original flag; must be 4).")]
FactorOpt = Annotated[int, typer.Option("--f", help="Downsampling factor (original flag; must be 8).")]
SamplesOpt = Annotated[int, typer.Option(*flags("n_samples"), help="Images per prompt per iteration (the batch size).")]
IterOpt = Annotated[int, typer.Option(*flags("n_iter"), help="How many times to repeat the batches.")]
RowsOpt = Annotated[int, typer.Option("--n-rows", "--n_rows", help="Grid images per row (0 = n-samples).")]
SkipGridOpt = Annotated[bool, typer.Option("--skip-grid", "--skip_grid", help="Do not write the grid.")]
SkipSaveOpt = Annotated[bool, typer.Option("--skip-save", "--skip_save", help="Do not write the individual samples.")]
FixedCodeOpt = Annotated[bool, typer.Option("--fixed-code", "--fixed_code", help="Every image uses the base seed's noise.")]
FromFileOpt = Annotated[Optional[str], typer.Option("--from-file", help="Prompt file ('-' for stdin): plain lines, JSON Lines or AUTOMATIC1111 '--prompt ... --seed 5' lines.")]
OnErrorOpt = Annotated[OnError, typer.Option("--on-error", help="When an image or prompt-file line fails: stop, or continue and exit 3.", case_sensitive=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="stdout: one JSON object per written image (path, seed, prompt, parameters, timings).")]
NameOpt = Annotated[Optional[str], typer.Option(*flags("name"), help="File name template inside --outdir, e.g. '{index:05}-{seed}-{prompt_slug}.png'.")]
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
OffloadOpt = Annotated[bool, typer.Option("--offload", help="Low GPU memory: keep the model in host memory and put only the part at work (text encoder, UNet, VAE) on the GPU; costs one copy of each part in and back per batch.")]
EmphasisOpt = Annotated[Emphasis, typer.Option(*flags("emphasis"), help="original: AUTOMATIC1111's (word), ((word)), [word], (word:1.3) weights (\\( for a literal bracket); none: brackets are plain text.", case_sensitive=False)]
ClipSkipOpt = Annotated[Optional[int], typer.Option(*flags("clip_skip"), help="Use the text encoder's output N blocks from the end (AUTOMATIC1111's Clip skip; 2 = penultimate). Default: the model's own (SD 1.x 1, SD 2.x 2).", show_default=False)]
EmbeddingsOpt = Annotated[Optional[Path], typer.Option("--embeddings", help=f"Textual inversion folder (.pt/.safetensors, used by file name in the prompt); default: {EMBEDDINGS_DIR.as_posix()} if it exists.", show_default=False)]
VaeOpt = Annotated[Optional[Path], typer.Option(*flags("vae"), help="A separate VAE (.ckpt/.safetensors; original or diffusers key names), e.g. the ft-MSE VAE.")]
LoraOpt = Annotated[Optional[list[str]], typer.Option("--lora", help="LoRA file or name in --lora-dir, PATH[:weight] (weight 1 by default); repeatable. Prompts can also say <lora:name:0.8>.")]
LoraDirOpt = Annotated[Path, typer.Option("--lora-dir", help="Folder where <lora:name:weight> and --lora names are looked up.")]
HiresScaleOpt = Annotated[Optional[float], typer.Option(*flags("hires_scale"), help="Hires fix: upscale the latent by this factor (size floored to multiples of 64), then a second img2img pass.", show_default=False)]
HiresStepsOpt = Annotated[int, typer.Option(*flags("hires_steps"), help="Hires fix: steps of the second pass (0 = --steps).")]
HiresStrengthOpt = Annotated[float, typer.Option(*flags("hires_strength"), help="Hires fix: denoising strength of the second pass, 0..1.")]
HiresUpscalerOpt = Annotated[str, typer.Option(*flags("hires_upscaler"), help="Hires fix: latent (bilinear, AUTOMATIC1111's \"Latent\") or latent-nearest.")]
NoWatermarkOpt = Annotated[bool, typer.Option("--no-watermark", help="Do not embed the invisible watermark.")]
ServerOpt = Annotated[Optional[str], typer.Option("--server", envvar="SD_CLI_SERVER", help="Render on a running `sd-cli serve` (URL, e.g. http://127.0.0.1:7860; http://USER:PASSWORD@host:port for auth) and write the files here: txt2img, img2img, inpaint with --mask.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
StrengthOpt = Annotated[float, typer.Option(*flags("strength"), help="img2img: how much to change the input, 0..1 (1 = start from noise).")]
InitImgOpt = Annotated[Optional[Path], typer.Option(*flags("init_img"), help="img2img: the input image.")]
ImageOpt = Annotated[Optional[Path], typer.Option("--image", *flags("init_img"), help="The input image.")]
MaskOpt = Annotated[Optional[Path], typer.Option(*flags("mask"), help="Mask image: white = repaint, black = keep; converted to grey and binarised at 50% as the original. Default: the image's transparent pixels.")]
InvertMaskOpt = Annotated[bool, typer.Option("--invert-mask", help="Repaint the black part of the mask instead of the white.")]
MaskBlurOpt = Annotated[float, typer.Option(*flags("mask_blur"), help="Gaussian blur of the mask in pixels (AUTOMATIC1111's 'Mask blur'): soft paste-back edges; 0 = the original's hard mask.")]
PasteBackOpt = Annotated[bool, typer.Option("--paste-back/--no-paste-back", help="Copy the kept pixels from the input into the result, so they are unchanged (the original returns the whole VAE output).")]
OutpaintOpt = Annotated[Optional[str], typer.Option("--outpaint", help="LEFT,RIGHT,UP,DOWN: add that many pixels on each side (filled with the nearest edge pixels) and paint them.")]
InpaintStrengthOpt = Annotated[float, typer.Option(*flags("strength"), help="1 (default): the masked area is painted from noise, as the original; below 1: start from the image noised that far (img2img's rule).")]
DepthStrengthOpt = Annotated[float, typer.Option(*flags("strength"), help="How much to change the input, 0..1: noise to index min(int(strength*steps), steps-1) as the original depth2img; 1 starts from noise.")]
DepthMapOpt = Annotated[Optional[Path], typer.Option("--depth-map", help="Use this depth image (greyscale, white = near) instead of estimating one with MiDaS.")]
DepthModelOpt = Annotated[Optional[Path], typer.Option("--depth-model", help="MiDaS weights (dpt_hybrid-midas-501f0c75.pt) for a depth checkpoint without depth_model.* weights.")]
SaveDepthOpt = Annotated[Optional[Path], typer.Option("--save-depth", help="Write the depth map used as a PNG (white = near).")]
# info and verify.
ImagesArg = Annotated[list[Path], typer.Argument(help="PNG files.", show_default=False)]
InfoJsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per image (the fields of txt2img --json).")]
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
): ...


def sampling_options(
    steps: StepsOpt = default("steps"), scale: ScaleOpt = default("scale"), seed: SeedOpt = default("seed"),
    sampler: SamplerOpt = default("sampler"), schedule: ScheduleOpt = None, plms: PlmsOpt = False, dpm: DpmOpt = False, dpm_solver: DpmSolverOpt = False,
    eta: EtaOpt = default("eta"),
): ...


def run_options(
    C: ChannelsOpt = 4, f: FactorOpt = 8,
    n_samples: SamplesOpt = default("n_samples"), n_iter: IterOpt = default("n_iter"), n_rows: RowsOpt = 0,
    skip_grid: SkipGridOpt = False, skip_save: SkipSaveOpt = False, fixed_code: FixedCodeOpt = False,
    from_file: FromFileOpt = None, repeat: RepeatOpt = 1, on_error: OnErrorOpt = OnError.stop,
    from_png: FromPngOpt = None, name: NameOpt = default("name"), skip_existing: SkipExistingOpt = False, json_out: JsonOpt = False,
    precision: PrecisionOpt = "auto", device: DeviceOpt = "auto",
    ckpt: CkptOpt = None, config: ConfigOpt = None, ema: EmaOpt = False,
    outdir: OutdirOpt = None, output: OutputOpt = None, no_watermark: NoWatermarkOpt = False, compile_unet: CompileOpt = False, vae_tiling: VaeTilingOpt = False,
    offload: OffloadOpt = False,
    emphasis: EmphasisOpt = Emphasis(default("emphasis")), clip_skip: ClipSkipOpt = default("clip_skip"),
    embeddings: EmbeddingsOpt = None, vae: VaeOpt = default("vae"), lora: LoraOpt = None, lora_dir: LoraDirOpt = LORA_DIR,
    server: ServerOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False,
    laion400m: Laion400mOpt = False, torchscript: TorchscriptOpt = False, ipex: IpexOpt = False, bf16: Bf16FlagOpt = False,
): ...


def txt2img_options():
    """Generate images from a text prompt."""


def txt2img_size_options(
    height: HeightOpt = default("height"), width: WidthOpt = default("width"),
    hires_scale: HiresScaleOpt = default("hires_scale"), hires_steps: HiresStepsOpt = default("hires_steps"),
    hires_strength: HiresStrengthOpt = default("hires_strength"), hires_upscaler: HiresUpscalerOpt = default("hires_upscaler"),
): ...


def img2img_options(init_img: InitImgOpt = default("init_img"), strength: StrengthOpt = default("strength")):
    """Change an input image following a text prompt (the image's size is floored to multiples of 64)."""


def inpaint_options(
    init_img: ImageOpt = default("init_img"), mask: MaskOpt = default("mask"), invert_mask: InvertMaskOpt = False,
    mask_blur: MaskBlurOpt = default("mask_blur"), paste_back: PasteBackOpt = True, outpaint: OutpaintOpt = None,
    strength: InpaintStrengthOpt = 1.0,  # not img2img's default: the original inpaints from noise
):
    """Repaint the masked part of an image (white in --mask, or the image's transparent pixels).

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
    """Change an image following a prompt while keeping its depth (the SD 2 depth model, 512-depth-ema).

    The depth comes from MiDaS DPT-Hybrid, built from the checkpoint's own depth_model.* weights
    (or --depth-model), or from --depth-map. The image's size is floored to multiples of 64.
    """

