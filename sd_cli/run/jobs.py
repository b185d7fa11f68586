"""Every way of asking for images becomes one list of jobs, one job per image.

A prompt on the command line, a prompt file (plain lines, JSON Lines, AUTOMATIC1111 "prompts
from file" lines, mixed freely) and a PNG's recorded parameters (--from-png) all end up as Job
objects, so resuming, --json, sharding over torchrun ranks and partial failure work alike.

Prompt file lines, told apart one by one:

    a red circle                                      plain: the whole line is the prompt
    {"prompt": "a cat", "seed": 5, "steps": 30}       JSON object: per-line values
    --prompt "a cat" --seed 5 --steps 30              AUTOMATIC1111 "prompts from file" syntax

Blank lines are skipped, except under the original scripts' entry points (scripts/*.py), where a
blank line is the empty prompt as in the original (docs/reference/original-scripts.md §2.3; blank_lines_are_prompts).
Line numbers count every line of the file. Values not given on a line
come from the command line. The keys, their other spellings and their checks are the "job" and
"line" rows of sd_cli/fields.py.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path

from sd_cli.errors import UsageError
from sd_cli.fields import LINE_KEYS, MAX_SEED, default, line_key, name_problem, type_name

NAME_FIELDS = ("index", "seed", "prompt_slug", "line", "sampler", "steps", "scale")


@dataclass(frozen=True)
class Job:
    """One image to render: everything that decides its pixels, its name and where it came from."""

    index: int  # position in the whole run, from 0; -o patterns and --name count with it
    prompt: str
    negative_prompt: str = default("negative_prompt")
    seed: int = 0
    sampler: str = default("sampler")
    steps: int = default("steps")
    scale: float = default("scale")
    eta: float = default("eta")
    width: int | None = None  # None: the model's native size
    height: int | None = None
    strength: float = default("strength")  # img2img only
    init_img: Path | None = None
    mask: Path | None = None
    name: str | None = None  # file name inside --outdir; None: numbered samples/NNNNN.png
    line: int | None = None  # 1-based line of the prompt file it came from
    # Values nothing gave (no flag, defaults file, --from-png or line value): the model's own replace
    # them once it is loaded (run/render.py with_model_defaults).
    model_defaults: frozenset[str] = frozenset()

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share a batch (prompts, negatives and seeds may differ)."""
        from sd_cli.loading.lora import tag_key

        return (self.sampler, self.steps, self.scale, self.eta, self.width, self.height,
                self.strength, self.init_img, self.mask, tag_key(self.prompt))

    @property
    def where(self) -> str:
        """How messages name this job: its prompt-file line, or its image number."""
        return f"line {self.line}" if self.line is not None else f"image {self.index}"


@dataclass
class Request:
    """One line of a prompt file (or the command line): its own values and its image count."""

    values: dict = field(default_factory=dict)
    line: int | None = None


@dataclass
class BadLine:
    line: int
    message: str


@dataclass
class Defaults:
    """What the command line says; a line's own values win over these."""

    values: dict  # prompt, negative_prompt, seed (the base seed), sampler, steps, scale, ...
    count: int = 1  # images per line: --n-samples for one prompt, --repeat for a prompt file
    n_iter: int = 1
    fixed_code: bool = False
    name_template: str | None = None
    model_defaults: frozenset[str] = frozenset()  # "scale", "sampler": given nowhere, the model's own


# -- reading prompt files ------------------------------------------------------------------------

_BLANK_LINE_PROMPTS = ContextVar("blank_line_prompts", default=False)


@contextmanager
def blank_lines_are_prompts():
    """Within: a prompt file's blank line is one more image of the empty prompt (the original scripts')."""
    token = _BLANK_LINE_PROMPTS.set(True)
    try:
        yield
    finally:
        _BLANK_LINE_PROMPTS.reset(token)


def read_prompt_file(source: str | Path) -> str:
    """The text of a prompt file, or of stdin for "-"; empty and non-UTF-8 files are usage errors."""
    name = "stdin" if str(source) == "-" else str(source)
    try:
        data = sys.stdin.buffer.read() if str(source) == "-" else Path(source).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read prompt file {name}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"prompt file {name} is not UTF-8 text (byte {err.start}); re-save it as UTF-8") from None
    if not (text.strip() or (text and _BLANK_LINE_PROMPTS.get())):  # the original renders blank lines
        raise UsageError(f"prompt file {name} is empty; put one prompt per line")
    return text


