"""The napari writer: an image layer as OME-TIFF with its scale, units and CVDM provenance.

napari calls :func:`write_ome_tiff` for File > Save Selected Layer(s) with a ``.ome.tif``
name (:func:`write_ome_tiff_layers`: several layers as the channels of one file). Axis
labels that are OME letters (T, Z, C, Y, X) are kept; physical sizes come from
the layer's scale and units (napari's default unit "pixel" writes none), its translate
becomes the OME stage position; the
``metadata["cvdm"]`` dict of result layers becomes the OME provenance annotation.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .physical import ALIASES, LENGTH_UNITS, NO_UNIT, TIME_UNITS, PhysicalSize
from .tiff_writer import ome_axes, output_spec
from .tiff_writer import write_ome_tiff as _write


class SaveRefused(Exception):
    """A layer this writer cannot save, with why. Not a ValueError: napari takes a writer's
    ValueError for "this writer does not apply" and says only that no plugin was found."""


def _axes(attributes: dict[str, Any], ndim: int) -> str:
    """OME letters from the layer's axis labels; else, where the labels are napari's
    defaults, T for the one leading axis whose unit is a time (a time series keeps its
    step) and unknown letters (Z, then C: ``ome_axes``) for the others."""
    labels = [str(label).upper() for label in attributes.get("axis_labels") or ()]
    if len(labels) == ndim and all(len(a) == 1 and a in "TZCYX" for a in labels) and \
            len(set(labels)) == ndim and labels[-2:] == ["Y", "X"]:
        return "".join(labels)
    units = [str(u) for u in attributes.get("units") or ()]
    timed = [len(units) == ndim and _time_unit(u) for u in units[:-2]]
    if 2 < ndim <= 5 and sum(timed) == 1:
        return "".join("T" if t else "Q" for t in timed) + "YX"
    return ""


def _time_unit(unit: str) -> bool:
    return ALIASES.get(unit, ALIASES.get(unit.lower(), (1.0, unit)))[1] in TIME_UNITS


def _physical_values(attributes: dict[str, Any], key: str, axes: str,
                     wanted: str) -> list[tuple[str, float, str]]:
    """(axis, value, unit) of the layer attribute ``key`` (scale, translate) along each of
    the ``wanted`` axes whose unit is a physical one, in the unit OME names it by (µm for
    napari's "micrometer"); none where the layer's lists do not fit its axes."""
    values = list(attributes.get(key) or [])
    units = [str(u) for u in attributes.get("units") or []]
    if len(values) != len(axes) or len(units) != len(axes):
        return []
    out = []
    for axis, value, unit in zip(axes, values, units):
        if axis in wanted and unit.lower() not in NO_UNIT:
            factor, unit = ALIASES.get(unit, ALIASES.get(unit.lower(), (1.0, unit)))
            out.append((axis, float(value) * factor, unit))
    return out


def _sizes(attributes: dict[str, Any], axes: str) -> dict[str, PhysicalSize]:
    # a flipped axis (negative scale) still has its pixel size; OME holds no flip
    return {axis: PhysicalSize(abs(size), unit)
            for axis, size, unit in _physical_values(attributes, "scale", axes, "XYZT")}


def _position(attributes: dict[str, Any], axes: str) -> dict[str, PhysicalSize]:
    """The layer's translate along X and Y, in a length unit, as the OME stage position of
    its first pixel (where it is not 0): a region's result keeps where it sat, and a result
    its placement over the input. Not Z: OME gives every plane one position, and the planes
    of a Z stack lie at different depths."""
    return {axis: PhysicalSize(value, unit)
            for axis, value, unit in _physical_values(attributes, "translate", axes, "XY")
            if value != 0.0 and unit in LENGTH_UNITS and np.isfinite(value)}


def _provenance(metadata: dict[str, Any] | None) -> dict[str, Any]:
    cvdm = (metadata or {}).get("cvdm")
    if not isinstance(cvdm, dict):
        return {}
    # lists and dicts (a region's bounds, say) as JSON: the file says where it belongs
    return {str(k): json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else v
            for k, v in cvdm.items()}


def write_ome_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: save ``data`` with the layer ``attributes`` as OME-TIFF.
    A layer it cannot save raises :class:`SaveRefused`, which napari shows with its reason."""
    try:
        return _save(path, data, attributes)
    except ValueError as exc:
        raise SaveRefused(str(exc)) from None


def _save(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    data = _plane_data(data, attributes)
    axes = ome_axes(_axes(attributes, data.ndim), data.ndim)
    spec = output_spec(axes, data.ndim, _sizes(attributes, axes), 1,
                       _provenance(attributes.get("metadata")),
                       position=_position(attributes, axes))
    return [str(_write(path, data, spec, overwrite=True))]


def _plane_data(data: Any, attributes: dict[str, Any]) -> np.ndarray:
    """The layer's pixels, or ValueError for a layer this writer cannot save."""
    if attributes.get("rgb"):
        raise ValueError("the CVDM OME-TIFF writer saves single-channel images, not RGB")
    if attributes.get("multiscale") or isinstance(data, (list, tuple)):
        raise ValueError("the CVDM OME-TIFF writer saves one resolution: a multiscale layer "
                         "is saved as OME-Zarr (napari_cvdm.zarr_files.write_ome_zarr) or "
                         "one level at a time")
    return np.asarray(data)


def write_ome_tiff_layers(path: str, layer_data: list[tuple[Any, dict[str, Any], str]]
                          ) -> list[str]:
    """npe2 multi-layer writer: two or more image layers of one shape and placement (a
    result's mean and std, say) as the channels of one OME-TIFF, each named after its
    layer. Layers that do not overlay are refused (:class:`SaveRefused`) with why."""
    try:
        return _save_channels(path, layer_data)
    except ValueError as exc:
        raise SaveRefused(str(exc)) from None


_PLACEMENT = ("scale", "translate", "units", "rotate", "shear", "affine", "axis_labels")


def _save_channels(path: str, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list[str]:
    attributes = [a for _, a, _ in layer_data]
    names = [str(a.get("name") or f"layer {i + 1}") for i, a in enumerate(attributes)]
    arrays = [_plane_data(d, a) for d, a, _ in layer_data]
    first, ndim = attributes[0], arrays[0].ndim
    one_at_a_time = "save them one at a time (one layer selected) instead"
    for name, data, a in zip(names[1:], arrays[1:], attributes[1:]):
        if data.shape != arrays[0].shape:
            raise ValueError(f"layers saved together become the channels of one image and "
                             f"need one shape: {names[0]!r} is {arrays[0].shape}, {name!r} "
                             f"{data.shape}; {one_at_a_time}")
        for key in _PLACEMENT:
            if not _same(first.get(key), a.get(key)):
                raise ValueError(f"layers saved together become the channels of one image "
                                 f"and must overlay: {names[0]!r} and {name!r} differ in "
                                 f"{key}; {one_at_a_time}")
    axes = ome_axes(_axes(first, ndim), ndim)
    if "C" in axes or ndim > 4:
        raise ValueError(f"layers saved together become the channels of one image, and "
                         f"{names[0]!r} ({ndim}-D, axes {axes}) leaves no room for a channel "
                         f"axis; {one_at_a_time}")
    dtype = _common_type(names, arrays)
    data = np.stack([np.asarray(d, dtype=dtype) for d in arrays])
    spec = output_spec("C" + axes, ndim + 1, _sizes(first, axes), 1,
                       _merged_provenance(names, attributes), channels=names,
                       position=_position(first, axes))
    return [str(_write(path, data, spec, overwrite=True))]


def _same(a: Any, b: Any) -> bool:
    """One placement attribute equal on two layers (numbers to rounding: 1e-15 apart is
    one grid); an affine as napari gives it (an object with ``affine_matrix``) by its matrix."""
    if a is None or b is None:
        return a is b
    a, b = (getattr(v, "affine_matrix", v) for v in (a, b))
    try:
        first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        return first.shape == second.shape and bool(np.allclose(first, second, rtol=1e-9,
                                                                atol=1e-12))
    except (TypeError, ValueError):
        return [str(v) for v in a] == [str(v) for v in b]


def _common_type(names: list[str], arrays: list[np.ndarray]) -> np.dtype:
    """The type all channels are saved in, or ValueError where one layer's values would not
    survive it (64-bit integers beyond 2**53 in float64)."""
    dtype = np.result_type(*arrays)
    if dtype.kind in "iu" and dtype.itemsize == 8 and \
            not any(a.dtype.kind in "iu" and a.dtype.itemsize == 8 for a in arrays):
        dtype = np.dtype(np.float64)  # 32-bit integers of both signs: exact in float64
    if dtype.kind == "f":
        for name, a in zip(names, arrays):
            if a.dtype.kind in "iu" and a.dtype.itemsize == 8 and a.size and \
                    max(abs(int(a.min())), abs(int(a.max()))) > 2**53:
                raise ValueError(f"{name!r} holds integers beyond 2**53, which the other "
                                 "layers' type (float64) would round; save it on its own")
    return dtype


def _merged_provenance(names: list[str], attributes: list[dict[str, Any]]) -> dict[str, Any]:
    """One provenance for the channels: a value they share as it is, one that differs
    (each result layer's ``output``, say) as JSON of layer name -> value."""
    each = [_provenance(a.get("metadata")) for a in attributes]
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for p in each for k in p):
        values = [p.get(key) for p in each]
        merged[key] = values[0] if all(v == values[0] for v in values) else \
            json.dumps(dict(zip(names, values)), default=str)
    return merged
