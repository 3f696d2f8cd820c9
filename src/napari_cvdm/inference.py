"""predict(): from a microscope image to the CVDM mean and variance, in the input's units.

One code path for the widget, the command line and scripts: options come in as a
:class:`~napari_cvdm.settings.PredictSettings` and/or keywords, progress and cancellation
as plain callables. Per plane: percentile normalisation (the model's own percentiles),
resampling onto the model's finer grid, overlapping tiles (``planning``), samples drawn in
batches with streaming statistics (``tile_sampling``), blending.

Thread safety: predict() never modifies the model it is given (it runs a cached copy on the
device, see ``running_model``), so several threads may call it with one model at once; each
call allocates its own outputs. The only process-wide state it touches, cuDNN's autotuner
flag on CUDA, is restored when it returns.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import calibration, padding  # noqa: I001
from .devices import release_accelerator_memory, release_cpu_memory, resolve_device
from .errors import CancelCheck, InputWarning, OutOfMemory, is_out_of_memory
from .model.cvdm import CVDM
from .normalization import DEFAULT_PERCENTILES, Normalization
from .planning import TilePlan, plan, smaller_plan
from .precision import cpu_bf16_choice, from_half_flag, resolve_precision
from .psf_width import resolve as resolve_psf_sigma
from .running_model import running_model
from .settings import PredictSettings, draw_seed, settings_from
from .spikes import without_spikes
from .tile_sampling import Run, predict_plane
from .validation import as_array, check_image, check_output_size, check_plane

__all__ = ["PredictionResult", "TilePlan", "plan", "predict"]


@dataclass
class PredictionResult:
    """Per-pixel mean and variance of the CVDM samples, float32, in input units.

    ``std`` is the calibrated standard deviation (the expected error of the mean) when the
    model carries a calibration (``calibration.py``), else the samples' standard deviation;
    ``variance`` is always the raw sample variance, ``sample_std`` its square root.
    """

    mean: np.ndarray
    variance: np.ndarray
    samples: int
    steps: int
    eta: float
    sampler: str
    device: str
    scale: int
    seed: int
    tile_size: int
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    calibrated_std: np.ndarray | None = None

    @property
    def sample_std(self) -> np.ndarray:
        return np.sqrt(self.variance)

    @property
    def std(self) -> np.ndarray:
        return self.sample_std if self.calibrated_std is None else self.calibrated_std


def _resolve_model(model) -> CVDM:
    if isinstance(model, CVDM):
        return model
    from .model_files import resolve_model

    return resolve_model(model)[0]


class _CompiledDenoiser:
    """``torch.compile`` of ``net.denoise``, falling back to eager if compiling fails."""

    def __init__(self, net: CVDM):
        self.net = net
        self.compiled = torch.compile(net.denoise)
        self.failed = False

    def __call__(self, z, inputs, gamma):
        if not self.failed:
            try:
                return self.compiled(z, inputs, gamma)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                import warnings

                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); "
                              "running the model uncompiled", RuntimeWarning, stacklevel=2)
                self.failed = True
        return self.net.denoise(z, inputs, gamma)


def _prepare(image, model, settings, options, half, progress, cancel,
             lazy: bool = False, check_input: bool = True,
             file_sizes: tuple = (None, None)) -> tuple[Run, tuple]:
    """Every check before any work, then the run's state: model, device, precision, plan.

    ``lazy``: the outputs are dask arrays (never held whole, so their size is not checked
    against memory) and the tasks load the model where they run. ``check_input``: warn
    (:class:`InputWarning`) where the image is unlike what the model was trained on;
    ``file_sizes``: the (Y, X) pixel sizes and units of the file it was read from, if any.
    """
    shape, _ = check_image(image)
    s = settings_from(settings, options if model is None else {**options, "model": model})
    source = s.model
    s = s.replace(precision=from_half_flag(half, s.precision))
    model = _resolve_model(s.model)
    if model.config.channels != 1:
        raise ValueError(f"this model expects {model.config.channels}-channel images; "
                         "napari-cvdm predicts single-channel planes")
    # The width a conditioned model is told, from the caller's model (not a cached copy):
    # given, estimated from the image, or the model's default (psf_width.resolve)
    told = s.psf_sigma
    psf_sigma, psf_from = resolve_psf_sigma(model, told, image)
    s = s.replace(psf_sigma=psf_sigma)
    scale = model.config.scale
    if not lazy:
        check_output_size(shape, scale)
    device = resolve_device(s.device)
    precision = resolve_precision(s.precision, device)
    seed = draw_seed() if s.seed is None else s.seed
    height, width = shape[-2] * scale, shape[-1] * scale
    first = plan(model, height, width, s.samples, device, s.tile_size, s.overlap, s.batch_size,
                 precision.low)
    if precision.low and device.type == "cpu" and min(first.tile) <= model.config.stride:
        # A tile this narrow is one pixel across at the network's lowest level, where
        # oneDNN's bfloat16 convolutions gave wrong values that changed from run to run
        # (a 64 x 4 input: up to 200 off its float32 result, at times NaN): float32.
        s = s.replace(precision="fp32")
        precision = resolve_precision(s.precision, device)
    run = Run(model, device, precision, s, seed, first, height, width, progress, cancel)
    run.psf_from = psf_from
    if check_input:
        from .domain import input_warnings

        run.input_warnings = tuple(input_warnings(image, model, *file_sizes, psf_sigma=told,
                                                  samples=s.samples))
    run.percentiles = _percentiles(model)
    run.calibration = model.metadata.get("calibration")  # the caller's model, not the copy
    if run.calibration is not None:
        calibration.check(run.calibration)
    run.check_cancel()
    if lazy:
        run.net, run.source = model, source
        return run, shape
    try:
        run.net = running_model(model, device)
        return run, shape
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    # outside the except clause: its traceback holds the partly made copy's tensors
    release_accelerator_memory(device)
    raise OutOfMemory(device, what="the model")


def _say_input_warnings(run: Run, stacklevel: int) -> None:
    """Each of the run's input warnings as an :class:`InputWarning` at predict()'s caller
    (a Python user or a notebook sees them)."""
    for message in run.input_warnings:
        warnings.warn(InputWarning(message), stacklevel=stacklevel + 1)


def _percentiles(net: CVDM) -> tuple[float, float]:
    """The normalisation the model was trained with (its file's metadata), or the default."""
    found = ((net.metadata or {}).get("normalization") or {}).get("percentiles")
    if not found:
        return DEFAULT_PERCENTILES
    try:
        low, high = (float(v) for v in found)
    except (TypeError, ValueError):
        low, high = float("nan"), float("nan")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"the model's normalisation percentiles {found!r} are not two "
                         "numbers 0 <= low < high <= 100; the model file is damaged")
    return low, high


