"""The napari plugin: manifest, "CVDM reconstruction" dock widget and sample data."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_cvdm._widget as widget_module
from napari_cvdm.settings import DEFAULT_MODEL  # noqa: E402
from napari_cvdm import CVDM, CVDMConfig, Cancelled, save_model
from napari_cvdm._widget import ReconstructionOptions, ReconstructionWidget
from napari_cvdm.errors import OutOfMemory
from napari_cvdm.settings import PredictSettings

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = CVDM(CVDMConfig.preset("tiny"))
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny.cvdm.safetensors")


@pytest.fixture
def notifications(monkeypatch):
    """Messages the widget shows, by kind, instead of napari notifications."""
    shown = {"error": [], "info": []}
    monkeypatch.setattr(widget_module, "show_error", shown["error"].append)
    monkeypatch.setattr(widget_module, "show_info", shown["info"].append)
    return shown


@pytest.fixture(autouse=True)
def private_config(tmp_path, monkeypatch):
    """The widget remembers its options here, never in the user's own settings."""
    folder = tmp_path / "config"
    monkeypatch.setenv("NAPARI_CVDM_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM reconstruction")
    return viewer, widget


def image(height=24, width=32, seed=1):
    """Random bright specks on a dark background, smoothed as a microscope would (pure
    noise would be warned about as such)."""
    noise = np.random.default_rng(seed).random((height + 2, width + 2))
    smooth = sum(noise[i:i + height, j:j + width] for i in range(3) for j in range(3)) / 9
    return (smooth ** 3 * 1000).astype(np.uint16)


def configure(widget, model_file, samples=2, steps=2, seed=7):
    widget.use_model(model_file)
    widget.set_options(samples=samples, steps=steps, seed=seed, device="cpu")


def wait_until_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_every_bundled_model_can_be_chosen_by_name(viewer_and_widget, tmp_path, monkeypatch):
    _, widget = viewer_and_widget
    assert widget.model_source() == "widefield-x2"  # the default
    monkeypatch.chdir(tmp_path)  # "demo" was taken as a file of that name here
    widget.use_model("demo")
    assert widget.model_source() == "demo"
    assert widget._model.value == "demo" and not widget._model_file.visible
    widget.use_model("widefield-x2")
    assert widget.model_source() == "widefield-x2"


def test_widget_is_contributed_through_the_manifest(viewer_and_widget):
    _, widget = viewer_and_widget
    assert isinstance(widget, ReconstructionWidget)
    options = widget.options()
    assert options == ReconstructionOptions() and options.settings == PredictSettings()
    defaults = PredictSettings.defaults()
    del defaults["model"]
    assert options.predict_kwargs() == defaults
    assert {"auto", "cpu"} <= set(widget._options["device"].choices)
    assert set(widget._options["precision"].choices) == {"auto", "fp32", "bf16", "fp16"}
    assert widget._run.text == "Run"


def test_image_choice_follows_the_active_image_layer(viewer_and_widget):
    viewer, widget = viewer_and_widget
    first = viewer.add_image(image(), name="first")
    viewer.add_labels(np.zeros((24, 32), dtype=np.uint8), name="mask")
    second = viewer.add_image(image(seed=2), name="second")
    assert widget._image.choices == (first, second)  # labels are not offered
    assert widget._image.value is second
    viewer.layers.selection.active = first
    assert widget._image.value is first
    viewer.layers.selection.active = viewer.layers["mask"]
    assert widget._image.value is first
    output = viewer.add_image(image(48, 64), name="first CVDM mean", metadata={"cvdm": {}})
    assert widget._image.value is first  # outputs are offered but not followed
    assert output in widget._image.choices


def test_model_label_describes_the_chosen_file(viewer_and_widget, model_file, tmp_path):
    _, widget = viewer_and_widget
    assert widget._model_file.native.isHidden()  # the bundled model needs no file
    configure(widget, model_file)
    assert not widget._model_file.native.isHidden()
    assert "tiny: x2 super-resolution, preset tiny, untrained" in widget._model_info.value
    broken = tmp_path / "broken.cvdm.safetensors"
    broken.write_bytes(b"this is not a model")
    widget._model_file.value = broken
    assert "not a napari-cvdm model" in widget._model_info.value


