"""One input file to its outputs (read, predict, write all or none): the unit of work of
``cvdm predict``, run in the command line's process or as a task on a dask worker.

:func:`predict_file` is the only place that turns an input file into output files, so
a batch on a cluster writes exactly what the single-process run writes: the same pixels
for the same seed, the same metadata and provenance (:func:`provenance`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .image_names import is_zarr, zarr_store


@dataclass(frozen=True)
class FileTask:
    """One input and its outputs ((mean, std, var) TIFFs, or one OME-Zarr folder), with the
    seed of its run (drawn before the run, so a retried task repeats it exactly).

    ``replace``: outputs an earlier run left incomplete may be replaced (``--resume``).
    """

    input: Path
    outputs: tuple[Path, ...]
    seed: int
    replace: bool = False


@dataclass(frozen=True)
class RunSpec:
    """What every file of a run shares. Picklable when ``settings.model`` is a ModelRef.

    ``summary`` is the model's (from ``resolve_model``), ``steps`` the steps the sampler
    takes, ``overwrite`` replaces existing outputs, ``threads`` is torch's threads on a
    worker (None: the worker's thread count; the single-process run leaves torch alone).
    """

    settings: Any  # PredictSettings
    summary: dict[str, Any] = field(default_factory=dict)
    steps: int = 1
    overwrite: bool = False
    threads: int | None = None


def provenance(summary: dict, settings, steps: int, device: str, precision: str,
               psf_from: str | None = None) -> dict:
    """What the output files record about how they were made (known before the run).

    ``psf_from``: where ``settings.psf_sigma`` came from (psf_width.resolve)."""
    import datetime

    from . import __version__
    from .psf_width import psf_sigma_for

    model = settings.model
    psf_sigma = psf_sigma_for(model, settings.psf_sigma) if hasattr(model, "config") \
        else settings.psf_sigma
    return {"software": f"napari-cvdm {__version__}", "model": summary.get("name"),
            "weights_sha256": summary.get("sha256"), "seed": settings.seed,
            "samples": settings.samples, "steps": steps, "eta": settings.eta,
            "sampler": settings.sampler, "precision": precision, "psf_sigma": psf_sigma,
            "psf_sigma_from": psf_from if psf_sigma is not None else None,
            "augment": settings.augment, "device": device,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def describe(done: dict[str, Any]) -> str:
    """The line the command line prints for a finished input."""
    if done.get("repeats"):
        return f"{done['input']}: skipped, {done['repeats']}"
    if done.get("skipped"):
        return f"{done['input']}: skipped, its outputs are complete ({done['skipped']})"
    outputs = ", ".join(done["outputs"])
    width = f"PSF width {done['psf_sigma']:g} px ({done.get('psf_sigma_from')}), " \
        if isinstance(done.get("psf_sigma"), (int, float)) else ""
    return (f"{done['input']} -> {outputs} (seed {done['seed']}, {done['precision']}, "
            f"{width}{done['seconds']:.1f} s on {done['device']})")


def predict_file(task: FileTask, spec: RunSpec, model, progress=None, warn=None,
                 device: str | None = None) -> dict[str, Any]:
    """Read ``task.input``, predict, write its outputs together (all or none).

    ``model`` is the loaded CVDM; ``device`` overrides the settings' device (a worker's
    GPU). ``warn(message)`` gets the warnings about the input (unlike the training
    data). Returns what :func:`describe` prints: input, outputs, seed, precision,
    seconds, device. Errors as ``predict()``: ValueError for bad input, OSError for the
    file system, OutOfMemory; nothing of this input is written then.
    """
    from .devices import tune_cpu_allocator

    settings = spec.settings.replace(model=model, seed=task.seed,
                                     **({"device": device} if device else {}))
    tune_cpu_allocator()  # this process only predicts: keep freed memory for the next tile
    if is_zarr(task.input):
        return _predict_zarr(task, spec, settings, progress, warn)
    return _predict_tiff(task, spec, settings, progress, warn)


def _resolved(settings, image):
    """``settings`` with the PSF width the model is told for ``image`` (psf_width.resolve)
    made explicit, so the files record the width the run uses; and where it came from."""
    from .psf_width import resolve

    sigma, source = resolve(settings.model, settings.psf_sigma, image)
    return (settings.replace(psf_sigma=sigma) if sigma is not None else settings), source


def input_identity(path: Path) -> dict[str, Any]:
    """What the outputs record of the input they were made from: its name, and for a file
    its size in bytes, with the time it was last modified (UTC) for files and stores alike.
    Cheap for any size (no hash): with the name it tells a re-exported or replaced input
    from the one the outputs came from, as ``--resume`` does by the time."""
    import datetime

    stat = path.stat()
    store = zarr_store(path) if is_zarr(path) else None
    # a series or field inside a store: named with its place in the store
    name = path.relative_to(store.parent).as_posix() if store not in (None, path) else path.name
    out: dict[str, Any] = {"input": name.encode("utf-8", "backslashreplace").decode("utf-8")}
    if path.is_file():
        out["input_bytes"] = stat.st_size
    out["input_modified"] = datetime.datetime.fromtimestamp(
        stat.st_mtime, datetime.UTC).isoformat(timespec="seconds")
    return out


def _run_provenance(spec: RunSpec, settings, psf_from: str | None = None,
                    warned: list[str] = (), source: Path | None = None) -> dict:
    """The outputs' provenance; ``warned``: why the result may not be trustworthy, kept in
    the files (a warning on the terminal scrolls away); ``source``: the input file or store
    (:func:`input_identity`)."""
    from .devices import resolve_device
    from .domain import as_provenance
    from .precision import resolve_precision

    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device).name
    out = provenance(spec.summary, settings, spec.steps, str(device), precision, psf_from)
    if source is not None:
        out.update(input_identity(source))
    if warned:
        out["input_warnings"] = as_provenance(warned)
    return out


def _predict_tiff(task: FileTask, spec: RunSpec, settings, progress, warn) -> dict:
    import napari_cvdm

    from .image_files import read_tiff
    from .tiff_writer import spec_for, write_ome_tiffs
    from .validation import (IN_MEMORY_OUTPUTS, check_disk_room, check_image,
                             check_output_size, output_bytes)

    model = settings.model
    with _reader_warnings(warn, task.input):
        image = read_tiff(task.input, model.config.scale)  # outputs too large: before reading
    # The pixels first: an RGB, boolean or complex file gets predict()'s message, not a
    # warning about its contents or the OME writer's complaint about its axes.
    check_image(image.data)
    check_output_size(image.data.shape, model.config.scale)
    check_disk_room(task.outputs[0], output_bytes(image.data.shape, model.config.scale,
                                                  IN_MEMORY_OUTPUTS),
                    f"the outputs of {task.input.name} (mean, std and variance, float32)")
    settings, psf_from = _resolved(settings, image.data)
    warned = _warn_about_input(task, image.data, model, image.physical, settings, warn,
                               psf_from)
    # The output metadata is checked before the work, not after it.
    out_spec = spec_for(image, model.config.scale,
                        _run_provenance(spec, settings, psf_from, warned, task.input))
    result = napari_cvdm.predict(image.data, settings=settings, progress=progress,
                                  check_input=False)  # said above, with the pixel size
    write_ome_tiffs(list(zip(task.outputs, (result.mean, result.std, result.variance))),
                    out_spec, overwrite=spec.overwrite or task.replace)
    return _done(task, result, psf_from=psf_from)


_READING = threading.Lock()


@contextlib.contextmanager
def _reader_warnings(warn, path: Path):
    """The readers' warnings about the file ``path`` (damaged tiles, missing chunks,
    unreadable OME metadata, implausible pixel sizes) go to ``warn`` with the other warnings
    about the input (one wording in the command line, and back from dask workers), each
    once and naming the file as they do; without ``warn`` they stay Python warnings."""
    if warn is None:
        yield
        return
    # catch_warnings swaps process-wide state: one reader at a time, or two overlapping
    # reads in threads would swap each other's warnings and leave the filters changed
    with _READING, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    said = set()
    for record in caught:
        if issubclass(record.category, UserWarning):
            message = str(record.message)
            if path.name not in message:
                message = f"{path.name}: {message}"
            if message not in said:  # a unit not understood is found once per axis
                said.add(message)
                warn(message)
        else:
            warnings.warn(record.message, record.category, stacklevel=3)


def _warn_about_input(task: FileTask, image, model, physical, settings, warn,
                      psf_from: str | None = None) -> list[str]:
    """Each reason why a result on this input may not be trustworthy, said to ``warn`` (if
    any) and returned for the outputs' provenance; ``physical`` the file's sizes per axis
    ({"Y": PhysicalSize, "X": ...}, TIFF and OME-Zarr alike); ``psf_from`` where the
    width in ``settings`` came from (one the run chose is not judged as one given)."""
    from .domain import input_warnings
    from .physical import yx_sizes
    from .psf_width import GIVEN

    told = settings.psf_sigma if psf_from in (GIVEN, None) else None
    messages = input_warnings(image, model, *yx_sizes(physical),
                              psf_sigma=told, samples=settings.samples)
    for message in messages if warn is not None else ():
        warn(f"{task.input.name}: {message}")
    return messages


def check_zarr_input(array, meta: dict[str, Any]) -> None:
    """What can be said of an OME-Zarr input before any work (its metadata only; ValueError):
    as for a TIFF, the pixels first (an RGB store gets predict()'s message, not a warning about
    its contents), then axes its result could not be written with."""
    from .tiff_writer import ome_axes
    from .validation import check_image

    check_image(array)
    ome_axes(meta["axes"], array.ndim)


def _predict_zarr(task: FileTask, spec: RunSpec, settings, progress, warn=None) -> dict:
    """An OME-Zarr input, read lazily, to one OME-Zarr: mean and calibrated std."""
    import napari_cvdm

    from .lazy_prediction import is_dask
    from .validation import check_disk_room, check_output_size, output_bytes
    from .zarr_files import read_ome_zarr, with_levels, write_ome_zarr

    model = settings.model
    with _reader_warnings(warn, task.input):
        array, meta = read_ome_zarr(task.input, check_chunks=True)
    check_zarr_input(array, meta)
    if not is_dask(array):  # a dask array gives a lazy result, streamed chunk by chunk
        check_output_size(tuple(array.shape), model.config.scale)
    check_disk_room(task.outputs[0],
                    with_levels(output_bytes(tuple(array.shape), model.config.scale)),
                    f"the outputs of {task.input.name} (mean and std, float32, with coarser "
                    "levels)")
    settings, psf_from = _resolved(settings, array)
    warned = _warn_about_input(task, array, model, meta["physical"], settings, warn, psf_from)
    run_provenance = _run_provenance(spec, settings, psf_from, warned, task.input)
    result = napari_cvdm.predict(array, settings=settings, progress=progress,
                                  check_input=False)  # said above, with the pixel size
    writing = time.perf_counter()
    write_ome_zarr(task.outputs[0], result.mean, result.std, meta, scale=model.config.scale,
                   provenance=run_provenance,
                   overwrite=spec.overwrite or task.replace)
    # a lazy result is computed while it is written: its own time is the graph's set-up
    return _done(task, result, result.seconds + time.perf_counter() - writing
                 if is_dask(result.mean) else None, psf_from)


def _done(task: FileTask, result, seconds: float | None = None,
          psf_from: str | None = None) -> dict[str, Any]:
    """What the command line says of a finished input; ``psf_from``: where the width the
    model was told came from (resolved before predict(), which was then given it)."""
    return {"input": str(task.input), "outputs": [str(p) for p in task.outputs],
            "seed": result.seed, "precision": result.info.get("precision"),
            "seconds": result.seconds if seconds is None else seconds,
            "device": result.device, "psf_sigma": result.info.get("psf_sigma"),
            "psf_sigma_from": psf_from or result.info.get("psf_sigma_from")}
