"""OME-Zarr in and out: inputs (NGFF 0.4 and 0.5) read lazily, results written plane by
plane (NGFF 0.4, which every current reader reads).

A result is one ``<stem>_cvdm.ome.zarr`` group holding two OME-Zarr images, ``mean`` and
``std`` (two images rather than two channels: the input may have channels of its own,
and the two need different contrast). Each has the input's axes, the input's physical
sizes with Y and X divided by the model scale, and the provenance under the
``napari_cvdm`` attribute. Needs the ``zarr`` extra (zarr, dask).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import output_exists, plain_os_error
from .physical import NAPARI_UNITS, PhysicalSize, fitting_channels, normalise, output_sizes
from .tiff_writer import check_outputs, ome_axes
from .validation import check_scale

NGFF_VERSION = "0.4"
AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
IMAGES = ("mean", "std")
COMPLETE_MARK = "complete"  # in the root's napari_cvdm attributes, written last
# Coarser levels (2 x 2 averages) are added until a plane fits in this many pixels per side:
# a viewer shows a large result zoomed out from them instead of reading every pixel.
PYRAMID_TOP = 512


def with_levels(full_resolution: int) -> int:
    """Bytes of a result store with its coarser levels, from the bytes of its full-resolution
    level: each level is a quarter of the one before, so together at most a third more."""
    return full_resolution * 4 // 3


def _zarr():
    try:
        import zarr
    except ImportError:
        raise ValueError("OME-Zarr needs the zarr package: pip install "
                         "'napari-cvdm[zarr]'") from None
    return zarr


def _ome(group) -> dict[str, Any]:
    """A group's OME metadata: NGFF 0.5 (zarr v3) keeps it under ``ome``, 0.4 at the top."""
    attrs = dict(group.attrs)
    nested = attrs.get("ome")
    return nested if isinstance(nested, dict) else attrs


def _image_group(group, path: Path):
    """(group, its OME metadata, the store's series) of the image: the root (series ()),
    or series 0 of a bioformats2raw store; NGFF 0.4 and 0.5. ValueError for anything else,
    saying which part to give for an HCS plate or well."""
    ome = _ome(group)  # read once: the attributes are a file of the store
    if "multiscales" in ome:
        return group, ome, ()
    if "bioformats2raw.layout" in ome and "0" in group:
        return group["0"], _ome(group["0"]), _series(group)
    plate, well = ome.get("plate"), ome.get("well")
    if isinstance(plate, dict) or isinstance(well, dict):
        where = _first_field(group, plate, well)
        what = (f"an HCS plate ({len(plate.get('wells') or [])} well(s))" if
                isinstance(plate, dict) else "a well of an HCS plate")
        raise ValueError(f"{what}, not one image; give one field of it as the input, e.g. "
                         f"{path / where}")
    raise ValueError("not an OME-Zarr image (no multiscales metadata)")


def _first_field(group, plate, well) -> str:
    """The path of a plate's or well's first field ('A/1/0', '0'), as its metadata gives
    it; the usual layout's where the metadata does not say."""
    try:
        if isinstance(plate, dict):
            row_column = str(plate["wells"][0]["path"])
            well = _ome(group[row_column])["well"]
            return f"{row_column}/{well['images'][0]['path']}"
        return str(well["images"][0]["path"])
    except Exception:  # metadata that does not say: a plate's fields are row/column/field
        return "A/1/0" if isinstance(plate, dict) else "0"


def _series(group) -> list[str]:
    """The series of a bioformats2raw store: as its OME group lists them, else its groups
    named 0, 1, 2, ..."""
    with contextlib.suppress(Exception):
        listed = _ome(group["OME"]).get("series")
        if isinstance(listed, list) and listed:
            return [str(name) for name in listed]
    names = set(group.group_keys())
    return [str(i) for i in range(len(names)) if str(i) in names]


