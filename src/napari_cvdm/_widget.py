"""The "CVDM reconstruction" dock widget: options in, predict() in a thread, layers out.

The widget computes nothing: :class:`ReconstructionOptions` becomes predict() keyword
arguments, a napari thread worker has predict() run in the session's one compute thread
(``devices.compute_thread_run``) with a progress callback (a Qt signal, delivered on the
main thread) and a cancel event, and the result goes through
:func:`napari_cvdm.layers.show_result`, the same code path as scripted sessions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from . import devices, model_choices
from ._closing import disconnect, when_closed
from ._workers import ReleasingWorker
from ._reconstruction_options import (
    AUTO,
    ReconstructionOptions,
    control,
    load_options,
    save_options,
)
from .errors import Cancelled, OutOfMemory, is_out_of_memory
from .inference import predict
from .layers import (
    SHOW,
    _as_dask,
    check_layer,
    check_output_room,
    input_of,
    input_warnings,
    is_lazy,
    keep_warnings,
    layer_image,
    model_scale,
    model_summary,
    output_summary,
    region_crop,
    show_result,
    start_lazy_output,
    unwrap,
)
from .lazy_prediction import is_dask
from .model_files import BUNDLED, resolve_model
from .settings import DEFAULT_MODEL, PredictSettings

if TYPE_CHECKING:
    import napari

DEMO = DEFAULT_MODEL
FILE = "file"
WHOLE = "whole"  # the region choice for the whole image
def _predict(data, load_model, kwargs, progress, cancel):
    """The worker's job (a plain function: napari names the task after its repr).

    The napari worker only waits: the model is loaded and predict() runs in the session's
    one compute thread (:func:`devices.compute_thread_run`), so that every run uses the same
    OpenMP thread team (a new thread per run costs 1.46x on a 2-core CPU; docs/performance.md,
    "The worker-thread gap"). ``progress`` and ``cancel`` are called from that thread: the
    first emits a Qt signal, the second reads threading.Events.
    """
    return devices.compute_thread_run(_predict_here, data, load_model, kwargs, progress, cancel)


def _compute_and_check(out, checks) -> list[str]:
    """A lazy run's job in the compute thread: write the result into its store, then the
    input checks (they read a crop of a large image: not on the main thread). ``checks``:
    a call giving their messages, or None."""
    out.compute()
    if checks is None:
        return []
    try:
        return checks()
    except Exception as exc:  # the result is written: a failed check must not undo it
        return [f"the input could not be checked for what would make the result "
                f"untrustworthy ({type(exc).__name__}: {exc})"]


def _notify(messages) -> None:
    """A napari warning notification for each reason a result may not be trustworthy."""
    for message in messages or ():
        show_warning(f"CVDM: {message}")


def _predict_here(data, load_model, kwargs, progress, cancel):
    model, provenance = load_model()
    # the widget says why a result may not be trusted itself, with the layer's pixel size
    return (predict(data, model, progress=progress, cancel=cancel, check_input=False, **kwargs),
            provenance, model)


class _Signals(QObject):
    # Emitted from the worker thread; Qt delivers it on the main thread.
    progressed = Signal(int, int)


class ReconstructionWidget(Container):
    """Dock widget: pick an image layer and a model, run CVDM, get mean and uncertainty.

    Runs predict() in a worker thread; everything else (layers, controls) happens on the
    main thread. A script may call run_on_layer() meanwhile, even with the same model: a
    prediction never modifies its model. The options are remembered between sessions.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = viewer = napari_viewer
        self._worker = None
        self._running_layer = None
        self._cancel: threading.Event | None = None
        self._started = 0.0
        self._model_cache: tuple[Any, Any, dict] | None = None
        self._signals = _Signals()
        self._signals.progressed.connect(self._on_progress)

        self._image = ComboBox(label="image", choices=self._image_layers)
        self._region = ComboBox(label="region", choices=self._region_choices)
        self._region.tooltip = ("the whole image, or only the pixels under the first "
                                "rectangle of a shapes layer")
        self._model = ComboBox(label="model", value=DEMO, choices=self._model_choices)
        self._model_file = FileEdit(label="model file", mode="r",
                                    filter="CVDM models (*.cvdm.safetensors *.safetensors *.zip)")
        self._model_info = Label(label="")
        self._options = {f.name: control(f) for f in fields(PredictSettings)
                         if f.name != "model"}
        self._options["show"] = create_widget(
            value=SHOW[0], name="show", label="uncertainty as", widget_type="RadioButtons",
            options={"choices": list(SHOW), "orientation": "horizontal"})
        self._advanced = CheckBox(value=False, text="advanced options")
        self._reset = PushButton(text="Reset to defaults")
        self._run = PushButton(text="Run")
        self._store = FileEdit(label="zarr store", mode="w",
                               filter="OME-Zarr (*.ome.zarr *.zarr)")
        self._store.tooltip = ("large (dask, zarr or multiscale) images are written here "
                               "chunk by chunk; empty: a temporary folder")
        self._output = Label(label="")
        self._progress = ProgressBar(value=0, min=0, max=1, label="")
        self._status = Label(label="")
        self._lazy = None  # the LazyOutput being computed
        self.extend([self._image, self._region, self._model, self._model_file, self._model_info,
                     *self._options.values(), self._advanced, self._reset, self._store,
                     self._output, self._run, self._progress, self._status])

        self._model_file.visible = False
        self._show_advanced(False)
        self._load_options()
        self._model.changed.connect(self._on_model_changed)
        self._model_file.changed.connect(self._update_model_info)
        self._advanced.changed.connect(self._show_advanced)
        self._reset.changed.connect(self.reset_options)
        for option in self._options.values():
            option.changed.connect(self._save_options)
        self._run.changed.connect(self._on_run_clicked)
        self._image.changed.connect(self._update_output_info)
        self._region.changed.connect(self._update_output_info)
        self._store.changed.connect(self._update_output_info)
        layers = viewer.layers
        layers.events.inserted.connect(self.reset_choices)
        layers.events.removed.connect(self.reset_choices)
        layers.events.removed.connect(self._on_layer_removed)
        layers.selection.events.active.connect(self._follow_active_layer)
        model_choices.subscribe(self._on_models_registered)
        self._closed = threading.Event()
        self._viewer_gone = threading.Event()  # deleted with the viewer, not just undocked
        when_closed(self.native, self._on_closed)
        self._follow_active_layer()
        self._update_model_info()
        self._update_output_info()

    def _on_closed(self, viewer_gone: bool) -> None:
        """The viewer closed, or the dock's close button: stop a running job (it adds no
        layers), forget the loaded model, and stop following the viewer."""
        if viewer_gone:
            self._viewer_gone.set()
        self._closed.set()
        model_choices.unsubscribe(self._on_models_registered)
        self._model_cache = None
        layers = self._viewer.layers
        disconnect(layers.events.inserted, self.reset_choices)
        disconnect(layers.events.removed, self.reset_choices, self._on_layer_removed)
        disconnect(layers.selection.events.active, self._follow_active_layer)

    # -- inputs --------------------------------------------------------------------------
    def _image_layers(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, unwrap(layer)) for layer in self._viewer.layers
                if isinstance(layer, Image)]

    def _region_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [("whole image", WHOLE)] + [
            (f"rectangle of {layer.name}", unwrap(layer)) for layer in self._viewer.layers
            if isinstance(layer, Shapes)]

    def set_region(self, shapes=None) -> None:
        """Reconstruct the whole image (None) or the first rectangle of a shapes layer."""
        self._region.reset_choices()
        self._region.value = WHOLE if shapes is None else unwrap(shapes)

    def region(self):
        """The shapes layer whose first rectangle is reconstructed; None: the whole image."""
        value = self._region.value
        return None if isinstance(value, str) else value

    def _follow_active_layer(self, event=None) -> None:
        active = unwrap(self._viewer.layers.selection.active)
        # Outputs become active when added; keep the input chosen for the next run.
        if isinstance(active, Image) and "cvdm" not in active.metadata:
            self._image.reset_choices()
            self._image.value = active

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        """The bundled model, the models trained in this session, any model file."""
        trained = [(f"trained here: {p.name} ({p})", str(p)) for p in model_choices.models()]
        bundled = [DEMO, *(name for name in BUNDLED if name != DEMO)]  # the default first
        return [*((f"bundled model ({name})", name) for name in bundled), *trained,
                ("model file", FILE)]

    def _on_models_registered(self, _models=None) -> None:
        self._model.reset_choices()

    def _on_model_changed(self) -> None:
        self._model_file.visible = self._model.value == FILE
        self._update_model_info()

    def model_source(self) -> str | Path:
        """A bundled model's name, a trained model or the chosen model file; ValueError when
        no file."""
        if self._model.value in BUNDLED:
            return self._model.value
        if self._model.value != FILE:
            return Path(self._model.value)
        path = Path(self._model_file.value)
        if not str(self._model_file.value).strip() or path.is_dir():
            raise ValueError("choose a model file (.cvdm.safetensors) first")
        return path

    def _update_model_info(self) -> None:
        try:
            self._model_info.value = model_summary(self.model_source())
        except ValueError as exc:
            self._model_info.value = f"⚠ {exc}"
        self._update_output_info()

    def store(self) -> Path | None:
        """The OME-Zarr folder chosen for lazy outputs; None: a temporary folder."""
        value = str(self._store.value).strip()
        return None if value in ("", ".") else Path(value)

    def _update_output_info(self, _event=None) -> None:
        """The output's size and destination, e.g. "output: 2 x 8192 x 8192, 512.0 MiB to
        memory"; the store field only for lazy (dask, zarr, multiscale) layers."""
        if not hasattr(self, "_output"):
            return
        layer = self._image.value
        self._store.visible = layer is not None and is_lazy(layer)
        try:
            if layer is None:
                raise ValueError("")
            if getattr(layer, "rgb", False):
                self._output.value = "RGB: split it first (right-click the layer > Split RGB)"
                return
            crop = region_crop(layer, self.region())
            self._output.value = output_summary(layer, model_scale(self.model_source()),
                                                self.store(), crop)
        except (ValueError, OSError, KeyError, TypeError):
            self._output.value = ""

    def use_model(self, source: str | Path) -> None:
        """Choose a bundled model by name (``"widefield-x2"``, ``"demo"``) or a model file."""
        if isinstance(source, str) and source in BUNDLED:
            self._model.value = source
        else:
            self._model_file.value = Path(source)
            self._model.value = FILE

    # -- options ---------------------------------------------------------------------------
    def _show_advanced(self, visible: bool) -> None:
        for f in fields(PredictSettings):
            if f.metadata.get("advanced"):
                self._options[f.name].visible = bool(visible)

    def set_options(self, **values: Any) -> None:
        """Set options by name, as the fields of :class:`PredictSettings` (and ``show``);
        None means automatic."""
        for name, value in values.items():
            self._options[name].value = AUTO[name] if value is None and name in AUTO else value

    def options(self) -> ReconstructionOptions:
        """The options as they are now; ValueError (naming the option) if one is invalid."""
        values = {name: w.value for name, w in self._options.items() if name != "show"}
        values = {k: None if k in AUTO and v == AUTO[k] else v for k, v in values.items()}
        return ReconstructionOptions(PredictSettings(**values), self._options["show"].value)

    def reset_options(self) -> None:
        """Every option back to its default (PredictSettings), and remembered so."""
        defaults = {k: v for k, v in PredictSettings.defaults().items() if k in self._options}
        self.set_options(**defaults, show=SHOW[0])

    def _save_options(self) -> None:
        save_options({name: w.value for name, w in self._options.items()})

    def _load_options(self) -> None:
        for name, value in load_options().items():
            if name in self._options:
                try:
                    self._options[name].value = value
                except (ValueError, TypeError):
                    pass  # a value the control cannot show (a seed beyond its range): default

    # -- running ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _on_run_clicked(self) -> None:
        if self.running:
            self.cancel()
        else:
            self.start()

    def start(self):
        """Start a prediction in a thread and return its worker; None if it cannot start."""
        if self.running:
            return None
        layer = self._image.value
        try:
            check_layer(layer)
            source = self.model_source()
            options = self.options()
            store = self.store() if is_lazy(layer) else None
            crop = region_crop(layer, self.region())
            check_output_room(layer, model_scale(source), store, crop)
        except ValueError as exc:
            self._status.value = "not started: see the message"  # not the last run's "done"
            show_error(str(exc))
            return None
        data = layer_image(layer, crop) if crop is not None else layer.data
        if is_lazy(layer):
            data = _as_dask(layer_image(layer, crop))
        cancel = self._cancel = threading.Event()
        closed = self._closed
        job = ReleasingWorker(_predict, data, partial(self._load_model, source),
                              options.predict_kwargs(), self._signals.progressed.emit,
                              lambda: cancel.is_set() or closed.is_set())
        worker = job.worker
        job.connect(worker.returned, lambda out: self._on_returned(
            layer, options, cancel, *out, store=store, crop=crop))
        job.connect(worker.errored, self._on_errored)
        job.connect(worker.finished, partial(self._on_finished, worker))
        self._worker, self._running_layer = worker, layer
        layer.events.data.connect(self._on_input_data_changed)
        self._run.text = "Cancel"
        self._progress.value = 0
        self._status.value = "loading the model and planning the tiles…"
        self._started = time.perf_counter()
        job.start()
        return worker

    def cancel(self) -> None:
        """Ask the running prediction to stop; it ends within one denoising step."""
        if self._cancel is not None:
            self._cancel.set()
            self._status.value = "cancelling…"
            self._run.enabled = False

    def _load_model(self, source):
        # Called in the worker thread; the last model stays loaded until its file changes.
        path = Path(source)
        key = (str(source), path.stat().st_mtime if path.is_file() else None)
        if self._model_cache is None or self._model_cache[0] != key:
            self._model_cache = (key, *resolve_model(source))
        return self._model_cache[1:]

    def _on_progress(self, done: int, total: int) -> None:
        if not self.running or self._closed.is_set():
            return
        self._progress.max = total
        self._progress.value = done
        elapsed = time.perf_counter() - self._started
        left = elapsed / max(done, 1) * (total - done)
        self._status.value = f"step {done} of {total}, about {left:.0f} s left"
        if self._lazy is not None:
            self._lazy.refresh()  # at most every second: the layers fill in as chunks finish

    def _on_returned(self, layer, options, cancel, result, provenance, model=None,
                     store=None, crop=None) -> None:
        if self._closed.is_set():
            return
        if cancel.is_set():  # pressed as the work ended: the result is dropped, and said so
            self._on_errored(Cancelled("prediction cancelled"))
            return
        if layer not in self._viewer.layers:
            return
        if is_dask(result.mean):
            self._start_lazy(layer, options, cancel, result, provenance, store, crop, model)
            return
        try:
            shown = show_result(self._viewer, layer, result, options.show, provenance, crop)
            keep_warnings(shown, self._warn_about_input(layer, model, options, crop))
        except (ValueError, RuntimeError) as exc:
            show_error(f"CVDM: could not show the result: {exc}")
            self._status.value = "failed: could not show the result"
            return
        self._status.value = f"done in {result.seconds:.1f} s on {result.device}"

    @staticmethod
    def _warn_about_input(layer, model, options, crop) -> list[str]:
        """Notify each reason why the result on ``layer`` may not be trustworthy; return
        them."""
        if model is None:
            return []
        messages = input_warnings(layer, model, options.settings.psf_sigma, crop,
                                  options.settings.samples)
        _notify(messages)
        return messages

    def _start_lazy(self, layer, options, cancel, result, provenance, store,
                    crop=None, model=None) -> None:
        """Add the zarr-backed layers, then compute the lazy result into them in a thread."""
        try:
            out = start_lazy_output(self._viewer, layer, result, options.show, provenance,
                                    store, overwrite=store is not None, crop=crop)
        except Exception as exc:  # zarr's own errors too: the run ends here, visibly
            show_error(f"CVDM: could not create the zarr store: {exc}")
            self._status.value = "failed: could not create the zarr store"
            return
        self._lazy = out
        checks = None
        if model is not None:  # the layer is read here; the checks run in the compute thread
            from .domain import input_warnings as warnings_for

            image, sizes, units = input_of(layer, crop)
            checks = partial(warnings_for, image, model, sizes, units,
                             options.settings.psf_sigma, options.settings.samples)
        job = ReleasingWorker(devices.compute_thread_run, _compute_and_check, out, checks)
        worker = job.worker
        job.connect(worker.returned, lambda messages: self._on_lazy_done(out, cancel, messages))
        job.connect(worker.errored, lambda exc: self._on_lazy_failed(out, exc))
        job.connect(worker.finished, partial(self._on_finished, worker))
        self._worker = worker
        self._status.value = f"writing {out.path}…"
        job.start()

    def _on_lazy_done(self, out, cancel, messages=()) -> None:
        self._lazy = None
        if self._viewer_gone.is_set():
            return  # the store is complete; nothing is left to show it in
        if cancel.is_set() or self._closed.is_set():
            out.abort()
            if not self._closed.is_set():  # pressed as the writing ended: said, not silent
                self._on_errored(Cancelled("prediction cancelled"))
            return
        try:
            shown = out.finish()
        except (ValueError, RuntimeError, OSError) as exc:
            show_error(f"CVDM: could not show the result: {exc}")
            self._status.value = "failed: could not show the result"
            return
        elapsed = time.perf_counter() - self._started
        if out.superseded:  # its layers deleted, or a later run's (a script's) meanwhile
            kept = "its temporary store was removed" if out.discarded else \
                f"it stays in {out.path}"
            where = "its layers were deleted" if out.removed else \
                "the layers show a later run's result"
            self._status.value = f"done in {elapsed:.1f} s, but {where}; {kept}"
            show_info(f"CVDM: {self._status.value}")
            return
        _notify(messages)
        keep_warnings(shown, messages)
        self._status.value = f"done in {elapsed:.1f} s, written to {out.path}"

    def _on_lazy_failed(self, out, exc: Exception) -> None:
        self._lazy = None
        if self._viewer_gone.is_set():
            out.discard_store()  # the viewer closed mid-run: no half-written store remains
        else:  # its panel closed, or a failure: the viewer shows what it showed before
            out.abort()
        self._on_errored(exc)

    def _on_errored(self, exc: Exception) -> None:
        if self._closed.is_set():
            return
        if isinstance(exc, Cancelled):
            self._status.value = "cancelled"
            self._progress.value = 0
            show_info("CVDM reconstruction cancelled")
        elif isinstance(exc, OutOfMemory) or is_out_of_memory(exc):
            self._status.value = "out of memory"
            where = f" on {exc.device}" if isinstance(exc, OutOfMemory) else ""
            show_error(f"CVDM ran out of memory{where}: lower the tile size or the batch size "
                       "(advanced options), use fewer samples, or choose the cpu device")
        else:
            self._status.value = "failed"
            show_error(f"CVDM reconstruction failed: {exc}")

    def _on_finished(self, worker=None) -> None:
        if worker is not None and worker is not self._worker:
            return  # the prediction handed over to the worker that writes its zarr store
        if self._running_layer is not None:
            self._running_layer.events.data.disconnect(self._on_input_data_changed)
        self._worker = self._cancel = self._running_layer = None
        if not self._closed.is_set():
            self._run.text = "Run"
            self._run.enabled = True

    def _on_input_data_changed(self, _event=None) -> None:
        """New data in the layer being reconstructed: the result would belong to the old
        data, so the run stops (and says why) instead of showing it over the new."""
        if self.running and self._cancel is not None and not self._cancel.is_set():
            show_info(f"CVDM: the data of {self._running_layer.name!r} changed during the "
                      "run, so it was cancelled; run again on the new data")
            self.cancel()

    def _on_layer_removed(self, event) -> None:
        if self.running and unwrap(event.value) is unwrap(self._running_layer):
            self.cancel()
