"""The napari writer: saving a layer as OME-TIFF keeps its scale, units and provenance."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile


def _ome(path):
    with tifffile.TiffFile(path) as tif:
        root = ET.fromstring(tif.ome_metadata)
        return tif.series[0].axes, tif.series[0].asarray(), root


def test_saving_a_result_layer_keeps_scale_units_and_provenance(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).random((3, 8, 10)).astype(np.float32)
    viewer.add_image(data, name="cells CVDM mean", scale=(0.3, 0.05, 0.05),
                     units=("micrometer", "micrometer", "micrometer"),
                     axis_labels=("z", "y", "x"),
                     metadata={"cvdm": {"model": "demo", "seed": 3, "samples": 8}})
    path = tmp_path / "mean.ome.tif"
    written = viewer.layers.save(str(path), selected=True, plugin="napari-cvdm")
    assert written == [str(path)]
    axes, pixels_read, root = _ome(path)
    assert axes == "ZYX"
    np.testing.assert_array_equal(pixels_read, data)
    pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels"))
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.05)
    assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.05)
    assert float(pixels.get("PhysicalSizeZ")) == pytest.approx(0.3)
    assert pixels.get("PhysicalSizeXUnit") == "µm"
    pairs = {m.get("K"): m.text for m in root.iter() if m.tag.endswith("}M")}
    assert pairs == {"model": "demo", "seed": "3", "samples": "8"}


def test_saving_as_ome_tif_picks_this_writer_without_naming_it(make_napari_viewer, tmp_path):
    # npe2 before 0.10 matched writers by the last suffix only: ".ome.tif" went to the
    # builtin TIFF writer, which keeps no physical sizes
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.ones((6, 7), np.float32), scale=(0.04, 0.04),
                             units=("micrometer", "micrometer"))
    path = tmp_path / "plain.ome.tif"
    layer.save(str(path))
    pixels = next(el for el in _ome(path)[2].iter() if el.tag.endswith("}Pixels"))
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.04)


def test_a_multiscale_layer_is_refused_with_a_clear_message(tmp_path):
    from napari_cvdm._writer import SaveRefused, write_ome_tiff

    levels = [np.zeros((8, 8), np.float32), np.zeros((4, 4), np.float32)]
    with pytest.raises(SaveRefused, match="multiscale"):
        write_ome_tiff(str(tmp_path / "m.ome.tif"), levels, {"multiscale": True})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["multiscale", "rgb", "6-D"])
def test_napari_shows_why_a_layer_cannot_be_saved(make_napari_viewer, tmp_path, case):
    """Found by a review: napari takes a writer's ValueError for "not my format" and said
    only "No data written! A plugin could not be found"; a 6-D layer got tifffile's "axes
    do not match shape"."""
    from napari_cvdm._writer import SaveRefused

    viewer = make_napari_viewer()
    if case == "multiscale":
        viewer.add_image([np.zeros((8, 8), np.float32), np.zeros((4, 4), np.float32)],
                         multiscale=True)
    elif case == "rgb":
        viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True)
    else:
        viewer.add_image(np.zeros((2, 2, 2, 2, 8, 8), np.float32))
    message = {"multiscale": "multiscale", "rgb": "not RGB", "6-D": "6-D image.*at most"}[case]
    with pytest.raises(SaveRefused, match=message):
        viewer.layers.save(str(tmp_path / "x.ome.tif"), selected=True, plugin="napari-cvdm")
    assert not list(tmp_path.iterdir())


