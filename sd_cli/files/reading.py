"""Reading images back: `sd-cli info` (recorded parameters), `sd-cli verify` (watermark), --from-png.

The parameters are the PNG's ``parameters`` text chunk (AUTOMATIC1111's infotext, metadata.py);
`info --json` gives them under the same names as `txt2img --json`, so a script can use either.
"""

from __future__ import annotations

from pathlib import Path

from sd_cli.errors import SdCliError
from sd_cli.files.images import open_image

# infotext key -> (JSON / job field, type)
FIELDS = {
    "Seed": ("seed", int), "Steps": ("steps", int), "CFG scale": ("scale", float), "Sampler": ("sampler", str),
    "Eta": ("eta", float), "Denoising strength": ("strength", float), "Model": ("model", str),
    "Model hash": ("model_hash", str),
}
# Fields a re-render takes from the image (the model is chosen separately).
RENDER_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "scale", "sampler", "eta", "width", "height", "strength")


def read_infotext(path: str | Path) -> str:
    """The ``parameters`` text of an image file; a one-line SdCliError when there is none."""
    from sd_cli.files.infotext import PNG_KEY

    text = open_image(Path(path)).info.get(PNG_KEY)
    if not isinstance(text, str):
        raise SdCliError(f"{path} has no recorded parameters (no 'parameters' text chunk); "
                         "it was not written by sd-cli or AUTOMATIC1111, or its metadata was stripped")
    return text


def info_record(path: str | Path) -> dict:
    """The recorded parameters as the fields of `txt2img --json`, plus every raw field under "parameters"."""
    from sd_cli.files.infotext import parse_infotext

    prompt, negative, fields = parse_infotext(read_infotext(path))
    record = {"path": str(path), "prompt": prompt, "negative_prompt": negative}
    for key, (name, kind) in FIELDS.items():
        if key in fields:
            record[name] = _value(fields[key], kind, key, path)
    if "Size" in fields:
        record["width"], record["height"] = _size(fields["Size"], path)
    if "sampler" in record:  # sd_cli writes "Sampler id" where the label is ambiguous ("DPM++ 2M")
        record["sampler"] = fields.get("Sampler id") or _sampler(record["sampler"])
    record["parameters"] = fields
    return record


def render_values(path: str | Path) -> tuple[dict, dict]:
    """(job values, model fields) for re-rendering an image with --from-png."""
    record = info_record(path)
    missing = [f for f in ("seed", "steps", "scale", "sampler") if f not in record]
    if missing:
        raise SdCliError(f"{path} does not record {', '.join(missing)}; it cannot be re-rendered exactly")
    values = {k: record[k] for k in RENDER_FIELDS if k in record}
    return values, {k: record.get(k) for k in ("model", "model_hash")}


def run_options(path: str | Path) -> dict:
    """The recorded run-wide settings a re-render needs, as CLI option names: clip skip, emphasis,
    hires fix, and the name of a separate VAE (which --from-png cannot find by itself)."""
    fields = info_record(path)["parameters"]
    options = {}
    if "Clip skip" in fields:
        options["clip_skip"] = _value(fields["Clip skip"], int, "Clip skip", path)
    if fields.get("Emphasis", "").lower() == "none":
        options["emphasis"] = "none"
    if "Hires upscale" in fields:
        from sd_cli.pipelines.hires import UPSCALERS

        labels = {label: key for key, (_mode, label) in UPSCALERS.items()}
        options["hires_scale"] = _value(fields["Hires upscale"], float, "Hires upscale", path)
        options["hires_steps"] = _value(fields.get("Hires steps", "0"), int, "Hires steps", path)
        options["hires_strength"] = _value(fields.get("Denoising strength", "0.7"), float, "Denoising strength", path)
        options["hires_upscaler"] = labels.get(fields.get("Hires upscaler", "Latent"), "latent")
    if "VAE" in fields:
        options["vae_name"] = fields["VAE"]
    return options


def verify_record(path: str | Path) -> dict:
    """Which known watermark text the image carries (None if none), with the match score."""
    import numpy as np

    from sd_cli.files.watermark import MIN_PIXELS, identify_watermark

    rgb = np.asarray(open_image(Path(path)).convert("RGB"))
    text, score = identify_watermark(rgb)
    record = {"path": str(path), "watermark": text, "score": round(score, 3)}
    if rgb.shape[0] * rgb.shape[1] < MIN_PIXELS:
        record["note"] = "smaller than 256x256 pixels: too small to carry a watermark"
    return record


def describe_verify(record: dict) -> str:
    if record["watermark"]:
        return f"{record['path']}: {record['watermark']} (match {record['score']:.2f})"
    reason = record.get("note") or f"best match {record['score']:.2f}, chance is 0.50"
    return f"{record['path']}: no known watermark ({reason})"


def _value(text: str, kind, key: str, path):
    try:
        return kind(text)
    except ValueError:
        raise SdCliError(f"{path}: recorded {key} {text!r} is not {'an integer' if kind is int else 'a number'}") from None


def _size(text: str, path) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SdCliError(f"{path}: recorded Size {text!r} is not WIDTHxHEIGHT") from None
    return width, height


def _sampler(label: str) -> str:
    """sd_cli's sampler id for a recorded label; an unknown label (another tool's sampler) as it is."""
    from sd_cli.run.jobs import sampler_id

    try:
        return sampler_id(label)
    except ValueError:
        return label
