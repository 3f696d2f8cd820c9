"""Compatibility names for code written before the split into model and image files.

New code imports from :mod:`napari_cvdm.model_files` (models), :mod:`napari_cvdm.image_files`
(reading images), :mod:`napari_cvdm.tiff_writer` (writing them) and :mod:`napari_cvdm.atomic`.
"""

from __future__ import annotations

from .atomic import atomic_group, atomic_write
from .image_files import ImageFile, max_image_bytes, read_tiff
from .model_files import (BUNDLED, MAX_PARAMETERS, bundled_model_path, estimate_parameters,
                          load_model, model_path, resolve_model, save_model, weights_sha256)
from .model_header import (FORMAT, MODEL_SUFFIX, PICKLE_HINT, PICKLE_MAGIC, PICKLE_SUFFIXES,
                           read_model_header)
from .tiff_writer import check_outputs, write_tiff, write_tiffs

__all__ = [
    "BUNDLED", "FORMAT", "MAX_PARAMETERS", "MODEL_SUFFIX", "PICKLE_HINT", "PICKLE_MAGIC",
    "PICKLE_SUFFIXES", "ImageFile", "atomic_group", "atomic_write", "bundled_model_path",
    "check_outputs", "estimate_parameters", "load_model", "max_image_bytes", "model_path",
    "read_model_header", "read_tiff", "resolve_model", "save_model", "weights_sha256",
    "write_tiff", "write_tiffs",
]
