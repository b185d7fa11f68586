"""The SD 2 x4 upscaler: the original LatentUpscaleDiffusion (x4-upscaling.yaml).

Its UNet takes the latent and the noise-augmented low-res image (4 + 3 channels) and the noise
level as a class label; its VAE downsamples by 4, so the latent has the low-res image's size and
the output is four times it. Only `sd-cli upscale` runs it.
"""

from sd_cli.fields import UPSCALE_DEFAULTS
from sd_cli.models.families.family import ModelFamily

UPSCALE_FACTOR = 4  # output side / input side: the VAE's downsampling, the latent being the input's size


def decide(config) -> ModelFamily | None:
    if config.kind != "upscale" or config.engine != "ldm":
        return None
    factor = 2 ** (len(config.vae_params["ddconfig"]["ch_mult"]) - 1)
    return ModelFamily(
        name="sd2-x4-upscaler",
        description="SD 2 x4 upscaler",
        subcommands=("upscale",),
        unet_in_channels=config.unet_in_channels,
        inpaint_method=None,
        needs_depth=False,
        native_size=config.native_size,
        watermark_text="SDV2",  # both superresolution scripts embed it
        vae_downsampling=factor,
        default_scale=UPSCALE_DEFAULTS["scale"],  # where no flag gives one (run/render.py with_model_defaults)
    )
