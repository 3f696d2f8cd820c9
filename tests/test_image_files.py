"""Image files: bounded reading of hostile TIFFs, OME-TIFF output with axes, sizes, provenance."""

from __future__ import annotations

import errno
import os
import tracemalloc
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile

from napari_cvdm.image_files import count_pages, read_tiff
from napari_cvdm.physical import PhysicalSize
from napari_cvdm.tiff_writer import (check_outputs, output_spec, spec_for, write_ome_tiff,
                                     write_ome_tiffs)

AXES = ["YX", "ZYX", "CYX", "TYX", "TZYX", "TCZYX"]
SIZES = {"X": 0.1, "Y": 0.1, "Z": 0.3, "T": 2.0}


def _pixels(path):
    with tifffile.TiffFile(path) as tif:
        root = ET.fromstring(tif.ome_metadata)
        axes = tif.series[0].axes
    pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels"))
    return axes, pixels, root


def _input(tmp_path, axes, kind):
    shape = {"T": 2, "C": 2, "Z": 3, "Y": 6, "X": 5}
    data = np.arange(np.prod([shape[a] for a in axes]), dtype=np.uint16).reshape(
        [shape[a] for a in axes])
    path = tmp_path / f"in_{kind}_{axes}.tif"
    if kind == "ome":
        meta = {"axes": axes, "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1}
        if "Z" in axes:
            meta["PhysicalSizeZ"] = 0.3
        if "T" in axes:
            meta.update(TimeIncrement=2.0, TimeIncrementUnit="s")
        tifffile.imwrite(path, data, ome=True, metadata=meta)
    else:  # ImageJ orders hyperstacks T, Z, C
        axes_ij = "".join(a for a in "TZCYX" if a in axes)
        data = np.moveaxis(data, [axes.index(a) for a in axes_ij], range(len(axes)))
        meta = {"axes": axes_ij, "unit": "um", "spacing": 0.3, "finterval": 2.0}
        tifffile.imwrite(path, data, imagej=True, resolution=(10.0, 10.0), metadata=meta)
        axes = axes_ij
    return path, axes


@pytest.mark.parametrize("kind", ["ome", "imagej"])
@pytest.mark.parametrize("axes", AXES)
def test_output_keeps_axes_and_every_physical_size(tmp_path, axes, kind):
    path, axes = _input(tmp_path, axes, kind)
    image = read_tiff(path)
    assert image.axes == axes
    mean = np.zeros(image.data.shape[:-2] + (12, 10), np.float32)
    out = write_ome_tiff(tmp_path / "out.ome.tif", mean, spec_for(image, 2, {"seed": 7}))
    written_axes, pixels, _ = _pixels(out)
    assert written_axes == axes
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.05)
    assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.05)
    assert pixels.get("PhysicalSizeXUnit") == "µm"
    if "Z" in axes:
        assert float(pixels.get("PhysicalSizeZ")) == pytest.approx(0.3)
    else:
        assert pixels.get("PhysicalSizeZ") is None
    if "T" in axes:
        assert float(pixels.get("TimeIncrement")) == pytest.approx(2.0)
        assert pixels.get("TimeIncrementUnit") == "s"
    np.testing.assert_array_equal(tifffile.imread(out), mean)


def test_tzyx_round_trip_reads_back_with_halved_xy_and_the_same_z_and_t(tmp_path):
    path, _ = _input(tmp_path, "TZYX", "ome")
    image = read_tiff(path)
    out = write_ome_tiff(tmp_path / "o.ome.tif", np.ones((2, 3, 12, 10), np.float32),
                         spec_for(image, 2))
    again = read_tiff(out)
    assert again.axes == "TZYX"
    assert again.physical == {"X": PhysicalSize(0.05, "µm"), "Y": PhysicalSize(0.05, "µm"),
                              "Z": PhysicalSize(0.3, "µm"), "T": PhysicalSize(2.0, "s")}
    with tifffile.TiffFile(out) as tif:  # readers without OME support: 0.05 µm per pixel
        numerator, denominator = tif.pages[0].tags["XResolution"].value
        assert tif.pages[0].tags["ResolutionUnit"].value == 3  # centimetre
        assert denominator / numerator * 1e4 == pytest.approx(0.05)


def test_a_planar_rgb_file_is_read_as_the_rgb_image_it_is(tmp_path):
    """tifffile reads an RGB TIFF stored plane by plane as SYX: it was predicted as three
    channels, while the same image stored interleaved was refused as RGB."""
    path = tmp_path / "planar.tif"
    data = np.arange(3 * 6 * 5, dtype=np.uint8).reshape(3, 6, 5)
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate")
    image = read_tiff(path)
    assert image.axes == "YXS"
    np.testing.assert_array_equal(image.data, np.moveaxis(data, 0, -1))


def test_the_samples_of_a_planar_multi_sample_file_are_written_as_channels(tmp_path):
    """A planar file of several grey samples reads as SYX; its samples were written as Z
    slices."""
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.zeros((3, 6, 5), np.uint16), photometric="minisblack",
                     planarconfig="separate")
    image = read_tiff(path)
    assert image.axes == "SYX"
    out = write_ome_tiff(tmp_path / "o.ome.tif", np.ones((3, 12, 10), np.float32),
                         spec_for(image, 2))
    assert read_tiff(out).axes == "CYX"
    assert output_spec("ZSYX", 4).axes == "ZCYX"
    assert output_spec("CSYX", 4).axes == "CZYX"  # C taken: the first unused letter


