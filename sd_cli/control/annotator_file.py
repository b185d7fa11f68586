"""An annotator network (HED, lineart, M-LSD, ...) from its local weights file: read as data by the
weights-only loader, checked key by key against the network, loaded in float32, read once per run."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from torch import nn

from sd_cli.loading.checkpoint import read_checkpoint
from sd_cli.loading.strict import compare
from sd_cli.models.empty import empty_modules


def load_annotator(path: Path, build: Callable[[], nn.Module], what: str, strip: str = "") -> nn.Module:
    """The network `build()` makes, with the weights of `path`; `what` names the expected file in the
    error a wrong file gets; `strip` is a prefix the file's key names carry (DataParallel's "module.")."""
    stat = path.stat() if path.is_file() else None
    return _cached(str(path), stat.st_mtime_ns if stat else None, build, what, strip)


@functools.lru_cache(maxsize=2)  # the same files for every hint of a run (two units at most differ): read once
def _cached(path: str, _mtime: int | None, build, what: str, strip: str) -> nn.Module:
    weights = {key.replace(strip, "") if strip else key: value for key, value in read_checkpoint(path).state_dict.items()}
    with empty_modules():
        network = build()
    compare(network.state_dict(), weights).raise_if_any(f"{path} is not {what}")
    floats = {key: value.float() if value.is_floating_point() else value for key, value in weights.items()}
    network.load_state_dict(floats, strict=True, assign=True)
    return network.eval()
