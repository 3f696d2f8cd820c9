"""Writing results as OME-TIFF: axes, physical sizes and provenance kept, checked up front.

:func:`output_spec` and :func:`check_outputs` run before a prediction, so a unit the file
cannot hold, a read-only folder or a name that is too long is found before any work;
:func:`write_ome_tiffs` then writes all outputs of one input atomically (all or none).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_group, output_exists, plain_os_error
from .image_names import image_stem
from .physical import (LENGTH_UNITS, NM_PER_UNIT, TIME_UNITS, PhysicalSize, fitting_channels,
                       normalise, output_sizes)

OME_AXES = "TZCYX"
NAME_MAX = 255
# Pixels per centimetre that fit a TIFF rational (numerator and denominator below 2**32).
RESOLUTION_RANGE = (1e-3, 1e9)
TO_CENTIMETRE = {unit: nm * 1e-7 for unit, nm in NM_PER_UNIT.items()}


@dataclass(frozen=True)
class OutputSpec:
    """What an output file says about itself: axes, physical sizes, provenance, and the
    channel names (one per channel of the C axis, or none)."""

    axes: str
    sizes: dict[str, PhysicalSize] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    channels: tuple[str, ...] = ()
    # the input's stage position (OME Plane PositionX/Y/Z), the same on every plane: the
    # result covers the same field, so it has the same position
    position: dict[str, PhysicalSize] = field(default_factory=dict)

    def tifffile_metadata(self, name: str = "", planes: int = 1) -> dict[str, Any]:
        """The ``metadata`` argument of ``tifffile.imwrite(..., ome=True)`` for an image of
        ``planes`` planes (the product of its leading axes)."""
        meta: dict[str, Any] = {"axes": self.axes}
        if self.position:
            meta["Plane"] = {key: [value] * planes for axis, p in self.position.items()
                             for key, value in ((f"Position{axis}", p.size),
                                                (f"Position{axis}Unit", p.unit))}
        if self.channels:
            meta["Channel"] = {"Name": list(self.channels)}
        for axis in "XYZ":
            if axis in self.sizes and self.sizes[axis].unit in LENGTH_UNITS:
                meta[f"PhysicalSize{axis}"] = self.sizes[axis].size
                meta[f"PhysicalSize{axis}Unit"] = self.sizes[axis].unit
        if "T" in self.sizes and self.sizes["T"].unit in TIME_UNITS:
            meta["TimeIncrement"] = self.sizes["T"].size
            meta["TimeIncrementUnit"] = self.sizes["T"].unit
        if name:  # a file name may hold bytes that are no UTF-8 (escaped: OME-XML is UTF-8)
            meta["Name"] = name.encode("utf-8", "backslashreplace").decode("utf-8")
        if self.provenance:
            meta["Description"] = "napari-cvdm result"
            meta["MapAnnotation"] = dict(self.provenance)
        return meta

    def resolution(self) -> dict[str, Any]:
        """TIFF resolution tags (pixels per centimetre) for readers without OME support."""
        x, y = self.sizes.get("X"), self.sizes.get("Y")
        if x is None or y is None or x.unit not in TO_CENTIMETRE or y.unit not in TO_CENTIMETRE:
            return {}
        per_cm = (1.0 / (x.size * TO_CENTIMETRE[x.unit]), 1.0 / (y.size * TO_CENTIMETRE[y.unit]))
        low, high = RESOLUTION_RANGE
        if not all(low <= v <= high for v in per_cm):
            return {}
        return {"resolution": per_cm, "resolutionunit": "CENTIMETER"}


def ome_axes(axes: str, ndim: int) -> str:
    """Axis letters OME accepts (T, Z, C, Y, X) for an image of ``ndim`` dimensions.

    Letters OME does not know (tifffile's I, Q for unlabelled stacks, ...; repeated, as
    in a 5-D file saved without axes, 'QQQYX') become the first unused of Z, T, C, except
    S (the samples of a planar RGB or multi-sample file), which is a channel axis: C where
    C is unused; without axes the leading axes are Z, then T.
    """
    axes = (axes or "")[-ndim:] if len(axes or "") >= ndim else ""
    if not axes and not 2 <= ndim <= 5:
        raise ValueError(f"cannot write a {ndim}-D image as OME-TIFF or OME-Zarr; it needs "
                         "at most T, Z, C before Y, X")
    if not axes:
        axes = ("CTZ"[-(ndim - 2):] if ndim > 2 else "") + "YX"
    known = [a for a in axes if a in OME_AXES or a == "S"]  # unknown letters may repeat
    if len(axes) > 5 or len(set(known)) != len(known) or not axes.endswith("YX"):
        raise ValueError(f"cannot write an image with axes {axes!r} as OME-TIFF or OME-Zarr; "
                         "it needs at most T, Z, C before Y, X")
    free = [a for a in "ZTC" if a not in axes]
    named = []
    for a in axes:
        if a not in OME_AXES:
            a = "C" if a == "S" and "C" in free else free[0]
            free.remove(a)
        named.append(a)
    return "".join(named)


def _text(value: Any) -> str:
    text = str(value)
    return "".join(c if c.isprintable() else " " for c in text)[:10_000]


def output_spec(axes: str, ndim: int, sizes: dict[str, PhysicalSize] | None = None,
                scale: int = 1, provenance: dict[str, Any] | None = None,
                channels=(), position: dict[str, PhysicalSize] | None = None) -> OutputSpec:
    """The checked description of an output; raises ValueError if it cannot be written.

    ``sizes`` are the input's; X and Y are divided by ``scale``. Provenance values are
    written as text. ``channels``: a name per channel of the C axis (dropped where the
    axes have no C; a file whose C axis has another size is written without them). The
    OME-XML is built once here, so a problem shows before any work.
    """
    import tifffile

    axes = ome_axes(axes, ndim)
    checked = {}
    for axis, size in (sizes or {}).items():  # no Z size without Z; no size without unit
        if axis in axes and size.unit:
            size = normalise(size.size, size.unit, time=axis == "T")
            if size is not None:
                checked[axis] = size
    sizes = checked
    channels = tuple(_text(c) for c in channels or ()) if "C" in axes else ()
    spec = OutputSpec(axes, output_sizes(sizes, scale),
                      {str(k): _text(v) for k, v in (provenance or {}).items()}, channels,
                      dict(position or {}))
    shape = tuple(len(channels) if a == "C" and channels else 1 for a in axes[:-2]) + (8, 8)
    planes = int(np.prod(shape[:-2]))
    try:
        ome = tifffile.OmeXml()
        ome.addimage(np.float32, shape, (planes, 1, 1, 8, 8, 1),
                     **spec.tifffile_metadata("check", planes))
        ome.tostring()
    except Exception as exc:  # tifffile raises OmeXmlError, ValueError, TypeError
        raise ValueError(f"the output metadata cannot be written as OME-TIFF ({exc})") from None
    return spec


def _narrower_integers(data: np.ndarray) -> np.ndarray:
    """64-bit integers (no OME pixel type) as 32-bit ones when every value fits; else
    ValueError (never a silent wrap-around)."""
    low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
    for target in (np.uint32, np.int32) if low >= 0 else (np.int32,):
        info = np.iinfo(target)
        if info.min <= low and high <= info.max:
            return data.astype(target)
    raise ValueError(f"{data.dtype} values from {low} to {high} do not fit an OME-TIFF "
                     "integer type (32 bits at most); convert the image to float32 first")


def _write_to(path: Path, data: np.ndarray, spec: OutputSpec, name: str) -> None:
    import tifffile

    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype.kind in "ui" and data.dtype.itemsize == 8:
        data = _narrower_integers(data)
    elif data.dtype.kind not in "uif":
        raise ValueError(f"{data.dtype} data cannot be saved as OME-TIFF; save a real-valued "
                         "image (e.g. numpy.abs(data) or data.real)")
    elif data.dtype.kind == "f":
        # OME has float and double: half floats widen to float32 (exactly), long double
        # narrows to double; either byte order keeps its width
        data = data.astype(np.float32 if data.dtype.itemsize <= 4 else np.float64, copy=False)
    metadata = spec.tifffile_metadata(name, int(np.prod(data.shape[:-2])))
    if spec.channels and not fitting_channels(spec.channels, spec.axes, data.shape):
        metadata.pop("Channel")  # names for another number of channels: none
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=metadata,
                     **spec.resolution())


def write_ome_tiffs(items, spec: OutputSpec, overwrite: bool = False) -> list[Path]:
    """Write several ``(path, data)`` OME-TIFFs as one unit: all of them, or none.

    Integer data keeps its type (64-bit integers narrowed where every value fits), float32
    and float64 theirs; half floats become float32.

    Existing files are refused (ValueError) unless ``overwrite``; a full disk raises
    OSError "no space left on device".
    """
    items = [(Path(p), d) for p, d in items]
    check_outputs([p for p, _ in items], overwrite)
    try:
        with atomic_group([p for p, _ in items], overwrite=overwrite) as temps:
            for tmp, (path, data) in zip(temps, items):
                _write_to(tmp, data, spec, image_stem(path))
    except FileExistsError as exc:
        raise ValueError(str(exc.strerror)) from None
    return [p for p, _ in items]


def write_ome_tiff(path: str | os.PathLike, data: np.ndarray, spec: OutputSpec,
                   overwrite: bool = False) -> Path:
    """Write one OME-TIFF atomically (pixel types and errors: :func:`write_ome_tiffs`)."""
    return write_ome_tiffs([(path, data)], spec, overwrite)[0]


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (which may not exist yet), or None."""
    probe = folder
    while True:
        try:
            os.stat(probe)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"the output folder {probe} is a symbolic link loop"
            if probe.is_symlink():
                return (f"the output folder {probe} is a symbolic link to "
                        f"{os.readlink(probe)}, which does not exist")
            if exc.errno == errno.ENAMETOOLONG:
                return f"the output path {probe} is too long"
            if exc.errno in (errno.ENOENT, errno.ENOTDIR) and probe.parent != probe:
                probe = probe.parent
                continue
            return f"the output folder {probe} cannot be used ({exc.strerror})"
        break
    if not probe.is_dir():
        return f"the output {probe} is a file, not a folder"
    if probe == folder:
        try:
            fd, name = tempfile.mkstemp(prefix=".cvdm-check.", dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            return f"cannot write in the output folder {folder}: {plain_os_error(exc, folder)}"
    elif not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot create the output folder {folder}: {probe} is not writable"
    return None


def check_outputs(paths, overwrite: bool = False, folders: bool = False) -> list[Path]:
    """Check, before any work, that every output can be written; ValueError saying why not.

    Folders writable (or creatable), names valid (not too long, no symbolic link loops or
    dangling links), no name twice, and no existing file unless ``overwrite``.
    ``folders=True`` for outputs that are folders (OME-Zarr).
    """
    paths = [Path(p) for p in paths]
    seen: set[Path] = set()
    for path in paths:
        if path.name in ("", "..") or not str(path).strip():
            raise ValueError(f"the output path {str(path)!r} names no "
                             f"{'folder' if folders else 'file'}; give a name")
        if len(path.name.encode("utf-8", "surrogateescape")) > NAME_MAX - 20:
            raise ValueError(f"the output file name {path.name[:40]}... is too long "
                             f"({len(path.name)} characters); use a shorter input name or "
                             "output folder")
        if path in seen:
            raise ValueError(f"{path} would be written twice")
        seen.add(path)
        problem = _folder_problem(path.parent)
        if problem:
            raise ValueError(problem)
        if path.is_symlink() and not path.exists():
            raise ValueError(f"the output {path} is a dangling symbolic link; remove it")
        if path.is_dir() != folders and path.exists():
            raise ValueError(f"the output {path} is a {'file' if folders else 'folder'}")
        if path.exists() and not overwrite:
            raise output_exists(path)
    return paths


def _sizes(pixel_size, unit: str) -> dict[str, PhysicalSize]:
    if pixel_size is None or not unit:
        return {}
    y, x = (normalise(v, unit) for v in pixel_size)
    return {"X": x, "Y": y} if x is not None and y is not None else {}


def write_tiff(path: str | os.PathLike, data: np.ndarray, pixel_size=None, unit: str = "",
               axes: str = "", overwrite: bool = True) -> Path:
    """Write an image as OME-TIFF atomically (pixel types: :func:`write_ome_tiffs`), with its
    ``(y, x)`` pixel size if known."""
    data = np.asarray(data)
    spec = output_spec(axes, data.ndim, _sizes(pixel_size, unit))
    return write_ome_tiff(path, data, spec, overwrite)


def write_tiffs(items, pixel_size=None, unit: str = "", axes: str = "",
                overwrite: bool = True) -> list[Path]:
    """Write several ``(path, data)`` OME-TIFFs as one unit: all of them, or none."""
    items = [(Path(p), np.asarray(d)) for p, d in items]
    spec = output_spec(axes, items[0][1].ndim, _sizes(pixel_size, unit))
    return write_ome_tiffs(items, spec, overwrite)


def spec_for(image, scale: int, provenance: dict[str, Any] | None = None) -> OutputSpec:
    """The output description of a prediction from ``image`` (an ImageFile) at ``scale``,
    with its channel names where there is one per channel."""
    channels = fitting_channels(getattr(image, "channels", ()),
                                ome_axes(image.axes, image.data.ndim), image.data.shape)
    return output_spec(image.axes, image.data.ndim, image.physical, scale, provenance,
                       channels, getattr(image, "position", None))


def result_provenance(model_summary: dict[str, Any], result, **extra: Any) -> dict[str, Any]:
    """The provenance of a prediction as one flat dict (for OME, OME-Zarr and layers).

    ``model_summary`` is the second value of :func:`napari_cvdm.model_files.resolve_model`;
    ``result`` a :class:`~napari_cvdm.inference.PredictionResult`.
    """
    import datetime

    from . import __version__

    info = getattr(result, "info", {}) or {}
    return {"napari_cvdm": __version__, "model": model_summary.get("name"),
            "model_sha256": model_summary.get("sha256"), "seed": result.seed,
            "samples": result.samples, "steps": result.steps, "eta": result.eta,
            "sampler": result.sampler, "precision": info.get("precision"),
            "psf_sigma": info.get("psf_sigma"), "device": result.device, "scale": result.scale,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **extra}