def test_unlabelled_leading_axes_get_the_unused_letters(tmp_path):
    assert output_spec("QQQYX", 5).axes == "ZTCYX"  # a 5-D file saved without axes
    assert output_spec("TQQYX", 5).axes == "TZCYX"
    with pytest.raises(ValueError, match="at most T, Z, C"):
        output_spec("QQQQYX", 6)
    with pytest.raises(ValueError, match="at most T, Z, C"):
        output_spec("ZZYX", 4)


def test_provenance_is_stored_as_an_ome_map_annotation(tmp_path):
    provenance = {"napari_cvdm": "0.1.0", "model": "demo", "sha256": "ab" * 32, "seed": 3,
                  "samples": 8, "steps": 50, "eta": 1.0, "sampler": "ddim",
                  "precision": "fp32", "device": "cpu", "date": "2026-11-24T14:00:00Z"}
    spec = output_spec("YX", 2, {}, 2, provenance)
    out = write_ome_tiff(tmp_path / "p.ome.tif", np.zeros((4, 4), np.float32), spec)
    _, _, root = _pixels(out)
    pairs = {m.get("K"): m.text for m in root.iter() if m.tag.endswith("}M")}
    assert pairs == {k: str(v) for k, v in provenance.items()}


def test_ome_metadata_that_does_not_parse_gives_pixels_a_warning_and_no_sizes(tmp_path,
                                                                             caplog):
    path = tmp_path / "bad.ome.tif"
    data = np.arange(30, dtype=np.uint16).reshape(6, 5)
    tifffile.imwrite(path, data, ome=True, metadata={"PhysicalSizeX": 0.1,
                                                     "PhysicalSizeY": 0.1})
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"<Pixels ", b"<Pixels<", 1))  # same length, broken XML
    with pytest.warns(UserWarning, match="OME metadata could not be read"):
        image = read_tiff(path)
    # said once, by the warning: not also by tifffile's "OME series raised ParseError" line
    assert not [r for r in caplog.records if r.name == "tifffile"]
    np.testing.assert_array_equal(image.data, data)
    assert image.physical == {} and image.pixel_size is None
    out = write_ome_tiff(tmp_path / "o.ome.tif", np.zeros((12, 10), np.float32),
                         spec_for(image, 2))
    assert _pixels(out)[1].get("PhysicalSizeX") is None


def test_angstrom_becomes_nanometres_and_unknown_units_are_dropped(tmp_path):
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, np.zeros((6, 5), np.uint16), ome=True, metadata={
        "PhysicalSizeX": 2.0, "PhysicalSizeXUnit": "Å", "PhysicalSizeY": 2.0,
        "PhysicalSizeYUnit": "Å"})
    assert read_tiff(path).physical["X"] == PhysicalSize(pytest.approx(0.2), "nm")
    with pytest.warns(UserWarning, match="unknown length unit"):
        spec = output_spec("YX", 2, {"X": PhysicalSize(1.0, "furlong")}, 2)
    assert "PhysicalSizeX" not in spec.tifffile_metadata()


def test_a_decimal_comma_is_read_and_a_size_that_is_no_number_is_said(tmp_path):
    """Found by a review: "0,065" (a locale-bound writer's decimal comma) was dropped
    without a word, and so was any other size that is not a number."""
    image = np.zeros((6, 5), np.uint16)
    path = tmp_path / "comma.ome.tif"
    tifffile.imwrite(path, image, ome=True, metadata={"PhysicalSizeX": "0,065",
                                                      "PhysicalSizeY": "0,065"})
    assert read_tiff(path).pixel_size == pytest.approx((0.065, 0.065))
    tifffile.imwrite(path, image, ome=True, metadata={"PhysicalSizeX": "1,000.5",
                                                      "PhysicalSizeY": "n/a"})
    with pytest.warns(UserWarning, match="pixel size 'n/a' is not a number"):
        assert read_tiff(path).physical == {}
    tifffile.imwrite(path, image, ome=True, metadata={"PhysicalSizeX": "1,000",
                                                      "PhysicalSizeY": "0,065"})
    with pytest.warns(UserWarning, match="'1,000' may be 1.000 or 1000"):
        assert set(read_tiff(path).physical) == {"Y"}


def test_an_imagej_stack_whose_pages_end_early_is_refused_with_both_counts(tmp_path):
    """Found by a review: tifffile lists the planes the metadata declares and ran out with
    "IndexError: index out of range" where the file's chain of pages ends early."""
    import struct

    from napari_cvdm.image_files import probe_tiff

    path = tmp_path / "stopped.tif"
    tifffile.imwrite(path, np.ones((5, 16, 16), np.uint16), imagej=True,
                     metadata={"axes": "TYX"})
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[2].offset
    raw = bytearray(path.read_bytes())
    entries = struct.unpack("<H", raw[offset:offset + 2])[0]
    raw[offset + 2 + 12 * entries:offset + 6 + 12 * entries] = b"\0\0\0\0"  # chain ends
    path.write_bytes(bytes(raw))
    for read in (read_tiff, probe_tiff):
        with pytest.raises(ValueError, match="holds only 3 of the 5 planes"):
            read(path)