def test_run_adds_mean_and_variance_layers_on_the_finer_grid(qtbot, viewer_and_widget,
                                                            model_file, notifications):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(image(), name="cells", scale=(0.4, 0.4), translate=(2.0, 3.0))
    original = layer.data.copy()
    configure(widget, model_file)
    progress_threads = []
    widget._signals.progressed.connect(
        lambda done, total: progress_threads.append(threading.current_thread()))
    widget._run.native.click()
    assert widget.running and widget._run.text == "Cancel"
    wait_until_idle(qtbot, widget)
    assert notifications["error"] == []
    # The calibrated std by default, below the mean: the reconstruction ends on top.
    assert [lyr.name for lyr in viewer.layers] == ["cells", "cells CVDM std",
                                                   "cells CVDM mean"]
    for out in viewer.layers[1:]:
        assert out.data.shape == (48, 64)
        np.testing.assert_allclose(out.scale, [0.2, 0.2])
        np.testing.assert_allclose(out.translate, [2.0 - 0.1, 3.0 - 0.1])
        assert out.metadata["cvdm"]["seed"] == 7 and out.metadata["cvdm"]["model"] == "tiny"
    np.testing.assert_array_equal(layer.data, original)
    # progress arrives on the main thread, once per denoiser evaluation (2 steps x 1 batch)
    assert progress_threads and set(progress_threads) == {threading.main_thread()}
    assert widget._progress.value == widget._progress.max == 2
    assert widget._run.text == "Run" and widget._run.enabled


def test_running_again_updates_the_layers_and_variance_option_adds_a_variance_layer(
        qtbot, viewer_and_widget, model_file, notifications):
    viewer, widget = viewer_and_widget
    viewer.add_image(image(), name="cells")
    configure(widget, model_file, seed=1)
    widget.start()
    wait_until_idle(qtbot, widget)
    mean = viewer.layers["cells CVDM mean"]
    first = mean.data.copy()
    widget.set_options(seed=2)
    widget.start()
    wait_until_idle(qtbot, widget)
    assert len(viewer.layers) == 3 and viewer.layers["cells CVDM mean"] is mean
    assert not np.allclose(mean.data, first)
    widget.set_options(show="variance")
    widget.start()
    wait_until_idle(qtbot, widget)
    assert "cells CVDM variance" in viewer.layers and len(viewer.layers) == 4
    assert notifications["error"] == []


def test_cancel_button_stops_the_run_and_adds_no_layers(qtbot, viewer_and_widget, model_file,
                                                       notifications):
    viewer, widget = viewer_and_widget
    viewer.add_image(image(64, 64), name="cells")
    configure(widget, model_file, samples=1, steps=1000)
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    assert widget.start() is None  # a second run cannot start while one is going
    widget._run.native.click()  # the button now cancels
    wait_until_idle(qtbot, widget)
    assert widget._progress.value == 0
    assert [lyr.name for lyr in viewer.layers] == ["cells"]
    assert notifications == {"error": [], "info": ["CVDM reconstruction cancelled"]}
    assert widget._run.text == "Run" and widget._run.enabled


def test_a_cancel_as_the_work_ends_says_so_and_adds_no_layers(qtbot, viewer_and_widget,
                                                              model_file, notifications,
                                                              monkeypatch):
    """Found by a review: Cancel pressed during the last denoising step (after predict()
    had its result) dropped the result silently; the status stayed "cancelling..." for good."""
    viewer, widget = viewer_and_widget
    real_predict = widget_module.predict

    def cancelled_as_it_returns(*args, **kwargs):
        result = real_predict(*args, **kwargs)
        widget._cancel.set()  # what the Cancel button does, as the result comes back
        return result

    monkeypatch.setattr(widget_module, "predict", cancelled_as_it_returns)
    viewer.add_image(image(), name="cells")
    configure(widget, model_file)
    widget.start()
    wait_until_idle(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers] == ["cells"]
    assert widget._status.value == "cancelled"
    assert notifications == {"error": [], "info": ["CVDM reconstruction cancelled"]}
    assert widget._run.text == "Run" and widget._run.enabled


def test_an_rgb_layer_gets_no_output_size_but_what_to_do(viewer_and_widget):
    """Its colour axis was taken for X: "output: 2 x 16 x 32 x 6"."""
    viewer, widget = viewer_and_widget
    widget._image.value = viewer.add_image(np.zeros((16, 16, 3), np.uint8), rgb=True)
    assert widget._output.value.startswith("RGB: split it first")


