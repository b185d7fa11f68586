"""Human messages go to stderr, one place decides whether they are shown.

stdout is reserved for what a script consumes (written paths, JSON), so nothing here prints there.
"""

import sys
from contextlib import contextmanager

_quiet = False
_warned: set[str] | None = None  # inside a run: its warnings, so that one repeated per image is shown once


@contextmanager
def run_scope(quiet: bool):
    """One command's messages: -q or not, each warning once; nothing carries over to the next
    command run in the same process."""
    global _warned
    saved = _quiet, _warned
    set_quiet(quiet)
    _warned = set()
    try:
        yield
    finally:
        set_quiet(saved[0])
        _warned = saved[1]


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(message: str) -> None:
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning, once per run (run_scope); -q shows errors only (its runs are read by cron and CI)."""
    if _quiet or (_warned is not None and message in _warned):
        return
    if _warned is not None:
        _warned.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Progress:
    """A per-batch progress line on stderr: redrawn in place on a terminal, one summary line otherwise."""

    def __init__(self, label: str):
        import time

        self.label = label
        self._clock = time.perf_counter
        self._started = self._clock()
        self._done = 0
        self._total = 0
        self._live = sys.stderr.isatty() and not _quiet

    def __call__(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        if self._live:
            print(f"\r{self._line()}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._total and not _quiet:
            print(f"\r{self._line()}" if self._live else self._line(), file=sys.stderr, flush=True)

    def _line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        return f"{self.label}: {self._done}/{self._total} steps, {self._done / elapsed:.2f} it/s, {elapsed:.1f}s"


def error(message: str) -> None:
    """An error that does not end the run (the run's own last error goes through the CLI)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