def test_a_plain_tiff_of_pages_of_different_shapes_is_refused_not_cut(tmp_path):
    """Found by an audit: tifffile reads a plain TIFF's pages like the first as its image;
    a second page of another shape was dropped without a word (exit 0)."""
    from napari_cvdm.image_files import probe_tiff

    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.ones((32, 32), np.uint16), metadata=None)
    tifffile.imwrite(path, np.ones((16, 16), np.uint16), metadata=None, append=True)
    for read in (read_tiff, probe_tiff):
        with pytest.raises(ValueError, match="holds 2 pages of different shapes"):
            read(path)
    tifffile.imwrite(path, np.ones((32, 32), np.uint16), metadata=None, append=True)
    with pytest.raises(ValueError, match="separate images"):  # tifffile: two series
        read_tiff(path)


def test_a_time_step_of_zero_means_none_recorded_and_is_not_warned_about(tmp_path):
    import warnings

    path = tmp_path / "t0.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 6, 5), np.uint16), ome=True,
                     metadata={"axes": "TYX", "TimeIncrement": 0.0, "PhysicalSizeX": 0.1,
                               "PhysicalSizeY": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_tiff(path)
    assert "T" not in image.physical and image.pixel_size == pytest.approx((0.1, 0.1))


def test_an_extreme_resolution_tag_is_not_taken_as_a_pixel_size(tmp_path):
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, np.zeros((6, 5), np.uint16), resolution=((1, 4294967295),
                                                                    (1, 4294967295)))
    image = read_tiff(path)
    spec = spec_for(image, 2)  # must not fail: nothing unwritable survives reading
    write_ome_tiff(tmp_path / "o.ome.tif", np.zeros((12, 10), np.float32), spec)


@pytest.mark.parametrize("dpi, unit, kept", [(72, "INCH", None), (300, "INCH", None),
                                              (28.3465, "CENTIMETER", None),
                                              (100000.0, "CENTIMETER", 0.1),
                                              (254000.0, "INCH", 0.1)])
def test_a_graphics_programs_dpi_is_not_taken_as_a_pixel_size(tmp_path, dpi, unit, kept):
    """72 dpi (MATLAB, GIMP, PIL) read as 353 µm pixels, and the run warned to resample."""
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, np.zeros((6, 5), np.uint16), resolution=(dpi, dpi),
                     resolutionunit=unit)
    image = read_tiff(path)
    if kept is None:
        assert image.pixel_size is None and image.physical == {}
        # as Fiji saves a 72-dpi image: the unit in its own metadata
        tifffile.imwrite(path, np.zeros((6, 5), np.uint16), imagej=True,
                         resolution=(dpi, dpi), metadata={"unit": unit.lower()[:4]
                                                          .replace("cent", "cm")})
        assert read_tiff(path).physical == {}
    else:
        assert image.physical["X"].unit in ("µm", "cm")
        size = image.physical["X"].size * (1e4 if image.physical["X"].unit == "cm" else 1)
        assert size == pytest.approx(kept)


def test_existing_outputs_are_refused_unless_overwrite(tmp_path):
    spec = output_spec("YX", 2)
    target = write_ome_tiff(tmp_path / "o.ome.tif", np.zeros((4, 4), np.float32), spec)
    with pytest.raises(ValueError, match="exists"):
        write_ome_tiff(target, np.ones((4, 4), np.float32), spec)
    np.testing.assert_array_equal(tifffile.imread(target), 0)
    write_ome_tiff(target, np.ones((4, 4), np.float32), spec, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(target), 1)


def test_output_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_ome_tiff(tmp_path / "o.ome.tif", np.zeros((4, 4), np.float32),
                             output_spec("YX", 2))
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("layout", ["tiles", "strips"])
def test_tiles_or_strips_without_data_are_warned_about(tmp_path, layout):
    """Offset and byte count 0 (a damaged file): readers give zeros there, silently."""
    path = tmp_path / "holes.tif"
    data = np.arange(1, 48 * 48 + 1, dtype=np.uint16).reshape(48, 48)
    kwargs = {"tile": (16, 16)} if layout == "tiles" else {"rowsperstrip": 8}
    tifffile.imwrite(path, data, **kwargs)
    names = ("TileOffsets", "TileByteCounts") if layout == "tiles" else (
        "StripOffsets", "StripByteCounts")
    with tifffile.TiffFile(path) as tif:
        tags = [tif.pages[0].tags[name] for name in names]
    raw = bytearray(path.read_bytes())
    for tag in tags:
        width = {3: 2, 4: 4, 16: 8}[tag.dtype]
        for index in (1, 2):
            raw[tag.valueoffset + index * width:tag.valueoffset + (index + 1) * width] = \
                bytes(width)
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=f"2 of {len(tags[0].value)} {layout} hold no data"):
        image = read_tiff(path)
    assert (image.data == 0).sum() > 0  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tifffile.imwrite(tmp_path / "whole.tif", data, **kwargs)
        read_tiff(tmp_path / "whole.tif")  # an intact file: no warning


