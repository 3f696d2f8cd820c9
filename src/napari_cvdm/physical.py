"""Physical pixel sizes and time steps of image files (OME, ImageJ, Zeiss LSM): read,
normalise units, scale.

Sizes are kept per axis letter ("X", "Y", "Z", "T") with a unit from a short list that
OME, ImageJ and napari all understand; anything else is converted (Å to nm, inch to µm)
or dropped with a warning (silently where the unit says there is no size: ImageJ's
'pixel'), so a file is never written with a unit it cannot hold.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

LENGTH_UNITS = ("pm", "nm", "µm", "mm", "cm", "m")
NM_PER_UNIT = {"pm": 1e-3, "nm": 1.0, "µm": 1e3, "mm": 1e6, "cm": 1e7, "m": 1e9}
TIME_UNITS = ("ns", "µs", "ms", "s", "min", "h")
# Other spellings -> (factor, unit): value * factor in unit.
ALIASES = {
    "um": (1.0, "µm"), "μm": (1.0, "µm"), "micron": (1.0, "µm"), "microns": (1.0, "µm"),
    "\\u00b5m": (1.0, "µm"), "micrometer": (1.0, "µm"), "micrometre": (1.0, "µm"),
    "\u00c5": (0.1, "nm"), "\u212b": (0.1, "nm"), "angstrom": (0.1, "nm"), "A": (0.1, "nm"),
    "nanometer": (1.0, "nm"), "millimeter": (1.0, "mm"), "inch": (25400.0, "µm"),
    "in": (25400.0, "µm"), "sec": (1.0, "s"), "second": (1.0, "s"), "seconds": (1.0, "s"),
    "us": (1.0, "µs"), "μs": (1.0, "µs"), "msec": (1.0, "ms"), "minute": (1.0, "min"),
    "minutes": (1.0, "min"), "hour": (1.0, "h"), "hours": (1.0, "h"),
    # napari's (pint) spellings
    "picometer": (1.0, "pm"), "centimeter": (1.0, "cm"), "meter": (1.0, "m"),
    "nanosecond": (1.0, "ns"), "microsecond": (1.0, "µs"), "millisecond": (1.0, "ms"),
}
# Units meaning "no physical size" (napari's default is "pixel").
NO_UNIT = ("", "pixel", "pixels", "px", "none", "dimensionless")
NAPARI_UNITS = {"pm": "picometer", "nm": "nanometer", "µm": "micrometer", "mm": "millimeter",
                "cm": "centimeter", "m": "meter", "ns": "nanosecond", "µs": "microsecond",
                "ms": "millisecond", "s": "second", "min": "minute", "h": "hour"}
MIN_SIZE, MAX_SIZE = 1e-12, 1e12  # beyond these a size tag is damaged, not physical


@dataclass(frozen=True)
class PhysicalSize:
    """The size of one pixel (or the time step) along an axis, in ``unit``."""

    size: float
    unit: str


def normalise(size: Any, unit: Any, time: bool = False) -> PhysicalSize | None:
    """A checked size in a known unit, or None (with a warning) when it cannot be kept;
    None without one for a unit that means "no physical size" (NO_UNIT: 'pixel', ...)."""
    if isinstance(size, str) and size.count(",") == 1 and "." not in size:
        whole, part = size.strip().split(",")
        if len(part) == 3 and whole.lstrip("+-") not in ("", "0"):
            warnings.warn(f"the {'time step' if time else 'pixel size'} {size!r} may be "
                          f"{whole}.{part} or {whole}{part} (a decimal comma or a thousands "
                          "separator); it is not kept", stacklevel=2)
            return None
        size = size.replace(",", ".")  # a decimal comma, as locale-bound writers put it
    try:
        size = float(size)
    except (TypeError, ValueError):
        if isinstance(size, str):
            warnings.warn(f"the {'time step' if time else 'pixel size'} {size!r} is not a "
                          "number; it is not kept", stacklevel=2)
        return None
    if unit is not None and not isinstance(unit, str):
        warnings.warn(f"the unit {unit!r} is not a unit name; the size is not kept",
                      stacklevel=2)
        return None
    unit = (unit or "").strip()
    if unit and unit.lower() in NO_UNIT:
        return None  # said on purpose (ImageJ's 'pixel'): no size, nothing to warn about
    default = "s" if time else "µm"
    factor, unit = ALIASES.get(unit, ALIASES.get(unit.lower(), (1.0, unit or default)))
    size *= factor
    known = TIME_UNITS if time else LENGTH_UNITS
    if unit not in known and unit.lower() in known:
        unit = unit.lower()  # "NM", "MM": written in capitals
    if unit not in known:
        warnings.warn(f"unknown {'time' if time else 'length'} unit {unit!r}; the size is "
                      "not kept", stacklevel=2)
        return None
    if time and size == 0:
        return None  # a time step of 0: not recorded (as LSM and many OME writers mean it)
    if not (math.isfinite(size) and MIN_SIZE <= size <= MAX_SIZE):
        warnings.warn(f"implausible {'time step' if time else 'pixel size'} {size} {unit}; "
                      "it is not kept", stacklevel=2)
        return None
    return PhysicalSize(size, unit)


def _is(element, tag: str) -> bool:
    return element.tag == tag or element.tag.endswith("}" + tag)


def ome_pixels(root, image: int = 0):
    """The ``Pixels`` element of the ``image``-th OME ``Image`` (None if there is none; for
    image 0 of XML without Image elements, the first Pixels anywhere)."""
    images = [el for el in root if _is(el, "Image")]
    if image < len(images):
        return next((el for el in images[image] if _is(el, "Pixels")), None)
    if image == 0 and not images:
        return next((el for el in root.iter() if _is(el, "Pixels")), None)
    return None


def ome_sizes(xml: str, image: int = 0) -> dict[str, PhysicalSize]:
    """Sizes from OME-XML (of its ``image``-th image); ValueError if the XML does not parse."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"invalid OME-XML: {exc}") from None
    pixels = ome_pixels(root, image)
    if pixels is None:
        raise ValueError("no Pixels element in the OME-XML")
    sizes = {}
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        if value is not None:
            size = normalise(value, pixels.get(f"PhysicalSize{axis}Unit", "µm"))
            if size is not None:
                sizes[axis] = size
    if pixels.get("TimeIncrement") is not None:
        size = normalise(pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s"),
                         time=True)
        if size is not None:
            sizes["T"] = size
    elif (step := _plane_time_step(pixels)) is not None:
        sizes["T"] = step
    return sizes