def _run_plane(run: Run, x_plane: torch.Tensor, plane: int, mean_view, var_view,
               planes_left: int, excess=None) -> None:
    """One plane, retried with smaller plans while the device runs out of memory."""
    while True:
        try:
            return predict_plane(run, x_plane, plane, mean_view, var_view, excess)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        # Outside the except clause: the traceback (and the tensors its frames hold) is
        # gone, so the memory can really be released.
        release_accelerator_memory(run.device)
        smaller = smaller_plan(run.plan, run.net.config.stride)
        if smaller is None:
            raise OutOfMemory(run.device, run.plan.tile_size, run.plan.batch)
        run.plan, run.retries = smaller, run.retries + 1
        # Progress never goes back: the rest is counted from here.
        run.total = run.done + planes_left * run.plane_evaluations()


_autotune_lock = threading.Lock()
_autotune_runs = 0  # CUDA runs in progress with cuDNN's autotuner on
_autotune_before = False  # the flag as the first of them found it


@contextlib.contextmanager
def cudnn_autotune():
    """cuDNN's autotuner on while any CUDA run is in progress, the caller's setting back when
    the last ends: runs in several threads overlap, and each restoring the flag it found
    would leave it on. A caller who asked for deterministic cuDNN (``torch.backends.cudnn.
    deterministic``, as the bioimage.io sampler's exact mode does) keeps the autotuner off:
    it picks algorithms by timing, which can differ between runs and round differently."""
    global _autotune_runs, _autotune_before
    with _autotune_lock:
        if _autotune_runs == 0:
            _autotune_before = torch.backends.cudnn.benchmark
        _autotune_runs += 1
        if not torch.backends.cudnn.deterministic:
            torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        with _autotune_lock:
            _autotune_runs -= 1
            if _autotune_runs == 0:
                torch.backends.cudnn.benchmark = _autotune_before


def _calibrate(table, norm: Normalization, mean_view: np.ndarray, var_view: np.ndarray,
               std_view) -> None:
    """The calibrated std of one plane (from its normalised mean and variance) in input
    units."""
    if std_view is not None:
        std_view[...] = calibration.apply(np.sqrt(var_view), table, mean_view) * \
            np.float32(norm.half_range)