def test_a_full_disk_is_reported_as_such_and_leaves_nothing(tmp_path, monkeypatch):
    def full(path, data, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00partial")
        raise OSError(errno.ENOSPC, "wrote 8 of 1024 bytes")

    monkeypatch.setattr(tifffile, "imwrite", full)
    items = [(tmp_path / "m.ome.tif", np.zeros((4, 4))), (tmp_path / "v.ome.tif",
                                                            np.zeros((4, 4)))]
    with pytest.raises(OSError, match="No space left on device"):
        write_ome_tiffs(items, output_spec("YX", 2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("free", [0, 10**12])
def test_a_full_disk_reported_without_an_error_code_is_still_a_full_disk(tmp_path, monkeypatch,
                                                                         free):
    """numpy's tofile (under tifffile) reports a full disk as a bare OSError ("36864
    requested and 13256 written", no errno): it was passed on as such, unexplained."""
    import shutil

    def short_write(path, data, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00partial")
        raise OSError("36864 requested and 13256 written")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tifffile, "imwrite", short_write)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage._replace(free=free))
    message = "No space left on device" if free == 0 else "36864 requested and 13256 written"
    with pytest.raises(OSError, match=message):
        write_ome_tiffs([(tmp_path / "m.ome.tif", np.zeros((4, 4)))], output_spec("YX", 2))
    assert list(tmp_path.iterdir()) == []


def test_check_outputs_finds_bad_folders_and_names_before_any_work(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match="symbolic link loop"):
        check_outputs([loop / "a.ome.tif"])
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        check_outputs([dangling / "a.ome.tif"])
    with pytest.raises(ValueError, match="too long"):
        check_outputs([tmp_path / ("x" * 300 + ".ome.tif")])
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        check_outputs([afile / "a.ome.tif"])
    assert check_outputs([tmp_path / "new" / "a.ome.tif"]) == [tmp_path / "new" / "a.ome.tif"]
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in read-only folders")
def test_check_outputs_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    with pytest.raises(ValueError, match="cannot write"):
        check_outputs([folder / "a.ome.tif"])


def test_lzw_compressed_tiffs_are_read(tmp_path):
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    for compression in ("lzw", "zstd", "jpeg"):
        path = tmp_path / f"{compression}.tif"
        image = data.astype(np.uint8) if compression == "jpeg" else data
        tifffile.imwrite(path, image, compression=compression)
        read = read_tiff(path).data
        assert read.shape == (64, 64)
        if compression != "jpeg":
            np.testing.assert_array_equal(read, data)


def _tiled_declaring(tmp_path, side):
    """A few-kB tiled TIFF whose header declares a ``side`` x ``side`` uint16 image."""
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, np.zeros((side, side), np.uint16), tile=(256, 256),
                     compression="zlib")
    return path


def test_a_small_tiled_tiff_declaring_a_huge_image_is_refused_before_allocation(
        tmp_path, monkeypatch):
    path = _tiled_declaring(tmp_path, 4096)  # 32 MiB declared, about 40 kB on disk
    monkeypatch.setattr("napari_cvdm.image_files.max_image_bytes", lambda: 16 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="declares an image"):
            read_tiff(path)
        assert tracemalloc.get_traced_memory()[1] < 2 * 2**20
    finally:
        tracemalloc.stop()


def test_the_outputs_count_against_the_memory_an_input_may_use(tmp_path, monkeypatch):
    path = _tiled_declaring(tmp_path, 1024)  # 2 MiB; mean + variance at x2: 32 MiB
    monkeypatch.setattr("napari_cvdm.image_files.max_image_bytes", lambda: 16 * 2**20)
    assert read_tiff(path).data.shape == (1024, 1024)
    with pytest.raises(ValueError, match="with its outputs"):
        read_tiff(path, scale=2)


def test_reading_a_tiled_tiff_needs_little_more_than_its_image(tmp_path):
    path = _tiled_declaring(tmp_path, 2048)
    tracemalloc.start()
    try:
        image = read_tiff(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.2 * image.data.nbytes


def test_a_chain_of_images_that_loops_is_refused(tmp_path):
    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, np.zeros((6, 5), np.uint16))
    with tifffile.TiffFile(path) as tif:
        ifd = tif.pages[0].offset
        entries = len(tif.pages[0].tags)
    raw = bytearray(path.read_bytes())
    next_at = ifd + 2 + 12 * entries
    raw[next_at:next_at + 4] = ifd.to_bytes(4, "little")  # the image's successor is itself
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="loops back"):
        read_tiff(path)
    stack = tmp_path / "stack.tif"
    with tifffile.TiffWriter(stack) as writer:
        for _ in range(3):
            writer.write(np.zeros((6, 5), np.uint16))
    assert count_pages(stack) == 3

def test_a_tiff_declaring_an_enormous_image_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    monkeypatch.setattr("napari_cvdm.image_files.max_image_bytes", lambda: 1000)
    with pytest.raises(ValueError, match="declares an image of"):
        read_tiff(path)


def test_a_tiff_with_a_zero_pixel_size_reads_without_one(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint16), resolution=(2.0, 2.0))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["XResolution"].valueoffset
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 8] = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")  # 0/1 px
    path.write_bytes(bytes(raw))
    image = read_tiff(path)
    assert image.pixel_size is None and image.data.shape == (8, 8)


def test_a_prediction_written_with_its_provenance(tiny_model, tmp_path):
    import napari_cvdm as nc
    from napari_cvdm.model_files import resolve_model
    from napari_cvdm.tiff_writer import result_provenance

    model_path = nc.save_model(tiny_model, tmp_path / "m.cvdm.safetensors")
    model, summary = resolve_model(model_path)
    path, axes = _input(tmp_path, "ZYX", "ome")
    image = read_tiff(path, scale=model.config.scale)
    result = nc.predict(image.data, model, samples=2, steps=2, seed=5, device="cpu")
    spec = spec_for(image, result.scale, result_provenance(summary, result))
    mean_path, var_path = write_ome_tiffs([(tmp_path / "m.ome.tif", result.mean),
                                           (tmp_path / "v.ome.tif", result.variance)], spec)
    again = read_tiff(mean_path)
    assert again.axes == "ZYX" and again.data.shape == (3, 12, 10)
    assert again.physical["X"].size == pytest.approx(0.05)
    _, _, root = _pixels(var_path)
    pairs = {m.get("K"): m.text for m in root.iter() if m.tag.endswith("}M")}
    assert pairs["model_sha256"] == summary["sha256"] and pairs["seed"] == "5"
    assert pairs["samples"] == "2" and pairs["precision"] and pairs["date"].startswith("20")


