"""predict() on a dask array: a lazy result computed tile group by tile group.

Given a dask array, :func:`napari_cvdm.predict` returns the mean, variance and calibrated
standard deviation as dask arrays. The graph, per plane:

- one summary task per input block (smallest and largest value, NaN count and, for 8- and
  16-bit images, a histogram and the counts that tell padding along the edges from data),
  reduced to the plane's normalisation: the same percentiles ``Normalization.fit`` gives on
  the whole plane, without ever holding it (float images are read whole for that one step);
- one task per tile group of the plan, reading only the input pixels its tiles need, and
  running them exactly as the in-memory run does (same tiles, same groups, the same
  position-dependent noise and generator seeds);
- one task per output chunk, blending the statistics of the tiles that touch it with the
  weights they have in the whole plane (``StatisticsBlender(window=...)``).

So a chunk of the lazy result equals the same region of the in-memory result (to float32
round-off), any chunk can be computed alone, and a result can be streamed to zarr chunk by
chunk with memory bounded by the tiles, not by the image. Tasks take a picklable
:class:`LazySpec` (the model as a :class:`~napari_cvdm.model_cache.ModelRef`), so the graph
runs on dask.distributed workers too, each loading the model once. No Qt or napari.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import padding
from .normalization import Normalization
from .planning import TilePlan
from .settings import PredictSettings
from .spikes import HALO
from .tiling import Tile

__all__ = ["LazySpec", "is_dask", "lazy_predict", "MAX_CHUNK"]

MAX_CHUNK = 1024  # output chunk side at most: a chunk task holds (3, chunk, chunk) float32
HISTOGRAM_BITS = 16  # integer images up to this many bits are normalised from histograms

_compute_lock = threading.Lock()  # one tile group at a time per process: no oversubscription
_callbacks: OrderedDict[str, Any] = OrderedDict()  # token -> _Callbacks of recent runs here
MAX_CALLBACKS = 64  # lazy results whose progress and cancellation are kept


def is_dask(image) -> bool:
    return type(image).__module__.split(".")[0] == "dask" and hasattr(image, "dask")


@dataclass(frozen=True)
class LazySpec:
    """What every task of one lazy prediction shares (picklable; sent once per worker)."""

    ref: Any  # ModelRef
    settings: PredictSettings  # without the model
    seed: int
    plan: TilePlan
    height: int  # output plane
    width: int
    scale: int
    percentiles: tuple[float, float]
    calibration: dict | None
    planes: int
    token: str  # progress and cancellation of the calling process


class _Callbacks:
    """Progress and cancellation shared by the tasks that run in the calling process."""

    def __init__(self, progress, cancel, total: int):
        self.progress, self.cancel, self.total = progress, cancel, total
        self.done = 0
        self.lock = threading.Lock()

    def tick(self, _done=None, _total=None) -> None:
        with self.lock:
            self.done += 1
            done = self.done
        if self.progress is not None:
            self.progress(done, self.total)


# -- normalisation from block summaries ---------------------------------------------------

def _histogram_offset(dtype: np.dtype) -> int | None:
    """The offset that maps an integer type of at most 16 bits onto 0.., or None."""
    if dtype.kind == "u" and dtype.itemsize * 8 <= HISTOGRAM_BITS:
        return 0
    if dtype.kind == "i" and dtype.itemsize * 8 <= HISTOGRAM_BITS:
        return 2 ** (dtype.itemsize * 8 - 1)
    return None


def _block_summary(block: np.ndarray, own: tuple[slice, slice] | None = None,
                   origin: tuple[int, int] = (0, 0),
                   plane_shape: tuple[int, int] | None = None,
                   fill: float | None = None) -> dict[str, Any]:
    """A block's summary; ``block`` may hold a rim of its neighbours (``own``: the block
    within it), and ``fill``, the plane's edge value, adds the counts that decide whether it
    is padding (:func:`napari_cvdm.padding.block_counts`) and the histogram of the pixels
    that would be left out."""
    whole = np.asarray(block)
    block = whole if own is None else whole[own]
    offset = _histogram_offset(block.dtype)
    if block.size == 0:  # a zero-length chunk (dask allows them): neither low nor high
        hist = None if offset is None else np.zeros(2 ** (block.dtype.itemsize * 8), np.int64)
        return {"low": np.inf, "high": -np.inf, "bad": 0, "size": 0, "hist": hist,
                "padding": None, "left_out": None}
    if offset is None:
        data = block.astype(np.float64)
        finite = np.isfinite(data)
        bad = int(data.size - finite.sum())
        low, high = (float(data.min()), float(data.max())) if not bad else (0.0, 0.0)
        return {"low": low, "high": high, "bad": bad, "size": int(data.size), "hist": None,
                "padding": None, "left_out": None}
    bins = 2 ** (block.dtype.itemsize * 8)
    hist = np.bincount(block.ravel().astype(np.int64) + offset, minlength=bins)
    own = own or (slice(0, block.shape[0]), slice(0, block.shape[1]))
    counts = padding.block_counts(whole, own, origin, plane_shape or block.shape, fill)
    rim = counts.pop("rim")
    # (sparse: almost all of them hold the fill value)
    left_out = None if rim is None or not rim.any() else \
        np.unique(block[rim].astype(np.int64) + offset, return_counts=True)
    return {"low": float(block.min()), "high": float(block.max()), "bad": 0,
            "size": int(block.size), "hist": hist, "padding": counts, "left_out": left_out}


def _order_statistic(cumulative: np.ndarray, k: int, offset: int) -> float:
    """The k-th smallest value (0-based) from a histogram's cumulative counts."""
    return float(int(np.searchsorted(cumulative, k, side="right")) - offset)


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's interpolation between order statistics, to the last bit."""
    diff = np.float64(b) - np.float64(a)
    if t >= 0.5:
        return float(np.float64(b) - diff * (1 - np.float64(t)))
    return float(np.float64(a) + diff * np.float64(t))


