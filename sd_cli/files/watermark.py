"""The invisible watermark of the original scripts: embed it, and tell which one an image carries.

The calls mirror the scripts (docs/reference/original-scripts.md §3.1): RGB -> BGR, ``WatermarkEncoder`` with
the text as bytes, ``encode(bgr, 'dwtDct')``, BGR -> RGB. `imwatermark` (and the OpenCV it pulls
in) is imported on first use only, and the channel flips are numpy slices, not cv2 calls.

generative-models (SDXL, its refiner, SD-Turbo) embeds a 48-bit message as bits, and in the float
image before quantisation (docs/reference/sdxl.md §4): add_float_watermark, called by
files/images.py's to_uint8 between the clamp and the truncation.
"""

from __future__ import annotations

import numpy as np

from sd_cli import log

WATERMARK_V1 = "StableDiffusionV1"  # v1 txt2img
WATERMARK_V1_INPAINTING = "StableDiffusionV1-Inpainting"  # runwayml inpaint_st.py
WATERMARK_V2 = "SDV2"  # every v2 script
WATERMARK_SGM = "0xB3EC907BB19E"  # sgm.inference.helpers' WATERMARK_MESSAGE, named by its hex value
WATERMARK_TEXTS = (WATERMARK_V1, WATERMARK_V1_INPAINTING, WATERMARK_V2, WATERMARK_SGM)
# Marks embedded as these bits (set_watermark("bits", ...)), not as the UTF-8 bytes of their name.
BIT_MESSAGES = {WATERMARK_SGM: 0xB3EC907BB19E}
# Marks embedded in the float image (255·x in float32), before the uint8 truncation.
FLOAT_MARKS = frozenset({WATERMARK_SGM})

METHOD = "dwtDct"
NOTE_KEY = "sd-cli-watermark"  # PNG text chunk: why sd_cli wrote this image without a readable mark
MIN_PIXELS = 256 * 256  # WatermarkEncoder.encode refuses smaller images (rows * cols)
SCALE = 36  # dwtDct's quantisation step in the U channel (docs/reference/original-scripts.md §3.2)
BLOCK = 4  # the embedding's block side, in coefficients of the Haar approximation band

# Reading (§3.2): the encoder sets the largest coefficient c of each 4x4 block (but [0,0]) to
# (floor(c/36) + 0.25 + 0.5*bit) * 36. The library's decoder reads the block's largest coefficient
# again, which fails wherever the new value is smaller than a neighbour: in smooth areas most
# coefficients are nearly equal, so most blocks holding a 0 decode at random, and smooth renders
# score near chance. sd_cli asks instead which bits the block is consistent with: bit b is possible
# when some coefficient sits within TOLERANCE of 9 + 18*b (mod 36) and no other coefficient exceeds
# the top of its 36-wide step (the encoder picked the largest, and moved it inside its step). A
# block consistent with one bit reads as that bit; one consistent with both is undecided.
# The uint8 round trip (U truncated, then YUV -> BGR -> YUV) moves a coefficient by about 2; a
# wider tolerance decides more blocks but more of them wrongly (docs/watermark.md has the sweep).
TOLERANCE = 2.0
# A block consistent with neither bit had its coefficients moved further, by BGR values clipped at
# 0 or 255 (flat dark or saturated colours). Where its largest coefficient stands MARGIN clear of
# the others it is the one the encoder wrote, and the library's coarser reading of it (which half
# of its step it sits in) is kept; elsewhere the block is undecided.
MARGIN = 9.0
# Block k carries bit (k mod nbits); the score is the balanced fraction of decided blocks that read
# as the bit they carry: the mean, over bit values 0 and 1, of the share that match. Balanced,
# because flat areas read as one value and ASCII texts have more 0 bits than 1 bits. The threshold
# sits between the measured ranges (docs/watermark.md): renders as sd_cli writes them at least 0.82
# (the library's reading: down to 0.50), unmarked renders at most 0.62, but for one whose content
# lines up with SDV2's period, which identify_reading's alignment test rejects.
MATCH_THRESHOLD = 0.70
# Each share counts this many blocks at chance (half matching) besides the decided ones, so that a
# bit value with few decided blocks stays near 0.5 and cannot lift an unmarked image's score.
CHANCE_BLOCKS = 16

_encoders: dict[str, object] = {}  # one WatermarkEncoder per text, built on first use


