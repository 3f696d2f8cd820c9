"""napari layers in and out of CVDM: output grids, adding and updating layers, input checks."""

import threading

import numpy as np
import pytest
import torch
from napari.layers import Image

import napari_cvdm
from napari_cvdm import CVDM, CVDMConfig, Cancelled, save_model
from napari_cvdm.layers import output_transform, run_on_layer
from napari_cvdm.settings import PredictSettings

FAST = {"samples": 2, "steps": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return CVDM(CVDMConfig.preset("tiny"))


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return (rng.random((24, 32)) * 1000).astype(np.uint16)


# -- output grid -------------------------------------------------------------------------
def test_output_transform_divides_yx_scale_and_shifts_to_pixel_centres():
    layer = Image(np.zeros((4, 6)), scale=(2.0, 3.0), translate=(10.0, -5.0))
    kwargs = output_transform(layer, 2)
    np.testing.assert_allclose(kwargs["scale"], [1.0, 1.5])
    # translate + (scale / s - scale) / 2
    np.testing.assert_allclose(kwargs["translate"], [10.0 - 0.5, -5.0 - 0.75])


def test_output_transform_leaves_leading_axes_and_carries_labels_and_units():
    layer = Image(np.zeros((3, 4, 6)), scale=(5.0, 0.5, 0.5), translate=(1.0, 2.0, 3.0),
                  axis_labels=("z", "y", "x"), units=("um", "um", "um"))
    kwargs = output_transform(layer, 4)
    np.testing.assert_allclose(kwargs["scale"], [5.0, 0.125, 0.125])
    np.testing.assert_allclose(kwargs["translate"], [1.0, 2.0 - 0.1875, 3.0 - 0.1875])
    assert kwargs["axis_labels"] == ("z", "y", "x")
    assert [str(u) for u in kwargs["units"]] == ["micrometer"] * 3


def test_output_pixel_centres_overlay_the_input_under_rotation_shear_and_affine():
    affine = np.array([[1.0, 0.1, 4.0], [0.0, 2.0, -1.0], [0.0, 0.0, 1.0]])
    layer = Image(np.zeros((4, 6)), scale=(2.0, 3.0), translate=(10.0, -5.0), rotate=30,
                  shear=[0.2], affine=affine)
    out = Image(np.zeros((8, 12)), **output_transform(layer, 2))
    for j in [(0, 0), (3, 5), (7, 11)]:
        # output pixel j covers input pixel coordinate (j + 0.5) / 2 - 0.5
        expected = layer.data_to_world([(j[0] + 0.5) / 2 - 0.5, (j[1] + 0.5) / 2 - 0.5])
        np.testing.assert_allclose(out.data_to_world(j), expected, atol=1e-9)


# -- run_on_layer ----------------------------------------------------------------------------
def test_run_on_layer_adds_mean_and_variance_on_the_finer_grid(make_napari_viewer, image,
                                                               tiny_model):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="cells", scale=(0.2, 0.2), translate=(5.0, 7.0))
    mean, var = run_on_layer(viewer, layer, model=tiny_model, seed=3, show="variance", **FAST)
    # The uncertainty below the mean: a finished run shows the reconstruction on top.
    assert [lyr.name for lyr in viewer.layers] == ["cells", "cells CVDM variance",
                                                   "cells CVDM mean"]
    for out in (mean, var):
        assert out.data.shape == (48, 64)
        np.testing.assert_allclose(out.scale, [0.1, 0.1])
        np.testing.assert_allclose(out.translate, [5.0 - 0.05, 7.0 - 0.05])
    assert np.all(var.data >= 0) and var.data.max() > 0
    info = var.metadata["cvdm"]
    assert (info["samples"], info["steps"], info["seed"], info["device"]) == (2, 2, 3, "cpu")
    assert info["eta"] == PredictSettings().eta and info["seconds"] > 0
    assert info["preset"] == "tiny" and info["precision"] in ("fp32", "bf16")
    assert info["output"] == "variance" and mean.metadata["cvdm"]["output"] == "mean"
    assert var.colormap.name == "magma" and mean.colormap.name == layer.colormap.name
    assert var.contrast_limits[0] == 0 and var.contrast_limits[1] > 0
    # the contrast slider reaches every value (napari made its range the limits given)
    for out in (mean, var):
        lo, hi = out.contrast_limits_range
        assert lo <= out.data.min() and hi >= out.data.max()


