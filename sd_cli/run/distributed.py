"""Data-parallel runs under `torchrun` or `accelerate launch`: which share of the jobs is ours.

Both launchers start one process per device and give each RANK, WORLD_SIZE and LOCAL_RANK (and
MASTER_ADDR/MASTER_PORT) in its environment. Rank r renders jobs r, r+N, r+2N, ...; every job
carries its own seed and file name, so the union of the ranks' images is the single-process run's.
Rendering needs no process group; one (gloo) is opened at the end only to gather every rank's
counts for rank 0's summary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from sd_cli.errors import UsageError

# Ranks finish at different times; a rank that fails makes the launcher stop the others.
GATHER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Rank:
    """This process's place, from the launcher's environment (a plain run is rank 0 of 1)."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
        text = os.environ.get(name)
        try:
            values[name] = default if text in (None, "") else int(text)
        except ValueError:
            raise UsageError(f"environment variable {name}={text!r} is not an integer; "
                             "start sd-cli with torchrun or accelerate launch, or unset it") from None
    rank, world = values["RANK"], values["WORLD_SIZE"]
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} and WORLD_SIZE={world} do not fit together; check the launcher")
    local = rank if values["LOCAL_RANK"] is None else values["LOCAL_RANK"]
    return Rank(rank, world, local)


def shard(jobs: list, rank: Rank) -> list:
    """Round-robin share: jobs r, r+N, ... (neighbouring lines spread over the devices)."""
    return jobs[rank.rank::rank.world]


def device_name(requested: str, rank: Rank) -> str:
    """Each rank on its own GPU: `auto` or `cuda` becomes cuda:LOCAL_RANK when there are several ranks."""
    if not rank.distributed or requested not in ("auto", "cuda"):
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{rank.local % torch.cuda.device_count()}"
    return requested


def gather(value, rank: Rank) -> list:
    """Every rank's `value` (a small picklable object), in rank order; [value] for a plain run."""
    if not rank.distributed:
        return [value]
    import torch.distributed as dist

    opened = not dist.is_initialized()
    if opened:
        dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world, timeout=GATHER_TIMEOUT)
    try:
        values = [None] * rank.world
        dist.all_gather_object(values, value)
        return values
    finally:
        if opened:
            dist.destroy_process_group()