def test_every_run_predicts_in_the_one_compute_thread_and_cancel_still_works(
        qtbot, viewer_and_widget, model_file, notifications, monkeypatch):
    """The OpenMP team stays one per session (docs/performance.md, the worker-thread gap)."""
    from napari_cvdm import devices

    threads = []
    real_predict = widget_module.predict

    def recording_predict(*args, **kwargs):
        threads.append(threading.get_ident())
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(widget_module, "predict", recording_predict)
    viewer, widget = viewer_and_widget
    viewer.add_image(image(), name="cells")
    configure(widget, model_file, seed=1)
    for seed in (1, 2):
        widget.set_options(seed=seed)
        assert widget.start() is not None
        wait_until_idle(qtbot, widget)
    assert notifications["error"] == [] and "cells CVDM mean" in viewer.layers
    # a long run, cancelled from the main thread while the compute thread runs it
    viewer.add_image(image(64, 64), name="big")
    configure(widget, model_file, samples=1, steps=1000)
    widget._image.value = viewer.layers["big"]
    widget._run.native.click()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    widget._run.native.click()
    wait_until_idle(qtbot, widget)
    assert notifications["info"][-1] == "CVDM reconstruction cancelled"
    assert "big CVDM mean" not in viewer.layers and widget._run.enabled
    assert len(threads) == 3 and len(set(threads)) == 1
    assert threads[0] == devices.compute_thread_ident() != threading.get_ident()


def test_removing_the_input_layer_cancels_the_run(qtbot, viewer_and_widget, model_file,
                                                  notifications):
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(image(64, 64), name="cells")
    viewer.add_image(image(), name="other")
    configure(widget, model_file, samples=1, steps=1000)
    widget._image.value = layer
    widget.start()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    viewer.layers.remove(layer)
    wait_until_idle(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers] == ["other"]
    assert notifications["info"] == ["CVDM reconstruction cancelled"]


def test_new_data_in_the_input_layer_cancels_the_run_and_says_why(qtbot, viewer_and_widget,
                                                                   model_file, notifications):
    """Found by an audit: the result of the old data was shown over the new, silently."""
    viewer, widget = viewer_and_widget
    layer = viewer.add_image(image(64, 64), name="cells")
    configure(widget, model_file, samples=1, steps=1000)
    widget._image.value = layer
    widget.start()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    layer.data = image(48, 48, seed=9)
    wait_until_idle(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers] == ["cells"]
    assert "changed during the run" in notifications["info"][0]
    assert notifications["info"][-1] == "CVDM reconstruction cancelled"
    configure(widget, model_file)  # the next run is on the new data, and not cancelled
    widget.start()
    wait_until_idle(qtbot, widget)
    assert viewer.layers["cells CVDM mean"].data.shape == (96, 96)
    layer.data = image(48, 48, seed=10)  # after the run: nothing to cancel
    assert len([m for m in notifications["info"] if "changed" in m]) == 1


def test_a_broken_model_file_is_reported_and_the_widget_stays_usable(
        qtbot, viewer_and_widget, model_file, tmp_path, notifications):
    viewer, widget = viewer_and_widget
    viewer.add_image(image(), name="cells")
    broken = tmp_path / "broken.cvdm.safetensors"
    broken.write_bytes(b"\x00" * 64)
    configure(widget, broken)
    widget.start()
    wait_until_idle(qtbot, widget)
    assert len(notifications["error"]) == 1
    assert "not a napari-cvdm model" in notifications["error"][0]
    assert len(viewer.layers) == 1
    assert widget._run.text == "Run" and widget._run.enabled
    widget._model_file.value = model_file
    widget.start()
    wait_until_idle(qtbot, widget)
    assert len(viewer.layers) == 3 and len(notifications["error"]) == 1


def test_bad_inputs_are_reported_without_starting(viewer_and_widget, model_file,
                                                  notifications):
    viewer, widget = viewer_and_widget
    configure(widget, model_file)
    assert widget.start() is None
    assert "no image layer" in notifications["error"][-1]
    viewer.add_image(np.zeros((24, 32, 3), dtype=np.uint8), rgb=True, name="photo")
    assert widget.start() is None
    assert "Split RGB" in notifications["error"][-1]
    viewer.add_image(image(), name="cells")
    widget._model_file.value = ""
    assert widget.start() is None
    assert "choose a model file" in notifications["error"][-1]
    assert len(notifications["error"]) == 3 and not widget.running
    assert len(viewer.layers) == 2
    # a review: the status line kept the last run's "done in ..." after a refusal
    assert widget._status.value.startswith("not started")


