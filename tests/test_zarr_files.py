"""OME-Zarr: inputs read lazily with their axes and sizes; results written by planes."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")
ome_writer = pytest.importorskip("ome_zarr.writer")

from napari_cvdm.physical import PhysicalSize  # noqa: E402
from napari_cvdm.zarr_files import read_ome_zarr, write_ome_zarr  # noqa: E402


def _input(tmp_path):
    """An OME-Zarr (NGFF 0.4) image as microscope software writes it: axes with units."""
    path = tmp_path / "in.ome.zarr"
    data = np.arange(2 * 3 * 8 * 10, dtype=np.uint16).reshape(2, 3, 8, 10)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=data.shape, chunks=(1, 1, 8, 10), dtype=data.dtype)[:] = data
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 0.3, 0.1, 0.1]}]}]}]
    return path, data


def test_an_image_written_by_ome_zarr_py_is_read(tmp_path):
    data = np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64)
    root = zarr.open_group(str(tmp_path / "w.ome.zarr"), mode="w", zarr_format=2)
    ome_writer.write_image(data, root, axes="zyx")
    array, meta = read_ome_zarr(tmp_path / "w.ome.zarr")
    assert meta["axes"] == "ZYX"
    np.testing.assert_array_equal(np.asarray(array), data)


@pytest.mark.parametrize("layout", ["image", "bioformats2raw"])
def test_an_ngff_0_5_image_as_ome_zarr_py_writes_it_by_default_is_read(tmp_path, layout):
    data = np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64)
    path = tmp_path / "v05.ome.zarr"
    root = zarr.open_group(str(path), mode="w")               # zarr v3: NGFF 0.5
    if layout == "bioformats2raw":
        root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
        root = root.create_group("0")
    ome_writer.write_image(data, root, axes="cyx")
    assert "ome" in root.attrs and "multiscales" in root.attrs["ome"]
    array, meta = read_ome_zarr(path)
    assert meta["axes"] == "CYX"
    np.testing.assert_array_equal(np.asarray(array), data)


def test_an_ome_zarr_input_is_read_lazily_with_axes_and_sizes(tmp_path):
    path, data = _input(tmp_path)
    array, meta = read_ome_zarr(path)
    assert isinstance(array, da.Array)
    assert meta["axes"] == "TZYX"
    assert meta["physical"] == {"T": PhysicalSize(2.0, "s"), "Z": PhysicalSize(0.3, "µm"),
                                "Y": PhysicalSize(0.1, "µm"), "X": PhysicalSize(0.1, "µm")}
    np.testing.assert_array_equal(array[1, 2].compute(), data[1, 2])


def test_results_are_two_images_with_scaled_sizes_and_provenance(tmp_path):
    path, data = _input(tmp_path)
    _, meta = read_ome_zarr(path)
    mean = da.from_array(np.random.default_rng(0).random((2, 3, 16, 20)).astype(np.float32),
                         chunks=(1, 1, 16, 20))
    std = mean / 10
    out = write_ome_zarr(tmp_path / "in_cvdm.ome.zarr", mean, std, meta, scale=2,
                         provenance={"model": "demo", "seed": 4})
    for name, expected in (("mean", mean), ("std", std)):
        array, again = read_ome_zarr(out / name)
        assert again["axes"] == "TZYX"
        assert again["physical"]["X"] == PhysicalSize(pytest.approx(0.05), "µm")
        assert again["physical"]["Z"] == PhysicalSize(pytest.approx(0.3), "µm")
        assert again["physical"]["T"] == PhysicalSize(2.0, "s")
        assert again["attributes"]["napari_cvdm"]["seed"] == 4
        np.testing.assert_allclose(array.compute(), expected.compute())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_ome_zarr_py_reads_the_result(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = write_ome_zarr(tmp_path / "r.ome.zarr", np.ones((8, 8)), np.zeros((8, 8)),
                         {"axes": "YX", "physical": {"X": PhysicalSize(0.2, "µm"),
                                                     "Y": PhysicalSize(0.2, "µm")}}, scale=2)
    nodes = list(Reader(parse_url(str(out / "mean")))())
    assert nodes and nodes[0].data[0].shape == (8, 8)
    assert nodes[0].metadata["coordinateTransformations"][0][0]["scale"] == [0.1, 0.1]


def test_an_existing_result_is_refused_unless_overwrite_and_a_failure_leaves_nothing(tmp_path):
    target = tmp_path / "o.ome.zarr"
    write_ome_zarr(target, np.ones((4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="exists"):
        write_ome_zarr(target, np.zeros((4, 4)), np.zeros((4, 4)))
    write_ome_zarr(target, np.zeros((4, 4)), np.zeros((4, 4)), overwrite=True)
    assert read_ome_zarr(target / "mean")[0].compute().max() == 0

    class Broken:
        shape = (2, 4, 4)

        def __getitem__(self, index):
            if index == (1,):
                raise RuntimeError("failed on the second plane")
            return np.zeros((4, 4))

    with pytest.raises(RuntimeError, match="second plane"):
        write_ome_zarr(tmp_path / "b.ome.zarr", Broken(), Broken())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.zarr"]


@pytest.mark.parametrize("scale", [0, -1, True, 1.5, "2"])
def test_a_scale_that_is_no_enlargement_is_refused_and_nothing_is_written(tmp_path, scale):
    """Found by a review: scale 0 divided by zero, -1 wrote a result with no placement,
    True was taken as 1."""
    with pytest.raises(ValueError, match="whole number of at least 1"):
        write_ome_zarr(tmp_path / "o.ome.zarr", np.ones((4, 4)), np.ones((4, 4)), scale=scale)
    assert list(tmp_path.iterdir()) == []


def test_a_complex_result_is_refused_not_cut_to_its_real_part(tmp_path):
    mean = np.ones((4, 4), np.complex64) * (1 + 2j)
    with pytest.raises(ValueError, match="the mean must be real numbers, not complex64"):
        write_ome_zarr(tmp_path / "o.ome.zarr", mean, np.ones((4, 4)))
    with pytest.raises(ValueError, match="the std must be real numbers"):
        write_ome_zarr(tmp_path / "o.ome.zarr", np.ones((4, 4)), da.from_array(mean))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_names_the_output_and_leaves_nothing(tmp_path):
    class Full:
        shape = (2, 4, 4)

        def __getitem__(self, index):
            if index == (1,):
                raise OSError(28, "No space left on device")
            return np.zeros((4, 4))

    target = tmp_path / "f.ome.zarr"
    with pytest.raises(OSError, match=r"No space left on device while writing .*f\.ome\.zarr"):
        write_ome_zarr(target, Full(), Full())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["_mark_complete", "os.replace"])
def test_an_interrupt_while_finishing_a_store_leaves_the_previous_result_and_no_temporary(
        tmp_path, monkeypatch, where):
    """Ctrl-C or SIGTERM between the last chunk and the rename: no '.part' store (it can be
    gigabytes) stays behind, and an earlier result is back in place."""
    import os

    import napari_cvdm.zarr_files as zarr_files

    target = tmp_path / "o.ome.zarr"
    write_ome_zarr(target, np.ones((4, 4)), np.ones((4, 4)))
    if where == "_mark_complete":
        def interrupted(self):
            raise KeyboardInterrupt
        monkeypatch.setattr(zarr_files.ZarrResultWriter, "_mark_complete", interrupted)
    else:
        real_replace = os.replace

        def replace(src, dst):
            if str(src).endswith(".part"):
                raise KeyboardInterrupt
            return real_replace(src, dst)
        monkeypatch.setattr(zarr_files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_ome_zarr(target, np.zeros((4, 4)), np.zeros((4, 4)), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.zarr"]
    assert read_ome_zarr(target / "mean")[0].compute().min() == 1


def test_chunks_missing_from_an_input_store_are_warned_about(tmp_path, tiny_model_file,
                                                            capsys):
    """zarr reads a missing chunk as the fill value: a store damaged in copying would give a
    result with a silent hole. The command line says it once, as its other warnings."""
    import shutil

    from napari_cvdm.cli import main

    import warnings

    path, data = _input(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_ome_zarr(path)  # every chunk there: no warning
    chunk = next(p for p in (path / "0").rglob("*") if p.is_file() and not
                 p.name.startswith("."))
    shutil.rmtree(chunk) if chunk.is_dir() else chunk.unlink()
    with pytest.warns(UserWarning, match="1 of 6 chunks of the image are not stored and "
                      "read as 0"):
        read_ome_zarr(path, check_chunks=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_ome_zarr(path)  # metadata only: no listing of the store (asked where it reads)
    assert main(["predict", str(path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "2", "--steps", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("chunks of the image are not stored") == 1
    assert "cvdm predict: warning: in.ome.zarr" in err or \
        f"cvdm predict: warning: {path}" in err


def test_a_chunk_that_cannot_be_decoded_is_a_one_line_error_and_leaves_nothing(
        tmp_path, tiny_model_file, capsys):
    from napari_cvdm.cli import main

    path, data = _input(tmp_path)
    chunk = next(p for p in (path / "0").rglob("*") if p.is_file() and not
                 p.name.startswith("."))
    chunk.write_bytes(b"garbage")  # a store damaged in copying
    out = tmp_path / "out"
    code = main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "2", "--steps", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "could not be read, the store is damaged" in err and str(path) in err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("axes, message", [("xy", "cannot write an image with axes 'XY'"),
                                            ("yxc", "looks like RGB")])
def test_a_store_whose_result_cannot_be_written_is_refused_before_any_work(
        tmp_path, tiny_model_file, capsys, axes, message):
    """Found by a review: the axes were checked by the writer, after the whole prediction
    (and after the inputs before it in the batch)."""
    from napari_cvdm.cli import main

    good, _ = _input(tmp_path)
    bad = tmp_path / "bad.ome.zarr"
    shape = (16, 12, 3) if axes == "yxc" else (16, 12)
    root = zarr.open_group(str(bad), mode="w", zarr_format=2)
    root.create_array("0", shape=shape, chunks=shape, dtype="uint16")[:] = 7
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": "channel" if a == "c" else "space"} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * len(axes)}]}]}]
    out = tmp_path / "out"
    code = main(["predict", str(good), str(bad), "-o", str(out), "--model",
                 str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(bad) in err
    assert not out.exists()  # not even the first input was predicted


def test_the_store_under_a_read_input_is_still_seen_and_file_system_errors_stay_os_errors(
        tmp_path, monkeypatch):
    """Review of the decoding wrapper: the widget's check of which stores a layer reads
    lost sight of the input store, and an I/O error (retried on a cluster, exit 1) became
    'the store is damaged' (bad input, not retried)."""
    from napari_cvdm.layers import _data_sources

    path, data = _input(tmp_path)
    array, _ = read_ome_zarr(path)
    found, complete = _data_sources(array, zarr)
    assert complete and [str(a.store.root) for a in found] == [str(path)]
    np.testing.assert_array_equal(array.compute(), data)
    chunks = next(item for item in array.__dask_graph__().values()
                  if hasattr(getattr(item, "value", item), "zarr_array"))
    wrapper = getattr(chunks, "value", chunks)

    def failing(index):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wrapper, "zarr_array", type("A", (), {"__getitem__": lambda s, i:
                                                                 failing(i)})())
    with pytest.raises(OSError, match="Input/output error"):
        array.compute()


def test_something_that_is_not_ome_zarr_is_a_value_error(tmp_path):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(ValueError, match="not an OME-Zarr image"):
        read_ome_zarr(tmp_path / "plain.zarr")
    with pytest.raises(ValueError, match="not found"):
        read_ome_zarr(tmp_path / "missing.zarr")


def test_cvdm_predict_reconstructs_an_ome_zarr_into_an_ome_zarr(tmp_path, tiny_model_file, capsys):
    from napari_cvdm.cli import main

    path, data = _input(tmp_path)
    out = tmp_path / "out"
    code = main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "2", "--steps", "1", "--seed", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = out / "in_cvdm.ome.zarr"
    mean, meta = read_ome_zarr(result / "mean")
    std, _ = read_ome_zarr(result / "std")
    assert mean.shape == std.shape == (2, 3, 16, 20) and meta["axes"] == "TZYX"
    assert meta["physical"]["X"] == PhysicalSize(0.05, "µm")
    assert meta["physical"]["T"] == PhysicalSize(2.0, "s")
    assert float(np.asarray(std).min()) >= 0
    # the provenance names the input it was made from, and when that was last modified
    recorded = zarr.open_group(str(result), mode="r").attrs["napari_cvdm"]
    assert recorded["input"] == "in.ome.zarr" and "input_bytes" not in recorded
    assert recorded["input_modified"].startswith(time.strftime(
        "%Y-%m-%dT%H:%M", time.gmtime(path.stat().st_mtime)))
    # An existing result is refused unless --overwrite.
    assert main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "2", "--steps", "1", "--quiet"]) == 2


def test_cvdm_predict_warns_about_an_ome_zarr_unlike_the_training_data(
        tmp_path, tiny_model_file, nuclei_widefield, capsys):
    """OME-Zarr inputs got none of a TIFF's warnings (transmitted light, pixel sizes)."""
    from napari_cvdm.cli import main

    path = tmp_path / "dic.ome.zarr"
    data = (nuclei_widefield.max() - nuclei_widefield[:64, :64]).astype(np.uint16)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=data.shape, chunks=(32, 32), dtype=data.dtype)[:] = data
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.13, 0.065]}]}]}]
    assert main(["predict", str(path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "dic.ome.zarr: the image looks like transmitted light" in err
    assert "not square (130 nm along Y, 65 nm along X)" in err


def test_cvdm_predict_never_writes_into_an_input_store_and_patterns_find_stores(
        tmp_path, tiny_model_file, capsys):
    from napari_cvdm.cli import main

    path, _ = _input(tmp_path)
    listing = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    args = ["--model", str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"]
    assert main(["predict", str(path), "-o", str(path), *args]) == 2
    assert "inside an input OME-Zarr" in capsys.readouterr().err
    assert main(["predict", str(path), "-o", str(path / "sub"), *args]) == 2
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == listing
    out = tmp_path / "patterned"
    assert main(["predict", str(tmp_path / "i*.ome.zarr"), "-o", str(out), *args]) == 0, \
        capsys.readouterr().err
    assert (out / "in_cvdm.ome.zarr").is_dir()
    # A folder gives its OME-Zarr images too (they were skipped without a word), not the
    # results written beside them.
    assert main(["predict", str(tmp_path), "-o", str(tmp_path), *args]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "in_cvdm.ome.zarr").is_dir()
    assert main(["predict", str(tmp_path), "-o", str(tmp_path), "--resume", *args]) == 0
    assert "skipped" in capsys.readouterr().out


def test_an_ome_zarr_whose_outputs_exceed_memory_is_streamed_not_refused(tmp_path,
                                                                        tiny_model_file,
                                                                        monkeypatch, capsys):
    from napari_cvdm.cli import main

    path, data = _input(tmp_path)
    # A computer with 4 kB to spare: in-memory outputs of this image (2*3 planes of
    # 16 x 20 float32, twice) would be refused; the lazy result is written chunk by chunk.
    monkeypatch.setattr("napari_cvdm.validation.memory_bytes", lambda: 8 * 1024)
    with pytest.raises(ValueError, match="GiB"):
        import napari_cvdm as nc
        nc.predict(np.asarray(data), str(tiny_model_file), samples=1, steps=1)
    out = tmp_path / "out"
    code = main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "1", "--steps", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    mean, _ = read_ome_zarr(out / "in_cvdm.ome.zarr" / "mean")
    assert mean.shape == (2, 3, 16, 20) and np.isfinite(np.asarray(mean)).all()


def test_overwrite_replaces_only_an_earlier_result_never_another_folder(tmp_path):
    """Found by an audit: write_ome_zarr(..., overwrite=True) deleted any folder's files."""
    data = np.ones((8, 8), np.float32)
    folder = tmp_path / "victim"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a napari-cvdm result"):
        write_ome_zarr(folder, data, data, overwrite=True)
    assert (folder / "sub" / "data.txt").read_text() == "precious"
    assert sorted(p.name for p in folder.rglob("*")) == ["data.txt", "sub"]
    result = write_ome_zarr(tmp_path / "r.ome.zarr", data, data)
    write_ome_zarr(result, 2 * data, data, overwrite=True)
    mean, _ = read_ome_zarr(result / "mean")
    np.testing.assert_array_equal(np.asarray(mean), 2 * data)


@pytest.mark.parametrize("damage, message", [
    ("group", "is not an array"), ("scale 5", "one value per axis"),
    ("short scale", "one value per axis")])
def test_malformed_multiscales_metadata_is_a_clear_error(tmp_path, damage, message):
    """Found by an audit: AttributeError / TypeError tracebacks (exit 1), or a scale shorter
    than the axes taken silently (Y sized, X not)."""
    path, _ = _input(tmp_path)
    root = zarr.open_group(str(path), mode="r+")
    multiscales = root.attrs["multiscales"]
    dataset = multiscales[0]["datasets"][0]
    if damage == "group":
        root.create_group("sub")
        dataset["path"] = "sub"
    else:
        dataset["coordinateTransformations"][0]["scale"] = 5 if damage == "scale 5" else [0.1]
    root.attrs["multiscales"] = multiscales
    with pytest.raises(ValueError, match=message):
        read_ome_zarr(path)


def test_cvdm_predict_refuses_an_ome_zarr_whose_outputs_exceed_the_free_disk(
        tmp_path, tiny_model_file, capsys, monkeypatch):
    """Found by an audit: a huge store ran on with nothing said, toward a 1.3 TB output."""
    import collections
    import shutil

    from napari_cvdm.cli import main

    path, _ = _input(tmp_path)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(2**20, 2**20 - 1000, 1000))
    code = main(["predict", str(path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"])
    assert code == 1  # the machine's state, not bad input (as when the disk fills later)
    assert "in.ome.zarr (mean and std, float32, with coarser levels) need" in \
        capsys.readouterr().err
    assert not (tmp_path / "out" / "in_cvdm.ome.zarr").exists()


def test_an_output_path_that_names_nothing_is_refused_before_any_work(tmp_path, monkeypatch):
    """Found by an audit: write_ome_zarr("") computed, failed at the end and left a complete
    hidden .part store in the current folder."""
    monkeypatch.chdir(tmp_path)
    data = np.ones((8, 8), np.float32)
    for path in ("", ".", tmp_path / ".."):
        with pytest.raises(ValueError, match="names no folder"):
            write_ome_zarr(path, data, data, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_a_unit_that_is_not_a_name_drops_the_size_with_a_warning(tmp_path):
    """Found by an audit: {"a": 1} as a unit was taken for micrometres."""
    path, _ = _input(tmp_path)
    root = zarr.open_group(str(path), mode="r+")
    multiscales = root.attrs["multiscales"]
    multiscales[0]["axes"][3]["unit"] = {"a": 1}
    root.attrs["multiscales"] = multiscales
    with pytest.warns(UserWarning, match="not a unit name"):
        _, meta = read_ome_zarr(path)
    assert "X" not in meta["physical"] and meta["physical"]["Y"] == PhysicalSize(0.1, "µm")


def test_a_zarr_folder_that_is_no_image_is_refused_before_any_work(tmp_path, tiny_model_file,
                                                                   capsys):
    """Found by an audit: the run did the other inputs first, then failed on zarr's own
    message ("An array already exists in store ...")."""
    from napari_cvdm.cli import main

    _input(tmp_path)
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(8, 8), dtype="f4")
    code = main(["predict", str(tmp_path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"])
    assert code == 2
    assert "plain.zarr" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_leftover_old_folder_does_not_block_replacing_a_result(tmp_path):
    """Found by an audit: a non-empty '.<name>.old' (a crash's leftover) made the replace fail
    with "Directory not empty" and left the finished '.part' store behind."""
    data = np.ones((8, 8), np.float32)
    result = write_ome_zarr(tmp_path / "r.ome.zarr", data, data)
    (tmp_path / ".r.ome.zarr.old" / "x").mkdir(parents=True)
    write_ome_zarr(result, 3 * data, data, overwrite=True)
    mean, _ = read_ome_zarr(result / "mean")
    np.testing.assert_array_equal(np.asarray(mean), 3 * data)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.ome.zarr.old", "r.ome.zarr"]


def test_units_written_in_capitals_are_understood():
    """Found by an audit: "NM" and "MM" were unknown units, so the pixel-size check was
    skipped (only "UM" had an alias)."""
    from napari_cvdm.physical import normalise

    assert normalise(65, "NM") == PhysicalSize(65.0, "nm")
    assert normalise(0.5, "MS", time=True) == normalise(0.5, "ms", time=True)
    assert normalise(1e-3, "MM") == normalise(1e-3, "mm")


def test_a_link_to_a_result_is_replaced_and_a_foreign_output_folder_refused_up_front(
        tmp_path, tiny_model_file, capsys):
    """Found by a review: replacing a result reached through a symbolic link failed after all
    the work (EISDIR), and a foreign folder where an output goes was refused only at that
    input's turn, after the others."""
    from napari_cvdm.cli import main

    data = np.ones((8, 8), np.float32)
    (tmp_path / "real").mkdir()
    target = write_ome_zarr(tmp_path / "real" / "x_cvdm.ome.zarr", data, data)
    link = tmp_path / "x_cvdm.ome.zarr"
    link.symlink_to(target)
    write_ome_zarr(link, 2 * data, data, overwrite=True)
    mean, _ = read_ome_zarr(link / "mean")
    np.testing.assert_array_equal(np.asarray(mean), 2 * data)

    path, _ = _input(tmp_path)
    out = tmp_path / "out"
    (out / "in_cvdm.ome.zarr").mkdir(parents=True)
    (out / "in_cvdm.ome.zarr" / "notes.txt").write_text("mine")
    for extra in (["--overwrite"], ["--resume"]):
        code = main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                     "--samples", "1", "--steps", "1", "--quiet", *extra])
        assert code == 2 and "is not a napari-cvdm result" in capsys.readouterr().err
    assert [p.name for p in (out / "in_cvdm.ome.zarr").iterdir()] == ["notes.txt"]


def _two_level_scales(tmp_path, multiscale_scale, units=True, translation=None):
    """An NGFF 0.4 image whose dataset scale is 1 and whose multiscale scale (and
    translation) is given."""
    path = tmp_path / "ms.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(16, 16), chunks=(16, 16), dtype="u2")[:] = \
        np.arange(256, dtype=np.uint16).reshape(16, 16)
    unit = {"unit": "micrometer"} if units else {}
    outer = [{"type": "scale", "scale": multiscale_scale}]
    if translation is not None:
        outer.append({"type": "translation", "translation": translation})
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0]}]}],
        "coordinateTransformations": outer}]
    return path


