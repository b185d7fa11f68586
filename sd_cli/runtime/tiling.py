"""Tiled VAE decoding and encoding (`--vae-tiling`), and tiled UNet passes (upscale --tile): large images
in overlapping tiles.

The VAE's memory grows with the image area (its mid-block attention quadratically), so a 2048²
decode can need more memory than sampling did, and encoding a large img2img input as much again.
Working on 64×64-latent tiles (512 px) that overlap by 16 latents and blending the overlaps with
linear ramps bounds that memory. The result differs from a whole decode or encode (GroupNorm
statistics and the mid-block attention see one tile at a time), which is why tiling is opt-in.
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
    height, width = latents.shape[-2:]
    if height <= tile and width <= tile:
        return decode(latents)
    return _blend_tiles(decode, latents, (height, width), 1, factor, tile, overlap)


def encode_tiled(encode, images: torch.Tensor, factor: int = 8, tile: int = TILE, overlap: int = OVERLAP) -> torch.Tensor:
    """encode: images [B, 3, H, W] -> latents [B, C, H/factor, W/factor]; same contract, tiled.

    Tiles are `tile` latent cells (tile*factor pixels) a side, cut on the latent grid so that each
    tile's latent lands on whole cells; H and W must be multiples of `factor`.
    """
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"encode_tiled needs sides that are multiples of {factor}, got {width}x{height}")
    latent_size = (height // factor, width // factor)
    if latent_size[0] <= tile and latent_size[1] <= tile:
        return encode(images)
    return _blend_tiles(encode, images, latent_size, factor, 1, tile, overlap)


def unet_tiled(unet, x: torch.Tensor, tile: int, overlap: int, multiple: int = 8) -> torch.Tensor:
    """unet: x [B, C, h, w] -> [B, C', h, w] (t, context and y bound); same contract, in overlapping tiles.

    For the x4 upscaler, whose latent has the input image's size (128² for a 512 px output, 512² for a
    2048 px one). Tile sides are multiples of `multiple` (the UNet halves the size three times), so
    every tile passes through it as a whole image does; the result is blended like the VAE's.
    """
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return unet(x)
    if tile % multiple or height % multiple or width % multiple:
        raise ValueError(f"unet_tiled needs a tile and sides that are multiples of {multiple}, "
                         f"got tile {tile} for {width}x{height}")
    return _blend_tiles(unet, x, (height, width), 1, 1, tile, overlap)


def _blend_tiles(run, x: torch.Tensor, latent_size: tuple[int, int], in_scale: int, out_scale: int,
                 tile: int, overlap: int) -> torch.Tensor:
    """run() on overlapping tiles of `x`, laid out on the latent grid (`latent_size` cells; one cell is
    `in_scale` input and `out_scale` output elements a side), blended with linear ramps, in float32."""
    height, width = latent_size
    out = total = None
    for y in tile_starts(height, tile, overlap):
        for x0 in tile_starts(width, tile, overlap):
            part = run(x[:, :, y * in_scale:(y + tile) * in_scale, x0 * in_scale:(x0 + tile) * in_scale]).float()
            if out is None:
                out = torch.zeros(x.shape[0], part.shape[1], height * out_scale, width * out_scale,
                                  device=part.device, dtype=torch.float32)
                total = torch.zeros(1, 1, height * out_scale, width * out_scale, device=part.device, dtype=torch.float32)
            h, w = part.shape[-2:]
            wy = _ramp(h, overlap * out_scale, y > 0, y + tile < height)
            wx = _ramp(w, overlap * out_scale, x0 > 0, x0 + tile < width)
            weight = (wy[:, None] * wx[None, :]).to(part.device)
            rows, cols = slice(y * out_scale, y * out_scale + h), slice(x0 * out_scale, x0 * out_scale + w)
            out[:, :, rows, cols] += part * weight
            total[:, :, rows, cols] += weight
    return out / total
