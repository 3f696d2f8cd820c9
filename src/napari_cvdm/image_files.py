"""Reading TIFF, OME-TIFF and Zeiss LSM images with their axes and physical sizes, memory
bounded.

A hostile file (a few bytes declaring a huge image, tiles or strips pointing anywhere) is
refused from its header, before anything large is allocated: the declared image, the
outputs that will be computed from it and tifffile's own bookkeeping are bounded first.
Writing lives in :mod:`napari_cvdm.tiff_writer`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .physical import (PhysicalSize, fitting_channels, imagej_sizes, lsm_sizes, ome_pixels,
                       ome_position, ome_sizes)
from .validation import IN_MEMORY_OUTPUTS, output_bytes

# Bookkeeping tifffile keeps per page and per tile/strip (offsets, byte counts, objects).
BYTES_PER_CHUNK = 64
BYTES_PER_PAGE = 4096
MAX_PAGES = 1_000_000
RGB_PHOTOMETRIC = 2  # the TIFF PhotometricInterpretation of a colour (RGB) image


@dataclass
class ImageFile:
    """Pixels of an image file with its axes (tifffile letters) and physical sizes."""

    data: np.ndarray
    axes: str = ""
    pixel_size: tuple[float, float] | None = None  # (y, x) in ``unit`` per pixel
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    physical: dict[str, PhysicalSize] = field(default_factory=dict)  # "X", "Y", "Z", "T"
    channels: tuple[str, ...] = ()  # the OME channel names, one per channel of the C axis
    position: dict[str, PhysicalSize] = field(default_factory=dict)  # OME stage position


class _Refused(Exception):
    """A file read_tiff refuses with its own message."""


def max_image_bytes() -> int | None:
    """The memory an input and its outputs may use: half of this computer's (None: any)."""
    from .validation import MAX_OUTPUT_FRACTION, memory_bytes

    total = memory_bytes()
    return int(total * MAX_OUTPUT_FRACTION) if total else None


def _declared_bytes(tif, series) -> int:
    """Memory to read ``series``: the decoded image plus tifffile's bookkeeping."""
    image = int(np.prod(series.shape, dtype=np.float64)) * series.dtype.itemsize
    pages = len(series.pages) if hasattr(series, "pages") else 1
    chunks = 0
    for page in series.pages[:1]:
        if page is not None and hasattr(page, "dataoffsets"):
            chunks = len(page.dataoffsets)
    return image + pages * (BYTES_PER_PAGE + chunks * BYTES_PER_CHUNK)


def count_pages(path: Path, limit: int = MAX_PAGES) -> int:
    """The number of images (IFDs) in a TIFF, from its chain of offsets, without tifffile.

    A chain that loops back on itself (a damaged or hostile file that would make a reader
    run for ever) or that is longer than ``limit`` is refused.
    """
    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            raise _Refused(f"{path} could not be read as a TIFF image (not a TIFF file)")
        order = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
            count_fmt, entry, offset_fmt, offset = "Q", 20, "Q", head[8:16]
        else:
            count_fmt, entry, offset_fmt, offset = "H", 12, "I", head[4:8]
        if len(offset) < struct.calcsize(offset_fmt):
            raise _Refused(f"{path} could not be read as a TIFF image (truncated header)")
        position = struct.unpack(order + offset_fmt, offset)[0]
        seen: set[int] = set()
        while position:
            if position in seen:
                raise _Refused(f"{path} is damaged: its chain of images loops back on itself")
            if len(seen) >= limit:
                raise _Refused(f"{path} has more than {limit:,} images; split it")
            seen.add(position)
            fh.seek(position)
            raw = fh.read(struct.calcsize(count_fmt))
            if len(raw) < struct.calcsize(count_fmt):
                break
            entries = struct.unpack(order + count_fmt, raw)[0]
            fh.seek(position + len(raw) + entries * entry)
            raw = fh.read(struct.calcsize(offset_fmt))
            if len(raw) < struct.calcsize(offset_fmt):
                break
            position = struct.unpack(order + offset_fmt, raw)[0]
        else:
            return len(seen)
    # The chain runs past the end of the file. Not even one image: tifffile says what is
    # wrong. A later one (an interrupted copy): tifffile would only log it and read the
    # images before it, so the file is refused.
    if len(seen) > 1:
        raise _Refused(f"{path} is truncated: image {len(seen)} of its chain runs past the end "
                       "of the file (an interrupted copy or save?); copy or save it again")
    return len(seen)


