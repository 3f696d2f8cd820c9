"""--resume's check of earlier outputs: complete, absent or partial, without reading pixels."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_cvdm.finished_outputs import ABSENT, COMPLETE, PARTIAL, output_state


def _write(path, data):
    """An output as predict writes it: OME-TIFF."""
    tifffile.imwrite(path, data, ome=True, photometric="minisblack")


def _outputs(tmp_path, shape=(2, 64, 64)):
    source = tmp_path / "cell.tif"
    tifffile.imwrite(source, np.zeros((shape[0], shape[1] // 2, shape[2] // 2), np.uint16))
    paths = [tmp_path / f"cell_cvdm_{k}.tif" for k in ("mean", "std", "var")]
    for path in paths:
        _write(path, np.ones(shape, np.float32))
    return source, paths


def test_all_outputs_that_open_and_fit_the_input_are_complete(tmp_path):
    source, paths = _outputs(tmp_path)
    assert output_state(paths, source)[0] == COMPLETE
    assert output_state(paths)[0] == COMPLETE


def test_no_outputs_are_absent_and_some_are_partial(tmp_path):
    source, paths = _outputs(tmp_path)
    paths[1].unlink()
    state, why = output_state(paths, source)
    assert state == PARTIAL and "cell_cvdm_std.tif missing" in why
    for path in paths:
        path.unlink(missing_ok=True)
    assert output_state(paths, source)[0] == ABSENT


def test_a_damaged_or_mismatched_output_is_partial(tmp_path):
    source, paths = _outputs(tmp_path)
    paths[2].write_bytes(b"II*\x00 cut short")
    assert output_state(paths, source)[0] == PARTIAL
    _write(paths[2], np.ones((2, 64, 32), np.float32))  # another shape
    assert "differ in shape" in output_state(paths, source)[1]
    for path in paths:
        _write(path, np.ones((2, 60, 60), np.float32))  # not a multiple of 32
    assert output_state(paths, source)[0] == PARTIAL
    for path in paths:
        _write(path, np.ones((2, 64, 64), np.uint16))  # not what predict writes
    assert output_state(paths, source)[0] == PARTIAL


def test_a_truncated_output_whose_header_still_opens_is_partial(tmp_path):
    """A TIFF cut after its header opened and was taken as complete, so --resume skipped
    an input whose output had lost its pixels."""
    source, paths = _outputs(tmp_path)
    with tifffile.TiffFile(paths[1]) as tif:
        cut = max(tif.pages[-1].dataoffsets) + 100  # into the last plane's pixels
    paths[1].write_bytes(paths[1].read_bytes()[:cut])
    with tifffile.TiffFile(paths[1]) as tif:  # the header still opens
        assert tif.series[0].shape[-2:] == (64, 64)
    state, why = output_state(paths, source)
    assert state == PARTIAL and "cell_cvdm_std.tif is cut short" in why
    assert output_state([paths[0], paths[2]], source)[0] == COMPLETE


def test_an_output_that_lost_its_trailing_ome_metadata_is_partial(tmp_path, caplog):
    """Found by an audit: an output cut inside its OME-XML (written after the pixels, at
    the end of the file) still had every pixel, so --resume skipped it as complete; reading
    it gave "TiffTag 270 ... invalid value offset" and no metadata."""
    source, paths = _outputs(tmp_path)
    size = paths[1].stat().st_size
    with tifffile.TiffFile(paths[1]) as tif:
        tag = tif.pages[0].tags["ImageDescription"]
        assert tag.valueoffset > max(tif.pages[-1].dataoffsets)  # after the pixels
        assert tag.valueoffset + tag.count > size - 200
    paths[1].write_bytes(paths[1].read_bytes()[:-200])
    with tifffile.TiffFile(paths[1]) as tif:  # the pixels are all there, the metadata not
        assert tif.series[0].shape == (2, 64, 64) and not tif.is_ome
    caplog.clear()  # tifffile logged the cut tag while opening it here
    state, why = output_state(paths, source)
    assert state == PARTIAL and "cell_cvdm_std.tif is cut short" in why
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw.replace(b"<Pixels ", b"<Pixels<", 1))  # same length, bad XML
    state, why = output_state([paths[0], paths[2]], source)
    assert state == PARTIAL and "cell_cvdm_var.tif is damaged" in why
    assert output_state([paths[0]], source)[0] == COMPLETE


def test_a_damaged_output_is_reported_in_why_not_logged_by_tifffile(tmp_path, caplog):
    source, paths = _outputs(tmp_path)
    data = bytearray(paths[1].read_bytes())
    data[4:8] = (len(data) + 1000).to_bytes(4, "little")  # the first page past the end
    paths[1].write_bytes(bytes(data))
    state, why = output_state(paths, source)
    assert state == PARTIAL and "does not open" in why
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []


def test_the_outputs_are_not_modified(tmp_path):
    source, paths = _outputs(tmp_path)
    before = [(p.stat().st_mtime_ns, p.read_bytes()) for p in paths]
    output_state(paths, source)
    assert [(p.stat().st_mtime_ns, p.read_bytes()) for p in paths] == before


def test_an_ome_zarr_result_is_complete_with_mean_and_std(tmp_path):
    import shutil

    import pytest

    pytest.importorskip("zarr")
    from napari_cvdm.zarr_files import write_ome_zarr

    out = tmp_path / "cell_cvdm.ome.zarr"
    data = np.ones((64, 64), np.float32)
    write_ome_zarr(out, data, data, {"axes": "YX"}, scale=2)
    assert output_state([out])[0] == COMPLETE
    shutil.rmtree(out / "std")
    assert output_state([out])[0] == PARTIAL


def test_a_store_whose_writing_did_not_finish_is_partial(tmp_path):
    """Found by an audit: the in-place writer (napari's lazy runs) killed before any chunk
    left a store with both images, all zeros, that --resume skipped as complete."""
    import pytest

    pytest.importorskip("zarr")
    from napari_cvdm.zarr_files import ZarrResultWriter

    out = tmp_path / "cell_cvdm.ome.zarr"
    writer = ZarrResultWriter(out, (64, 64), scale=2, in_place=True).__enter__()
    state, why = output_state([out])
    assert state == PARTIAL and "did not finish" in why
    writer.write((), np.ones((64, 64)), np.ones((64, 64)))
    assert output_state([out])[0] == PARTIAL  # every chunk written, the mark not yet
    writer.__exit__(None, None, None)
    assert output_state([out])[0] == COMPLETE


def test_outputs_older_than_their_input_are_not_complete(tmp_path):
    """An input replaced after its run (a re-exported file of the same shape) was skipped by
    --resume, its stale outputs kept."""
    import os

    source, paths = _outputs(tmp_path)
    written = paths[0].stat().st_mtime
    os.utime(source, (written - 60, written - 60))
    assert output_state(paths, source)[0] == COMPLETE
    os.utime(source, (written + 60, written + 60))
    state, why = output_state(paths, source)
    assert state == PARTIAL and "modified after its outputs" in why
