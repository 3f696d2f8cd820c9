"""napari layers in and out of predict(): input checks, output grids, adding or updating layers.

No Qt here: scripts call :func:`run_on_layer` (blocking); the dock widget runs
:func:`~napari_cvdm.inference.predict` in a thread and then calls :func:`show_result`
on the main thread, so both add and update the output layers the same way.

Large images: a dask-backed or multiscale layer (level 0, full resolution) is predicted
lazily and written chunk by chunk into an OME-Zarr store (a temporary folder unless
``store=`` names one); the output layers are the zarr arrays of that store, filled in as
chunks finish (:class:`LazyOutput`). Before any work the output size is checked: against
memory for NumPy layers, against the free disk space of the store for lazy ones.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .image_names import output_name
from .inference import PredictionResult, predict
from .model_files import BUNDLED, bundled_model_path, header_of, resolve_model
from .model_header import MODEL_SUFFIX
from .settings import PredictSettings, settings_from
from .validation import format_bytes

SHOW = ("std", "variance")  # the first is the default: the calibrated std, in input units
UNCERTAINTY_COLORMAP = "magma"


def unwrap(obj):
    """The napari object behind a plugin proxy (identity checks fail through the proxy)."""
    return getattr(obj, "__wrapped__", obj)




def check_layer(layer) -> None:
    """Raise ValueError, with what to do instead, unless ``layer`` is a 1-channel image."""
    from napari.layers import Image

    if layer is None:
        raise ValueError("no image layer selected: open an image (File > Open, or "
                         "File > Open Sample > napari-cvdm) and select it")
    if not isinstance(layer, Image):
        raise ValueError(f"layer {layer.name!r} is a {type(layer).__name__} layer; CVDM needs "
                         "an Image layer")
    if layer.rgb:
        raise ValueError(f"layer {layer.name!r} is RGB; CVDM reconstructs one channel at a "
                         "time. Right-click the layer > Split RGB, then run on one channel")


def named_layer(viewer, layer):
    """The layer called ``layer`` where it is a name (else ``layer``, unwrapped); ValueError
    where there is none."""
    if not isinstance(layer, str):
        return unwrap(layer)
    if viewer is None or layer not in viewer.layers:
        raise ValueError(f"there is no layer called {layer!r}")
    return unwrap(viewer.layers[layer])


Crop = tuple[tuple[int, int], tuple[int, int]]  # ((y0, y1), (x0, x1)) in input pixels


def region_crop(layer, region) -> Crop | None:
    """The input pixels (Y, X bounds) under the first rectangle of the shapes layer
    ``region``; None for the whole image (``region`` None).

    The rectangle is mapped from the shapes layer's data coordinates through world
    coordinates to the image's; every pixel it touches is included (a rotated rectangle:
    its bounding box in the image's pixels), at least 2 along Y and X.
    """
    if region is None:
        return None
    from napari.layers import Shapes

    region = unwrap(region)
    if not isinstance(region, Shapes):
        raise ValueError(f"region must be a Shapes layer, not {type(region).__name__}")
    rectangles = [d for d, kind in zip(region.data, region.shape_type) if kind == "rectangle"]
    if not rectangles:
        raise ValueError(f"the shapes layer {region.name!r} has no rectangle: draw one "
                         "around the region to reconstruct")
    vertices = np.asarray(rectangles[0], dtype=float)
    world = [np.asarray(region.data_to_world(v), dtype=float) for v in vertices]
    # pad or trim the shapes layer's world coordinates to the image's dimensions
    points = np.array([np.asarray(layer.world_to_data(
        np.concatenate([np.zeros(max(layer.ndim - len(w), 0)), w])[-layer.ndim:]))[-2:]
        for w in world])
    if not np.isfinite(points).all():
        raise ValueError(f"the rectangle of {region.name!r} has corners that are not finite "
                         "numbers; draw it again")
    shape = layer_image(layer).shape[-2:]
    bounds = []
    for axis in range(2):
        low = max(0, int(np.floor(points[:, axis].min() + 0.5)))
        high = min(int(shape[axis]), int(np.ceil(points[:, axis].max() - 0.5)) + 1)
        if high <= low:
            raise ValueError(f"the rectangle of {region.name!r} does not cover any pixel of "
                             f"{layer.name!r}")
        if high - low < 2:
            raise ValueError(f"the rectangle of {region.name!r} covers only one pixel along "
                             f"{'YX'[axis]} of {layer.name!r}; draw it larger, in the Y-X "
                             "plane of the image")
        bounds.append((low, high))
    return tuple(bounds)


def layer_image(layer, crop: Crop | None = None):
    """The image CVDM runs on: level 0 (full resolution) of a multiscale layer, else data;
    only the ``crop`` (Y, X bounds) of it when given."""
    data = unwrap(layer.data)
    data = data[0] if layer.multiscale else data
    if crop is not None:
        (y0, y1), (x0, x1) = crop
        data = data[..., y0:y1, x0:x1]
    return data


def is_lazy(layer) -> bool:
    """Whether ``layer`` is predicted lazily into a zarr store (dask, zarr or multiscale)."""
    data = layer_image(layer)
    return bool(layer.multiscale) or not isinstance(data, np.ndarray)


def _as_dask(data):
    from .lazy_prediction import is_dask

    if is_dask(data):
        return data
    import dask.array as da

    chunks = getattr(data, "chunks", None)
    return da.from_array(data, chunks=chunks if chunks is not None else "auto")


def output_shape(layer, scale: int, crop: Crop | None = None) -> tuple[int, ...]:
    shape = tuple(int(n) for n in layer_image(layer, crop).shape)
    return shape[:-2] + (shape[-2] * int(scale), shape[-1] * int(scale))


def output_bytes(layer, scale: int, crop: Crop | None = None) -> int:
    """Bytes of the two float32 outputs (mean and std) of ``layer`` at ``scale``."""
    from .validation import output_bytes as bytes_of

    return bytes_of(tuple(layer_image(layer, crop).shape), scale)


def output_summary(layer, scale: int, store=None, crop: Crop | None = None) -> str:
    """One line: the output's shape and size, and where it goes (memory or a store)."""
    shape = output_shape(layer, scale, crop)
    where = ("a zarr store in " + str(store if store is not None else tempfile.gettempdir())
             if is_lazy(layer) else "memory")
    size = format_bytes(output_bytes(layer, scale, crop))
    return f"output: 2 x {' x '.join(map(str, shape))}, {size} " \
           f"to {where}"