def test_the_multiscales_own_scale_is_applied_after_the_datasets(tmp_path, tiny_model_file,
                                                                capsys):
    """Found by an audit: a scale in multiscales[0]["coordinateTransformations"] (NGFF 0.4
    and 0.5 apply it after the dataset's) was ignored, so an image of 0.1 µm pixels was
    read as 1 µm and its result written as 0.5 µm instead of 0.05 µm."""
    from napari_cvdm.cli import main

    path = _two_level_scales(tmp_path, [0.1, 0.2])
    _, meta = read_ome_zarr(path)
    assert meta["physical"] == {"Y": PhysicalSize(pytest.approx(0.1), "µm"),
                                "X": PhysicalSize(pytest.approx(0.2), "µm")}
    path = _two_level_scales(tmp_path, [0.1, 0.1])
    out = tmp_path / "out"
    assert main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "1", "--steps", "1", "--quiet"]) == 0, capsys.readouterr().err
    for name in ("mean", "std"):
        group = zarr.open_group(str(out / "ms_cvdm.ome.zarr" / name), mode="r")
        dataset = group.attrs["multiscales"][0]["datasets"][0]
        assert dataset["coordinateTransformations"][0]["scale"] == pytest.approx([0.05, 0.05])
    for bad in ([0.1], [0.1, 0.1, 0.1]):
        with pytest.raises(ValueError, match=r"multiscales' scale .* one value per axis"):
            read_ome_zarr(_two_level_scales(tmp_path, bad))


