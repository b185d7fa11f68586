"""Read Stable Diffusion checkpoint files as data: `.ckpt`/`.pt`/`.pth` pickles and `.safetensors`.

A pickle is a program: plain `torch.load` runs whatever functions the file names, so a downloaded
`.ckpt` can run commands. Every pickle here goes through torch's weights-only unpickler, which builds
only tensors and plain containers, plus the inert stand-ins below for the few other names that
released SD checkpoints contain. Any other name is refused, and the error says which.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import hashlib
import json
import mmap
import os
import pickle
import re
import struct
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_cli.errors import CheckpointError


@dataclass
class CheckpointFile:
    path: Path
    state_dict: dict[str, torch.Tensor]  # the model weights, original key names
    global_step: int | None  # training step from a Lightning checkpoint; None if absent


def read_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Read a checkpoint's weights without running any code from the file.

    Takes `{"state_dict": {...}, "global_step": N, ...}` (Lightning; other keys are ignored) or a
    bare state dict. Every failure is a one-line CheckpointError.
    """
    shown = str(path)
    path = _existing_file(path)
    try:
        _refuse_non_checkpoint(path, shown)
        if path.suffix.lower() == ".safetensors":
            state_dict, global_step = _tensors_only(shown, _read_safetensors(path, shown)), None
        else:
            state_dict, global_step = _unwrap(shown, _read_pickle(path, shown))
    except CheckpointError:
        raise
    except Exception as err:  # the boundary: nothing but CheckpointError leaves this module
        raise CheckpointError(f"{shown}: cannot read the checkpoint ({_cause(err)}).") from err
    return CheckpointFile(path=path, state_dict=state_dict, global_step=global_step)


def read_pickle_data(path: str | os.PathLike) -> object:
    """A small PyTorch pickle (an embedding file) as data: tensors and plain containers only."""
    shown = str(path)
    path = _existing_file(path)
    try:
        return _read_pickle(path, shown)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{shown}: cannot read the file ({_cause(err)}).") from err


# --- file checks and format sniffing -------------------------------------------------------------

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (non-zip) format pickles this number first, as LONG1 with 10 bytes.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

_NOT_A_CHECKPOINT = {
    "lfs": "is a Git LFS pointer, not the weights; run `git lfs pull` or download the file itself.",
    "html": "is a web page, not a checkpoint (a failed or login-only download?); download it again.",
    "text": "is a text file, not a checkpoint; give the path of a .ckpt or .safetensors file.",
    "unknown": "is not a checkpoint: neither a PyTorch file (zip or legacy pickle) nor safetensors; "
    "the file may be corrupt. Download it again.",
}


def _existing_file(path: str | os.PathLike) -> Path:
    shown, path = str(path), Path(path)
    if not path.exists():
        raise CheckpointError(f"{shown}: no such file; check the checkpoint path.")
    if path.is_dir():
        raise CheckpointError(directory_problem(shown, path))
    if not path.is_file():
        raise CheckpointError(f"{shown}: is not a regular file; give the path of a checkpoint file.")
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise CheckpointError(f"{shown}: cannot read the file ({err.strerror or err}).") from err
    if empty:
        raise CheckpointError(f"{shown}: the file is empty (0 bytes); download it again.")
    return path


CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def directory_problem(shown: str, path: Path) -> str:
    """The one-line error for a folder given where a checkpoint file belongs: what kind of folder it is."""
    if (path / "model_index.json").is_file():
        return (f"{shown}: is a diffusers folder (model_index.json), not a single-file checkpoint; sd_cli reads one "
                ".ckpt or .safetensors file: download the model's single-file checkpoint, or convert the folder with "
                "diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py")
    weights = sorted(path.glob("diffusion_pytorch_model.*"))
    if (path / "config.json").is_file() and weights:
        return (f"{shown}: is one component of a diffusers folder (config.json, {weights[0].name}), not a checkpoint "
                f"file; --vae takes {path / weights[0].name} itself, --ckpt a whole single-file checkpoint")
    try:
        inside = sorted(child.name for child in path.iterdir() if child.suffix.lower() in CHECKPOINT_SUFFIXES)
    except OSError:  # an unreadable folder: what it holds cannot be said
        inside = []
    if inside:
        more = f" (and {len(inside) - 1} more)" if len(inside) > 1 else ""
        return f"{shown}: is a directory; give the path of a checkpoint file in it, e.g. {path / inside[0]}{more}"
    return f"{shown}: is a directory, not a checkpoint file; give the path of a .ckpt or .safetensors file"


