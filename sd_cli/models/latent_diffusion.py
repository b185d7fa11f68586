"""The whole Stable Diffusion model, with attribute names equal to the checkpoint's key prefixes.

`model.diffusion_model.*` is the UNet, `first_stage_model.*` the VAE, `cond_stage_model.*` the
text encoder (its own key layout: see text_encoder.py for the mapping). The noise schedule
`alphas_cumprod` is a plain float32 CPU tensor, not a buffer, so that moving the model to fp16 or
bf16 never rounds ᾱ (0.99915 is 0.999 in fp16): samplers compute their coefficients from it.
"""

import torch
from torch import nn

from sd_cli import log
from sd_cli.loading.config import ModelConfig
from sd_cli.errors import NumericsError
from sd_cli.models.families import ModelFamily, family_of
from sd_cli.models.unet import UNetModel
from sd_cli.models.vae import AutoencoderKL
from sd_cli.sampling.schedule import alphas_cumprod as linear_alphas_cumprod

# Noise-schedule buffers the original stores at the checkpoint's root; all follow from the config.
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights",  # lvlb_weights: the training loss's weights, persistent in some forks' files
)


def text_encoder_class(name: str):
    from sd_cli.models import text_encoder

    return {"clip": text_encoder.CLIPTextEncoder, "openclip": text_encoder.OpenCLIPTextEncoder}[name]


