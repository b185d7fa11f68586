"""What ships inside the package: the original YAMLs and sd_cli's own small model.

They are package data, found through importlib.resources, so an installed wheel finds them
wherever it lives; nothing here depends on the current directory or on a checkout.
"""

from importlib.resources import files
from pathlib import Path

BUILTIN_CHECKPOINT = "sd-cli-tiny.safetensors"


def data_dir() -> Path:
    """sd_cli/data inside the installed package (a real folder: sd_cli is never run from a zip)."""
    return Path(str(files("sd_cli") / "data"))


def packaged_config(name: str) -> Path:
    """One of the original YAMLs (or the built-in model's) shipped in sd_cli/data/configs/."""
    return data_dir() / "configs" / name


def builtin_checkpoint() -> Path:
    return data_dir() / BUILTIN_CHECKPOINT
