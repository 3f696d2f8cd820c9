"""The "CVDM training" dock widget: checks, a short run, cancelling, the model list update."""

import threading

import numpy as np
import pytest
from conftest import structure

import napari_cvdm._training_widget as widget_module
from napari_cvdm.settings import DEFAULT_MODEL  # noqa: E402
from napari_cvdm import Cancelled, devices, load_model, model_choices
from napari_cvdm._training_options import OpticsOptions, TrainingOptions
from napari_cvdm._training_widget import TrainingWidget
from napari_cvdm.training_preview import PREVIEW_NAME

TIMEOUT_MS = 90_000
QUICK = {"steps": 8, "patch_size": 32, "batch_size": 2, "validation_every": 4,
         "checkpoint_every": 4, "precision": "fp32", "device": "cpu"}


@pytest.fixture
def notifications(monkeypatch):
    """Messages the widget shows, by kind, instead of napari notifications."""
    shown = {"error": [], "info": []}
    monkeypatch.setattr(widget_module, "show_error", shown["error"].append)
    monkeypatch.setattr(widget_module, "show_info", shown["info"].append)
    return shown


@pytest.fixture
def viewer_and_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM training")
    return viewer, widget


def add_pair(viewer, size=96, seed=3):
    hq = structure(size, size, seed)
    lq = hq.reshape(size // 2, 2, size // 2, 2).mean(axis=(1, 3)).astype(np.float32)
    lq_layer = viewer.add_image(lq, name="widefield", scale=(2.0, 2.0), translate=(0.5, 0.5))
    hq_layer = viewer.add_image(hq, name="sim")
    return lq_layer, hq_layer


def wait_until_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_widget_is_contributed_with_laptop_sized_defaults(viewer_and_widget):
    _, widget = viewer_and_widget
    assert isinstance(widget, TrainingWidget)
    assert widget.options() == TrainingOptions()
    assert widget.optics().degradation().scale == 2
    assert widget._start.value == DEFAULT_MODEL  # fine-tuning the bundled model comes first
    assert "preset:tiny" in widget._start.choices
    assert {"auto", "fp32", "bf16", "fp16"} == set(widget._options["precision"].choices)
    assert widget._run.text == "Run"


def test_only_intensity_image_layers_are_offered(viewer_and_widget):
    viewer, widget = viewer_and_widget
    cells = viewer.add_image(structure(64, 64), name="cells")
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="mask")
    viewer.add_image(structure(64, 64), name="cells CVDM mean", metadata={"cvdm": {}})
    assert widget._hq.choices == (cells,)


def test_the_simulated_low_quality_image_overlays_the_high_quality_layer(viewer_and_widget):
    viewer, widget = viewer_and_widget
    cells = viewer.add_image(structure(96, 128), name="cells", scale=(0.5, 0.5))
    widget.set_data(hq=[cells])
    widget.set_options(psf_sigma=2.0)
    widget._show_simulation.value = True
    simulated = viewer.layers["cells simulated low-quality"]
    assert simulated.data.shape == (48, 64)
    np.testing.assert_allclose(simulated.scale, [1.0, 1.0])
    np.testing.assert_allclose(simulated.translate, [0.25, 0.25])  # pixel centres line up
    first = simulated.data.copy()
    widget.set_options(psf_sigma=4.0)  # live: the layer follows the optics
    assert not np.array_equal(viewer.layers["cells simulated low-quality"].data, first)
    assert simulated.metadata["cvdm"]["degradation"]["psf_sigma"] == 4.0
    assert OpticsOptions(psf_sigma=4.0).degradation().psf_sigma == 4.0


def test_bad_input_is_refused_before_anything_starts(viewer_and_widget, notifications,
                                                     tmp_path):
    viewer, widget = viewer_and_widget
    output = tmp_path / "never.cvdm.safetensors"
    widget._output.value = output
    assert widget.start() is None  # no layer chosen
    assert "choose one or more high-quality" in notifications["error"][-1]
    lq = viewer.add_image(structure(30, 40), name="lq")
    hq = viewer.add_image(structure(64, 64), name="hq")
    widget.set_data(hq=[hq], lq=[lq])
    assert widget.start() is None
    assert "not an integer multiple" in notifications["error"][-1]
    assert "not an integer multiple" in widget._status.value
    widget.set_data(hq=[hq])
    widget._output.value = tmp_path  # a folder, not a file
    assert widget.start() is None
    assert "is a folder" in notifications["error"][-1]
    widget._source.value = "folders"
    widget._output.value = output
    widget._hq_dir.value = tmp_path / "missing"
    assert widget.start() is None
    assert "choose an existing high-quality folder" in notifications["error"][-1]
    assert not widget.running and widget._run.text == "Run"
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_only_when_it_is_a_model_and_the_box_is_ticked(
        viewer_and_widget, notifications, tmp_path):
    from napari_cvdm import CVDM, CVDMConfig, save_model

    viewer, widget = viewer_and_widget
    widget.set_data(hq=[viewer.add_image(structure(64, 64), name="hq")])
    foreign = tmp_path / "someone_elses.safetensors"
    foreign.write_bytes(b"not a model")
    mine = save_model(CVDM(CVDMConfig.preset("tiny")), tmp_path / "mine.cvdm.safetensors")
    before = mine.read_bytes()
    for output, tick, expected in ((foreign, True, "not a napari-cvdm model"),
                                   (mine, False, "exists; choose a new file name")):
        widget._output.value = output
        widget._overwrite.value = tick
        assert widget.start() is None
        assert expected in notifications["error"][-1]
    widget.set_start(mine)  # fine-tuning a file never replaces it, ticked or not
    widget._output.value = mine
    widget._overwrite.value = True
    assert widget.start() is None
    assert "is the model to fine-tune" in notifications["error"][-1]
    assert foreign.read_bytes() == b"not a model" and mine.read_bytes() == before
    assert not widget.running
    widget.set_start("preset:tiny")
    widget.set_options(**QUICK)
    job = widget.prepare()  # another model, ticked: replaced
    assert job.output == mine


