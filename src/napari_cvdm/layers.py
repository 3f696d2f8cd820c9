"""napari layers in and out of predict(): input checks, output grids, adding or updating layers.

No Qt here: scripts call :func:`run_on_layer` (blocking); the dock widget runs
:func:`~napari_cvdm.inference.predict` in a thread and then calls :func:`show_result`
on the main thread, so both add and update the output layers the same way.
"""

from __future__ import annotations

import warnings

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .inference import PredictionResult, predict
from .model_files import BUNDLED, bundled_model_path, resolve_model
from .model_header import MODEL_SUFFIX, read_model_header
from .settings import PredictSettings, settings_from

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
    if layer.multiscale:
        raise ValueError(f"layer {layer.name!r} is a multiscale pyramid; crop the region "
                         "you need into a new (single-scale) layer first")


def output_transform(layer, scale_factor: int) -> dict[str, Any]:
    """Layer keyword arguments that overlay ``scale_factor`` times finer Y, X on ``layer``.

    Output pixel ``j`` covers input pixel coordinate ``(j + 0.5) / s - 0.5`` (pixel
    centres, SPEC section 4): the Y, X scale is divided by ``s`` and the translate moves
    by the layer's own data-to-physical map of ``(1/s - 1) / 2`` pixels, so rotation and
    shear are honoured. Leading axes, rotate, shear, affine, axis labels and units are
    carried over.
    """
    from napari.utils.transforms import Affine

    s = float(scale_factor)
    ndim = layer.ndim
    shift = np.zeros(ndim)
    shift[-2:] = (1.0 / s - 1.0) / 2.0
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


def output_names(layer, show: str = SHOW[0]) -> tuple[str, str]:
    return f"{layer.name} CVDM mean", f"{layer.name} CVDM {show}"


def _robust_limits(data: np.ndarray, low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(data, [low, high]))
    if not hi > lo:
        lo, hi = float(np.min(data)), float(np.max(data))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def result_layer_data(layer, result: PredictionResult, show: str = SHOW[0],
                      provenance: dict[str, Any] | None = None) -> list[tuple]:
    """The two output layers as napari layer data tuples ``(data, kwargs, "image")``.

    The mean has the input's colormap and contrast limits (same units, so toggling the two
    compares like with like); the uncertainty gets its own colormap and limits.
    """
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}, not {show!r}")
    transform = output_transform(layer, result.scale)
    info = {"source": layer.name, "samples": result.samples, "steps": result.steps,
            "eta": result.eta, "sampler": result.sampler, "seed": result.seed,
            "device": result.device, "precision": result.info.get("precision"),
            "seconds": round(result.seconds, 3),
            "tile_size": result.tile_size, "scale": result.scale,
            "napari_cvdm": __version__, **(provenance or {})}
    mean_name, spread_name = output_names(layer, show)
    spread = result.variance if show == "variance" else result.std
    mean_limits = tuple(float(v) for v in layer.contrast_limits)
    if not mean_limits[1] > mean_limits[0]:
        mean_limits = _robust_limits(result.mean, 0.1, 99.9)
    spread_limits = (0.0, _robust_limits(spread, 0.0, 99.8)[1])
    mean_kwargs = {"name": mean_name, "colormap": layer.colormap,
                   "contrast_limits": mean_limits, "gamma": layer.gamma,
                   "metadata": {"cvdm": {**info, "output": "mean"}}, **transform}
    spread_kwargs = {"name": spread_name, "colormap": UNCERTAINTY_COLORMAP,
                     "contrast_limits": spread_limits,
                     "metadata": {"cvdm": {**info, "output": show}}, **transform}
    return [(result.mean, mean_kwargs, "image"), (spread, spread_kwargs, "image")]


