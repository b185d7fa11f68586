"""Where images go, and writing them so that nothing is ever half-written or overwritten by surprise.

Two ways to name outputs (docs/reference/cli-conventions.md, docs/reference/original-scripts.md §2.1):

- ``--outdir DIR``: samples to ``DIR/samples/NNNNN.png`` and grids to ``DIR/grid-NNNN.png``,
  numbered on from what is there (OutputPlan). Numbered files are never overwritten, even by
  another run writing into the same folder at the same time.
- ``-o/--output PATH``: exactly that file, or a pattern for several images (output_paths).
  These are replaced if they exist: the user named them.

Every file is first written to a hidden temporary file next to its final name, synced, then
moved into place, so a run killed mid-write leaves either no file or a whole one.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import string
from pathlib import Path

import numpy as np

from sd_cli.errors import OutputError, UsageError

SAMPLES_DIR = "samples"
_SAMPLE_NAME = re.compile(r"(\d+)\.png")
_GRID_NAME = re.compile(r"grid-(\d+)\.png")
_SAMPLE_FORMAT = "{:05}.png"
_GRID_FORMAT = "grid-{:04}.png"
_TEMP_SUFFIX = ".tmp"
_PLACEHOLDERS = {"index", "seed"}
_OTHER_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class OutputPlan:
    """Numbered outputs in an ``--outdir`` folder, laid out as the original scripts do.

    The first numbers are counted when the plan is made, at the start of a run, as the original
    does: every entry in ``samples/`` for samples, every entry of the folder but ``samples/``
    for grids. They never fall below the highest existing number + 1, so deleted files never
    lead to overwrites. Each file is then claimed atomically under the first free name from
    there on, so two runs sharing a folder interleave instead of colliding. Folders are created
    at the first save.
    """

    def __init__(self, outdir: str | Path):
        self.outdir = Path(outdir)
        self.samples_dir = self.outdir / SAMPLES_DIR
        self._next_sample = _first_number(self.samples_dir, _SAMPLE_NAME, exclude=None)
        self._next_grid = _first_number(self.outdir, _GRID_NAME, exclude=SAMPLES_DIR)

    def next_sample_path(self) -> Path:
        """The name the next save_sample tries first (not reserved: another run may take it)."""
        return self.samples_dir / _SAMPLE_FORMAT.format(self._next_sample)

    def grid_path(self) -> Path:
        """The name the next save_grid tries first (not reserved: another run may take it)."""
        return self.outdir / _GRID_FORMAT.format(self._next_grid)

    def save_sample(self, image: np.ndarray, infotext: str | None = None, notes: dict | None = None) -> Path:
        """Write the next free ``samples/NNNNN.png`` and return its path."""
        path, self._next_sample = _save_numbered(image, infotext, self.samples_dir,
                                                 _SAMPLE_FORMAT, self._next_sample, notes)
        return path

    def save_grid(self, image: np.ndarray, infotext: str | None = None, notes: dict | None = None) -> Path:
        """Write the next free ``grid-NNNN.png`` and return its path."""
        path, self._next_grid = _save_numbered(image, infotext, self.outdir, _GRID_FORMAT,
                                               self._next_grid, notes)
        return path


def output_paths(pattern: str | Path, count: int, seeds: list[int] | None = None) -> list[Path]:
    """The files ``-o/--output PATTERN`` names for `count` images (index i has seed seeds[i]).

    ``{index}`` and ``{seed}`` are filled in as Python format fields (``out-{index:03}.png``).
    Without them one image goes to PATTERN itself and several to ``out-0.png``, ``out-1.png``...
    ``.png`` is appended when the name has no suffix (or one that is not an image type, as in
    ``v1.5``); other image suffixes such as ``.jpg`` are refused, since the file is a PNG.
    """
    pattern = str(pattern)
    if pattern.endswith(("/", os.sep)) or Path(pattern).is_dir():
        raise UsageError(f"-o {pattern} is a folder; give a file name, or use --outdir for a folder")
    fields = _format_fields(pattern)
    if fields:
        if "seed" in fields and (seeds is None or len(seeds) < count):
            raise ValueError("output_paths needs one seed per image to fill {seed}")
        names = [_fill(pattern, i, seeds[i] if seeds is not None else None) for i in range(count)]
    elif count == 1:
        names = [pattern]
    else:
        base = Path(pattern)
        stem, suffix = _split_suffix(base.name)
        names = [str(base.with_name(f"{stem}-{i}{suffix}")) for i in range(count)]
    paths = [_with_png_suffix(Path(name)) for name in names]
    if len(set(paths)) < len(paths):
        raise UsageError(f"-o {pattern} gives the same file name to several images; "
                         "add {index} to the pattern")
    return paths


def save_png(image: np.ndarray, path: str | Path, infotext: str | None = None, notes: dict | None = None) -> Path:
    """Write `image` ([H, W, 3] uint8 RGB) as a PNG at `path`, replacing any file there, atomically.

    The text goes into the ``parameters`` chunk, each of `notes` ({key: text}) into a text chunk
    of its own (the watermark's note, files/watermark.py). Parent folders are created. Any OS failure
    (disk full, no permission) leaves no temporary file behind and raises OutputError.
    """
    path = Path(path)
    temp = _write_temp(image, path, infotext, notes)
    try:
        os.replace(temp, path)
    except BaseException as e:
        _remove(temp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    _sync_folder(path.parent)
    return path


# -- numbering ---------------------------------------------------------------------------------

def _first_number(folder: Path, name: re.Pattern, exclude: str | None) -> int:
    """max(number of entries, highest existing number + 1), ignoring our own temporary files."""
    try:
        entries = [e for e in os.listdir(folder) if e != exclude and not _is_temp(e)]
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise _write_error(folder, e) from None
    numbers = [int(m.group(1)) for e in entries if (m := name.fullmatch(e))]
    return max(len(entries), max(numbers, default=-1) + 1)


def _save_numbered(image, infotext, folder: Path, name_format: str, number: int, notes=None) -> tuple[Path, int]:
    """Write once to a temporary file, then claim the first free name from `number` on.

    Returns the path and the number to try next.
    """
    temp = _write_temp(image, folder / name_format.format(number), infotext, notes)
    try:
        while True:
            path = folder / name_format.format(number)
            number += 1
            try:
                _claim(temp, path)
            except FileExistsError:
                continue
            _sync_folder(folder)
            return path, number
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        _remove(temp)


def _claim(temp: Path, path: Path) -> None:
    """Give `temp`'s content the name `path`, failing with FileExistsError if it is taken.

    A hard link is created atomically and only if the name is free. On file systems without
    hard links, the name is reserved with O_CREAT | O_EXCL and the content moved over it.
    """
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        raise
    except OSError:
        pass  # no hard links here (FAT, some network shares): reserve the name instead
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        os.replace(temp, path)
    except OSError:
        _remove(path)
        raise


# -- -o patterns -------------------------------------------------------------------------------

def _format_fields(pattern: str) -> set[str]:
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None}
    except ValueError as e:
        raise UsageError(f"-o {pattern}: {e}; write {{{{ and }}}} for literal braces") from None
    unknown = fields - _PLACEHOLDERS
    if unknown:
        raise UsageError(f"-o {pattern}: unknown placeholder {{{sorted(unknown)[0]}}}; "
                         "use {index} or {seed}")
    return fields


def _fill(pattern: str, index: int, seed: int | None) -> str:
    try:
        return pattern.format(index=index, seed=seed)
    except (ValueError, TypeError) as e:
        raise UsageError(f"-o {pattern}: {e}; use a format such as {{index:03}}") from None


def _split_suffix(name: str) -> tuple[str, str]:
    suffix = Path(name).suffix
    if suffix.lower() == ".png" or suffix.lower() in _OTHER_IMAGE_SUFFIXES:
        return name[: -len(suffix)], suffix
    return name, ""


def _with_png_suffix(path: Path) -> Path:
    suffix = path.suffix.lower()
    if suffix == ".png":
        return path
    if suffix in _OTHER_IMAGE_SUFFIXES:
        raise UsageError(f"-o {path}: sd-cli writes PNG files only; use a .png name")
    return path.with_name(path.name + ".png")


# -- atomic writes -----------------------------------------------------------------------------

def _write_temp(image: np.ndarray, path: Path, infotext: str | None, notes: dict | None = None) -> Path:
    """Encode the PNG into a new hidden file next to `path`, synced to disk; return its path."""
    from PIL import Image

    folder = path.parent
    _make_folder(folder, path)
    pil = Image.fromarray(np.asarray(image))
    pnginfo = _text_chunks(infotext, notes or {})
    temp, fd = _create_temp(folder, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format="PNG", pnginfo=pnginfo)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _remove(temp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    return temp


def _text_chunks(infotext: str | None, notes: dict):
    """The PNG's text chunks: the infotext as ``parameters``, then each note; None when there are none."""
    from PIL.PngImagePlugin import PngInfo

    from sd_cli.files.infotext import png_info

    if infotext is None and not notes:
        return None
    chunks = png_info(infotext) if infotext is not None else PngInfo()
    for key, text in notes.items():
        chunks.add_text(key, text)
    return chunks


def _create_temp(folder: Path, name: str) -> tuple[Path, int]:
    """A new empty ``.NAME.XXXXXXXX.tmp`` in `folder` (mode from the umask, like a normal file)."""
    while True:
        temp = folder / f".{name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        try:
            return temp, os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise _write_error(folder / name, e) from None


def _is_temp(entry: str) -> bool:
    return entry.startswith(".") and entry.endswith(_TEMP_SUFFIX)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_folder(folder: Path) -> None:
    """Make the new name durable too (POSIX); best effort, as not every system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_ADVICE = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some space in your quota or write elsewhere",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "that name is a folder; choose a file name",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def _write_error(path: Path, error: OSError) -> OutputError:
    reason = error.strerror or str(error)
    advice = _ADVICE.get(error.errno, "check the path and the disk")
    return OutputError(f"cannot write {path}: {reason}; {advice}")


def _make_folder(folder: Path, target: Path) -> None:
    """Create `folder` (and parents) for writing `target`; one OutputError saying why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot write {target}: {folder} is a file, not a folder; choose another path") from None
    except OSError as e:
        raise _write_error(target, e) from None


def check_writable(folder: str | Path) -> None:
    """Create `folder` if needed and prove a file can be made in it (before any work is done)."""
    folder = Path(folder)
    probe = folder / "write-check"
    _make_folder(folder, folder)
    temp, fd = _create_temp(folder, probe.name)
    os.close(fd)
    _remove(temp)