def test_a_short_run_saves_plots_previews_and_offers_the_model(qtbot, viewer_and_widget,
                                                              notifications, tmp_path,
                                                              monkeypatch):
    threads = []  # where the validation callback (and so train()) runs
    real_callback = widget_module.preview_callback

    def recording_callback(*args, **kwargs):
        on_validation = real_callback(*args, **kwargs)

        def record(*a):
            threads.append(threading.get_ident())
            return on_validation(*a)

        return record

    monkeypatch.setattr(widget_module, "preview_callback", recording_callback)
    viewer, widget = viewer_and_widget
    lq, hq = add_pair(viewer)
    original = hq.data.copy()
    output = tmp_path / "mine.cvdm.safetensors"
    widget.set_data(hq=[hq], lq=[lq])
    widget.set_start("preset:tiny")
    widget.set_options(**QUICK)
    widget._output.value = output
    reconstruction_widget = viewer.window.add_plugin_dock_widget(
        "napari-cvdm", "CVDM reconstruction")[1]
    statuses = []
    widget._signals.progressed.connect(lambda *_: statuses.append(widget._status.value))
    assert widget.start() is not None
    assert widget.running and widget._run.text == "Cancel"
    wait_until_idle(qtbot, widget)
    assert "step 8 of 8" in statuses[-1] and "elapsed, about 0:00 left" in statuses[-1]
    assert widget._status.value.startswith("done in")
    assert notifications["error"] == []
    assert "saved to" in notifications["info"][-1] and str(output) in notifications["info"][-1]
    assert load_model(output).config.preset == "tiny"
    assert [step for step, _ in widget.plot.loss] == list(range(1, 9))
    assert [step for step, _ in widget.plot.validation] == [4, 8]
    assert all(np.isfinite(s["psnr"]) for _, s in widget.plot.validation)
    preview = viewer.layers[PREVIEW_NAME]
    assert preview.data.shape == (96, 96)  # the centre region, clipped to this small image
    assert preview.metadata["cvdm"]["step"] == 8
    assert widget._progress.value == 8 and widget._run.text == "Run"
    np.testing.assert_array_equal(hq.data, original)
    assert output.resolve() in model_choices.models()
    offered = [str(choice) for choice in reconstruction_widget._model.choices]
    assert any(str(output.resolve()) in choice for choice in offered), offered
    # the session's one compute thread trained (docs/performance.md, the worker-thread gap)
    assert len(threads) == 2 and set(threads) == {devices.compute_thread_ident()}
    assert threads[0] != threading.get_ident()


def test_cancel_keeps_the_last_checkpoint_and_says_where(qtbot, viewer_and_widget,
                                                         notifications, tmp_path):
    viewer, widget = viewer_and_widget
    lq, hq = add_pair(viewer)
    output = tmp_path / "cancelled.cvdm.safetensors"
    widget.set_data(hq=[hq], lq=[lq])
    widget.set_start("preset:tiny")
    widget.set_options(**{**QUICK, "steps": 5000, "checkpoint_every": 2})
    widget._output.value = output
    widget.start()
    qtbot.waitUntil(lambda: output.is_file(), timeout=TIMEOUT_MS)
    widget._run.native.click()  # Run became Cancel
    wait_until_idle(qtbot, widget)
    assert notifications["error"] == []
    assert "checkpoint" in notifications["info"][-1] and str(output) in notifications["info"][-1]
    assert widget._status.value == "cancelled" and widget._run.text == "Run"
    assert load_model(output).metadata["training"]["step"] >= 2


def test_removing_a_training_layer_cancels_the_run(qtbot, viewer_and_widget, notifications,
                                                   tmp_path):
    viewer, widget = viewer_and_widget
    lq, hq = add_pair(viewer)
    widget.set_data(hq=[hq], lq=[lq])
    widget.set_start("preset:tiny")
    widget.set_options(**{**QUICK, "steps": 5000})
    widget._output.value = tmp_path / "removed.cvdm.safetensors"
    widget.start()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    viewer.layers.remove(lq)
    wait_until_idle(qtbot, widget)
    assert notifications["error"] == []
    assert any("'widefield' was removed" in m for m in notifications["info"])
    assert widget._status.value == "cancelled"


