"""`sd-cli models`: the checkpoints found (loading/listing.py), as a table or JSON Lines on stdout."""

import json

HEADER = ["NAME (--ckpt)", "SIZE", "HASH", "FOUND IN", "FAMILY"]
SIZE_UNITS = ((2**30, "GB"), (2**20, "MB"), (2**10, "kB"))


def print_models(defaults_ckpts: list[str], as_json: bool) -> None:
    from sd_cli.loading.listing import describe, find_checkpoints, folders

    records = [describe(found) for found in find_checkpoints(folders(defaults_ckpts))]
    if as_json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
        return
    rows = [HEADER] + [_row(record) for record in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)] if rows else []
    for row in rows:
        print("  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip())


def _row(record: dict) -> list[str]:
    """name, family (or the problem), size, hash, where; the built-in model marked as such."""
    name = record["name"] + (" (built-in)" if record["builtin"] else "")
    kind = record["family"] or record["problem"]  # "is a LoRA, not a checkpoint; ...", "the file is empty ..."
    return [name, human_size(record["size_bytes"]), record["hash"] or "-", record["where"], kind]


def human_size(size: int) -> str:
    for factor, unit in SIZE_UNITS:
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