def _channel_names(path):
    _, pixels, _ = _pixels(path)
    return [c.get("Name") for c in pixels if c.tag.endswith("}Channel")]


def test_ome_channel_names_are_kept_in_the_outputs(tiny_model_file, tmp_path, capsys):
    """Found by an audit: the input's OME channel names (GFP, RFP) were dropped, so the
    outputs' channels had no Name."""
    from napari_cvdm.cli import main

    path = tmp_path / "x.ome.tif"
    data = np.random.default_rng(0).integers(0, 1000, (2, 2, 2, 16, 16)).astype(np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "TZCYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 0.5,
        "TimeIncrement": 2.0, "TimeIncrementUnit": "s", "Channel": {"Name": ["GFP", "RFP"]}})
    assert read_tiff(path).channels == ("GFP", "RFP")
    out = tmp_path / "out"
    assert main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "2", "--steps", "2", "--quiet"]) == 0, capsys.readouterr().err
    for kind in ("mean", "std", "var"):
        assert _channel_names(out / f"x_cvdm_{kind}.tif") == ["GFP", "RFP"]
        again = read_tiff(out / f"x_cvdm_{kind}.tif")
        assert again.axes == "TZCYX" and again.physical["X"].size == pytest.approx(0.05)
    # Names only where each channel has one; else none (never the wrong ones)
    raw = path.read_bytes()
    cases = {b'Name="RFP"': b'Nome="RFP"',  # one channel unnamed
             b"<Pixels ": b"<Pixels<"}      # OME-XML that does not parse
    for old, new in cases.items():
        path.write_bytes(raw.replace(old, new, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the broken XML's warning
            assert read_tiff(path).channels == ()
    image = read_tiff(tmp_path / "out" / "x_cvdm_mean.tif")
    image.channels = ("only one",)  # not one per channel: not written
    written = write_ome_tiff(tmp_path / "o.ome.tif", image.data, spec_for(image, 1))
    assert _channel_names(written) == [None, None]
    spec = output_spec("CYX", 3, channels=("a", "b", "c"))  # a file of another channel count
    written = write_ome_tiff(tmp_path / "p.ome.tif", np.zeros((2, 8, 8), np.float32), spec)
    assert _channel_names(written) == [None, None]


def _positions(path):
    planes = [el for el in _pixels(path)[2].iter() if el.tag.endswith("}Plane")]
    return [{k: v for k, v in el.attrib.items() if k.startswith("Position")} for el in planes]


def test_the_stage_position_is_kept_in_the_outputs(tiny_model_file, tmp_path, capsys):
    """Found by a review: a result lost its input's stage position, so tiles of a mosaic
    could no longer be placed. The result covers the same field: the same position."""
    from napari_cvdm.cli import main

    path = tmp_path / "tile.ome.tif"
    data = np.random.default_rng(0).integers(0, 1000, (2, 16, 16)).astype(np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "TYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1,
        "Plane": {"PositionX": [-1250.5] * 2, "PositionY": [0.0] * 2,
                  "PositionXUnit": ["nm"] * 2, "PositionYUnit": ["um"] * 2,
                  "PositionZ": [3.0, 3.5]}})  # focus drifts: no one value for Z
    assert read_tiff(path).position == {"X": PhysicalSize(-1250.5, "nm"),
                                        "Y": PhysicalSize(0.0, "µm")}
    out = tmp_path / "out"
    assert main(["predict", str(path), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "2", "--steps", "1", "--quiet"]) == 0, capsys.readouterr().err
    for kind in ("mean", "std", "var"):
        assert _positions(out / f"tile_cvdm_{kind}.tif") == [
            {"PositionX": "-1250.5", "PositionXUnit": "nm", "PositionY": "0.0",
             "PositionYUnit": "µm"}] * 2
        assert read_tiff(out / f"tile_cvdm_{kind}.tif").position["X"].size == -1250.5
    # planes at different places, a position that is no number or in no length unit: none
    raw = path.read_bytes()
    for old, new in ((b'PositionX="-1250.5"', b'PositionX="-1250.6"'),
                     (b'PositionY="0.0"', b'PositionY="abc"'),
                     (b'PositionYUnit="um"', b'PositionYUnit="ms"')):  # lengths kept
        path.write_bytes(raw.replace(old, new, 1))
        assert set(read_tiff(path).position) == {"X", "Y"} - {"X" if b"X" in old else "Y"}
    assert _positions(write_ome_tiff(tmp_path / "none.ome.tif", np.zeros((8, 8), np.float32),
                                     output_spec("YX", 2))) in ([], [{}])


def test_image_names_know_each_extension_in_any_case():
    from napari_cvdm.image_names import image_stem, is_tiff, is_zarr

    assert [is_tiff(n) for n in ("a.TIF", "a.tiff", "a.ome.tif", "a.png", "tif")] == \
        [True, True, True, False, False]
    assert [is_zarr(n) for n in ("a.OME.ZARR", "b.zarr", "c.zarr.tif")] == [True, True, False]
    assert [image_stem(n) for n in ("x.OME.TIF", "2024.01.05_cell.tiff", "y.ome.zarr", ".tif")] \
        == ["x", "2024.01.05_cell", "y", ".tif"]


def test_lsm_files_and_folders_inside_a_store_are_named_as_images():
    from napari_cvdm.image_names import image_stem, is_tiff, is_zarr

    assert is_tiff("a.LSM") and image_stem("a.LSM") == "a"
    assert is_zarr("s.ome.zarr/1") and image_stem("s.ome.zarr/1/") == "s_1"
    assert is_zarr("/d/plate.ome.zarr/A/1/0")
    assert image_stem("/d/plate.ome.zarr/A/1/0") == "plate_A_1_0"
    assert not is_zarr("/d/x.zarr/export/cell.tif")
    assert image_stem("/d/x.zarr/export/cell.tif") == "cell"


def test_bigtiff_extensions_are_tiffs_in_folders_and_names(tmp_path, tiny_model_file):
    """Found by a review: a folder input skipped .btf and .tf8 files without a word, and a
    .btf given alone was named 'x.btf_cvdm_mean.tif'."""
    from napari_cvdm.cli import main
    from napari_cvdm.image_names import image_stem, is_tiff

    assert all(is_tiff(f"a.{e}") for e in ("btf", "TF8", "tf2"))
    assert [image_stem(n) for n in ("x.btf", "y.ome.tf8")] == ["x", "y"]
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "big.btf", _stack()[0], bigtiff=True)
    assert main(["predict", str(folder), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "2", "--steps", "1", "--quiet"]) == 0
    assert (tmp_path / "out" / "big_cvdm_mean.tif").is_file()


