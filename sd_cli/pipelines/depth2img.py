"""depth2img on a loaded SD 2 depth model: an image (and optionally a depth image) and prompts in,
images in [-1, 1] out. As the original v2 depth2img scripts (docs/reference/original-scripts.md §7.5, §4.4):

1. MiDaS input: the image in [0, 1], resized bicubic (cv2.INTER_CUBIC's kernel, a = -0.75) so that
   the side whose scale to 384 is closer to 1 becomes about 384, both sides rounded to multiples of
   32 (numpy's round, half to even), then normalised to [-1, 1].
2. MiDaS DPT-Hybrid (models/midas.py) gives relative inverse depth (larger = nearer) at that size.
3. Conditioning: bicubic resize to latent size, then per-image min-max to [-1, 1]; it is the UNet's
   fifth input channel, the same in both guidance branches. A constant map (the scripts divide by
   zero: NaN) becomes -1, the limit of the training code's +0.001 epsilon.
4. Start (sampling/denoising.py, the DEPTH2IMG rule): t_enc = min(int(strength · steps), steps - 1);
   the image latent (VAE posterior mean) noised to DDIM index t_enc with each image's first draw, or
   that draw itself at strength 1, then denoised from index t_enc - 1 (the original's off-by-one).
   The k-diffusion samplers follow img2img's start.

--depth-map replaces 1-2 with a depth image (greyscale, white = near) resized straight to latent size.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sd_cli import log
from sd_cli.errors import UsageError
from sd_cli.loading.strict import compare
from sd_cli.models.latent_diffusion import LatentDiffusion
from sd_cli.pipelines.conditioning import guided_model
from sd_cli.sampling import denoising
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.steps import Progress, StepHooks

MIDAS_SIDE = 384
MIDAS_MULTIPLE = 32


@dataclass(frozen=True)
class DepthOptions:
    """Where depth2img's depth comes from and where it goes (the same for every job of a run)."""

    depth_map: Path | None = None  # a depth image (white = near) to use instead of MiDaS
    depth_model: Path | None = None  # a dpt_hybrid weights file, for checkpoints without depth_model.*
    save_depth: Path | None = None  # write the depth map used as a PNG


def check_depth_model(model: LatentDiffusion) -> None:
    model.family.check_serves("depth2img")


@torch.inference_mode()
def depth2img(model: LatentDiffusion, init_image: torch.Tensor, depth: torch.Tensor, prompts: list[str],
              negative_prompts: list[str], seeds: list[int], params: SamplingParams, strength: float,
              progress: Progress | None = None) -> torch.Tensor:
    """init_image [1, 3, H, W] in [-1, 1]; depth [1, 1, h, w] (any size, larger = nearer) -> [B, 3, H, W]."""
    check_depth_model(model)
    batch, device = len(prompts), model.device
    latent_shape = model.family.latent_shape(*init_image.shape[-2:])
    # 1. Text conditioning, and the depth channel (the same in both guidance branches).
    guided = guided_model(model, prompts, negative_prompts, params.scale)
    guided.concat = depth_conditioning(depth.to(device, torch.float32), latent_shape[1:]).expand(batch, -1, -1, -1)
    # 2. The image latent: the VAE posterior mean times scale_factor.
    x0 = model.encode_image(init_image).float().expand(batch, -1, -1, -1)
    # 3. Noise it to DDIM index t_enc with each image's first draw (strength 1: the draw alone).
    noise = NoiseSource(seeds)
    first = noise.draw(latent_shape, device)
    begin = denoising.start(model, params, first, x0, strength, denoising.DEPTH2IMG)
    # 4. Denoise from index t_enc - 1 down, then decode.
    latents = denoising.denoise(model, guided, begin, noise, params, StepHooks(progress))
    return model.decode_latents(latents)


def depth_conditioning(depth: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, h, w] depth -> [B, 1, H/8, W/8] in [-1, 1]: bicubic to latent size, min-max per image."""
    depth = F.interpolate(depth, size=latent_size, mode="bicubic", align_corners=False)
    low = torch.amin(depth, dim=(1, 2, 3), keepdim=True)
    high = torch.amax(depth, dim=(1, 2, 3), keepdim=True)
    span = high - low
    if (span == 0).any():
        log.warn("the depth map is constant: the depth conditioning is flat (-1 everywhere)")
    return torch.where(span > 0, 2.0 * (depth - low) / span.clamp_min(torch.finfo(depth.dtype).tiny) - 1.0, -1.0)


# ---------------------------------------------------------------- MiDaS


def midas_size(height: int, width: int) -> tuple[int, int]:
    """MiDaS "minimal" resize: keep the aspect, scale as little as possible towards 384, multiples of 32."""
    scale_h, scale_w = MIDAS_SIDE / height, MIDAS_SIDE / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    side = lambda n: max(MIDAS_MULTIPLE, int(np.round(scale * n / MIDAS_MULTIPLE)) * MIDAS_MULTIPLE)  # noqa: E731
    return side(height), side(width)


def midas_input(image: torch.Tensor) -> torch.Tensor:
    """[1, 3, H, W] in [-1, 1] -> the DPT's input [1, 3, h, w], normalised (x - 0.5) / 0.5."""
    x = (image.float() + 1.0) * 0.5
    x = F.interpolate(x, size=midas_size(*image.shape[-2:]), mode="bicubic", align_corners=False)
    return (x - 0.5) / 0.5


