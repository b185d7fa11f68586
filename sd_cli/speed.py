"""Opt-in speed-ups that change how the model runs, not what it computes (`--compile`)."""

import torch

from sd_cli import log


def compile_model(model):
    """torch.compile the UNet (channels-last, CUDA graphs on CUDA) for repeated fixed-shape steps.

    The first step of a new shape pays the compilation (tens of seconds); later steps and later
    batches of the same shape are much faster. Off by default because one-off renders would pay
    more than they gain.
    """
    unet = model.model.diffusion_model
    if model.device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
        mode = "reduce-overhead"  # inductor kernels replayed through CUDA graphs: no per-step launch cost
    else:
        mode = "default"
    log.info(f"compiling the UNet with torch.compile (mode {mode}); the first step of each image size is slow")
    model.model.diffusion_model = torch.compile(unet, mode=mode, fullgraph=True, dynamic=False)
    return model
