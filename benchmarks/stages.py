"""What an sd_cli benchmark child times of itself: text encoding, every step, the decode, and its peak RSS.

The child wraps its model's (or session's) encode_text and decode_latents, passes `progress` as the
step callback, and ends with `report()`, which prints the line the parent reads: "DONE <json>".
"""

import json
import resource
import time


class StageTimer:
    def __init__(self, owner):
        self.stages = {"text": 0.0, "decode": 0.0, "steps": []}
        owner.encode_text = self._timed("text", owner.encode_text)
        owner.decode_latents = self._timed("decode", owner.decode_latents)
        self._last = time.perf_counter()

    def _timed(self, name: str, call):
        def run(*args, **kwargs):
            started = time.perf_counter()
            out = call(*args, **kwargs)
            self.stages[name] += time.perf_counter() - started
            self._last = time.perf_counter()  # the first step is timed from the end of text encoding
            return out
        return run

    def progress(self, done: int, total: int) -> None:
        now = time.perf_counter()
        self.stages["steps"].append(now - self._last)
        self._last = now

    def report(self) -> None:
        self.stages["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("DONE", json.dumps(self.stages), flush=True)
