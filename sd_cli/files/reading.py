"""Reading images back: `sd-cli info` (recorded parameters), `sd-cli verify` (watermark), --from-png.

The parameters are the PNG's ``parameters`` text chunk, or a JPEG's or WebP's EXIF UserComment
(AUTOMATIC1111's infotext, infotext.py);
`info --json` gives them under the same names as `txt2img --json`, so a script can use either.
Labels, names and how each text is read are the rows of sd_cli/fields.py.
"""

from __future__ import annotations

from pathlib import Path

from sd_cli.errors import SdCliError
from sd_cli.fields import BY_NAME, FIELDS, HIRES_FIELDS, JOB_FIELDS, REFINER_FIELDS, SIZE_CONDITIONING_FIELDS, Field
from sd_cli.files.images import as_mode, open_image

# Fields a re-render takes from the image: every job value but the input images, which the PNG does
# not record (the model is chosen separately).
RENDER_FIELDS = tuple(f.name for f in JOB_FIELDS if f.name not in ("init_img", "mask"))
# The recorded fields `info --json` gives under their own names (Size as width and height).
RECORD_FIELDS = tuple(f for f in FIELDS if f.json and f.label is not None) + (
    BY_NAME["size"], BY_NAME["sampler_id"], BY_NAME["schedule_type"])
# The run-wide settings --from-png takes back, besides the hires fix.
RUN_FIELDS = (BY_NAME["clip_skip"], BY_NAME["emphasis"], BY_NAME["vae"], *SIZE_CONDITIONING_FIELDS)


def read_infotext(path: str | Path) -> str:
    """The recorded parameters of an image file (PNG text chunk, else EXIF UserComment); a one-line
    SdCliError when there are none."""
    from sd_cli.files.infotext import PNG_KEY, user_comment_text

    image = open_image(Path(path))
    text = image.info.get(PNG_KEY)
    if not isinstance(text, str):
        try:
            text = user_comment_text(image)
        except ValueError as err:
            raise SdCliError(f"{path}: cannot read the recorded parameters: {err}") from None
    if text is None:
        raise SdCliError(f"{path} has no recorded parameters (no 'parameters' text chunk or EXIF UserComment); "
                         "it was not written by sd-cli or AUTOMATIC1111, or its metadata was stripped")
    return text


def info_record(path: str | Path) -> dict:
    """The recorded parameters as the fields of `txt2img --json`, plus every raw field under "parameters"."""
    from sd_cli.files.infotext import parse_infotext

    prompt, negative, fields = parse_infotext(read_infotext(path))
    record = {"path": str(path), "prompt": prompt, "negative_prompt": negative}
    record.update(recorded_values(fields, RECORD_FIELDS, path))
    if "size" in record:
        record["width"], record["height"] = record.pop("size")
    schedule = record.pop("schedule_type", None)  # AUTOMATIC1111 1.9's "Sampler: Euler, Schedule type: EDM"
    if schedule and "sampler" in record:
        record["sampler"] = _with_schedule(record["sampler"], schedule)
    sampler_id = record.pop("sampler_id", None)  # sd_cli writes it where the label is ambiguous ("DPM++ 2M")
    if sampler_id and "sampler" in record:
        record["sampler"] = sampler_id
    record["parameters"] = fields
    return record


def _with_schedule(sampler: str, schedule_label: str) -> str:
    """The sampler id with a recorded schedule type; as it is where either is another tool's, or the
    sampler takes no schedule (DDIM's "Automatic")."""
    from sd_cli.sampling.samplers import UnknownSampler, canonical, schedule_id

    try:
        return canonical(sampler, schedule_id(schedule_label))
    except UnknownSampler:
        return sampler


def recorded_values(fields: dict[str, str], wanted: tuple[Field, ...], path) -> dict:
    """{field name: value} of the `wanted` fields present in an infotext's {label: text}."""
    values = {}
    for field in wanted:
        if field.label in fields:
            try:
                values[field.name] = field.parse(fields[field.label])
            except ValueError as err:
                raise SdCliError(f"{path}: recorded {field.label} {fields[field.label]!r} {err}") from None
    return values


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
    options = recorded_values(fields, RUN_FIELDS, path)
    if options.get("emphasis") != "none":  # the default, or another tool's mode sd_cli does not have
        options.pop("emphasis", None)
    if BY_NAME["hires_scale"].label in fields:
        options.update({f.name: f.default for f in HIRES_FIELDS})  # what the image leaves out was the default
        options.update(recorded_values(fields, HIRES_FIELDS, path))
    if "vae" in options:
        options["vae_name"] = options.pop("vae")
    options.update(_refiner_options(fields, path))
    return options


def _refiner_options(fields: dict[str, str], path) -> dict:
    """The SDXL refiner's recorded settings, and its file's name and hash ("refiner_name", "refiner_hash").

    An image from AUTOMATIC1111 records only "Refiner switch at" (the share of steps the base ran):
    its strength is then taken as 1 - switch at, which gives the base about that share of the steps
    (docs/fidelity.md)."""
    options = recorded_values(fields, REFINER_FIELDS, path)
    if BY_NAME["refiner"].label not in fields:
        return {key: value for key, value in options.items() if key.endswith("aesthetic_score")}
    name, _, rest = fields[BY_NAME["refiner"].label].partition(" [")
    options.update(refiner_name=name, refiner_hash=rest.rstrip("]") or None)
    switch = recorded_values(fields, (BY_NAME["refiner_switch_at"],), path).get("refiner_switch_at")
    if "refiner_strength" not in options and switch is not None:
        options["refiner_strength"] = round(1.0 - switch, 4)
    return options


def verify_record(path: str | Path) -> dict:
    """Which known watermark text the image carries (None if none), with the match score."""
    import numpy as np

    from sd_cli.files.watermark import MIN_PIXELS, NOTE_KEY, identify_watermark

    image = open_image(Path(path))
    rgb = np.asarray(as_mode(image, "RGB", path))
    text, score = identify_watermark(rgb)
    record = {"path": str(path), "watermark": text, "score": round(score, 3)}
    written_without = image.info.get(NOTE_KEY)
    if text is None and isinstance(written_without, str):
        record["written_without_watermark"] = written_without  # sd_cli read it back when writing
    elif rgb.shape[0] * rgb.shape[1] < MIN_PIXELS:
        record["note"] = "smaller than 256x256 pixels: too small to carry a watermark"
    return record


def describe_verify(record: dict) -> str:
    if record["watermark"]:
        return f"{record['path']}: {record['watermark']} (match {record['score']:.2f})"
    if "written_without_watermark" in record:
        return f"{record['path']}: written without a readable watermark ({record['written_without_watermark']})"
    reason = record.get("note") or f"best match {record['score']:.2f}, chance is 0.50"
    return f"{record['path']}: no known watermark ({reason})"