def add_watermark(rgb: np.ndarray, text: str) -> np.ndarray:
    """Embed `text` into an [H, W, 3] uint8 RGB image as the original scripts do (a float mark: see
    add_float_watermark, on the image's values / 255).

    Images of fewer than 256*256 pixels cannot carry the mark (the library refuses them, and the
    original scripts crashed there): they come back unchanged, with one warning per run.
    """
    _check_rgb(rgb)
    height, width = rgb.shape[:2]
    if height * width < MIN_PIXELS:
        _warn_too_small(width, height)
        return rgb
    if embeds_in_float(text):  # an already quantised image (a grid): its float values, marked, truncated again
        return (np.float32(255) * add_float_watermark(rgb.astype(np.float32) / np.float32(255), text)).astype(np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    marked = _encoder(text).encode(bgr, METHOD)
    return np.ascontiguousarray(marked[..., ::-1])


def embeds_in_float(text: str) -> bool:
    """Whether `text` is embedded in the float image, before quantisation (generative-models' way)."""
    return text in FLOAT_MARKS


def add_float_watermark(image: np.ndarray, text: str) -> np.ndarray:
    """generative-models' embed_watermark on one [H, W, 3] float32 RGB image in [0, 1]: 255·x in float32,
    RGB -> BGR, encode(bgr, 'dwtDct'), BGR -> RGB, / 255, clamped to [0, 1]; float32 back.

    Images of fewer than 256*256 pixels come back unchanged with one warning per run (the library
    refuses them; the original crashed there), as add_watermark's do.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.float32:
        raise ValueError(f"expected an [H, W, 3] float32 RGB image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if height * width < MIN_PIXELS:
        _warn_too_small(width, height)
        return image
    bgr = np.ascontiguousarray((np.float32(255) * image)[..., ::-1])
    marked = _encoder(text).encode(bgr, METHOD)[..., ::-1] / np.float32(255)
    return np.ascontiguousarray(np.clip(marked, 0.0, 1.0), dtype=np.float32)


def unreadable_reason(marked: np.ndarray, text: str) -> str | None:
    """Why `marked`, as add_watermark returned it for `text`, does not read back as `text`; None if it does.

    The writer records the reason in the PNG, so that `verify` can say the image was written
    without a readable watermark instead of "no known watermark".
    """
    height, width = marked.shape[:2]
    if height * width < MIN_PIXELS:
        return f"{width}x{height} is smaller than 256x256 pixels, too small for the watermark"
    found, score = identify_watermark(marked)
    if found == text:
        return None
    return f"dwtDct could not carry {text!r} in this image: it read back at {score:.2f} when written"


def identify_watermark(rgb: np.ndarray) -> tuple[str | None, float]:
    """Name the known watermark text an [H, W, 3] uint8 RGB image carries, with its match score.

    The score is the balanced fraction of decided blocks that read as the text's bits (see
    MATCH_THRESHOLD): about 0.5 by chance, 1.0 for a perfect read. Returns the best text and its
    score, or None with the best score when no text matches (identify_reading). Images too small
    to carry a mark give (None, 0.0).
    """
    _check_rgb(rgb)
    height, width = rgb.shape[:2]
    if height * width < MIN_PIXELS:
        return None, 0.0
    readings = {space: read_blocks(rgb, space) for space in (False, True)}
    return identify_reading({text: readings[embeds_in_float(text)] for text in WATERMARK_TEXTS})


def identify_reading(reading: np.ndarray | dict[str, np.ndarray]) -> tuple[str | None, float]:
    """The known text that block readings match, with its score; (None, best score) when none does.
    `reading`: one reading for every text, or each text's own (a float mark is read in float YUV).

    A text matches when its score at its own alignment reaches MATCH_THRESHOLD and beats its score
    at every other alignment (block k read against bit (k + s) mod n). Unmarked content can
    correlate with one alignment by chance, most where the text's period divides a row of blocks
    (SDV2's 32 bits on an image 256 pixels wide: every column of blocks carries one bit, so only 32
    columns count), but then it correlates as much with other alignments; a mark does not.
    """
    readings = reading if isinstance(reading, dict) else dict.fromkeys(WATERMARK_TEXTS, reading)
    scores = {text: alignment_scores(readings[text], text_bits(text)) for text in WATERMARK_TEXTS}
    matching = {text: s[0] for text, s in scores.items() if s[0] >= MATCH_THRESHOLD and s[0] > s[1:].max()}
    if not matching:
        return None, float(max(s[0] for s in scores.values()))
    best = max(matching, key=matching.get)
    return best, float(matching[best])


def text_score(rgb: np.ndarray, text: str) -> float:
    """The match score of one text (benchmarks/watermark_scores.py compares readings with it)."""
    return match_score(read_blocks(rgb, embeds_in_float(text)), text_bits(text))


def text_bits(text: str) -> np.ndarray:
    """The bits the encoder embeds for `text`: a bit message's bits, else its UTF-8 bytes, most significant bit first."""
    if text in BIT_MESSAGES:
        return np.array([bit == "1" for bit in bin(BIT_MESSAGES[text])[2:]])
    return np.unpackbits(np.frombuffer(text.encode("utf-8"), dtype=np.uint8)).astype(bool)