def parse_prompt_file(text: str) -> list[Request | BadLine]:
    """One Request per non-blank line (per line in blank_lines_are_prompts), or a BadLine saying what
    is wrong with it."""
    parsed = []
    keep_blank = _BLANK_LINE_PROMPTS.get()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() and not keep_blank:
            continue
        try:
            parsed.append(Request(parse_line(line), line=number))
        except ValueError as err:
            parsed.append(BadLine(number, str(err)))
    return parsed


def parse_line(line: str) -> dict:
    """A line's values: a JSON object, AUTOMATIC1111 options, or the prompt itself."""
    stripped = line.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        values = _parse_json(stripped)
    elif stripped.startswith("--"):
        values = _parse_options(stripped)
    else:
        return {"prompt": stripped}
    if "prompt" not in values:
        raise ValueError("no prompt on this line; add \"prompt\" (JSON) or --prompt")
    return values


def _parse_json(text: str) -> dict:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(values, dict):
        raise ValueError("a JSON line must be an object such as {\"prompt\": \"a cat\"}")
    return check_values(values)


def _parse_options(text: str) -> dict:
    try:
        tokens = shlex.split(text)
    except ValueError as err:
        raise ValueError(f"cannot split the options ({err}); check the quotes") from None
    values = {}
    while tokens:
        option = tokens.pop(0)
        if not option.startswith("-") or not tokens:
            raise ValueError(f"expected '--option value' pairs, got {option!r}"
                             + ("" if tokens else " without a value"))
        key = _key(option.lstrip("-"))
        values[key] = _from_text(key, tokens.pop(0))
    return check_values(values)


def _key(name: str) -> str:
    key = line_key(name)
    if key is None:
        raise ValueError(f"unknown option {name!r}; known: {', '.join(LINE_KEYS)}")
    return key


def _from_text(key: str, text: str):
    kind = LINE_KEYS[key].kind
    try:
        return text if kind is str else kind(text)
    except ValueError:
        raise ValueError(f"{key} must be {type_name(kind)}, got {text!r}") from None


# -- checking values ---------------------------------------------------------------------------

def check_values(values: dict, label=lambda key: key) -> dict:
    """Normalise keys and check types and ranges; raises ValueError naming the key and the fix.

    `label` turns a key into how the user spelled it (a flag name for the command line).
    """
    checked = {}
    for raw_key, value in values.items():
        key = _key(raw_key)
        checked[key] = _check(key, _typed(key, value, label), label)
    if checked.get("seed") == -1:  # AUTOMATIC1111's "random": the run's seed instead
        del checked["seed"]
    return checked


def _typed(key: str, value, label):
    kind = LINE_KEYS[key].kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{label(key)} must be {type_name(kind)}, got {json.dumps(value)}")
    return value


def _check(key: str, value, label):
    check = LINE_KEYS[key].check
    problem = check(value) if check is not None else None
    if problem:
        raise ValueError(f"{label(key)} {value} {problem}" if key != "name" else f"{label(key)} {value!r} {problem}")
    if key == "sampler":
        return sampler_id(value, label(key))
    if key in ("init_img", "mask"):
        return Path(value).expanduser()
    return value


def sampler_id(name: str, flag: str = "sampler") -> str:
    """The canonical sampler name (sampling/samplers.py) for an id or an AUTOMATIC1111 label, any case."""
    from sd_cli.sampling.samplers import UnknownSampler, canonical

    try:
        return canonical(name)
    except UnknownSampler as err:
        raise ValueError(f"{flag} {err}") from None


# -- jobs ----------------------------------------------------------------------------------------

def build_jobs(requests: list[Request], defaults: Defaults) -> list[Job]:
    """Jobs in render order: for each iteration, each request's images in turn.

    Seeds: image i of the run has base seed + i; a request with its own seed S gives its k-th
    image S + k (counting across iterations). --fixed_code gives every image its line's seed.
    """
    jobs: list[Job] = []
    for iteration in range(defaults.n_iter):
        for request in requests:
            count = _count(request, defaults)
            for k in range(count):
                jobs.append(_job(len(jobs), request, defaults, iteration * count + k, count * defaults.n_iter))
    _check_seeds(jobs)
    _check_unique_names(jobs)
    return jobs