class DiffusionWrapper(nn.Module):
    """Holds the UNet under `diffusion_model`, as the original's wrapper does (key prefix `model.`)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.diffusion_model = unet


class LatentDiffusion(nn.Module):
    def __init__(self, config: ModelConfig, text_encoder: nn.Module):
        super().__init__()
        self.config = config
        self.model = DiffusionWrapper(UNetModel(**config.unet_params))
        self.first_stage_model = AutoencoderKL(**config.vae_params)
        self.cond_stage_model = text_encoder
        self._no_attachments()
        self.alphas_cumprod = linear_alphas_cumprod(config.linear_start, config.linear_end, config.timesteps)
        self.noise_augmentation = None  # the x4 upscaler's low-res noising (noise_augmentation.py)
        if config.low_scale_params is not None:
            from sd_cli.models.noise_augmentation import NoiseAugmentation

            self.noise_augmentation = NoiseAugmentation.from_config(config.low_scale_params, config.source)

    @property
    def parameterization(self) -> str:
        return self.config.parameterization

    @property
    def family(self) -> ModelFamily:
        """What this model is and which subcommands it serves, from its config (families/)."""
        return family_of(self.config)

    @property
    def text_module(self) -> nn.Module:
        """The part that turns prompts into conditioning (what --offload moves in as "text encoder")."""
        return self.cond_stage_model

    @property
    def text_towers(self) -> list[nn.Module]:
        """The text encoders, the first deciding --clip-skip's range and the embeddings' tokenizer."""
        return [self.cond_stage_model]

    @property
    def watermark_text(self) -> str:
        return self.family.watermark_text

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's dtype: the model's, except where the loader keeps it in float32 (generative-models')."""
        return next(self.first_stage_model.parameters()).dtype

    def _no_attachments(self) -> None:
        """What a run or the loader attaches later (every model class starts with these)."""
        self.offload = None  # --offload: sd_cli/offload.py puts each part on the GPU when it is used
        self.deferred = None  # weights left in the file until torch needs them (loading/deferred.py)
        self.waiting = None  # CPU: the parts a step does not use, read from the file when run (runtime/waiting_parts.py)
        self.depth_weights = None  # a depth model's MiDaS weights until depth2img builds it (loader.py)
        self.control_weights = None  # a ControlNet v1.0 file's control_model.* until a run uses them (loader.py)

    @property
    def device(self) -> torch.device:
        """Where the computation runs (with --offload the weights wait on the CPU in between)."""
        if self.offload is not None:
            return self.offload.device
        if self.deferred is not None:  # the UNet's parameters may be on meta: the loader's device is the model's
            return self.deferred.device
        return next(self.model.parameters()).device

    def _ready(self, part: str, piece: str | None = None) -> None:
        """Before `part` runs: --offload puts it on the GPU; on the CPU the part (or the `piece` of it
        that runs, the VAE's encoder) is read from the file if it waits there."""
        if self.offload is not None:
            self.offload.use(part)
        if self.waiting is not None:
            self.waiting.use(piece or part)

    def make_room(self) -> None:
        """With --offload, move the part on the device back to host memory: another model (the SDXL
        refiner after its base) runs there next. Without --offload the weights stay where they are."""
        if self.offload is not None:
            self.offload.release()

    def encode_text(self, prompts: list[str], options=None) -> torch.Tensor:
        """[B, 77·chunks, D] conditioning for a list of prompts (prompts.py: emphasis, BREAK, long
        prompts, embeddings, clip skip as `options`, a prompts.TextOptions; None: the defaults);
        [B, 77, D], the original's, for a plain prompt of up to 75 tokens."""
        from sd_cli.prompting.prompts import TextOptions, encode_prompts

        self._ready("text encoder")
        return encode_prompts(self.cond_stage_model, prompts, options or TextOptions())

    def unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None,
             control=None) -> torch.Tensor:
        """y: the x4 upscaler's noise level, int64 [B] (class labels stay integers); control: the ControlNets'
        residuals (control/steering.py), added at the skips and the middle block."""
        self._ready("UNet")
        dtype = self.dtype
        if control is None:
            return self.model.diffusion_model(x.to(dtype), t, context.to(dtype), y)
        return self.model.diffusion_model(x.to(dtype), t, context.to(dtype), y, control=control)

    def encode_image(self, image: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> scaled latent [B, 4, H/8, W/8]: the posterior mean (no sampling).

        With `tiled` (--vae-tiling) the VAE encodes overlapping tiles: bounded memory for large inputs.
        """
        self._ready("VAE", "VAE encoder")
        image = image.to(self.device, self.vae_dtype)
        if not tiled:
            mean, _ = self.first_stage_model.encode_moments(image)
        else:
            from sd_cli.runtime.tiling import encode_tiled

            mean = encode_tiled(lambda part: self.first_stage_model.encode_moments(part)[0], image,
                                factor=self._vae_factor()).to(self.vae_dtype)
        return mean * self.config.scale_factor

    def decode_latents(self, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Scaled latent -> image [B, 3, H, W], nominally in [-1, 1]; never NaN or inf.

        With `tiled` (--vae-tiling) the VAE decodes overlapping tiles: bounded memory for large images.

        NaN/inf latents (the UNet overflowed) are an error. A VAE that overflows in fp16/bf16
        (the classic black image) is run once more in float32; if that fails too, an error.
        """
        if not torch.isfinite(latents).all():
            raise NumericsError(f"the UNet produced NaN or inf values in {self.dtype}; no image was saved. "
                                + _nan_advice(self.dtype))
        self._ready("VAE")
        z = latents.to(self.device, self.vae_dtype) / self.config.scale_factor
        images = self._vae_decode(self.first_stage_model, z, tiled)
        if torch.isfinite(images).all():
            return images
        if self.vae_dtype != torch.float32:
            log.warn(f"the VAE produced NaN or inf in {self.vae_dtype}; decoding again in float32")
            images = self._decode_fp32(latents, tiled)
            if torch.isfinite(images).all():
                return images
        raise NumericsError("the VAE produced NaN or inf values even in float32; no image was saved. "
                            "The checkpoint's VAE weights may be broken")

    def _decode_fp32(self, latents: torch.Tensor, tiled: bool) -> torch.Tensor:
        vae, dtype = self.first_stage_model, self.vae_dtype
        vae.float()  # fp16/bf16 -> fp32 -> fp16/bf16 is exact, so the weights come back unchanged
        try:
            return self._vae_decode(vae, latents.to(self.device, torch.float32) / self.config.scale_factor, tiled)
        finally:
            vae.to(dtype)

    def _vae_decode(self, vae, z: torch.Tensor, tiled: bool) -> torch.Tensor:
        if not tiled:
            return vae.decode(z)
        from sd_cli.runtime.tiling import decode_tiled

        return decode_tiled(vae.decode, z, factor=self._vae_factor())

    def _vae_factor(self) -> int:
        """Pixels per latent cell a side: the VAE halves the size at every level but the last."""
        return 2 ** (len(self.config.vae_params["ddconfig"]["ch_mult"]) - 1)


def _nan_advice(dtype: torch.dtype) -> str:
    """What to try after a NaN: in half precision float32 first; in float32 precision is not the cause."""
    if dtype == torch.float32:
        return ("It ran in float32 already: try other settings (a lower --scale, another --sampler); if every "
                "setting fails, the checkpoint's UNet weights may be broken")
    return "Try --precision fp32 or other settings (a lower --scale)"
