"""Whether an input's outputs are already complete (for ``--resume``), checked cheaply.

Outputs are written all together or not at all (``atomic.py``), so a complete set is one
where every output exists and opens: the TIFFs' headers are read (no pixels), their pixels
end inside the file, their OME-XML (written last, at the end of the file) reads and parses
and they agree in shape, an OME-Zarr result has its ``mean`` and ``std``
images and the mark written after its last chunk. Nothing is modified.
"""

from __future__ import annotations

from pathlib import Path

from .image_files import held_tifffile_logs

COMPLETE, ABSENT, PARTIAL = "complete", "absent", "partial"


def output_state(outputs, input_path: Path | None = None,
                 made_with: dict | None = None) -> tuple[str, str]:
    """``(state, why)``: COMPLETE (all exist and open), ABSENT (none exists) or PARTIAL
    (some exist, or one does not open, or its shape does not fit the input's, or the input
    file was modified after them, or their provenance records other values of
    ``made_with``: a run resumed with another model or sampling settings must not keep
    results of the first, a batch of mixed models)."""
    outputs = [Path(p) for p in outputs]
    present = [p for p in outputs if p.exists() or p.is_symlink()]
    if not present:
        return ABSENT, "no output exists"
    if len(present) < len(outputs):
        missing = ", ".join(p.name for p in outputs if p not in present)
        return PARTIAL, f"{missing} missing"
    try:
        # a damaged file is reported in ``why``, not logged
        with held_tifffile_logs(pass_on=False):
            if len(outputs) == 1 and outputs[0].is_dir():
                from .zarr_files import is_complete_result, is_result_store

                if not is_complete_result(outputs[0]):
                    return PARTIAL, ("the store's writing did not finish"
                                     if is_result_store(outputs[0])
                                     else "the folder is not a napari-cvdm result")
                shapes = [_zarr_shape(outputs[0] / name) for name in ("mean", "std")]
            else:
                # a FIFO or device named like an output: opening it blocked for ever
                odd = [p.name for p in outputs if not p.is_file()]
                if odd:
                    return PARTIAL, f"{', '.join(odd)} is not a regular file"
                shapes = [_tiff_shape(p) for p in outputs]
    except Exception as exc:  # damaged files raise many types
        return PARTIAL, f"an output does not open ({type(exc).__name__}: {exc})"
    if len(set(shapes)) != 1:
        return PARTIAL, f"the outputs differ in shape {sorted(set(shapes))}"
    if input_path is not None and not _fits(shapes[0], input_path):
        return PARTIAL, f"the outputs' shape {shapes[0]} does not fit the input's"
    if input_path is not None and _changed_since(Path(input_path), outputs):
        return PARTIAL, "the input was modified after its outputs were written"
    differs = _made_otherwise(outputs, made_with or {})
    if differs:
        return PARTIAL, f"the outputs were made with {differs}"
    return COMPLETE, "all outputs exist and open"


def foreign_tiff(path: Path) -> bool:
    """Whether ``path`` is a TIFF that opens cleanly and is not a napari-cvdm output (its OME
    description is not "napari-cvdm result"): a file of the user's that only has an output's
    name, never replaced. A damaged or cut-short file (an interrupted output) is not judged
    foreign; nor is anything that is not a regular file (``check_outputs`` judges those)."""
    import xml.etree.ElementTree as ET

    import tifffile

    if not path.is_file():
        return False
    try:
        with held_tifffile_logs(pass_on=False), tifffile.TiffFile(path) as tif:
            if not tif.series:
                return False
            if not tif.is_ome or not tif.ome_metadata:
                return True
            root = ET.fromstring(tif.ome_metadata)
    except Exception:  # noqa: BLE001 - a damaged file: an interrupted output, replaceable
        return False
    described = [el.text for el in root.iter() if el.tag.endswith("}Description")]
    return "napari-cvdm result" not in described


