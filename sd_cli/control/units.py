"""What a run asks of ControlNet: its units (a ControlNet, a control image, a preprocessor, a strength) and
the settings they share. Plain data, no torch: the request builder makes it before any model loads."""

from dataclasses import dataclass
from pathlib import Path

from sd_cli.errors import UsageError

# lllyasviel/ControlNet's guess mode ("ControlNet is more important" in AUTOMATIC1111's extension):
# residual i of 13 gets strength * GUESS_DECAY ** (12 - i).
GUESS_DECAY = 0.825
GUESS_SCALES = 13


@dataclass(frozen=True)
class ControlUnit:
    net: Path | None  # --control-net FILE; None: the --ckpt's own ControlNet (a v1.0 full file)
    image: Path  # --control-image
    preprocess: str = "none"  # --control-preprocess
    strength: float = 1.0  # --control-strength


@dataclass(frozen=True)
class ControlOptions:
    units: tuple[ControlUnit, ...]
    net_config: Path | None = None  # --control-net-config: the YAML of every --control-net file
    guess_mode: bool = False
    start: float = 0.0  # --control-start: the fraction of the steps from which the units steer
    end: float = 1.0  # --control-end: the fraction after which they stop
    canny_low: int = 100
    canny_high: int = 200
    detect_resolution: int | None = None  # None: the preprocessor runs at the output size
    save_hint: Path | None = None  # --save-hint: the hint the model saw (unit k > 0: "-k" before the suffix)
    annotator_weights: Path | None = None  # --annotator-weights: the weights of the units' annotator network


def control_scales(strength: float, guess_mode: bool, count: int) -> list[float]:
    """The residuals' scales, as cldm.py's ControlLDM: [strength] * 13, or guess mode's decay; zipped with the
    `count` residuals in order, as the original zips them (SD 1.5 has 13: the middle block's gets 0.825 ** 0)."""
    if not guess_mode:
        return [strength] * count
    scales = [strength * GUESS_DECAY ** float(12 - i) for i in range(GUESS_SCALES)]
    if count > len(scales):
        raise UsageError(f"--guess-mode: the original's guess mode scales {len(scales)} residuals and this "
                         f"ControlNet makes {count}; drop --guess-mode")
    return scales[:count]


def hint_path(save_hint: Path, index: int) -> Path:
    """Where unit `index`'s hint goes: --save-hint itself for the first, name-k.png for the others."""
    return save_hint if index == 0 else save_hint.with_name(f"{save_hint.stem}-{index}{save_hint.suffix}")


def active(fraction: float, start: float, end: float) -> bool:
    """AUTOMATIC1111's extension: a unit steers a step when start <= step / steps <= end."""
    return start <= fraction <= end