def test_omero_channel_labels_are_kept_in_the_result(tmp_path):
    """Found by an audit: the input's channel names (omero.channels[].label) were lost."""
    path = tmp_path / "c.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(2, 8, 8), chunks=(1, 8, 8), dtype="u2")[:] = 1
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}], "datasets": [{"path": "0"}]}]
    root.attrs["omero"] = {"channels": [{"label": "GFP", "color": "00FF00"},
                                        {"label": "RFP", "color": "FF0000"}]}
    _, meta = read_ome_zarr(path)
    assert meta["channels"] == ("GFP", "RFP")
    data = np.ones((2, 16, 16), np.float32)
    out = write_ome_zarr(tmp_path / "c_cvdm.ome.zarr", data, data, meta, scale=2)
    for name in ("mean", "std"):
        _, again = read_ome_zarr(out / name)
        assert again["channels"] == ("GFP", "RFP")
        assert again["attributes"]["omero"] == {"channels": [{"label": "GFP"},
                                                             {"label": "RFP"}]}
    # A label missing, or not one per channel: no names (never the wrong ones)
    for channels in ([{"label": "GFP"}, {"color": "FF0000"}], [{"label": "GFP"}], "GFP"):
        root.attrs["omero"] = {"channels": channels}
        assert "channels" not in read_ome_zarr(path)[1]
    out = write_ome_zarr(tmp_path / "d_cvdm.ome.zarr", data, data,
                         {"axes": "CYX", "channels": ("only one",)})
    assert "omero" not in read_ome_zarr(out / "mean")[1]["attributes"]


