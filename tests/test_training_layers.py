"""Training from napari layers without the widget: the checks, the data, train_on_layers."""

import numpy as np
import pytest
from napari.components import ViewerModel
from conftest import structure

from napari_cvdm import CVDM, load_model, model_choices, train_on_layers
from napari_cvdm.degradation import Degradation
from napari_cvdm.training_layers import (dimensionality_problem, layer_problem, output_problem,
                                         pair_scale, prepare_training)
from napari_cvdm.training_preview import (PREVIEW_NAME, preview_callback, preview_layer_kwargs,
                                          preview_region)

QUICK = {"steps": 6, "patch_size": 32, "batch_size": 2, "validation_every": 3,
         "checkpoint_every": 3, "precision": "fp32", "device": "cpu"}


@pytest.fixture
def viewer():
    return ViewerModel()


def test_labels_rgb_and_point_layers_are_refused_with_the_reason(viewer):
    labels = viewer.add_labels(np.zeros((64, 64), np.uint8), name="mask")
    rgb = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    points = viewer.add_points(np.zeros((1, 2)), name="spots")
    assert "Labels layer" in layer_problem(labels)
    assert "RGB" in layer_problem(rgb) and "Split RGB" in layer_problem(rgb)
    assert "Points layer" in layer_problem(points)
    assert layer_problem(viewer.add_image(structure(64, 64), name="cells")) is None


def test_layers_of_different_dimensionality_are_refused(viewer):
    flat = viewer.add_image(structure(64, 64), name="flat")
    stack = viewer.add_image(np.stack([structure(64, 64)] * 3), name="stack")
    assert "different dimensionality" in dimensionality_problem([flat, stack])
    assert dimensionality_problem([flat, flat]) is None


def test_pairs_must_be_an_integer_scale_apart():
    assert pair_scale((32, 40), (64, 80)) == 2
    assert pair_scale((32, 40), (96, 120)) == 3
    assert "not an integer multiple" in pair_scale((32, 40), (48, 60))
    assert "not an integer multiple" in pair_scale((32, 40), (64, 120))


def test_output_paths_that_cannot_be_written_are_refused_and_nothing_is_written(tmp_path):
    assert "choose the file" in output_problem("")
    assert "is a folder" in output_problem(tmp_path)
    assert ".cvdm.safetensors" in output_problem(tmp_path / "model.tif")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "is not a folder" in output_problem(blocker / "sub" / "m.cvdm.safetensors")
    assert output_problem(tmp_path / "new" / "m.cvdm.safetensors") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the check wrote nothing


def test_every_problem_is_reported_before_training_and_nothing_is_written(viewer, tmp_path):
    lq = viewer.add_image(structure(32, 40), name="lq")
    hq = viewer.add_image(structure(48, 60), name="hq")
    labels = viewer.add_labels(np.zeros((64, 64), np.uint8), name="mask")
    output = tmp_path / "m.cvdm.safetensors"
    with pytest.raises(ValueError, match="not an integer multiple"):
        prepare_training(viewer, pairs=[(lq, hq)], output=output, preset="tiny")
    with pytest.raises(ValueError, match="Labels layer"):
        prepare_training(viewer, hq=[labels], output=output, preset="tiny")
    with pytest.raises(ValueError, match="not both"):
        prepare_training(viewer, hq=["hq"], output=output, preset="tiny", init="demo")
    with pytest.raises(ValueError, match="unknown training settings"):
        prepare_training(viewer, hq=["hq"], output=output, preset="tiny", stepz=5)
    with pytest.raises(ValueError, match="no layer called"):
        prepare_training(viewer, hq=["nope"], output=output, preset="tiny")
    with pytest.raises(ValueError, match="is x2 but the data is x3"):
        prepare_training(viewer, hq=["hq"], output=output, init="demo",
                         degradation=Degradation(scale=3))
    # a review: a layer where a pair belongs was a TypeError ("'Image' object is not
    # iterable"); a pair given as a name string was split into its letters
    for pairs in ([lq], lq, [("lq", "hq", "hq")], ["lqhq"], [("lq",)]):
        with pytest.raises(ValueError, match="pairs must be a list of"):
            prepare_training(viewer, pairs=pairs, output=output, preset="tiny")
    assert list(tmp_path.iterdir()) == []
    # one layer, or its name, is taken as a list of one
    for hq_given in ("hq", hq):
        job = prepare_training(viewer, hq=hq_given, output=output, preset="tiny")
        assert job.layers == [hq] and len(job.hq) == 1 and job.hq[0].shape == (48, 60)
    assert list(tmp_path.iterdir()) == []


