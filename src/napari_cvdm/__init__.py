"""napari-cvdm: super-resolution with per-pixel uncertainty by a Conditional Variational
Diffusion Model, as a library, a command line and a napari plugin.

The library imports no Qt and no napari; :func:`run_on_layer` imports napari when called.
"""

__version__ = "0.1.0"

from .errors import Cancelled
from .inference import PredictionResult, predict
from .io import load_model, save_model
from .model import CVDM, CVDMConfig


def run_on_layer(viewer, layer, model="demo", **kwargs):
    """Run CVDM on a napari image layer, blocking; add or update the mean/variance layers."""
    from .layers import run_on_layer as _run

    return _run(viewer, layer, model=model, **kwargs)


def train_on_layers(viewer, hq=None, pairs=None, **kwargs):
    """Train or fine-tune CVDM on napari image layers, blocking; return the trained model."""
    from .training_layers import train_on_layers as _train

    return _train(viewer, hq, pairs, **kwargs)


__all__ = [
    "CVDM",
    "CVDMConfig",
    "Cancelled",
    "PredictionResult",
    "load_model",
    "predict",
    "run_on_layer",
    "save_model",
    "train_on_layers",
    "__version__",
]