def _transforms(image) -> list:
    group = zarr.open_group(str(image), mode="r")
    return group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]


def test_a_result_overlays_its_input_with_the_inputs_origin(tmp_path):
    """Found by a review: results were written with a scale only, so in an OME-Zarr viewer
    they sat a quarter of an input pixel off (pixel centres), lost the input's translation
    (a tile of a larger acquisition), and without units were twice the input's size."""
    path = tmp_path / "tile.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(16, 16), chunks=(16, 16), dtype="f4")[:] = 1.0
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.1, 0.1]},
            {"type": "translation", "translation": [5.0, 3.0]}]}]}]
    _, meta = read_ome_zarr(path)
    assert meta["placement"] == {"Y": (pytest.approx(0.1), pytest.approx(5.0)),
                                 "X": (pytest.approx(0.1), pytest.approx(3.0))}
    out = write_ome_zarr(tmp_path / "r.ome.zarr", np.ones((32, 32)), np.zeros((32, 32)),
                         meta, scale=2)
    transforms = _transforms(out / "mean")
    assert transforms[0]["scale"] == pytest.approx([0.05, 0.05])
    assert transforms[1]["translation"] == pytest.approx([4.975, 2.975])
    bare = write_ome_zarr(tmp_path / "bare.ome.zarr", np.ones((8, 8)), np.zeros((8, 8)),
                          scale=2)  # no sizes: in input pixels
    transforms = _transforms(bare / "std")
    assert transforms == [{"type": "scale", "scale": [0.5, 0.5]},
                          {"type": "translation", "translation": [-0.25, -0.25]}]
    # an image without units: its scale and translation as they are
    _, meta = read_ome_zarr(_two_level_scales(tmp_path, [2.0, 2.0], units=False,
                                              translation=[10.0, 10.0]))
    out = write_ome_zarr(tmp_path / "u.ome.zarr", np.ones((32, 32)), np.zeros((32, 32)),
                         meta, scale=2)
    transforms = _transforms(out / "mean")
    assert transforms[0]["scale"] == pytest.approx([1.0, 1.0])
    assert transforms[1]["translation"] == pytest.approx([9.5, 9.5])
    # a translation that cannot be read places nothing and refuses nothing
    root = zarr.open_group(str(path), mode="r+")
    attrs = root.attrs["multiscales"]
    attrs[0]["datasets"][0]["coordinateTransformations"][1] = {"type": "translation",
                                                               "path": "t.json"}
    root.attrs["multiscales"] = attrs
    assert read_ome_zarr(path)[1]["placement"]["Y"] == (pytest.approx(0.1), 0.0)


