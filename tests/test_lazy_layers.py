"""Large images in napari: dask-backed and multiscale layers predicted lazily into zarr."""

import threading

import dask.array as da
import numpy as np
import pytest
import zarr

import napari_cvdm as nc
from napari_cvdm import layers as layers_module
from napari_cvdm.layers import check_output_room, output_summary, run_on_layer

FAST = {"samples": 2, "steps": 2, "seed": 7, "precision": "fp32", "device": "cpu"}


@pytest.fixture
def image():
    rng = np.random.default_rng(3)
    return (rng.random((2, 48, 40)) * 1000).astype(np.uint16)


@pytest.fixture
def viewer():
    from napari.components import ViewerModel

    return ViewerModel()


def _zarr_backed(layer):
    return isinstance(layer.data, zarr.Array)


def test_dask_layer_gives_zarr_backed_layers_equal_to_the_numpy_prediction(
        viewer, image, tiny_model, tmp_path):
    layer = viewer.add_image(da.from_array(image, chunks=(1, 24, 20)), name="big",
                             scale=(1.0, 0.5, 0.5), translate=(0.0, 3.0, -2.0))
    mean_layer, std_layer = run_on_layer(viewer, layer, tiny_model,
                                         store=tmp_path / "out.ome.zarr", **FAST)
    expected = nc.predict(image, tiny_model, **FAST)
    assert _zarr_backed(mean_layer) and _zarr_backed(std_layer)
    np.testing.assert_allclose(np.asarray(mean_layer.data), expected.mean, rtol=1e-5,
                               atol=1e-3)
    np.testing.assert_allclose(np.asarray(std_layer.data), expected.std, rtol=1e-5,
                               atol=1e-3)
    assert mean_layer.metadata["cvdm"]["store"] == str(tmp_path / "out.ome.zarr")
    scale = tiny_model.config.scale
    np.testing.assert_allclose(mean_layer.scale, [1.0, 0.5 / scale, 0.5 / scale])
    reopened = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    np.testing.assert_array_equal(reopened["mean"]["0"][:], np.asarray(mean_layer.data))
    assert std_layer.contrast_limits[1] > 0


def test_default_store_is_a_temporary_folder_named_in_the_metadata(viewer, image,
                                                                     tiny_model):
    layer = viewer.add_image(da.from_array(image[0]), name="one")
    mean_layer, _ = run_on_layer(viewer, layer, tiny_model, **FAST)
    store = mean_layer.metadata["cvdm"]["store"]
    assert mean_layer.metadata["cvdm"]["temporary_store"]
    assert zarr.open_group(store, mode="r")["mean"]["0"].shape == mean_layer.data.shape


def test_a_result_store_is_placed_where_its_layers_are(viewer, image, tiny_model, tmp_path):
    # opened later in an OME-Zarr viewer, the store overlays its input as the layers do
    layer = viewer.add_image(da.from_array(image[0]), name="one", scale=(0.2, 0.1),
                             translate=(5.0, 3.0))
    mean_layer, _ = run_on_layer(viewer, layer, tiny_model, store=tmp_path / "r.ome.zarr",
                                 **FAST)
    group = zarr.open_group(str(tmp_path / "r.ome.zarr" / "mean"), mode="r")
    transforms = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    np.testing.assert_allclose(transforms[0]["scale"], mean_layer.scale)
    np.testing.assert_allclose(transforms[1]["translation"], mean_layer.translate)
    np.testing.assert_allclose(mean_layer.translate, (5.0 - 0.05, 3.0 - 0.025))


def test_multiscale_layer_uses_level_zero(viewer, image, tiny_model, tmp_path):
    pyramid = [da.from_array(image), da.from_array(image[:, ::2, ::2])]
    layer = viewer.add_image(pyramid, multiscale=True, name="pyr")
    mean_layer, std_layer = run_on_layer(viewer, layer, tiny_model,
                                         store=tmp_path / "p.ome.zarr", **FAST)
    expected = nc.predict(image, tiny_model, **FAST)
    assert mean_layer.data.shape == expected.mean.shape
    np.testing.assert_allclose(np.asarray(mean_layer.data), expected.mean, rtol=1e-5,
                               atol=1e-3)


