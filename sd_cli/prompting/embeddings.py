"""Textual inversion embeddings, used by file name in a prompt (AUTOMATIC1111's formats).

`--embeddings DIR` (default `checkpoints/embeddings`): every `.pt` and `.safetensors` file under
it is an embedding named by its file stem. A name is found in a prompt as AUTOMATIC1111 finds it,
by its BPE tokens (so "my-style" matches however the prompt spaces its pieces), the longest name
first. A file is read when a prompt first uses it:

- `.pt`: {"string_to_param": {"*": tensor [N, D]}, "name": ..., "step": ...}, read by sd_cli's
  weights-only unpickler (checkpoint.py): anything but tensors and plain data is refused;
- `.safetensors`: {"emb_params": tensor [N, D]}, or SDXL's {"clip_l": [N, 768], "clip_g": [N, 1280]},
  one set of vectors per text tower (each tower's `embedding_key`, models/text_encoder.py).

D must be the text encoder's width (768 for SD 1.x, 1024 for SD 2.x); a mismatch is an error naming
the file, and so is a one-tower embedding on SDXL's two towers or an SDXL embedding on SD 1.x/2.x. Its hash for the PNG's "TI hashes" is AUTOMATIC1111's: the file's sha256, 10 hex digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sd_cli import log
from sd_cli.errors import CheckpointError, UsageError
from sd_cli.fields import EMBEDDINGS_DIR as DEFAULT_DIR

SUFFIXES = (".pt", ".safetensors")
SDXL_KEYS = ("clip_l", "clip_g")  # the SDXL embedding format's tensors, one per text tower


@dataclass
class Embedding:
    name: str
    path: Path
    _vectors: dict | None = field(default=None, repr=False)  # tower key (None: any one tower) -> [N, D]

    @property
    def count(self) -> int:
        """N, the number of tokens the embedding takes in a prompt (the same for every tower)."""
        return len(next(iter(self._read().values())))

    def vectors_for(self, encoder) -> torch.Tensor:
        """[N, D] float32 for this text tower: its own tensor of an SDXL file, else the file's one tensor."""
        vectors, key, width = self._read(), encoder.embedding_key, encoder.token_embedding.embedding_dim
        if (key is None) != (None in vectors):
            raise UsageError(f"embedding {self.path}: {_kind(vectors)}, this model's text encoders take "
                             f"{'one tensor' if key is None else ' and '.join(SDXL_KEYS)} (an "
                             f"{'SD 1.x/2.x' if key is None else 'SDXL'} model); use an embedding made for it")
        chosen = vectors[key]
        if chosen.shape[1] != width:
            raise UsageError(f"embedding {self.path}: its {key or 'vectors'} are {chosen.shape[1]} wide, this model's "
                             f"text encoder is {width} wide ({_family(chosen.shape[1])}); use it with a matching model")
        return chosen

    def _read(self) -> dict:
        if self._vectors is None:
            self._vectors = read_embedding(self.path)
        return self._vectors

    @property
    def hash(self) -> str:
        from sd_cli.loading.checkpoint import model_hash

        return model_hash(self.path)


class EmbeddingLibrary:
    """The embeddings of one folder, found in token lists by their names' tokens."""

    def __init__(self, embeddings: list[Embedding], encode_name):
        self.by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for embedding in embeddings:
            ids = encode_name(embedding.name)
            if ids:
                self.by_first.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self.by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))

    def match(self, ids: list[int], pos: int) -> tuple[Embedding, int] | None:
        """(embedding, its name's token count) when one's name starts at ids[pos]."""
        for name_ids, embedding in self.by_first.get(ids[pos], ()):
            if ids[pos:pos + len(name_ids)] == name_ids:
                return embedding, len(name_ids)
        return None


def scan_folder(folder: Path | None, encode_name) -> EmbeddingLibrary | None:
    """The library of `folder` (None: the default folder, which may be missing)."""
    explicit = folder is not None
    folder = Path(folder) if explicit else DEFAULT_DIR
    if not folder.is_dir():
        if explicit:
            raise UsageError(f"--embeddings {folder}: no such folder")
        return None
    found: dict[str, Embedding] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
        if path.stem in found:
            log.warn(f"embedding {path.stem!r}: {path} is ignored, {found[path.stem].path} has the same name")
            continue
        found[path.stem] = Embedding(path.stem, path)
    return EmbeddingLibrary(list(found.values()), encode_name) if found else None


def read_embedding(path: Path) -> dict:
    """{None: [N, D]} from an AUTOMATIC1111 `.pt` or `.safetensors` file, {"clip_l": .., "clip_g": ..} from
    an SDXL one; float32."""
    try:
        data = _read_safetensors(path) if path.suffix.lower() == ".safetensors" else _read_pt(path)
    except CheckpointError as err:
        raise UsageError(f"embedding {err}") from None
    tensors = data if isinstance(data, dict) else {None: data}
    vectors = {key: _vectors(path, value) for key, value in tensors.items()}
    if len({len(value) for value in vectors.values()}) != 1:
        raise UsageError(f"embedding {path}: its clip_l and clip_g have different vector counts "
                         f"({len(vectors['clip_l'])} and {len(vectors['clip_g'])})")
    return vectors


def _vectors(path: Path, data) -> torch.Tensor:
    vectors = data.detach().float() if isinstance(data, torch.Tensor) else None
    if vectors is None or vectors.ndim not in (1, 2) or vectors.numel() == 0:
        raise UsageError(f"embedding {path}: not a textual inversion embedding ({_expected(path)})")
    return vectors.reshape(-1, vectors.shape[-1])


def _read_pt(path: Path):
    from sd_cli.loading.checkpoint import read_pickle_data

    data = read_pickle_data(path)
    params = data.get("string_to_param") if isinstance(data, dict) else None
    if isinstance(params, dict) and len(params) == 1:
        return next(iter(params.values()))
    return data.get("emb_params") if isinstance(data, dict) else None


def _read_safetensors(path: Path):
    from sd_cli.loading.checkpoint import read_checkpoint

    tensors = read_checkpoint(path).state_dict
    if all(key in tensors for key in SDXL_KEYS):
        return {key: tensors[key] for key in SDXL_KEYS}
    return tensors.get("emb_params")


def _expected(path: Path) -> str:
    if path.suffix.lower() == ".safetensors":
        return "expected a tensor 'emb_params' [N, D], or SDXL's 'clip_l' and 'clip_g'"
    return "expected {'string_to_param': {'*': tensor [N, D]}}"


def _kind(vectors: dict) -> str:
    if None in vectors:
        return f"a one-tower embedding ({_family(vectors[None].shape[1])}, {vectors[None].shape[1]} wide)"
    return "an SDXL embedding (clip_l and clip_g)"


def _family(width: int) -> str:
    return {768: "SD 1.x", 1024: "SD 2.x"}.get(width, "an unknown model family")