@pytest.mark.parametrize("closing", ["viewer", "dock"])
def test_closing_the_viewer_during_training_stops_it_cleanly(qtbot, make_napari_viewer,
                                                            notifications, tmp_path, closing):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "CVDM training")
    lq, hq = add_pair(viewer)
    widget.set_data(hq=[hq], lq=[lq])
    widget.set_start("preset:tiny")
    widget.set_options(**{**QUICK, "steps": 5000})
    widget._output.value = tmp_path / "closed.cvdm.safetensors"
    worker = widget.start()
    qtbot.waitUntil(lambda: widget._progress.value >= 1, timeout=TIMEOUT_MS)
    finished, errors = [], []
    worker.finished.connect(lambda: finished.append(True))
    worker.errored.connect(errors.append)
    if closing == "viewer":
        viewer.close()
    else:  # the dock's close button: napari keeps the widget alive, out of its dock
        viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: bool(finished), timeout=TIMEOUT_MS)
    assert [type(e) for e in errors] == [Cancelled]  # stopped, not run to the end
    assert widget._closed.is_set() and not widget.running
    assert notifications["error"] == []
    if closing == "dock":  # the viewer is still there: it says what was kept, and where
        assert any(m.startswith("CVDM training:") and "cancelled" in m
                   for m in notifications["info"]), notifications["info"]


def test_a_fine_tune_simulates_its_models_optics_as_the_command_line_does(
        viewer_and_widget, tiny_model, tmp_path):
    """Found in review: the widget fine-tuned the bundled model with its own defaults (one
    PSF width, no out-of-focus light), where `cvdm train --init` and the library use the
    optics the model was trained with; a fine-tune in napari then lost what the model had
    learned about hazy, wider or narrower widefield images."""
    from napari_cvdm import save_model
    from napari_cvdm.checkpoints import recorded_optics
    from napari_cvdm.degradation import Degradation, run_optics
    from napari_cvdm.training_layers import _run_optics

    viewer, widget = viewer_and_widget
    cells = viewer.add_image(structure(96, 96), name="cells")
    bundled = recorded_optics(DEFAULT_MODEL)
    assert widget.optics() == OpticsOptions.of(bundled)
    assert widget._degradation_for_preview() == run_optics(bundled, 2) == \
        _run_optics(DEFAULT_MODEL, load_model(DEFAULT_MODEL).config)
    # a model file trained with other optics: its own, the hidden ones included
    own = Degradation(psf="airy", psf_sigma=(2.0, 2.5), photons=(50.0, 500.0),
                      background=(1.0, 4.0), haze=(0.1, 0.3), haze_sigma=(4.0, 6.0),
                      told_error=0.1)
    tiny_model.metadata["training"] = {"data": {"mode": "simulated",
                                                "degradation": own.to_dict()}}
    path = save_model(tiny_model, tmp_path / "own.cvdm.safetensors")
    widget.set_start(str(path))
    assert widget._optics["haze_max"].value == 0.3 and widget._optics["psf"].value == "airy"
    assert widget._degradation_for_preview() == own
    widget.set_data(hq=[cells])
    widget._output.value = tmp_path / "tuned.cvdm.safetensors"
    assert widget.prepare().degradation == own  # what the job trains with
    # a changed value is the user's; the rest stays the model's
    widget.set_options(psf_sigma_max=3.5)
    assert widget._degradation_for_preview().psf_sigma == (2.0, 3.5)
    assert widget._degradation_for_preview().told_error == 0.1
    # a new model starts from the defaults
    widget.set_start("preset:tiny")
    assert widget._degradation_for_preview() == Degradation()
    # optics beyond the widget's ranges (trained from Python) are brought within them
    wide = Degradation(psf_sigma=(0.05, 2.0), photons=(0.5, 50.0), haze=(0.0, 0.95))
    tiny_model.metadata["training"]["data"]["degradation"] = wide.to_dict()
    path = save_model(tiny_model, tmp_path / "wide.cvdm.safetensors")
    widget.set_start(str(path))
    assert widget._optics["haze_max"].value == 0.9
    assert widget._optics["psf_sigma"].value == 0.1
    assert widget._optics["photons_min"].value == 1.0


def test_the_simulation_follows_the_scale_of_the_starting_point(viewer_and_widget):
    viewer, widget = viewer_and_widget
    cells = viewer.add_image(structure(96, 120), name="cells")
    widget.set_data(hq=[cells])
    widget._show_simulation.value = True
    assert viewer.layers["cells simulated low-quality"].data.shape == (48, 60)  # demo: x2
    assert not widget._optics["scale"].enabled  # fine-tuning keeps the model's scale
    widget.set_options(scale=3)
    widget.set_start("preset:tiny")
    assert widget._optics["scale"].enabled
    assert viewer.layers["cells simulated low-quality"].data.shape == (32, 40)