def test_numpy_layer_stays_in_memory(viewer, image, tiny_model):
    layer = viewer.add_image(image)
    mean_layer, _ = run_on_layer(viewer, layer, tiny_model, **FAST)
    assert isinstance(mean_layer.data, np.ndarray)
    assert "store" not in mean_layer.metadata["cvdm"]


def test_size_guard_refuses_a_store_on_a_too_small_disk(viewer, image, tiny_model,
                                                        tmp_path, monkeypatch):
    layer = viewer.add_image(da.from_array(image), name="big")
    usage = layers_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(layers_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    with pytest.raises(ValueError, match="free"):
        run_on_layer(viewer, layer, tiny_model, store=tmp_path / "o.ome.zarr", **FAST)
    assert not (tmp_path / "o.ome.zarr").exists()
    assert len(viewer.layers) == 1


def test_size_guard_counts_the_coarser_levels_a_kept_store_gets(viewer, image, tmp_path,
                                                                 monkeypatch):
    """Found by reading: the command line counted a kept store's coarser levels (a third
    more) before writing, the napari path only its full-resolution level; a disk between
    the two then filled while the levels were written."""
    layer = viewer.add_image(da.from_array(image), name="big")
    full = check_output_room(layer, 2)
    usage = layers_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(layers_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=full + full // 6))
    assert check_output_room(layer, 2) == full  # a temporary store has no levels
    with pytest.raises(ValueError, match="with coarser levels"):
        check_output_room(layer, 2, tmp_path / "o.ome.zarr")
    monkeypatch.setattr(layers_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=full * 4 // 3))
    assert check_output_room(layer, 2, tmp_path / "o.ome.zarr") == full


def test_size_guard_refuses_an_oversized_in_memory_output(viewer, image, tiny_model,
                                                          monkeypatch):
    from napari_cvdm import validation

    layer = viewer.add_image(image, name="img")
    monkeypatch.setattr(validation, "memory_bytes", lambda: 10_000)
    with pytest.raises(ValueError, match="dask"):
        run_on_layer(viewer, layer, tiny_model, **FAST)
    assert len(viewer.layers) == 1


def test_output_summary_gives_shape_size_and_where(viewer, image):
    layer = viewer.add_image(da.from_array(image), name="big")
    text = output_summary(layer, 2, "/data/out.ome.zarr")
    assert text.startswith("output: 2 x 2 x 96 x 80,") and "/data/out.ome.zarr" in text
    assert "memory" in output_summary(viewer.add_image(image), 2)
    assert check_output_room(layer, 2) == 2 * 4 * 2 * 96 * 80


def test_cancelled_lazy_run_removes_its_layers_and_store(viewer, image, tiny_model,
                                                         tmp_path):
    layer = viewer.add_image(da.from_array(image), name="big")
    with pytest.raises(nc.Cancelled):
        run_on_layer(viewer, layer, tiny_model, store=tmp_path / "c.ome.zarr",
                     cancel=lambda: True, **FAST)
    assert not (tmp_path / "c.ome.zarr").exists()
    assert len(viewer.layers) == 1


def test_a_cancelled_rerun_gives_back_the_earlier_result(viewer, image, tiny_model):
    # A re-run updates the result layers in place; cancelling it removed them, and the
    # earlier result with them. Now they show the earlier result again, and a successful
    # re-run removes the earlier temporary store, which nothing shows any more.
    from pathlib import Path

    layer = viewer.add_image(da.from_array(image), name="big")
    mean_layer, std_layer = run_on_layer(viewer, layer, tiny_model, **FAST)
    first = np.asarray(mean_layer.data).copy()
    store = mean_layer.metadata["cvdm"]["store"]
    limits = mean_layer.contrast_limits
    stop = threading.Event()  # cancelled while the chunks are computed into the layers
    with pytest.raises(nc.Cancelled):
        run_on_layer(viewer, layer, tiny_model, cancel=stop,
                     progress=lambda done, total: stop.set(), **FAST)
    assert [x.name for x in viewer.layers] == ["big", "big CVDM std", "big CVDM mean"]
    assert viewer.layers["big CVDM mean"] is mean_layer
    np.testing.assert_array_equal(np.asarray(mean_layer.data), first)
    assert mean_layer.metadata["cvdm"]["store"] == store and Path(store).is_dir()
    assert mean_layer.contrast_limits == limits
    assert std_layer.metadata["cvdm"]["store"] == store
    again, _ = run_on_layer(viewer, layer, tiny_model, **{**FAST, "seed": 8})
    assert again is mean_layer and mean_layer.metadata["cvdm"]["store"] != store
    assert not Path(store).exists()


def test_a_rerun_keeps_the_earlier_store_while_a_layer_still_shows_it(viewer, image,
                                                                      tiny_model):
    # std, then a re-run showing the variance: the std layer still reads the first store
    from pathlib import Path

    layer = viewer.add_image(da.from_array(image), name="big")
    _, std_layer = run_on_layer(viewer, layer, tiny_model, **FAST)
    first = Path(std_layer.metadata["cvdm"]["store"])
    expected = np.asarray(std_layer.data).copy()
    mean_layer, variance_layer = run_on_layer(viewer, layer, tiny_model, show="variance",
                                              **FAST)
    assert variance_layer.name == "big CVDM variance" and std_layer in viewer.layers
    assert first.is_dir()
    np.testing.assert_array_equal(np.asarray(std_layer.data), expected)
    second = Path(mean_layer.metadata["cvdm"]["store"])
    run_on_layer(viewer, layer, tiny_model, show="variance", **FAST)
    assert not second.exists() and first.is_dir()  # only the std layer still shows `first`


def test_an_in_memory_rerun_removes_the_lazy_results_temporary_store(viewer, image,
                                                                      tiny_model):
    """Found by a review: a NumPy re-run that replaced a lazy result in its layers left the
    earlier temporary store on disk, shown by nothing (a lazy re-run removed it)."""
    from pathlib import Path

    layer = viewer.add_image(da.from_array(image), name="big")
    mean_layer, std_layer = run_on_layer(viewer, layer, tiny_model, **FAST)
    store = Path(mean_layer.metadata["cvdm"]["store"])
    assert store.is_dir()
    layer.data = np.asarray(image).copy()  # now in memory
    again, std_again = run_on_layer(viewer, layer, tiny_model, **FAST)
    assert again is mean_layer and std_again is std_layer
    assert isinstance(mean_layer.data, np.ndarray) and "store" not in mean_layer.metadata["cvdm"]
    assert not store.exists() and not store.parent.exists()


# -- region: the rectangle of a shapes layer ------------------------------------------------
@pytest.mark.parametrize("lazy", [False, True])
def test_a_shapes_rectangle_region_is_reconstructed_and_placed_over_it(
        viewer, image, tiny_model, tmp_path, lazy):
    data = da.from_array(image) if lazy else image
    layer = viewer.add_image(data, name="cells", scale=(1.0, 0.5, 0.5),
                             translate=(0.0, 3.0, -2.0))
    # a rectangle in world coordinates covering input pixels y 10..29, x 4..27
    corners = np.array([[0, 3.0 + 0.5 * 9.6, -2.0 + 0.5 * 3.7],
                        [0, 3.0 + 0.5 * 29.2, -2.0 + 0.5 * 27.4]])
    shapes = viewer.add_shapes([corners[:, 1:]], shape_type="rectangle", name="roi")
    mean_layer, std_layer = run_on_layer(viewer, layer, tiny_model, region=shapes,
                                         store=tmp_path / "r.ome.zarr" if lazy else None,
                                         **FAST)
    crop = image[:, 10:30, 4:28]
    expected = nc.predict(crop, tiny_model, **FAST)
    assert mean_layer.data.shape == expected.mean.shape
    np.testing.assert_allclose(np.asarray(mean_layer.data), expected.mean, rtol=1e-5,
                               atol=1e-3)
    np.testing.assert_allclose(np.asarray(std_layer.data), expected.std, rtol=1e-5,
                               atol=1e-3)
    s = tiny_model.config.scale
    for j in [(0, 0, 0), (1, 5, 7), (1, 39, 47)]:
        expected_world = layer.data_to_world(
            [j[0], 10 + (j[1] + 0.5) / s - 0.5, 4 + (j[2] + 0.5) / s - 0.5])
        np.testing.assert_allclose(mean_layer.data_to_world(j), expected_world, atol=1e-9)
    assert mean_layer.metadata["cvdm"]["region"] == [[10, 30], [4, 28]]
    assert mean_layer.name == "cells CVDM mean (region 10:30, 4:28)"
    assert std_layer.name == "cells CVDM std (region 10:30, 4:28)"


def test_a_region_run_never_replaces_the_whole_images_result(viewer, image, tiny_model):
    """Found by a review: a region's outputs had the whole image's names, so they replaced
    its layers, and for a large image its temporary store was deleted."""
    import os

    layer = viewer.add_image(da.from_array(image, chunks=(1, 24, 20)), name="big")
    whole, _ = run_on_layer(viewer, layer, tiny_model, **FAST)
    store = whole.metadata["cvdm"]["store"]
    shapes = viewer.add_shapes([np.array([[10.0, 10.0], [30.0, 30.0]])],
                               shape_type="rectangle")
    detail, _ = run_on_layer(viewer, layer, tiny_model, region=shapes, **FAST)
    assert detail is not whole and whole in viewer.layers
    assert whole.data.shape == (2, 96, 80) and os.path.exists(store)
    again, _ = run_on_layer(viewer, layer, tiny_model, region=shapes, **FAST)
    assert again is detail  # the same region updates its own layers


def test_a_region_without_rectangle_is_refused(viewer, image, tiny_model):
    layer = viewer.add_image(image)
    shapes = viewer.add_shapes([np.array([[1, 1], [5, 9]])], shape_type="line")
    with pytest.raises(ValueError, match="no rectangle"):
        run_on_layer(viewer, layer, tiny_model, region=shapes, **FAST)


def test_the_layers_are_refreshed_while_chunks_are_written(viewer, image, tiny_model,
                                                           tmp_path, monkeypatch):
    calls = []
    original = layers_module.LazyOutput.refresh

    def recording(self, *args, force=False):
        calls.append((force, [np.count_nonzero(np.asarray(a)) for a in self.writer.arrays]))
        self.interval = 0.0
        return original(self, *args, force=force)

    monkeypatch.setattr(layers_module.LazyOutput, "refresh", recording)
    layer = viewer.add_image(da.from_array(image, chunks=(1, 48, 40)), name="big")
    run_on_layer(viewer, layer, tiny_model, store=tmp_path / "o.ome.zarr", **FAST)
    during = [filled for force, filled in calls if not force]
    assert len(during) > 1 and calls[-1][0]
    assert any(0 < filled[0] < image.size * 4 for filled in during)  # partly written


def test_zarr_backed_and_numpy_multiscale_layers_are_lazy_too(viewer, image, tiny_model,
                                                              tmp_path):
    stored = zarr.create_array(str(tmp_path / "in.zarr"), shape=image.shape,
                               chunks=(1, 48, 40), dtype=image.dtype)
    stored[:] = image
    expected = nc.predict(image, tiny_model, **FAST)
    for i, data in enumerate([stored, [image, image[:, ::2, ::2]]]):
        layer = viewer.add_image(data, name=f"in{i}", multiscale=isinstance(data, list))
        mean_layer, _ = run_on_layer(viewer, layer, tiny_model,
                                     store=tmp_path / f"o{i}.ome.zarr", **FAST)
        assert isinstance(mean_layer.data, zarr.Array)
        np.testing.assert_allclose(np.asarray(mean_layer.data), expected.mean, rtol=1e-5,
                                   atol=1e-3)


def test_an_existing_folder_that_is_not_a_result_is_never_replaced(viewer, image, tiny_model,
                                                                   tmp_path):
    folder = tmp_path / "my_data"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    layer = viewer.add_image(da.from_array(image, chunks=(1, 24, 20)), name="big")
    with pytest.raises(ValueError, match="exists and is not a napari-cvdm result"):
        run_on_layer(viewer, layer, tiny_model, store=folder, overwrite=True, **FAST)
    assert (folder / "thesis.txt").read_text() == "years of work"
    assert [x.name for x in folder.iterdir()] == ["thesis.txt"]
    assert len(viewer.layers) == 1


def test_an_earlier_result_store_is_replaced_with_overwrite(viewer, image, tiny_model,
                                                            tmp_path):
    layer = viewer.add_image(da.from_array(image, chunks=(1, 24, 20)), name="big")
    store = tmp_path / "out.ome.zarr"
    run_on_layer(viewer, layer, tiny_model, store=store, **FAST)
    with pytest.raises(ValueError, match="exists"):
        run_on_layer(viewer, layer, tiny_model, store=store, **FAST)
    mean_layer, _ = run_on_layer(viewer, layer, tiny_model, store=store, overwrite=True,
                                 **{**FAST, "seed": 8})
    expected = nc.predict(image, tiny_model, **{**FAST, "seed": 8})
    np.testing.assert_allclose(np.asarray(mean_layer.data), expected.mean, rtol=1e-5,
                               atol=1e-3)


def test_the_inputs_own_store_is_never_an_output(viewer, image, tiny_model, tmp_path):
    source = tmp_path / "in.zarr"
    stored = zarr.create_array(str(source), shape=image.shape, chunks=(1, 48, 40),
                               dtype=image.dtype)
    stored[:] = image
    first = viewer.add_image(da.from_zarr(str(source)), name="from_zarr")
    for store in (source, source / "inside.ome.zarr", tmp_path):
        with pytest.raises(ValueError, match="never modified"):
            run_on_layer(viewer, first, tiny_model, store=store, overwrite=True, **FAST)
    # an earlier result shown as a layer is an input too
    mean_layer, _ = run_on_layer(viewer, first, tiny_model, store=tmp_path / "r.ome.zarr",
                                 **FAST)
    with pytest.raises(ValueError, match="never modified"):
        run_on_layer(viewer, mean_layer, tiny_model, store=tmp_path / "r.ome.zarr",
                     overwrite=True, **FAST)
    np.testing.assert_array_equal(zarr.open_array(str(source), mode="r")[:], image)


def test_a_result_store_read_through_inlined_or_unknown_sources_is_never_replaced(
        viewer, image, tiny_model, tmp_path):
    """Found by an audit: a layer reading an earlier result through dask with the zarr
    array inlined (no graph value to find) got that store deleted and rewritten in place,
    and the outputs were all zeros."""
    import dask

    from napari_cvdm.zarr_files import write_ome_zarr

    store = write_ome_zarr(tmp_path / "prev_cvdm.ome.zarr", image.astype(np.float32),
                           image.astype(np.float32))
    inlined = da.from_zarr(str(store / "mean" / "0"), inline_array=True) * 1.0
    unknown = da.from_delayed(dask.delayed(lambda: image.copy())(), image.shape, image.dtype)
    for name, data, message in (("inlined", inlined, "never modified"),
                                ("unknown", unknown, "cannot be told")):
        layer = viewer.add_image(data, name=name)
        with pytest.raises(ValueError, match=message):
            run_on_layer(viewer, layer, tiny_model, store=store, overwrite=True, **FAST)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(store / "mean" / "0"))),
                                  image)
    # a layer whose sources are all known may replace it, once no layer shows it
    known = viewer.add_image(da.from_array(image, chunks=(1, 48, 40)), name="known")
    with pytest.raises(ValueError, match="holds what the layer 'inlined' shows"):
        run_on_layer(viewer, known, tiny_model, store=store, overwrite=True, **FAST)
    viewer.layers.remove("inlined")
    mean_layer, _ = run_on_layer(viewer, known, tiny_model, store=store, overwrite=True,
                                 **FAST)
    assert mean_layer.data.shape == (2, 96, 80)


