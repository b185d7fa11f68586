"""The checkpoints a client may name, and the loaded ones kept warm.

A client names a checkpoint by a title from GET /sdapi/v1/sd-models (its path inside a model
folder, as AUTOMATIC1111 titles it), by its stem, or by a title followed by " [hash]". Only files
listed from the configured folders (and the model the server started with) can be named: a name
is looked up in that list, never joined to a path, so "../" or an absolute path names nothing.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from sd_cli.errors import UsageError
from sd_cli.serve.settings import Settings

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


@dataclass(frozen=True)
class Checkpoint:
    title: str  # what sd-models lists and options' sd_model_checkpoint reports
    path: Path

    @property
    def model_name(self) -> str:
        return Path(self.title).with_suffix("").as_posix()


class UnknownModel(UsageError):
    pass


class ModelCatalogue:
    """The nameable checkpoints: the start model, then every checkpoint file under the model folders."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.start = self._start_checkpoint()
        self._listed: list[Checkpoint] = []
        self.refresh()

    def _start_checkpoint(self) -> Checkpoint:
        from sd_cli.loading.locations import resolve_checkpoint

        path = resolve_checkpoint(self.settings.checkpoint)  # CheckpointError when it is missing
        return Checkpoint(path.name, path)

    def refresh(self) -> None:
        found = [self.start]
        for folder in self.settings.model_dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file() and not _is_addon(path, self.settings):
                    title = path.relative_to(folder).as_posix()
                    if path.resolve() != self.start.path.resolve() and all(c.title != title for c in found):
                        found.append(Checkpoint(title, path))
        self._listed = found

    def all(self) -> list[Checkpoint]:
        return list(self._listed)

    def find(self, name: str) -> Checkpoint:
        wanted = _HASH_SUFFIX.sub("", name.strip())
        for checkpoint in self._listed:
            if wanted in (checkpoint.title, checkpoint.model_name, checkpoint.path.name, checkpoint.path.stem):
                return checkpoint
        raise UnknownModel(f"no checkpoint named {name!r}; GET /sdapi/v1/sd-models lists the titles to use "
                           "(then POST /sdapi/v1/refresh-checkpoints after adding a file)")


def _is_addon(path: Path, settings: Settings) -> bool:
    """LoRA, embedding and VAE files live under checkpoints/ too; they are not checkpoints."""
    folders = [settings.lora_dir, settings.vae_dir] + ([settings.embeddings_dir] if settings.embeddings_dir else [])
    resolved = path.resolve()
    return any(folder.is_dir() and resolved.is_relative_to(folder.resolve()) for folder in folders)


class SessionCache:
    """Loaded models (run.session.Session), the least recently used dropped past `loaded_models`.

    The render worker calls it (and the command once, before serving), so a load never overlaps a render.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._sessions: OrderedDict[Path, object] = OrderedDict()
        self._lock = threading.Lock()

    def session(self, checkpoint: Checkpoint, clip_skip: int | None):
        """The loaded model, with this request's text options (--clip-skip, embeddings)."""
        from sd_cli.prompting.prompts import text_options

        base = self._loaded(checkpoint.path)
        text = text_options(base.model.cond_stage_model, "original", clip_skip, self.settings.embeddings_dir)
        return replace(base, text=text)

    def loaded(self) -> list[Path]:
        with self._lock:
            return list(self._sessions)

    def _loaded(self, path: Path):
        with self._lock:
            if path in self._sessions:
                self._sessions.move_to_end(path)
                return self._sessions[path]
        from sd_cli.run.render import RunRequest, load_session

        while len(self._sessions) >= max(1, self.settings.loaded_models):
            with self._lock:
                self._sessions.popitem(last=False)  # freed before the next one loads
            _release_memory()
        session = load_session(RunRequest(mode="txt2img", jobs=[], checkpoint=path, device=self.settings.device,
                                          precision=self.settings.precision, embeddings=self.settings.embeddings_dir))
        with self._lock:
            self._sessions[path] = session
        return session


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
