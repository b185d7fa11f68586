"""SD 1.x and 2.x: the original LatentDiffusion, LatentInpaintDiffusion and LatentDepth2ImageDiffusion."""

from sd_cli.models.families.family import ModelFamily

ORDINARY = ("txt2img", "img2img", "inpaint")  # inpaint by blending the known region back


def decide(config) -> ModelFamily | None:
    """SD 1.x (CLIP) or 2.x (OpenCLIP) by the text encoder; the task by the model class and UNet input."""
    version = {"clip": "1", "openclip": "2"}.get(config.text_encoder)
    task = _TASKS.get((config.kind, config.unet_in_channels))
    if version is None or task is None:
        return None
    name, label, subcommands, inpaint, depth = task
    v = config.parameterization == "v"
    return ModelFamily(
        name=f"sd{version}{'-v' if v else ''}{name}",
        description=f"SD {version}.x{' v-prediction' if v else ''}{label}",
        subcommands=subcommands,
        unet_in_channels=config.unet_in_channels,
        inpaint_method=inpaint,
        needs_depth=depth,
        native_size=config.native_size,
        watermark_text=_WATERMARKS.get((version, name), "SDV2"),
    )


# (model class role, UNet input channels) -> (name suffix, description suffix, subcommands, inpaint, depth)
_TASKS = {
    ("txt2img", 4): ("", "", ORDINARY, "blend", False),
    ("inpaint", 9): ("-inpaint", " inpainting", ("inpaint",), "concat", False),
    ("depth", 5): ("-depth", " depth", ("depth2img",), None, True),
}
# The original v1 scripts' texts; every v2 script embeds "SDV2".
_WATERMARKS = {("1", ""): "StableDiffusionV1", ("1", "-inpaint"): "StableDiffusionV1-Inpainting"}
