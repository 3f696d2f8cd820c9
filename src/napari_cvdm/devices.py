"""Device choice: "auto" picks CUDA, then Apple MPS, then the CPU; CPU allocator tuning."""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import torch


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:N" or "mps" into an available torch.device."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is not None and not isinstance(device, str):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps (text) or a "
                         f"torch.device, not {device!r} ({type(device).__name__})")
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available here; "
                             "use device='auto' or 'cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: "
                             f"{torch.cuda.device_count()} CUDA device(s) found")
        # "cuda" is the current GPU: name it, so that a tensor already there (whose device
        # always has an index) compares equal and is not copied again
        resolved = torch.device("cuda", cuda_index(resolved))
    elif resolved.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None
                and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was requested but Apple MPS is not available here")
        resolved = torch.device("mps", 0)  # the one Apple GPU, named as its tensors name it
    elif resolved.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return resolved


def cuda_index(device: torch.device) -> int:
    """The index of the GPU ``device`` names (plain "cuda": the current one)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def free_memory_bytes(device: torch.device) -> int | None:
    """Free accelerator memory, or None on the CPU (where a fixed pixel budget is used)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # torch's cache holds memory it is not using: free for our tensors, not for others
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    return None


def available_cpu_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- CPU allocator -------------------------------------------------------------------------
# glibc's malloc gives every freed block above a (dynamic, at most 32 MiB) threshold back to
# the kernel, and trims the heap top above another: a U-Net on a large tile frees and
# re-allocates tens of megabytes per layer, and each time the kernel has to fault in and
# zero fresh pages. Keeping freed blocks in the heap cut the CPU time of predict() by about
# 30 % (docs/performance.md). malloc_trim() after a prediction gives the memory back.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30
_lock = threading.Lock()
_libc = None
_tuned = False


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.gnu_get_libc_version  # noqa: B018  (glibc only, not musl)
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in the process heap (glibc only, once per process).

    Set NAPARI_CVDM_TUNE_MALLOC=0 to leave the allocator alone. Returns whether it is tuned.
    """
    global _tuned
    if os.environ.get("NAPARI_CVDM_TUNE_MALLOC", "1").strip() in ("0", "false", "no"):
        return False
    with _lock:
        if _tuned:
            return True
        libc = _glibc()
        if libc is None:
            return False
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
                  or libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20))
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)) and ok
        _tuned = ok
        return ok


def release_accelerator_memory(device: torch.device) -> None:
    """What torch's caching allocator holds on ``device`` given back, after running out of
    memory (call it outside the ``except`` clause: the traceback's frames hold tensors)."""
    import gc

    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def release_cpu_memory() -> None:
    """Give the free heap memory back to the system (after a prediction)."""
    if _tuned:
        libc = _glibc()
        if libc is not None:
            libc.malloc_trim(0)


# -- one thread for the CPU work of background predictions ---------------------------------
# OpenMP (libgomp, which the PyTorch wheels use) gives every thread that runs a parallel
# region its own team of worker threads, and it stops spin-waiting between parallel regions
# (it sleeps in the kernel instead) as soon as the threads of all teams outnumber the CPUs.
# A prediction in a new thread, once any other thread (e.g. the main thread) has run PyTorch,
# therefore pays a sleep/wake-up for each of the thousands of parallel regions of a denoiser
# call: 1.46x the main thread's time in issue 11 on an idle 2-core VM. docs/performance.md
# has the measurements. Running every background prediction in one long-lived thread keeps a
# single OpenMP team for the process, as long as the main thread itself runs no PyTorch.
# The reconstruction and training widgets run their jobs there (compute_thread_run); scripted
# calls (predict(), run_on_layer()) run in the caller's thread as before.
_compute_lock = threading.Lock()
_compute_pool = None


def compute_thread_call(fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` in the process's one long-lived compute thread; its result.

    Blocks the calling thread (e.g. napari's worker) until ``fn`` returns and re-raises its
    exception there. Calls from the compute thread itself run inline; calls from several
    threads queue up one after another.
    """
    return _dispatch(fn, args, kwargs, queue=True)


def _dispatch(fn, args, kwargs, queue: bool):
    """Run ``fn`` in the compute thread (inline when already there). ``queue``: wait behind
    other calls; otherwise run in the calling thread while the compute thread is busy."""
    global _compute_busy
    if threading.current_thread().name == _COMPUTE_THREAD:
        return fn(*args, **kwargs)
    with _compute_lock:
        inline = not queue and _compute_busy > 0
        if not inline:
            _compute_busy += 1
    if inline:
        return fn(*args, **kwargs)
    try:
        return _submit(fn, args, kwargs)
    finally:
        with _compute_lock:
            _compute_busy -= 1


def _submit(fn, args, kwargs):
    global _compute_pool
    with _compute_lock:
        if _compute_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _compute_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_COMPUTE_THREAD)
        pool = _compute_pool
    return pool.submit(_named, fn, args, kwargs).result()


_COMPUTE_THREAD = "napari-cvdm-compute"
_compute_busy = 0  # calls submitted to the compute thread and not finished


def _named(fn, args, kwargs):
    threading.current_thread().name = _COMPUTE_THREAD
    return fn(*args, **kwargs)


def compute_thread_run(fn, /, *args, **kwargs):
    """Like :func:`compute_thread_call`, but never waits behind another job.

    If the compute thread is already running (or has queued) someone else's call, e.g. a
    long training while a prediction starts, ``fn`` runs in the calling thread instead,
    concurrently, as it would without a compute thread. The widgets use this.
    """
    return _dispatch(fn, args, kwargs, queue=False)


def compute_thread_ident() -> int | None:
    """The thread id of the compute thread, None before its first call (for tests)."""
    for t in threading.enumerate():
        if t.name == _COMPUTE_THREAD:
            return t.ident
    return None