def test_run_on_layer_again_updates_the_same_layers(make_napari_viewer, image, tiny_model):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="cells")
    mean, var = run_on_layer(viewer, layer, model=tiny_model, seed=1, **FAST)
    first = mean.data.copy()
    layer.scale = (2.0, 2.0)
    mean2, var2 = run_on_layer(viewer, layer, model=tiny_model, seed=2, **FAST)
    assert len(viewer.layers) == 3
    assert mean2 is mean and var2 is var
    assert not np.allclose(mean.data, first)
    assert mean.metadata["cvdm"]["seed"] == 2
    np.testing.assert_allclose(var.scale, [1.0, 1.0])
    np.testing.assert_allclose(var.translate, [-0.5, -0.5])


def test_the_uncertainty_stays_directly_below_its_mean(make_napari_viewer, image, tiny_model):
    """Found by a review: an uncertainty added to an earlier mean (another kind shown, or
    one the user deleted) went on top of the list and hid the reconstruction."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="cells")
    run_on_layer(viewer, layer, model=tiny_model, seed=1, **FAST)
    run_on_layer(viewer, layer, model=tiny_model, seed=1, show="variance", **FAST)
    assert [x.name for x in viewer.layers] == ["cells", "cells CVDM std",
                                               "cells CVDM variance", "cells CVDM mean"]
    for deleted in ("cells CVDM std", "cells CVDM mean"):
        viewer.layers.remove(deleted)
        viewer.add_image(image, name=f"other {deleted}")
        run_on_layer(viewer, layer, model=tiny_model, seed=1, **FAST)
        names = [x.name for x in viewer.layers]
        assert names.index("cells CVDM std") == names.index("cells CVDM mean") - 1, names
        assert viewer.layers.selection.active.name == "cells CVDM mean"


def test_results_keep_the_inputs_blending_and_opacity(make_napari_viewer, tiny_model):
    """Found by a review: the channels of a composite (additive) got opaque results, and the
    last channel's reconstruction hid the others."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    channels = viewer.add_image((rng.random((2, 24, 32)) * 1000).astype(np.uint16),
                                channel_axis=0, colormap=["green", "magenta"],
                                name=["c1", "c2"])
    channels[1].opacity = 0.7
    assert channels[1].blending == "additive"  # napari's for every channel but the first
    for layer in channels:
        mean, std = run_on_layer(viewer, layer, model=tiny_model, seed=1, **FAST)
        assert mean.blending == layer.blending and mean.opacity == layer.opacity
        # the uncertainty would add into the composite as signal, or show through the
        # translucent mean: it starts hidden; below an opaque mean it shows
        assert std.visible == (layer.blending != "additive" and layer.opacity == 1)
    assert [x.visible for x in viewer.layers] == [True, True, True, True, False, True]
    channels[1].blending = "translucent"
    mean, _ = run_on_layer(viewer, channels[1], model=tiny_model, seed=1, **FAST)
    assert mean.blending == "translucent"  # updated in place


def test_a_users_layer_named_like_an_output_is_never_overwritten(make_napari_viewer, image,
                                                                 tiny_model):
    """Found by an audit: a user's "cells CVDM mean" got the reconstruction as its data, and a
    multiscale one was broken into a 1-D pyramid with the std layer already added."""
    viewer = make_napari_viewer()
    plain = viewer.add_image(np.full((32, 32), 5, np.float32), name="cells CVDM mean")
    pyramid = viewer.add_image([np.ones((64, 64)), np.ones((32, 32))], name="cells CVDM std",
                               multiscale=True)
    layer = viewer.add_image(image, name="cells")
    mean, std = run_on_layer(viewer, layer, model=tiny_model, seed=1, **FAST)
    assert mean is not plain and std is not pyramid
    assert mean.name != "cells CVDM mean" and mean.data.shape == (2 * 24, 2 * 32)
    assert np.all(plain.data == 5) and "cvdm" not in plain.metadata
    assert pyramid.multiscale and pyramid.data[0].shape == (64, 64)
    again, _ = run_on_layer(viewer, layer, model=tiny_model, seed=2, **FAST)
    assert again is mean and len(viewer.layers) == 5  # its own outputs are updated


