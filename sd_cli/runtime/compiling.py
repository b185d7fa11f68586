"""Opt-in speed-ups that change how the model runs, not what it computes (`--compile`)."""

import torch

from sd_cli import log


def compile_model(model):
    """torch.compile the UNet (channels-last, CUDA graphs on CUDA) for repeated fixed-shape steps.

    The first step of a new shape pays the compilation (tens of seconds); later steps and later
    batches of the same shape are much faster. Off by default because one-off renders would pay
    more than they gain.

    On the CPU the weights are frozen into the compiled code (inductor's `freezing`): convolution
    and matrix weights are then pre-packed once for oneDNN instead of being re-laid-out at every
    call, which is most of what compiling gains there (7.4 → 6.2 s per full-size UNet call, fp32).
    The price: weights changed after the first step are not seen, so lora.py refuses to switch
    LoRAs after it (freezes_weights).
    """
    unet = model.model.diffusion_model
    if freezes_weights(model.device):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        mode = "default"
    else:
        unet.to(memory_format=torch.channels_last)
        mode = "reduce-overhead"  # inductor kernels replayed through CUDA graphs: no per-step launch cost
    log.info(f"compiling the UNet with torch.compile (mode {mode}); the first step of each image size is slow")
    model.model.diffusion_model = torch.compile(unet, mode=mode, fullgraph=True, dynamic=False)
    return model


def freezes_weights(device) -> bool:
    """Whether compile_model on `device` builds the UNet's weights into the compiled code (the CPU)."""
    return device.type != "cuda"


def compile_if_asked(model, asked: bool) -> bool:
    """--compile: the UNet compiled; whether its weights are then frozen (LoRA merges must happen first)."""
    if not asked:
        return False
    compile_model(model)
    return freezes_weights(model.device)