def test_a_patch_larger_than_the_images_is_lowered_to_the_largest_that_fits(viewer, tmp_path):
    viewer.add_image(structure(80, 200), name="short")
    job = prepare_training(viewer, hq=["short"], output=tmp_path / "m.cvdm.safetensors",
                           preset="tiny", patch_size=64)
    assert job.settings.patch_size == 40
    assert "lowered from 64 to 40" in job.notes[0] and "80 x 200" in job.notes[0]
    fitted = prepare_training(viewer, hq=["short"], output=tmp_path / "m.cvdm.safetensors",
                              preset="tiny", patch_size=64, steps=2, batch_size=2,
                              validation_every=2, precision="fp32")
    fitted.run(device="cpu")  # the library accepts the patch size it was given
    assert (tmp_path / "m.cvdm.safetensors").is_file()
    viewer.add_image(structure(12, 12), name="speck")
    with pytest.raises(ValueError, match="too small to train on: the smallest is 12 x 12"):
        prepare_training(viewer, hq=["speck"], output=tmp_path / "n.cvdm.safetensors",
                         preset="tiny")


def test_pixel_sizes_that_contradict_the_data_are_noted(viewer, tmp_path):
    """Found by a review: the layers' pixel sizes were ignored (a 4x mix of high-quality
    pixel sizes, a pair whose scales say it covers two fields, both silent)."""
    out = tmp_path / "m.cvdm.safetensors"
    um = ("µm", "µm")
    viewer.add_image(structure(128, 128, 1), name="fine", scale=(0.03, 0.03), units=um)
    viewer.add_image(structure(128, 128, 2), name="coarse", scale=(0.12, 0.12), units=um)
    viewer.add_image(structure(128, 128, 3), name="fine2", scale=(0.031, 0.031), units=um)
    viewer.add_image(structure(128, 128, 4), name="plain")  # pixels: nothing to compare
    notes = prepare_training(viewer, hq=["fine", "coarse"], output=out, preset="tiny").notes
    assert any("different pixel sizes" in n and "'coarse' 120 nm" in n for n in notes)
    for same in (["fine", "fine2"], ["fine", "plain"]):
        notes = prepare_training(viewer, hq=same, output=out, preset="tiny").notes
        assert not any("pixel size" in n for n in notes)
    viewer.add_image(structure(64, 64, 5), name="lq", scale=(0.03, 0.03), units=um)
    viewer.add_image(structure(64, 64, 6), name="lq2", scale=(0.06, 0.06), units=um)
    notes = prepare_training(viewer, pairs=[("lq", "fine")], output=out, preset="tiny").notes
    assert any("do not cover the same field" in n for n in notes)
    notes = prepare_training(viewer, pairs=[("lq2", "fine")], output=out, preset="tiny").notes
    assert not any("pixel size" in n for n in notes)


def test_layer_data_becomes_planes_and_is_not_modified(viewer, tmp_path):
    stack = np.stack([structure(64, 64, seed) for seed in range(3)])
    layer = viewer.add_image(stack.copy(), name="stack")
    job = prepare_training(viewer, hq=[layer], output=tmp_path / "m.cvdm.safetensors",
                           preset="tiny", patch_size=32)
    assert len(job.hq) == 3 and all(p.shape == (64, 64) for p in job.hq)
    np.testing.assert_array_equal(layer.data, stack)
    assert job.scale == 2 and job.degradation.scale == 2