def test_errors_inside_predict_become_notifications(qtbot, viewer_and_widget, model_file,
                                                    notifications):
    viewer, widget = viewer_and_widget
    data = image().astype(np.float32)
    data[3, 4] = np.nan
    viewer.add_image(data, name="holes")
    configure(widget, model_file)
    widget.start()
    wait_until_idle(qtbot, widget)
    assert len(notifications["error"]) == 1 and "NaN" in notifications["error"][0]
    assert len(viewer.layers) == 1 and widget._run.enabled


def test_out_of_memory_suggests_a_smaller_tile(qtbot, viewer_and_widget, model_file,
                                               notifications, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise OutOfMemory("cuda:0", 256, 1)

    monkeypatch.setattr(widget_module, "predict", out_of_memory)
    viewer, widget = viewer_and_widget
    viewer.add_image(image(), name="cells")
    configure(widget, model_file)
    widget.start()
    wait_until_idle(qtbot, widget)
    assert len(notifications["error"]) == 1 and "lower the tile size" in notifications["error"][0]
    assert "on cuda:0" in notifications["error"][0] and "--" not in notifications["error"][0]
    assert len(viewer.layers) == 1 and widget._run.enabled


def test_sample_data_opens_and_the_ground_truth_overlays_it(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM reconstruction")
    (widefield,) = viewer.open_sample("napari-cvdm", "nuclei")
    assert widefield.name == "nuclei widefield (CVDM sample)"
    assert widefield.data.shape == (256, 256) and widefield.data.dtype == np.uint16
    (truth,) = viewer.open_sample("napari-cvdm", "nuclei_ground_truth")
    assert truth.data.shape == (512, 512)
    np.testing.assert_allclose(truth.scale, [0.5, 0.5])
    np.testing.assert_allclose(truth.translate, [-0.25, -0.25])
    # the two share their world extent: pixel (0, 0) of the input is pixels 0-1 of the truth
    np.testing.assert_allclose(truth.data_to_world([0.5, 0.5]), widefield.data_to_world([0, 0]))
    # a review: opening the truth second made it the widget's input (docs/napari.md's steps)
    assert widget._image.value is widefield


@pytest.mark.parametrize("closing", ["viewer", "dock"])
def test_closing_the_viewer_during_a_run_stops_it_cleanly(qtbot, make_napari_viewer, model_file,
                                                          notifications, closing):
    # The dock's close button only takes the widget out of its dock (napari keeps it
    # alive): the run went on, added its layers, and the widget kept following the viewer.
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM reconstruction")
    viewer.add_image(image(64, 64), name="cells")
    configure(widget, model_file, samples=1, steps=1000)
    worker = widget.start()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    finished, errors = [], []
    worker.finished.connect(lambda: finished.append(True))
    worker.errored.connect(errors.append)
    if closing == "viewer":
        viewer.close()
    else:
        viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: bool(finished), timeout=TIMEOUT_MS)
    assert [type(e) for e in errors] == [Cancelled]  # stopped, not run to the end
    assert widget._closed.is_set() and not widget.running
    assert notifications["error"] == []
    if closing == "dock":
        assert [layer.name for layer in viewer.layers] == ["cells"]
        assert widget._model_cache is None
        choices = widget._image.choices
        viewer.add_image(image(8, 8), name="later")  # a closed widget no longer follows
        assert widget._image.choices == choices


@pytest.mark.parametrize("closing", ["viewer", "dock"])
def test_closing_the_viewer_during_a_lazy_run_leaves_no_half_written_store(
        qtbot, make_napari_viewer, model_file, notifications, closing):
    """Found by an audit: the temporary store was left half written. Closing only the
    panel also removes the layers that showed it (they pointed at a deleted store)."""
    import dask.array as da

    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM reconstruction")
    viewer.add_image(da.from_array(image(64, 64)), name="big")
    configure(widget, model_file, samples=1, steps=1000)
    widget.start()
    qtbot.waitUntil(lambda: widget._lazy is not None and widget._progress.value >= 1,
                    timeout=TIMEOUT_MS)
    store = widget._lazy.path
    assert store.exists() and len(viewer.layers) == 3
    if closing == "viewer":
        viewer.close()
    else:
        viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: not store.parent.exists(), timeout=TIMEOUT_MS)
    assert notifications["error"] == []
    if closing == "dock":
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
        assert [layer.name for layer in viewer.layers] == ["big"]


