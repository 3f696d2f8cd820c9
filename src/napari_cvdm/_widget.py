"""The "CVDM reconstruction" dock widget: options in, predict() in a thread, layers out.

The widget computes nothing: :class:`ReconstructionOptions` becomes predict() keyword
arguments, a napari thread worker runs predict() with a progress callback (a Qt signal,
delivered on the main thread) and a cancel event, and the result goes through
:func:`napari_cvdm.layers.show_result`, the same code path as scripted sessions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, \
    create_widget
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from .devices import available_devices
from .errors import Cancelled
from .inference import predict
from .layers import SHOW, _unwrap, check_layer, model_summary, resolve_model, show_result

if TYPE_CHECKING:
    import napari

DEMO = "demo"
FILE = "file"


@dataclass
class ReconstructionOptions:
    """What the widget asks for. The defaults are for a quick first look on a CPU; more
    samples give a smoother uncertainty map, more steps a finer reconstruction."""

    samples: int = 4
    steps: int = 10
    eta: float = 0.0  # deterministic DDIM steps: at least as good as eta = 1 at few steps
    seed: int = 0  # 0: a new random seed each run (the seed used is in the layer metadata)
    tile_size: int = 0  # 0: chosen from the device and its free memory
    device: str = "auto"
    show: str = "variance"

    def predict_kwargs(self) -> dict[str, Any]:
        return {"samples": self.samples, "steps": self.steps, "eta": self.eta,
                "seed": self.seed or None, "tile_size": self.tile_size or None,
                "device": self.device}

    @staticmethod
    def widget_options() -> dict[str, dict[str, Any]]:
        """How each option shows itself in magicgui."""
        return {
            "samples": {"min": 1, "max": 1000,
                        "tooltip": "samples drawn per pixel: the mean and the uncertainty "
                                   "are taken over them"},
            "steps": {"min": 1, "max": 1000,
                      "tooltip": "denoising steps per sample: more is slower and finer"},
            "eta": {"min": 0.0, "max": 1.0, "step": 0.1,
                    "tooltip": "0: deterministic steps (DDIM), 1: ancestral (DDPM)"},
            "seed": {"label": "seed (0 = random)", "min": 0, "max": 2**31 - 1},
            "tile_size": {"label": "tile size (0 = auto)", "min": 0, "max": 4096, "step": 64,
                          "tooltip": "output pixels per tile side; lower it if memory runs out"},
            "device": {"widget_type": "ComboBox",
                       "choices": ["auto", *available_devices()]},
            "show": {"label": "uncertainty as", "widget_type": "RadioButtons",
                     "choices": list(SHOW), "orientation": "horizontal"},
        }


def _predict(data, load_model, kwargs, progress, cancel):
    """The worker's job (a plain function: napari names the task after its repr)."""
    model, provenance = load_model()
    return predict(data, model, progress=progress, cancel=cancel, **kwargs), provenance


class _Signals(QObject):
    # Emitted from the worker thread; Qt delivers it on the main thread.
    progressed = Signal(int, int)