def _refuse_non_checkpoint(path: Path, shown: str) -> None:
    """A pointer, a web page or text under any checkpoint suffix: the content says what it is, not the name."""
    kind = _sniff(path)
    if kind in ("lfs", "html", "text"):
        raise CheckpointError(f"{shown}: {_NOT_A_CHECKPOINT[kind]}")


def _sniff(path: Path) -> str:
    """What the first bytes say the file is: zip, legacy, safetensors, lfs, html, text or unknown."""
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head[:32]:  # PROTO, maybe FRAME, then magic
        return "legacy"
    header_len = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and header_len < 100_000_000:
        return "safetensors"
    head = head.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors and servers write
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    if head.lstrip()[:1] == b"<":
        return "html"
    if _is_text(head):
        return "text"
    return "unknown"


def _is_text(head: bytes) -> bool:
    """Printable UTF-8 (a character cut at the end of the sample allowed), tabs and line breaks."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return False
        text = head[:err.start].decode("utf-8")
    return all(char.isprintable() or char in "\t\r\n" for char in text)


# --- safetensors ---------------------------------------------------------------------------------


def _read_safetensors(path: Path, shown: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        # safe_open memory-maps the file; each get_tensor reads one tensor, never the whole file.
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:
        if _sniff(path) in ("zip", "legacy"):
            hint = "it is a PyTorch pickle; rename it to .ckpt to load it safely as one."
        else:
            hint = "the file is probably truncated or corrupt. Download it again."
        raise CheckpointError(f"{shown}: not a valid .safetensors file ({_cause(err)}); {hint}") from err


# --- pickles -------------------------------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """Raised by the stand-ins below when a file asks them for something unsafe."""


class _LightningModelCheckpoint:
    """Stand-in for `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`.

    Lightning < 1.5 saved `{ModelCheckpoint: callback_state}` under "callbacks", so released SD
    checkpoints name the class (never an instance). This empty class takes its place so Lightning is
    never imported and nothing of it runs.
    """

    def __new__(cls, *args: object, **kwargs: object):
        raise _Refused("the pickle builds a Lightning ModelCheckpoint object, where checkpoints only name the class")


class _NumpyDtype:
    """Inert record of a pickled numpy dtype: its type code and byte order, no numpy object."""

    def __init__(self, code: str):
        self.code = code
        self.byteorder = "="  # struct's native order, as numpy's "=" and "|"

    def __setstate__(self, state: object) -> None:
        # numpy pickles a dtype's state as (version, byteorder, subarray, names, fields, ...)
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.byteorder = state[1]


# numpy dtype code -> struct format, for the numeric scalars Lightning metadata may hold.
_NUMPY_SCALAR_FORMATS = {
    "b1": "?", "i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I",
    "i8": "q", "u8": "Q", "f2": "e", "f4": "f", "f8": "d",
}  # fmt: skip


def _numpy_dtype(code: object, align: object = False, copy: object = True) -> _NumpyDtype:
    if not isinstance(code, str) or code not in _NUMPY_SCALAR_FORMATS:
        raise _Refused(f"the pickle builds numpy dtype {str(code)[:40]!r}, which a checkpoint never needs")
    return _NumpyDtype(code)


def _numpy_scalar(dtype: object, data: object = None) -> bool | int | float:
    """Decode a numpy scalar into a Python number without numpy.

    numpy's own `scalar()` with an object dtype turns the file's bytes into a raw object pointer,
    so only the plain numeric codes above are accepted.
    """
    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, bytes):
        raise _Refused("the pickle builds a numpy scalar that is not a plain number")
    fmt = dtype.byteorder + _NUMPY_SCALAR_FORMATS[dtype.code]
    if len(data) != struct.calcsize(fmt):
        raise _Refused(f"the pickle holds a malformed numpy {dtype.code} scalar")
    return struct.unpack(fmt, data)[0]


# Names a checkpoint may use beyond torch's weights-only defaults. torch already allows tensors,
# storages, dtypes, collections.OrderedDict, builtins.set and _codecs.encode (how protocol 2 stores
# bytes), which covers AUTOMATIC1111's allow-list except the entries below and numpy arrays
# (`numpy.core.multiarray._reconstruct`, `numpy.ndarray`): no SD checkpoint is known to need an
# array, and rebuilding one runs numpy code on the file's bytes, so those stay refused.
_STAND_INS = [
    (_LightningModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    # Old SD checkpoints hold numpy float64 scalars in their Lightning metadata.
    (_numpy_scalar, "numpy.core.multiarray.scalar"),  # the name numpy 1.x writes
    (_numpy_scalar, "numpy._core.multiarray.scalar"),  # the name numpy 2.x writes
    (_numpy_dtype, "numpy.dtype"),
    # Listed only so the unpickler lets numpy's dtype state be set on the record (a no-op if not).
    (_NumpyDtype, f"{__name__}._NumpyDtype"),
]
_STAND_INS_LOCK = threading.Lock()


@contextlib.contextmanager
def _stand_ins_allowed() -> Iterator[None]:
    """Allow the stand-ins for the duration of one load, and leave torch's global list as it was."""
    with _STAND_INS_LOCK, torch.serialization.safe_globals(_STAND_INS):
        yield


