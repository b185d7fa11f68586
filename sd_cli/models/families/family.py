"""ModelFamily: one kind of model and what sd_cli can do with it."""

from dataclasses import dataclass

from sd_cli.errors import UsageError
from sd_cli.fields import default

# What a subcommand says when the model cannot serve it: {channels}, {description}, {alternative}.
REFUSALS = {
    "txt2img": "this checkpoint's UNet takes {channels} input channels ({description}): use sd-cli {alternative}",
    "img2img": "this checkpoint's UNet takes {channels} input channels ({description}): use sd-cli {alternative}",
    "inpaint": "this checkpoint's UNet takes {channels} input channels ({description}); inpaint needs an "
               "inpainting (9) or ordinary (4) checkpoint; use {alternative} for it",
    "depth2img": "depth2img needs the SD 2 depth model (a UNet with 5 input channels, e.g. 512-depth-ema.ckpt); "
                 "this checkpoint's UNet takes {channels}; use {alternative} for it",
}
# The subcommand to point to instead, best first: the nearest one that also starts from an image.
ALTERNATIVES = ("img2img", "inpaint", "depth2img", "txt2img")


@dataclass(frozen=True)
class ModelFamily:
    """One kind of model and what sd_cli can do with it."""

    name: str  # short id, e.g. "sd1-inpaint"
    description: str  # for messages, e.g. "SD 1.x inpainting"
    subcommands: tuple[str, ...]  # the subcommands that can run it
    unet_in_channels: int  # [x_t (4)] plus any conditioning channels the UNet takes
    inpaint_method: str | None  # "concat" (mask and masked latent as UNet input), "blend" or None
    needs_depth: bool  # the UNet takes a depth channel (MiDaS weights live under depth_model.*)
    native_size: int  # default image side in pixels
    watermark_text: str  # the text the original scripts embed in every image
    latent_channels: int = 4  # the VAE's latent channels: x_t's share of the UNet input
    zero_empty_negative: bool = False  # an empty negative prompt is zeros, not encoded (the SDXL base demo)
    engine: str = "ldm"  # whose original code it follows: "ldm" (CompVis/Stability scripts) or "sgm" (generative-models)
    vae_downsampling: int = 8  # image side / latent side
    aesthetic_conditioned: bool = False  # the YAML conditions on an aesthetic score (the SDXL refiner)
    # What a run uses where neither the command line, the defaults file, --from-png nor a prompt-file
    # line gives a value (run/render.py with_model_defaults): the original code's own.
    default_scale: float = default("scale")
    default_sampler: str = default("sampler")
    size_inputs: tuple[str, ...] = ()  # generative-models' size embedders' input keys ("original_size_as_tuple", ...)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, h, w) of the latent of a height x width image."""
        return self.latent_channels, height // self.vae_downsampling, width // self.vae_downsampling

    def serves(self, mode: str) -> bool:
        return mode in self.subcommands

    def check_serves(self, mode: str) -> None:
        """Raise the one-line UsageError that names the subcommand to use instead."""
        if self.serves(mode):
            return
        alternative = next(name for name in ALTERNATIVES if self.serves(name))
        raise UsageError(REFUSALS[mode].format(channels=self.unet_in_channels, description=self.description,
                                               alternative=alternative))
