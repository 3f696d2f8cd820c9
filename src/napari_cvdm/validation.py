"""Input checks with messages a microscopist can act on (never a traceback from torch)."""

from __future__ import annotations

import numpy as np


def check_image(image) -> tuple[tuple[int, ...], np.dtype]:
    """Validate shape and dtype without loading the data (dask/zarr stay lazy)."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    dtype = np.dtype(image.dtype)
    if len(shape) < 2:
        raise ValueError(f"expected an image with at least 2 dimensions (Y, X), got shape "
                         f"{shape}; a 1D array is not an image")
    if 0 in shape:
        raise ValueError(f"the image is empty (shape {shape})")
    if dtype == np.bool_:
        raise ValueError("the image is boolean (a mask or labels); CVDM needs intensities. "
                         "Convert it with image.astype('float32') if this is intended")
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError("the image has complex values; pass the magnitude (np.abs) or the "
                         "real part")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"unsupported pixel type {dtype}; use integer or float images")
    if len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4:
        raise ValueError(f"the image looks like RGB/RGBA (shape {shape}, last axis "
                         f"{shape[-1]}); split the colour channels and run each one "
                         "(in napari: right-click the layer > Split RGB)")
    return shape, dtype


def check_plane(plane, index: tuple[int, ...] = ()) -> np.ndarray:
    """Load one Y, X plane as float64 and refuse NaN or infinite values."""
    data = np.asarray(plane)
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        where = f" in plane {index}" if index else ""
        bad = int(data.size - finite.sum())
        raise ValueError(f"the image contains {bad} NaN or infinite value(s){where}; "
                         "replace them first (e.g. np.nan_to_num) or crop them away")
    return data