def test_a_region_warns_about_its_own_pixels_and_degenerate_rectangles_are_clear(
        viewer, tiny_model):
    """Found by an audit: the input warnings looked at the whole image, not the region that
    was reconstructed; a one-pixel-wide or non-finite rectangle gave misleading errors."""
    import warnings

    from scipy import ndimage

    smooth = ndimage.gaussian_filter(np.random.default_rng(0).random((64, 64)), 4) * 1000
    image = smooth.astype(np.float32)
    image[:24, :24] = np.random.default_rng(1).random((24, 24)) * 1000  # noise in a corner
    layer = viewer.add_image(image, name="img")
    for corners, noisy in (([[0, 0], [23, 23]], True), ([[30, 30], [60, 60]], False)):
        shapes = viewer.add_shapes([np.array(corners, float)], shape_type="rectangle")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_on_layer(viewer, layer, tiny_model, region=shapes, **FAST)
        said = " ".join(str(w.message) for w in caught)
        assert ("looks like noise" in said) == noisy
    for corners, message in (([[5, 5], [5.2, 40]], "only one pixel along Y"),
                             ([[5, 5], [np.nan, 40]], "not finite")):
        shapes = viewer.add_shapes([np.array(corners)], shape_type="rectangle")
        with pytest.raises(ValueError, match=message):
            run_on_layer(viewer, layer, tiny_model, region=shapes, **FAST)


