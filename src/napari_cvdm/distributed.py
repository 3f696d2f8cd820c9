"""Batches of files on dask.distributed: a local cluster or an existing scheduler, one task
per input file, each worker loading the model once (``cvdm predict --workers/--scheduler``).

Each task runs :func:`napari_cvdm.file_prediction.predict_file` on a worker, which writes
the file's outputs itself (all or none, atomically), so a batch on a cluster writes exactly
what the single-process run writes. The model travels as a
:class:`~napari_cvdm.model_cache.ModelRef` and is loaded once per worker process. A task
whose worker dies is run again by dask on another worker (and one that raises, up to
``retries`` times); its seed was drawn before submission, so the retry repeats it exactly,
and outputs that an earlier attempt completed are kept, not written twice. No Qt or napari
here; dask.distributed is imported only when a cluster is used (the ``cluster`` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'napari-cvdm[cluster]'"
DEFAULT_TIMEOUT = 15.0  # seconds to wait for an existing scheduler to answer
MAX_SCHEDULER_TIMEOUT = 3600.0  # dask takes no infinite timeout (inf raised a KeyError)
RETRIES = 2  # extra attempts of a file whose task raised (a dead worker is retried anyway)
# What one local worker process holds once it has the model: Python, torch, dask, the
# model and its sampling buffers (benchmarks/worker_memory.py: 363 MiB after a first
# 128 x 128 image with the bundled model on the CPU build, 62 MiB idle; the one-process
# command line 346 MiB with the model loaded).
WORKER_BYTES = 350 * 2**20

_predicting = threading.Lock()  # one prediction at a time per worker process


def require_distributed():
    """The ``distributed`` module, or ValueError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ValueError(f"running on several workers needs dask.distributed, which is not "
                         f"installed; install it with: {INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def connect(workers: int | None = None, threads_per_worker: int = 1,
            scheduler: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Any]:
    """A dask ``Client``: to the scheduler at ``scheduler``, or to a new LocalCluster of
    ``workers`` processes (closed on exit).

    Each local worker runs one file at a time (one dask thread) with
    ``threads_per_worker`` torch threads (set by each task). A scheduler that does not
    answer within ``timeout`` seconds is a ValueError, not a hang.
    """
    distributed = require_distributed()
    if (workers is None) == (scheduler is None):
        raise ValueError("give either a number of workers or a scheduler address, not both")
    if scheduler is not None:
        if not 0 < timeout <= MAX_SCHEDULER_TIMEOUT:
            raise ValueError(f"the scheduler timeout must be more than 0 and at most "
                             f"{MAX_SCHEDULER_TIMEOUT} seconds, not {timeout}")
        try:
            _check_scheduler(scheduler, timeout)
            client = distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"no dask scheduler answered at {scheduler} within {timeout:g} s "
                             f"({detail}); check the address, or start one with 'dask "
                             "scheduler'") from None
        with client:
            yield client
        return
    if workers < 1 or threads_per_worker < 1:
        raise ValueError(f"workers and threads per worker must be at least 1, not {workers} "
                         f"and {threads_per_worker}")
    _check_local_memory(workers)
    import logging

    # The workers' own log stays quiet below CRITICAL: a task's failure reaches the caller
    # through its future (run_batch says it), and at shutdown workers that are slow to stop
    # (many workers on few cores) logged "Failed to communicate with scheduler during
    # heartbeat" with two tracebacks after a run that had succeeded.
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                       processes=True, dashboard_address=":0",
                                       silence_logs=logging.CRITICAL)
    with cluster, distributed.Client(cluster) as client:
        yield client


