"""napari-cvdm: super-resolution with per-pixel uncertainty by a Conditional Variational
Diffusion Model, as a library, a command line and a napari plugin.

The library imports no Qt and no napari; :func:`run_on_layer` imports napari when called.
The public names are imported on first use, so ``cvdm --help`` and ``cvdm --version`` start
without loading PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it
_LAZY = {
    "CVDM": ".model", "CVDMConfig": ".model", "Cancelled": ".errors",
    "OutOfMemory": ".errors", "BadInput": ".errors", "InputWarning": ".errors",
    "PredictionResult": ".inference",
    "predict": ".inference", "load_model": ".model_files", "save_model": ".model_files",
    "PredictSettings": ".settings", "run_on_layer": ".layers",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_cvdm' has no attribute {name!r}")


def train_on_layers(viewer, hq=None, pairs=None, **kwargs):
    """Train or fine-tune CVDM on napari image layers, blocking; return the trained model."""
    from .training_layers import train_on_layers as _train

    return _train(viewer, hq, pairs, **kwargs)


__all__ = [
    "CVDM",
    "BadInput",
    "CVDMConfig",
    "Cancelled",
    "InputWarning",
    "OutOfMemory",
    "PredictSettings",
    "PredictionResult",
    "__version__",
    "load_model",
    "predict",
    "run_on_layer",
    "save_model",
    "train_on_layers",
]
