"""The command line's progress bar: tqdm, fed by the library's ``progress(done, total)``."""

from __future__ import annotations

import sys


class ProgressBar:
    """A tqdm bar on stderr driven by ``bar(done, total, extra="")`` callbacks.

    ``total`` may change during a run (predict() recounts after running out of memory);
    a run resumed part-way starts the bar at its first ``done``.
    """

    def __init__(self, label: str, stream=None, unit: str = "step"):
        self.label, self.stream, self.unit = label, stream or sys.stderr, unit
        self._bar = None

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, initial=max(done - 1, 0), desc=self.label,
                             unit=self.unit, file=self.stream, dynamic_ncols=True)
        bar = self._bar
        if bar.total != total:
            bar.total = total
        if extra:
            bar.set_postfix_str(extra, refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