def read_blocks(rgb: np.ndarray, float_yuv: bool = False) -> np.ndarray:
    """Each block's reading in raster order: 1, 0, or -1 where it is undecided (see TOLERANCE, MARGIN);
    `float_yuv`: in the YUV the encoder saw in a float image (block_coefficients)."""
    magnitudes = block_coefficients(rgb, float_yuv)
    ordered = np.sort(magnitudes, axis=1)
    one, zero = (_consistent_with(magnitudes, ordered, bit) for bit in (1, 0))
    reading = np.full(len(magnitudes), -1)
    reading[one & ~zero] = 1
    reading[zero & ~one] = 0
    clipped = ~one & ~zero & (ordered[:, -1] - ordered[:, -2] >= MARGIN)
    reading[clipped] = ordered[clipped, -1] % SCALE > SCALE / 2
    return reading


def block_coefficients(rgb: np.ndarray, float_yuv: bool = False) -> np.ndarray:
    """|coefficients| of every 4x4 block of the U channel's Haar approximation but [0,0]: [blocks, 15].

    The same band the library embeds in: OpenCV's YUV of the BGR image, cropped to multiples of
    4, one Haar level; an HxW image has (H // 8) x (W // 8) blocks. The library changes these
    values themselves, not a transform of them, so U's offset counts: OpenCV adds 128 to a uint8
    image's U and 0.5 to a float image's, which moves every coefficient by 255 (3 modulo the step).
    `float_yuv` reads the pixels' values as float32, as the encoder saw generative-models' float image.
    """
    import cv2
    import pywt

    bgr = np.ascontiguousarray(rgb[..., ::-1], dtype=np.float32 if float_yuv else np.uint8)
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
    u = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:rows, :cols, 1].astype(np.float64)
    approximation, _ = pywt.dwt2(u, "haar")
    high, wide = approximation.shape[0] // BLOCK, approximation.shape[1] // BLOCK
    blocks = approximation[:high * BLOCK, :wide * BLOCK].reshape(high, BLOCK, wide, BLOCK).swapaxes(1, 2)
    return np.abs(blocks.reshape(high * wide, BLOCK * BLOCK)[:, 1:])


def _consistent_with(magnitudes: np.ndarray, ordered: np.ndarray, bit: int) -> np.ndarray:
    """Per block: could the encoder have written `bit` here (see TOLERANCE)? `ordered`: each block sorted."""
    target = SCALE * (0.25 + 0.5 * bit)
    on_target = np.abs(magnitudes % SCALE - target) <= TOLERANCE
    largest_other = np.where(magnitudes >= ordered[:, -1:], ordered[:, -2:-1], ordered[:, -1:])
    step_top = (np.floor(magnitudes / SCALE) + 1) * SCALE
    return (on_target & (largest_other <= step_top + TOLERANCE)).any(axis=1)


def match_score(reading: np.ndarray, bits: np.ndarray) -> float:
    """Balanced fraction of decided blocks that read as the bit they carry (block k carries k mod n),
    each share counting CHANCE_BLOCKS more blocks at chance."""
    return float(alignment_scores(reading, bits)[0])


def alignment_scores(reading: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """match_score with block k read against bit (k + s) mod n, for every shift s (s = 0 first): [n]."""
    n = bits.size
    residue = np.arange(reading.size) % n
    ones = np.bincount(residue[reading == 1], minlength=n)
    zeros = np.bincount(residue[reading == 0], minlength=n)
    expected = np.stack([np.roll(bits, -shift) for shift in range(n)]).astype(np.int64)  # [shift, residue]
    decided = ones + zeros

    def share(hits, total):
        return (hits + CHANCE_BLOCKS / 2) / (total + CHANCE_BLOCKS)

    return (share(expected @ ones, expected @ decided) + share((1 - expected) @ zeros, (1 - expected) @ decided)) / 2


def _encoder(text: str):
    if text not in _encoders:
        from imwatermark import WatermarkEncoder

        encoder = WatermarkEncoder()
        if text in BIT_MESSAGES:
            encoder.set_watermark("bits", [int(bit) for bit in text_bits(text)])
        else:
            encoder.set_watermark("bytes", text.encode("utf-8"))
        _encoders[text] = encoder
    return _encoders[text]


def _warn_too_small(width: int, height: int) -> None:
    log.warn(f"{width}x{height} images are too small for the invisible watermark "  # once per run (log.warn)
             "(needs at least 256x256 pixels): saved without it")


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 RGB image, got {rgb.dtype} {rgb.shape}")
