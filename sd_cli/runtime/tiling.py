"""Tiled VAE decoding (`--vae-tiling`): large images decoded in overlapping latent tiles.

The VAE decoder's memory grows with the image area (its mid-block attention quadratically), so a
2048² decode can need more memory than sampling did. Decoding 64×64-latent tiles (512 px) that
overlap by 16 latents and blending the overlaps with linear ramps bounds that memory. The result
differs from a whole decode (GroupNorm statistics and the mid-block attention see one tile at a
time), which is why tiling is opt-in.
"""

import torch

TILE = 64  # latent cells per tile side (512 px)
OVERLAP = 16  # latent cells shared by neighbouring tiles (128 px)


def tile_starts(length: int, tile: int = TILE, overlap: int = OVERLAP) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(size: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1-D blending weights: linear over `overlap` at the sides shared with a neighbour, else 1."""
    weights = torch.ones(size)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    if fade_in:
        weights[:overlap] = ramp
    if fade_out:
        weights[-overlap:] = ramp.flip(0)
    return weights


def decode_tiled(decode, latents: torch.Tensor, factor: int = 8, tile: int = TILE, overlap: int = OVERLAP) -> torch.Tensor:
    """decode: latents [B, 4, h, w] -> images [B, 3, h*factor, w*factor]; same contract, tiled."""
    batch, _, height, width = latents.shape
    if height <= tile and width <= tile:
        return decode(latents)
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out = torch.zeros(batch, 3, height * factor, width * factor, device=latents.device, dtype=torch.float32)
    total = torch.zeros(1, 1, height * factor, width * factor, device=latents.device, dtype=torch.float32)
    for y in ys:
        for x in xs:
            part = decode(latents[:, :, y:y + tile, x:x + tile]).float()
            h, w = part.shape[-2:]
            wy = _ramp(h, overlap * factor, y > 0, y + tile < height)
            wx = _ramp(w, overlap * factor, x > 0, x + tile < width)
            weight = (wy[:, None] * wx[None, :]).to(part.device)
            out[:, :, y * factor:y * factor + h, x * factor:x * factor + w] += part * weight
            total[:, :, y * factor:y * factor + h, x * factor:x * factor + w] += weight
    return out / total