def _to_input_units(norm: Normalization, mean_view: np.ndarray, var_view: np.ndarray) -> None:
    """Back to input units in place, in row blocks (no whole-image float64 temporaries)."""
    rows = max(1, 2**16 // mean_view.shape[-1])
    for r in range(0, mean_view.shape[0], rows):
        mean_view[r:r + rows] = norm.invert_mean(mean_view[r:r + rows])
        var_view[r:r + rows] = norm.invert_variance(var_view[r:r + rows])


def predict(image, model=None, *, settings: PredictSettings | None = None, progress=None,
            cancel: CancelCheck = None, half: bool | None = None, client=None,
            check_input: bool = True, **options) -> PredictionResult:
    """Reconstruct ``image`` with CVDM; return the per-pixel mean and variance.

    ``image``: 2D, or nD with the last two axes Y, X (leading axes plane by plane); any
    real dtype. Outputs have the input's shape with the last two axes times
    ``model.config.scale``. ``model``: a CVDM, a bundled name or a model file (None: the
    settings' model). The options (``samples``, ``steps``, ``eta``, ``sampler``, ``seed``,
    ``device``, ``precision``, ``tile_size``, ``overlap``, ``batch_size``, ``compile``) and
    their defaults are those of :class:`~napari_cvdm.settings.PredictSettings`: pass
    ``settings=`` and/or keywords (keywords override). ``half`` is deprecated (use
    ``precision``). ``progress(done, total)`` is called after every denoiser evaluation;
    ``cancel`` (an Event or a callable) stops the run with :class:`Cancelled`.

    A **dask array** gives a lazy result: ``mean``, ``variance`` and ``std`` are dask arrays
    computed tile group by tile group when asked for (``lazy_prediction``), equal to the
    in-memory result for the same seed; stream them to zarr with
    :func:`~napari_cvdm.zarr_files.write_ome_zarr` or ``dask.array.store`` of all three at
    once (computed separately, the tiles would run once per output). ``client``: a
    dask.distributed Client; a NumPy (or zarr) image is then computed on its cluster and
    returned as NumPy, a dask image stays lazy (compute it with that client). ``progress``
    and ``cancel`` reach the tile groups computed in this process (threads); on process or
    remote workers neither is called (dask's own dashboard shows their progress, and
    ``client.cancel`` stops them).

    ``check_input``: an image unlike what the model was trained on (transmitted light, noise,
    a label image, saturation, many hot pixels, a small far brighter object, a PSF width
    outside the trained range, one sample; the pixel size where ``image`` is an ``ImageFile``
    from ``read_tiff``, as the command line and napari check it from the file or layer)
    gets an :class:`InputWarning` per reason before the work, kept in
    ``result.info["input_warnings"]``; the front ends, which say it their own way, pass False.
    Isolated hot pixels are kept out of the networks and passed through to the mean, their
    square excess in the variance (:mod:`~napari_cvdm.spikes`).

    Errors: ValueError for bad input or options (checked before any work, including the
    size of the outputs; the values of a dask or zarr image, NaN say, only as its chunks are
    read, so with ``client=`` on the cluster), :class:`~napari_cvdm.errors.OutOfMemory`
    when even the smallest tiles and one sample per call do not fit (after retrying
    smaller plans). Thread-safe:
    the model is never modified, so threads may share it.
    """
    started = time.perf_counter()
    from .lazy_prediction import is_dask

    file_sizes = _file_pixel_sizes(image)  # an ImageFile (read_tiff) says its pixel size
    image = as_array(image)  # nested lists: every step below indexes planes of an array
    if is_dask(image) or client is not None:
        return _predict_lazy(image, model, settings, options, half, progress, cancel, client,
                             started, check_input, file_sizes)
    run, shape = _prepare(image, model, settings, options, half, progress, cancel,
                          check_input=check_input, file_sizes=file_sizes)
    _say_input_warnings(run, stacklevel=2)
    s, net, dev = run.settings, run.net, run.device
    planes = list(np.ndindex(*shape[:-2]))
    run.total = len(planes) * run.plane_evaluations()
    mean_out = np.empty(shape[:-2] + (run.height, run.width), dtype=np.float32)
    var_out = np.empty_like(mean_out)
    table = run.calibration
    std_out = None if table is None else np.empty_like(mean_out)
    run.denoise = _CompiledDenoiser(net) if s.compile else None
    autotune = cudnn_autotune() if dev.type == "cuda" else contextlib.nullcontext()
    try:
        with autotune, torch.inference_mode():  # autotune: every tile has the same shape
            for p, index in enumerate(planes):
                plane = check_plane(image[index] if index else image, index)
                norm = Normalization.fit(plane, run.percentiles, padding=True)
                if norm.is_constant:
                    # Nothing to resolve: the reconstruction is the constant, with certainty.
                    mean_out[index], var_out[index] = plane.flat[0], 0.0
                    if std_out is not None:
                        std_out[index] = 0.0
                    run.advance(run.plane_evaluations())
                    continue
                x_plane, excess = without_spikes(norm.apply(plane))
                x_plane = torch.from_numpy(x_plane)
                padded = None if norm.padding is None else plane == norm.padding
                del plane
                _run_plane(run, x_plane, p, mean_out[index], var_out[index], len(planes) - p,
                           excess)
                _calibrate(table, norm, mean_out[index], var_out[index],
                           None if std_out is None else std_out[index])
                _to_input_units(norm, mean_out[index], var_out[index])
                if padded is not None:
                    padding.write_back(padded, norm.padding, net.config.scale, (0, 0), [
                        mean_out[index], var_out[index],
                        None if std_out is None else std_out[index]])
    finally:
        if dev.type == "cpu":
            release_cpu_memory()
    p = run.plan
    info = {**_plan_info(run, run.total, std_out is not None),
            "network_calls": run.network_calls, "retries": run.retries,
            "compiled": bool(run.denoise is not None and not run.denoise.failed)}
    steps = s.steps if s.sampler == "ddim" else net.config.timesteps
    return PredictionResult(mean_out, var_out, s.samples, steps, s.eta, s.sampler, str(dev),
                            net.config.scale, run.seed, p.tile_size,
                            time.perf_counter() - started, info, std_out)


def _plan_info(run: Run, evaluations: int, calibrated: bool) -> dict[str, Any]:
    """What a result's ``info`` says about the plan and the arithmetic of its run."""
    p = run.plan
    info = {"tiles": len(run.tiles()), "tile_shape": p.tile, "batch": p.batch,
            "group": p.group, "overlap": p.overlap, "evaluations": evaluations,
            "precision": run.precision.name, "half": run.precision.name == "fp16",
            "calibrated": calibrated, "psf_sigma": run.psf_sigma,
            "psf_sigma_from": run.psf_from, "augment": run.settings.augment,
            "input_warnings": list(run.input_warnings)}
    if run.device.type == "cpu" and run.settings.precision == "auto":
        info["cpu_bf16"] = cpu_bf16_choice().as_info()  # why "auto" chose what it did
    return info


def _file_pixel_sizes(image) -> tuple:
    """([Y, X] sizes, [Y, X] units) of an ``ImageFile`` (``read_tiff``), for the pixel-size
    checks the command line makes; (None, None) for anything else."""
    from .image_files import ImageFile
    from .physical import yx_sizes

    return yx_sizes(image.physical) if isinstance(image, ImageFile) else (None, None)


def _predict_lazy(image, model, settings, options, half, progress, cancel, client,
                  started, check_input, file_sizes=(None, None)) -> PredictionResult:
    """A dask image to a lazy result; with a client, other images computed on its cluster."""
    from .lazy_prediction import forget, is_dask, lazy_predict

    run, shape = _prepare(image, model, settings, options, half, progress, cancel, lazy=True,
                          check_input=check_input, file_sizes=file_sizes)
    _say_input_warnings(run, stacklevel=3)
    source = image
    if not is_dask(image):
        import dask.array as da

        th, tw = run.plan.tile
        scale = run.net.config.scale
        chunks = (1,) * (len(shape) - 2) + (max(th // scale, 1) * 2, max(tw // scale, 1) * 2)
        source = da.from_array(np.asarray(image), chunks=chunks)
    mean, variance, std, spec = lazy_predict(source, run.net, run, shape, run.source,
                                             pin_device=client is None)
    s, net = run.settings, run.net
    steps = s.steps if s.sampler == "ddim" else net.config.timesteps
    info = {**_plan_info(run, spec.planes * run.plane_evaluations(), std is not None),
            "retries": 0, "compiled": False, "lazy": True}
    if client is not None and not is_dask(image):
        try:
            mean, variance, *rest = client.compute([mean, variance] + ([std] if std is not None
                                                                        else []), sync=True)
        finally:
            forget(spec)
        std = rest[0] if rest else None
        info["lazy"] = False
    return PredictionResult(mean, variance, s.samples, steps, s.eta, s.sampler,
                            str(run.device), net.config.scale, run.seed, run.plan.tile_size,
                            time.perf_counter() - started, info, std)
