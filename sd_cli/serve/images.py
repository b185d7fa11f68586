"""Images in requests and answers: base64 in, checked before anything decodes them whole; PNG out."""

from __future__ import annotations

import base64
import binascii
import io

from sd_cli.serve.refusal import Refused, TooLarge
from sd_cli.serve.settings import Limits


def decode_image(text: str, what: str, limits: Limits) -> tuple[bytes, tuple[int, int]]:
    """The file bytes of a base64 image (a data: URL prefix allowed) and its size; Refused when it is
    not an image PIL reads, or has more pixels than the limit (checked from the header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > limits.max_body_bytes:
        raise TooLarge(f"{what} is larger than this server's limit of {limits.max_body_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"{what} is not base64 data; send the image file's bytes base64-encoded") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            if size[0] * size[1] > limits.max_image_pixels:
                raise TooLarge(f"{what} is {size[0]}x{size[1]}, past this server's limit of "
                               f"{limits.max_image_pixels} pixels")
            image.load()  # a truncated or corrupt file fails here, not in the render
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        raise Refused(f"{what} is not an image file PIL can read; send a PNG, JPEG or WebP file") from None
    return data, size


def resized_png(data: bytes, size: tuple[int, int]) -> bytes:
    """AUTOMATIC1111's resize_mode 0 ("Just resize"): LANCZOS to exactly `size`, as PNG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        resized = image.convert("RGBA" if "A" in image.getbands() else "RGB").resize(size, Image.LANCZOS)
    return png_bytes(resized)


def png_bytes(image, infotext: str | None = None, notes: dict | None = None) -> bytes:
    """A PIL image or a uint8 [H, W, 3] array as PNG bytes, with `infotext` as the parameters chunk and
    `notes` (the watermark's, files/watermark.py) as chunks of their own, as the CLI writes them."""
    from PIL import Image

    from sd_cli.files.output import png_chunks

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_chunks(infotext, notes or {}))
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
