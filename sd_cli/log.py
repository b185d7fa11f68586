"""Human messages go to stderr, one place decides whether they are shown and how progress looks.

stdout is reserved for what a script consumes (written paths, JSON): `output` writes it, clear of
any progress bar. Progress (`run_progress`) is a tqdm bar on a terminal and timestamped lines at a
steady pace elsewhere (cron, CI, `2>log`), so that a log shows a long run is alive.
"""

import os
import sys
import time
import warnings
from contextlib import contextmanager

PROGRESS_MODES = ("auto", "bar", "plain", "none")
# Seconds between plain progress lines; each batch's end also prints one. Tests set it to 0.
INTERVAL_VARIABLE = "SD_CLI_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0

_quiet = False
_mode = "auto"
_bar_open = False  # while a bar is drawn, every message goes through tqdm.write
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


def set_progress(mode: str) -> None:
    """--progress: auto (bar on a terminal, plain lines elsewhere, none under -q), bar, plain or none."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"unknown progress mode {mode!r}")
    plain_interval()  # a bad SD_CLI_PROGRESS_INTERVAL fails before the model loads
    global _mode
    _mode = mode


def info(message: str) -> None:
    if not _quiet:
        _write(message)


def warn(message: str) -> None:
    """A warning, once per run (run_scope); -q shows errors only (its runs are read by cron and CI)."""
    if _quiet or (_warned is not None and message in _warned):
        return
    if _warned is not None:
        _warned.add(message)
    _write(f"warning: {message}")


def error(message: str) -> None:
    """An error that does not end the run (the run's own last error goes through the CLI)."""
    _write(f"error: {message}")


def output(line: str) -> None:
    """One line on stdout in one write (lines of parallel ranks sharing a pipe do not interleave)."""
    with _clear_of_bars(sys.stdout):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _write(line: str) -> None:
    with _clear_of_bars(sys.stderr):
        print(line, file=sys.stderr, flush=True)


@contextmanager
def _clear_of_bars(stream):
    """Lift the bars off the terminal while `stream` is written, then draw them again below."""
    if not _bar_open:
        yield
        return
    from tqdm import tqdm

    with tqdm.external_write_mode(file=stream):
        yield


# -- progress ----------------------------------------------------------------------------------

def resolved_mode() -> str:
    """The progress this process shows now: bar, plain or none."""
    if _mode == "auto":
        return "none" if _quiet else "bar" if sys.stderr.isatty() else "plain"
    return _mode


@contextmanager
def run_progress(images: int):
    """Progress of a run of `images` images.

    Yields a RunProgress whose batch(first, count, passes) gives the `progress(done, total)`
    callback of one batch (images first+1 .. first+count, sampled in `passes` passes: 2 for the
    hires fix); its end() marks the batch sampled.
    """
    global _bar_open
    kind = {"bar": BarProgress, "plain": PlainProgress, "none": NoProgress}[resolved_mode()]
    progress = kind(images)
    shown_warning = warnings.showwarning
    _bar_open = kind is BarProgress
    warnings.showwarning = _show_warning
    try:
        yield progress
    finally:
        progress.close()
        _bar_open = False
        warnings.showwarning = shown_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (torch's, PIL's) take the same way as ours, so they never break a bar's line."""
    _write(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"))


class RunProgress:
    """What the bar and the plain lines share: which images are sampling, how far the run is."""

    def __init__(self, images: int):
        self.images = images
        self.first = self.count = 0  # the batch being sampled: images first+1 .. first+count
        self.passes = 1  # its sampling passes
        self.done = self.total = self.pass_index = 0  # steps of the current pass
        self.clock = time.monotonic
        self.run_started = self.batch_started = None

    def batch(self, first: int, count: int, passes: int = 1):
        self.first, self.count, self.passes = first, count, passes
        self.done = self.total = self.pass_index = 0
        self.batch_started = self.clock()
        if self.run_started is None:
            self.run_started = self.batch_started
        self.begin_batch()
        return self.step

    def step(self, done: int, total: int) -> None:
        if done <= self.done or total != self.total:
            self.pass_index += bool(self.total)  # a second pass starts counting again (hires fix)
        self.done, self.total = done, total
        self.show_step()

    def end(self) -> None:
        """The batch's images are sampled and decoded (they are written next)."""
        self.done, self.pass_index = self.total, self.passes - 1
        self.end_batch()

    def images_label(self) -> str:
        last = self.first + self.count
        span = f"{last}" if self.count == 1 else f"{self.first + 1}-{last}"
        return f"image{'s' if self.count > 1 else ''} {span}/{self.images}"

    def run_fraction(self) -> float:
        """The share of the run's sampling done, counting the current batch's passes and steps."""
        passes_done = self.pass_index + (self.done / self.total if self.total else 0.0)
        return (self.first + self.count * min(passes_done / self.passes, 1.0)) / self.images

    def batch_sampled(self) -> bool:
        return self.pass_index == self.passes - 1 and self.done == self.total > 0

    def run_remaining(self) -> float | None:
        fraction = self.run_fraction()
        if self.run_started is None or fraction <= 0:
            return None
        return (self.clock() - self.run_started) * (1 - fraction) / fraction

    def begin_batch(self) -> None: ...

    def show_step(self) -> None: ...

    def end_batch(self) -> None: ...

    def close(self) -> None: ...


class NoProgress(RunProgress):
    """--progress none, -q, and the ranks other than the first under torchrun."""


class PlainProgress(RunProgress):
    """Off a terminal: a timestamped line every `interval` seconds and at each batch's end."""

    def __init__(self, images: int):
        super().__init__(images)
        self.interval = plain_interval()
        self.last_line = None
        self.shown = None  # the batch, pass and step of the last line

    def show_step(self) -> None:
        if self.last_line is None or self.clock() - self.last_line >= self.interval:
            self._line()

    def end_batch(self) -> None:
        if self.shown != self._position():  # the last step's line may have said it already
            self._line()

    def _position(self) -> tuple:
        return self.first, self.pass_index, self.done, self.total

    def _line(self) -> None:
        self.last_line, self.shown = self.clock(), self._position()
        seconds = (self.last_line - self.batch_started) / max(self.done + self.pass_index * self.total, 1)
        passes = f" (pass {self.pass_index + 1}/{self.passes})" if self.passes > 1 else ""
        remaining = self.run_remaining()
        eta = "?" if remaining is None else _duration(remaining)
        _write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.images_label()}: step {self.done}/{self.total}{passes}, "
             f"{seconds:.2f} s/it, ETA {eta}")