def _is_reduced(page) -> bool:
    """Whether ``page`` (a TiffPage, or a TiffFrame: its keyframe's tags) is a
    reduced-resolution image of another (NewSubfileType bit 0: a thumbnail or preview)."""
    page = page if hasattr(page, "is_reduced") else page.keyframe
    return bool(page.is_reduced)


def _images(tif) -> list:
    """The file's series less those made only of reduced-resolution pages (the thumbnails
    a Zeiss LSM file keeps beside each plane, a preview image): not images of their own."""
    images = []
    for series in tif.series:
        pages = [page for page in _listed_pages(series) if page is not None]
        if not pages or not all(_is_reduced(page) for page in pages):
            images.append(series)
    return images or list(tif.series)


def _check_all_pages_read(path: Path, tif, kind: str) -> None:
    """Pages of the file that no series holds (thumbnails aside) are refused: tifffile
    reads only an OME file's declared planes, so a file whose metadata counts too few would
    be cut without a word, and of a plain TIFF whose pages differ in shape or type only the
    pages like the first."""
    declared = {page.index for series in tif.series for page in series.pages
                if page is not None and page.parent is tif}
    extra = [i for i in range(len(tif.pages)) if i not in declared]
    extra = [i for i in extra if not _is_reduced(_as_page(tif.pages[i]))]
    if not extra:
        return
    if kind == "ome":
        raise _Refused(f"{path}: its OME metadata declares {len(declared)} planes but the "
                       f"file holds {len(declared) + len(extra)} pages (damaged or edited "
                       "metadata, or pages added after it was written); tifffile would read "
                       "only the declared planes and drop the others")
    raise _Refused(f"{path} holds {len(declared) + len(extra)} pages of different shapes or "
                   f"pixel types (separate images; the first {len(declared)} alike) and one "
                   "file is one image here; save each as its own TIFF")


def _as_page(page):
    """A TiffFrame as the TiffPage it is (its own tags, read from the file)."""
    return page.aspage() if hasattr(page, "aspage") else page


def _check_declared(path: Path, tif, scale: int | None):
    """The series :func:`read_tiff` reads, after the checks made from the file's headers."""
    if not tif.series:
        raise _Refused(f"{path} could not be read as a TIFF image (it contains no image "
                       "data)")
    images = _images(tif)
    if len(images) > 1:
        shapes = ", ".join(str(tuple(s.shape)) for s in images[:4])
        more = ", ..." if len(images) > 4 else ""
        raise _Refused(f"{path} holds {len(images)} separate images (series such as "
                       f"stage positions: {shapes}{more}) and one file is one image here; "
                       "save each as its own TIFF (Python: tifffile.imread(path, series=i))")
    series = images[0]
    listed, declared = _listed_pages(series), len(getattr(series, "pages", ()))
    present = sum(page is not None for page in listed)
    if len(listed) < declared:
        raise _Refused(f"{path} holds only {present} of the {declared} planes its metadata "
                       "declares (an acquisition or a copy that stopped early?)")
    missing = declared - present
    if missing:
        raise _Refused(f"{path} is missing {missing} of the {len(series.pages)} planes its "
                       "metadata declares (a file of a multi-file OME-TIFF not copied, or "
                       "damaged metadata); tifffile would fill them with zeros")
    if getattr(series, "kind", "") in ("ome", "generic"):
        _check_all_pages_read(path, tif, series.kind)
    shape = tuple(int(n) for n in series.shape)
    if len(shape) < 2 or any(n <= 0 for n in shape):
        raise _Refused(f"{path} declares an empty image (shape {shape})")
    declared = _declared_bytes(tif, series)
    if scale:
        declared += output_bytes(shape, scale, IN_MEMORY_OUTPUTS)
    limit = max_image_bytes()
    if limit is not None and declared > limit:
        what = "with its outputs " if scale else ""
        raise _Refused(f"{path} declares an image of shape {shape} ({series.dtype}) that "
                       f"{what}needs {declared / 2**30:.1f} GiB, more than half of this "
                       "computer's memory; crop it or process it in parts")
    for page in series.pages[:1]:
        _check_page(path, page)
    return series


def _listed_pages(series) -> list:
    """The pages of ``series`` the file holds: tifffile lists the pages its metadata
    declares and runs out (IndexError) where the file's chain of pages ends early; a page
    it cannot find in a multi-file dataset is None."""
    listed = []
    try:
        for page in getattr(series, "pages", ()):
            listed.append(page)
    except IndexError:
        pass
    return listed