def check_output_room(layer, scale: int, store=None, crop: Crop | None = None) -> int:
    """Bytes of the outputs; ValueError when they do not fit where they would go.

    NumPy layers: in memory (``validation.check_output_size``), with a hint at the lazy
    path. Lazy layers: on the disk of ``store`` (default the temporary folder), which
    :func:`check_store` allows.
    """
    from . import validation
    from .zarr_files import with_levels

    needed = output_bytes(layer, scale, crop)
    if not is_lazy(layer):
        try:
            validation.check_output_size(tuple(layer_image(layer, crop).shape), scale)
        except ValueError as exc:
            raise ValueError(f"layer {layer.name!r}: {exc}. Or open it lazily so the result "
                             "is written to disk chunk by chunk: as a dask array "
                             "(viewer.add_image(dask.array.from_array(data))) or an OME-Zarr "
                             "file") from None
        return needed
    if store is not None:
        check_store(layer, store)
    # a kept store gets coarser levels; a temporary one (no store given) does not
    on_disk = with_levels(needed) if store is not None else needed
    short = validation.disk_shortfall(Path(store).expanduser() if store is not None
                                      else Path(tempfile.gettempdir()), on_disk)
    if short is not None:
        folder, free = short
        levels = ", with coarser levels" if store is not None else ""
        raise ValueError(f"layer {layer.name!r}: the outputs (mean and std, "
                         f"{' x '.join(map(str, output_shape(layer, scale, crop)))} float32"
                         f"{levels}) need {format_bytes(on_disk)} but {folder} has only "
                         f"{format_bytes(free)} free; choose a store on a larger disk "
                         "(store=...), or a region or fewer planes")
    return needed


def output_transform(layer, scale_factor: int, offset=(0, 0)) -> dict[str, Any]:
    """Layer keyword arguments that overlay ``scale_factor`` times finer Y, X on ``layer``.

    Output pixel ``j`` covers input pixel coordinate ``(j + 0.5) / s - 0.5`` (pixel
    centres, SPEC section 4): the Y, X scale is divided by ``s`` and the translate moves
    by the layer's own data-to-physical map of ``(1/s - 1) / 2`` pixels, so rotation and
    shear are honoured. Leading axes, rotate, shear, affine, axis labels and units are
    carried over. ``offset``: the input pixel (Y, X) where the output's crop starts.
    """
    from napari.utils.transforms import Affine

    s = float(scale_factor)
    ndim = layer.ndim
    shift = np.zeros(ndim)
    shift[-2:] = (1.0 / s - 1.0) / 2.0 + np.asarray(offset, dtype=float)
    linear = Affine(scale=layer.scale, rotate=layer.rotate, shear=layer.shear,
                    ndim=ndim).linear_matrix
    scale = np.array(layer.scale, dtype=float)
    scale[-2:] /= s
    return {
        "scale": scale,
        "translate": np.asarray(layer.translate, dtype=float) + linear @ shift,
        "rotate": np.array(layer.rotate),
        "shear": np.array(layer.shear),
        "affine": np.array(layer.affine.affine_matrix),
        "axis_labels": tuple(layer.axis_labels),
        "units": tuple(layer.units),
    }


def _store_grid(layer, scale_factor: int, crop: Crop | None):
    """Where a result store sits in an OME-Zarr viewer: its layers' scale and translate
    (NGFF has no rotation or shear: None, placed in input pixels, for a layer with them)."""
    offset = (0, 0) if crop is None else (crop[0][0], crop[1][0])
    placed = output_transform(layer, scale_factor, offset)
    identity = np.allclose(placed["rotate"], np.eye(len(placed["rotate"]))) and \
        np.allclose(placed["shear"], 0) and \
        np.allclose(placed["affine"], np.eye(len(placed["affine"])))
    if not identity:
        return None
    return [float(v) for v in placed["scale"]], [float(v) for v in placed["translate"]]