def test_a_region_results_bounds_and_a_time_series_step_are_saved(make_napari_viewer,
                                                                  tmp_path):
    """Found by a review: the writer dropped list values (a region result's bounds, so a
    saved region could not be placed) and took a time axis with napari's default labels
    for Z, dropping its step."""
    import json

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 10), np.float32), name="r",
                     metadata={"cvdm": {"region": [[4, 12], [0, 10]], "seed": 2}})
    viewer.add_image(np.zeros((3, 8, 10), np.float32), name="t", scale=(2.0, 0.1, 0.1),
                     units=("second", "micrometer", "micrometer"))
    for name in ("r", "t"):
        viewer.layers.selection.active = viewer.layers[name]
        viewer.layers.save(str(tmp_path / f"{name}.ome.tif"), selected=True,
                           plugin="napari-cvdm")
    pairs = {m.get("K"): m.text for m in _ome(tmp_path / "r.ome.tif")[2].iter()
             if m.tag.endswith("}M")}
    assert json.loads(pairs["region"]) == [[4, 12], [0, 10]] and pairs["seed"] == "2"
    axes, _, root = _ome(tmp_path / "t.ome.tif")
    pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels"))
    assert axes == "TYX" and float(pixels.get("TimeIncrement")) == 2.0


def test_a_layers_translate_is_saved_as_its_stage_position(tmp_path):
    """Found by a review: the writer dropped translate, so a cropped result lost where it
    sat (and every result its placement over the input)."""
    from napari_cvdm._writer import write_ome_tiff

    path = tmp_path / "moved.ome.tif"
    write_ome_tiff(str(path), np.ones((4, 6), np.float32),
                   {"scale": (0.05, 0.05), "translate": (5.0, 2.5), "units": ("nm", "nm"),
                    "metadata": {}})
    plane = next(el for el in _ome(path)[2].iter() if el.tag.endswith("}Plane"))
    assert float(plane.get("PositionY")) == pytest.approx(5.0)
    assert float(plane.get("PositionX")) == pytest.approx(2.5)
    assert plane.get("PositionXUnit") == "nm"
    plain = tmp_path / "pixels.ome.tif"  # a translate in pixels has no physical position
    write_ome_tiff(str(plain), np.ones((4, 6), np.float32),
                   {"translate": (5.0, 2.5), "units": ("pixel", "pixel"), "metadata": {}})
    assert not [el for el in _ome(plain)[2].iter() if el.tag.endswith("}Plane")
                and el.get("PositionX") is not None]


def test_a_plain_layer_in_pixels_is_saved_without_physical_sizes(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.arange(20, dtype=np.uint16).reshape(4, 5))
    path = tmp_path / "plain.ome.tif"
    layer.save(str(path), plugin="napari-cvdm")
    axes, read, root = _ome(path)
    assert axes == "YX" and read.dtype == np.uint16
    np.testing.assert_array_equal(read, layer.data)
    pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels"))
    assert pixels.get("PhysicalSizeX") is None


def test_a_flipped_layer_keeps_its_pixel_size(tmp_path):
    """Found by a review: a negative scale (an axis flipped in napari) lost the pixel size
    of that axis, with a warning napari does not show."""
    import warnings

    from napari_cvdm._writer import write_ome_tiff

    path = tmp_path / "flipped.ome.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_ome_tiff(str(path), np.ones((4, 6), np.float32),
                       {"name": "flipped", "scale": (-0.05, 0.05),
                        "units": ("micrometer", "micrometer"), "metadata": {}})
    _, _, root = _ome(path)
    pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels"))
    assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.05)
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.05)


def test_time_series_keep_their_time_step(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((2, 4, 4), np.float32), scale=(2.0, 0.1, 0.1),
                             units=("second", "micrometer", "micrometer"),
                             axis_labels=("t", "y", "x"))
    path = tmp_path / "t.ome.tif"
    layer.save(str(path), plugin="napari-cvdm")
    axes, _, root = _ome(path)
    pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels"))
    assert axes == "TYX"
    assert float(pixels.get("TimeIncrement")) == pytest.approx(2.0)
    assert pixels.get("TimeIncrementUnit") == "s"


