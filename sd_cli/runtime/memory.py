"""Will a batch fit? A lower bound on the memory a batch needs, checked before sampling.

The estimate counts only what the computation cannot avoid: the UNet's full-resolution feature
maps and skip connections (for both halves of classifier-free guidance), and the VAE decoder's
full-resolution maps. Attention is left out, because the fused attention kernels need no N×N
matrix. So a refusal is certain to be right, while a pass is not a promise; the point is to stop
an impossible size (say 8192×8192 on a laptop) at once, not after every sampling step has run.
"""

from __future__ import annotations

from sd_cli.errors import UsageError

UNET_MAPS = 16  # feature maps of model_channels at 1/8 resolution alive at the peak (skips, temporaries)
VAE_MAPS = 4  # decoder maps of its first width at full resolution (input, norm, conv, residual)
USABLE = 0.9  # leave room for the allocator and everything else


def needed_bytes(model, batch: int, height: int, width: int, guided: bool, vae_tiling: bool = False) -> int:
    """Lower bound on the activation bytes of sampling and decoding one batch."""
    element = model.dtype.itemsize
    latent_pixels = (height // 8) * (width // 8)
    unet_channels = int(model.config.unet_params["model_channels"])
    unet = (2 if guided else 1) * batch * latent_pixels * unet_channels * UNET_MAPS * element
    ddconfig = model.config.vae_params["ddconfig"]
    vae_channels = int(ddconfig["ch"]) * int(ddconfig["ch_mult"][0])
    vae = batch * _decoded_pixels(height, width, vae_tiling) * vae_channels * VAE_MAPS * element
    return max(unet, vae)


def _decoded_pixels(height: int, width: int, vae_tiling: bool) -> int:
    """Pixels the VAE decodes at once: the whole image, or one tile with --vae-tiling."""
    if not vae_tiling:
        return height * width
    from sd_cli.runtime.tiling import TILE

    return min(height * width, (TILE * 8) ** 2)


def available_bytes(device) -> int | None:
    """Free memory on `device`, or None where it cannot be known (then nothing is checked)."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _mem_available()
    return None


def check_fits(model, batch: int, height: int, width: int, guided: bool, vae_tiling: bool = False) -> None:
    """Raise a UsageError naming the size, the need and the fix when the batch cannot fit."""
    free = available_bytes(model.device)
    need = needed_bytes(model, batch, height, width, guided, vae_tiling)
    if free is None or need <= USABLE * free:
        return
    fix = "a smaller --height/--width" + (" or a smaller --n-samples" if batch > 1 else "")
    raise UsageError(f"{width}x{height} at batch {batch} needs at least {_size(need)} on {model.device}, "
                     f"but only {_size(free)} is free; use {fix}")


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