def _read_pickle(path: Path, shown: str) -> object:
    kind = _sniff(path)
    if kind == "safetensors":  # safetensors under another suffix: safe to read as what it is
        return _read_safetensors(path, shown)
    if kind not in ("zip", "legacy"):
        raise CheckpointError(f"{shown}: {_NOT_A_CHECKPOINT[kind]}")
    if kind == "zip":
        _refuse_plain_zip(path, shown)
    try:
        with _stand_ins_allowed():
            # mmap (zip format only) maps tensor data instead of reading a 4 GB file into memory.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as err:
        # torch.load re-raises the unpickler's error with a long explanation; the original is the context.
        original = err.__context__ if isinstance(err.__context__, pickle.UnpicklingError) else err
        refusal = _refusal(original, path)
        if refusal:
            raise CheckpointError(f"{shown}: refused: {refusal}. Convert trusted files to .safetensors.") from err
        raise CheckpointError(
            f"{shown}: cannot read the PyTorch checkpoint ({_cause(original)}); "
            "the file is probably truncated or corrupt. Download it again."
        ) from err


def _refuse_plain_zip(path: Path, shown: str) -> None:
    """A zip archive that torch.save did not write (no <name>/data.pkl): a download to unpack first."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # a damaged zip: torch.load's own error says it is truncated or corrupt
    if names and not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        raise CheckpointError(f"{shown}: is a zip archive (holding {names[0]}{' and more' if len(names) > 1 else ''}), "
                              "not a PyTorch checkpoint; unpack it and pass the checkpoint inside")


# What torch's weights-only unpickler says when a pickle names something it does not allow.
_GLOBAL_RE = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*) ")
_UNPICKLER_REFUSALS = ("Unsupported operand", "Can only", "Trying to call reduce", "unsupported persistent id")


def _refusal(err: BaseException, path: Path) -> str | None:
    """Why the unpickler refused the file, in words, or None if it failed for another reason."""
    if isinstance(err, _Refused):
        return f"{err}; it may be malicious"
    if not isinstance(err, pickle.UnpicklingError):
        return None
    text = str(err)
    match = _GLOBAL_RE.search(text)
    if match and _whole_name_in_file(path, match.group(1)):
        name = _importable_name(match.group(1))
        return f"the pickle references {name}, which a checkpoint never needs; it may be malicious"
    if text.startswith(_UNPICKLER_REFUSALS):
        return f"the pickle does something a checkpoint never does ({_first_line(text)}); it may be malicious"
    return None


def _whole_name_in_file(path: Path, torch_name: str) -> bool:
    """False if the name is a fragment: a file cut inside a pickled name ends it early ("torch.Fl")."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # A pickle GLOBAL is "c<module>\n<name>\n": the whole name stands on its own line.
        return data.find(b"\n" + torch_name.rpartition(".")[2].encode() + b"\n") != -1


