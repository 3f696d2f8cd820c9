"""Input checks with messages a microscopist can act on (never a traceback from torch).

:func:`check_image` looks at the shape and pixel type only (dask, zarr and other lazy
arrays stay lazy); :func:`check_plane` loads one Y, X plane and checks its values,
including the limits that come from the float32 outputs (see docs/reliability.md):

- every value must fit in float32 (the mean is float32, in input units);
- the intensity range must be small enough that the variance, in squared input units,
  fits in float32, and large enough that it does not underflow to zero;
- an image finer than float32 (float64, 32/64-bit integers) must keep enough float32 grey
  levels: values around 2**40 that differ by a few hundred cannot be told apart in
  float32, and are refused with the fix (subtract the offset) instead of being flattened.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Largest |value|: the mean output is float32. (A non-constant image near this limit is
# refused by the range or the grey-level check below, so outputs never round to inf.)
MAX_ABS_VALUE = FLOAT32_MAX
# Largest max - min: the variance is in squared units, float32 (and at most a few times
# the squared half-range in normalised units), so (1e18 / 2) ** 2 * 4.5 stays below 3.4e38.
MAX_RANGE = 1e18
# Smallest max - min of a non-constant image: below this the variance underflows float32.
MIN_RANGE = 1e-15
# Fewest float32 steps across the image's range (for inputs finer than float32).
MIN_LEVELS = 256
# Largest output the planner accepts, as a fraction of this computer's memory.
MAX_OUTPUT_FRACTION = 0.5


def _power_of_ten(value: float) -> str:
    """``value`` rounded down to a power of ten, as text ("1e12"); the largest float64 power
    of ten where ``value`` is beyond it (a range of a few subnormal numbers)."""
    if not value > 0:
        return "1"
    if not math.isfinite(value):
        return "1e308"
    return f"1e{min(int(math.floor(math.log10(value))), 308)}"


def _as_dtype(image) -> np.dtype:
    """The NumPy pixel type of a NumPy, dask, zarr, xarray or torch (CPU) array."""
    dtype = image.dtype
    try:
        return np.dtype(dtype)
    except TypeError:
        pass
    try:  # torch dtypes, and anything else whose element converts to NumPy
        import torch

        if isinstance(dtype, torch.dtype):
            return torch.empty(0, dtype=dtype).numpy().dtype
    except (ImportError, TypeError, RuntimeError):
        pass
    raise ValueError(f"unsupported pixel type {dtype}; use a NumPy-compatible integer or "
                     "float array")


def _from_torch(tensor):
    """A torch tensor as NumPy (its pixels shared where it is on the CPU, never modified):
    detached from autograd, copied off the GPU. A pixel type NumPy lacks (bfloat16) stays
    a CPU tensor, which :func:`check_image` refuses with its message."""
    tensor = tensor.detach()
    if tensor.is_meta:
        raise ValueError("the image is a torch tensor on the 'meta' device, which holds a "
                         "shape but no pixels; give a tensor with its data")
    if tensor.layout != sys.modules["torch"].strided:
        tensor = tensor.to_dense()  # sparse tensors
    tensor = tensor.cpu().resolve_conj().resolve_neg()
    try:
        return tensor.numpy()
    except TypeError:
        return tensor


def _unmasked(image):
    """A NumPy masked array without masked pixels as its plain data; ValueError where any
    pixel is masked (predict would use the pixels under the mask as they are)."""
    masked = int(np.ma.count_masked(image))
    if masked:
        raise ValueError(f"the image is a masked array with {masked} masked pixel(s), and "
                         "CVDM uses every pixel; fill them first, e.g. image.filled(value) "
                         "with a background value such as np.ma.median(image)")
    return np.ma.getdata(image)


def as_array(image):
    """``image`` itself where it is an array (NumPy, dask, zarr: it has a shape and a pixel
    type), else as a NumPy array (nested lists, a list of planes, torch tensors, also ones
    that require grad or live on a GPU; the pixels of an ``ImageFile``); ValueError where it
    cannot be one (a file name among them), or where it is a masked array with masked
    pixels. None is returned as it is (:func:`check_image` refuses it)."""
    torch = sys.modules.get("torch")  # a tensor exists only where torch is imported
    if torch is not None and isinstance(image, torch.Tensor):
        return _from_torch(image)
    if isinstance(image, np.ma.MaskedArray):
        return _unmasked(image)
    if image is None or (hasattr(image, "shape") and hasattr(image, "dtype")):
        return image
    if isinstance(image, (str, bytes, os.PathLike)):
        raise ValueError(f"the image is a file name ({os.fsdecode(image)!r}), not pixels: read "
                         "it first (napari_cvdm.image_files.read_tiff(path).data, or "
                         "tifffile.imread), or use 'cvdm predict' for files")
    pixels = getattr(image, "data", None)  # an ImageFile (read_tiff): its pixels
    if pixels is not None and hasattr(pixels, "shape") and hasattr(pixels, "dtype"):
        return as_array(pixels)
    try:
        return np.asarray(image)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the image could not be turned into an array ({exc}); pass one "
                         "2D array, or a stack whose planes all have the same shape "
                         "(for a napari multiscale image, pick one level)") from None


def check_image(image) -> tuple[tuple[int, ...], np.dtype]:
    """Validate shape and dtype without loading the data (dask/zarr stay lazy)."""
    if image is None:
        raise ValueError("no image given (None)")
    image = as_array(image)
    try:
        shape = tuple(int(s) for s in image.shape)
    except (TypeError, ValueError):
        raise ValueError(f"the image has unknown dimensions {tuple(image.shape)} (a dask array "
                         "with unknown chunk sizes?); call .compute_chunk_sizes() first") from None
    dtype = _as_dtype(image)
    if len(shape) < 2:
        what = "a single value" if not shape else "a 1D array"
        raise ValueError(f"expected an image with at least 2 dimensions (Y, X), got shape "
                         f"{shape}; {what} is not an image")
    if 0 in shape:
        raise ValueError(f"the image is empty (shape {shape})")
    if dtype == np.bool_:
        raise ValueError("the image is boolean (a mask or labels); CVDM needs intensities. "
                         "Convert it with image.astype('float32') if this is intended")
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError("the image has complex values; pass the magnitude (np.abs) or the "
                         "real part")
    if dtype.kind in "mM" or not (np.issubdtype(dtype, np.integer)
                                  or np.issubdtype(dtype, np.floating)):  # timedelta: integer
        raise ValueError(f"unsupported pixel type {dtype}; use integer or float images")
    if len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4:
        raise ValueError(f"the image looks like RGB/RGBA (shape {shape}, last axis "
                         f"{shape[-1]}); split the colour channels and run each one "
                         "(in napari: right-click the layer > Split RGB)")
    if len(shape) >= 3 and shape[-1] == 2 and shape[-2] > 4:
        raise ValueError(f"the last axis has size 2 (shape {shape}): this looks like two "
                         "channels stored as a trailing axis, not Y, X; run each channel "
                         "(image[..., 0], image[..., 1]) so that the last two axes are Y, X")
    if len(shape) >= 3 and shape[-1] == 1 and shape[-2] > 4:
        raise ValueError(f"the last axis has size 1 (shape {shape}): this looks like one "
                         "channel stored as a trailing axis, not Y, X; pass image[..., 0] "
                         "(or np.squeeze(image)) so that the last two axes are Y, X")
    return shape, dtype


def _finer_than_float32(dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.floating):
        return dtype.itemsize > 4
    return np.issubdtype(dtype, np.integer) and dtype.itemsize >= 4


def check_plane(plane, index: tuple[int, ...] = ()) -> np.ndarray:
    """Load one Y, X plane as float64; refuse NaN/inf and values float32 outputs cannot hold."""
    data = np.asarray(plane)
    source = data.dtype
    if data.dtype != np.float64:
        with np.errstate(over="ignore", invalid="ignore"):
            data = data.astype(np.float64)
    finite = np.isfinite(data)
    bad = int(data.size - finite.sum())
    low, high = (float(data.min()), float(data.max())) if not bad else (0.0, 0.0)
    check_plane_values(low, high, bad, source, index)
    return data


def check_plane_values(low: float, high: float, nonfinite: int, dtype,
                       index: tuple[int, ...] = ()) -> None:
    """The checks of :func:`check_plane` from a plane's summary (its smallest and largest
    value, how many values are NaN or infinite, its pixel type), for planes that are read
    block by block and never held whole."""
    where = f" in plane {index}" if index else ""
    if nonfinite:
        raise ValueError(f"the image contains {nonfinite} NaN or infinite value(s){where}; "
                         "crop them away (registration and stitching leave NaN borders: "
                         "filled with a constant, they change the reconstruction of the rest), "
                         "or replace scattered ones by their neighbours' median (Fiji: Process "
                         "> Math > Remove NaNs; Python: scipy.ndimage.generic_filter(image, "
                         "np.nanmedian, 3) where np.isnan(image))")
    largest = max(abs(low), abs(high))
    if largest > MAX_ABS_VALUE:
        raise ValueError(f"the image has values up to {largest:.3g}{where}, beyond what the "
                         f"float32 outputs can hold; divide the image by a constant first "
                         f"(e.g. image / {_power_of_ten(largest / 1e6)})")
    if high > low:
        span = high - low
        if span > MAX_RANGE:
            raise ValueError(
                f"the intensity range{where} ({low:.3g} to {high:.3g}) is too large: the "
                "variance, in squared intensity units, would overflow float32. Divide the "
                f"image by a constant first (e.g. image / {_power_of_ten(span / 1e6)}), "
                "or clip outlier pixels")
        # a tiny range first: subtracting an offset cannot help values below float32's
        if span < MIN_RANGE:
            raise ValueError(
                f"the intensity range{where} is only {span:.3g} ({low:.3g} to {high:.3g}): "
                "the variance, in squared units, would underflow float32. Multiply the image "
                f"by a constant first (e.g. image * {_power_of_ten(1e-3 / span)})")
        levels = span / float(np.spacing(np.float32(largest)))
        if _finer_than_float32(np.dtype(dtype)) and levels < MIN_LEVELS:
            raise ValueError(
                f"the image{where} has values around {largest:.6g} that vary by only "
                f"{span:.3g}: the float32 outputs would keep about {max(int(levels), 1)} grey "
                "level(s) of it. Subtract the offset first, e.g. image - image.min() "
                "(and add it back to the mean afterwards)")


def check_scale(scale) -> None:
    """ValueError unless ``scale`` (a model's enlargement) is a whole number of at least 1:
    0 divides by zero, a negative one places nothing, True is no number of pixels."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer (the model's enlargement: a whole "
                         f"number of at least 1), not {scale!r}")