class ReconstructionWidget(Container):
    """Dock widget: pick an image layer and a model, run CVDM, get mean and uncertainty."""

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
        self._model = ComboBox(label="model", value=DEMO,
                               choices=[("bundled demo model", DEMO), ("model file", FILE)])
        self._model_file = FileEdit(label="model file", mode="r",
                                    filter="CVDM models (*.cvdm.safetensors *.safetensors)")
        self._model_info = Label(label="")
        self._options = {}
        widget_options = ReconstructionOptions.widget_options()
        for f in fields(ReconstructionOptions):
            opts = dict(widget_options[f.name])
            widget_type = opts.pop("widget_type", None)
            label = opts.pop("label", f.name.replace("_", " "))
            self._options[f.name] = create_widget(
                value=f.default, annotation=type(f.default), name=f.name, label=label,
                widget_type=widget_type, options=opts)
        self._run = PushButton(text="Run")
        self._progress = ProgressBar(value=0, min=0, max=1, label="")
        self._status = Label(label="")
        self.extend([self._image, self._model, self._model_file, self._model_info,
                     *self._options.values(), self._run, self._progress, self._status])

        self._model_file.visible = False
        self._model.changed.connect(self._on_model_changed)
        self._model_file.changed.connect(self._update_model_info)
        self._run.changed.connect(self._on_run_clicked)
        layers = viewer.layers
        layers.events.inserted.connect(self.reset_choices)
        layers.events.removed.connect(self.reset_choices)
        layers.events.removed.connect(self._on_layer_removed)
        layers.selection.events.active.connect(self._follow_active_layer)
        closed = self._closed = threading.Event()
        # Closing the viewer deletes the widget: stop a running prediction.
        self.native.destroyed.connect(lambda *_: closed.set())
        self._follow_active_layer()
        self._update_model_info()

    # -- inputs --------------------------------------------------------------------------
    def _image_layers(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, _unwrap(layer)) for layer in self._viewer.layers
                if isinstance(layer, Image)]

    def _follow_active_layer(self, event=None) -> None:
        active = _unwrap(self._viewer.layers.selection.active)
        # Outputs become active when added; keep the input chosen for the next run.
        if isinstance(active, Image) and "cvdm" not in active.metadata:
            self._image.reset_choices()
            self._image.value = active

    def _on_model_changed(self) -> None:
        self._model_file.visible = self._model.value == FILE
        self._update_model_info()

    def model_source(self) -> str | Path:
        """``"demo"`` or the chosen model file; ValueError when no file is chosen."""
        if self._model.value == DEMO:
            return DEMO
        path = Path(self._model_file.value)
        if not str(self._model_file.value).strip() or path.is_dir():
            raise ValueError("choose a model file (.cvdm.safetensors) first")
        return path

    def _update_model_info(self) -> None:
        try:
            self._model_info.value = model_summary(self.model_source())
        except ValueError as exc:
            self._model_info.value = f"⚠ {exc}"

    def use_model(self, source: str | Path) -> None:
        """Choose the bundled ``"demo"`` model or a model file."""
        if source == DEMO:
            self._model.value = DEMO
        else:
            self._model_file.value = Path(source)
            self._model.value = FILE

    def set_options(self, **values: Any) -> None:
        """Set options by name, as in :class:`ReconstructionOptions`."""
        for name, value in values.items():
            self._options[name].value = value

    def options(self) -> ReconstructionOptions:
        return ReconstructionOptions(**{name: w.value for name, w in self._options.items()})

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
        except ValueError as exc:
            show_error(str(exc))
            return None
        options = self.options()
        cancel = self._cancel = threading.Event()
        closed = self._closed
        worker = create_worker(_predict, layer.data, partial(self._load_model, source),
                               options.predict_kwargs(), self._signals.progressed.emit,
                               lambda: cancel.is_set() or closed.is_set(),
                               _ignore_errors=True, _start_thread=False)
        worker.returned.connect(lambda out: self._on_returned(layer, options, cancel, *out))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker, self._running_layer = worker, layer
        self._run.text = "Cancel"
        self._progress.value = 0
        self._status.value = "loading the model…"
        self._started = time.perf_counter()
        worker.start()
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

    def _on_returned(self, layer, options, cancel, result, provenance) -> None:
        if cancel.is_set() or self._closed.is_set() or layer not in self._viewer.layers:
            return
        try:
            show_result(self._viewer, layer, result, options.show, provenance)
        except (ValueError, RuntimeError) as exc:
            show_error(f"CVDM: could not show the result: {exc}")
            return
        self._status.value = f"done in {result.seconds:.1f} s on {result.device}"

    def _on_errored(self, exc: Exception) -> None:
        if self._closed.is_set():
            return
        if isinstance(exc, Cancelled):
            self._status.value = "cancelled"
            self._progress.value = 0
            show_info("CVDM reconstruction cancelled")
        elif isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
            self._status.value = "out of memory"
            show_error("CVDM ran out of memory: lower the tile size or the number of "
                       f"samples, or choose the CPU ({exc})")
        else:
            self._status.value = "failed"
            show_error(f"CVDM reconstruction failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = self._cancel = self._running_layer = None
        if not self._closed.is_set():
            self._run.text = "Run"
            self._run.enabled = True

    def _on_layer_removed(self, event) -> None:
        if self.running and _unwrap(event.value) is _unwrap(self._running_layer):
            self.cancel()