def test_the_preview_region_is_the_centre_or_the_drawn_rectangle(viewer):
    hq = viewer.add_image(structure(200, 300), name="hq", scale=(0.5, 0.5), translate=(10, 20))
    assert preview_region(hq, 2) == (36, 86, 128, 128)
    shapes = viewer.add_shapes([[[20, 30], [20, 50], [40, 50], [40, 30]]],
                               shape_type="rectangle")  # world units: hq pixels 20..60, 20..60
    assert preview_region(hq, 2, shapes) == (20, 20, 40, 40)
    # the first rectangle, as the reconstruction's region: an ellipse before it is not one
    mixed = viewer.add_shapes([[[0, 0], [0, 80], [80, 80], [80, 0]]], shape_type="ellipse")
    with pytest.raises(ValueError, match="no rectangle"):
        preview_region(hq, 2, mixed)
    mixed.add_rectangles([[[20, 30], [20, 50], [40, 50], [40, 30]]])
    assert preview_region(hq, 2, mixed) == (20, 20, 40, 40)
    kwargs = preview_layer_kwargs(hq, (20, 20, 40, 40))
    assert kwargs["name"] == PREVIEW_NAME
    np.testing.assert_allclose(kwargs["translate"], [20.0, 30.0])
    np.testing.assert_allclose(kwargs["scale"], [0.5, 0.5])


def test_train_on_layers_fine_tunes_on_simulated_optics_and_registers_the_model(viewer,
                                                                                tmp_path):
    viewer.add_image(structure(96, 96), name="cells")
    output = tmp_path / "cells.cvdm.safetensors"
    steps = []
    model = train_on_layers(viewer, hq=["cells"], init="demo", output=output,
                            progress=lambda step, total, terms: steps.append(step), **QUICK)
    assert isinstance(model, CVDM) and model.config.scale == 2
    assert steps == list(range(1, 7))
    assert load_model(output).config.preset == load_model("demo").config.preset
    assert output.resolve() in model_choices.models()


def test_train_on_layers_trains_from_scratch_on_pairs(viewer, tmp_path):
    hq = structure(96, 96, seed=3)
    lq = hq.reshape(48, 2, 48, 2).mean(axis=(1, 3)).astype(np.float32)
    viewer.add_image(lq, name="widefield")
    viewer.add_image(hq, name="sim")
    output = tmp_path / "pairs.cvdm.safetensors"
    model = train_on_layers(viewer, pairs=[("widefield", "sim")], preset="tiny", output=output,
                            **QUICK)
    assert isinstance(model, CVDM) and model.config.preset == "tiny"
    assert load_model(output).config.scale == 2


def test_the_preview_reconstructs_at_validation_and_a_failure_does_not_stop_training(
        tiny_model):
    emitted = []
    preview_callback(structure(16, 16).astype(np.float32), "cpu", lambda *a: emitted.append(a))(
        4, {"psnr": 20.0}, tiny_model)
    step, scores, mean = emitted[-1]
    assert (step, scores) == (4, {"psnr": 20.0}) and mean.shape == (32, 32)
    preview_callback(np.zeros(5), "cpu", lambda *a: emitted.append(a))(8, {}, tiny_model)
    assert isinstance(emitted[-1][2], str) and emitted[-1][0] == 8  # the message, no raise
    preview_callback(None, "cpu", lambda *a: emitted.append(a))(12, {}, tiny_model)
    assert emitted[-1] == (12, {}, None)  # folders: nothing to preview