@pytest.mark.parametrize("dataset,multiscale,units", [
    ([float("nan")] * 2, [1.0, 1.0], True),  # warned "not kept", written as NaN all the same
    ([-0.1, -0.1], [1.0, 1.0], True),  # a negative size: written through, its unit dropped
    ([1e308, 1e308], [10.0, 10.0], False),  # sizes that overflow to Infinity
])
def test_a_result_is_placed_only_with_finite_positive_sizes_and_strict_json(
        tmp_path, dataset, multiscale, units):
    """Found by a review: an input's unusable pixel sizes and overflowing translations went
    into the result's metadata as NaN or Infinity, which strict JSON readers refuse."""
    import json

    path = tmp_path / "odd.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(16, 16), chunks=(16, 16), dtype="f4")[:] = 1.0
    unit = {"unit": "micrometer"} if units else {}
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": dataset},
            {"type": "translation", "translation": [1e308, 1e308]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": multiscale}]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the implausible sizes are warned about
        _, meta = read_ome_zarr(path)
    assert meta["placement"] == {"Y": (1.0, 0.0), "X": (1.0, 0.0)}
    out = write_ome_zarr(tmp_path / "r.ome.zarr", np.ones((32, 32)), np.zeros((32, 32)),
                         meta, scale=2)
    text = next(p for p in (out / "mean" / ".zattrs", out / "mean" / "zarr.json")
                if p.exists()).read_text()

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    json.loads(text, parse_constant=refuse)
    assert _transforms(out / "mean") == [{"type": "scale", "scale": [0.5, 0.5]},
                                         {"type": "translation", "translation": [-0.25, -0.25]}]


def test_the_command_line_says_every_warning_on_one_line_naming_the_file(tmp_path,
                                                                         tiny_model_file,
                                                                         capsys):
    """Found by a review: the rechunking warning came as Python shows warnings (a source
    line and "UserWarning"), and a unit not understood once per axis, naming no file."""
    from napari_cvdm.cli import main

    path = tmp_path / "small_chunks.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(48, 48), chunks=(8, 8), dtype="u2")[:] = \
        np.arange(48 * 48, dtype=np.uint16).reshape(48, 48)
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", "unit": "parsec"},
        {"name": "x", "type": "space", "unit": "parsec"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.1, 0.1]}]}]}]
    assert main(["predict", str(path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "2", "--steps", "2", "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert all(line.startswith("cvdm predict: warning: ") for line in err), err
    units = [line for line in err if "unknown length unit 'parsec'" in line]
    assert len(units) == 1 and "small_chunks.ome.zarr: " in units[0]
    assert any("rechunked" in line for line in err)


def _image_at(group, data):
    """An NGFF 0.4 image of ``data`` (Y, X, 0.1 µm pixels) in the zarr group ``group``."""
    group.create_array("0", shape=data.shape, chunks=data.shape, dtype=data.dtype)[:] = data
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.1, 0.1]}]}]}]


