"""Hires fix (AUTOMATIC1111's "Latent" upscaler): txt2img at the asked size, the latent upscaled
×scale, then a second img2img pass on that latent with --hires-strength.

The second pass is img2img's (pipelines/img2img.py) on a latent instead of an encoded image, with
its start rule (sampling/denoising.py). The final size is floored to a multiple of 64.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sd_cli import log
from sd_cli.errors import UsageError
from sd_cli.fields import HIRES_UPSCALER_LABELS, SIZE_MULTIPLE
from sd_cli.pipelines.conditioning import guided_model
from sd_cli.pipelines.img2img import img2img_latents
from sd_cli.pipelines.txt2img import txt2img_latents
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.steps import Progress

INTERPOLATION = {"latent": "bilinear", "latent-nearest": "nearest"}  # --hires-upscaler -> F.interpolate mode


@dataclass(frozen=True)
class HiresOptions:
    scale: float = 2.0  # --hires-scale
    steps: int = 0  # --hires-steps; 0: the first pass's steps
    strength: float = 0.7  # --hires-strength: AUTOMATIC1111's "Denoising strength" of the second pass
    upscaler: str = "latent"  # "latent" (bilinear) or "latent-nearest"

    def __post_init__(self):
        if self.scale < 1:
            raise UsageError(f"--hires-scale {self.scale} must be at least 1")
        if self.steps < 0:
            raise UsageError(f"--hires-steps {self.steps} must be 0 (same as --steps) or more")
        if not 0 <= self.strength <= 1:
            raise UsageError(f"--hires-strength {self.strength} must be between 0 and 1")
        if self.upscaler not in INTERPOLATION:
            raise UsageError(f"--hires-upscaler {self.upscaler}: choose {' or '.join(INTERPOLATION)}")

    @property
    def upscaler_label(self) -> str:
        return HIRES_UPSCALER_LABELS[self.upscaler]

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the second pass: ×scale, floored to a multiple of 64."""
        return tuple(max(SIZE_MULTIPLE, int(side * self.scale) // SIZE_MULTIPLE * SIZE_MULTIPLE) for side in (height, width))


@torch.inference_mode()
def txt2img_hires(model, prompts: list[str], negative_prompts: list[str], seeds: list[int],
                  params: SamplingParams, height: int, width: int, hires: HiresOptions,
                  progress: Progress | None = None) -> torch.Tensor:
    """Decoded images [B, 3, H·scale, W·scale] in [-1, 1]."""
    # 1. The first pass, kept as latents [B, 4, H/8, W/8].
    latents = txt2img_latents(model, prompts, negative_prompts, seeds, params, height, width, progress)
    # 2. Upscale the latent.
    big_h, big_w = hires.target_size(height, width)
    log.info(f"hires fix: {width}x{height} -> {big_w}x{big_h}, strength {hires.strength}")
    mode = INTERPOLATION[hires.upscaler]
    x0 = F.interpolate(latents.float(), size=model.family.latent_shape(big_h, big_w)[1:],
                       mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    # 3. img2img on the upscaled latent.
    second = SamplingParams(params.sampler, hires.steps or params.steps, params.scale, params.eta)
    guided = guided_model(model, prompts, negative_prompts, params.scale, (big_h, big_w))
    return model.decode_latents(img2img_latents(model, guided, x0, seeds, second, hires.strength, progress))