def memory_bytes() -> int | None:
    """This computer's physical memory, or None where it cannot be told (Windows)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def spare_memory(limit: int | None = None) -> int | None:
    """``limit``, or the bytes one array may take: half of this computer's memory (None where
    it cannot be told)."""
    if limit is not None:
        return limit
    total = memory_bytes()
    return int(total * MAX_OUTPUT_FRACTION) if total else None


# A run holds up to three float32 outputs in memory: the mean, the variance and the std (a
# calibrated model's, or the one the front ends compute from the variance to show or save).
IN_MEMORY_OUTPUTS = 3


def output_bytes(shape: tuple[int, ...], scale: int, arrays: int = 2) -> int:
    """Bytes of ``arrays`` float32 outputs (default two: the mean and the std or variance a
    file or store holds) of an image of ``shape`` at ``scale``."""
    return arrays * 4 * int(np.prod(shape, dtype=np.float64)) * int(scale) ** 2


def check_output_size(shape: tuple[int, ...], scale: int, limit: int | None = None) -> int:
    """Bytes of the outputs a run holds in memory (float32 mean, variance and std);
    ValueError if beyond ``limit``.

    ``limit`` defaults to half of this computer's memory. Call before allocating them.
    """
    planes = int(np.prod(shape[:-2], dtype=np.float64)) if len(shape) > 2 else 1
    needed = output_bytes(shape, scale, IN_MEMORY_OUTPUTS)
    limit = spare_memory(limit)
    if limit is not None and needed > limit:
        raise ValueError(f"the outputs (mean, variance and std, {planes} plane(s) of "
                         f"{shape[-2] * scale} x {shape[-1] * scale} float32) would need "
                         f"{needed / 2**30:.1f} GiB, more than this computer can spare "
                         f"({limit / 2**30:.1f} GiB); process a crop or fewer planes at a time")
    return needed


def check_whole_plane_reading(shape: tuple[int, ...], dtype, limit: int | None = None) -> int:
    """Bytes to read one plane of a lazy image whole (as float64, plus the plane as stored),
    which its exact percentiles need for types without a histogram (floats, 32- and 64-bit
    integers); ValueError if beyond ``limit`` (default half of this computer's memory).
    8- and 16-bit images are summarised by histograms, chunk by chunk."""
    dtype = np.dtype(dtype)
    needed = int(shape[-2]) * int(shape[-1]) * (8 + dtype.itemsize)
    limit = spare_memory(limit)
    if limit is not None and needed > limit:
        raise ValueError(f"a plane of this {dtype} image ({shape[-2]} x {shape[-1]}) is read "
                         f"whole once, to find its intensity percentiles: "
                         f"{needed / 2**30:.1f} GiB, more than this computer can spare "
                         f"({limit / 2**30:.1f} GiB). Convert it to 16-bit integers (uint16 "
                         "or int16: read chunk by chunk) or process a crop")
    return needed


def free_space_folder(path) -> Path:
    """The nearest existing folder of ``path`` (where its free space is measured)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def disk_shortfall(path, needed: int) -> tuple[Path, int] | None:
    """(folder, free bytes) when the disk that ``path`` would be written to has less than
    ``needed`` bytes free; None when they fit. The one free-space test of the command line
    (:func:`check_disk_room`) and the napari large-image path (``layers.check_output_room``),
    each of which words its own refusal."""
    import shutil

    folder = free_space_folder(path)
    free = shutil.disk_usage(folder).free
    return (folder, free) if needed > free else None


def check_disk_room(path, needed: int, what: str) -> None:
    """OSError (ENOSPC) when the disk that ``path`` would be written to has less than
    ``needed`` bytes free; ``what`` names the output in the message. A full disk is the
    machine's state, not bad input: the command line exits 1 for it as for a disk that
    fills during the writing, and a cluster tries the file again (on another worker's
    disk, perhaps) instead of reporting bad input."""
    import errno

    short = disk_shortfall(path, needed)
    if short is not None:
        folder, free = short
        raise OSError(errno.ENOSPC, f"{what} need {format_bytes(needed)} but {folder} has "
                      f"only {format_bytes(free)} free; write to a larger disk, or process "
                      "a crop or fewer planes")


def format_bytes(count: float) -> str:
    """``count`` bytes as a person reads them: '2.5 GiB', '40.0 MiB', '3.2 KiB', '12 bytes'."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"