def test_a_large_layer_gets_the_same_input_warnings_as_a_numpy_one(viewer, image, tiny_model):
    """Found by a review: dask, zarr and multiscale layers (the large images, where users
    check least) got none of the input warnings."""
    import warnings

    said = {}
    for name, data in (("numpy", image), ("dask", da.from_array(image, chunks=(1, 24, 20)))):
        layer = viewer.add_image(data, name=name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_on_layer(viewer, layer, tiny_model, **{**FAST, "samples": 1})
        said[name] = sorted(str(w.message) for w in caught if "CVDM:" in str(w.message))
    assert any("looks like noise" in m for m in said["dask"])
    assert any("one sample" in m for m in said["dask"])
    assert said["dask"] == said["numpy"]


def test_a_lazy_result_records_the_time_of_its_compute(viewer, image, tiny_model,
                                                       monkeypatch):
    """Found by a review: the time was the dask graph's set-up (0.03 s for a 3 s run)."""
    import time

    from napari_cvdm.zarr_files import ZarrResultWriter

    store = ZarrResultWriter.store

    def slow_store(self, *args, **kwargs):
        time.sleep(0.6)
        return store(self, *args, **kwargs)

    monkeypatch.setattr(ZarrResultWriter, "store", slow_store)
    layer = viewer.add_image(da.from_array(image[0]), name="one")
    mean_layer, std_layer = run_on_layer(viewer, layer, tiny_model, **FAST)
    assert mean_layer.metadata["cvdm"]["seconds"] >= 0.6
    assert std_layer.metadata["cvdm"]["seconds"] == mean_layer.metadata["cvdm"]["seconds"]


def test_a_store_another_result_layer_shows_is_never_replaced(viewer, image, tiny_model,
                                                              tmp_path):
    """A region run given the store of the whole image's result (the widget's store field)
    replaced it under that result's layers."""
    layer = viewer.add_image(da.from_array(image, chunks=(1, 24, 20)), name="big")
    store = tmp_path / "big.ome.zarr"
    whole, _ = run_on_layer(viewer, layer, tiny_model, store=store, **FAST)
    before = np.asarray(whole.data).copy()
    shapes = viewer.add_shapes([np.array([[10.0, 10.0], [30.0, 30.0]])],
                               shape_type="rectangle")
    with pytest.raises(ValueError, match="holds what the layer 'big CVDM (std|mean)' shows"):
        run_on_layer(viewer, layer, tiny_model, region=shapes, store=store, overwrite=True,
                     **FAST)
    np.testing.assert_array_equal(np.asarray(whole.data), before)
    assert [x.name for x in viewer.layers] == ["big", "big CVDM std", "big CVDM mean",
                                               "Shapes"]
    again, _ = run_on_layer(viewer, layer, tiny_model, store=store, overwrite=True, **FAST)
    assert again is whole  # the layers the store's result is shown in may replace it
