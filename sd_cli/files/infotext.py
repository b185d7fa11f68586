"""Generation parameters stored in the PNG, in AUTOMATIC1111's "infotext" layout.

    a photo of a cat
    wearing a hat                      <- the prompt, as many lines as it has
    Negative prompt: blurry            <- only when there is one
    Steps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 512x512, Model: v2-1_512

The text goes into a PNG text chunk named ``parameters``, where A1111, ComfyUI, civitai and
``sd-cli info`` read it. A value holding a comma, colon, quote or newline is written as a JSON
string, as A1111 does, so that the parameter line splits unambiguously.
"""

from __future__ import annotations

import json
import re

PNG_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"

_KEY = r"\w[\w \-/]*"  # "Steps", "CFG scale", "Hires upscale", "Denoising strength", ...
_QUOTED = r'"(?:\\.|[^\\"])*"'
_FIELD = re.compile(rf"\s*({_KEY}):\s*({_QUOTED}|[^,]*?)\s*(?:,|$)")
_NEEDS_QUOTES = re.compile(r'[,:"\n\r]')


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