def histogram_percentiles(hist: np.ndarray, offset: int, percentiles) -> list[float]:
    """``np.percentile(values, percentiles)`` (linear method) from a histogram of integers."""
    cumulative = np.cumsum(hist)
    n = int(cumulative[-1])
    found = []
    for q in percentiles:
        virtual = (n - 1) * (np.float64(q) / 100)
        below = int(np.floor(virtual))
        above = min(below + 1, n - 1)
        t = float(virtual - below)
        found.append(_lerp(_order_statistic(cumulative, below, offset),
                           _order_statistic(cumulative, above, offset), t))
    return found


def _plane_normalization(summaries: list[dict], whole_plane, percentiles, dtype: str,
                         index: tuple[int, ...], fill: float | None = None,
                         shape: tuple[int, int] | None = None) -> Normalization:
    """The plane's checks and normalisation, equal to ``Normalization.fit`` on the plane
    (``fill``: its edge value, padding if the blocks' counts say so)."""
    from .validation import check_plane_values

    bad = sum(s["bad"] for s in summaries)
    low = min(s["low"] for s in summaries)
    high = max(s["high"] for s in summaries)
    check_plane_values(low, high, bad, np.dtype(dtype), index)
    if whole_plane is not None:
        return Normalization.fit(np.asarray(whole_plane, dtype=np.float64), percentiles,
                                 padding=True)
    offset = _histogram_offset(np.dtype(dtype))
    hist = sum(s["hist"] for s in summaries)
    counts = [s["padding"] for s in summaries if s["padding"] is not None]
    if fill is not None and shape is not None and counts:
        total = {k: sum(c[k] for c in counts) for k in counts[0]}
        left_out = [s["left_out"] for s in summaries if s["left_out"] is not None]
        if left_out and padding.is_flat_border(
                total["at"], int(np.prod(shape)), total["centre"], padding.central_size(shape),
                total["flat"], total["inner"]):
            counted = hist.copy()
            for values, numbers in left_out:
                counted[values] -= numbers
            if counted.any():
                p_low, p_high, median = histogram_percentiles(counted, offset,
                                                              tuple(percentiles) + (50,))
                if padding.outside(fill, p_low, p_high):  # as Normalization.fit
                    return Normalization(float(p_low), float(p_high), float(fill),
                                         float(median))
    p_low, p_high = histogram_percentiles(hist, offset, percentiles)
    if not p_high > p_low:
        p_low, p_high = low, high  # as Normalization.fit: the full range for sparse structure
    return Normalization(float(p_low), float(p_high))