def _count(request: Request, defaults: Defaults) -> int:
    values = request.values
    return values.get("n_samples", defaults.count) * values.get("n_iter", 1)


def _job(index: int, request: Request, defaults: Defaults, own: int, own_total: int) -> Job:
    values = {**defaults.values, **request.values}
    step = 0 if defaults.fixed_code else (own if "seed" in request.values else index)
    fields = {k: v for k, v in values.items() if k in Job.__dataclass_fields__ and k not in ("name", "seed")}
    job = Job(index=index, seed=values["seed"] + step, line=request.line,
              model_defaults=defaults.model_defaults - set(request.values), **fields)
    if job.sampler == "plms" and job.eta:
        place = f"{job.where}: " if job.line is not None else ""
        raise UsageError(f"{place}PLMS is deterministic and needs --eta 0; use --sampler ddim for eta > 0")
    return replace(job, name=_name(job, request.values.get("name"), defaults.name_template, own, own_total))


def _name(job: Job, own_name: str | None, template: str | None, own: int, own_total: int) -> str | None:
    if own_name is not None:
        name = own_name if own_total == 1 else _numbered(own_name, own)
    elif template is not None:
        _check_name_is_known(template, job)
        name = fill_name(template, job)
    else:
        return None
    return name if _image_suffix(name) else name + ".png"


def _numbered(name: str, k: int) -> str:
    suffix = _image_suffix(name) or ".png"
    stem = name[: -len(suffix)] if _image_suffix(name) else name
    return f"{stem}-{k}{suffix}"


def _image_suffix(name: str) -> str:
    """The name's suffix when it is a format the writer picks by suffix (.png, .jpg, .webp ...), else ""."""
    from sd_cli.files.output import IMAGE_FORMATS

    suffix = Path(name).suffix
    return suffix if suffix.lower() in IMAGE_FORMATS else ""


def _check_name_is_known(template: str, job: Job) -> None:
    """A file name must be known before the model loads (--skip-existing looks for it): a value that
    will be the model's own default cannot be in it."""
    for key in sorted(job.model_defaults):
        if re.search(r"\{" + key + r"[}:!]", template):
            raise UsageError(f"--name {template}: {{{key}}} is the model's own default when {key} is not given "
                             f"(SDXL's differs from SD's); pass --{key} to name files by it")


def fill_name(template: str, job: Job) -> str:
    """--name TEMPLATE for one job: {index:05}, {seed}, {prompt_slug}, {line}, {sampler}, {steps}, {scale}."""
    values = {"index": job.index, "seed": job.seed, "prompt_slug": slug(job.prompt), "line": job.line or 0,
              "sampler": job.sampler, "steps": job.steps, "scale": job.scale}
    try:
        name = template.format(**values)
    except KeyError as err:
        raise UsageError(f"--name {template}: unknown placeholder {{{err.args[0]}}}; "
                         f"use {', '.join('{' + f + '}' for f in NAME_FIELDS)}") from None
    except (ValueError, IndexError) as err:
        raise UsageError(f"--name {template}: {err}; use a format such as {{index:05}}") from None
    problem = name_problem(name)
    if problem:
        raise UsageError(f"--name {template} gives {name!r}, which {problem}")
    return name


def slug(prompt: str, limit: int = 48) -> str:
    """A file-name-safe short form of a prompt: lower case, words joined by '-'."""
    words = re.sub(r"[^\w]+", "-", prompt.lower(), flags=re.ASCII).strip("-_")
    return words[:limit].rstrip("-_") or "empty"


def _check_seeds(jobs: list[Job]) -> None:
    """Refuse the run when an image's seed (its base seed + its number) passes MAX_SEED: past it, seeds
    would repeat earlier seeds' noise or be refused when read back."""
    over = [job for job in jobs if job.seed > MAX_SEED]
    if not over:
        return
    first, highest = over[0], max(job.seed for job in over)
    place = f"{first.where}: " if first.line is not None else ""
    raise UsageError(f"{place}image {first.index} would get seed {first.seed}, above the largest seed {MAX_SEED} "
                     f"(image seeds count up from the base seed); use a seed {highest - MAX_SEED} lower")


def _check_unique_names(jobs: list[Job]) -> None:
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.name is None:
            continue
        if job.name in seen:
            first = seen[job.name]
            raise UsageError(f"{first.where} and {job.where} would both be written to {job.name}; "
                             "give each its own name, or add {index} to --name")
        seen[job.name] = job