class BarProgress(RunProgress):
    """On a terminal: a bar of the run (images, with its ETA) above a bar of the batch's steps."""

    RUN_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"

    def __init__(self, images: int):
        from tqdm import tqdm

        super().__init__(images)
        self.run_bar = tqdm(total=images, desc=self._run_label(0), bar_format=self.RUN_FORMAT, file=sys.stderr,
                            position=0, dynamic_ncols=True)
        self.steps_bar = None

    def begin_batch(self) -> None:
        self._close_steps()  # the batch before failed (--on-error continue)

    def show_step(self) -> None:
        from tqdm import tqdm

        bar = self.steps_bar
        if bar is None or bar.total != self.total or self.done < bar.n:  # the first step, or a new pass
            self._close_steps()
            passes = f" pass {self.pass_index + 1}/{self.passes}" if self.passes > 1 else ""
            bar = self.steps_bar = tqdm(total=self.total, desc=self.images_label() + passes, unit="step",
                                        file=sys.stderr, position=1, leave=False, dynamic_ncols=True)
        bar.update(self.done - bar.n)
        self._advance_run()

    def end_batch(self) -> None:
        self._advance_run()
        self._close_steps()

    def _close_steps(self) -> None:
        if self.steps_bar is not None:
            self.steps_bar.close()
            self.steps_bar = None

    def close(self) -> None:
        if self.steps_bar is not None:  # interrupted: the bars stay where they stopped
            self.steps_bar.leave = True
            self.steps_bar.close()
        self.run_bar.close()

    def _advance_run(self) -> None:
        self.run_bar.n = self.run_fraction() * self.images
        finished = self.first + (self.count if self.batch_sampled() else 0)
        self.run_bar.set_description_str(self._run_label(finished), refresh=False)
        self.run_bar.refresh()

    def _run_label(self, finished: int) -> str:
        return f"run {finished}/{self.images} images"


def plain_interval() -> float:
    """Seconds between plain progress lines: SD_CLI_PROGRESS_INTERVAL, or every 10 s."""
    text = os.environ.get(INTERVAL_VARIABLE)
    if text is None:
        return DEFAULT_INTERVAL
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        from sd_cli.errors import UsageError

        raise UsageError(f"{INTERVAL_VARIABLE}={text!r} must be a number of seconds (0 or more); unset it for 10 s")
    return seconds


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}"