def test_64_bit_integers_are_narrowed_only_when_they_fit_and_complex_is_refused(tmp_path):
    """Found by an audit: complex data lost their imaginary part silently, int64 failed inside
    tifffile with OmeXmlError."""
    from napari_cvdm._writer import SaveRefused, write_ome_tiff

    for data, dtype in ((np.arange(-5, 15, dtype=np.int64).reshape(4, 5), np.int32),
                        (np.arange(20, dtype=np.uint64).reshape(4, 5) * 2**27, np.uint32)):
        path = tmp_path / f"{data.dtype}.ome.tif"
        write_ome_tiff(str(path), data, {})
        _, read, _ = _ome(path)
        assert read.dtype == dtype
        np.testing.assert_array_equal(read, data)
    for data, message in ((np.array([[0, 2**40]], np.int64), "do not fit"),
                          (np.ones((4, 5), np.complex64), "complex64 data cannot be saved")):
        with pytest.raises(SaveRefused, match=message):
            write_ome_tiff(str(tmp_path / "x.ome.tif"), data, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int64.ome.tif", "uint64.ome.tif"]


def test_floating_point_images_are_saved_without_losing_precision(tmp_path):
    """Found by a review: float64 was narrowed to float32 (1e300 read back as inf, 1e-60 as
    0, nearby large values merged)."""
    from napari_cvdm._writer import write_ome_tiff

    wide = np.array([[1e300, 1e-60], [2.0**30 + 1, 2.0**30 + 2]])
    single = np.array([[1e30, 1e-30], [2.0**20 + 1, 3.5]])
    for data, dtype in ((wide, np.float64), (single.astype(np.float32), np.float32),
                        (single.astype(">f4"), np.float32),
                        (np.array([[0.5, 65504.0]], np.float16), np.float32)):
        path = tmp_path / f"{data.dtype.str}.ome.tif"
        write_ome_tiff(str(path), data, {})
        _, read, _ = _ome(path)
        assert read.dtype == dtype
        np.testing.assert_array_equal(read, data.astype(dtype))


def test_two_result_layers_are_saved_as_the_channels_of_one_file(make_napari_viewer, tmp_path):
    """Saving a result's mean and std together wrote nothing ("No data written! A plugin
    could not be found"): the multi-layer writer saves them as named channels."""
    import json

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    place = {"scale": (0.5, 0.03, 0.03), "translate": (0.0, -0.0075, -0.0075),
             "units": ("micrometer",) * 3}
    mean = viewer.add_image(rng.random((2, 8, 10)).astype(np.float32), name="cells CVDM mean",
                            metadata={"cvdm": {"model": "m", "seed": 4, "output": "mean"}},
                            **place)
    std = viewer.add_image(rng.random((2, 8, 10)).astype(np.float32), name="cells CVDM std",
                           metadata={"cvdm": {"model": "m", "seed": 4, "output": "std"}},
                           **place)
    before = mean.data.copy()
    viewer.layers.selection = {mean, std}
    path = tmp_path / "both.ome.tif"
    assert viewer.layers.save(str(path), selected=True) == [str(path)]
    axes, read, root = _ome(path)
    assert axes == "CZYX" and read.shape == (2, 2, 8, 10)
    np.testing.assert_array_equal(read[0], mean.data)
    np.testing.assert_array_equal(read[1], std.data)
    np.testing.assert_array_equal(mean.data, before)
    names = [c.get("Name") for c in root.iter() if c.tag.endswith("}Channel")]
    assert names == ["cells CVDM mean", "cells CVDM std"]
    pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels"))
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.03)
    assert float(pixels.get("PhysicalSizeZ")) == pytest.approx(0.5)
    planes = [el for el in root.iter() if el.tag.endswith("}Plane")]
    assert planes and all(float(p.get("PositionY")) == pytest.approx(-0.0075)
                          and p.get("PositionZ") is None for p in planes)
    pairs = {m.get("K"): m.text for m in root.iter() if m.tag.endswith("}M")}
    assert pairs["model"] == "m" and pairs["seed"] == "4"
    assert json.loads(pairs["output"]) == {"cells CVDM mean": "mean", "cells CVDM std": "std"}


