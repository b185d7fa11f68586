"""The checkpoints sd_cli can find, for `sd-cli models` and --ckpt's shell completion.

The folders are the current directory, the ones --ckpt looks in (locations.search_dirs:
checkpoints/ and the package's own files, which hold the built-in model), the folder of
$SD_CLI_CKPT's file and the folders of the defaults file's `ckpt` values; each folder's own
*.safetensors and *.ckpt files, not its subfolders (checkpoints/lora and checkpoints/embeddings
hold add-ons, not models).

A listed file's family comes from its key names and shapes (detection.fingerprint) without reading
its tensors: a .safetensors file's JSON header alone, a .ckpt's pickle memory-mapped (the zip
format; only the legacy format is read whole). Its hash is shown only where the hash cache already
holds it (`sd-cli models` never reads a 4 GB file to hash it).

No torch at import: completion imports this module; describing a file imports the loaders.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from sd_cli.loading.locations import CHECKPOINT_SUFFIXES, search_dirs
from sd_cli.loading.packaged import builtin_checkpoint

ENV_CKPT = "SD_CLI_CKPT"
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit on its JSON header


@dataclass(frozen=True)
class Folder:
    path: Path
    why: str  # "current directory", "checkpoints/ (--ckpt looks there)", "$SD_CLI_CKPT", ...


@dataclass(frozen=True)
class Found:
    path: Path
    where: str  # the Folder's `why`
    name: str  # how --ckpt names it: the bare name where --ckpt finds it so, else the path


class _Shape:
    """A tensor's shape without its data: what detection.fingerprint reads of a value."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def folders(defaults_ckpts: list[str] = ()) -> list[Folder]:
    """The folders searched, each once, in this order."""
    found = [Folder(Path("."), "current directory")]
    here, package = search_dirs()
    found += [Folder(here, f"{here.as_posix()}/"), Folder(package, "sd_cli's own files")]
    env = os.environ.get(ENV_CKPT)
    if env:
        found.append(Folder(Path(env).expanduser().parent, f"${ENV_CKPT}'s folder"))
    found += [Folder(Path(ckpt).expanduser().parent, "defaults file's ckpt folder") for ckpt in defaults_ckpts]
    unique: dict[Path, Folder] = {}
    for folder in found:
        unique.setdefault(folder.path.resolve(), folder)
    return list(unique.values())


def find_checkpoints(searched: list[Folder]) -> list[Found]:
    """Every checkpoint file in the folders, sorted by name within each folder."""
    by_name_in = {folder.resolve() for folder in (Path("."), *search_dirs())}  # where --ckpt NAME looks
    listed = []
    for folder in searched:
        if not folder.path.is_dir():
            continue
        for path in sorted(folder.path.iterdir()):
            if path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file():
                by_name = folder.path.resolve() in by_name_in
                listed.append(Found(path, folder.why, path.name if by_name else str(path)))
    return listed


def describe(found: Found) -> dict:
    """The `sd-cli models --json` record of a file: name, path, where, family (or the problem), size,
    cached hash, built-in or not."""
    from sd_cli.loading.checkpoint import cached_model_hash

    path = found.path
    kind, problem = family(path)
    return {"name": found.name, "path": str(path.resolve()), "where": found.where, "family": kind,
            "problem": problem, "size_bytes": path.stat().st_size, "hash": cached_model_hash(path),
            "builtin": path.resolve() == builtin_checkpoint().resolve()}


def family(path: Path) -> tuple[str | None, str | None]:
    """(the model family its key names say, None), or (None, why there is none: "is a LoRA, not a checkpoint; ...")."""
    from sd_cli.errors import CheckpointError
    from sd_cli.loading.detection import detect_family, refuse_foreign
    from sd_cli.loading.keys import wrapper_prefix

    try:
        shapes = key_shapes(path)
        prefix = wrapper_prefix(shapes)
        shapes = {key[len(prefix):]: shape for key, shape in shapes.items()}
        refuse_foreign(shapes, path.name)
        return detect_family(shapes, path.name).description, None
    except CheckpointError as err:
        return None, str(err).removeprefix(f"{path.name}: ").removeprefix(f"{path}: ")


def key_shapes(path: Path) -> dict[str, _Shape]:
    """{key: shape} of a checkpoint without reading its tensors."""
    from sd_cli.loading.checkpoint import read_checkpoint

    if path.suffix.lower() == ".safetensors":
        return safetensors_shapes(path)
    return {key: _Shape(tensor.shape) for key, tensor in read_checkpoint(path).state_dict.items()}


def safetensors_shapes(path: Path) -> dict[str, _Shape]:
    """The shapes a .safetensors header declares: 8 bytes of little-endian length, then that much JSON."""
    from sd_cli.errors import CheckpointError

    with path.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= length <= MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: not a valid .safetensors file (header length {length})")
        text = f.read(length)
    try:
        header = json.loads(text)
        return {key: _Shape(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a valid .safetensors file (its header: {type(err).__name__})") from None


# -- shell completion -------------------------------------------------------------------------------

def complete_checkpoint(incomplete: str, defaults_ckpts: list[str] = ()) -> list[str]:
    """--ckpt's completions: the names of the checkpoints found, or the files and folders under a path typed so far."""
    if os.sep in incomplete or incomplete.startswith("~"):
        return _complete_path(incomplete)
    names = [found.name for found in find_checkpoints(folders(defaults_ckpts))]
    return [name for name in dict.fromkeys(names) if name.startswith(incomplete)]


def _complete_path(incomplete: str) -> list[str]:
    typed = Path(incomplete).expanduser()
    folder, start = (typed, "") if incomplete.endswith(os.sep) else (typed.parent, typed.name)
    if not folder.is_dir():
        return []
    shown = incomplete[: len(incomplete) - len(start)]
    matches = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith(start):
            continue
        if entry.is_dir():
            matches.append(f"{shown}{entry.name}{os.sep}")
        elif entry.suffix.lower() in CHECKPOINT_SUFFIXES:
            matches.append(f"{shown}{entry.name}")
    return matches