def output_names(layer, show: str = SHOW[0], crop: Crop | None = None) -> tuple[str, str]:
    """The output layers' names; a region's (``crop``, the input's Y and X bounds) are its
    own, so that a quick look at a detail never replaces the whole image's result (or, for
    a large image, removes its temporary store)."""
    region = "" if crop is None else \
        f" (region {crop[0][0]}:{crop[0][1]}, {crop[1][0]}:{crop[1][1]})"
    return f"{layer.name} CVDM mean{region}", f"{layer.name} CVDM {show}{region}"


def _robust_limits(data: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Contrast limits at the ``low`` and ``high`` percentiles of a strided sample of
    ``data`` (:func:`_sample`): a whole 40 x 2048 x 2048 result took seconds on the main
    thread."""
    data = _sample(data)
    lo, hi = (float(v) for v in np.percentile(data, [low, high]))
    if not hi > lo:
        lo, hi = float(np.min(data)), float(np.max(data))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _source_file(layer) -> dict[str, str]:
    """The file (or store) the input layer was opened from, by name, where napari knows it:
    saved results say which file they came from, as the command line's do."""
    path = getattr(getattr(layer, "source", None), "path", None)
    return {"source_file": Path(str(path)).name} if path else {}


def result_layer_data(layer, result: PredictionResult, show: str = SHOW[0],
                      provenance: dict[str, Any] | None = None,
                      data: tuple[Any, Any] | None = None,
                      extra: dict[str, Any] | None = None,
                      crop: Crop | None = None) -> list[tuple]:
    """The two output layers as napari layer data tuples ``(data, kwargs, "image")``.

    The mean has the input's colormap and contrast limits (same units, so toggling the two
    compares like with like); the uncertainty gets its own colormap and limits. ``data``:
    the (mean, uncertainty) arrays to show instead of the result's (zarr arrays being
    written: their contrast limits are provisional, never computed from the data);
    ``extra``: more metadata; ``crop``: the input region (Y, X bounds) the result covers.
    """
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}, not {show!r}")
    offset = (0, 0) if crop is None else (crop[0][0], crop[1][0])
    transform = output_transform(layer, result.scale, offset)
    if crop is not None:
        extra = {**(extra or {}), "region": [list(crop[0]), list(crop[1])]}
    info = {"source": layer.name, "samples": result.samples, "steps": result.steps,
            "eta": result.eta, "sampler": result.sampler, "seed": result.seed,
            "device": result.device, "precision": result.info.get("precision"),
            "psf_sigma": result.info.get("psf_sigma"),
            "psf_sigma_from": result.info.get("psf_sigma_from"),
            "augment": result.info.get("augment"),
            "seconds": round(result.seconds, 3),
            "tile_size": result.tile_size, "scale": result.scale,
            **_source_file(layer),
            "napari_cvdm": __version__, **(provenance or {}), **(extra or {})}
    mean_name, spread_name = output_names(layer, show, crop)
    if data is None:
        mean, spread = result.mean, result.variance if show == "variance" else result.std
    else:
        mean, spread = data
    mean_limits = tuple(float(v) for v in layer.contrast_limits)
    if data is None:
        if not mean_limits[1] > mean_limits[0]:
            mean_limits = _robust_limits(mean, 0.1, 99.9)
        spread_limits = (0.0, _robust_limits(spread, 0.0, 99.8)[1])
    else:
        if not mean_limits[1] > mean_limits[0]:
            mean_limits = (mean_limits[0], mean_limits[0] + 1.0)
        spread_limits = (0.0, max((mean_limits[1] - mean_limits[0]) * 0.1, 1e-6))
    # The mean looks like its input (a channel of an additive composite stays one). The
    # uncertainty lies below it: where the mean would not cover it (additive or translucent)
    # it starts hidden, or its magma would read as signal, or hide the channels below.
    blending, opacity = layer.blending, float(layer.opacity)
    covered = blending != "additive" and opacity >= 1
    mean_kwargs = {"name": mean_name, "colormap": layer.colormap,
                   "contrast_limits": mean_limits, "gamma": layer.gamma,
                   "blending": blending, "opacity": opacity,
                   "metadata": {"cvdm": {**info, "output": "mean"}}, **transform}
    spread_kwargs = {"name": spread_name, "colormap": UNCERTAINTY_COLORMAP,
                     "contrast_limits": spread_limits, "visible": covered,
                     "metadata": {"cvdm": {**info, "output": show}}, **transform}
    return [(mean, mean_kwargs, "image"), (spread, spread_kwargs, "image")]


