"""A run's session: the loaded model beside the options of this run (--emphasis, --clip-skip,
--embeddings, --lora, --vae-tiling), which stay off the model itself.

The pipelines take a session where they take a model: it offers the same calls (encode_text,
unet, encode_image, decode_latents and the model's config, schedule, device and dtype), with
encode_text, encode_image and decode_latents applying the run's options.
"""

from dataclasses import dataclass

import torch

from sd_cli.loading.loader import LoadedModel
from sd_cli.loading.lora import LoraMerger
from sd_cli.models.families import ModelFamily
from sd_cli.models.sdxl_conditioning import SizeConditioning, SizeFlags
from sd_cli.prompting.prompts import TextOptions


@dataclass
class Session:
    loaded: LoadedModel
    text: TextOptions  # --emphasis, --clip-skip, --embeddings
    loras: LoraMerger  # merges each batch's LoRAs (--lora, <lora:...>) and restores the weights
    vae_tiling: bool = False  # --vae-tiling: encode and decode in overlapping tiles (runtime/tiling.py)
    refiner: "Session | None" = None  # --refiner: the SDXL refiner beside its base (run/refiner.py)
    size_flags: SizeFlags | None = None  # SDXL's --original-*, --crop-*, --target-*; None: the demo's defaults

    @property
    def model(self):
        return self.loaded.model

    @property
    def family(self) -> ModelFamily:
        return self.model.family

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def checkpoint_path(self):
        return self.loaded.checkpoint_path

    # -- what the pipelines call on a model --------------------------------------------------------

    @property
    def config(self):
        return self.model.config

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.model.alphas_cumprod

    @property
    def sigma_table(self) -> torch.Tensor:
        """generative-models' models: the DiscreteDenoiser's σ table (models/diffusion_engine.py)."""
        return self.model.sigma_table

    @property
    def parameterization(self) -> str:
        return self.model.parameterization

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(prompts, self.text)

    def unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *vector) -> torch.Tensor:
        """SDXL's UNet takes its vector y after the context."""
        return self.model.unet(x, t, context, *vector)

    def vector(self, text, sizes):
        """SDXL's vector y from its text conditioning and size conditioning (models/diffusion_engine.py)."""
        return self.model.vector(text, sizes)

    def size_conditioning(self, size: tuple[int, int], aesthetic_score: float | None) -> SizeConditioning:
        """SDXL's size conditioning of an image of size (height, width), with the run's flags."""
        return (self.size_flags or SizeFlags()).conditioning(size, aesthetic_score)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image, tiled=self.vae_tiling)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode_latents(latents, tiled=self.vae_tiling)

    def make_room(self) -> None:
        """--offload: the model's part on the device goes back to host memory (models/latent_diffusion.py)."""
        self.model.make_room()