def _edge_value(plane):
    """A delayed :func:`napari_cvdm.padding.edge_candidate` of a dask plane (reads its
    edges only)."""
    import dask
    import dask.array as da

    if min(plane.shape) < 4:
        return None
    edges = da.concatenate(padding.edges(plane))
    return dask.delayed(padding.edge_candidate)(edges)


def _blocks_with_rim(chunks):
    """(rows, columns, the block within them, its corner) of each block of a 2D dask array
    with :data:`napari_cvdm.padding.RIM` pixels of its neighbours on each side."""
    h, w = sum(chunks[0]), sum(chunks[1])
    ys = np.cumsum((0,) + tuple(chunks[0]))
    xs = np.cumsum((0,) + tuple(chunks[1]))
    out = []
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            a, b = max(int(y0) - padding.RIM, 0), min(int(y1) + padding.RIM, h)
            c, d = max(int(x0) - padding.RIM, 0), min(int(x1) + padding.RIM, w)
            own = (slice(int(y0) - a, int(y1) - a), slice(int(x0) - c, int(x1) - c))
            out.append((slice(a, b), slice(c, d), own, (int(y0), int(x0))))
    return out


# -- tile groups and chunks ---------------------------------------------------------------

def _group_statistics(spec: LazySpec, norm: Normalization, region, origin: tuple[int, int],
                      tiles: list[Tile], plane: int, first: int):
    """Mean and variance (normalised) of one tile group, as the in-memory run computes them."""
    if norm.is_constant:
        return None
    import torch

    from .devices import release_accelerator_memory, resolve_device
    from .errors import Cancelled, OutOfMemory, cancel_requested, is_out_of_memory
    from .model_cache import load_cached
    from .planning import fewer_per_call
    from .precision import resolve_precision
    from .running_model import running_model
    from .spikes import without_spikes
    from .tile_sampling import Run, group_seed, tile_statistics

    callbacks = _callbacks.get(spec.token)
    cancel = callbacks.cancel if callbacks is not None else None
    if cancel_requested(cancel):
        raise Cancelled("prediction cancelled")
    model = load_cached(spec.ref)
    device = resolve_device(spec.settings.device)
    precision = resolve_precision(spec.settings.precision, device)
    x, excess = without_spikes(norm.apply(np.asarray(region)))  # as the in-memory run
    x = torch.from_numpy(x)
    plan = spec.plan
    while True:
        with _compute_lock, torch.inference_mode():
            run = Run(running_model(model, device), device, precision, spec.settings,
                      spec.seed, plan, spec.height, spec.width,
                      progress=callbacks.tick if callbacks is not None else None,
                      cancel=cancel)
            generator = torch.Generator(device=device)
            generator.manual_seed(group_seed(spec.seed, plane, first))
            try:
                means, variances = tile_statistics(run, x, tiles, plane, generator, origin,
                                                   excess)
                break
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
        # Outside the except clause (its traceback holds tensors). The graph's tiles are
        # fixed, so fewer tiles, then fewer samples, per network call.
        release_accelerator_memory(device)
        smaller = fewer_per_call(plan)
        if smaller is None:
            raise OutOfMemory(device, plan.tile_size, plan.batch)
        plan = smaller
    # Held until every chunk they touch is blended: float32, as the blend uses them.
    return means.astype(np.float32), variances.astype(np.float32)