def _check_page(path: Path, page) -> None:
    """Tiles and strips: their count and sizes fit the declared image (no huge tiles)."""
    if page is None or not hasattr(page, "dataoffsets"):
        return
    expected = 1
    if page.is_tiled:
        tiles = [math.ceil(n / max(t, 1)) for n, t in
                 zip((page.imagedepth, page.imagelength, page.imagewidth),
                     (page.tiledepth, page.tilelength, page.tilewidth))]
        expected = int(np.prod(tiles, dtype=np.float64))
        tile_bytes = page.tiledepth * page.tilelength * page.tilewidth * page.samplesperpixel
        image_bytes = page.imagedepth * page.imagelength * page.imagewidth * \
            page.samplesperpixel
        if tile_bytes > max(image_bytes, 1) * 16 and tile_bytes > 2**24:
            raise _Refused(f"{path} is damaged: its tiles ({page.tilelength} x "
                           f"{page.tilewidth}) are far larger than its image")
    if page.is_tiled and len(page.dataoffsets) < expected // max(page.samplesperpixel, 1):
        raise _Refused(f"{path} is damaged: it has {len(page.dataoffsets)} tiles, its image "
                       f"needs {expected}")


def _warn_about_empty_segments(path: Path, series) -> None:
    """Warn where tiles or strips of the image hold no data (offset or byte count 0): TIFF
    readers give zeros there, so a damaged file would otherwise give a plausible result
    with a silent hole. (A sparse file written that way on purpose gets the warning too.)"""
    empty = total = 0
    for page in series.pages:
        counts = getattr(page, "databytecounts", None)
        offsets = getattr(page, "dataoffsets", None)
        if counts is None or offsets is None:
            continue
        total += len(counts)
        empty += sum(1 for count, offset in zip(counts, offsets) if not count or not offset)
    if empty:
        kind = "tiles" if getattr(series.pages[0], "is_tiled", False) else "strips"
        warnings.warn(f"{path}: {empty} of {total} {kind} hold no data (a damaged or sparse "
                      "file); they are read as zeros, and the result there means nothing",
                      stacklevel=3)


class _HeldLogs(logging.Filter):
    """Holds back one thread's records (other threads' pass, as do this one's afterwards)."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record):
        if record.thread != self.thread:
            return True
        self.records.append(record)
        return False


@contextlib.contextmanager
def held_tifffile_logs(pass_on: bool = True):
    """tifffile's log messages (what it finds odd in a file) from this thread held back;
    with ``pass_on``, logged after the block if it did not raise, so a refused file gets
    our one clear error and not tifffile's lines too. Without, dropped (probing files).
    Thread-safe: a filter per block, not a change of the logger's level or handlers."""
    logger = logging.getLogger("tifffile")
    held = _HeldLogs()
    logger.addFilter(held)
    try:
        yield held  # its ``records`` may be cleared: said another way by the caller
    finally:
        logger.removeFilter(held)
    if pass_on:  # only reached when the block did not raise
        for record in held.records:
            logger.handle(record)


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Whatever goes wrong reading ``path`` as a ValueError that names it (tifffile raises
    many types for damaged files)."""
    if not path.is_file():
        raise ValueError(f"input file not found: {path}")
    try:
        yield
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    except MemoryError:
        raise ValueError(f"{path} could not be read: not enough memory for its image") from None
    except Exception as exc:
        raise ValueError(f"{path} could not be read as a TIFF image ({type(exc).__name__}: "
                         f"{exc})") from None


def probe_tiff(path: str | os.PathLike, scale: int | None = None) -> None:
    """The checks :func:`read_tiff` makes before it reads any pixels (not a TIFF, damaged
    structure, several images, too large), predict()'s checks of the pixel type and layout
    (boolean, complex, RGB: ``validation.check_image``) and whether the outputs can be
    written with the file's axes, each naming the file, from its headers alone: a batch
    finds a bad file before its work starts, not midway. ValueError as read_tiff's."""
    import tifffile

    from .tiff_writer import ome_axes
    from .validation import check_image

    path = Path(path)
    with _read_errors(path):
        count_pages(path)
        # what tifffile logs is said once, when the file is read
        with held_tifffile_logs(pass_on=False), tifffile.TiffFile(path) as tif:
            series = _check_declared(path, tif, scale)
            axes, colour = _colour_last(series)
            shape, dtype = tuple(series.shape), series.dtype
    if colour is not None:
        shape = shape[:colour] + shape[colour + 1:] + (shape[colour],)
    stand_in = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))
    try:
        check_image(stand_in)  # the header's shape and type, no pixels
        ome_axes(axes, len(shape))  # axes the outputs can be written with
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}{planes_as_colours_hint(colour, dtype)}") from None


