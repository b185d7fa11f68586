"""generative-models' DiffusionEngine (SDXL, its refiner, SD-Turbo), with attribute names equal to
the checkpoint's key prefixes: `model.diffusion_model.*` the UNet, `first_stage_model.*` the VAE,
`conditioner.embedders.N.*` the text towers (sdxl_conditioning.py).

It offers the calls LatentDiffusion offers, so the pipelines and samplers take either; what differs:
- encode_text gives a TextConditioning (crossattn and pooled vector), and `vector` builds the UNet's y;
- unet(x, t, context, y) takes that vector;
- the VAE stays in float32 whatever the run's precision (`disable_first_stage_autocast`: the SDXL VAE
  overflows in fp16); the loader keeps its weights so;
- sigma_table is the DiscreteDenoiser's σ table, from the config's discretization (sampling/sgm.py).
"""

import functools

import torch
from torch import nn

from sd_cli.loading.config import ModelConfig
from sd_cli.models.latent_diffusion import DiffusionWrapper, LatentDiffusion
from sd_cli.models.sdxl_conditioning import SDXLConditioner, SizeConditioning, SizeFlags, TextConditioning, returns_pooled
from sd_cli.models.unet import UNetModel
from sd_cli.models.vae import AutoencoderKL
from sd_cli.sampling import sgm
from sd_cli.sampling.schedule import alphas_cumprod as linear_alphas_cumprod


class DiffusionEngine(LatentDiffusion):
    def __init__(self, config: ModelConfig, conditioner: SDXLConditioner):
        nn.Module.__init__(self)
        self.config = config
        self.model = DiffusionWrapper(UNetModel(**config.unet_params))
        self.first_stage_model = AutoencoderKL(**config.vae_params)
        self.conditioner = conditioner
        self._no_attachments()
        self.alphas_cumprod = linear_alphas_cumprod(config.linear_start, config.linear_end, config.timesteps)

    @functools.cached_property
    def sigma_table(self) -> torch.Tensor:
        """The DiscreteDenoiser's [1000] σ, ascending, float32 on the CPU (computed once, on first use)."""
        config = self.config
        return sgm.sigma_table(config.linear_start, config.linear_end, config.timesteps)

    @property
    def text_module(self) -> nn.Module:
        return self.conditioner

    @property
    def text_towers(self) -> list[nn.Module]:
        return self.conditioner.text_encoders

    def encode_text(self, prompts: list[str], options=None) -> TextConditioning:
        """crossattn [B, 77·chunks, context_dim] and the pooled vector [B, P] of the prompts.

        Each tower encodes its own tokens as for SD 1.x/2.x (prompts.py: emphasis, BREAK, long prompts,
        embeddings, clip skip), and the pooled vector comes from each prompt's first chunk, as
        AUTOMATIC1111 does; a plain prompt of up to 75 tokens gives the original conditioner's values.
        """
        from sd_cli.prompting.prompts import TextOptions, encode_prompts, first_chunk_pooled

        options = options or TextOptions()
        self._ready("text encoder")
        outputs = []
        for tower in self.conditioner.text_encoders:
            pooled = first_chunk_pooled(tower, prompts, options) if returns_pooled(tower) else None
            outputs.append((encode_prompts(tower, prompts, options), pooled))
        return self.conditioner.join_text(outputs)

    def vector(self, text: TextConditioning, sizes: SizeConditioning) -> torch.Tensor | None:
        return self.conditioner.vector(text, sizes)

    def size_conditioning(self, size: tuple[int, int], aesthetic_score: float | None) -> SizeConditioning:
        """The demo's size conditioning of an image of size (height, width): its own size, no crop
        (run/session.py's applies the run's --original-*, --crop-*, --target-* flags)."""
        return SizeFlags().conditioning(size, aesthetic_score)

    def unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None):
        self._ready("UNet")
        dtype = self.dtype
        return self.model.diffusion_model(x.to(dtype), t, context.to(dtype), None if y is None else y.to(dtype))