def own_layer(viewer, name: str, ndim: int):
    """The image layer ``name`` (or ``name [N]``, napari's name for it when a user's layer
    had the name) if napari-cvdm made it (``metadata["cvdm"]``) and it can take ``ndim``-D
    data in place; None else: a user's layer of that name is never touched, the new layer
    gets napari's next free name."""
    import re

    from napari.layers import Image

    renamed = re.compile(re.escape(name) + r" \[\d+\]")  # napari's "name [1]" of a clash
    for layer in viewer.layers:
        if (layer.name == name or renamed.fullmatch(layer.name)) and \
                isinstance(layer, Image) and "cvdm" in layer.metadata and \
                layer.ndim == ndim and not layer.rgb and not layer.multiscale:
            return layer
    return None


_PLACEMENT = ("affine", "rotate", "shear", "scale", "translate", "axis_labels", "units",
              "colormap", "gamma", "blending", "opacity")


class _Shown:
    """What an output layer showed before a lazy run replaced it in place, to put back
    when that run fails or is cancelled (the earlier result is not lost)."""

    def __init__(self, layer):
        self.layer, self.data = layer, layer.data
        self.placement = {key: getattr(layer, key) for key in _PLACEMENT
                          if hasattr(layer, key)}
        self.limits_range, self.limits = layer.contrast_limits_range, layer.contrast_limits
        self.metadata = dict(layer.metadata)

    def store(self) -> tuple[str | None, bool]:
        """The zarr store the earlier result is in, and whether it is a temporary one."""
        return _store_info(self.metadata)

    def restore(self) -> None:
        layer = self.layer
        layer.data = self.data
        for key, value in self.placement.items():
            setattr(layer, key, value)
        layer.contrast_limits_range = self.limits_range
        layer.contrast_limits = self.limits
        layer.metadata = self.metadata


def _store_info(metadata) -> tuple[str | None, bool]:
    """A result layer's zarr store (from its metadata) and whether it is a temporary one."""
    info = (metadata or {}).get("cvdm") or {}
    return info.get("store"), bool(info.get("temporary_store"))


def _drop_unshown_stores(viewer, stores) -> None:
    """Remove earlier results' temporary stores (``(store, temporary)`` pairs) that no layer
    shows any more and no run still writes (a run whose layers another took over)."""
    for where, temporary in stores:
        if temporary and where and not _being_written(Path(where).parent) \
                and not _read_by_a_layer(viewer, Path(where).parent):
            shutil.rmtree(Path(where).parent, ignore_errors=True)


def _add_or_update(viewer, data: np.ndarray, kwargs: dict[str, Any]):
    """Update the output layer called ``kwargs["name"]`` in place, or add a new one."""
    existing = own_layer(viewer, kwargs["name"], data.ndim)
    lo, hi = kwargs["contrast_limits"]
    if existing is None:
        added = viewer.add_image(data, **kwargs)
        if isinstance(data, np.ndarray):  # napari makes the slider's range the limits given:
            sample = _sample(data)        # widen it to the data, as an update does
            added.contrast_limits_range = (min(lo, float(sample.min())),
                                           max(hi, float(sample.max())))
            added.contrast_limits = (lo, hi)
        return added
    existing.data = data
    for key in _PLACEMENT:
        if key in kwargs:
            setattr(existing, key, kwargs[key])
    # Setting data keeps the old contrast range; widen it so the new limits are reachable.
    old_lo, old_hi = existing.contrast_limits_range
    if isinstance(data, np.ndarray):
        sample = _sample(data)  # the slider's range, not the limits: a sample will do
        lo_data, hi_data = float(sample.min()), float(sample.max())
    else:  # a zarr array being written: never read it whole
        lo_data, hi_data = lo, hi
    existing.contrast_limits_range = (min(old_lo, lo, lo_data), max(old_hi, hi, hi_data))
    existing.contrast_limits = (lo, hi)
    existing.metadata = dict(kwargs["metadata"])
    return existing


def show_result(viewer, layer, result: PredictionResult, show: str = SHOW[0],
                provenance: dict[str, Any] | None = None, crop: Crop | None = None):
    """Add the mean and uncertainty layers above ``layer``, or update them; return both.

    The uncertainty is added first, so the finished run shows the reconstruction on top.
    """
    (mean, mean_kwargs, _), (spread, spread_kwargs, _) = result_layer_data(
        layer, result, show, provenance, crop=crop)
    # an earlier lazy result these layers showed: its temporary store, once shown nowhere
    earlier = [_store_info(out.metadata) for out in
               (own_layer(viewer, kwargs["name"], data.ndim)
                for data, kwargs in ((spread, spread_kwargs), (mean, mean_kwargs)))
               if out is not None]
    spread_layer = _add_or_update(viewer, spread, spread_kwargs)
    mean_layer = _add_or_update(viewer, mean, mean_kwargs)
    _put_below(viewer, spread_layer, mean_layer)
    _drop_unshown_stores(viewer, earlier)
    return mean_layer, spread_layer


def _put_below(viewer, spread_layer, mean_layer) -> None:
    """The uncertainty directly below its mean, so the reconstruction is what shows; an
    uncertainty added to an earlier mean (another kind shown, or one the user deleted)
    went on top of it, and a mean added again went on top, apart from its uncertainty."""
    layers = viewer.layers
    if spread_layer not in layers or mean_layer not in layers:
        return
    spread_at, mean_at = layers.index(spread_layer), layers.index(mean_layer)
    if spread_at != mean_at - 1:
        layers.move(spread_at, mean_at)  # to just before (below) the mean, from either side
        layers.selection.active = mean_layer


