"""Generation parameters stored in the PNG, in AUTOMATIC1111's "infotext" layout.

    a photo of a cat
    wearing a hat                      <- the prompt, as many lines as it has
    Negative prompt: blurry            <- only when there is one
    Steps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 512x512, Model: v2-1_512

The text goes into a PNG text chunk named ``parameters``, where A1111, ComfyUI, civitai and
``sd-cli info`` read it. JPEG and WebP files carry it as AUTOMATIC1111 writes it there (through
piexif): the EXIF UserComment tag, ``UNICODE\0`` then UTF-16 big-endian, in a big-endian EXIF
block. A value holding a comma, colon, quote or newline is written as a JSON string, as A1111
does, so that the parameter line splits unambiguously.
"""

from __future__ import annotations

import json
import re
import struct

PNG_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"

_KEY = r"\w[\w \-/]*"  # "Steps", "CFG scale", "Hires upscale", "Denoising strength", ...
_QUOTED = r'"(?:\\.|[^\\"])*"'
_FIELD = re.compile(rf"\s*({_KEY}):\s*({_QUOTED}|[^,]*?)\s*(?:,|$)")
_NEEDS_QUOTES = re.compile(r'[,:"\n\r]')

EXIF_IFD = 0x8769  # the pointer from IFD0 to the Exif IFD
USER_COMMENT = 0x9286  # Exif IFD tag, type UNDEFINED: an 8-byte character-code prefix, then the text
_UNDEFINED, _LONG = 7, 4  # TIFF field types
_UNICODE, _ASCII, _UNDEFINED_CODE = b"UNICODE\0", b"ASCII\0\0\0", b"\0" * 8


def format_infotext(prompt: str, negative_prompt: str, fields: dict[str, object]) -> str:
    """Prompt line(s), an optional ``Negative prompt:`` line, then ``Key: value, ...``.

    Fields keep their order; None values are left out. The parameter line is always there,
    empty when there are no fields, so that the prompt's own last line is never taken for it.
    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    pairs = (f"{_check_key(k)}: {_quote(v)}" for k, v in fields.items() if v is not None)
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Split an infotext into (prompt, negative prompt, fields); values stay strings.

    The last line is the parameter line when it is made of ``Key: value`` fields only (or is
    blank, as format_infotext writes it with no fields); a single-line text needs three fields
    to count as one (A1111's rule), so a short prompt such as "style: oil" stays a prompt.
    Lines from ``Negative prompt:`` on are the negative prompt.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    fields: dict[str, str] = {}
    parsed = _parse_fields(lines[-1])
    if parsed is not None and (len(lines) > 1 or len(parsed) >= 3):
        fields = parsed
        lines = lines[:-1]

    prompt_lines, negative_lines = lines, []
    for i, line in enumerate(lines):
        if line.startswith(NEGATIVE_PREFIX):
            prompt_lines = lines[:i]
            first = line[len(NEGATIVE_PREFIX):]
            negative_lines = [first[1:] if first.startswith(" ") else first] + lines[i + 1:]
            break
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields


def png_info(text: str):
    """A PngInfo carrying `text` in the ``parameters`` chunk (iTXt when it is not latin-1)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, text)
    return info


def exif_with_infotext(text: str) -> bytes:
    """A JPEG/WebP EXIF block ("Exif\\0\\0" and a big-endian TIFF structure) whose only field is `text`
    as UserComment: IFD0 points to the Exif IFD at byte 26, whose UserComment data starts at byte 44."""
    comment = _UNICODE + text.encode("utf_16_be")
    ifd0 = struct.pack(">HHHII", 1, EXIF_IFD, _LONG, 1, 26) + struct.pack(">I", 0)
    exif_ifd = struct.pack(">HHHII", 1, USER_COMMENT, _UNDEFINED, len(comment), 44) + struct.pack(">I", 0)
    return b"Exif\0\0" + b"MM\0*" + struct.pack(">I", 8) + ifd0 + exif_ifd + comment


def user_comment_text(image) -> str | None:
    """The EXIF UserComment of an open PIL image as text, or None when it has none.

    UNICODE text is UTF-16 in the EXIF block's byte order (as the EXIF standard says; piexif, hence
    AUTOMATIC1111, writes big-endian blocks); ASCII is ASCII; an undefined code is read as UTF-8.
    Raises ValueError when the bytes are not text in the code they name.
    """
    exif = image.getexif()
    value = exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
    if not isinstance(value, bytes) or len(value) < 8:
        return None
    code, body = value[:8], value[8:]
    encodings = {_UNICODE: "utf_16_be" if exif.endian == ">" else "utf_16_le", _ASCII: "ascii", _UNDEFINED_CODE: "utf-8"}
    if code not in encodings:
        return None
    try:
        return body.decode(encodings[code]).rstrip("\0")
    except UnicodeDecodeError:
        raise ValueError(f"its EXIF UserComment is not {encodings[code]} text") from None


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if _NEEDS_QUOTES.search(text) else text


def _check_key(key: str) -> str:
    if not re.fullmatch(_KEY, key):
        raise ValueError(f"infotext key {key!r} must be letters, digits, spaces, '-', '_' or '/'")
    return key


def _parse_fields(line: str) -> dict[str, str] | None:
    """``Key: value, Key: "quoted, value"`` -> dict ({} for a blank line), or None when the line
    is not made of fields only."""
    fields: dict[str, str] = {}
    pos = 0 if line.strip() else len(line)
    while pos < len(line):
        match = _FIELD.match(line, pos)
        if match is None or match.end() == pos:
            return None
        key, value = match.group(1), match.group(2)
        if value.startswith('"') and len(value) > 1 and value.endswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # keep the text as written rather than fail on a hand-edited chunk
        fields[key] = value
        pos = match.end()
    return fields
