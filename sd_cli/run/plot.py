"""X/Y/Z plots (`--xy "steps=10,20,30" "scale=5,7.5"`): the axes, one prompt-file-like request per
cell, and where each image of the run sits in the plot.

An axis is `FIELD=V1,V2,...`: FIELD is any per-image field of sd_cli/fields.py under any of its
spellings (steps, cfg_scale, "CFG scale", sampler_name, seed, width, ...), or AUTOMATIC1111's
"Prompt S/R" (prompt_sr=cat,dog,fox: the first value is searched in the prompt and the negative
prompt, each value replaces it). Values are comma-separated, quoted as CSV where one holds a comma;
whole numbers also take AUTOMATIC1111's ranges `1-5` and `10-30 (+10)`, numbers `0.5-1.5 (+0.5)`.
The first axis runs along the top (X), the second down the side (Y), a third gives one grid per value (Z).

Every cell is a Request with its own values, so each image is an ordinary job: its own infotext,
its own --json record, reproducible alone with --from-png. All cells share the run's base seed
(AUTOMATIC1111's plot does the same): the axes are the only difference between two cells.

No torch here: the axes are checked before any model loads.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass

from sd_cli import fields
from sd_cli.errors import UsageError

MAX_AXES = 3
PROMPT_SR = "prompt_sr"
_PROMPT_SR_SPELLINGS = ("prompt_sr", "prompt-sr", "prompt s/r", "prompt_s/r", "sr")
# Names a person may write with a space, as AUTOMATIC1111's plot labels them.
_SPACED_NAMES = ("prompt s/r", "cfg scale", "negative prompt", "denoising strength")
_AXIS_NAME = re.compile(r"^[A-Za-z][\w/-]*=")
# AUTOMATIC1111's range forms: "1-5" (whole numbers, step 1) and "10-30 (+10)" / "1.5-0.5 (-0.5)".
_RANGE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*-\s*([+-]?\d+(?:\.\d+)?)\s*(?:\(\s*([+-]\s*\d+(?:\.\d+)?)\s*\))?\s*$")
# Job fields that cannot be an axis: the input files are the command's, not a sampling setting.
_INPUT_FIELDS = ("init_img", "mask")
_AXIS_LETTERS = "XYZ"


@dataclass(frozen=True)
class Axis:
    """One axis of the plot: the field it varies, its values and how the grid labels them."""

    field: str  # a Job field name, or PROMPT_SR
    title: str  # "Steps", "CFG scale", "Prompt S/R": the grid's recorded "X Type"
    values: tuple  # typed and checked as a prompt-file line's (sampler ids canonical)
    text: str  # the values as given: the grid's recorded "X Values"

    def labels(self) -> list[str]:
        """What the grid writes beside each row or column: "Steps: 10", "Sampler: Euler a", "dog"."""
        if self.field in (PROMPT_SR, "prompt", "negative_prompt"):
            return [str(value) for value in self.values]
        field = fields.BY_NAME[self.field]
        return [f"{self.title}: {field.format(value)}" for value in self.values]


@dataclass(frozen=True)
class Plot:
    """The axes of an X/Y/Z plot (one to three) and the images each cell gets."""

    axes: tuple[Axis, ...]
    per_cell: int = 1  # images a cell renders in one pass of the run (--n-samples)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, grids): one value for a missing axis."""
        sizes = [len(axis.values) for axis in self.axes] + [1] * (MAX_AXES - len(self.axes))
        return sizes[0], sizes[1], sizes[2]

    def cells(self) -> list[tuple[int, int, int]]:
        """(x, y, z) of every cell in render order: X fastest, then Y, then Z."""
        columns, rows, grids = self.shape
        return [(x, y, z) for z, y, x in itertools.product(range(grids), range(rows), range(columns))]

    def cell_of(self, job_index: int) -> tuple[int, int, int]:
        """Where image `job_index` of the run goes (jobs come cell by cell, per_cell each, per --n-iter pass)."""
        cells = self.cells()
        return cells[(job_index // self.per_cell) % len(cells)]

    def requests(self, prompt: str, negative_prompt: str, seed: int) -> list:
        """One request per cell: the axes' values over the command line's, every cell on the base seed."""
        from sd_cli.run.jobs import Request

        requests = []
        for cell in self.cells():
            values = {"prompt": prompt, "seed": seed}
            for axis, position in zip(self.axes, cell):
                values.update(_cell_values(axis, axis.values[position], prompt, negative_prompt, values))
            requests.append(Request(values))
        return requests

    def recorded(self) -> dict[str, str]:
        """The plot's axes in the grid's infotext, as AUTOMATIC1111's X/Y/Z plot records them."""
        recorded = {"Script": "X/Y/Z plot"}
        for letter, axis in zip(_AXIS_LETTERS, self.axes):
            recorded[f"{letter} Type"] = axis.title
            recorded[f"{letter} Values"] = axis.text
        return recorded


def _cell_values(axis: Axis, value, prompt: str, negative_prompt: str, so_far: dict) -> dict:
    if axis.field != PROMPT_SR:
        return {axis.field: value}
    search = axis.values[0]
    current_prompt = so_far.get("prompt", prompt)
    current_negative = so_far.get("negative_prompt", negative_prompt)
    return {"prompt": current_prompt.replace(search, value),
            "negative_prompt": current_negative.replace(search, value)}


# -- reading the axes -------------------------------------------------------------------------------

def looks_like_axis(token: str) -> bool:
    """Whether a command-line word after --xy is one more axis ("scale=5,7.5"), not the prompt."""
    if token.startswith("-") or "=" not in token:
        return False
    return bool(_AXIS_NAME.match(token)) or token.split("=", 1)[0].strip().lower() in _SPACED_NAMES


def parse_plot(texts: list[str], prompt: str | None, negative_prompt: str, mode: str, per_cell: int) -> Plot:
    """The plot of the --xy axes; UsageError naming the axis and the fix."""
    if len(texts) > MAX_AXES:
        raise UsageError(f"--xy takes at most {MAX_AXES} axes (X, Y, Z), got {len(texts)}; drop one")
    axes = tuple(_axis(text, mode) for text in texts)
    seen: dict[str, str] = {}
    for axis, text in zip(axes, texts):
        if axis.field in seen:
            raise UsageError(f"--xy {text!r}: {axis.title} is already the axis {seen[axis.field]!r}; give each field once")
        seen[axis.field] = text
    for axis, text in zip(axes, texts):
        if axis.field == PROMPT_SR:
            _check_search(axis, text, prompt or "", negative_prompt)
    return Plot(axes, per_cell)


def _axis(text: str, mode: str) -> Axis:
    name, _, values_text = text.partition("=")
    field = _field_name(name.strip(), text)
    if field in _INPUT_FIELDS and mode == "txt2img":
        raise UsageError(f"--xy {text!r}: txt2img takes no {fields.flag(field)}; plot it with img2img")
    words = _split_values(values_text, text)
    if field == PROMPT_SR:
        if len(words) < 2:
            raise UsageError(f"--xy {text!r}: Prompt S/R needs the word to search and at least one replacement, "
                             "e.g. prompt_sr=cat,dog")
        return Axis(PROMPT_SR, "Prompt S/R", tuple(words), values_text.strip())
    values = tuple(_checked(field, value, text) for value in _expanded(field, words, text))
    return Axis(field, _title(field), values, values_text.strip())


def _field_name(name: str, text: str) -> str:
    plain = name.lstrip("-")
    if plain.lower() in _PROMPT_SR_SPELLINGS:
        return PROMPT_SR
    key = fields.line_key(plain) or fields.line_key(plain.lower().replace(" ", "_")) or _by_any_name(plain)
    if key is None:
        raise UsageError(f"--xy {text!r}: unknown field {name!r}; axes take {', '.join(axis_fields())}")
    scope = fields.BY_NAME[key].scope
    if scope == "run":
        raise UsageError(f"--xy {text!r}: {name} is set once per run, not per image, so it cannot be an axis; "
                         f"axes take {', '.join(axis_fields())}")
    if scope != "job":
        raise UsageError(f"--xy {text!r}: {name} is not a per-image value; axes take {', '.join(axis_fields())}")
    return key


def axis_fields() -> list[str]:
    """The fields an axis can vary, as the error messages and the docs name them."""
    return [f.name for f in fields.JOB_FIELDS] + [PROMPT_SR]


def _by_any_name(name: str) -> str | None:
    """A field of any scope by name, flag or infotext label ("CFG scale", hires-steps, clip_skip)."""
    plain = name.lower().replace("-", "_").replace(" ", "_")
    for field in fields.FIELDS:
        spellings = {field.name, *(f.lstrip("-").replace("-", "_").lower() for f in field.flags)}
        if plain in spellings or (field.label and field.label.lower().replace(" ", "_") == plain):
            return field.name
    return None


def _split_values(values_text: str, text: str) -> list[str]:
    if not values_text.strip():
        raise UsageError(f"--xy {text!r}: no values after '='; write FIELD=V1,V2,... e.g. steps=10,20,30")
    try:
        words = next(csv.reader([values_text], skipinitialspace=True))
    except csv.Error as err:
        raise UsageError(f"--xy {text!r}: cannot split the values ({err}); check the quotes") from None
    words = [word.strip() for word in words]
    if any(not word for word in words):
        raise UsageError(f"--xy {text!r}: an empty value between commas; remove the extra comma")
    return words


def _expanded(field: str, words: list[str], text: str) -> list:
    """The words as values of the field's type, ranges written out."""
    kind = fields.BY_NAME[field].kind
    values = []
    for word in words:
        found = _RANGE.match(word) if kind in (int, float) else None
        if found:
            values.extend(_range(kind, found, word, text))
            continue
        try:
            values.append(word if kind is str else kind(word))
        except ValueError:
            raise UsageError(f"--xy {text!r}: {word!r} is not {fields.type_name(kind)}") from None
    return values


def _range(kind, found: re.Match, word: str, text: str) -> list:
    start_text, end_text, step_text = found.groups()
    if kind is int and any("." in part for part in (start_text, end_text, step_text or "")):
        raise UsageError(f"--xy {text!r}: {word!r} is not a range of whole numbers")
    start, end = kind(start_text), kind(end_text)
    if step_text is None:
        if kind is float:
            raise UsageError(f"--xy {text!r}: the range {word!r} needs a step, e.g. '{word} (+0.5)'")
        step = 1 if end >= start else -1
    else:
        step = kind(step_text.replace(" ", ""))
    if step == 0 or (end - start) * step < 0:
        raise UsageError(f"--xy {text!r}: the range {word!r} never reaches its end; check the step's sign")
    count = int(round((end - start) / step, 9)) + 1
    return [start + i * step if kind is int else round(start + i * step, 9) for i in range(count)]


def _checked(field: str, value, text: str):
    from sd_cli.run.jobs import check_values

    try:
        checked = check_values({field: value}, label=lambda key: f"--xy {text!r}: {key}")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if field not in checked:  # seed -1 (AUTOMATIC1111's "random") would leave the cell without a seed
        raise UsageError(f"--xy {text!r}: seed -1 has no fixed value; give the seeds to compare")
    return checked[field]


def _title(field: str) -> str:
    label = fields.BY_NAME[field].label
    return label or field.replace("_", " ").capitalize()


def _check_search(axis: Axis, text: str, prompt: str, negative_prompt: str) -> None:
    search = axis.values[0]
    if search not in prompt and search not in negative_prompt:
        raise UsageError(f"--xy {text!r}: Prompt S/R's first value {search!r} is not in the prompt; "
                         "start with the words to replace")