def dataset_files(path: str | os.PathLike) -> tuple[Path, ...]:
    """The files a TIFF's image spans, sorted: several for a multi-file OME-TIFF dataset
    (Micro-Manager's, say), any of whose files reads the whole of it; ``(path,)`` for an
    image in one file, or where the file cannot tell (its reading says why)."""
    import tifffile

    path = Path(path)
    try:
        with held_tifffile_logs(pass_on=False), tifffile.TiffFile(path) as tif:
            series = tif.series[0] if tif.series else None
            if series is None or not getattr(series, "is_multifile", False):
                return (path,)
            files = {Path(page.parent.filehandle.path).resolve()
                     for page in series.pages if page is not None}
    except Exception:  # noqa: BLE001 - read_tiff says what is wrong with the file
        return (path,)
    return tuple(sorted(files)) if len(files) > 1 else (path,)


def read_tiff(path: str | os.PathLike, scale: int | None = None) -> ImageFile:
    """Read a TIFF or OME-TIFF with its axes and physical sizes; clear errors for bad files.

    Anything wrong with the file (damaged, truncated, not a TIFF, an image that with its
    outputs at ``scale`` would need more than half of this computer's memory) raises
    ValueError before the pixels are read; the file is only read. OME metadata that does
    not parse gives the pixels, a warning and no physical sizes (never wrong ones). An RGB
    file stored plane by plane comes with its colour axis last (axes ``...YXS``), as one
    stored interleaved does. Thumbnails (reduced-resolution pages, as a Zeiss LSM file
    keeps) are passed over; an OME-TIFF with pages its metadata does not declare is refused.
    """
    import tifffile

    path = Path(path)
    with _read_errors(path):
        count_pages(path)
        with held_tifffile_logs() as logs, tifffile.TiffFile(path) as tif:
            series = _check_declared(path, tif, scale)
            out = np.empty(series.shape, dtype=series.dtype)
            data = np.asarray(series.asarray(out=out, maxworkers=1)).reshape(series.shape)
            axes, colour = _colour_last(series)
            if colour is not None:  # as interleaved RGB is: refused as such downstream
                data = np.moveaxis(data, colour, -1)
            _warn_about_empty_segments(path, series)
            image = _ome_image(tif, series)
            if _ome_rejected(tif, series):
                _warn_metadata_ignored(path, tif, series, logs)
                physical, channels, position = {}, (), {}
            elif image is None:
                warnings.warn(f"{path}: its OME metadata does not say which of its images "
                              "the pixels read belong to; they are read without the "
                              "metadata's pixel sizes, channel names or position",
                              stacklevel=2)
                physical, channels, position = {}, (), {}
            else:
                physical = _physical(path, tif, axes, image, logs)
                channels = _channel_names(tif, axes, data.shape, image)
                position = ome_position(tif.ome_metadata, image) if tif.is_ome and \
                    tif.ome_metadata else {}
    pixel_size, unit = None, ""
    if "X" in physical and "Y" in physical and physical["X"].unit == physical["Y"].unit:
        pixel_size = (physical["Y"].size, physical["X"].size)
        unit = physical["X"].unit
    return ImageFile(data, axes, pixel_size, unit, physical=physical, channels=channels,
                     position=position)


def _ome_image(tif, series) -> int | None:
    """Which OME ``Image`` of the file's metadata describes ``series`` (0 for a file without
    OME metadata; None where it cannot be told). A file may hold a preview or thumbnail image
    before the main one, whose metadata (another pixel size) is not the main image's."""
    import xml.etree.ElementTree as ET

    if not tif.is_ome or not tif.ome_metadata or getattr(series, "kind", "") != "ome":
        return 0
    read = [s for s in tif.series if getattr(s, "kind", "") == "ome"]
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return 0  # _physical says the metadata cannot be read
    images = [el for el in root if el.tag == "Image" or el.tag.endswith("}Image")]
    index = next(i for i, s in enumerate(read) if s is series)
    if len(images) == len(read):  # tifffile made one series per Image, in order
        return index
    if len(images) <= 1:
        return 0
    named = [i for i, el in enumerate(images) if el.get("Name") == series.name]
    return named[0] if len(named) == 1 else None


def _ome_rejected(tif, series) -> bool:
    """Whether tifffile found the file's OME metadata not to describe its pages (a shape,
    type or plane count that the pages contradict) and read the pages as stored instead.
    (Metadata that does not parse at all is said so by :func:`_physical`.)"""
    import xml.etree.ElementTree as ET

    if not tif.is_ome or getattr(series, "kind", "") == "ome" or not tif.ome_metadata:
        return False
    try:
        ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return False
    return True


