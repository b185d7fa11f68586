"""The one sampler registry: id → spec (AUTOMATIC1111 label, default schedule, function).

The pipeline, the command line and the PNG infotext all go through it. It imports no torch, so
that `sd-cli --help` can list the samplers instantly; a spec names its function in
sd_cli.sampling.k_samplers and `function()` imports it.

Names: a sampler is chosen by its snake_case id ("dpmpp_2m"), its AUTOMATIC1111 label ("DPM++ 2M")
or an A1111 alias ("k_dpmpp_2m"), any case, spaces, "_" and "-" aside (so stable-diffusion.cpp's
"dpm++2m" and "euler_a" are the same names); a schedule other than the default is a suffix: the
schedule's label after a label ("DPM++ 2M Karras", as A1111 names it) or "_<schedule id>" after an
id ("dpmpp_2m_karras"). The canonical name of a choice is the id, plus "_<schedule>" when the
schedule is not the sampler's default; that is what jobs, --name templates and JSON carry.
"""

from dataclasses import dataclass

ORIGINAL = ("ddim", "plms", "dpm")  # the original scripts' samplers: their own schedules, no σ schedule


@dataclass(frozen=True)
class Schedule:
    id: str
    label: str  # AUTOMATIC1111's name, the suffix in "DPM++ 2M Karras"
    aliases: tuple[str, ...] = ()


SCHEDULES = {s.id: s for s in (
    Schedule("discrete", "Normal", ("automatic", "uniform", "normal")),
    Schedule("karras", "Karras", ("ka",)),  # "ka": A1111's aliases k_dpmpp_2m_ka, k_lms_ka, ...
    Schedule("exponential", "Exponential"),
    Schedule("sgm_uniform", "SGM Uniform"),
    Schedule("lcm", "LCM"),
    Schedule("edm", "EDM"),  # generative-models' EDM discretization (sgm models only)
    Schedule("turbo", "Turbo"),  # SDXL-Turbo / SD-Turbo's timestep subset (sgm models only)
)}
# The sampler a generative-models schedule runs with when --schedule comes without --sampler: the
# demo's EulerEDMSampler for EDM, turbo.py's SubstepSampler over EulerAncestralSampler for Turbo.
SCHEDULE_SAMPLERS = {"edm": "euler", "turbo": "euler_a"}


@dataclass(frozen=True)
class SamplerSpec:
    id: str
    label: str  # AUTOMATIC1111's name, written as "Sampler:" in the PNG
    function: str = ""  # name in sd_cli.sampling.k_samplers; "" for the original samplers
    schedule: str = "discrete"  # the default σ schedule
    aliases: tuple[str, ...] = ()  # AUTOMATIC1111's aliases (k_euler_a, ...)
    stochastic: bool = False  # draws fresh noise every step (ancestral / SDE / LCM)
    discard_penultimate: bool = False  # A1111's DPM2/DPM2 a: steps + 1 σ, the next-to-last dropped
    denoiser: str = "k"  # "k": denoiser.KDenoiser; "lcm": denoiser.LCMDenoiser

    @property
    def original(self) -> bool:
        return self.id in ORIGINAL

    def function_object(self):
        from sd_cli.sampling import k_samplers

        return getattr(k_samplers, self.function)


SAMPLERS = {s.id: s for s in (
    SamplerSpec("ddim", "DDIM"),
    SamplerSpec("plms", "PLMS"),
    SamplerSpec("dpm", "DPM++ 2M"),  # the v2 script's DPM-Solver++; "DPM++ 2M" as a name means dpmpp_2m
    SamplerSpec("euler", "Euler", "sample_euler", aliases=("k_euler",)),
    SamplerSpec("euler_a", "Euler a", "sample_euler_ancestral", aliases=("k_euler_a", "k_euler_ancestral"),
                stochastic=True),
    SamplerSpec("heun", "Heun", "sample_heun", aliases=("k_heun",)),
    SamplerSpec("lms", "LMS", "sample_lms", aliases=("k_lms",)),
    SamplerSpec("dpm2", "DPM2", "sample_dpm_2", aliases=("k_dpm_2",), discard_penultimate=True),
    SamplerSpec("dpm2_a", "DPM2 a", "sample_dpm_2_ancestral", aliases=("k_dpm_2_a",), stochastic=True,
                discard_penultimate=True),
    SamplerSpec("dpmpp_2m", "DPM++ 2M", "sample_dpmpp_2m", aliases=("k_dpmpp_2m",)),
    SamplerSpec("dpmpp_2m_sde", "DPM++ 2M SDE", "sample_dpmpp_2m_sde", aliases=("k_dpmpp_2m_sde",),
                stochastic=True),
    SamplerSpec("dpmpp_sde", "DPM++ SDE", "sample_dpmpp_sde", aliases=("k_dpmpp_sde",), stochastic=True),
    SamplerSpec("dpmpp_2s_a", "DPM++ 2S a", "sample_dpmpp_2s_ancestral", aliases=("k_dpmpp_2s_a",),
                stochastic=True),
    SamplerSpec("unipc", "UniPC", "sample_unipc"),
    SamplerSpec("lcm", "LCM", "sample_lcm", schedule="lcm", aliases=("k_lcm",), stochastic=True, denoiser="lcm"),
)}