def _stack(seed=0, planes=3):
    return np.random.default_rng(seed).integers(0, 999, (planes, 32, 32), dtype=np.uint16)


def test_a_file_with_several_series_is_refused_not_cut_to_the_first(tmp_path):
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for seed in (1, 2):
            tif.write(_stack(seed, 2), metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match="holds 2 separate images .*series=i"):
        read_tiff(path)


def test_planes_the_ome_metadata_declares_but_the_file_lacks_are_refused(tmp_path):
    whole = tmp_path / "one.ome.tif"
    tifffile.imwrite(whole, _stack()[0], ome=True)
    raw = whole.read_bytes()
    assert raw.count(b'SizeZ="1"') == 1
    damaged = tmp_path / "declares3.ome.tif"
    damaged.write_bytes(raw.replace(b'SizeZ="1"', b'SizeZ="3"'))
    with pytest.raises(ValueError, match="missing 2 of the 3 planes"):
        read_tiff(damaged)
    assert read_tiff(whole).data.shape == (32, 32)


@pytest.mark.parametrize("kind", ["imagej", "ome"])
def test_a_stack_cut_short_is_refused_not_read_as_its_first_plane(tmp_path, kind):
    path = tmp_path / f"stack_{kind}.tif"
    tifffile.imwrite(path, _stack(), **({"imagej": True} if kind == "imagej" else
                                        {"ome": True}), metadata={"axes": "ZYX"})
    assert read_tiff(path).data.shape == (3, 32, 32)
    raw = path.read_bytes()
    cut = tmp_path / f"cut_{kind}.tif"
    cut.write_bytes(raw[:int(len(raw) * 0.7)])
    with pytest.raises(ValueError, match="truncated"):
        read_tiff(cut)


def _with_thumbnail(path, kind):
    """A file as microscope and viewer software write them: the image, then a small 8-bit
    thumbnail page marked reduced-resolution (NewSubfileType 1)."""
    stack = _stack()
    if kind == "plain":  # tifffile's own way: a page appended to a written image
        tifffile.imwrite(path, stack[0])
        tifffile.imwrite(path, stack[0, ::4, ::4].astype(np.uint8), append=True, subfiletype=1)
        return stack[0]
    with tifffile.TiffWriter(path, ome=kind == "ome") as tif:  # a stack, then its thumbnail
        tif.write(stack, metadata={"axes": "ZYX"} if kind == "ome" else None,
                  photometric="minisblack")
        tif.write(stack[0, ::4, ::4].astype(np.uint8), subfiletype=1, metadata=None)
    return stack


@pytest.mark.parametrize("kind", ["plain", "stack", "ome"])
def test_a_thumbnail_page_is_not_taken_for_a_second_image(tmp_path, kind):
    """Found by a review: tifffile gives a thumbnail a series of its own, and any TIFF with
    one (every Zeiss LSM file) was refused as holding 'several separate images'."""
    from napari_cvdm.image_files import probe_tiff

    path = tmp_path / f"thumb_{kind}.tif"
    image = _with_thumbnail(path, kind)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == 2 and tif.series[1].pages[0].is_reduced
    probe_tiff(path, 2)
    np.testing.assert_array_equal(read_tiff(path).data, image)


def test_a_preview_before_the_image_does_not_lend_it_its_metadata(tmp_path):
    """Found by a review: sizes, channel names and position came from the first OME image,
    a preview stored before the main one: the result got the preview's pixel size (4x)."""
    image = np.random.default_rng(0).integers(0, 4000, (2, 64, 64), dtype=np.uint16)
    path = tmp_path / "preview_first.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image[0, ::4, ::4], subfiletype=1, photometric="minisblack",
                  metadata={"axes": "YX", "PhysicalSizeX": 0.26, "PhysicalSizeY": 0.26,
                            "Name": "preview"})
        tif.write(image, photometric="minisblack",
                  metadata={"axes": "CYX", "PhysicalSizeX": 0.065, "PhysicalSizeY": 0.065,
                            "Name": "main", "Channel": {"Name": ["GFP", "RFP"]},
                            "Plane": {"PositionX": [100.0] * 2, "PositionY": [200.0] * 2}})
    read = read_tiff(path)
    np.testing.assert_array_equal(read.data, image)
    assert read.pixel_size == pytest.approx((0.065, 0.065)) and read.unit == "µm"
    assert read.channels == ("GFP", "RFP")
    assert read.position["X"].size == 100.0 and read.position["Y"].size == 200.0


