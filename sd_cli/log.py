"""Human messages go to stderr, one place decides whether they are shown.

stdout is reserved for what a script consumes (written paths, JSON), so nothing here prints there.
"""

import sys

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(message: str) -> None:
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Warnings are shown even when quiet: they say something about the result."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