def _add_or_update(viewer, data: np.ndarray, kwargs: dict[str, Any]):
    """Update the image layer called ``kwargs["name"]`` in place, or add a new one."""
    from napari.layers import Image

    name = kwargs["name"]
    existing = viewer.layers[name] if name in viewer.layers else None
    if not isinstance(existing, Image) or existing.ndim != data.ndim or existing.rgb:
        return viewer.add_image(data, **kwargs)
    lo, hi = kwargs["contrast_limits"]
    existing.data = data
    for key in ("affine", "rotate", "shear", "scale", "translate", "axis_labels", "units",
                "colormap", "gamma"):
        if key in kwargs:
            setattr(existing, key, kwargs[key])
    # Setting data keeps the old contrast range; widen it so the new limits are reachable.
    old_lo, old_hi = existing.contrast_limits_range
    existing.contrast_limits_range = (min(old_lo, lo, float(data.min())),
                                      max(old_hi, hi, float(data.max())))
    existing.contrast_limits = (lo, hi)
    existing.metadata = dict(kwargs["metadata"])
    return existing


def show_result(viewer, layer, result: PredictionResult, show: str = SHOW[0],
                provenance: dict[str, Any] | None = None):
    """Add the mean and uncertainty layers above ``layer``, or update them; return both.

    The uncertainty is added first, so the finished run shows the reconstruction on top.
    """
    (mean, mean_kwargs, _), (spread, spread_kwargs, _) = result_layer_data(
        layer, result, show, provenance)
    spread_layer = _add_or_update(viewer, spread, spread_kwargs)
    return _add_or_update(viewer, mean, mean_kwargs), spread_layer


def input_warnings(layer, model) -> list[str]:
    """Why a result on this layer may not be trustworthy (``domain.input_warnings``)."""
    from .domain import input_warnings as warnings_for

    unit = str(layer.units[-1]) if len(getattr(layer, "units", ())) else None
    return warnings_for(unwrap(layer.data), model, float(layer.scale[-1]), unit)


def model_summary(source: str | os.PathLike) -> str:
    """One line about a bundled model or model file, from its header (weights not loaded)."""
    if isinstance(source, str) and source in BUNDLED:
        path = bundled_model_path(source)
        if not path.is_file():
            raise ValueError(f"the bundled {source!r} model is not installed here; "
                             "choose a model file (.cvdm.safetensors) instead")
    else:
        path = Path(source)
    header = read_model_header(path)
    config, metadata = header["config"], header.get("metadata") or {}
    name = metadata.get("name") or path.name.removesuffix(MODEL_SUFFIX)
    training = metadata.get("training") or {}
    trained = f"trained {training['step']:,} steps" if training.get("step") else "untrained"
    return f"{name}: x{config.get('scale')} super-resolution, preset {config.get('preset')}, " \
           f"{trained}"


def run_on_layer(viewer, layer, model=None, *, settings: PredictSettings | None = None,
                 show: str = SHOW[0], progress=None, cancel=None, **options):
    """Run CVDM on an image layer, blocking; add or update the two output layers.

    ``model``, ``settings`` and the keyword options are those of
    :func:`~napari_cvdm.inference.predict` (same defaults: :class:`PredictSettings`).
    Outputs are named ``"<layer> CVDM mean"`` and ``"<layer> CVDM std"`` (the calibrated
    standard deviation; or ``"... CVDM variance"``, the raw sample variance, with
    ``show="variance"``), in the input's intensity units (the variance in units squared),
    below the mean layer, on a grid ``model.config.scale`` times finer that overlays the input.
    Running again on the same layer updates them. The input layer is never modified.
    Returns ``(mean_layer, uncertainty_layer)``. Call it on napari's main thread (it adds
    layers); it may run while the widget runs, even with the same model object.
    """
    check_layer(layer)
    if show not in SHOW:
        raise ValueError(f"show must be one of {SHOW}, not {show!r}")
    s = settings_from(settings, options if model is None else {**options, "model": model})
    net, provenance = resolve_model(s.model)
    result = predict(layer.data, net, settings=s, progress=progress, cancel=cancel)
    for message in input_warnings(layer, net):
        warnings.warn(f"CVDM: {message}", UserWarning, stacklevel=2)
    return show_result(viewer, layer, result, show, provenance)