def input_warnings(layer, model, psf_sigma: float | None = None,
                   crop: Crop | None = None, samples: int | None = None) -> list[str]:
    """Why a result on this layer (its ``crop`` where given: the pixels reconstructed) may
    not be trustworthy (``domain.input_warnings``)."""
    from .domain import input_warnings as warnings_for

    image, sizes, units = input_of(layer, crop)
    return warnings_for(image, model, sizes, units, psf_sigma, samples)


def keep_warnings(shown, messages) -> None:
    """Record why a result may not be trustworthy in its layers' provenance (``metadata
    ["cvdm"]``, saved with them by the OME-TIFF writer): a notification goes away."""
    from .domain import as_provenance

    for out in shown if messages else ():
        out.metadata.setdefault("cvdm", {})["input_warnings"] = as_provenance(messages)


def input_of(layer, crop: Crop | None = None) -> tuple[Any, tuple, list | None]:
    """(image, pixel sizes, units) of a layer (its ``crop``), as the input checks take
    them; read on the main thread, so that the checks may run in another."""
    units = [str(u) for u in getattr(layer, "units", ())][-2:] or None
    return layer_image(layer, crop), tuple(float(s) for s in layer.scale[-2:]), units


def _model_path(source: str | os.PathLike) -> Path:
    if isinstance(source, str) and source in BUNDLED:
        path = bundled_model_path(source)
        if not path.is_file():
            raise ValueError(f"the bundled {source!r} model is not installed here; "
                             "choose a model file (.cvdm.safetensors) instead")
        return path
    return Path(source).expanduser()


def model_scale(source: str | os.PathLike) -> int:
    """The super-resolution factor of a bundled model or model file (header only)."""
    return int(header_of(_model_path(source))["config"].get("scale") or 1)


def model_summary(source: str | os.PathLike) -> str:
    """One line about a bundled model or model file, from its header (weights not loaded)."""
    from .model_card import summary_line

    path = _model_path(source)
    header = header_of(path)
    metadata = header.get("metadata") or {}
    name = metadata.get("name") or path.name.removesuffix(MODEL_SUFFIX)
    return summary_line(name, header["config"], metadata)