@torch.inference_mode()
def estimate_depth(model: LatentDiffusion, image: torch.Tensor, depth_model_path: Path | None = None) -> torch.Tensor:
    """MiDaS relative inverse depth [1, 1, h, w] of an image [1, 3, H, W] in [-1, 1], at MiDaS's size."""
    estimator = depth_estimator(model, depth_model_path)
    x = midas_input(image).to(model.device, next(estimator.parameters()).dtype)
    return estimator(x).float().unsqueeze(1)


def depth_estimator(model: LatentDiffusion, path: Path | None = None) -> torch.nn.Module:
    """The model's MiDaS, built on first use from --depth-model or the checkpoint's depth_model.model.*.

    Cached as `model.depth_model.model`, so its state dict keys are the checkpoint's.
    """
    cached = getattr(model, "depth_model", None)
    if cached is not None:
        return cached.model
    from sd_cli.models.midas import build_dpt_hybrid

    weights, source = _depth_weights(model, path)
    estimator = build_dpt_hybrid(weights)
    _load_strict(estimator, weights, source)
    holder = torch.nn.Module()
    # float32 whatever the model's precision: the original ran it under autocast (its weight-standardised
    # convolutions' normalisation in float32), and it runs once per input image.
    holder.model = estimator.to(model.device, torch.float32).eval()
    model.depth_model = holder
    model.depth_weights = None
    log.info(f"MiDaS DPT-Hybrid from {source}")
    return holder.model


def _depth_weights(model: LatentDiffusion, path: Path | None) -> tuple[dict, str]:
    if path is not None:
        from sd_cli.loading.checkpoint import read_checkpoint

        weights = read_checkpoint(path).state_dict
        prefix = "depth_model.model."
        if any(key.startswith(prefix) for key in weights):  # an SD depth checkpoint given as --depth-model
            weights = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
        return weights, str(path)
    weights = getattr(model, "depth_weights", None)
    if not weights:
        raise UsageError("this checkpoint has no MiDaS weights (depth_model.*): pass --depth-model "
                         "dpt_hybrid-midas-501f0c75.pt, or a depth image with --depth-map")
    return weights, "the checkpoint's depth_model.model.*"


def _load_strict(estimator: torch.nn.Module, weights: dict, source: str) -> None:
    compare(estimator.state_dict(), weights).raise_if_any(f"{source} is not a MiDaS DPT-Hybrid", noun="")
    estimator.load_state_dict(weights, strict=True, assign=True)


# ---------------------------------------------------------------- depth images


def load_depth_map(path: Path) -> torch.Tensor:
    """A depth image (grey, white = near; any PIL mode, 16-bit at full precision) as [1, 1, h, w] float32 in [0, 1]."""
    from sd_cli.files.images import grey_levels, open_image

    levels = grey_levels(open_image(Path(path), "depth map"), path, "depth map")
    return torch.from_numpy(levels)[None, None]


def depth_preview(depth: torch.Tensor) -> np.ndarray:
    """[1, 1, h, w] depth -> [h, w] uint8, min-max to 0..255 (truncated) as the original's preview."""
    d = depth[0, 0].float().cpu()
    span = (d.max() - d.min()).item()
    scaled = (d - d.min()) / span if span > 0 else torch.zeros_like(d)
    return (scaled.numpy() * 255.0).astype(np.uint8)


class DepthSource:
    """The depth map of each init image: given (--depth-map) or estimated once, saved when asked."""

    def __init__(self, options: DepthOptions):
        self.options = options
        self._cache: dict = {}
        self._saved = 0

    def for_image(self, model: LatentDiffusion, key, image: torch.Tensor) -> torch.Tensor:
        if key not in self._cache:
            self._cache.clear()
            if self.options.depth_map is not None:
                depth = load_depth_map(self.options.depth_map)
            else:
                depth = estimate_depth(model, image, self.options.depth_model)
            self._save(depth, image.shape[-2:])
            self._cache[key] = depth
        return self._cache[key]

    def _save(self, depth: torch.Tensor, size) -> None:
        """The depth map at the image's size (bicubic), min-max to 0..255; usable again as --depth-map."""
        if self.options.save_depth is None:
            return
        from sd_cli.files.output import save_image

        depth = F.interpolate(depth, size=tuple(size), mode="bicubic", align_corners=False)

        path = Path(self.options.save_depth)
        if self._saved:  # another input image: depth.png, depth-1.png, ...
            path = path.with_name(f"{path.stem}-{self._saved}{path.suffix}")
        save_image(depth_preview(depth), path)  # atomic, and never onto a device or pipe, as every output
        self._saved += 1
        log.info(f"depth map written to {path}")