def _result_mark(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``napari_cvdm`` attributes of a store's root; None where there are none."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        attrs = dict(_zarr().open_group(str(path), mode="r").attrs)
    except Exception:  # not a zarr group, or damaged
        return None
    mark = attrs.get("napari_cvdm")
    return mark if isinstance(mark, dict) and "images" in mark else None


def holds_image(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` is a zarr group with multiscales metadata (an OME-Zarr
    image: a bioformats2raw series or a plate's field inside a store), not another part of
    a store (its OME folder, a plate's row)."""
    try:
        return "multiscales" in _ome(_zarr().open_group(str(path), mode="r"))
    except Exception:  # not a zarr group, damaged, or no zarr installed
        return False


def is_result_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an OME-Zarr folder written by napari-cvdm (its root says so),
    finished or not; only such a store may be replaced by a new result."""
    return _result_mark(path) is not None


def check_replaceable(path: str | os.PathLike) -> None:
    """ValueError when ``path`` exists and is not a napari-cvdm result: a result may be
    replaced by a new one, any other folder never."""
    if Path(path).exists() and not is_result_store(path):
        raise ValueError(f"{path} exists and is not a napari-cvdm result, so it is never "
                         "replaced; remove it or choose another name")


def is_complete_result(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a napari-cvdm result whose writing finished (its root's mark is
    written last, after every chunk)."""
    mark = _result_mark(path)
    return mark is not None and mark.get(COMPLETE_MARK) is True


class _Chunks:
    """A zarr array whose chunks that cannot be decoded (a damaged store) raise ValueError
    naming the store, instead of a codec's traceback from inside dask."""

    def __init__(self, array, path: Path):
        self.zarr_array, self._path = array, path
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, index):
        try:
            return self.zarr_array[index]
        except (MemoryError, OSError):  # not the store's content: a file system's error
            raise
        except Exception as exc:
            raise ValueError(f"{self._path}: part of the image could not be read, the store "
                             f"is damaged ({type(exc).__name__}: {exc})") from None

    def __dask_tokenize__(self):
        return ("napari-cvdm-ome-zarr", str(self._path), self.shape, str(self.dtype))


def missing_chunks(array) -> tuple[int, int] | None:
    """``(missing, total)`` chunks (shards, where the array has them) of a zarr array on a
    local disk, counted from one listing of its folder; None where that cannot be told (a
    remote store, an unexpected layout). zarr's own count lists the store once per chunk."""
    root = getattr(getattr(array, "store", None), "root", None)
    if root is None:
        return None
    folder = Path(str(root)) / str(getattr(array, "path", "") or "")
    try:
        grid = getattr(array, "shards", None) or array.chunks
        total = int(np.prod([-(-int(n) // max(int(c), 1)) for n, c in zip(array.shape, grid)],
                            dtype=np.float64))
        stored = 0
        for _, _, names in os.walk(folder):
            stored += sum(1 for name in names if not name.startswith(".")
                          and name != "zarr.json")
    except (OSError, TypeError, ValueError, AttributeError):
        return None
    if stored > total or not folder.is_dir():
        return None
    return total - stored, total


def _warn_about_missing_chunks(path: Path, array) -> None:
    """Warn where chunks of an input image are not stored: zarr reads them as the fill
    value, so a store damaged in copying would give a plausible result with a silent hole.
    (Zarr writers leave chunks that hold only the fill value out on purpose; the warning
    says so.)"""
    counts = missing_chunks(array)
    if not counts or not counts[0]:
        return
    missing, total = counts
    fill = array.fill_value.item() if hasattr(array.fill_value, "item") else array.fill_value
    warnings.warn(f"{path}: {missing} of {total} chunks of the image are not stored and read "
                  f"as {fill} (writers leave out chunks that hold only that value; otherwise "
                  "the store is damaged and the result there means nothing)", stacklevel=3)


def read_ome_zarr(path: str | os.PathLike, check_chunks: bool = False
                  ) -> tuple[Any, dict[str, Any]]:
    """The full-resolution image of an OME-Zarr, lazily, with its metadata.

    Returns ``(array, metadata)``: a dask array (a zarr array where dask is missing) whose
    chunks are read only when used, and ``{"axes": "TZYX"-style letters, "physical":
    {axis: PhysicalSize}, "attributes": the image's attributes}``, with ``"channels"``
    (the ``omero`` channel labels) where there is one per channel of the C axis, and
    ``"placement"``: {axis: (pixel size, translation)}, in the physical size's unit where
    the axis has one (else as the file gives them). The
    physical sizes are the dataset's scale times the multiscale's own (NGFF 0.4 and 0.5
    apply it after the dataset's). ValueError for anything that is not an OME-Zarr image.
    ``check_chunks``: warn where chunks of the image are not stored (one listing of its
    folder: done once, by the run that reads the pixels). A bioformats2raw store of several
    series gives series 0 with a warning naming another's folder (``store.ome.zarr/1``,
    which reads that series); an HCS plate or well is refused naming a field to give.
    """
    zarr = _zarr()
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input not found: {path}")
    try:
        group, ome, series = _image_group(zarr.open_group(str(path), mode="r"), path)
        multiscale = ome["multiscales"][0]
        dataset = multiscale["datasets"][0]
        array = group[dataset["path"]]
        names = [a["name"] if isinstance(a, dict) else str(a) for a in multiscale["axes"]]
        units = [a.get("unit") if isinstance(a, dict) else None for a in multiscale["axes"]]
        if not hasattr(array, "ndim") or not hasattr(array, "dtype"):
            raise ValueError(f"the dataset path {dataset['path']!r} is not an array")
        # NGFF 0.4/0.5: the multiscale's own transformations apply after the dataset's
        scale = [None if a is None or b is None else a * b
                 for a, b in zip(_scale(dataset, names, "the dataset's"),
                                 _scale(multiscale, names, "the multiscales'"))]
        # world = multiscale scale x (dataset scale x index + dataset shift) + multiscale shift
        shift = [(m or 0.0) * d + t for d, m, t in zip(
            _shift(dataset, names), _scale(multiscale, names, "the multiscales'"),
            _shift(multiscale, names))]
        channels = _channel_labels(ome)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except Exception as exc:  # zarr and JSON errors of damaged stores
        raise ValueError(f"{path} could not be read as OME-Zarr ({type(exc).__name__}: "
                         f"{exc})") from None
    if len(series) > 1:  # a microscope's several positions or wells, of which one is read
        warnings.warn(f"{path} holds {len(series)} series (a bioformats2raw store) and only "
                      f"series 0 is read; give another's folder to read it, e.g. "
                      f"{path / series[1]}", stacklevel=2)
    axes = "".join(_axis_letter(a, n) for a, n in zip(multiscale["axes"], names))
    custom = [f"{n!r} ({a.get('type')})" for a, n, letter in
              zip(multiscale["axes"], names, axes) if isinstance(a, dict) and letter not in
              "TCZYX" and a.get("type") not in (None, "space", "time", "channel")]
    if custom:
        warnings.warn(f"{path}: the axis {', '.join(custom)} has no OME equivalent (T, C, Z, "
                      "Y, X); results name it as one (Z, T or C), without its unit",
                      stacklevel=2)
    if len(axes) != array.ndim:
        raise ValueError(f"{path}: the axes {names} do not fit an array of {array.ndim} "
                         "dimensions")
    physical, placement = {}, {}
    for axis, size, unit, offset in zip(axes, scale, units, shift):
        placement[axis] = _placed(size, offset)
        if axis in "XYZT" and unit:
            checked = normalise(size, unit, time=axis == "T")
            if checked is not None:
                physical[axis] = checked
                # in the unit the size was normalised to, as the result's sizes are written
                placement[axis] = _placed(checked.size, offset * checked.size / size)
    if check_chunks:
        _warn_about_missing_chunks(path, array)
    with contextlib.suppress(ImportError):
        import dask.array as da

        array = da.from_array(_Chunks(array, path), chunks=array.chunks)
    meta = {"axes": axes, "physical": physical, "attributes": dict(group.attrs),
            "placement": placement}
    channels = fitting_channels(channels, axes, tuple(array.shape))
    if channels:
        meta["channels"] = channels
    return array, meta


def _axis_letter(axis: Any, name: str) -> str:
    """One letter for an NGFF axis: by its type where that says channel or time (a channel
    axis named "wavelength" is C), else the first of its name (x, y, z; t, c)."""
    kind = axis.get("type") if isinstance(axis, dict) else None
    if kind == "channel":
        return "C"
    if kind == "time":
        return "T"
    return name.upper()[:1]


def _placed(size: float | None, offset: float) -> tuple[float, float]:
    """(pixel size, translation) of one axis as a result may be written with them: finite,
    the size positive (NaN or Infinity is not even valid JSON); else pixels of 1 at 0 (an
    unusable size), or the size at 0 (an offset that overflowed)."""
    if size is None or not np.isfinite(size) or size <= 0:
        return 1.0, 0.0
    return float(size), float(offset) if np.isfinite(offset) else 0.0


def _scale(node: dict[str, Any], names: list[str], whose: str) -> list[float | None]:
    """The scale of ``node``'s ``coordinateTransformations`` (ones where it has none), one
    value per axis (ValueError otherwise); a value that is no number is None (no size)."""
    transforms = node.get("coordinateTransformations") or []
    if not isinstance(transforms, list):
        raise ValueError(f"{whose} coordinateTransformations {transforms!r} is not a list")
    scale = next((t.get("scale") for t in transforms
                  if isinstance(t, dict) and t.get("type") == "scale"), [1.0] * len(names))
    if not isinstance(scale, (list, tuple)) or len(scale) != len(names):
        raise ValueError(f"{whose} scale {scale!r} does not give one value per axis {names}")
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            for v in scale]


def _shift(node: dict[str, Any], names: list[str]) -> list[float]:
    """The translation of ``node``'s ``coordinateTransformations``, one value per axis;
    zeros where it has none or one that is not a list of numbers, one per axis (a
    translation given by ``path``, say): it only places the result, so it never refuses
    an image."""
    transforms = node.get("coordinateTransformations")
    shift = next((t.get("translation") for t in transforms if isinstance(t, dict)
                  and t.get("type") == "translation"), None) \
        if isinstance(transforms, list) else None
    if not isinstance(shift, (list, tuple)) or len(shift) != len(names):
        return [0.0] * len(names)
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
            and np.isfinite(v) else 0.0 for v in shift]


def output_grid(axes: str, placement: dict[str, tuple[float, float]],
                scale: int) -> tuple[list[float], list[float]]:
    """(scale, translation) per axis of a result written ``scale`` times finer, so that it
    overlays its input (``placement``: {axis: (pixel size, translation)}, as
    :func:`read_ome_zarr` gives it; pixels of 1 at 0 for axes not in it): Y and X pixels
    ``scale`` times smaller and their centres shifted by -(scale - 1) / (2 scale) input
    pixels (as napari places result layers, layers.output_transform); other axes as given."""
    sizes_out, shift_out = [], []
    for axis in axes:
        step, offset = placement.get(axis, (1.0, 0.0))
        if axis in "YX":
            offset -= step * (scale - 1) / (2 * scale)
            step /= scale
            if not np.isfinite(offset):  # an input placed near the float limit
                offset = -step * (scale - 1) / 2
        sizes_out.append(step)
        shift_out.append(offset)
    return sizes_out, shift_out


def _channel_labels(ome: dict[str, Any]) -> tuple[str, ...]:
    """The ``omero.channels[].label`` entries (None where one is not a dict), unchecked:
    :func:`~napari_cvdm.physical.fitting_channels` keeps them only where all fit."""
    omero = ome.get("omero")
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list) or not channels:
        return ()
    return tuple(c.get("label") if isinstance(c, dict) else None for c in channels)


def _ngff_attributes(axes: str, sizes: dict[str, PhysicalSize], name: str,
                     provenance: dict[str, Any], channels: tuple[str, ...],
                     grid: tuple[list[float], list[float]]) -> dict[str, Any]:
    """NGFF attributes of one result image; ``sizes`` the input's, ``grid`` the output's
    (scale, translation) per axis (:func:`output_grid`)."""
    axis_list = []
    for axis in axes:
        entry = {"name": axis.lower(), "type": AXIS_TYPES[axis]}
        size = sizes.get(axis)
        if size is not None and size.unit in NAPARI_UNITS:
            entry["unit"] = NAPARI_UNITS[size.unit]
        axis_list.append(entry)
    scale, shift = grid
    transforms = [{"type": "scale", "scale": scale}]
    if any(shift):
        transforms.append({"type": "translation", "translation": shift})
    attributes = {"multiscales": [{"version": NGFF_VERSION, "name": name, "axes": axis_list,
                                   "datasets": [{"path": "0",
                                                 "coordinateTransformations": transforms}]}],
                  "napari_cvdm": {"output": name, **provenance}}
    if channels:
        attributes["omero"] = {"channels": [{"label": label} for label in channels]}
    return attributes


class ZarrResultWriter:
    """Write a result OME-Zarr plane by plane into a temporary folder, then move it in place.

    ``with ZarrResultWriter(path, shape, axes, sizes, scale, provenance) as out:
    out.write(index, mean_plane, std_plane)`` for each leading index (a tuple, ``()`` for
    a single plane). Nothing appears at ``path`` unless the block completes.

    ``in_place=True`` creates the arrays at ``path`` itself (no hidden folder, no rename),
    so readers (napari layers on :attr:`arrays`) see chunks as they are written; on failure
    ``path`` is removed. ``images`` names the two images (``("mean", "variance")`` for a
    variance output). ``channels``: the input's channel names, kept where there is one per
    channel of the C axis. ``levels``: add coarser levels when complete (:meth:`_add_levels`;
    a store only shown in this session needs none).
    """

    def __init__(self, path, shape, axes: str = "", sizes=None, scale: int = 1,
                 provenance: dict[str, Any] | None = None, overwrite: bool = False,
                 chunk: int = 512, in_place: bool = False, images: tuple[str, str] = IMAGES,
                 channels=(), placement: dict[str, tuple[float, float]] | None = None,
                 grid: tuple[list[float], list[float]] | None = None, levels: bool = True):
        check_scale(scale)
        self.path = Path(path)
        self.levels = levels
        self.shape = tuple(int(n) for n in shape)
        self.axes = ome_axes(axes, len(self.shape))
        given = {a: s for a, s in (sizes or {}).items() if a in self.axes}
        self.sizes = output_sizes(given, scale)
        # where the result sits: given (a napari layer's placement), or from the input's
        # (its sizes at 0 where no placement is given)
        placement = {**{a: (s.size, 0.0) for a, s in given.items()}, **(placement or {})}
        self.grid = grid or output_grid(self.axes, placement, scale)
        self.provenance = {str(k): v if isinstance(v, (int, float, bool)) or v is None
                           else str(v) for k, v in (provenance or {}).items()}
        self.overwrite, self.chunk, self.in_place = overwrite, chunk, in_place
        self.images = tuple(images)
        self.channels = fitting_channels(tuple(str(c) for c in channels or ()), self.axes,
                                         self.shape)
        check_outputs([self.path], overwrite=overwrite, folders=True)
        check_replaceable(self.path)

    def __enter__(self):
        zarr = _zarr()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.in_place:
            if self.path.exists():
                if not self.overwrite:
                    raise output_exists(self.path)
                shutil.rmtree(self.path)
            self._tmp = self.path
        else:
            self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name[:200]}.",
                                              suffix=".part", dir=self.path.parent))
        root = zarr.open_group(str(self._tmp), mode="w", zarr_format=2)
        root.attrs["napari_cvdm"] = {"images": list(self.images), **self.provenance}
        chunks = (1,) * (len(self.shape) - 2) + tuple(min(n, self.chunk)
                                                      for n in self.shape[-2:])
        self._arrays = {}
        for name in self.images:
            group = root.create_group(name)
            group.attrs.update(_ngff_attributes(self.axes, self.sizes, name,
                                                self.provenance, self.channels, self.grid))
            self._arrays[name] = group.create_array("0", shape=self.shape, chunks=chunks,
                                                    dtype="float32", fill_value=0.0)
        return self

    def write(self, index: tuple[int, ...], mean: np.ndarray, std: np.ndarray) -> None:
        """Store the mean and standard deviation of the plane at ``index``."""
        first, second = self.arrays
        first[tuple(index)] = np.asarray(mean, dtype=np.float32)
        second[tuple(index)] = np.asarray(std, dtype=np.float32)

    @property
    def arrays(self) -> tuple[Any, Any]:
        """The two zarr arrays being written (mean, then std or variance)."""
        return tuple(self._arrays[name] for name in self.images)

    def store(self, mean, std, callbacks=()) -> None:
        """Compute dask ``mean`` and ``std`` together, each chunk written as it finishes.

        ``callbacks``: dask callbacks (``dask.callbacks.Callback``) active while computing.
        """
        import dask.array as da
        from dask.callbacks import Callback

        targets = list(self.arrays)
        sources = [da.asarray(a).astype(np.float32).rechunk(t.chunks)
                   for a, t in zip((mean, std), targets)]
        with contextlib.ExitStack() as stack:
            for callback in callbacks:
                stack.enter_context(callback if isinstance(callback, Callback)
                                    else Callback(posttask=callback))
            da.store(sources, targets, lock=False)

    def _add_levels(self) -> None:
        """Coarser levels of each image (napari and other viewers show a large result zoomed
        out from them), each 2 x 2 times coarser in Y and X than the one before, until a
        plane fits in :data:`PYRAMID_TOP` pixels per side; read back from the finished
        level 0, a chunk at a time. The mean's blocks are averaged; a spread's (std or
        variance) too, as the root mean square for a std (the typical uncertainty of the
        block's pixels, not the uncertainty of their average). Odd last rows and columns
        are left out of a coarser level, as most pyramid writers do; their pixels'
        centres stay where the finer pixels they average lie."""
        import dask.array as da

        root = _zarr().open_group(str(self._tmp), mode="r+")
        for name in self.images:
            group = root[name]
            level = da.from_zarr(group["0"])
            scale, shift = (list(v) for v in self.grid)
            datasets = list(group.attrs["multiscales"][0]["datasets"])
            k = 0
            while max(level.shape[-2:]) > PYRAMID_TOP and min(level.shape[-2:]) >= 2:
                k += 1
                factors = {level.ndim - 2: 2, level.ndim - 1: 2}
                if name == "std":
                    level = da.sqrt(da.coarsen(np.mean, level ** 2, factors, trim_excess=True))
                else:
                    level = da.coarsen(np.mean, level, factors, trim_excess=True)
                level = level.astype(np.float32)
                for axis in (-2, -1):  # centres of the 2 x 2 blocks of the level before
                    shift[axis] += scale[axis] / 2
                    scale[axis] *= 2
                chunks = (1,) * (level.ndim - 2) + tuple(min(n, self.chunk)
                                                         for n in level.shape[-2:])
                target = group.create_array(str(k), shape=level.shape, chunks=chunks,
                                            dtype="float32", fill_value=0.0)
                level = level.rechunk(chunks)
                da.store(level, target, lock=False)
                level = da.from_zarr(target)
                transforms = [{"type": "scale", "scale": list(scale)}]
                if any(shift):
                    transforms.append({"type": "translation", "translation": list(shift)})
                datasets.append({"path": str(k), "coordinateTransformations": transforms})
            if k:
                multiscales = [dict(group.attrs["multiscales"][0], datasets=datasets)]
                group.attrs["multiscales"] = multiscales

    def _add_levels_or_none(self) -> None:
        """:meth:`_add_levels`; where they cannot be written (a disk that fills), the result
        stays complete at full resolution, with a warning, instead of being thrown away."""
        try:
            self._add_levels()
        except Exception as exc:  # noqa: BLE001 - an interrupt still ends the run
            root = _zarr().open_group(str(self._tmp), mode="r+")
            for name in self.images:
                group = root[name]
                for key in [k for k in group.array_keys() if k != "0"]:
                    del group[key]
                multiscales = dict(group.attrs["multiscales"][0])
                multiscales["datasets"] = multiscales["datasets"][:1]
                group.attrs["multiscales"] = [multiscales]
            warnings.warn(f"{self.path}: its coarser levels could not be written ({exc}); "
                          "the result is complete at full resolution", stacklevel=3)

    def _mark_complete(self) -> None:
        """The last write: a store without this mark (a killed run, a partial copy) is not a
        finished result (``is_complete_result``), whatever its arrays hold."""
        root = _zarr().open_group(str(self._tmp), mode="r+")
        root.attrs["napari_cvdm"] = {**dict(root.attrs["napari_cvdm"]), COMPLETE_MARK: True}

    def __exit__(self, kind, value, traceback):
        if kind is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            plain = plain_os_error(value, self.path) if isinstance(value, OSError) else value
            if plain is not value:  # disk full, read-only: say which output
                raise plain from value
            return False
        try:
            if self.levels:
                self._add_levels_or_none()
            self._mark_complete()
        except BaseException:  # an interrupt (Ctrl-C, SIGTERM) too: no temporary store left
            if not self.in_place:
                shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        if self.in_place:
            return False
        old = moved = None
        try:
            if self.path.exists():
                if not self.overwrite:
                    raise output_exists(self.path)
                # a fresh empty folder of its own (a leftover '.old' cannot block the move)
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name[:200]}.", suffix=".old",
                                            dir=self.path.parent))
                moved = old / self.path.name  # into it (a link to a result moves as a link)
                os.replace(self.path, moved)
            os.replace(self._tmp, self.path)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            if moved is not None and os.path.lexists(moved) and not os.path.lexists(self.path):
                os.replace(moved, self.path)  # the previous result stays as it was
            if old is not None:
                with contextlib.suppress(OSError):
                    old.rmdir()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def write_ome_zarr(path, mean, std, metadata: dict[str, Any] | None = None, scale: int = 1,
                   provenance: dict[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write a result (mean and standard deviation, numpy or dask) as OME-Zarr.

    ``metadata`` is the input's, as :func:`read_ome_zarr` returns it (``axes``,
    ``physical``, ``channels``, ``placement``); Y and X sizes are divided by ``scale`` and the
    result placed over its input (:func:`output_grid`). NumPy results are written plane
    by plane; dask results (a lazy prediction) chunk by chunk, mean and std in one pass so
    that every tile runs once, never holding a whole plane.
    """
    from .lazy_prediction import is_dask

    metadata = metadata or {}
    if tuple(mean.shape) != tuple(std.shape):
        raise ValueError(f"mean {mean.shape} and std {std.shape} differ in shape")
    for name, array in (("mean", mean), ("std", std)):
        kind = np.dtype(getattr(array, "dtype", np.float32)).kind
        if kind not in "biuf":  # complex would lose its imaginary part in float32
            raise ValueError(f"the {name} must be real numbers, not {np.dtype(array.dtype)}")
    with ZarrResultWriter(path, mean.shape, metadata.get("axes", ""),
                          metadata.get("physical"), scale, provenance, overwrite,
                          channels=metadata.get("channels", ()),
                          placement=metadata.get("placement")) as out:
        if is_dask(mean) or is_dask(std):
            out.store(mean, std)
        else:
            for index in np.ndindex(*mean.shape[:-2]):
                out.write(index, np.asarray(mean[index]), np.asarray(std[index]))
    return Path(path)