def test_options_are_remembered_between_sessions_and_reset_to_defaults(make_napari_viewer,
                                                                       private_config):
    viewer = make_napari_viewer()
    first = ReconstructionWidget(viewer)
    first.set_options(samples=3, steps=4, precision="fp32", tile_size=64, show="std")
    assert (private_config / "reconstruction.json").is_file()
    second = ReconstructionWidget(viewer)  # a new napari session reads the same file
    options = second.options()
    assert (options.settings.samples, options.settings.steps) == (3, 4)
    assert (options.settings.precision, options.settings.tile_size) == ("fp32", 64)
    assert options.show == "std"
    second._reset.native.click()
    assert second.options() == ReconstructionOptions()
    assert ReconstructionWidget(viewer).options() == ReconstructionOptions()


def test_a_damaged_options_file_is_ignored(make_napari_viewer, private_config):
    private_config.mkdir()
    (private_config / "reconstruction.json").write_text('{"samples": -5, "steps": "x", "eta": 0.5')
    widget = ReconstructionWidget(make_napari_viewer())
    assert widget.options() == ReconstructionOptions()
    (private_config / "reconstruction.json").write_text('{"samples": -5, "eta": 0.5}')
    widget = ReconstructionWidget(make_napari_viewer())
    assert widget.options().settings == PredictSettings(eta=0.5)  # the valid one is kept


@pytest.mark.parametrize("content", ['{"seed": -5}', '{"seed": 1099511627776}',
                                     "[" * 100_000 + "]" * 100_000, "x" * 100_000, "pipe"])
def test_an_options_file_the_widget_cannot_use_never_stops_it_opening(make_napari_viewer,
                                                                     private_config, content):
    """Found by an audit: a remembered seed outside the box's range, or deeply nested JSON,
    raised while the widget was made, every time napari opened it; a pipe hung."""
    import os

    private_config.mkdir()
    path = private_config / "reconstruction.json"
    if content == "pipe":
        os.mkfifo(path)
    else:
        path.write_text(content)
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-cvdm",
                                                                   "CVDM reconstruction")
    assert widget.options() == ReconstructionOptions()


def test_advanced_options_are_folded_away_until_asked_for(viewer_and_widget):
    _, widget = viewer_and_widget
    advanced = ["sampler", "precision", "tile_size", "overlap", "batch_size", "compile"]
    assert all(widget._options[name].native.isHidden() for name in advanced)
    assert not widget._options["samples"].native.isHidden()
    widget._advanced.value = True
    assert not any(widget._options[name].native.isHidden() for name in advanced)


def test_models_trained_in_this_session_are_offered_at_once(viewer_and_widget, model_file,
                                                            monkeypatch):
    from napari_cvdm import model_choices

    monkeypatch.setattr(model_choices, "_models", [])  # forget earlier tests' trained models
    _, widget = viewer_and_widget
    widget.reset_choices()
    assert list(widget._model.choices) == [DEFAULT_MODEL, "demo", "file"]
    model_choices.register(model_file)
    assert str(model_file.resolve()) in widget._model.choices
    widget._model.value = str(model_file.resolve())
    assert widget.model_source() == model_file.resolve()
    assert "tiny: x2 super-resolution" in widget._model_info.value


# -- large images: dask, zarr and multiscale layers --------------------------------------
def test_a_dask_layer_fills_zarr_backed_layers_equal_to_the_in_memory_run(
        qtbot, viewer_and_widget, model_file, tmp_path):
    import dask.array as da
    import zarr

    import napari_cvdm as nc

    viewer, widget = viewer_and_widget
    data = np.stack([image(48, 40, seed=3), image(48, 40, seed=4)])
    viewer.add_image(da.from_array(data), name="big")
    configure(widget, model_file)
    widget.set_options(precision="fp32")
    assert not widget._store.native.isHidden()
    widget._store.value = tmp_path / "big.ome.zarr"
    assert widget._output.value.startswith("output: 2 x 2 x 96 x 80,")
    assert str(tmp_path / "big.ome.zarr") in widget._output.value
    assert widget.start() is not None
    wait_until_idle(qtbot, widget)
    mean_layer = viewer.layers["big CVDM mean"]
    std_layer = viewer.layers["big CVDM std"]
    assert isinstance(mean_layer.data, zarr.Array) and isinstance(std_layer.data, zarr.Array)
    expected = nc.predict(data, model_file, samples=2, steps=2, seed=7, device="cpu",
                          precision="fp32")
    np.testing.assert_allclose(np.asarray(mean_layer.data), expected.mean, rtol=1e-5,
                               atol=1e-3)
    np.testing.assert_allclose(np.asarray(std_layer.data), expected.std, rtol=1e-5,
                               atol=1e-3)
    assert "written to" in widget._status.value
    assert mean_layer.metadata["cvdm"]["store"] == str(tmp_path / "big.ome.zarr")


