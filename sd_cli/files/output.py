"""Where images go, and writing them so that nothing is ever half-written or overwritten by surprise.

Two ways to name outputs (docs/reference/cli-conventions.md, docs/reference/original-scripts.md §2.1):

- ``--outdir DIR``: samples to ``DIR/samples/NNNNN.png`` and grids to ``DIR/grid-NNNN.png``,
  numbered on from what is there (OutputPlan). Numbered files are never overwritten, even by
  another run writing into the same folder at the same time.
- ``-o/--output PATH``: exactly that file, or a pattern for several images (output_paths).
  Its suffix picks the format: .png (added when there is none), .jpg/.jpeg or .webp (IMAGE_FORMATS).
  These are replaced if they exist: the user named them. A symbolic link to a regular file is
  written through (its target is replaced, the link stays); anything else that is not a regular
  file (a device such as /dev/null, a named pipe, a socket, a link to one of those or a dangling
  link) is refused, since an atomic write would put a new file in its place.

Every file is first written to a hidden temporary file next to its final name, synced, then
moved into place, so a run killed mid-write leaves either no file or a whole one.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
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
# The formats a file name's suffix can ask for (PIL format names); the numbered layout writes PNG.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_UNWRITABLE_SUFFIXES = {".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".jxl"}
LOSSY_QUALITY = 80  # JPEG and WebP quality: AUTOMATIC1111's default (its "jpeg_quality" setting)
JPEG_MAX_EXIF = 65533  # bytes in one APP1 segment, whose 2-byte length counts itself


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
    ``v1.5``); .jpg, .jpeg and .webp are written as such; other image suffixes (.gif, .tif ...) are
    refused.
    """
    pattern = str(pattern)
    if pattern == "-":  # stdout carries the written paths (or --json records), never image bytes
        raise UsageError("-o -: sd-cli does not write images to stdout (it prints the written paths there); "
                         "give a file name")
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
    for name in names:  # as typed too: "-o /dev/full" must not become /dev/full.png
        _check_replaceable(Path(name), UsageError, f"-o {pattern}: ")
    paths = [_with_image_suffix(Path(name)) for name in names]
    for path in paths:
        _check_replaceable(path, UsageError, f"-o {pattern}: ")
    if len(set(paths)) < len(paths):
        raise UsageError(f"-o {pattern} gives the same file name to several images; "
                         "add {index} to the pattern")
    return paths


def save_image(image: np.ndarray, path: str | Path, infotext: str | None = None, notes: dict | None = None) -> Path:
    """Write `image` ([H, W, 3] uint8 RGB, or [H, W] grey) at `path` in the format its suffix names
    (PNG when it names none), replacing any file there, atomically.

    A symbolic link is written through (replaced_file). The text goes into the PNG's ``parameters``
    chunk, or a JPEG's or WebP's EXIF UserComment (infotext.py); each of `notes` ({key: text}, the
    watermark's note, files/watermark.py) into a PNG text chunk of its own. Parent folders are
    created. Any OS failure (disk full, no permission) leaves no temporary file behind and raises
    OutputError.
    """
    path = replaced_file(Path(path))
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


def replaced_file(path: Path) -> Path:
    """The file writing `path` replaces: `path` itself, or a symbolic link's final target when that is a
    regular file. OutputError for a path that is not (or leads to nothing that is) a regular file."""
    _check_replaceable(path, OutputError, "")
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _check_replaceable(path: Path, error: type, prefix: str) -> None:
    """Raise `error` when `path` exists as something an atomic write must not replace."""
    kind = _special_kind(path)  # os.stat follows links, /proc/self/fd/N included
    link = path.is_symlink()
    what = f"{path} is a symbolic link to {os.readlink(path)}, which is" if link else f"{path} is"
    if kind:
        raise error(f"{prefix}{what} {kind}; sd-cli writes regular files only, so give a file name")
    if link and not path.exists():
        raise error(f"{prefix}{what} missing; give a file name, or create the link's target first")


def _special_kind(path: Path) -> str | None:
    """What `path` is when it exists and is not a regular file or a folder (folders are refused elsewhere)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return kind
    return None


_SPECIAL_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


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
    if suffix.lower() in IMAGE_FORMATS or suffix.lower() in _UNWRITABLE_SUFFIXES:
        return name[: -len(suffix)], suffix
    return name, ""


def _with_image_suffix(path: Path) -> Path:
    suffix = path.suffix.lower()
    if suffix in IMAGE_FORMATS:
        return path
    if suffix in _UNWRITABLE_SUFFIXES:
        raise UsageError(f"-o {path}: sd-cli writes PNG, JPEG and WebP files; use a .png, .jpg or .webp name")
    return path.with_name(path.name + ".png")


def image_format(path: Path) -> str:
    """The PIL format a file name asks for: its suffix's, PNG when it has none sd-cli writes."""
    return IMAGE_FORMATS.get(path.suffix.lower(), "PNG")


# -- atomic writes -----------------------------------------------------------------------------

def _write_temp(image: np.ndarray, path: Path, infotext: str | None, notes: dict | None = None) -> Path:
    """Encode the image (format from `path`'s suffix) into a new hidden file next to `path`, synced
    to disk; return its path."""
    from PIL import Image

    folder = path.parent
    _make_folder(folder, path)
    pil = Image.fromarray(np.asarray(image))
    image_format_name = image_format(path)
    options = _encoder_options(image_format_name, infotext, notes or {})
    if image_format_name == "JPEG" and len(options.get("exif", b"")) > JPEG_MAX_EXIF:
        raise OutputError(f"cannot write {path}: its parameters do not fit a JPEG's 64 KiB EXIF block; "
                          "use a .png or .webp name")
    temp, fd = _create_temp(folder, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format=image_format_name, **options)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _remove(temp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    return temp


def _encoder_options(image_format_name: str, infotext: str | None, notes: dict) -> dict:
    """PIL save() options: the parameters where each format keeps them, AUTOMATIC1111's lossy quality;
    the notes go into PNG text chunks (lossy formats carry none)."""
    from sd_cli.files.infotext import exif_with_infotext

    if image_format_name == "PNG":
        chunks = png_chunks(infotext, notes)
        return {"pnginfo": chunks} if chunks is not None else {}
    options = {"quality": LOSSY_QUALITY}
    if infotext is not None:
        options["exif"] = exif_with_infotext(infotext)
    return options


def png_chunks(infotext: str | None, notes: dict):
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