def _plane_time_step(pixels) -> PhysicalSize | None:
    """The time step of planes timed one by one (``Plane`` DeltaT, as Bio-Formats writes
    instead of TimeIncrement), where they are evenly spaced; else None."""
    times: dict[int, tuple[float, str]] = {}
    for plane in pixels:
        if not (plane.tag.endswith("}Plane") or plane.tag == "Plane"):
            continue
        try:
            t, delta = int(plane.get("TheT", 0)), float(plane.get("DeltaT"))
        except (TypeError, ValueError):
            continue
        times.setdefault(t, (delta, plane.get("DeltaTUnit", "s")))
    if len(times) < 2 or len({unit for _, unit in times.values()}) != 1:
        return None
    values = [times[t][0] for t in sorted(times)]
    steps = [b - a for a, b in zip(values, values[1:])]
    step = sorted(steps)[len(steps) // 2]
    if not (math.isfinite(step) and step > 0
            and all(abs(s - step) <= 1e-3 * step + 1e-9 for s in steps)):
        return None  # uneven: no one step describes them
    return normalise(step, next(iter(times.values()))[1], time=True)


def yx_sizes(physical: dict[str, PhysicalSize] | None) -> tuple[list | None, list | None]:
    """([Y, X] sizes, [Y, X] units) of a file's physical sizes per axis, as the input checks
    take them; (None, None) where neither axis has one."""
    sizes = [(physical or {}).get(axis) for axis in "YX"]
    sizes = [p if isinstance(p, PhysicalSize) else None for p in sizes]
    if not any(sizes):
        return None, None
    return [p.size if p else None for p in sizes], [p.unit if p else None for p in sizes]


def ome_position(xml: str, image: int = 0) -> dict[str, PhysicalSize]:
    """The stage position (OME ``Plane`` PositionX/Y/Z) of the ``image``-th image, per axis, where
    every plane has the same one: {} for none, for XML that does not parse (``ome_sizes``
    says so), and for an axis whose position changes from plane to plane (a Z stack's
    PositionZ, a drifting time series), which one value cannot describe. Unlike a size, a
    position may be zero or negative; it must be finite and in a length unit."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = ome_pixels(root, image)
    planes = [] if pixels is None else \
        [el for el in pixels if el.tag.endswith("}Plane") or el.tag == "Plane"]
    out = {}
    for axis in "XYZ":
        given = {(el.get(f"Position{axis}"), el.get(f"Position{axis}Unit", "µm"))
                 for el in planes}
        if len(given) != 1 or None in next(iter(given)):
            continue
        value, unit = next(iter(given))
        try:
            value = float(value)
        except ValueError:
            continue
        factor, unit = ALIASES.get(unit, ALIASES.get(unit.lower(), (1.0, unit)))
        if unit not in LENGTH_UNITS and unit.lower() in LENGTH_UNITS:
            unit = unit.lower()
        if unit in LENGTH_UNITS and math.isfinite(value * factor):
            out[axis] = PhysicalSize(value * factor, unit)
    return out


# Pixels of 20 µm or more given in inches or centimetres (1,270 dpi or less) are the
# display resolution a graphics program writes (72, 96, 300 dpi), not a microscope's pixel:
# a camera pixel at the sample is far smaller, and microscope software writes micrometres.
DISPLAY_RESOLUTION_UM = 20.0
_MICRONS = {"inch": 25400.0, "inches": 25400.0, "in": 25400.0, "cm": 10000.0,
            "centimeter": 10000.0, "centimetre": 10000.0}


def _rational(tag) -> float | None:
    try:
        numerator, denominator = tag.value
        if numerator > 0 and denominator > 0:
            return denominator / numerator  # pixels per unit -> unit per pixel
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return None


def imagej_sizes(tags, imagej: dict[str, Any] | None) -> dict[str, PhysicalSize]:
    """Sizes from the resolution tags and ImageJ metadata (unit, yunit, spacing, zunit,
    finterval, tunit)."""
    imagej = imagej or {}
    sizes: dict[str, PhysicalSize] = {}
    if "XResolution" in tags and "YResolution" in tags:
        x, y = _rational(tags["XResolution"]), _rational(tags["YResolution"])
        resolution_unit = int(getattr(tags.get("ResolutionUnit"), "value", 1) or 1)
        unit = imagej.get("unit")
        if not isinstance(unit, str) or not unit:
            unit = {2: "inch", 3: "cm"}.get(resolution_unit, "")
        per_unit = _MICRONS.get(unit.strip().lower())
        if x is not None and y is not None and per_unit and \
                min(x, y) * per_unit >= DISPLAY_RESOLUTION_UM:
            x = y = None  # 72 or 300 dpi from a graphics program (or Fiji's "inch"): no size
        if x is not None and y is not None and not (x == y == 1.0 and not unit):
            if unit:
                # ImageJ writes yunit where Y's unit differs from X's
                y_unit = imagej.get("yunit")
                if not isinstance(y_unit, str) or not y_unit.strip() or \
                        y_unit.strip().lower() in NO_UNIT:
                    y_unit = unit  # none, or one that says no size: X's
                sizes_x = normalise(x, unit)
                sizes_y = normalise(y, y_unit)
                if sizes_x is not None and sizes_y is not None and \
                        sizes_y.unit != sizes_x.unit:  # both in X's unit
                    sizes_y = PhysicalSize(sizes_y.size * NM_PER_UNIT[sizes_y.unit]
                                           / NM_PER_UNIT[sizes_x.unit], sizes_x.unit)
                if sizes_x is not None and sizes_y is not None:
                    sizes["X"], sizes["Y"] = sizes_x, sizes_y
            elif MIN_SIZE <= x <= MAX_SIZE and MIN_SIZE <= y <= MAX_SIZE:
                sizes["X"], sizes["Y"] = PhysicalSize(x, ""), PhysicalSize(y, "")
    length_unit = sizes["X"].unit if "X" in sizes else "µm"
    if "spacing" in imagej and (size := normalise(imagej["spacing"], imagej.get("zunit")
                                                  or imagej.get("unit") or length_unit)):
        sizes["Z"] = size
    if "finterval" in imagej and (size := normalise(imagej["finterval"],
                                                    imagej.get("tunit", "s"), time=True)):
        sizes["T"] = size
    return sizes


# Axis -> (CZ_LSMINFO field in tifffile's lsm_metadata, factor to the unit, unit): voxel
# sizes are in metres, the time interval in seconds.
LSM_FIELDS = {"X": ("VoxelSizeX", 1e6, "µm"), "Y": ("VoxelSizeY", 1e6, "µm"),
              "Z": ("VoxelSizeZ", 1e6, "µm"), "T": ("TimeIntervall", 1.0, "s")}


def lsm_sizes(lsm: dict[str, Any] | None) -> dict[str, PhysicalSize]:
    """Sizes from a Zeiss LSM file's CZ_LSMINFO (tifffile's ``lsm_metadata``); a size of 0
    (not recorded: the Z step of a single plane, the interval of no time series) is left
    out."""
    sizes: dict[str, PhysicalSize] = {}
    for axis, (key, factor, unit) in LSM_FIELDS.items():
        try:
            value = float((lsm or {}).get(key)) * factor
        except (TypeError, ValueError):
            continue
        if value == 0:
            continue
        # 12 significant digits: 1e-07 m is 0.1 µm, not 0.09999999999999999
        size = normalise(float(f"{value:.12g}"), unit, time=axis == "T")
        if size is not None:
            sizes[axis] = size
    return sizes


def fitting_channels(names, axes: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    """``names`` where there is one non-empty name per channel of the C axis of an image
    with ``axes`` and ``shape``; else () (no C axis, another count, a name missing)."""
    names = tuple(names or ())
    if not names or "C" not in axes or len(axes) != len(shape) \
            or len(names) != shape[axes.index("C")]:
        return ()
    if not all(isinstance(n, str) and n.strip() for n in names):
        return ()
    return names


def output_sizes(sizes: dict[str, PhysicalSize], scale: int) -> dict[str, PhysicalSize]:
    """Sizes of the output grid: X and Y divided by ``scale``, Z and T unchanged."""
    return {axis: PhysicalSize(s.size / scale, s.unit) if axis in "XY" else s
            for axis, s in sizes.items()}