def test_a_cancel_as_a_lazy_store_is_finished_says_so_and_adds_no_layers(
        qtbot, viewer_and_widget, model_file, tmp_path, notifications, monkeypatch):
    """Found by a review: Cancel pressed after the store was written (during the input
    checks) dropped the result silently; the status stayed "cancelling..."."""
    import dask.array as da

    viewer, widget = viewer_and_widget
    real_job = widget_module._compute_and_check

    def cancelled_as_it_ends(out, checks):
        messages = real_job(out, checks)
        widget._cancel.set()  # what the Cancel button does, as the job comes back
        return messages

    monkeypatch.setattr(widget_module, "_compute_and_check", cancelled_as_it_ends)
    viewer.add_image(da.from_array(image(48, 40, seed=3)), name="big")
    configure(widget, model_file)
    widget._store.value = tmp_path / "big.ome.zarr"
    assert widget.start() is not None
    wait_until_idle(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers] == ["big"]
    assert widget._status.value == "cancelled"
    assert notifications["info"][-1] == "CVDM reconstruction cancelled"
    assert notifications["error"] == []


def test_the_store_field_never_replaces_a_folder_that_is_not_a_result(
        viewer_and_widget, model_file, tmp_path, monkeypatch):
    import dask.array as da

    viewer, widget = viewer_and_widget
    viewer.add_image(da.from_array(image(48, 40, seed=3)), name="big")
    configure(widget, model_file)
    folder = tmp_path / "my_data"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    widget._store.value = folder
    errors = []
    monkeypatch.setattr(widget_module, "show_error", errors.append)
    assert widget.start() is None
    assert "not a napari-cvdm result" in errors[0]
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert [layer.name for layer in viewer.layers] == ["big"]


def test_a_numpy_layer_shows_its_output_size_in_memory_and_no_store(viewer_and_widget,
                                                                     model_file):
    viewer, widget = viewer_and_widget
    viewer.add_image(image(), name="cells")
    configure(widget, model_file)
    assert widget._output.value.endswith("to memory") and widget._store.native.isHidden()


def test_too_little_disk_space_is_reported_without_starting(viewer_and_widget, model_file,
                                                            notifications, monkeypatch,
                                                            tmp_path):
    import dask.array as da

    from napari_cvdm import layers as layers_module

    viewer, widget = viewer_and_widget
    viewer.add_image(da.from_array(image(48, 40)), name="big")
    configure(widget, model_file)
    usage = layers_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(layers_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=100))
    assert widget.start() is None
    assert "free" in notifications["error"][-1] and len(viewer.layers) == 1


