"""The napari writer: an image layer as OME-TIFF with its scale, units and CVDM provenance.

napari calls :func:`write_ome_tiff` for File > Save Selected Layer(s) with a ``.ome.tif``
name. Axis labels that are OME letters (T, Z, C, Y, X) are kept; physical sizes come from
the layer's scale and units (napari's default unit "pixel" writes none); the
``metadata["cvdm"]`` dict of result layers becomes the OME provenance annotation.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .physical import ALIASES, NO_UNIT, TIME_UNITS, PhysicalSize
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


def _sizes(attributes: dict[str, Any], axes: str) -> dict[str, PhysicalSize]:
    scale = list(attributes.get("scale") or [])
    units = [str(u) for u in attributes.get("units") or []]
    if len(scale) != len(axes) or len(units) != len(axes):
        return {}
    sizes = {}
    for axis, size, unit in zip(axes, scale, units):
        if axis in "XYZT" and unit.lower() not in NO_UNIT:
            factor, unit = ALIASES.get(unit, ALIASES.get(unit.lower(), (1.0, unit)))
            # a flipped axis (negative scale) still has its pixel size; OME holds no flip
            sizes[axis] = PhysicalSize(abs(float(size)) * factor, unit)
    return sizes


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
    if attributes.get("rgb"):
        raise ValueError("the CVDM OME-TIFF writer saves single-channel images, not RGB")
    if attributes.get("multiscale") or isinstance(data, (list, tuple)):
        raise ValueError("the CVDM OME-TIFF writer saves one resolution: a multiscale layer "
                         "is saved as OME-Zarr (napari_cvdm.zarr_files.write_ome_zarr) or "
                         "one level at a time")
    data = np.asarray(data)
    axes = ome_axes(_axes(attributes, data.ndim), data.ndim)
    spec = output_spec(axes, data.ndim, _sizes(attributes, axes), 1,
                       _provenance(attributes.get("metadata")))
    return [str(_write(path, data, spec, overwrite=True))]
