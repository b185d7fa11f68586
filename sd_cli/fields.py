"""The generation parameters, one row each: flag, default, infotext label, `--json` key, prompt-file keys.

The CLI declares its flags and defaults from this table (cli/options.py; every prompt-file key is
a flag too, see command_line_flags), the prompt-file reader takes its keys, aliases and checks from
it (run/jobs.py), the writer labels and formats the PNG's parameter line with it (files/writer.py),
and `info`, `--from-png` read that line back through it (files/reading.py). Adding a parameter is adding a row here, then giving it a value where it is
decided.

A row's `scope` says who sets the value:

- "job": one value per image: a Job attribute, a prompt-file key and a flag whose value is every
  image's default;
- "line": a prompt-file key of its own (count, name), not a Job attribute;
- "run": a run-wide flag that the PNG records and --from-png takes back;
- "recorded": written into the PNG only (hashes, model, version).

The rows are in the order of the infotext's parameter line, which AUTOMATIC1111's readers expect
("Steps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 512x512, ..."). Two rows share the
label "Denoising strength", as in AUTOMATIC1111: img2img's strength and the hires fix's; a PNG
records at most one of them (the hires fix is txt2img only).

No torch and no sd_cli package imports at module level: `sd-cli --help` imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

LORA_DIR = Path("checkpoints/lora")  # --lora-dir: where <lora:name:w> and --lora names are looked up
EMBEDDINGS_DIR = Path("checkpoints/embeddings")  # --embeddings when not given, used if it exists

SIZE_MULTIPLE = 64  # the SD UNet downsamples the 1/8 latent three times
# torch's CPU generator (mt19937) keeps only a seed's low 32 bits, so seed S and S + 2**32 draw the
# same noise: 32-bit seeds are every distinct image there is (AUTOMATIC1111's UI uses them too).
MAX_SEED = 2**32 - 1
MAX_STEPS = 1000
AESTHETIC_SCORES = (6.0, 2.5)  # the SDXL demo's refiner conditioning: the prompt's, the negative pass's


@dataclass(frozen=True)
class Field:
    """One generation parameter and every name it goes by."""

    name: str  # Job attribute, `--json` / `info --json` key, prompt-file key, typer parameter
    scope: str  # "job", "line", "run" or "recorded" (see the module docstring)
    kind: type = str  # the value's type on a prompt-file line and in the infotext (str, int, float)
    default: object = None  # the flag's default; None: not given
    flags: tuple[str, ...] = ()  # command-line spellings, the readable one first (see command_line_flags)
    label: Optional[str] = None  # infotext key; None: not in the parameter line
    aliases: tuple[str, ...] = ()  # other prompt-file spellings (AUTOMATIC1111, sd.cpp, the original scripts)
    json: bool = False  # in `--json` and `info --json` under `name`
    check: Optional[Callable[[object], Optional[str]]] = None  # what is wrong with a value, or None
    to_text: Optional[Callable[[object], object]] = None  # value -> infotext value (default: as it is)
    from_text: Optional[Callable[[str], object]] = None  # infotext text -> value (default: `kind`)

    @property
    def flag(self) -> str:
        """How messages name the value on the command line."""
        return self.flags[0] if self.flags else self.name

    @property
    def line_key(self) -> bool:
        return self.scope in ("job", "line")

    def format(self, value) -> object:
        return value if self.to_text is None else self.to_text(value)

    def parse(self, text: str):
        """The value of an infotext text; ValueError saying what it is not."""
        if self.from_text is not None:
            return self.from_text(text)
        if self.kind is str:
            return text
        try:
            return self.kind(text)
        except ValueError:
            raise ValueError(f"is not {type_name(self.kind)}") from None


def type_name(kind) -> str:
    return {str: "a string", int: "an integer", float: "a number"}[kind]


# -- checks: what is wrong with a value, as the end of a sentence -----------------------------------

def _steps_problem(value: int) -> Optional[str]:
    return None if 1 <= value <= MAX_STEPS else f"is out of range; use 1 to {MAX_STEPS}"


def _seed_problem(value: int) -> Optional[str]:
    if 0 <= value <= MAX_SEED or value == -1:
        return None
    return f"is out of range; use 0 to {MAX_SEED} (or -1 for the run's seed)"


def _count_problem(value: int) -> Optional[str]:
    return None if value >= 1 else "must be at least 1"


def _strength_problem(value: float) -> Optional[str]:
    return None if 0.0 <= value <= 1.0 else "is outside [0, 1]"


def _eta_problem(value: float) -> Optional[str]:
    return None if value >= 0 else "must be 0 or more"


def _scale_problem(value: float) -> Optional[str]:
    return "is not a number" if math.isnan(value) else None


def size_problem(value: int) -> Optional[str]:
    """Sizes must be positive multiples of 64; never rounded, the message gives the neighbours."""
    if value >= SIZE_MULTIPLE and value % SIZE_MULTIPLE == 0:
        return None
    lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
    options = sorted({lower, lower + SIZE_MULTIPLE} if value > SIZE_MULTIPLE else {SIZE_MULTIPLE})
    return (f"is not a multiple of {SIZE_MULTIPLE}, which the UNet needs (not rounded); "
            f"try {' or '.join(map(str, options))}")


def _pixels_problem(value: int) -> Optional[str]:
    return None if value >= 1 else "must be at least 1 (pixels)"


def _offset_problem(value: int) -> Optional[str]:
    return None if value >= 0 else "must be 0 or more (pixels)"


def name_problem(name: str) -> Optional[str]:
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts:
        return "must be a relative file name inside --outdir (no '..', not absolute)"
    return None


# -- infotext forms -------------------------------------------------------------------------------

def _sampler_label(sampler: str) -> str:
    from sd_cli.sampling.samplers import label

    return label(sampler)


def _sampler_from_label(label: str) -> str:
    """sd_cli's sampler id for a recorded label; an unknown label (another tool's sampler) as it is."""
    from sd_cli.sampling.samplers import UnknownSampler, canonical

    try:
        return canonical(label)
    except UnknownSampler:
        return label


def _size_text(size: tuple[int, int]) -> str:
    width, height = size
    return f"{width}x{height}"


def _size_from_text(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError("is not WIDTHxHEIGHT") from None
    return width, height


def _whole_if_integral(value: float):
    """4.0 is written "4", as AUTOMATIC1111 writes its integer slider."""
    return int(value) if value == int(value) else value


# The hires fix's upscalers: --hires-upscaler value -> AUTOMATIC1111's infotext label.
HIRES_UPSCALER_LABELS = {"latent": "Latent", "latent-nearest": "Latent (nearest)"}


def _upscaler_label(key: str) -> str:
    return HIRES_UPSCALER_LABELS[key]


def _upscaler_from_label(label: str) -> str:
    """The upscaler key of a recorded label; another tool's upscaler becomes sd_cli's default."""
    return next((key for key, known in HIRES_UPSCALER_LABELS.items() if known == label), "latent")


# -- the table ------------------------------------------------------------------------------------

FIELDS: tuple[Field, ...] = (
    Field("prompt", "job", flags=("--prompt", "-p"), aliases=("p",), json=True),
    Field("negative_prompt", "job", default="", flags=("--negative-prompt", "-n"), aliases=("negative", "n"),
          json=True),  # infotext: its own "Negative prompt:" line (infotext.py)
    Field("steps", "job", int, 50, ("--steps", "--ddim_steps"), "Steps", ("ddim_steps",), json=True,
          check=_steps_problem),
    Field("sampler", "job", str, "ddim", ("--sampler", "--sampling-method"), "Sampler",
          ("sampler_name", "sampler_index", "sampling_method"), json=True,
          to_text=_sampler_label, from_text=_sampler_from_label),
    Field("schedule_type", "recorded", label="Schedule type"),  # sgm models, as AUTOMATIC1111 1.9: "Sampler: Euler, Schedule type: EDM"
    Field("scale", "job", float, 7.5, ("--scale", "--cfg-scale"), "CFG scale", ("cfg_scale",), json=True,
          check=_scale_problem),
    Field("seed", "job", int, None, ("--seed", "-s"), "Seed", json=True, check=_seed_problem),
    Field("width", "job", int, None, ("--width", "-W", "--W"), aliases=("W",), json=True, check=size_problem),
    Field("height", "job", int, None, ("--height", "-H", "--H"), aliases=("H",), json=True, check=size_problem),
    Field("size", "recorded", label="Size", to_text=_size_text, from_text=_size_from_text),  # (width, height)
    Field("model_hash", "recorded", label="Model hash", json=True),
    Field("model", "recorded", label="Model", json=True),
    Field("strength", "job", float, 0.75, ("--strength",), "Denoising strength", ("denoising_strength",),
          json=True, check=_strength_problem),  # img2img's; inpaint and depth2img have their own defaults
    Field("mask_blur", "run", float, 4.0, ("--mask-blur",), "Mask blur", to_text=_whole_if_integral),
    Field("eta", "job", float, 0.0, ("--eta", "--ddim_eta"), "Eta", ("ddim_eta",), json=True, check=_eta_problem),
    Field("hires_strength", "run", float, 0.7, ("--hires-strength",), "Denoising strength"),
    Field("hires_scale", "run", float, None, ("--hires-scale",), "Hires upscale"),
    Field("hires_steps", "run", int, 0, ("--hires-steps",), "Hires steps"),
    Field("hires_upscaler", "run", str, "latent", ("--hires-upscaler",), "Hires upscaler",
          to_text=_upscaler_label, from_text=_upscaler_from_label),
    # -- the SDXL refiner (pipelines/refine.py): AUTOMATIC1111's Refiner and Refiner switch at, then
    # what sd_cli needs to repeat the demo's hand-off exactly (--from-png)
    Field("refiner", "run", flags=("--refiner",), label="Refiner"),  # "NAME [hash]", as AUTOMATIC1111 writes it
    Field("refiner_switch_at", "recorded", float, label="Refiner switch at"),  # the share of steps the base ran
    Field("refiner_strength", "run", float, 0.15, ("--refiner-strength",), "Refiner strength"),
    Field("refiner_steps", "run", int, 0, ("--refiner-steps",), "Refiner steps"),
    Field("aesthetic_score", "run", float, AESTHETIC_SCORES[0], ("--aesthetic-score",), "Aesthetic score", to_text=_whole_if_integral),
    Field("negative_aesthetic_score", "run", float, AESTHETIC_SCORES[1], ("--negative-aesthetic-score",), "Negative aesthetic score",
          to_text=_whole_if_integral),
    # -- end of the SDXL refiner's rows
    Field("vae_hash", "recorded", label="VAE hash"),
    Field("vae", "run", flags=("--vae",), label="VAE"),  # the file's name: --from-png cannot find the file
    Field("lora_hashes", "recorded", label="Lora hashes"),
    Field("sampler_id", "recorded", label="Sampler id"),  # where the label is ambiguous ("DPM++ 2M")
    Field("clip_skip", "run", int, None, ("--clip-skip",), "Clip skip"),
    Field("ti_hashes", "recorded", label="TI hashes"),
    Field("emphasis", "run", str, "original", ("--emphasis",), "Emphasis",
          to_text=str.capitalize, from_text=str.lower),
    # SDXL's size and crop conditioning (docs/usage.md): written only where given; None follows the image.
    Field("original_width", "run", int, None, ("--original-width",), "Original width", check=_pixels_problem),
    Field("original_height", "run", int, None, ("--original-height",), "Original height", check=_pixels_problem),
    Field("crop_top", "run", int, None, ("--crop-top",), "Crop top", check=_offset_problem),
    Field("crop_left", "run", int, None, ("--crop-left",), "Crop left", check=_offset_problem),
    Field("target_width", "run", int, None, ("--target-width",), "Target width", check=_pixels_problem),
    Field("target_height", "run", int, None, ("--target-height",), "Target height", check=_pixels_problem),
    Field("version", "recorded", label="Version"),
    Field("init_img", "job", flags=("--init-img", "-i", "--init_img"), aliases=("init_image",), json=True),
    Field("mask", "job", flags=("--mask",), json=True),
    Field("n_samples", "line", int, 1, ("--n-samples", "--n_samples", "--batch-size"), aliases=("batch_size",),
          check=_count_problem),
    Field("n_iter", "line", int, 1, ("--n-iter", "-b", "--batch-count", "--n_iter"), aliases=("batch_count",),
          check=_count_problem),  # stable-diffusion.cpp's -b renders images one after another: --n-iter
    Field("name", "line", flags=("--name",), check=name_problem),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
LINE_KEYS: dict[str, Field] = {f.name: f for f in FIELDS if f.line_key}
JOB_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.scope == "job")
HIRES_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.name.startswith("hires_"))
# The refiner's settings a PNG records and --from-png takes back (the file itself by name, as --vae).
REFINER_FIELDS: tuple[Field, ...] = tuple(BY_NAME[name] for name in ("refiner_strength", "refiner_steps",
                                                                      "aesthetic_score", "negative_aesthetic_score"))
SIZE_CONDITIONING_FIELDS: tuple[Field, ...] = tuple(BY_NAME[name] for name in (
    "original_width", "original_height", "crop_top", "crop_left", "target_width", "target_height"))


def default(name: str):
    return BY_NAME[name].default


def flags(name: str) -> tuple[str, ...]:
    return command_line_flags(BY_NAME[name])


def command_line_flags(field: Field) -> tuple[str, ...]:
    """The field's own flags, then `--KEY` for each prompt-file key of it not spelled so already
    (--negative_prompt, --cfg_scale, --sampler_name, --batch_size, ...): a key a prompt-file line
    accepts works on the command line too, with the same meaning."""
    keys = (field.name, *field.aliases) if field.line_key else ()
    return tuple(dict.fromkeys((*field.flags, *(f"--{key}" for key in keys))))


def flag(name: str) -> str:
    return BY_NAME[name].flag


def line_key(spelling: str) -> Optional[str]:
    """The prompt-file key for a spelling ("cfg_scale", "--ddim-steps" without dashes, "W"), or None."""
    for candidate in (spelling, spelling.replace("-", "_")):
        if candidate in LINE_KEYS:
            return candidate
        found = next((f.name for f in LINE_KEYS.values() if candidate in f.aliases), None)
        if found:
            return found
    return None


def infotext_fields(values: dict) -> dict[str, object]:
    """{label: infotext value} in the parameter line's order, from {field name: value}; None values
    and fields without a label are left out."""
    return {f.label: f.format(values[f.name]) for f in FIELDS
            if f.label is not None and values.get(f.name) is not None}
