"""The "CVDM training" dock widget: layers and options in, train() in a thread, a model out.

The widget computes nothing. :class:`OpticsOptions` and :class:`TrainingOptions` become
keyword arguments of :func:`napari_cvdm.training_layers.prepare_training` (the checks and
data gathering that ``train_on_layers`` uses too); a thread worker has the session's one
compute thread (``devices.compute_thread_run``) run the job with plain
callbacks that emit Qt signals, delivered on the main thread to the plot, the status line
and the preview layer. The finished model is registered so the reconstruction widget
offers it at once.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, \
    PushButton, Select
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from . import devices, model_choices
from ._closing import disconnect, when_closed
from ._training_plot import TrainingPlot, clock
from ._training_options import OpticsOptions, TrainingOptions, make_widgets
from ._workers import ReleasingWorker
from .degradation import Degradation
from .errors import Cancelled, is_out_of_memory
from .model_files import BUNDLED
from .layers import unwrap
from .model.config import PRESETS
from .training_layers import prepare_folder_training, prepare_training, start_model
from .training_preview import preview_callback, preview_input, preview_layer_kwargs, \
    preview_region, simulated_layer_data, update_image

if TYPE_CHECKING:
    import napari

HQ, PAIRS, FOLDERS = "hq", "pairs", "folders"
CENTRE = "centre"
NO_MODEL_FILE = "no model file chosen"  # what a fine-tune of an unchosen file names


class _Signals(QObject):
    # Emitted from the worker thread; Qt delivers them on the main thread.
    progressed = Signal(int, int, object)
    validated = Signal(int, object, object)
    logged = Signal(str)


class TrainingWidget(Container):
    """Dock widget: train or fine-tune CVDM on image layers, watch it learn, keep the model."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = viewer = napari_viewer
        self._worker = self._job = self._cancel = self._preview_target = None
        self._recorded = None   # the optics the model to fine-tune was trained with
        self._filling = False   # the optics widgets are being set together
        self._started = 0.0
        self._signals = _Signals()
        self._signals.progressed.connect(self._on_progress)
        self._signals.validated.connect(self._on_validated)
        self._signals.logged.connect(self._on_log)

        self._source = ComboBox(label="data", value=HQ, choices=[
            ("high-quality layers + simulated optics", HQ), ("low/high-quality layer pairs", PAIRS),
            ("folders of TIFF files", FOLDERS)])
        self._hq = Select(label="high-quality", choices=self._image_layers)
        self._lq = Select(label="low-quality", choices=self._image_layers)
        self._pairing = Label(label="")
        self._hq_dir = FileEdit(label="high-quality folder", mode="d")
        self._lq_dir = FileEdit(label="low-quality folder", mode="d",
                                tooltip="leave empty to simulate the optics")
        self._optics = make_widgets(OpticsOptions)
        self._show_simulation = CheckBox(text="show the simulated low-quality image")
        start_choices = [(f"fine-tune the bundled {name} model", name) for name in BUNDLED]
        start_choices += [("fine-tune a model file", "file")]
        start_choices += [(f"from scratch: preset {name}", f"preset:{name}") for name in PRESETS]
        self._start = ComboBox(label="start from", choices=start_choices)
        self._init_file = FileEdit(label="model file", mode="r",
                                   filter="CVDM models (*.cvdm.safetensors *.safetensors)")
        self._options = make_widgets(TrainingOptions)
        self._output = FileEdit(label="save model to", mode="w",
                                filter="CVDM models (*.cvdm.safetensors)")
        self._overwrite = CheckBox(text="replace an existing model file",
                                   tooltip="only a napari-cvdm model file is ever replaced, "
                                   "never the model you fine-tune")
        self._region = ComboBox(label="preview region", choices=self._region_choices)
        self._run = PushButton(text="Run")
        self._progress = ProgressBar(value=0, min=0, max=1, label="")
        self._status = Label(label="")
        self.plot = TrainingPlot()
        self.extend([self._source, self._hq, self._lq, self._pairing, self._hq_dir,
                     self._lq_dir, *self._optics.values(),
                     self._show_simulation, self._start, self._init_file,
                     *self._options.values(), self._output, self._overwrite, self._region,
                     self._run, self._progress, self._status, self.plot])

        self._source.changed.connect(self._on_source_changed)
        self._start.changed.connect(self._on_start_changed)
        self._init_file.changed.connect(self._on_start_changed)
        for widget in (self._hq, self._lq):
            widget.changed.connect(self._on_data_changed)
        for widget in (*self._optics.values(), self._show_simulation):
            widget.changed.connect(self.update_simulation)
        self._run.changed.connect(self._on_run_clicked)
        layers = viewer.layers
        layers.events.inserted.connect(self.reset_choices)
        layers.events.removed.connect(self.reset_choices)
        layers.events.removed.connect(self._on_layer_removed)
        self._closed = threading.Event()
        self._viewer_gone = threading.Event()  # deleted with the viewer, not just undocked
        when_closed(self.native, self._on_closed)
        self._on_source_changed()
        self._on_start_changed()

    def _on_closed(self, viewer_gone: bool) -> None:
        """The viewer closed, or the dock's close button: stop a running training (it keeps
        its last checkpoint, as a cancel does) and stop following the viewer."""
        if viewer_gone:
            self._viewer_gone.set()
        self._closed.set()
        layers = self._viewer.layers
        disconnect(layers.events.inserted, self.reset_choices)
        disconnect(layers.events.removed, self.reset_choices, self._on_layer_removed)

    # -- inputs ----------------------------------------------------------------------------
    def _image_layers(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, unwrap(layer)) for layer in self._viewer.layers
                if isinstance(layer, Image) and "cvdm" not in layer.metadata]

    def _region_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [("centre 64 x 64 (low-quality pixels)", CENTRE)] + [
            (f"first rectangle of {layer.name!r}", unwrap(layer))
            for layer in self._viewer.layers if isinstance(layer, Shapes)]

    def _on_source_changed(self) -> None:
        source = self._source.value
        self._hq.visible = source != FOLDERS
        self._lq.visible = self._pairing.visible = source == PAIRS
        self._hq_dir.visible = self._lq_dir.visible = source == FOLDERS
        for widget in self._optics.values():
            widget.visible = source != PAIRS
        self._show_simulation.visible = source == HQ
        self._on_data_changed()

    def _on_start_changed(self) -> None:
        self._init_file.visible = self._start.value == "file"
        self._optics["scale"].enabled = str(self._start.value).startswith("preset:")
        self._follow_recorded_optics()
        self.update_simulation()  # the scale follows the model to fine-tune

    def _follow_recorded_optics(self) -> None:
        """A fine-tune simulates what its model was trained with, as ``cvdm train --init``
        and ``prepare_training(init=...)`` do when given no optics: choosing the model fills
        in its recorded optics (which the user may then change); a new model, the defaults.
        A model with no record (trained on pairs, a foreign file) leaves the values as they
        are."""
        from .checkpoints import recorded_optics

        start = str(self._start.value)
        if start.startswith("preset:"):
            self._recorded = None
            values = OpticsOptions(scale=self._optics["scale"].value)
        else:
            source = self._init_source()
            self._recorded = recorded_optics(source) if source != NO_MODEL_FILE else None
            if self._recorded is None:
                return
            values = OpticsOptions.of(self._recorded)
        self._filling = True  # one simulation update for all of them, not one per value
        try:
            for name, widget in self._optics.items():
                if name != "scale":  # the scale follows the starting point (below)
                    widget.value = getattr(values, name)
        finally:
            self._filling = False

    def _on_data_changed(self) -> None:
        if self._source.value == PAIRS:
            pairs = self.pairs()
            self._pairing.value = "; ".join(f"{lq.name} → {hq.name}" for lq, hq in pairs) \
                or "choose the same number of low- and high-quality layers"
        self.update_simulation()

    def pairs(self) -> list[tuple[Image, Image]]:
        """Low- and high-quality layers paired in layer-list order."""
        order = {id(unwrap(layer)): i for i, layer in enumerate(self._viewer.layers)}
        lq = sorted(self._lq.value, key=lambda layer: order.get(id(layer), 0))
        hq = sorted(self._hq.value, key=lambda layer: order.get(id(layer), 0))
        return list(zip(lq, hq)) if len(lq) == len(hq) else []

    def set_data(self, hq=(), lq=()) -> None:
        """Choose the training layers: ``hq`` alone (simulated optics) or with ``lq`` (pairs)."""
        self._source.value = PAIRS if lq else HQ
        self.reset_choices()
        self._lq.value = list(lq)
        self._hq.value = list(hq)

    def set_start(self, source: str) -> None:
        """A bundled model name, ``"preset:NAME"`` or a model file to fine-tune."""
        if source in BUNDLED or str(source).startswith("preset:"):
            self._start.value = source
        else:
            self._init_file.value = source
            self._start.value = "file"

    def set_options(self, **values: Any) -> None:
        """Set options by name, as in :class:`OpticsOptions` and :class:`TrainingOptions`."""
        for name, value in values.items():
            target = self._optics if name in self._optics else self._options
            target[name].value = value

    def options(self) -> TrainingOptions:
        return TrainingOptions(**{name: w.value for name, w in self._options.items()})

    def optics(self) -> OpticsOptions:
        return OpticsOptions(**{name: w.value for name, w in self._optics.items()})

    def update_simulation(self) -> None:
        """Show (or update) the simulated low-quality version of the first HQ layer."""
        if self._filling or not self._show_simulation.value or self._source.value != HQ or not self._hq.value:
            return
        layer = self._hq.value[0]
        try:
            data, kwargs, _ = simulated_layer_data(layer, self._degradation_for_preview())
        except ValueError as exc:
            self._status.value = f"⚠ {exc}"
            return
        update_image(self._viewer, data, kwargs)

    def _degradation_for_preview(self) -> Degradation:
        optics = self.optics()
        start = str(self._start.value)
        if not start.startswith("preset:"):
            try:
                optics.scale = start_model(self._init_source())[0].scale
            except ValueError:
                pass
        return optics.degradation(self._recorded)

    def _init_source(self):
        start = str(self._start.value)
        if start == "file":
            value = str(self._init_file.value).strip()
            return self._init_file.value if value and value != "." else NO_MODEL_FILE
        return None if start.startswith("preset:") else start

    # -- running ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _on_run_clicked(self) -> None:
        self.cancel() if self.running else self.start()

    def prepare(self):
        """The checked training job from the widget's state; ValueError says what is wrong."""
        start = str(self._start.value)
        init = self._init_source()
        preset = start.removeprefix("preset:") if start.startswith("preset:") else None
        options = self.options()
        kwargs = {"output": self._output.value, "init": init, "preset": preset,
                  "overwrite": self._overwrite.value, **options.settings()}
        if self._source.value == FOLDERS:
            lq_dir = str(self._lq_dir.value).strip()
            return prepare_folder_training(
                self._hq_dir.value, self._lq_dir.value if lq_dir not in ("", ".") else None,
                degradation=self._degradation_for_preview(), **kwargs)
        if self._source.value == HQ:
            if not self._hq.value:
                raise ValueError("choose one or more high-quality image layers")
            return prepare_training(self._viewer, hq=list(self._hq.value),
                                    degradation=self._degradation_for_preview(), **kwargs)
        pairs = self.pairs()
        if not pairs:
            raise ValueError("choose the same number (one or more) of low- and high-quality "
                             "layers; they are paired in layer-list order")
        return prepare_training(self._viewer, pairs=pairs, **kwargs)

    def start(self):
        """Check everything, then start training in a thread; None (and a message) if not."""
        if self.running:
            return None
        try:
            job = self.prepare()
            region = self._preview_setup(job)
        except ValueError as exc:
            self._status.value = f"⚠ {exc}"
            show_error(f"CVDM training: {exc}")
            return None
        for note in job.notes:
            show_info(f"CVDM training: {note}")
        cancel = self._cancel = threading.Event()
        closed, device = self._closed, self.options().device
        # The worker waits while the session's one compute thread trains (the same OpenMP
        # thread team as the reconstruction widget's runs; devices.compute_thread_run). The
        # callbacks below are called there: they emit Qt signals or read threading.Events.
        runner = ReleasingWorker(devices.compute_thread_run, job.run, device=device,
                                 progress=self._signals.progressed.emit,
                                 log=self._signals.logged.emit,
                                 cancel=lambda: cancel.is_set() or closed.is_set(),
                                 on_validation=preview_callback(
                                     region and region[0], device,
                                     self._signals.validated.emit))
        worker = runner.worker
        runner.connect(worker.returned, lambda _model: self._on_returned(job))
        runner.connect(worker.errored, self._on_errored)
        runner.connect(worker.finished, self._on_finished)
        self._worker, self._job, self._preview_target = worker, job, region
        self.plot.clear()
        self._run.text = "Cancel"
        self._progress.max, self._progress.value = job.settings.steps, 0
        self._status.value = f"{job.start}: starting…"
        self._started = time.perf_counter()
        runner.start()
        return worker

    def _preview_setup(self, job):
        if not job.layers:  # folders: nothing on screen to preview
            return None
        hq_layer = job.layers[1] if job.pairs is not None else job.layers[0]
        shapes = self._region.value if self._region.value != CENTRE else None
        region = preview_region(hq_layer, job.scale, shapes)
        return preview_input(job, region, seed=job.settings.seed), hq_layer, region

    def cancel(self) -> None:
        """Stop training after the current step; the last complete checkpoint is kept."""
        if self._cancel is not None:
            self._cancel.set()
            self._status.value = "cancelling…"
            self._run.enabled = False

    def _on_progress(self, step: int, total: int, terms: dict) -> None:
        if not self.running or self._closed.is_set():
            return
        self._progress.max, self._progress.value = total, step
        self.plot.add_loss(step, float(terms.get("total", float("nan"))))
        elapsed = time.perf_counter() - self._started
        left = elapsed / max(step, 1) * (total - step)
        self._status.value = (f"step {step} of {total} · loss {terms.get('total', 0):.4g} · "
                              f"{clock(elapsed)} elapsed, about {clock(left)} left")

    def _on_validated(self, step: int, scores: dict, mean) -> None:
        if not self.running or self._closed.is_set():
            return
        self.plot.add_validation(step, scores)
        if isinstance(mean, str):
            self._status.value = f"⚠ preview failed: {mean}"
            return
        _, hq_layer, region = self._preview_target or (None, None, None)
        if mean is not None and hq_layer in self._viewer.layers:
            kwargs = preview_layer_kwargs(hq_layer, region)
            kwargs["metadata"]["cvdm"].update(step=step, psnr=scores.get("psnr"))
            update_image(self._viewer, mean, kwargs)

    def _on_log(self, message: str) -> None:
        if not self._closed.is_set():
            self._status.tooltip = message

    def _on_returned(self, job) -> None:
        if self._viewer_gone.is_set():
            return
        model_choices.register(job.output)  # finished as its panel closed: still offered
        if self._closed.is_set():
            show_info(f"CVDM training finished; the model is saved to {job.output}")
            return
        self.plot.flush()
        self._status.value = f"done in {clock(time.perf_counter() - self._started)}: " \
                             f"saved {job.output.name}"
        show_info(f"CVDM training finished; the model is saved to {job.output} and listed "
                  "in the CVDM reconstruction widget")

    def _on_errored(self, exc: Exception) -> None:
        if self._viewer_gone.is_set():
            return
        if self._closed.is_set():  # its panel closed: say where the checkpoint is
            if isinstance(exc, Cancelled):
                show_info(f"CVDM training: {exc}")
            return
        self._progress.value = 0
        if isinstance(exc, Cancelled):
            self._status.value = "cancelled"
            show_info(f"CVDM training: {exc}")
        elif is_out_of_memory(exc):
            self._status.value = "out of memory"
            show_error(f"CVDM training ran out of memory: lower the batch size or the patch "
                       f"size, or choose another device ({exc})")
        else:
            self._status.value = "failed"
            show_error(f"CVDM training failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = self._job = self._cancel = None
        if not self._closed.is_set():
            self._run.text = "Run"
            self._run.enabled = True

    def _on_layer_removed(self, event) -> None:
        removed = unwrap(event.value)
        if self.running and any(removed is layer for layer in self._job.layers):
            show_info(f"CVDM training: {removed.name!r} was removed, cancelling")
            self.cancel()

