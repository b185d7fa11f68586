"""The SDXL base and its refiner, as the generative-models demo runs them ("Finish denoising with refiner"):

1. The base samples with its schedule cut by the refiner's strength (Txt2NoisyDiscretizationWrapper,
   sampling/sgm.py): 0.15 of 20 steps stops at t = 99 after 18 steps. Its latent, still noisy, is
   handed over undecoded.
2. The refiner conditions on the same prompt and negative prompt with its own text tower, original
   size = the latent's size x 8, crop (0, 0) and the aesthetic scores (6.0 / 2.5 by default); it
   encodes even an empty negative prompt.
3. It runs img2img's share of its own schedule (Img2ImgDiscretizationWrapper(strength) over
   --refiner-steps) from that latent, adding no noise (sampling/denoising.py's REFINER rule), with
   the same sampler and guidance scale, and decodes with its own VAE.

With --offload both models wait in host memory and the base's last part leaves the GPU before the
refiner's first comes in (make_room). Both stages go through the one start and denoise of
sampling/denoising.py; the images' noise generators run on from the base into the refiner, as the
demo's global generator does.
"""

from dataclasses import dataclass

import torch

from sd_cli.errors import UsageError
from sd_cli.fields import default
from sd_cli.pipelines.conditioning import AESTHETIC_SCORES, guided_model
from sd_cli.pipelines.img2img import img2img_latents, init_latents
from sd_cli.pipelines.txt2img import txt2img_latents
from sd_cli.sampling import denoising
from sd_cli.sampling.denoising import SamplingParams
from sd_cli.sampling.noise import NoiseSource
from sd_cli.sampling.steps import Progress, StepHooks

DEFAULT_STRENGTH = default("refiner_strength")  # the demo's "Refinement strength", 0.15


@dataclass(frozen=True)
class RefinerOptions:
    """How the refiner finishes a base's image (the same for every job of a run)."""

    strength: float = DEFAULT_STRENGTH  # --refiner-strength: the share of the schedule the refiner runs
    steps: int = 0  # --refiner-steps; 0: the job's --steps
    aesthetic_scores: tuple[float, float] = AESTHETIC_SCORES  # --aesthetic-score, --negative-aesthetic-score

    def __post_init__(self):
        if not 0 <= self.strength <= 1:
            raise UsageError(f"--refiner-strength {self.strength} must be between 0 and 1")
        if self.steps < 0:
            raise UsageError(f"--refiner-steps {self.steps} must be 0 (same as --steps) or more")

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """The refiner's own run: the base's sampler and scale over its own step count."""
        return SamplingParams(params.sampler, self.steps or params.steps, params.scale, params.eta)


def switch_at(strength: float, steps: int) -> float:
    """AUTOMATIC1111's "Refiner switch at" for the demo's strength: the share of the base's `steps` it
    runs before the hand-off, (steps - dropped) / steps (0.15 of 20 steps: 18 / 20 = 0.9)."""
    dropped = max(min(int(strength * (steps + 1)) - 1, steps), 0)
    return (steps - dropped) / steps


@torch.inference_mode()
def txt2img_refined(base, refiner, prompts: list[str], negative_prompts: list[str], seeds: list[int],
                    params: SamplingParams, height: int, width: int, options: RefinerOptions,
                    progress: Progress | None = None) -> torch.Tensor:
    """Decoded images [B, 3, H, W] in [-1, 1]: the base's txt2img handed over to the refiner."""
    noise = NoiseSource(seeds)
    latents = txt2img_latents(base, prompts, negative_prompts, seeds, params, height, width, progress,
                              noise=noise, handoff=options.strength)
    base.make_room()
    return refiner.decode_latents(refine_latents(refiner, latents, prompts, negative_prompts, noise, params,
                                                 options, progress))


@torch.inference_mode()
def img2img_refined(base, refiner, init_image: torch.Tensor, prompts: list[str], negative_prompts: list[str],
                    seeds: list[int], params: SamplingParams, strength: float, options: RefinerOptions,
                    progress: Progress | None = None) -> torch.Tensor:
    """Decoded images [B, 3, H, W] in [-1, 1]: the base's img2img (both cuts of its schedule, as the
    demo wraps them) handed over to the refiner."""
    guided = guided_model(base, prompts, negative_prompts, params.scale, tuple(init_image.shape[-2:]))
    x0 = init_latents(base, init_image, len(prompts))
    noise = NoiseSource(seeds)
    latents = img2img_latents(base, guided, x0, seeds, params, strength, progress, noise=noise,
                              handoff=options.strength)
    base.make_room()
    return refiner.decode_latents(refine_latents(refiner, latents, prompts, negative_prompts, noise, params,
                                                 options, progress))


def refine_latents(refiner, latents: torch.Tensor, prompts: list[str], negative_prompts: list[str],
                   noise: NoiseSource, params: SamplingParams, options: RefinerOptions,
                   progress: Progress | None = None) -> torch.Tensor:
    """The refiner's stage on the base's still-noisy latents [B, 4, h, w]: its denoised latents."""
    size = tuple(side * refiner.family.vae_downsampling for side in latents.shape[-2:])  # the demo: latent x 8
    guided = guided_model(refiner, prompts, negative_prompts, params.scale, size, options.aesthetic_scores)
    second = options.sampling(params)
    x = latents.float().to(refiner.device)
    begin = denoising.start(refiner, second, noise.like(x), x, options.strength, denoising.REFINER)
    return denoising.denoise(refiner, guided, begin, noise, second, StepHooks(progress))