def test_run_on_layer_std_is_the_square_root_of_the_variance(make_napari_viewer, image,
                                                           tiny_model):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="cells")
    _, var = run_on_layer(viewer, layer, model=tiny_model, seed=5, show="variance", **FAST)
    _, std = run_on_layer(viewer, layer, model=tiny_model, seed=5, **FAST)  # the default
    assert std.name == "cells CVDM std"
    # An uncalibrated model: the std is the samples' own.
    np.testing.assert_allclose(std.data**2, var.data, rtol=1e-5, atol=1e-6)


def test_a_calibrated_model_shows_the_calibrated_std(make_napari_viewer, image, tiny_model):
    from napari_cvdm import calibration

    rng = np.random.default_rng(0)
    raw = rng.uniform(0.001, 0.5, 5000)
    tiny_model.metadata["calibration"] = calibration.fit(raw, np.abs(rng.normal(0, 3 * raw)))
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="cells")
    _, var = run_on_layer(viewer, layer, model=tiny_model, seed=5, show="variance", **FAST)
    _, std = run_on_layer(viewer, layer, model=tiny_model, seed=5, **FAST)
    assert np.median(std.data / np.sqrt(np.maximum(var.data, 1e-12))) > 2  # 3x overconfident


def test_an_inverted_image_gives_a_warning(make_napari_viewer, nuclei_widefield, tiny_model):
    viewer = make_napari_viewer()
    crop = nuclei_widefield[:64, :80]  # 64 pixels at least: domain.MODALITY_SIDE
    layer = viewer.add_image(crop.max() - crop, name="inverted")
    with pytest.warns(napari_cvdm.InputWarning, match="transmitted light") as record:
        shown = napari_cvdm.run_on_layer(viewer, layer, model=tiny_model, seed=5, **FAST)
    assert len(record) == 1 and record[0].filename == __file__  # once, at the caller's line
    for out in shown:  # kept with the result (and saved with it): a warning goes away
        assert "transmitted light" in out.metadata["cvdm"]["input_warnings"]


def test_run_on_layer_leaves_the_input_untouched(make_napari_viewer, image, tiny_model):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image.copy(), name="cells", scale=(0.5, 0.5))
    limits = tuple(layer.contrast_limits)
    run_on_layer(viewer, layer, model=tiny_model, **FAST)
    np.testing.assert_array_equal(layer.data, image)
    assert layer.data.dtype == np.uint16 and layer.name == "cells"
    np.testing.assert_allclose(layer.scale, [0.5, 0.5])
    np.testing.assert_allclose(layer.translate, [0.0, 0.0])
    assert tuple(layer.contrast_limits) == limits


def test_run_on_layer_processes_a_stack_plane_by_plane(make_napari_viewer, image, tiny_model):
    dask = pytest.importorskip("dask.array")
    viewer = make_napari_viewer()
    stack = np.stack([image, image[::-1]])
    lazy = viewer.add_image(dask.from_array(stack, chunks=(1, 24, 32)), name="lazy",
                            scale=(3.0, 1.0, 1.0))
    mean, var = run_on_layer(viewer, lazy, model=tiny_model, seed=4, **FAST)
    assert mean.data.shape == (2, 48, 64)
    np.testing.assert_allclose(mean.scale, [3.0, 0.5, 0.5])
    np.testing.assert_allclose(mean.translate, [0.0, -0.25, -0.25])
    eager = napari_cvdm.predict(stack, tiny_model, seed=4, **FAST)
    np.testing.assert_allclose(mean.data, eager.mean, rtol=1e-5, atol=1e-4)


