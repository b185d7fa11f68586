"""What a loaded model is and which subcommands it serves, decided once from its config.

Every family module (stable_diffusion.py, sdxl.py, upscaler.py) offers `decide(config) -> ModelFamily | None`;
`family_of` asks them in turn and refuses a config none of them claims. Modes ask the family
(`check_serves`, `inpaint_method`, `needs_depth`, `native_size`) instead of testing the config.
"""

from sd_cli.errors import UsageError
from sd_cli.models.families import sdxl, stable_diffusion, upscaler
from sd_cli.models.families.family import ModelFamily

FAMILY_MODULES = (stable_diffusion, sdxl, upscaler)  # a new family is a new module listed here


def family_of(config) -> ModelFamily:
    """The family of a model config (loading.config.ModelConfig)."""
    for module in FAMILY_MODULES:
        family = module.decide(config)
        if family is not None:
            return family
    raise UsageError(f"{config.source}: a {config.kind} model whose UNet takes {config.unet_in_channels} input "
                     "channels is not one sd_cli can run")
