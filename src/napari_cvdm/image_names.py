"""What a path's name says about the image it holds: the one place for file extensions.

TIFF files end in .tif or .tiff (BigTIFF files also in .btf, .tf8 or .tf2), Zeiss LSM files
(TIFFs) in .lsm (any case); an OME-Zarr
image is a folder ending in .zarr (usually .ome.zarr), or a folder inside one (a series of
a bioformats2raw store, 'store.ome.zarr/1'; a field of a plate, 'plate.ome.zarr/A/1/0').
Outputs are named after the input's :func:`image_stem` (:func:`output_name`; always .tif
or .ome.zarr), and folders and patterns of inputs leave them out (:func:`is_cvdm_output`),
so a run whose outputs went beside its inputs can run again.
"""

from __future__ import annotations

from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2", ".lsm")
ZARR_SUFFIX = ".zarr"
# Longest first, so 'a.ome.tif' loses '.ome.tif', not only '.tif'.
IMAGE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".ome.btf", ".ome.tf8", ".ome.tf2", ".tiff", ".tif",
                    ".btf", ".tf8", ".tf2", ".lsm", ".ome.zarr", ".zarr")
TIFF_OUTPUTS = ("mean", "std", "var")  # the three TIFFs of one input


def is_tiff(path: str | Path) -> bool:
    """Whether the name ends in .tif, .tiff, .btf, .tf8, .tf2 or .lsm (any case)."""
    return Path(path).suffix.lower() in TIFF_SUFFIXES


def is_lsm(path: str | Path) -> bool:
    """Whether the name ends in .lsm (any case): a Zeiss LSM file."""
    return Path(path).suffix.lower() == ".lsm"


def zarr_store(path: str | Path) -> Path | None:
    """The OME-Zarr store ``path`` names or lies in, as given: its innermost part ending
    in .zarr (any case: a store kept in a folder named .zarr is still itself); None where
    there is none."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.name.lower().endswith(ZARR_SUFFIX):
            return part
    return None


def is_zarr(path: str | Path) -> bool:
    """Whether the name ends in .zarr (any case): an OME-Zarr image folder; or names a
    folder inside one (a bioformats2raw series, a plate's field), a TIFF name aside."""
    path = Path(path)
    return path.name.lower().endswith(ZARR_SUFFIX) or \
        (not is_tiff(path) and zarr_store(path) is not None)


def image_stem(path: str | Path) -> str:
    """A file's name without its image extension (.tif, .ome.tif, .zarr, ... in any case):
    other dots are kept, so 'cell_0.5um.tif' and 'cell_1.5um.tif' stay apart. A folder
    inside an OME-Zarr store is named by the store and its place in it, joined by '_'
    ('plate.ome.zarr/A/1/0': 'plate_A_1_0'), so the series and fields of a store stay
    apart."""
    path = Path(path)
    store = zarr_store(path)
    if store is not None and store != path and not is_tiff(path):
        return "_".join(image_stem(part) for part in (store, *path.relative_to(store).parts))
    name = path.name
    for extension in IMAGE_EXTENSIONS:
        if name.lower().endswith(extension) and len(name) > len(extension):
            return name[:-len(extension)]
    return name or "image"


def output_name(stem: str, kind: str | None = None) -> str:
    """The name of an output: ``<stem>_cvdm_<kind>.tif`` for a TIFF output (``kind`` one
    of TIFF_OUTPUTS), ``<stem>_cvdm.ome.zarr`` for the OME-Zarr one (``kind`` None)."""
    if kind is None:
        return f"{stem}_cvdm.ome.zarr"
    if kind not in TIFF_OUTPUTS:
        raise ValueError(f"no output kind {kind!r}; one of {TIFF_OUTPUTS}")
    return f"{stem}_cvdm_{kind}.tif"


def is_cvdm_output(path: str | Path) -> bool:
    """Whether the name is one napari-cvdm gives its outputs (:func:`output_name`)."""
    name = Path(path).name.lower()
    return any(name.endswith(output_name("", kind)) for kind in (None, *TIFF_OUTPUTS))


def is_hidden(path: str | Path) -> bool:
    """A hidden file, such as the '._name.tif' a Mac leaves beside a copied file."""
    return Path(path).name.startswith(".")