@pytest.mark.parametrize("case", ["shape", "scale", "translate", "5-D", "rotate",
                                  "axis_labels"])
def test_layers_that_do_not_overlay_are_not_saved_as_channels(make_napari_viewer, tmp_path,
                                                              case):
    from napari_cvdm._writer import SaveRefused

    viewer = make_napari_viewer()
    shape = (2, 2, 3, 8, 8) if case == "5-D" else (8, 8)
    first = viewer.add_image(np.zeros(shape, np.float32), name="a")
    other = {"shape": {"data": np.zeros((8, 9), np.float32)},
             "scale": {"data": np.zeros(shape, np.float32), "scale": (2, 2)},
             "translate": {"data": np.zeros(shape, np.float32), "translate": (0.5, 0)},
             "5-D": {"data": np.zeros(shape, np.float32)},
             # found by a review: stacked as channels, as if co-registered / one axis type
             "rotate": {"data": np.zeros(shape, np.float32), "rotate": 90},
             "axis_labels": {"data": np.zeros(shape, np.float32), "axis_labels": ("x", "y")}
             }[case]
    second = viewer.add_image(name="b", **other)
    viewer.layers.selection = {first, second}
    message = {"shape": r"one shape: 'a' is \(8, 8\), 'b' \(8, 9\)", "scale": "differ in scale",
               "translate": "differ in translate", "5-D": "no room for a channel",
               "rotate": "differ in rotate", "axis_labels": "differ in axis_labels"}[case]
    with pytest.raises(SaveRefused, match=message):
        viewer.layers.save(str(tmp_path / "x.ome.tif"), selected=True)
    assert not list(tmp_path.iterdir())


def test_layers_of_integer_types_saved_together_keep_their_values(tmp_path):
    """Found by a review: int64 beside float32 went to float64 and rounded values beyond
    2**53; uint32 beside int32 went to int64 and was refused naming a type neither has."""
    from napari_cvdm._writer import SaveRefused, write_ome_tiff_layers

    def layer(data, name):
        return data, {"name": name, "metadata": {}}, "image"

    wide = np.array([[0, 4_000_000_000], [5, 6]], np.uint32)
    signed = np.array([[-5, 7], [8, 9]], np.int32)
    path = tmp_path / "both.ome.tif"
    write_ome_tiff_layers(str(path), [layer(wide, "a"), layer(signed, "b")])
    _, read, _ = _ome(path)
    assert read.dtype == np.float64
    np.testing.assert_array_equal(read[0], wide)
    np.testing.assert_array_equal(read[1], signed)
    huge = np.full((2, 2), 2**53 + 1, np.int64)
    with pytest.raises(SaveRefused, match="beyond 2\\*\\*53"):
        write_ome_tiff_layers(str(tmp_path / "x.ome.tif"),
                              [layer(huge, "counts"), layer(np.ones((2, 2), np.float32), "w")])
    assert not (tmp_path / "x.ome.tif").exists()


def test_a_z_stacks_translate_in_z_is_not_one_position_for_every_plane(tmp_path):
    """Found by a review: every plane got the layer's Z translate as its PositionZ, as if
    the whole stack lay at one depth."""
    from napari_cvdm._writer import write_ome_tiff

    path = tmp_path / "z.ome.tif"
    write_ome_tiff(str(path), np.zeros((3, 4, 4), np.float32),
                   {"scale": (2, 0.1, 0.1), "translate": (10, 1, 0),
                    "units": ("micrometer",) * 3, "axis_labels": ("z", "y", "x"),
                    "metadata": {}})
    planes = [el for el in _ome(path)[2].iter() if el.tag.endswith("}Plane")]
    assert len(planes) == 3 and all(p.get("PositionZ") is None for p in planes)
    assert all(float(p.get("PositionY")) == 1.0 for p in planes)