@pytest.mark.parametrize("planes", [None, 3])
def test_preview_and_simulated_layers_overlay_a_rotated_sheared_affine_image(viewer, planes):
    """Found by an audit: only scale and translate were passed on (9.8 world units off for a
    30 degree rotation, 12.8 with shear), and leading axes dropped everything else."""
    from napari_cvdm.degradation import Degradation
    from napari_cvdm.training_preview import simulated_layer_data

    data = structure(64, 80) if planes is None else np.stack([structure(64, 80)] * planes)
    lead = () if planes is None else (0.0,)  # the first plane's coordinate
    hq = viewer.add_image(data, name="hq", scale=(1.0,) * len(lead) + (0.5, 0.7),
                          translate=(4.0,) * len(lead) + (10.0, 20.0), rotate=30,
                          shear=[0.2] if planes is None else [0.0, 0.0, 0.2],
                          affine=np.diag([1.0] * len(lead) + [1.2, 0.9, 1.0]))

    def hq_world(y, x):
        return np.asarray(hq.data_to_world(lead + (y, x)))[-2:]

    preview = viewer.add_image(np.zeros((16, 16)), **preview_layer_kwargs(hq, (8, 12, 16, 16)))
    lq, kwargs, _ = simulated_layer_data(hq, Degradation(scale=2))
    simulated = viewer.add_image(lq, **kwargs)
    assert lq.shape == (32, 40)
    for i, j in ((0, 0), (15, 3), (7, 11)):
        np.testing.assert_allclose(preview.data_to_world((i, j))[-2:], hq_world(8 + i, 12 + j),
                                   atol=1e-9)
        np.testing.assert_allclose(simulated.data_to_world((i, j))[-2:],
                                   hq_world(2 * i + 0.5, 2 * j + 0.5), atol=1e-9)


@pytest.mark.parametrize("planes", [None, 2])
def test_preview_and_simulated_layers_keep_the_layers_units(viewer, planes):
    """Found by a review: both were placed without units, and napari then dropped every
    layer's units ("Inconsistent units across layers")."""
    from napari_cvdm.degradation import Degradation
    from napari_cvdm.training_preview import simulated_layer_data, update_image

    data = structure(64, 80) if planes is None else np.stack([structure(64, 80)] * planes)
    units = ("s",) * (data.ndim - 2) + ("µm", "nm")
    hq = viewer.add_image(data, name="hq", scale=(1.0,) * (data.ndim - 2) + (0.05, 40.0),
                          units=units)
    bare = viewer.add_image(data, name="bare")  # no units: the preview first shows it
    preview = update_image(viewer, np.zeros((16, 16)), preview_layer_kwargs(bare, (0, 0, 8, 8)))
    assert tuple(str(u) for u in preview.units) == ("pixel", "pixel")
    viewer.layers.remove(bare)
    lq, kwargs, _ = simulated_layer_data(hq, Degradation(scale=2))
    simulated = viewer.add_image(lq, **kwargs)
    again = update_image(viewer, np.zeros((16, 16)), preview_layer_kwargs(hq, (8, 12, 16, 16)))
    assert again is preview  # updated in place, units too
    for layer in (simulated, preview):
        assert tuple(str(u) for u in layer.units) == ("micrometer", "nanometer"), layer.name


def test_integer_layers_far_from_zero_train_on_their_differences(viewer, tmp_path):
    """Found by a review: an int64 layer at 2**60 plus a structure passed the checks, then
    training called it constant (float32 keeps none of its differences) as 'image 0'."""
    data = structure(96, 96, seed=3).astype(np.int64) + 2**60
    layer = viewer.add_image(data, name="offset")
    model = train_on_layers(viewer, hq=["offset"], preset="tiny",
                            output=tmp_path / "offset.cvdm.safetensors", **QUICK)
    assert isinstance(model, CVDM)
    np.testing.assert_array_equal(layer.data, data)


