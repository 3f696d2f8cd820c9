"""The command line's progress bar (one line on stderr, with the time left)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """A one-line text progress bar with remaining time, on stderr."""

    def __init__(self, label: str, stream=None, width: int = 30):
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.first: int | None = None  # a resumed run starts counting part-way

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = done - 1
        if done < total and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        fraction = done / max(total, 1)
        elapsed = now - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        bar = "#" * int(fraction * self.width)
        self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {done}/{total} "
                          f"{elapsed:5.0f}s elapsed, {eta:5.0f}s left {extra}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