def _warn_metadata_ignored(path: Path, tif, series, logs) -> None:
    """One warning for OME metadata tifffile passed over, in place of its log lines (one of
    which says missing data are zeroed, which is not what is read)."""
    import xml.etree.ElementTree as ET

    logs.records.clear()
    why = ""
    try:
        pixels = next(el for el in ET.fromstring(tif.ome_metadata).iter()
                      if el.tag.endswith("}Pixels") or el.tag == "Pixels")
        declared = " x ".join(pixels.get(f"Size{a}", "?") for a in "TZCYX")
        why = f" (it declares T x Z x C x Y x X = {declared}; the pages hold " \
              f"{' x '.join(map(str, series.shape))})"
    except (ET.ParseError, StopIteration, TypeError):
        pass
    warnings.warn(f"{path}: its OME metadata does not describe the file's pages{why}; the "
                  "pixels are read as stored, without the metadata's pixel sizes, channel "
                  "names or position", stacklevel=4)


def planes_as_colours_hint(colour: int | None, dtype) -> str:
    """For a file stored as RGB plane by plane whose pixels are not 8-bit: a hint that these
    may be planes or channels that were never colours (``tifffile.imwrite`` stores a 3- or
    4-plane array as RGB unless told otherwise)."""
    if colour is None or np.dtype(dtype) == np.uint8:
        return ""
    return ("; a 16-bit or float file stored as RGB is often 3 or 4 planes or channels "
            "saved by tifffile.imwrite, which stores such an array as RGB unless told "
            "photometric='minisblack': save it again that way to predict each plane")


def _colour_last(series) -> tuple[str, int | None]:
    """The axes :func:`read_tiff` gives ``series``, and the index of the colour axis it moves
    last (None: the axes as stored): an RGB image stored colour plane by colour plane
    (tifffile: an S axis before Y, X) comes as one stored interleaved does."""
    page = series.pages[0] if getattr(series, "pages", None) else None
    axes = series.axes
    if (page is None or int(getattr(page, "photometric", 0)) != RGB_PHOTOMETRIC
            or "S" not in axes or axes.endswith("S")):
        return axes, None
    return axes.replace("S", "") + "S", axes.index("S")


def _channel_names(tif, axes: str, shape: tuple[int, ...], image: int = 0) -> tuple[str, ...]:
    """The OME channel names, where every channel of the C axis has one; else () (no OME,
    OME-XML that does not parse, a name missing, a count that does not fit)."""
    import xml.etree.ElementTree as ET

    if "C" not in axes:
        return ()
    if not tif.is_ome and tif.is_imagej:
        return _imagej_channel_names(tif.imagej_metadata or {}, axes, shape)
    if not tif.is_ome or not tif.ome_metadata:
        return ()
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return ()  # _physical warns about it
    pixels = ome_pixels(root, image)
    if pixels is None:
        return ()
    return fitting_channels([el.get("Name") for el in pixels if el.tag.endswith("}Channel")
                             or el.tag == "Channel"], axes, shape)


def _imagej_channel_names(imagej: dict, axes: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    """An ImageJ hyperstack's slice labels as channel names: one per channel, or one per
    plane where every channel has the same label in all its planes (ImageJ orders planes
    C, then Z, then T); else ()."""
    labels = imagej.get("Labels")
    channels = shape[axes.index("C")]
    if not isinstance(labels, (list, tuple)) or not labels or len(labels) % channels:
        return ()
    names = [labels[c::channels] for c in range(channels)]
    if any(len(set(map(str, name))) != 1 for name in names):
        return ()
    return fitting_channels([str(name[0]) for name in names], axes, shape)


def _physical(path: Path, tif, axes: str, image: int = 0,
              logs: _HeldLogs | None = None) -> dict[str, PhysicalSize]:
    if tif.is_ome and tif.ome_metadata:
        try:
            return ome_sizes(tif.ome_metadata, image)
        except ValueError as exc:
            if logs is not None:  # tifffile's own line on it ("OME series raised ...")
                logs.records[:] = [r for r in logs.records if "OME" not in r.getMessage()]
            warnings.warn(f"{path}: the OME metadata could not be read ({exc}); the pixels "
                          "are read without physical sizes", stacklevel=3)
            return {}
    if tif.is_lsm:
        return lsm_sizes(tif.lsm_metadata)
    return imagej_sizes(tif.pages[0].tags, tif.imagej_metadata)
