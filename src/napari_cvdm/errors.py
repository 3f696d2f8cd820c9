"""Exceptions shared by the library, the command line and the widgets, and cancellation.

The core raises these typed errors with messages in plain words (never a command-line flag
or a widget name); each front end translates them into its own hint: the command line names
its flags, the widget its options.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

CancelCheck = threading.Event | Callable[[], bool] | None


class Cancelled(Exception):
    """Raised when a prediction or training run is cancelled; nothing partial is returned."""


class BadInput(ValueError):
    """An image, a file or an option that cannot work; the message says what to change."""


class OutOfMemory(MemoryError):
    """The device ran out of memory even with the smallest tiles and samples per call.

    A MemoryError (not a RuntimeError), so that ``except MemoryError`` catches both this
    and Python's own. ``device`` is the device name ("cpu", "cuda:0", ...), ``tile`` the
    tile side in output pixels and ``batch`` the samples per network call of the last try.
    """

    def __init__(self, device: str, tile: int | None = None, batch: int | None = None,
                 what: str = "the prediction"):
        self.device, self.tile, self.batch, self.what = str(device), tile, batch, what
        where = f"out of memory on {self.device}"
        if tile is not None and batch is not None:
            detail = f" even with {tile}-pixel tiles and {batch} sample(s) per network call"
        else:
            detail = ""
        super().__init__(f"{where}{detail}: {what} does not fit; use smaller tiles, fewer "
                         "samples per call or another device")

    def __reduce__(self):  # pickled as its arguments (from a dask worker), not its message
        return type(self), (self.device, self.tile, self.batch, self.what)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is kept."""


def cancel_requested(cancel: CancelCheck) -> bool:
    """Whether ``cancel`` (None, a threading.Event or a callable returning a bool) is set."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (torch's error, MPS's message,
    Python's MemoryError, or an allocator refusing a size)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    # torch.OutOfMemoryError is torch >= 2.5; torch.cuda's has been there since 1.13
    if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    # Some allocators report running out of memory as a plain RuntimeError: MPS, the CPU
    # ("DefaultCPUAllocator: can't allocate memory"), and CUDA outside its caching allocator
    # (a kernel launch, cuBLAS or cuDNN workspaces).
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(m in text for m in _OUT_OF_MEMORY_MESSAGES)


# cuBLAS and cuDNN make their handles and workspaces per thread, on first use: on a nearly
# full GPU that fails with these (pytorch/pytorch#108645: "unable to find an engine" is
# cuDNN's out-of-memory while the autotuner searches).
_OUT_OF_MEMORY_MESSAGES = ("MPS backend out of memory", "can't allocate memory",
                           "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                           "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_NOT_INITIALIZED",
                           "CUDNN_STATUS_NOT_INITIALIZED", "ALLOCATION_FAILED",
                           "unable to find an engine to execute this computation",
                           "Unable to find a valid cuDNN algorithm")


class InputWarning(UserWarning):
    """The image is unlike what the model was trained on: the result may not be trustworthy
    (``domain.input_warnings`` says why; ``predict()``'s ``result.info["input_warnings"]``
    keeps it)."""