def _lsm(path, planes, voxel_size, interval=0.0):
    """A minimal Zeiss LSM file: its CZ_LSMINFO tag (voxel sizes in metres) on the first
    page, each plane followed by its thumbnail, as LSM files are laid out."""
    info = np.zeros(1, np.dtype(tifffile.TIFF.CZ_LSMINFO))
    info["MagicNumber"], info["StructureSize"] = 0x0400494C, info.itemsize
    info["DimensionZ"], info["DimensionY"], info["DimensionX"] = planes.shape
    info["DimensionChannels"] = info["DimensionTime"] = 1
    info["ThumbnailX"] = info["ThumbnailY"] = 8
    info["VoxelSizeX"], info["VoxelSizeY"], info["VoxelSizeZ"] = voxel_size
    info["TimeIntervall"] = interval
    raw = info.tobytes()
    with tifffile.TiffWriter(path) as tif:
        for i, plane in enumerate(planes):
            tif.write(plane, metadata=None, contiguous=False,
                      extratags=[(34412, 1, len(raw), raw, True)] if i == 0 else None)
            tif.write(plane[::4, ::4].astype(np.uint8), metadata=None, contiguous=False,
                      subfiletype=1)


def test_a_zeiss_lsm_file_is_read_with_its_voxel_sizes(tmp_path):
    path = tmp_path / "confocal.lsm"
    _lsm(path, _stack(), (0.1e-6, 0.1e-6, 0.5e-6))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_lsm and len(tif.series) == 2  # the thumbnails: a series of their own
    image = read_tiff(path)
    np.testing.assert_array_equal(image.data, _stack())
    assert image.axes == "ZYX"
    assert image.physical == {"X": PhysicalSize(0.1, "µm"), "Y": PhysicalSize(0.1, "µm"),
                              "Z": PhysicalSize(0.5, "µm")}
    assert image.pixel_size == (0.1, 0.1) and image.unit == "µm"


def test_cvdm_predict_takes_lsm_files_from_a_folder_and_writes_tiffs(tiny_model_file,
                                                                     tmp_path, capsys):
    from napari_cvdm.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    _lsm(folder / "confocal.LSM", _stack()[:, :16, :16], (0.1e-6, 0.1e-6, 0.5e-6))
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-o", str(out), "--model", str(tiny_model_file),
                 "--samples", "1", "--steps", "1", "--quiet"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [f"confocal_cvdm_{kind}.tif"
                                                    for kind in ("mean", "std", "var")]
    mean = read_tiff(out / "confocal_cvdm_mean.tif")
    assert mean.data.shape == (3, 32, 32) and mean.axes == "ZYX"
    assert mean.physical["X"] == PhysicalSize(0.05, "µm")
    assert mean.physical["Z"] == PhysicalSize(0.5, "µm")


def test_lsm_sizes_leave_out_what_was_not_recorded_and_keep_the_time_interval():
    from napari_cvdm.physical import lsm_sizes

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sizes = lsm_sizes({"VoxelSizeX": 2e-7, "VoxelSizeY": 2e-7, "VoxelSizeZ": 0.0,
                           "TimeIntervall": 1.5})
    assert sizes == {"X": PhysicalSize(0.2, "µm"), "Y": PhysicalSize(0.2, "µm"),
                     "T": PhysicalSize(1.5, "s")}
    assert lsm_sizes(None) == {}


@pytest.mark.parametrize("edits", [["SizeZ"], ["SizeZ", "PlaneCount"]])
def test_pages_the_ome_metadata_does_not_declare_are_refused_not_dropped(tmp_path, edits):
    """Found by a review: tifffile read only the declared planes (and logged 'OME series
    expected 2 frames, got 3'), so the stack was cut without a word."""
    whole = tmp_path / "three.ome.tif"
    tifffile.imwrite(whole, _stack(), ome=True, metadata={"axes": "ZYX"})
    raw = whole.read_bytes()
    for name in edits:  # the plane count, and the pages the TiffData element points to
        assert raw.count(f'{name}="3"'.encode()) == 1
        raw = raw.replace(f'{name}="3"'.encode(), f'{name}="2"'.encode())
    damaged = tmp_path / "declares2.ome.tif"
    damaged.write_bytes(raw)
    with pytest.raises(ValueError, match="OME metadata declares 2 planes but the file holds "
                                         "3 pages"):
        read_tiff(damaged)
    assert read_tiff(whole).data.shape == (3, 32, 32)


def test_an_ome_pyramid_in_subifds_is_read_as_its_full_resolution_image(tmp_path):
    path = tmp_path / "pyramid.ome.tif"
    image = np.random.default_rng(0).integers(0, 999, (64, 64), dtype=np.uint16)
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, subifds=1, metadata={"axes": "YX"}, tile=(32, 32))
        tif.write(image[::2, ::2], subfiletype=1, tile=(32, 32))
    np.testing.assert_array_equal(read_tiff(path).data, image)