def test_the_simulation_preview_reads_only_the_first_plane(viewer):
    import dask.array as da

    from napari_cvdm.degradation import Degradation
    from napari_cvdm.training_preview import simulated_layer_data

    read = []

    def plane(block_id=None):
        read.append(block_id[0])
        return structure(32, 40)[None].astype(np.float32) * (1 + block_id[0])

    stack = da.map_blocks(plane, chunks=((1,) * 6, (32,), (40,)), dtype=np.float32)
    hq = viewer.add_image(stack, name="hq stack")
    read.clear()  # napari itself reads the plane it shows
    lq, _, _ = simulated_layer_data(hq, Degradation(scale=2))
    assert lq.shape == (16, 20) and set(read) == {0}
    pyramid = viewer.add_image([structure(64, 80), structure(32, 40)], multiscale=True)
    with pytest.raises(ValueError, match="multiscale"):
        simulated_layer_data(pyramid, Degradation(scale=2))


def test_masks_constant_images_self_pairs_and_oversized_layers_are_refused_up_front(
        viewer, tmp_path, monkeypatch):
    """Found by an audit: a bool or constant layer failed only once training had started,
    the same layer as both halves of a pair trained an identity model, and a dask layer
    of any size was loaded whole."""
    import dask.array as da

    from napari_cvdm import validation

    good = viewer.add_image(structure(64, 64), name="good")
    out = tmp_path / "m.cvdm.safetensors"
    cases = [
        (dict(hq=[viewer.add_image(structure(64, 64) > 200, name="mask")]), "a mask"),
        (dict(hq=[viewer.add_image(np.full((64, 64), 7, np.uint16), name="flat")]),
         "is constant"),
        (dict(pairs=[(good, good)]), "both the low- and the high-quality image"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            prepare_training(viewer, output=out, preset="tiny", **kwargs)
    monkeypatch.setattr(validation, "memory_bytes", lambda: 2**30)
    huge = viewer.add_image(da.zeros((400, 4000, 4000), np.uint16, chunks=(1, 4000, 4000)),
                            name="huge")  # napari shows one plane: only that one is read
    with pytest.raises(ValueError, match="would need 23.8 GiB in memory"):
        prepare_training(viewer, hq=[huge], output=out, preset="tiny")
    assert not out.exists()


def test_blank_planes_of_a_stack_are_left_out_with_a_note(viewer, tmp_path):
    """Found by a review: one blank plane refused the whole stack (it used to be skipped)."""
    stack = np.stack([structure(64, 64, seed) for seed in range(3)])
    stack[0] = 0
    layer = viewer.add_image(stack, name="stack")
    job = prepare_training(viewer, hq=[layer], output=tmp_path / "m.cvdm.safetensors",
                           preset="tiny")
    assert len(job.hq) == 2 and "1 of the 3 planes of 'stack' left out" in job.notes[-1]
    assert "(plane 0)" in job.notes[-1]
    blank = viewer.add_image(np.zeros((2, 64, 64), np.uint16), name="blank")
    with pytest.raises(ValueError, match="'blank' is constant"):
        prepare_training(viewer, hq=[blank], output=tmp_path / "m.cvdm.safetensors",
                         preset="tiny")


def test_a_fine_tune_from_layers_or_folders_simulates_its_models_optics(tmp_path):
    """prepare_training / prepare_folder_training with init and no optics used the defaults
    (train(init=) and cvdm train --init take the model's training optics)."""
    from napari_cvdm.degradation import trained_optics
    from napari_cvdm.training_layers import prepare_folder_training, prepare_training

    folder = tmp_path / "hq"
    folder.mkdir()
    viewer = ViewerModel()
    layer = viewer.add_image(np.random.default_rng(0).random((96, 96)).astype(np.float32))
    bundled = trained_optics(load_model("widefield-x2"))
    assert bundled is not None and bundled.haze[1] > 0 and bundled != Degradation()
    out = tmp_path / "tuned.cvdm.safetensors"
    folder_job = prepare_folder_training(folder, output=out, init="widefield-x2", steps=1)
    layer_job = prepare_training(viewer, hq=[layer], output=out, init="widefield-x2", steps=1)
    assert folder_job.degradation == bundled and layer_job.degradation == bundled
    scratch = prepare_folder_training(folder, output=out, preset="tiny", steps=1)
    assert scratch.degradation == Degradation()