def _importable_name(torch_name: str) -> str:
    """The name as a normal unpickler would import it, from the form torch's message prints."""
    if "." not in torch_name:  # torch drops the "builtins." prefix: "eval" is builtins.eval
        return f"builtins.{torch_name}"
    module, _, name = torch_name.rpartition(".")
    # Protocol 2 pickles store Python 2 names (subprocess -> commands); pickle maps them back.
    module, name = _compat_pickle.NAME_MAPPING.get(
        (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
    )
    if module in ("posix", "nt"):  # os.system is pickled under the platform module's name
        module = "os"
    return f"{module}.{name}"


# --- structure -----------------------------------------------------------------------------------


def _unwrap(shown: str, obj: object) -> tuple[dict[str, torch.Tensor], int | None]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{shown}: not a Stable Diffusion checkpoint: it holds a {type(obj).__name__}, not a dict of tensors."
        )
    if "state_dict" not in obj:
        return _tensors_only(shown, obj, bare=True), None
    global_step = _global_step(obj.get("global_step"))
    state_dict = obj["state_dict"]
    # Scripts that wrap a whole Lightning checkpoint once more save {"state_dict": {"state_dict": ...}}.
    while isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
        if global_step is None:
            global_step = _global_step(state_dict.get("global_step"))
        state_dict = state_dict["state_dict"]
    return _tensors_only(shown, state_dict), global_step


def _tensors_only(shown: str, state_dict: object, bare: bool = False) -> dict[str, torch.Tensor]:
    where = "it has no 'state_dict' and " if bare else ""
    if not isinstance(state_dict, Mapping):
        what = f"its 'state_dict' is a {type(state_dict).__name__}"
    elif not state_dict:
        what = f"{where}it holds no tensors"
    else:
        bad = [(k, v) for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if not bad:
            return dict(state_dict)
        key, value = bad[0]
        what = f"{where}entry {repr(key)[:60]} is a {type(value).__name__}, not a tensor"
    raise CheckpointError(f"{shown}: not a Stable Diffusion checkpoint: {what}.")


def _global_step(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


def _cause(err: BaseException) -> str:
    return _first_line(str(err)) or type(err).__name__


def _first_line(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= 160 else line[:157] + "..."


# --- model hash ----------------------------------------------------------------------------------


def model_hash(path: str | os.PathLike) -> str:
    """AUTOMATIC1111's "Model hash": the first 10 hex digits of the file's sha256.

    The full digest is cached by absolute path, size and mtime, so a 4 GB file is hashed once.
    """
    path = _existing_file(path)
    try:
        return _sha256(path)[:10]
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file ({err.strerror or err}).") from err


def cached_model_hash(path: str | os.PathLike) -> str | None:
    """The "Model hash" when the cache holds this file as it is now (same size and mtime), else None:
    `sd-cli models` shows hashes without reading gigabytes."""
    path = Path(path)
    digest = _cached_sha256(path, path.stat())
    return digest[:10] if digest else None


def _cached_sha256(path: Path, stat: os.stat_result) -> str | None:
    entry = _read_hash_cache().get(str(path.resolve()))
    if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
        digest = entry.get("sha256")
        if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
            return digest
    return None


def _sha256(path: Path) -> str:
    key = str(path.resolve())
    before = path.stat()
    cached = _cached_sha256(path, before)
    if cached:
        return cached
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):  # not changed meanwhile
        _write_hash_cache(key, {"size": before.st_size, "mtime_ns": before.st_mtime_ns, "sha256": digest})
    return digest


def _hash_cache_file() -> Path:
    cache_dir = os.environ.get("SD_CLI_CACHE_DIR")
    return (Path(cache_dir) if cache_dir else Path.home() / ".cache" / "sd_cli") / "hashes.json"


def _read_hash_cache() -> dict:
    """The cached entries; an unreadable or corrupt cache reads as empty."""
    try:
        data = json.loads(_hash_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _write_hash_cache(key: str, entry: dict) -> None:
    """Add one entry, replacing the file atomically; a cache that cannot be written is skipped."""
    cache_file = _hash_cache_file()
    files = _read_hash_cache()
    files[key] = entry
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".hashes.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "files": files}, f, indent=1)
        os.replace(tmp, cache_file)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
