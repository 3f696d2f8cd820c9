"""What a path's name says about the image it holds: the one place for file extensions.

TIFF files end in .tif or .tiff (any case); an OME-Zarr image is a folder ending in .zarr
(usually .ome.zarr). Output names are built from :func:`image_stem`.
"""

from __future__ import annotations

from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIX = ".zarr"
# Longest first, so 'a.ome.tif' loses '.ome.tif', not only '.tif'.
IMAGE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".ome.zarr", ".zarr")


def is_tiff(path: str | Path) -> bool:
    """Whether the name ends in .tif or .tiff (any case)."""
    return Path(path).suffix.lower() in TIFF_SUFFIXES


def is_zarr(path: str | Path) -> bool:
    """Whether the name ends in .zarr (any case): an OME-Zarr image folder."""
    return Path(path).name.lower().endswith(ZARR_SUFFIX)


def image_stem(path: str | Path) -> str:
    """A file's name without its image extension (.tif, .ome.tif, .zarr, ... in any case):
    other dots are kept, so 'cell_0.5um.tif' and 'cell_1.5um.tif' stay apart."""
    name = Path(path).name
    for extension in IMAGE_EXTENSIONS:
        if name.lower().endswith(extension) and len(name) > len(extension):
            return name[:-len(extension)]
    return name or "image"