def test_imagej_unit_pixel_means_no_size_and_is_not_warned_about(tmp_path):
    """Found by a review: ImageJ's 'pixel' (an uncalibrated image) was an 'unknown unit'."""
    path = tmp_path / "uncalibrated.tif"
    tifffile.imwrite(path, _stack(), imagej=True, metadata={"axes": "ZYX", "unit": "pixel",
                                                            "spacing": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_tiff(path)
    assert image.physical == {} and image.pixel_size is None


def test_a_store_kept_in_a_folder_named_zarr_is_still_itself():
    from pathlib import Path

    from napari_cvdm.image_names import image_stem, zarr_store

    path = Path("/data/archive.zarr/run.ome.zarr/1")
    assert zarr_store(path) == Path("/data/archive.zarr/run.ome.zarr")
    assert image_stem(path) == "run_1"


def test_training_folders_leave_lsm_files_to_cvdm_predict(tmp_path):
    """An LSM file beside its TIFF export would be trained on twice."""
    from napari_cvdm.data import _tiffs

    tifffile.imwrite(tmp_path / "cell.tif", np.zeros((8, 8), np.uint8))
    (tmp_path / "cell.lsm").write_bytes((tmp_path / "cell.tif").read_bytes())
    assert _tiffs(tmp_path, "high-quality") == [tmp_path / "cell.tif"]


def test_imagej_yunit_plane_times_and_slice_labels_are_read(tmp_path):
    """Found by a review: ImageJ's yunit was ignored (a Y size 1000 times wrong and two
    false warnings), a time step given per plane (OME DeltaT, as Bio-Formats writes) and
    ImageJ's channel labels were dropped."""
    data = np.zeros((2, 16, 16), np.uint16)
    tifffile.imwrite(tmp_path / "y.tif", data, imagej=True, resolution=(1 / 0.065, 1 / 65),
                     metadata={"axes": "CYX", "unit": "micron", "yunit": "nm",
                               "Labels": ["DAPI", "GFP"]})
    image = read_tiff(tmp_path / "y.tif")
    assert image.physical["Y"].unit == image.physical["X"].unit == "µm"
    assert image.physical["Y"].size == pytest.approx(0.065)
    assert image.pixel_size == pytest.approx((0.065, 0.065))
    assert image.channels == ("DAPI", "GFP")
    # labels per plane of a hyperstack: the channel's label where it is the same throughout
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((3, 2, 8, 8), np.uint16), imagej=True,
                     metadata={"axes": "ZCYX", "Labels": ["a", "b"] * 3})
    assert read_tiff(tmp_path / "z.tif").channels == ("a", "b")
    tifffile.imwrite(tmp_path / "w.tif", np.zeros((3, 2, 8, 8), np.uint16), imagej=True,
                     metadata={"axes": "ZCYX", "Labels": ["a", "b", "c", "d", "e", "f"]})
    assert read_tiff(tmp_path / "w.tif").channels == ()
    # evenly timed planes give the step; uneven ones none (never a wrong one)
    for deltas, step in (([0.0, 2.0, 4.0], 2.0), ([0.0, 2.0, 5.0], None)):
        tifffile.imwrite(tmp_path / "t.ome.tif", np.zeros((3, 8, 8), np.uint16), metadata={
            "axes": "TYX", "Plane": {"DeltaT": deltas, "DeltaTUnit": ["ms"] * 3}})
        found = read_tiff(tmp_path / "t.ome.tif").physical.get("T")
        assert found == (None if step is None else PhysicalSize(step, "ms"))


def test_ome_metadata_that_contradicts_the_pages_is_not_used(tmp_path, tiny_model_file, capsys):
    """Found by a review: OME-XML declaring 100 x 100 over 48 x 48 pages was read with the
    XML's pixel sizes (describing another image) and tifffile's log lines twice, one saying
    "Missing data are zeroed"."""
    from napari_cvdm.cli import main

    path = tmp_path / "liar.ome.tif"
    data = np.random.default_rng(0).integers(0, 1000, (48, 48)).astype(np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.07,
                                                     "PhysicalSizeY": 0.07})
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'SizeX="48" SizeY="48"', b'SizeX="99" SizeY="99"', 1))
    with pytest.warns(UserWarning, match="OME metadata does not describe the file's pages"):
        image = read_tiff(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.physical == {} and image.channels == () and image.position == {}
    assert main(["predict", str(path), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_model_file), "--samples", "2", "--steps", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("does not describe the file's pages") == 1
    assert "tifffile" not in err and "zeroed" not in err
    with tifffile.TiffFile(tmp_path / "out" / "liar_cvdm_mean.tif") as tif:
        assert "PhysicalSizeX" not in tif.ome_metadata


def test_three_16_bit_planes_saved_as_rgb_say_how_to_save_them(tmp_path):
    """Found by a review: tifffile.imwrite stores a (3, Y, X) array as RGB unless told
    otherwise; the refusal spoke of colours only."""
    from napari_cvdm.image_files import probe_tiff

    path = tmp_path / "three_planes.tif"
    tifffile.imwrite(path, np.zeros((3, 32, 32), np.uint16))
    with pytest.raises(ValueError, match="RGB.*photometric='minisblack'"):
        probe_tiff(path, 2)
    colour = tmp_path / "photo.tif"
    tifffile.imwrite(colour, np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="RGB") as caught:
        probe_tiff(colour, 2)
    assert "minisblack" not in str(caught.value)  # 8-bit RGB: most likely a colour image
