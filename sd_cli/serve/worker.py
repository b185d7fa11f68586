"""One render at a time: a queue of work in arrival order, one thread working through it, and the
state /progress reports (AUTOMATIC1111's shared.state: job_count, job_no, sampling_step, ...).

Interrupt and skip act between steps: the step callback (RunRequest.on_step) raises, the render
loop catches it (rendering.py) and the request returns the images finished before it.
"""

from __future__ import annotations

import datetime
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable


class QueueFull(Exception):
    pass


class Interrupted(Exception):
    """POST /interrupt (or the client went away): stop this request after the current step."""


class Skipped(Exception):
    """POST /skip: drop the current batch, go on with the next."""


@dataclass
class RenderState:
    job: str = ""
    job_count: int = 0  # batches of the running request (AUTOMATIC1111: its n_iter); 0 when idle
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    job_timestamp: str = "0"
    time_start: float = 0.0
    working: bool = False  # the worker is on a request (loading its model or rendering)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start_work(self) -> None:
        """A new request: earlier interrupts and skips do not carry over to it."""
        with self._lock:
            self.working, self.interrupted, self.skipped = True, False, False

    def begin(self, job: str, batches: int) -> None:
        """The render starts (after its model is loaded); an interrupt that came during the load holds."""
        with self._lock:
            self.job, self.job_count, self.job_no = job, batches, 0
            self.sampling_step = self.sampling_steps = 0
            self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
            self.time_start = time.time()

    def next_batch(self, number: int) -> None:
        with self._lock:
            self.job_no, self.sampling_step, self.skipped = number, 0, False

    def end(self) -> None:
        with self._lock:
            self.working = False
            self.job, self.job_count, self.job_no, self.sampling_step, self.sampling_steps = "", 0, 0, 0, 0

    def step(self, done: int, total: int) -> None:
        """The render's on_step: record the step, then stop if asked to."""
        with self._lock:
            self.sampling_step, self.sampling_steps = done, total
            interrupted, skipped = self.interrupted, self.skipped
        if interrupted:
            raise Interrupted()
        if skipped:
            raise Skipped()

    def interrupt(self) -> None:
        with self._lock:
            if self.working:
                self.interrupted = True

    def skip(self) -> None:
        with self._lock:
            if self.working:
                self.skipped = True

    def progress(self) -> dict:
        """/sdapi/v1/progress's body, as AUTOMATIC1111 computes it."""
        with self._lock:
            state = {"skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": False,
                     "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                     "job_no": self.job_no, "sampling_step": self.sampling_step,
                     "sampling_steps": self.sampling_steps}
            if not self.job_count:
                return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
            progress = 0.01 + self.job_no / self.job_count
            if self.sampling_steps:
                progress += self.sampling_step / self.sampling_steps / self.job_count
            elapsed = time.time() - self.time_start
        return {"progress": min(progress, 1.0), "eta_relative": max(elapsed / progress - elapsed, 0.0),
                "state": state, "current_image": None, "textinfo": None}


class Worker:
    """Runs submitted work one item at a time, in the order it came."""

    def __init__(self, max_queue: int):
        self.state = RenderState()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._running: Future | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="sd-cli-render", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[RenderState], object]) -> Future:
        """A future for work(state); QueueFull when max_queue requests are already waiting."""
        future: Future = Future()
        try:
            self._queue.put_nowait((work, future))
        except queue.Full:
            raise QueueFull() from None
        return future

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def cancel(self, future: Future) -> None:
        """A waiting item is dropped; the running one stops after its current step."""
        if future.cancel():
            return
        with self._lock:
            if self._running is future:
                self.state.interrupt()

    def _loop(self) -> None:
        while True:
            work, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running = future
            self.state.start_work()
            try:
                future.set_result(work(self.state))
            except BaseException as err:  # the waiting request turns it into its answer
                future.set_exception(err)
            finally:
                with self._lock:
                    self._running = None
                self.state.end()