def test_region_reconstructs_the_rectangle_of_a_shapes_layer_over_it(
        qtbot, viewer_and_widget, model_file):
    import napari_cvdm as nc

    viewer, widget = viewer_and_widget
    data = image(48, 40, seed=5)
    layer = viewer.add_image(data, name="cells", translate=(2.0, -3.0))
    shapes = viewer.add_shapes([np.array([[2.0 + 10, -3.0 + 4], [2.0 + 29, -3.0 + 27]])],
                               shape_type="rectangle", name="roi")
    widget._image.value = layer
    configure(widget, model_file)
    widget.set_options(precision="fp32")
    widget.set_region(shapes)
    assert widget._output.value.startswith("output: 2 x 40 x 48,")
    assert widget.start() is not None
    wait_until_idle(qtbot, widget)
    mean_layer = viewer.layers["cells CVDM mean (region 10:30, 4:28)"]
    expected = nc.predict(data[10:30, 4:28], model_file, samples=2, steps=2, seed=7,
                          device="cpu", precision="fp32")
    np.testing.assert_allclose(mean_layer.data, expected.mean, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(mean_layer.data_to_world((0, 0)),
                               layer.data_to_world((10 - 0.25, 4 - 0.25)))
    widget.set_region(None)
    assert widget._output.value.startswith("output: 2 x 96 x 80,")


def test_the_psf_width_reaches_a_conditioned_model_and_is_recorded(qtbot, viewer_and_widget,
                                                                   tmp_path, notifications,
                                                                   monkeypatch):
    torch.manual_seed(0)
    model = CVDM(CVDMConfig.preset("tiny", psf_conditioned=True))
    model.metadata = {"training": {"data": {"degradation": {"psf_sigma": [1.5, 4.0]}}}}
    path = save_model(model, tmp_path / "conditioned.cvdm.safetensors")
    warned = []
    monkeypatch.setattr(widget_module, "show_warning", warned.append)
    viewer, widget = viewer_and_widget
    assert widget.options().settings.psf_sigma is None  # 0 in the control: the model's
    viewer.add_image(image(), name="cells")
    configure(widget, path)
    for sigma, expected in ((0.0, 3.0), (2.25, 2.25), (9.0, 9.0)):
        widget.set_options(psf_sigma=sigma)
        assert widget.options().settings.psf_sigma == (expected if sigma else None)
        widget._run.native.click()
        wait_until_idle(qtbot, widget)
        assert notifications["error"] == []
        assert viewer.layers["cells CVDM mean"].metadata["cvdm"]["psf_sigma"] == expected
    assert len(warned) == 1 and "PSF width 9" in warned[0]


def test_one_sample_is_notified_as_no_uncertainty(qtbot, viewer_and_widget, tiny_model_file,
                                                  notifications, monkeypatch):
    warned = []
    monkeypatch.setattr(widget_module, "show_warning", warned.append)
    viewer, widget = viewer_and_widget
    viewer.add_image(image(), name="cells")
    for samples in (2, 1):
        configure(widget, tiny_model_file, samples=samples)
        widget._run.native.click()
        wait_until_idle(qtbot, widget)
        assert notifications["error"] == []
    assert "cells CVDM std" in viewer.layers  # still shown, and said what it is
    assert len(warned) == 1 and "one sample was drawn" in warned[0]


def test_a_dask_layer_is_warned_about_as_a_numpy_one_is(qtbot, viewer_and_widget,
                                                         tiny_model_file, notifications,
                                                         monkeypatch):
    """Found by a review: the lazy path (large images) showed none of the input warnings."""
    import dask.array as da

    warned = []
    monkeypatch.setattr(widget_module, "show_warning", warned.append)
    viewer, widget = viewer_and_widget
    noise = (np.random.default_rng(0).random((64, 64)) * 1000).astype(np.uint16)
    viewer.add_image(da.from_array(noise, chunks=32), name="noise")
    configure(widget, tiny_model_file)
    widget.start()
    wait_until_idle(qtbot, widget)
    assert notifications["error"] == [] and "noise CVDM mean" in viewer.layers
    assert len(warned) == 1 and "looks like noise" in warned[0]
    assert "looks like noise" in viewer.layers["noise CVDM mean"].metadata["cvdm"][
        "input_warnings"]


def test_a_run_with_a_random_seed_can_be_repeated_from_its_recorded_seed(
        qtbot, viewer_and_widget, tiny_model_file, notifications):
    """Found by a review: random seeds went up to 2**63, beyond the seed box (32 bits), so
    the recorded seed could not be typed back in to repeat the run."""
    viewer, widget = viewer_and_widget
    viewer.add_image(image(), name="cells")
    configure(widget, tiny_model_file, seed=-1)
    recorded = []
    for _ in range(2):
        widget._run.native.click()
        wait_until_idle(qtbot, widget)
        mean = viewer.layers["cells CVDM mean"]
        recorded.append((mean.metadata["cvdm"]["seed"], mean.data.copy()))
        assert 0 <= recorded[-1][0] < 2**31
        widget.set_options(seed=recorded[0][0])  # the first run's seed, typed back in
    assert notifications["error"] == []
    np.testing.assert_array_equal(recorded[1][1], recorded[0][1])


def test_a_script_taking_over_a_lazy_runs_layers_never_removes_the_store_being_written(
        qtbot, viewer_and_widget, model_file, notifications, monkeypatch):
    """Found by a review: a scripted run_on_layer on the same layer while the widget's
    lazy run was writing took over the layers and removed the widget's store as an
    earlier result no layer showed; the widget then said "written to" a folder that was
    gone."""
    import threading

    import dask.array as da

    import napari_cvdm as nc

    viewer, widget = viewer_and_widget
    release = threading.Event()
    real_job = widget_module._compute_and_check

    def held(out, checks):  # the widget's run is still writing while the script runs
        assert release.wait(TIMEOUT_MS / 1000)
        return real_job(out, checks)

    monkeypatch.setattr(widget_module, "_compute_and_check", held)
    layer = viewer.add_image(da.from_array(image(48, 40, seed=3)), name="big")
    configure(widget, model_file)
    assert widget.start() is not None
    qtbot.waitUntil(lambda: widget._lazy is not None, timeout=TIMEOUT_MS)
    widget_store = widget._lazy.path
    mean, _ = nc.run_on_layer(viewer, layer, model=model_file, samples=2, steps=2, seed=1,
                              device="cpu")
    script_store = Path(mean.metadata["cvdm"]["store"])
    assert widget_store.exists() and script_store.exists()
    release.set()
    wait_until_idle(qtbot, widget)
    # the layers show the script's result, as it left them; the widget says so
    assert Path(viewer.layers["big CVDM mean"].metadata["cvdm"]["store"]) == script_store
    assert np.asarray(viewer.layers["big CVDM mean"].data).shape == (96, 80)
    assert "later run's result" in widget._status.value
    assert "written to" not in widget._status.value
    assert not widget_store.exists()  # its temporary store, shown nowhere: removed
    assert script_store.exists()


def test_a_lazy_run_whose_layers_are_deleted_or_moved_says_so_and_orders_them(
        qtbot, viewer_and_widget, model_file, notifications, monkeypatch):
    """Found by a review: deleting a lazy run's layers while it wrote said "the layers show
    a later run's result" (there was none); an uncertainty layer moved above its mean
    during the run stayed there, hiding the reconstruction (a NumPy run reorders them)."""
    import threading

    import dask.array as da

    viewer, widget = viewer_and_widget
    release = threading.Event()
    real_job = widget_module._compute_and_check

    def held(out, checks):  # still writing while the user acts
        assert release.wait(TIMEOUT_MS / 1000)
        return real_job(out, checks)

    monkeypatch.setattr(widget_module, "_compute_and_check", held)
    viewer.add_image(da.from_array(image(48, 40, seed=3)), name="big")
    configure(widget, model_file)
    assert widget.start() is not None
    qtbot.waitUntil(lambda: widget._lazy is not None, timeout=TIMEOUT_MS)
    store = widget._lazy.path
    viewer.layers.remove("big CVDM mean")
    viewer.layers.remove("big CVDM std")
    release.set()
    wait_until_idle(qtbot, widget)
    assert "its layers were deleted" in widget._status.value, widget._status.value
    assert "later run" not in widget._status.value and not store.exists()
    assert [layer.name for layer in viewer.layers] == ["big"]

    release.clear()
    assert widget.start() is not None
    qtbot.waitUntil(lambda: widget._lazy is not None, timeout=TIMEOUT_MS)
    viewer.add_image(np.zeros((8, 8)), name="other")
    names = [layer.name for layer in viewer.layers]
    viewer.layers.move(names.index("big CVDM std"), len(names))  # the uncertainty on top
    release.set()
    wait_until_idle(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names.index("big CVDM std") == names.index("big CVDM mean") - 1, names
    assert "written to" in widget._status.value and notifications["error"] == []


def test_a_finished_run_lets_go_of_its_input(qtbot, viewer_and_widget, model_file):
    """Found by a review: napari keeps every worker it made, with its arguments and the
    slots connected to it, so the input image and its layer stayed in memory after the user
    deleted them (for as long as the session lasted)."""
    import gc
    import weakref

    viewer, widget = viewer_and_widget
    data = image()
    gone = weakref.ref(data)
    layer = viewer.add_image(data, name="cells")
    configure(widget, model_file)
    widget._run.native.click()
    wait_until_idle(qtbot, widget)
    assert [lyr.name for lyr in viewer.layers][0] == "cells"
    viewer.layers.clear()
    qtbot.wait(50)  # the worker's release runs after its finished signal's own slots
    del data, layer
    gc.collect()
    assert gone() is None