def test_a_layer_opened_from_a_file_records_the_files_name(make_napari_viewer, image,
                                                            tiny_model, tmp_path):
    import tifffile

    path = tmp_path / "cells 1.tif"
    tifffile.imwrite(path, image)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari")
    mean, std = run_on_layer(viewer, layer, model=tiny_model, **FAST)
    assert mean.metadata["cvdm"]["source_file"] == "cells 1.tif"
    assert std.metadata["cvdm"]["source_file"] == "cells 1.tif"
    # a layer made in the session has no file to name
    other = viewer.add_image(image, name="made here")
    mean, _ = run_on_layer(viewer, other, model=tiny_model, **FAST)
    assert "source_file" not in mean.metadata["cvdm"]


def test_run_on_layer_takes_layers_by_name_as_train_on_layers_does(make_napari_viewer, image,
                                                                   tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    mean, _ = run_on_layer(viewer, "cells", model=tiny_model, **FAST)
    assert mean.name == "cells CVDM mean" and mean.data.shape == (48, 64)
    with pytest.raises(ValueError, match="no layer called 'cels'"):
        run_on_layer(viewer, "cels", model=tiny_model, **FAST)


def test_run_on_layer_loads_a_model_file_and_records_its_name(make_napari_viewer, image,
                                                              tiny_model, tmp_path):
    path = save_model(tiny_model, tmp_path / "nuclei-tiny.cvdm.safetensors")
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="cells")
    mean, _ = run_on_layer(viewer, layer, model=str(path), **FAST)
    assert mean.metadata["cvdm"]["model"] == "nuclei-tiny"
    assert mean.data.shape == (48, 64)


def test_run_on_layer_refuses_rgb_and_non_image_layers(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    rgb = viewer.add_image(np.zeros((24, 32, 3), dtype=np.uint8), rgb=True, name="photo")
    with pytest.raises(ValueError, match="Split RGB"):
        run_on_layer(viewer, rgb, model=tiny_model, **FAST)
    labels = viewer.add_labels(np.zeros((24, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="Image layer"):
        run_on_layer(viewer, labels, model=tiny_model, **FAST)
    with pytest.raises(ValueError, match="show must be"):
        run_on_layer(viewer, viewer.add_image(np.ones((24, 32))), model=tiny_model,
                     show="sd", **FAST)
    assert len(viewer.layers) == 3


def test_run_on_layer_explains_a_missing_demo_model(make_napari_viewer, image, tmp_path,
                                                    monkeypatch):
    monkeypatch.setattr(napari_cvdm.model_files, "bundled_model_path",
                        lambda name: tmp_path / "absent.cvdm.safetensors")
    viewer = make_napari_viewer()
    layer = viewer.add_image(image)
    with pytest.raises(ValueError, match="not installed"):
        napari_cvdm.run_on_layer(viewer, layer, model="demo", **FAST)
    assert len(viewer.layers) == 1


def test_cancelled_run_on_layer_adds_nothing(make_napari_viewer, image, tiny_model):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image)
    cancel = threading.Event()
    calls = []

    def progress(done, total):
        calls.append(done)
        cancel.set()

    with pytest.raises(Cancelled):
        run_on_layer(viewer, layer, model=tiny_model, progress=progress, cancel=cancel, **FAST)
    assert calls == [1]
    assert len(viewer.layers) == 1


def test_a_layer_is_checked_on_both_pixel_sizes_in_its_units(nuclei_widefield, tiny_model):
    """Only X was compared with the model's range; pixels that are not square passed."""
    from napari_cvdm.layers import input_warnings

    class Declared:
        config = tiny_model.config
        metadata = {"intended": {"input_pixel_size_nm": [50, 80]}}

    square = Image(nuclei_widefield, scale=(0.065, 0.065), units=("um", "um"))
    assert input_warnings(square, Declared()) == []
    tall = Image(nuclei_widefield, scale=(0.3, 0.065), units=("um", "um"))
    messages = input_warnings(tall, Declared())
    assert any("300 nm along Y, 65 nm along X" in m for m in messages)
    assert any("not square" in m for m in messages)
    assert input_warnings(Image(nuclei_widefield, scale=(3.0, 1.0)), Declared()) == []  # pixels