def _sample(array, pixels: int = 1 << 20) -> np.ndarray:
    """A strided sample of about ``pixels`` values of a (zarr) array, never all of it."""
    shape = array.shape
    lead = tuple(slice(None, None, max(1, n // 4)) for n in shape[:-2])
    step = max(1, int(np.sqrt(shape[-2] * shape[-1] / pixels)))
    return np.asarray(array[lead + (slice(None, None, step), slice(None, None, step))])


def _store_of(layer) -> str | None:
    return (layer.metadata.get("cvdm") or {}).get("store")


def _same_path(a, b) -> bool:
    if not a or not b:
        return False
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _overlap(a: Path, b: Path) -> bool:
    """Whether the resolved paths ``a`` and ``b`` are one folder, or one holds the other."""
    return a == b or a in b.parents or b in a.parents


def _check_not_shown_elsewhere(viewer, path: Path, updated) -> None:
    """ValueError where the store ``path`` is read by a layer this run does not update
    (another region's or the whole image's result): replacing it would pull that layer's
    data from under it."""
    from napari.layers import Image

    folder = path.expanduser().resolve()
    for layer in viewer.layers:
        if not isinstance(layer, Image) or any(layer is u for u in updated):
            continue
        sources, _ = _input_stores(layer)
        if any(_overlap(folder, source) for source in sources):
            raise ValueError(f"the store {path} holds what the layer {layer.name!r} shows; "
                             "choose another folder (or remove that layer)")


def _read_by_a_layer(viewer, folder: Path) -> bool:
    """Whether a layer of ``viewer`` may read from ``folder``: a result, a duplicate of one,
    a layer whose data come from there, or a layer whose sources cannot all be told."""
    from napari.layers import Image, Labels

    folder = folder.expanduser().resolve()
    for layer in viewer.layers:
        if not isinstance(layer, (Image, Labels)):
            continue  # points, shapes, ...: their data are not read from a store
        sources, complete = _input_stores(layer)
        if not complete or any(_overlap(folder, source) for source in sources):
            return True
    return False


_WRITING: set[Path] = set()  # stores of lazy runs not yet finished (resolved paths)
_WRITING_LOCK = threading.Lock()


def _writing(path: Path, now: bool) -> None:
    """Record that a lazy run writes the store ``path`` (``now``), or has finished or been
    undone: from its start until the main thread shows (or removes) its result, so that
    another run that takes over its layers meanwhile does not remove its store."""
    with _WRITING_LOCK:
        (_WRITING.add if now else _WRITING.discard)(Path(path).expanduser().resolve())


def _being_written(folder: Path) -> bool:
    """Whether an unfinished lazy run writes a store in (or at) ``folder``."""
    folder = Path(folder).expanduser().resolve()
    with _WRITING_LOCK:
        return any(_overlap(folder, store) for store in _WRITING)


class LazyOutput:
    """The output layers of a lazy prediction, written chunk by chunk into a zarr store.

    :func:`start_lazy_output` (main thread) creates the store and adds the layers, backed
    by its zarr arrays; :meth:`compute` (any thread) computes the result into it;
    :meth:`refresh` (main thread) redraws the layers, at most every ``interval`` seconds;
    :meth:`finish` (main thread) sets contrast limits from a sample; :meth:`abort` removes
    the layers and the store after a failure or cancellation.
    """

    def __init__(self, viewer, layer, result, show, writer, layers, path: Path,
                 temporary: bool, interval: float = 1.0, replaced: tuple[_Shown, ...] = ()):
        self.viewer, self.layer, self.result, self.show = viewer, layer, result, show
        self.writer, self.layers, self.path = writer, layers, path
        self.temporary, self.interval = temporary, interval
        self.replaced = replaced  # the earlier results these layers showed
        self.superseded = False  # finished after another run took its layers over
        self.removed = False     # ... because they were deleted
        self.discarded = False   # ... and its temporary store was removed then
        self._refreshed = self._started = time.monotonic()
        # the run's time: the graph's set-up (the result's own time) and, once computed,
        # the compute into the store
        self.seconds = result.seconds

    def compute(self, callbacks=()) -> None:
        spread = self.result.variance if self.show == "variance" else self.result.std
        try:
            self.writer.store(self.result.mean, spread, callbacks)
        except BaseException as exc:
            self.writer.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.writer.__exit__(None, None, None)
        self.seconds = self.result.seconds + time.monotonic() - self._started

    def refresh(self, *_args, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._refreshed < self.interval:
            return
        self._refreshed = now
        for out in self.layers:
            if out in self.viewer.layers:
                out.refresh()

    def _shows_this_run(self, out) -> bool:
        """Whether the output layer ``out`` still shows this run's store (another run may
        have taken it over since, a scripted one while the widget's ran)."""
        return out in self.viewer.layers and _same_path(_store_of(out), self.path)

    def finish(self) -> tuple[Any, Any]:
        _writing(self.path, False)  # written; until now another run must not remove it
        mean_layer, spread_layer = self.layers
        mean_sample, spread_sample = (_sample(a) for a in self.writer.arrays)
        limits = tuple(float(v) for v in self.layer.contrast_limits)
        if not limits[1] > limits[0]:
            limits = _robust_limits(mean_sample, 0.1, 99.9)
        spread_hi = _robust_limits(spread_sample, 0.0, 99.8)[1]
        for out, (lo, hi), sample in ((mean_layer, limits, mean_sample),
                                      (spread_layer, (0.0, spread_hi), spread_sample)):
            if not self._shows_this_run(out):
                continue
            out.contrast_limits_range = (min(lo, float(sample.min())),
                                         max(hi, float(sample.max())))
            out.contrast_limits = (lo, hi)
            out.metadata["cvdm"]["seconds"] = round(self.seconds, 3)
        if all(self._shows_this_run(out) for out in self.layers):
            _put_below(self.viewer, spread_layer, mean_layer)  # moved by the user meanwhile
        self.refresh(force=True)
        # taken over by another run before it finished (a script's, while the widget's
        # ran), or its layers deleted by the user
        self.superseded = not any(self._shows_this_run(out) for out in self.layers)
        self.removed = not any(out in self.viewer.layers for out in self.layers)
        if self.superseded and self.temporary and \
                not _read_by_a_layer(self.viewer, self.path.parent):
            self.discard_store()  # shown nowhere, kept nowhere
            self.discarded = True
        _drop_unshown_stores(self.viewer, [earlier.store() for earlier in self.replaced])
        return self.layers

    def abort(self) -> None:
        """Undo a failed or cancelled run: layers that showed an earlier result show it
        again (unless this run wrote over that result's store, or another run has since
        taken the layer), new layers are removed, and this run's store is removed."""
        for out in self.layers:
            if out not in self.viewer.layers or not _same_path(_store_of(out), self.path):
                continue  # gone, or showing another run's result now
            earlier = next((e for e in self.replaced if e.layer is out), None)
            if earlier is not None and not _same_path(earlier.store()[0], self.path):
                earlier.restore()
            else:
                self.viewer.layers.remove(out)
        self.discard_store()

    def discard_store(self) -> None:
        """Remove the store (and its temporary folder) only: the viewer may be gone."""
        _writing(self.path, False)
        shutil.rmtree(self.path, ignore_errors=True)
        if self.temporary:
            shutil.rmtree(self.path.parent, ignore_errors=True)


KNOWN_MODULES = {"dask", "numpy", "operator", "_operator", "builtins", "toolz", "tlz",
                 "cytoolz", "functools", "math", "zarr"}


def _known_function(func) -> bool:
    """Whether a dask task's function is the libraries' own (getters, arithmetic, array
    creation), which read nothing but their arguments."""
    module = getattr(func, "__module__", None) or getattr(type(func), "__module__", "")
    return str(module).split(".")[0] in KNOWN_MODULES


def _data_sources(level, zarr) -> tuple[list[Any], bool]:
    """The zarr arrays a layer level reads, and whether that is all it reads: a NumPy or
    zarr array, or a dask graph of the libraries' own functions whose every loader
    (inlined ones too) is one of those. ``False``: it reads something not seen here (a
    delayed function or a ``map_blocks`` of a user's function, say)."""
    if isinstance(level, np.ndarray):
        return [], True
    if zarr is not None and isinstance(level, zarr.Array):
        return [level], True
    if not hasattr(level, "__dask_graph__"):
        return [], False
    found, data, stack = [], False, list(level.__dask_graph__().values())
    seen = 0
    while stack and seen < 1_000_000:
        item = stack.pop()
        seen += 1
        item = getattr(item, "zarr_array", item)  # read_ome_zarr's wrapper of its array
        if zarr is not None and isinstance(item, zarr.Array):
            found.append(item)
        elif isinstance(item, np.ndarray):
            data = True
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        else:  # dask's Task / DataNode objects hold their function, arguments and values
            func = getattr(item, "func", None)
            while isinstance(func, functools.partial):
                func = func.func
            if func is not None and not _known_function(func):
                return found, False  # it may read anything (a delayed loader, say)
            for name in ("args", "kwargs", "value"):
                inner = getattr(item, name, None)
                if isinstance(inner, (tuple, list, dict)) or inner is not None and (
                        hasattr(inner, "__array__") or hasattr(inner, "zarr_array")):
                    stack.append(inner)
    return found, bool(found or data) and not stack


def _input_stores(layer) -> tuple[list[Path], bool]:
    """The folders the layer's pixels come from (the file it was opened from, the store of
    an earlier result, the zarr arrays under its data), and whether those are all of them."""
    try:
        import zarr
    except ImportError:
        zarr = None
    paths = [getattr(getattr(layer, "source", None), "path", None),
             (layer.metadata.get("cvdm") or {}).get("store")]
    complete = True
    for level in layer.data if layer.multiscale else [layer.data]:
        arrays, known = _data_sources(level, zarr)
        complete = complete and known
        paths += [getattr(a.store, "root", None) or getattr(a.store, "path", None)
                  for a in arrays]
    return [Path(p).resolve() for p in paths if p], complete


def check_store(layer, store) -> None:
    """ValueError unless a result of ``layer`` may be written to the OME-Zarr folder
    ``store``: not the layer's own store, inside it or around it, and not an existing folder
    unless it holds an earlier napari-cvdm result, which is replaced only where all the
    layer's sources are known (else it might be one: it would be deleted while read)."""
    from .zarr_files import check_replaceable

    path = Path(store).expanduser().resolve()
    sources, complete = _input_stores(layer)
    for source in sources:
        if _overlap(path, source):
            raise ValueError(f"the store {store} is, holds or lies inside the input "
                             f"{source}, which is never modified; choose another folder")
    check_replaceable(Path(store).expanduser())
    if path.exists() and not complete:
        raise ValueError(f"{store} exists, and where the layer's data come from cannot be "
                         "told (it might be read from there while being replaced); choose a "
                         "new folder name")


def _store_path(layer, store) -> tuple[Path, bool]:
    if store is not None:
        check_store(layer, store)
        return Path(store).expanduser(), False
    folder = Path(tempfile.mkdtemp(prefix="napari-cvdm-"))
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer.name)[:100]
    return folder / output_name(name or "image"), True


def start_lazy_output(viewer, layer, result: PredictionResult, show: str = SHOW[0],
                      provenance: dict[str, Any] | None = None, store=None,
                      overwrite: bool = False, crop: Crop | None = None) -> LazyOutput:
    """Create the zarr store of a lazy ``result`` and add (or update) its two layers.

    ``store``: the OME-Zarr folder to write (default: ``<name>_cvdm.ome.zarr`` in a new
    temporary folder); its path is in the layers' ``metadata["cvdm"]["store"]``.
    """
    from .zarr_files import ZarrResultWriter

    path, temporary = _store_path(layer, store)
    if not temporary:  # before the writer empties it
        ndim = len(result.mean.shape)
        _check_not_shown_elsewhere(viewer, path, [
            shown for name in output_names(layer, show, crop)
            if (shown := own_layer(viewer, name, ndim)) is not None])
    image_names = ("mean", "variance" if show == "variance" else "std")
    writer = ZarrResultWriter(path, tuple(result.mean.shape), scale=result.scale,
                              provenance={"source": layer.name, **(provenance or {})},
                              overwrite=overwrite, in_place=True, images=image_names,
                              grid=_store_grid(layer, result.scale, crop),
                              levels=not temporary)  # a kept store gets coarser levels
    writer.__enter__()
    _writing(path, True)
    replaced: tuple[_Shown, ...] = ()
    try:
        extra = {"store": str(path), "temporary_store": temporary, "lazy": True}
        (mean, mean_kwargs, _), (spread, spread_kwargs, _) = result_layer_data(
            layer, result, show, provenance, data=writer.arrays, extra=extra, crop=crop)
        replaced = tuple(_Shown(existing) for data, kwargs in ((mean, mean_kwargs),
                                                               (spread, spread_kwargs))
                         if (existing := own_layer(viewer, kwargs["name"], data.ndim)))
        spread_layer = _add_or_update(viewer, spread, spread_kwargs)
        mean_layer = _add_or_update(viewer, mean, mean_kwargs)
        _put_below(viewer, spread_layer, mean_layer)
    except BaseException as exc:
        for earlier in replaced:  # a layer already updated shows its earlier result again
            if earlier.layer in viewer.layers:
                earlier.restore()
        writer.__exit__(type(exc), exc, exc.__traceback__)
        _writing(path, False)
        if temporary:
            shutil.rmtree(path.parent, ignore_errors=True)
        raise
    return LazyOutput(viewer, layer, result, show, writer, (mean_layer, spread_layer), path,
                      temporary, replaced=replaced)


def predict_layer(layer, net, settings: PredictSettings, progress=None, cancel=None,
                  crop: Crop | None = None):
    """predict() on the layer's image (or its crop): lazily (a dask array) for dask, zarr
    or multiscale layers."""
    image = layer_image(layer, crop)
    if is_lazy(layer):
        image = _as_dask(image)
    return predict(image, net, settings=settings, progress=progress, cancel=cancel,
                   check_input=False)  # the layer's checks say it, with its pixel size


def run_on_layer(viewer, layer, model=None, *, settings: PredictSettings | None = None,
                 show: str = SHOW[0], progress=None, cancel=None, store=None,
                 overwrite: bool = False, region=None, **options):
    """Run CVDM on an image layer, blocking; add or update the two output layers.

    ``model``, ``settings`` and the keyword options are those of
    :func:`~napari_cvdm.inference.predict` (same defaults: :class:`PredictSettings`).
    Outputs are named ``"<layer> CVDM mean"`` and ``"<layer> CVDM std"`` (the calibrated
    standard deviation; or ``"... CVDM variance"``, the raw sample variance, with
    ``show="variance"``), in the input's intensity units (the variance in units squared),
    below the mean layer, on a grid ``model.config.scale`` times finer that overlays the input.
    A ``region``'s outputs are named after it (``"<layer> CVDM mean (region y0:y1, x0:x1)"``,
    the input's bounds). Running again on the same layer (and region) updates them. The
    input layer is never modified.
    Returns ``(mean_layer, uncertainty_layer)``. Call it on napari's main thread (it adds
    layers); it may run while the widget runs, even with the same model object.

    Dask-backed, zarr-backed and multiscale layers (level 0) are predicted lazily: the
    outputs are written chunk by chunk into the OME-Zarr folder ``store`` (default: a new
    temporary folder, named in ``metadata["cvdm"]["store"]``; ``overwrite`` replaces an
    earlier napari-cvdm result there, and any other existing folder or the input's own
    store is refused) and the layers show its zarr arrays, refreshed as chunks finish. The
    output size is checked first: ValueError when a NumPy layer's outputs would not fit in
    memory, or a lazy layer's on the store's disk.

    ``region``: a Shapes layer; only the input pixels under its first rectangle are
    reconstructed, and the outputs are placed exactly over that region of the input.
    ``layer`` and ``region`` may be given by name, as for ``train_on_layers``.
    """
    layer, region = (named_layer(viewer, v) for v in (layer, region))
    check_layer(layer)
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}, not {show!r}")
    s = settings_from(settings, options if model is None else {**options, "model": model})
    net, provenance = resolve_model(s.model)
    crop = region_crop(layer, region)
    check_output_room(layer, net.config.scale, store, crop)
    if not is_lazy(layer):
        image = layer.data if crop is None else layer_image(layer, crop)
        result = predict(image, net, settings=s, progress=progress, cancel=cancel,
                         check_input=False)  # _warn_about_input says it
        shown = show_result(viewer, layer, result, show, provenance, crop)
        keep_warnings(shown, _warn_about_input(layer, net, s, crop))
        return shown
    result = predict_layer(layer, net, s, progress=progress, cancel=cancel, crop=crop)
    out = start_lazy_output(viewer, layer, result, show, provenance, store, overwrite, crop)
    try:
        # dask calls posttask callbacks in this (the main) thread: safe to redraw there
        out.compute(callbacks=[out.refresh])
    except BaseException:
        out.abort()
        raise
    shown = out.finish()
    keep_warnings(shown, _warn_about_input(layer, net, s, crop))  # the layers are complete
    return shown


def _warn_about_input(layer, model, settings, crop) -> list[str]:
    """An :class:`~napari_cvdm.errors.InputWarning` for each reason why a result on
    ``layer`` may not be trustworthy (reported as from run_on_layer's caller); returned."""
    from .errors import InputWarning

    messages = input_warnings(layer, model, psf_sigma=settings.psf_sigma, crop=crop,
                              samples=settings.samples)
    for message in messages:
        warnings.warn(InputWarning(f"CVDM: {message}"), stacklevel=3)
    return messages