def _check_local_memory(workers: int) -> None:
    """ValueError before any process starts where ``workers`` local workers would not fit
    in the memory free now (each needs about WORKER_BYTES once it has the model): a
    mistyped count (``--workers 1000``) would start a process per worker and exhaust the
    machine."""
    import psutil  # a dependency of dask.distributed

    free = psutil.virtual_memory().available
    fits = max(1, free // WORKER_BYTES)
    if workers > fits:
        raise ValueError(f"{workers} local workers need about {workers * WORKER_BYTES / 2**30:.1f}"
                         f" GiB with the model loaded and {free / 2**30:.1f} GiB is free; "
                         f"use at most {fits} (each worker runs one file at a time)")


def _check_scheduler(address: str, timeout: float) -> None:
    """Ask ``address`` who it is, all within ``timeout`` seconds: a port that accepts the
    connection but is no dask scheduler (a web server, a listener that never answers) made
    ``Client`` wait for ever, whatever its timeout (it bounds the connection, not the
    registration after it). TimeoutError, OSError or ValueError where it is not one.
    Skipped inside a running event loop (``Client`` itself then says what is wrong)."""
    import asyncio

    from distributed.comm import connect as comm_connect

    if "://" in address and not address.startswith("tcp://"):
        return  # TLS and other transports need the security settings Client reads
    try:
        asyncio.get_running_loop()
        return
    except RuntimeError:
        pass

    async def identity():
        comm = await comm_connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    try:
        reply = asyncio.run(asyncio.wait_for(identity(), timeout))
    except (OSError, TimeoutError, ValueError):
        raise
    except asyncio.TimeoutError:
        raise TimeoutError("it did not answer as a dask scheduler") from None
    except Exception as exc:  # noqa: BLE001 - the comm's own errors (a garbled reply)
        raise ValueError(f"it did not answer as a dask scheduler: {exc}") from None
    if not (isinstance(reply, dict) and reply.get("type") == "Scheduler"):
        raise ValueError("it answered, but not as a dask scheduler")


def _worker_index(worker) -> int:
    """The worker's number: its name when a number (LocalCluster: 0, 1, ...), the last
    digits of its name (dask-jobqueue: 'SLURMCluster-3'), else from its address."""
    import zlib

    name = getattr(worker, "name", None)
    if isinstance(name, int):
        return name
    found = re.search(r"(\d+)$", str(name or ""))
    if found:
        return int(found.group(1))
    return zlib.crc32(str(getattr(worker, "address", "")).encode())


def worker_device(requested: str, index: int) -> str | None:
    """The device of worker ``index``: with ``auto``/``cuda`` and several GPUs visible,
    ``cuda:(index mod count)``; otherwise None (the settings' device as it is)."""
    import torch

    if (requested or "auto").strip().lower() not in ("auto", "cuda"):
        return None
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    return f"cuda:{index % torch.cuda.device_count()}"


def run_file(task, spec) -> dict[str, Any]:
    """The task of one input file on a worker: the model from the worker's cache, torch's
    threads and the worker's GPU set, then :func:`predict_file`.

    Outputs that are complete already were written by an earlier attempt of this task
    (the command line refuses existing outputs before submitting): they are kept and
    reported, not written twice. Warnings about the input come back in ``warnings``; bad
    input (ValueError) comes back in ``error`` rather than raised, so that dask does not
    retry it. Other errors are raised (and retried).
    """
    import torch

    from .file_prediction import predict_file
    from .finished_outputs import ABSENT, COMPLETE, output_state
    from .model_cache import load_cached

    state, why = output_state(task.outputs, task.input)
    if state == COMPLETE and not spec.overwrite:
        return {"input": str(task.input), "skipped": f"written by an earlier attempt: {why}"}
    if state not in (ABSENT, COMPLETE):  # left half-renamed by a killed attempt: redo
        task = dataclasses.replace(task, replace=True)
    try:
        from distributed import get_worker

        worker = get_worker()
        index, nthreads = _worker_index(worker), worker.state.nthreads
    except (ImportError, ValueError):  # not on a dask worker (a test, a plain call)
        index, nthreads = 0, None
    threads = spec.threads or nthreads
    warnings: list[str] = []
    device = worker_device(spec.settings.device, index)
    with _predicting, _local_dask():
        if threads:
            torch.set_num_threads(threads)
        if device is not None:  # work torch puts on "the current GPU" lands on this one
            torch.cuda.set_device(torch.device(device))
        try:
            model = load_cached(spec.settings.model)
            done = predict_file(task, dataclasses.replace(spec, threads=None), model,
                                warn=warnings.append, device=device)
        except ValueError as exc:  # bad input fails the same way again: no retry
            # a plain copy: the original carries the reader's own exception as its context
            # (a codec's error class that cannot be unpickled on the client: a TypeError)
            return {"input": str(task.input), "error": ValueError(str(exc))}
    return {**done, "warnings": warnings}


@contextlib.contextmanager
def _local_dask():
    """Lazy arrays inside a task (an OME-Zarr input) computed in this task's thread, not
    sent back to the cluster (a worker of one thread would wait for itself)."""
    try:
        import dask
    except ImportError:
        yield
        return
    with dask.config.set(scheduler="synchronous"):
        yield


@dataclass
class FileOutcome:
    """What became of one task: ``done`` (as :func:`describe` takes it) or ``error``."""

    task: Any
    done: dict[str, Any] | None = None
    error: BaseException | None = None


def run_batch(client, tasks: Sequence, spec, *, retries: int = RETRIES,
              progress: bool = True, on_outcome: Callable[[FileOutcome], None] | None = None,
              function: Callable = run_file) -> list[FileOutcome]:
    """Run every :class:`FileTask` of ``tasks`` on ``client``'s cluster; outcomes in the
    order of ``tasks``.

    One task per file (``pure=False``, a unique key, ``retries``); paths are sent
    absolute. ``spec.settings.model`` must be a ModelRef. A file that fails is reported
    in its outcome (bad input at once, other errors after ``retries`` more attempts);
    the other files go on. A tqdm bar on stderr counts finished files;
    ``on_outcome`` is called as each file finishes. Ctrl-C cancels what has not finished
    (finished files keep their outputs).
    """
    distributed = require_distributed()
    from tqdm import tqdm

    from .model_cache import ModelRef

    if not isinstance(spec.settings.model, ModelRef):
        spec = dataclasses.replace(
            spec, settings=spec.settings.replace(model=ModelRef.of(spec.settings.model)))
    batch = uuid.uuid4().hex[:8]
    futures = {}
    for i, task in enumerate(tasks):
        sent = dataclasses.replace(task, input=Path(task.input).absolute(),
                                   outputs=tuple(Path(p).absolute() for p in task.outputs))
        key = f"cvdm-predict-{batch}-{i}-{_key_safe(Path(task.input).name)}"
        future = client.submit(function, sent, spec, key=key, pure=False, retries=retries)
        futures[future] = i
    outcomes: list[FileOutcome | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), unit="file", desc="files", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for future in distributed.as_completed(list(futures)):
            i = futures[future]
            try:
                done = future.result()
                outcome = (FileOutcome(tasks[i], error=done["error"]) if "error" in done
                           else FileOutcome(tasks[i], done=done))
            except Exception as exc:  # the file's own error, raised again here
                outcome = FileOutcome(tasks[i], error=exc)
            outcomes[i] = outcome
            bar.update(1)
            if on_outcome is not None:
                on_outcome(outcome)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()
    return [o for o in outcomes if o is not None]


def _key_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
