"""Where checkpoints are found: the path as given, then ./checkpoints/, then the files shipped in the package.

With no --ckpt sd_cli's own small model, shipped in the package, is used (docs/builtin-model.md).
No torch at import: shell completion lists checkpoints through search_dirs.
"""

from pathlib import Path

from sd_cli import log
from sd_cli.errors import CheckpointError
from sd_cli.loading.packaged import builtin_checkpoint, data_dir

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")  # what `sd-cli models` and --ckpt's completion list


def search_dirs() -> list[Path]:
    return [Path("checkpoints"), data_dir()]


def resolve_checkpoint(requested) -> Path:
    from sd_cli.loading.checkpoint import directory_problem  # torch: not for shell completion's imports

    if requested is None:
        path = builtin_checkpoint()
        if not path.is_file():
            raise CheckpointError(f"no --ckpt given and the built-in model {path} is missing; pass --ckpt PATH")
        log.info(f"no --ckpt given: using sd_cli's own small model ({path.name}); pass --ckpt for a real checkpoint")
        return path
    path = Path(requested).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(directory_problem(str(requested), path))
    if not path.is_absolute():
        for folder in search_dirs():
            candidate = folder / path
            if candidate.is_file():
                return candidate
            if candidate.is_dir():
                raise CheckpointError(directory_problem(str(candidate), candidate))
    looked = ", ".join(str(folder) for folder in search_dirs())
    raise CheckpointError(f"checkpoint not found: {requested} (also looked in {looked})")