def _bioformats2raw(tmp_path, series=3):
    """A bioformats2raw store of ``series`` images (stage positions), each its own values."""
    path = tmp_path / "positions.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    planes = [np.full((16, 20), 100 * (i + 1), np.uint16) for i in range(series)]
    for i, plane in enumerate(planes):
        _image_at(root.create_group(str(i)), plane)
    root.create_group("OME").attrs["series"] = [str(i) for i in range(series)]
    return path, planes


def _plate(tmp_path):
    """An HCS plate (NGFF 0.4) with one well, A/1, of one field, 0."""
    path = tmp_path / "plate.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["plate"] = {"version": "0.4", "rows": [{"name": "A"}],
                           "columns": [{"name": "1"}],
                           "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0}]}
    well = root.create_group("A").create_group("1")
    well.attrs["well"] = {"version": "0.4", "images": [{"path": "0"}]}
    field = np.arange(16 * 20, dtype=np.uint16).reshape(16, 20)
    _image_at(well.create_group("0"), field)
    return path, field


def test_a_store_of_several_series_says_only_series_0_is_read_and_how_to_read_another(
        tmp_path):
    """Found by a review: of a bioformats2raw store of several positions, only the first
    was read, without a word."""
    path, planes = _bioformats2raw(tmp_path)
    with pytest.warns(UserWarning, match=r"holds 3 series .* only series 0 is read; give "
                                         r"another's folder to read it, e.g. .*ome.zarr/1"):
        array, _ = read_ome_zarr(path)
    np.testing.assert_array_equal(np.asarray(array), planes[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        array, meta = read_ome_zarr(path / "2")
        single, _ = _bioformats2raw(tmp_path / "one", series=1)
        read_ome_zarr(single)  # one series: nothing to say
    np.testing.assert_array_equal(np.asarray(array), planes[2])
    assert meta["physical"]["X"] == PhysicalSize(0.1, "µm")


def test_a_plate_or_well_is_refused_with_the_field_to_give(tmp_path):
    path, _ = _plate(tmp_path)
    with pytest.raises(ValueError, match=r"an HCS plate \(1 well\(s\)\), not one image; give "
                                         r"one field of it as the input, e.g. .*plate.ome.zarr"
                                         r"/A/1/0$"):
        read_ome_zarr(path)
    with pytest.raises(ValueError, match=r"a well of an HCS plate.*plate.ome.zarr/A/1/0$"):
        read_ome_zarr(path / "A" / "1")


def test_cvdm_predict_takes_a_series_or_a_field_inside_a_store(tmp_path, tiny_model_file,
                                                               capsys):
    from napari_cvdm.cli import main
    from napari_cvdm.cli.predict import expand_inputs

    store, planes = _bioformats2raw(tmp_path)
    plate, field = _plate(tmp_path)
    args = ["--model", str(tiny_model_file), "--samples", "1", "--steps", "1", "--quiet"]
    out = tmp_path / "out"
    assert main(["predict", str(store / "1"), str(plate / "A" / "1" / "0"), "-o", str(out),
                 *args]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["plate_A_1_0_cvdm.ome.zarr",
                                                     "positions_1_cvdm.ome.zarr"]
    mean, _ = read_ome_zarr(out / "positions_1_cvdm.ome.zarr" / "mean")
    assert mean.shape == (32, 40)
    assert abs(float(np.asarray(mean).mean()) - planes[1].mean()) < 50  # series 1's values
    # a pattern over a store's folders finds its series, not its OME folder
    assert expand_inputs([str(store / "*")]) == [store / str(i) for i in range(3)]
    # a plate as a whole: the field to give, before any work; nothing written into a store
    assert main(["predict", str(plate), "-o", str(tmp_path / "o2"), *args]) == 2
    assert "give one field of it as the input, e.g." in capsys.readouterr().err
    assert main(["predict", str(store / "1"), "-o", str(store / "results"), *args]) == 2
    assert "inside an input OME-Zarr" in capsys.readouterr().err
    assert not (store / "results").exists()


def test_a_large_result_gets_coarser_levels_placed_over_the_finest(tmp_path, monkeypatch):
    """A viewer shows a large result zoomed out from coarser levels instead of reading all of
    it: 2 x 2 averages (root mean square for the std) until a plane fits PYRAMID_TOP, each
    level's pixel centres on the centres of the blocks it averages."""
    import napari_cvdm.zarr_files as zf

    monkeypatch.setattr(zf, "PYRAMID_TOP", 16)  # the rule on small arrays
    rng = np.random.default_rng(0)
    mean = rng.random((2, 70, 45)).astype(np.float32)
    std = rng.random((2, 70, 45)).astype(np.float32)
    meta = {"axes": "TYX", "physical": {a: PhysicalSize(0.1, "µm") for a in "YX"}}
    out = write_ome_zarr(tmp_path / "r_cvdm.ome.zarr", mean, std, meta, scale=2)
    group = zarr.open_group(str(out / "mean"), mode="r")
    datasets = group.attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    assert [group[d["path"]].shape for d in datasets] == [(2, 70, 45), (2, 35, 22),
                                                           (2, 17, 11), (2, 8, 5)]
    np.testing.assert_allclose(group["1"][:], mean[:, :70, :44].reshape(2, 35, 2, 22, 2)
                               .mean(axis=(2, 4)), rtol=1e-6)
    std_levels = zarr.open_group(str(out / "std"), mode="r")
    np.testing.assert_allclose(std_levels["1"][:], np.sqrt(
        (std[:, :70, :44] ** 2).reshape(2, 35, 2, 22, 2).mean(axis=(2, 4))), rtol=1e-6)

    def placement(d):
        t = {x["type"]: x[x["type"]] for x in d["coordinateTransformations"]}
        return t["scale"], t.get("translation", [0.0, 0.0, 0.0])

    for k, d in enumerate(datasets):  # pixel 0 of level k: the centre of 2^k x 2^k finest
        scale, shift = placement(d)
        assert scale == pytest.approx([1.0, 0.05 * 2**k, 0.05 * 2**k])
        assert shift[1:] == pytest.approx([-0.025 + 0.05 * (2**k - 1) / 2] * 2)
    # the finest level is what a reader of the result gets, as before
    again, read_meta = read_ome_zarr(out / "mean")
    np.testing.assert_array_equal(np.asarray(again), mean)
    # a result that fits gets none
    small = write_ome_zarr(tmp_path / "s_cvdm.ome.zarr", mean[:, :16, :16], std[:, :16, :16],
                           meta, scale=2)
    assert list(zarr.open_group(str(small / "mean"), mode="r").array_keys()) == ["0"]


def test_cvdm_predict_reports_the_time_an_ome_zarr_took(tmp_path, tiny_model_file, capsys,
                                                        monkeypatch):
    """Found by a review: a lazy result is computed while it is written, and the line said
    the graph's set-up time (0.6 s for a 21 s run)."""
    import re

    import napari_cvdm.zarr_files as zf
    from napari_cvdm.cli import main

    real = zf.write_ome_zarr

    def slow(*args, **kwargs):  # the compute happens in here
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(zf, "write_ome_zarr", slow)
    path, _ = _input(tmp_path)
    assert main(["predict", str(path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "2", "--steps", "1"]) == 0
    seconds = float(re.search(r", ([0-9.]+) s on ", capsys.readouterr().out).group(1))
    assert seconds >= 1.5


def test_a_result_whose_coarser_levels_cannot_be_written_is_kept_at_full_resolution(
        tmp_path, monkeypatch):
    """Found by a review: a disk that filled while the coarser levels were written threw the
    finished full-resolution result away."""
    import napari_cvdm.zarr_files as zf

    monkeypatch.setattr(zf, "PYRAMID_TOP", 16)
    real = zf.ZarrResultWriter._add_levels

    def fills_the_disk(self):
        real(self)  # levels written, then the disk is full before the mark
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zf.ZarrResultWriter, "_add_levels", fills_the_disk)
    mean = np.random.default_rng(0).random((64, 40)).astype(np.float32)
    with pytest.warns(UserWarning, match="coarser levels could not be written"):
        out = write_ome_zarr(tmp_path / "r_cvdm.ome.zarr", mean, mean, {"axes": "YX"})
    group = zarr.open_group(str(out / "mean"), mode="r")
    assert list(group.array_keys()) == ["0"]
    assert [d["path"] for d in group.attrs["multiscales"][0]["datasets"]] == ["0"]
    np.testing.assert_array_equal(np.asarray(read_ome_zarr(out / "mean")[0]), mean)
    from napari_cvdm.zarr_files import is_complete_result
    assert is_complete_result(out)


def test_channel_and_time_axes_are_known_by_their_type_and_custom_ones_are_said(tmp_path):
    """Found by a review: axes were named by the first letter of their name, so a channel
    axis named "wavelength" became a spatial axis (W, written as z) and lost its labels."""
    path = tmp_path / "w.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(3, 2, 8, 8), chunks=(1, 1, 8, 8), dtype="u2")[:] = 1
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "frame", "type": "time", "unit": "second"},
        {"name": "wavelength", "type": "channel"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}], "datasets": [{"path": "0", "coordinateTransformations":
                                                       [{"type": "scale",
                                                         "scale": [5.0, 1, 1, 1]}]}]}]
    root.attrs["omero"] = {"channels": [{"label": "GFP"}, {"label": "RFP"}]}
    _, meta = read_ome_zarr(path)
    assert meta["axes"] == "TCYX" and meta["channels"] == ("GFP", "RFP")
    assert meta["physical"]["T"] == PhysicalSize(5.0, "s")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "angle", "type": "angle", "unit": "degree"}, {"name": "t", "type": "time"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0"}]}]
    with pytest.warns(UserWarning, match=r"axis 'angle' \(angle\) has no OME equivalent"):
        assert read_ome_zarr(path)[1]["axes"] == "ATYX"
