"""napari workers that let go of what they were given once they finish.

napari keeps every worker it creates (its task list), with the arguments the worker was given
and the slots connected to its signals: the input image (gigabytes, for a large one), the
layers and the widget stayed in memory after the user deleted the layers or closed the viewer
(found by a review). :class:`ReleasingWorker` gives the function its arguments through a job
that is emptied, and disconnects the slots connected through it, when the worker finishes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

from napari.qt.threading import create_worker


class ReleasingWorker:
    """A napari worker (``.worker``, not started) of ``function(*args, **kwargs)``; connect
    slots with :meth:`connect`: they and the arguments are dropped once it has finished."""

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any):
        job = {"call": (function, args, kwargs)}

        def run():
            function_, args_, kwargs_ = job["call"]
            return function_(*args_, **kwargs_)

        run.__name__ = run.__qualname__ = getattr(function, "__name__", "run")
        self._job, self._slots = job, []
        self.worker = create_worker(run, _ignore_errors=True, _start_thread=False)

    def connect(self, signal, slot) -> None:
        """``signal.connect(slot)``, undone when the worker has finished."""
        signal.connect(slot)
        self._slots.append((signal, slot))

    def start(self) -> None:
        """Start the worker, its release connected last: run after the slots connected
        before it, the caller's own ``finished`` slot among them."""
        # a plain callable: PyQt holds a bound method's object weakly, and this one is
        # otherwise referenced by nothing once its caller returns
        self._releaser = functools.partial(ReleasingWorker._release, self)
        self.worker.finished.connect(self._releaser)
        self.worker.start()

    def _release(self) -> None:
        self._job["call"] = (None, (), {})
        for signal, slot in [*self._slots, (self.worker.finished, self._releaser)]:
            with contextlib.suppress(TypeError, RuntimeError):
                signal.disconnect(slot)
        self._slots.clear()