@dataclass(frozen=True)
class Choice:
    """A sampler and the schedule it runs with."""

    sampler: SamplerSpec
    schedule: str | None  # None for the original samplers

    @property
    def name(self) -> str:
        """Canonical name: the id, plus "_<schedule>" when not the sampler's default."""
        if self.schedule is None or self.schedule == self.sampler.schedule:
            return self.sampler.id
        return f"{self.sampler.id}_{self.schedule}"

    @property
    def label(self) -> str:
        """AUTOMATIC1111's name: the label, plus the schedule's label when not the default."""
        if self.schedule is None or self.schedule == self.sampler.schedule:
            return self.sampler.label
        return f"{self.sampler.label} {SCHEDULES[self.schedule].label}"


class UnknownSampler(ValueError):
    pass


def _names() -> dict[str, str]:
    """Every accepted sampler name, lower case → id. k-diffusion labels win ("DPM++ 2M" is dpmpp_2m)."""
    names = {}
    for spec in sorted(SAMPLERS.values(), key=lambda spec: spec.original):
        for name in (spec.label, *spec.aliases):
            names.setdefault(name.lower(), spec.id)
    names.update({spec.id: spec.id for spec in SAMPLERS.values()})
    return names


def _plain(name: str) -> str:
    """A name without case, spaces, "_", "-" or "+": stable-diffusion.cpp's "dpm++2m" is "DPM++ 2M"."""
    return "".join(c for c in name.lower().replace("++", "pp") if c.isalnum())


def _plain_names() -> dict[str, str]:
    """Every accepted name in its plain form → id; a plain form shared by two samplers is left out."""
    plain: dict[str, set[str]] = {}
    for name, sampler_id in _names().items():
        plain.setdefault(_plain(name), set()).add(sampler_id)
    return {key: ids.pop() for key, ids in plain.items() if len(ids) == 1}


def _lookup(key: str) -> str | None:
    """The id a lower-case name stands for: as written, else in its plain form."""
    return _names().get(key) or _plain_names().get(_plain(key))


def _did_you_mean(name: str) -> str:
    """" (did you mean euler?)" for a typo close to known names, else ""."""
    from difflib import get_close_matches

    plain = _plain_names()
    close = dict.fromkeys(plain[key] for key in get_close_matches(_plain(name), plain, n=6, cutoff=0.7))
    return f" (did you mean {' or '.join(list(close)[:3])}?)" if close else ""


def _schedule_suffixes() -> list[tuple[str, str]]:
    """(lower-case suffix, schedule id), longest first: " karras", "_karras", " sgm uniform", ..."""
    suffixes = []
    for schedule in SCHEDULES.values():
        for name in (schedule.label, schedule.id, *schedule.aliases):
            suffixes += [(" " + name.lower(), schedule.id), ("_" + name.lower(), schedule.id)]
    return sorted(set(suffixes), key=lambda s: -len(s[0]))


def schedule_id(name: str) -> str:
    """A schedule id from an id, an AUTOMATIC1111 label or alias ("Karras", "SGM Uniform"), any case."""
    key = name.strip().lower()
    for schedule in SCHEDULES.values():
        if key in {schedule.id, schedule.label.lower(), *schedule.aliases}:
            return schedule.id
    raise UnknownSampler(f"{name!r} is unknown; use one of {', '.join(SCHEDULES)}")


def choose(name: str, schedule: str | None = None) -> Choice:
    """Parse a sampler name (id, label, alias, with an optional schedule suffix) and an optional
    explicit schedule; raise UnknownSampler (a ValueError) naming the ids otherwise."""
    key = " ".join(name.split()).lower()
    sampler_id, suffix_schedule = _lookup(key), None
    if sampler_id is None:
        for suffix, schedule_from_name in _schedule_suffixes():
            if key.endswith(suffix) and _lookup(key[:-len(suffix)]):
                sampler_id, suffix_schedule = _lookup(key[:-len(suffix)]), schedule_from_name
                break
    if sampler_id is None:
        raise UnknownSampler(f"{name!r} is unknown{_did_you_mean(name)}; use one of {', '.join(SAMPLERS)} "
                             "(or an AUTOMATIC1111 name such as \"Euler a\" or \"DPM++ 2M Karras\")")
    spec = SAMPLERS[sampler_id]
    explicit = schedule_id(schedule) if schedule is not None else None
    if suffix_schedule and explicit and suffix_schedule != explicit:
        raise UnknownSampler(f"{name!r} already names schedule {suffix_schedule}; drop --schedule {schedule}")
    chosen = explicit or suffix_schedule
    if spec.original:
        if chosen is not None:
            raise UnknownSampler(f"{name!r} runs the original script's own timesteps; "
                                 f"a schedule ({chosen}) applies to the k-diffusion samplers only")
        return Choice(spec, None)
    return Choice(spec, chosen or spec.schedule)


def canonical(name: str, schedule: str | None = None) -> str:
    return choose(name, schedule).name


def completion_names() -> dict[str, str]:
    """{name: what it is} for shell completion: the ids, AUTOMATIC1111's labels and aliases, and
    stable-diffusion.cpp's spellings (its label in lower case, " a" as "_a", no spaces: "dpm++2m")."""
    names = {spec.id: spec.label for spec in SAMPLERS.values()}
    for spec in SAMPLERS.values():
        sd_cpp = spec.label.lower().replace(" a", "_a").replace(" ", "")
        for name in (spec.label, *spec.aliases, sd_cpp):
            if name not in names and canonical(name) == spec.id:
                names[name] = f"= {spec.id}"
    return names


def label(name: str) -> str:
    """AUTOMATIC1111's name for a sampler name, for the PNG's "Sampler:" field."""
    return choose(name).label
