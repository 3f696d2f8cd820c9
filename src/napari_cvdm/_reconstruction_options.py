"""The reconstruction widget's options: controls generated from PredictSettings, remembered.

Each field of :class:`~napari_cvdm.settings.PredictSettings` becomes one magicgui control
(its help as the tooltip, its limits and choices); options that are "automatic" (None) in
the settings show as a number in a spin box (see ``AUTO``). The options are kept in a JSON
file between napari sessions (``NAPARI_CVDM_CONFIG_DIR`` moves it, for tests).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .devices import available_devices
from .layers import SHOW
from .settings import PredictSettings, check_field

# Options whose "automatic" value (None in the settings) is shown as a number in a spin box.
AUTO = {"seed": -1, "tile_size": 0, "overlap": -1, "batch_size": 0, "psf_sigma": 0.0}
AUTO_LABELS = {"seed": "random", "psf_sigma": "auto"}
CONFIG_ENV = "NAPARI_CVDM_CONFIG_DIR"  # where the widget remembers its options (tests)


def config_path() -> Path:
    """The file that keeps the widget's options between napari sessions."""
    folder = os.environ.get(CONFIG_ENV)
    if not folder:
        from qtpy.QtCore import QStandardPaths

        folder = os.path.join(QStandardPaths.writableLocation(
            QStandardPaths.StandardLocation.GenericConfigLocation), "napari-cvdm")
    return Path(folder) / "reconstruction.json"


@dataclass(frozen=True)
class ReconstructionOptions:
    """What the widget asks for: the run's settings (defaults: PredictSettings) and how to
    show the uncertainty."""

    settings: PredictSettings = field(default_factory=PredictSettings)
    show: str = SHOW[0]

    def predict_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self.settings, f.name) for f in fields(PredictSettings)
                if f.name != "model"}


def control(f) -> Any:
    """The magicgui control of one settings field, from its metadata."""
    meta, default = f.metadata, f.default
    label = f.name.replace("_", " ")
    options: dict[str, Any] = {"tooltip": meta["help"]}
    widget_type = None
    if f.name == "device":
        widget_type, options["choices"] = "ComboBox", ["auto", *available_devices()]
    elif "choices" in meta:
        widget_type, options["choices"] = "ComboBox", list(meta["choices"])
    else:
        for key in ("min", "max", "step"):
            if key in meta:
                options[key] = meta[key]
    if f.name in AUTO:
        options["min"] = AUTO[f.name]
        options.setdefault("max", 2**31 - 1)  # a Qt spin box holds 32-bit integers
        label += f" ({AUTO[f.name]} = {AUTO_LABELS.get(f.name, 'auto')})"
        default = AUTO[f.name]
    from magicgui.widgets import create_widget

    return create_widget(value=default, annotation=type(default), name=f.name, label=label,
                         widget_type=widget_type, options=options)


def save_options(values: dict[str, Any]) -> None:
    """Remember the widget's options (not the device, which depends on the computer)."""
    from .atomic import atomic_write

    values = {k: v for k, v in values.items() if k != "device"}
    try:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:  # never a half-written file
            tmp.write_text(json.dumps(values))
    except (OSError, TypeError, ValueError):
        pass  # remembering options is a convenience: never an error


MAX_OPTIONS_BYTES = 1 << 16  # a few hundred bytes are written; more is not ours


def load_options() -> dict[str, Any]:
    """The remembered options that are still valid (a stale or edited file is ignored)."""
    from .model_header import parse_json

    try:
        path = config_path()
        if not path.is_file() or path.stat().st_size > MAX_OPTIONS_BYTES:
            return {}  # not a regular file (a pipe would hang the read), or not ours
        saved = parse_json(path.read_text(), "the options file")
    except (OSError, ValueError):  # parse_json turns deep nesting into a ValueError
        return {}
    checks = {f.name: f for f in fields(PredictSettings)}
    out = {}
    for name, value in (saved if isinstance(saved, dict) else {}).items():
        if name == "device" or name == "model":
            continue
        try:
            if name in checks and not (name in AUTO and value == AUTO[name]):
                check_field(checks[name], value)
            elif name == "show" and value not in SHOW:
                continue
            out[name] = value
        except ValueError:
            continue
    return out