def _blend_chunk(spec: LazySpec, norm: Normalization, window: Tile,
                 contributions: list[tuple[list[Tile], Any]], source=None) -> np.ndarray:
    """(mean, variance[, calibrated std]) of one output window, in input units, float32;
    ``source``: the input pixels the window covers (padding is written back there)."""
    from . import calibration
    from .tiling import StatisticsBlender

    layers = 3 if spec.calibration is not None else 2
    out = np.zeros((layers, window.height, window.width), np.float32)
    if norm.is_constant:
        out[0] = norm.low
        return out
    blender = StatisticsBlender(spec.height, spec.width, spec.plan.overlap, mean=out[0],
                                variance=out[1], window=window)
    for tiles, statistics in contributions:
        means, variances = statistics
        for i, tile in enumerate(tiles):
            blender.add(tile, means[i], variances[i])
    mean, variance = blender.result()
    if spec.calibration is not None:
        out[2] = calibration.apply(np.sqrt(variance), spec.calibration, mean) * \
            np.float32(norm.half_range)
    out[0] = norm.invert_mean(mean)
    out[1] = norm.invert_variance(variance)
    if norm.padding is not None and source is not None:
        s = spec.scale
        padding.write_back(np.asarray(source) == norm.padding, norm.padding, s,
                           (window.y - (window.y // s) * s, window.x - (window.x // s) * s),
                           list(out))
    return out


def _chunk_starts(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(chunk, size - start)) for start in range(0, size, chunk)]


def _output_chunk(image, axis: int, scale: int) -> int:
    largest = max(image.chunks[axis])
    return max(scale, min(largest * scale, MAX_CHUNK))


def _rechunk_if_needed(image, plan: TilePlan, scale: int):
    """Y/X chunks narrower than the tiles' overlap are merged (tiles would read many tiny
    blocks each); said with a warning."""
    small = [axis for axis in (-2, -1)
             if len(image.chunks[axis]) > 1 and min(image.chunks[axis][:-1]) * scale < plan.overlap]
    if not small:
        return image
    target = {image.ndim + axis: max(-(-plan.tile[axis] // scale), 1) for axis in (-2, -1)}
    warnings.warn(f"the image's chunks ({image.chunksize[-2]} x {image.chunksize[-1]} pixels "
                  f"in Y, X) are narrower than the model's tile overlap; rechunked to "
                  f"{target[image.ndim - 2]} x {target[image.ndim - 1]} for the prediction",
                  UserWarning, stacklevel=4)
    return image.rechunk(target)


def lazy_predict(image, model, run, shape: tuple[int, ...], source=None,
                 pin_device: bool = True):
    """The dask graph of a prediction of ``image`` (a dask array) with ``run``'s plan.

    ``model`` is the resolved CVDM, ``source`` what the caller named it by (a bundled name
    or a file: workers then load it from there; None: the model travels as bytes).
    ``pin_device``: the tasks run on the device and precision the plan was made for (this
    process's threads: a thread's own current GPU may be another); without (a cluster's
    workers), each resolves the run's settings where it runs.
    Returns ``(mean, variance, calibrated_std or None, spec)``, lazy.
    """
    import dask
    import dask.array as da

    from .model_cache import ModelRef, remember
    from .sampling import evaluations
    from .tile_sampling import input_region

    named = source is None or isinstance(source, str) or hasattr(source, "__fspath__")
    ref = ModelRef.of(source if named else model)
    remember(ref, model)  # this process runs with the caller's model, never a reloaded copy
    scale = model.config.scale
    s = run.settings
    if pin_device:
        s = s.replace(device=str(run.device), precision=run.precision.name)
    token = uuid.uuid4().hex
    spec = LazySpec(ref, s.replace(model=None, seed=run.seed), run.seed, run.plan, run.height,
                    run.width, scale, tuple(run.percentiles), run.calibration,
                    int(np.prod(shape[:-2], dtype=np.int64)), token)
    if _histogram_offset(np.dtype(image.dtype)) is None:
        from .validation import check_whole_plane_reading

        check_whole_plane_reading(tuple(shape), image.dtype)
    image = _rechunk_if_needed(image, run.plan, scale)
    tiles = run.plan.tiles(run.height, run.width, model.config.stride)
    groups = [(first, tiles[first:first + run.plan.group])
              for first in range(0, len(tiles), run.plan.group)]
    per_tile = -(-s.samples // run.plan.batch) * evaluations(s.steps, s.sampler,
                                                             model.config.timesteps)
    _callbacks[token] = _Callbacks(run.progress, run.cancel,
                                   spec.planes * len(tiles) * per_tile)
    while len(_callbacks) > MAX_CALLBACKS:
        _callbacks.popitem(last=False)
    spec_task = dask.delayed(spec, pure=True, traverse=False)
    cy, cx = _output_chunk(image, -2, scale), _output_chunk(image, -1, scale)
    windows = [[Tile(y, x, h, w) for x, w in _chunk_starts(run.width, cx)]
               for y, h in _chunk_starts(run.height, cy)]
    in_h, in_w = shape[-2:]
    layers = 3 if run.calibration is not None else 2
    by_plane = {}
    try:  # building the graph of a large image takes a while: a cancel stops it too
        touching = _groups_by_window(groups, windows, cy, cx)
        for p, index in enumerate(np.ndindex(*shape[:-2])):
            plane = image[index] if index else image
            whole = plane if _histogram_offset(np.dtype(image.dtype)) is None else None
            if whole is not None:
                summaries = [dask.delayed(_block_summary)(block)
                             for block in plane.to_delayed().ravel()]
                fill = None
            else:
                fill = _edge_value(plane)
                summaries = [dask.delayed(_block_summary)(plane[ys, xs], own, origin,
                                                          (in_h, in_w), fill)
                             for ys, xs, own, origin in _blocks_with_rim(plane.chunks)]
            norm = dask.delayed(_plane_normalization)(summaries, whole, tuple(run.percentiles),
                                                      np.dtype(image.dtype).str, index, fill,
                                                      (in_h, in_w))
            statistics = []
            for first, group in groups:
                run.check_cancel()
                regions = [input_region(t, scale, in_h, in_w) for t in group]
                # a rim more: the hot-pixel check judges each pixel by its neighbours, and
                # padding's rim is told by the pixels beside it
                rim = HALO + padding.RIM
                y0 = max(min(r[0] for r in regions) - rim, 0)
                x0 = max(min(r[2] for r in regions) - rim, 0)
                y1 = min(max(r[1] for r in regions) + rim, in_h)
                x1 = min(max(r[3] for r in regions) + rim, in_w)
                statistics.append(dask.delayed(_group_statistics, pure=True)(
                    spec_task, norm, plane[y0:y1, x0:x1], (y0, x0), group, p, first))
            rows = []
            for r, row in enumerate(windows):
                run.check_cancel()
                blocks = []
                for c, window in enumerate(row):
                    block = dask.delayed(_blend_chunk, pure=True)(
                        spec_task, norm, window,
                        [(groups[g][1], statistics[g]) for g in touching[r, c]],
                        plane[window.y // scale:-(-(window.y + window.height) // scale),
                              window.x // scale:-(-(window.x + window.width) // scale)])
                    blocks.append(da.from_delayed(block, (layers, window.height, window.width),
                                                  dtype=np.float32))
                rows.append(blocks)
            by_plane[index] = da.block(rows)
    except BaseException:
        forget(spec)
        raise
    stacked = _stack(by_plane, shape[:-2])
    mean, variance = stacked[0], stacked[1]
    std = stacked[2] if layers == 3 else None
    return mean, variance, std, spec


def _groups_by_window(groups, windows, cy: int, cx: int) -> dict[tuple[int, int], list[int]]:
    """{(row, column) of an output window: the indices of the tile groups with a tile that
    overlaps it, in order}; the windows are a grid of ``cy`` x ``cx`` (the last row and
    column shorter). Each tile looks up the windows it spans, not every window each tile."""
    touching = {(r, c): [] for r, row in enumerate(windows) for c in range(len(row))}
    for g, (_, group) in enumerate(groups):
        spanned = set()
        for t in group:
            spanned.update((r, c) for r in range(t.y // cy, (t.y + t.height - 1) // cy + 1)
                           for c in range(t.x // cx, (t.x + t.width - 1) // cx + 1))
        for key in spanned:  # groups in order: g grows
            touching[key].append(g)
    return touching


def _stack(by_plane: dict, lead: tuple[int, ...]):
    """(layers, *lead, H, W) from one (layers, H, W) array per leading index."""
    import dask.array as da

    def nest(prefix: tuple[int, ...]):
        if len(prefix) == len(lead):
            return by_plane[prefix]
        return da.stack([nest(prefix + (i,)) for i in range(lead[len(prefix)])], axis=1)

    return nest(())


def forget(spec: LazySpec) -> None:
    """Drop the callbacks of a finished lazy run (progress, cancel) of this process."""
    _callbacks.pop(spec.token, None)

