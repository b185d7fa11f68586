"""Will a batch fit? A lower bound on the memory a batch needs, checked before sampling.

The estimate counts only what the computation cannot avoid: the UNet's full-resolution feature
maps and skip connections (for both halves of classifier-free guidance), the VAE decoder's
full-resolution maps, and, where an input image is encoded (img2img, inpaint, depth2img), the VAE
encoder's. With --vae-tiling the VAE parts count one tile. Attention is left out, because the
fused attention kernels need no N×N matrix. So a refusal is certain to be right, while a pass is
not a promise; the point is to stop an impossible size (say 8192×8192 on a laptop) at once, not
after every sampling step has run.
"""

from __future__ import annotations

from sd_cli.errors import UsageError

UNET_MAPS = 16  # feature maps of model_channels at 1/8 resolution alive at the peak (skips, temporaries)
VAE_MAPS = 4  # decoder maps of its first width at full resolution (input, norm, conv, residual)
ENCODER_MAPS = 3  # encoder maps of its first width at full resolution (residual, norm, conv)
USABLE = 0.9  # leave room for the allocator and everything else


def needed_parts(model, batch: int, height: int, width: int, guided: bool, vae_tiling: bool = False,
                 encodes_input: bool = False, unet_tile: int = 0) -> dict[str, int]:
    """Lower bounds on the activation bytes of each stage of one batch: "UNet", "VAE decoder" and,
    when an input image is encoded, "VAE encoder" (once per batch: the input is shared).
    `unet_tile`: the UNet runs on tiles of that many latent cells a side (upscale --tile)."""
    element = model.dtype.itemsize
    factor = 2 ** (len(model.config.vae_params["ddconfig"]["ch_mult"]) - 1)  # 8; the x4 upscaler's VAE: 4
    latent_h, latent_w = height // factor, width // factor
    if unet_tile:
        latent_h, latent_w = min(latent_h, unet_tile), min(latent_w, unet_tile)
    latent_pixels = latent_h * latent_w
    unet_channels = int(model.config.unet_params["model_channels"])
    ddconfig = model.config.vae_params["ddconfig"]
    vae_channels = int(ddconfig["ch"]) * int(ddconfig["ch_mult"][0])
    vae_pixels = _vae_pixels(height, width, vae_tiling, factor)
    parts = {"UNet": (2 if guided else 1) * batch * latent_pixels * unet_channels * UNET_MAPS * element,
             "VAE decoder": batch * vae_pixels * vae_channels * VAE_MAPS * element}
    if encodes_input:
        parts["VAE encoder"] = vae_pixels * vae_channels * ENCODER_MAPS * element
    return parts


def needed_bytes(model, batch: int, height: int, width: int, guided: bool, vae_tiling: bool = False,
                 encodes_input: bool = False) -> int:
    """Lower bound on the activation bytes of one batch: its most demanding stage (they run in turn)."""
    return max(needed_parts(model, batch, height, width, guided, vae_tiling, encodes_input).values())


def _vae_pixels(height: int, width: int, vae_tiling: bool, factor: int = 8) -> int:
    """Pixels the VAE works on at once: the whole image, or one tile with --vae-tiling."""
    if not vae_tiling:
        return height * width
    from sd_cli.runtime.tiling import TILE

    return min(height * width, (TILE * factor) ** 2)


def available_bytes(device) -> int | None:
    """Free memory on `device`, or None where it cannot be known (then nothing is checked)."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _mem_available()
    return None


def check_fits(model, batch: int, height: int, width: int, guided: bool, vae_tiling: bool = False,
               encodes_input: bool = False, unet_tile: int = 0) -> None:
    """Raise a UsageError naming the size, the need, the stage and a fix that exists when the batch
    cannot fit. `encodes_input`: the size is an input image's (img2img, inpaint, depth2img)."""
    free = available_bytes(model.device)
    parts = needed_parts(model, batch, height, width, guided, vae_tiling, encodes_input, unet_tile)
    stage, need = max(parts.items(), key=lambda item: item[1])
    if free is None or need <= USABLE * free:
        return
    raise UsageError(f"{width}x{height} at batch {batch} needs at least {_size(need)} on {model.device} "
                     f"(the {stage}), but only {_size(free)} is free; use {_fixes(stage, batch, vae_tiling, encodes_input)}")


def _fixes(stage: str, batch: int, vae_tiling: bool, encodes_input: bool) -> str:
    """What the user can change: the size (the input image's where it sets it), --vae-tiling where the
    VAE is the limit and untiled, fewer images per batch."""
    fixes = ["a smaller input image (its size sets the output's)" if encodes_input else "a smaller --height/--width"]
    if stage.startswith("VAE") and not vae_tiling:
        fixes.append("--vae-tiling")
    if batch > 1:
        fixes.append("a smaller --n-samples")
    return ", ".join(fixes[:-1]) + " or " + fixes[-1] if len(fixes) > 1 else fixes[0]


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