def _made_otherwise(outputs: list[Path], made_with: dict) -> str:
    """What the outputs' provenance records otherwise than ``made_with`` ("" where all
    agree; a key they do not record, as older outputs, is not judged)."""
    if not made_with:
        return ""
    try:
        recorded = _provenance(outputs)
    except Exception:  # noqa: BLE001 - unreadable provenance: judged by the checks above
        return ""
    differ = [f"{key} {recorded[key]} (this run: {value})" for key, value in made_with.items()
              if recorded.get(key) not in (None, "None") and str(recorded[key]) != str(value)]
    return ", ".join(differ)


def _provenance(outputs: list[Path]) -> dict:
    """The provenance an output records: an OME-Zarr result's ``napari_cvdm`` attributes,
    or the first TIFF's OME map annotation."""
    if len(outputs) == 1 and outputs[0].is_dir():
        from .zarr_files import _zarr

        return dict(_zarr().open_group(str(outputs[0]), mode="r").attrs["napari_cvdm"])
    import xml.etree.ElementTree as ET

    import tifffile

    with tifffile.TiffFile(outputs[0]) as tif:
        root = ET.fromstring(tif.ome_metadata)
    return {m.get("K"): m.text for m in root.iter() if m.tag.endswith("}M")}


def _changed_since(input_path: Path, outputs: list[Path]) -> bool:
    """Whether an input file was modified after the oldest of its output files (as make
    decides; a folder's time says nothing of the files inside it, so a store is not
    judged)."""
    if not input_path.is_file() or not all(p.is_file() for p in outputs):
        return False
    try:
        return input_path.stat().st_mtime > min(p.stat().st_mtime for p in outputs)
    except OSError:
        return False


def _tiff_shape(path: Path) -> tuple[int, ...]:
    import tifffile

    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if series.dtype.kind != "f":
            raise ValueError(f"{path.name} is not a float image")
        # Headers only: where the pixels would end (one block for a contiguous series,
        # as tifffile writes it, which may list its first page only; else each page's)
        ends = [o + n for page in series.pages if page is not None
                for o, n in zip(page.dataoffsets, page.databytecounts)]
        if series.dataoffset is not None:
            ends.append(series.dataoffset + series.nbytes)
        if not ends or max(ends) > size:
            raise ValueError(f"{path.name} is cut short: its pixels end past the file")
        _check_ome(path, tif)
        return tuple(int(n) for n in series.shape)


def _check_ome(path: Path, tif) -> None:
    """The OME-XML every output carries (its metadata, written after the pixels) reads and
    parses; a file cut short loses it and its pixels may all still be there."""
    import xml.etree.ElementTree as ET

    if not tif.is_ome or not tif.ome_metadata:
        raise ValueError(f"{path.name} is cut short or not a napari-cvdm output: its OME "
                         "metadata is missing or does not read")
    try:
        ET.fromstring(tif.ome_metadata)
    except ET.ParseError as exc:
        raise ValueError(f"{path.name} is damaged: its OME metadata does not parse "
                         f"({exc})") from None


def _zarr_shape(path: Path) -> tuple[int, ...]:
    from .zarr_files import read_ome_zarr

    array, _ = read_ome_zarr(path)
    return tuple(int(n) for n in array.shape)


def _input_shape(path: Path) -> tuple[int, ...] | None:
    if path.is_dir():
        return _zarr_shape(path)
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tuple(int(n) for n in tif.series[0].shape)


def _fits(shape: tuple[int, ...], input_path: Path) -> bool:
    """Same leading axes as the input, Y and X a whole multiple of the input's (the scale)."""
    try:
        found = _input_shape(Path(input_path))
    except Exception:  # an unreadable input is reported when it is predicted
        return True
    lead = [n for n in shape[:-2] if n != 1]  # readers may drop axes of length one
    if found is None or len(found) < 2 or [n for n in found[:-2] if n != 1] != lead:
        return False
    scales = {out // max(n, 1) for out, n in zip(shape[-2:], found[-2:])}
    return len(scales) == 1 and all(out % max(n, 1) == 0 for out, n in
                                    zip(shape[-2:], found[-2:])) and min(scales) >= 1
