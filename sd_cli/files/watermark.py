"""The invisible watermark of the original scripts: embed it, and tell which one an image carries.

The calls mirror the scripts (docs/reference/original-scripts.md §3.1): RGB -> BGR, ``WatermarkEncoder`` with
the text as bytes, ``encode(bgr, 'dwtDct')``, BGR -> RGB. `imwatermark` (and the OpenCV it pulls
in) is imported on first use only, and the channel flips are numpy slices, not cv2 calls.
"""

from __future__ import annotations

import numpy as np

from sd_cli import log

WATERMARK_V1 = "StableDiffusionV1"  # v1 txt2img
WATERMARK_V1_INPAINTING = "StableDiffusionV1-Inpainting"  # runwayml inpaint_st.py
WATERMARK_V2 = "SDV2"  # every v2 script
WATERMARK_TEXTS = (WATERMARK_V1, WATERMARK_V1_INPAINTING, WATERMARK_V2)

METHOD = "dwtDct"
MIN_PIXELS = 256 * 256  # WatermarkEncoder.encode refuses smaller images (rows * cols)

# Decoding is lossy (§3.2): in each 4x4 block the embedded coefficient can stop being the
# block's largest, and the block then decodes at random. So the library's majority vote per bit
# can leave many wrong bits in a 32-bit "SDV2" on smooth images. Instead every block is read as
# its own copy of bit (k mod nbits), and the score is the balanced fraction of copies that match:
# the mean, over bit values 0 and 1, of the share of blocks carrying that value that decode to
# it. Balanced, because ASCII texts have more 0 bits than 1 bits and flat areas decode to one
# value, which would otherwise score ~0.6 with no mark at all. Measured on photos and synthetic
# images: unmarked 0.49-0.53, marked 0.73-1.0. The threshold sits between, about 9 standard
# deviations of chance (0.5 / sqrt(blocks), blocks >= 1024) above 0.5.
MATCH_THRESHOLD = 0.65

_encoders: dict[str, object] = {}  # one WatermarkEncoder per text, built on first use


def add_watermark(rgb: np.ndarray, text: str) -> np.ndarray:
    """Embed `text` into an [H, W, 3] uint8 RGB image as the original scripts do.

    Images of fewer than 256*256 pixels cannot carry the mark (the library refuses them, and the
    original scripts crashed there): they come back unchanged, with one warning per run.
    """
    _check_rgb(rgb)
    height, width = rgb.shape[:2]
    if height * width < MIN_PIXELS:
        _warn_too_small(width, height)
        return rgb
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    marked = _encoder(text).encode(bgr, METHOD)
    return np.ascontiguousarray(marked[..., ::-1])


def identify_watermark(rgb: np.ndarray) -> tuple[str | None, float]:
    """Name the known watermark text an [H, W, 3] uint8 RGB image carries, with its match score.

    The score is the balanced fraction of embedded bit copies that decode to the text's bits
    (see MATCH_THRESHOLD): about 0.5 by chance, 1.0 for a perfect read. Returns the best text
    and its score, or None with the best score when no text reaches MATCH_THRESHOLD. Images
    too small to carry a mark give (None, 0.0).
    """
    _check_rgb(rgb)
    height, width = rgb.shape[:2]
    if height * width < MIN_PIXELS:
        return None, 0.0
    decoded = decode_block_bits(np.ascontiguousarray(rgb[..., ::-1]))
    scores = {text: match_score(decoded, text_bits(text)) for text in WATERMARK_TEXTS}
    best = max(scores, key=scores.get)
    if scores[best] < MATCH_THRESHOLD:
        return None, scores[best]
    return best, scores[best]


def text_bits(text: str) -> np.ndarray:
    """The bits the encoder embeds for `text`: UTF-8 bytes, most significant bit first."""
    return np.unpackbits(np.frombuffer(text.encode("utf-8"), dtype=np.uint8)).astype(bool)


def decode_block_bits(bgr: np.ndarray) -> np.ndarray:
    """The bit each 4x4 block of the U-channel Haar approximation holds, in raster order.

    Decoding with a length equal to the number of blocks gives each "bit" exactly one block,
    so the library's own decoder reads the blocks one by one. The approximation band of an
    HxW image has (H // 8) x (W // 8) such blocks.
    """
    from imwatermark import WatermarkDecoder

    blocks = (bgr.shape[0] // 8) * (bgr.shape[1] // 8)
    return np.asarray(WatermarkDecoder("bits", blocks).decode(bgr, METHOD), dtype=bool)


def match_score(block_bits: np.ndarray, bits: np.ndarray) -> float:
    """Balanced fraction of blocks that decode to the bit they carry (block k carries k mod n)."""
    expected = bits[np.arange(block_bits.size) % bits.size]
    ones = np.mean(block_bits[expected])  # every known text has both 0 and 1 bits
    zeros = np.mean(~block_bits[~expected])
    return float((ones + zeros) / 2)


def _encoder(text: str):
    if text not in _encoders:
        from imwatermark import WatermarkEncoder

        encoder = WatermarkEncoder()
        encoder.set_watermark("bytes", text.encode("utf-8"))
        _encoders[text] = encoder
    return _encoders[text]


def _warn_too_small(width: int, height: int) -> None:
    log.warn(f"{width}x{height} images are too small for the invisible watermark "  # once per run (log.warn)
             "(needs at least 256x256 pixels): saved without it")


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 RGB image, got {rgb.dtype} {rgb.shape}")
