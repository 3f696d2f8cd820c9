"""Shared fixtures: tiny models and real microscopy images (the bundled CC0 sample)."""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
import pytest
import tifffile
import torch

from napari_cvdm import CVDM, CVDMConfig


def script_module(name: str):
    """A script of scripts/ (``name`` without .py) imported as a module, for its tests."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_path(name: str):
    return resources.files("napari_cvdm") / "sample_data" / name


@pytest.fixture(scope="session")
def nuclei_truth() -> np.ndarray:
    """A real fluorescence image (2018 Data Science Bowl nuclei, CC0), 512 x 512 uint16."""
    with resources.as_file(sample_path("nuclei_groundtruth.tif")) as path:
        return tifffile.imread(path)


@pytest.fixture(scope="session")
def nuclei_widefield() -> np.ndarray:
    """Its simulated widefield version, 256 x 256 uint16 (the bundled sample input)."""
    with resources.as_file(sample_path("nuclei_widefield.tif")) as path:
        return tifffile.imread(path)


def structure(height, width, seed=0):
    """A bright, sparse pattern (blurred random points) in camera-like units."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.float32)
    image[rng.integers(0, height, 60), rng.integers(0, width, 60)] = 1.0
    kernel = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    for axis in (0, 1):
        image = np.apply_along_axis(np.convolve, axis, image, kernel, mode="same")
    return (100 + 2000 * image).astype(np.uint16)


def randomized(model: CVDM, seed: int = 0, scale: float = 0.05) -> CVDM:
    """Perturb every weight so that zero-initialised output layers do something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return model.eval()


@pytest.fixture
def tiny_model() -> CVDM:
    torch.manual_seed(0)
    return randomized(CVDM(CVDMConfig.preset("tiny")))


@pytest.fixture
def tiny_model_file(tiny_model, tmp_path):
    from napari_cvdm import save_model

    return save_model(tiny_model, tmp_path / "tiny.cvdm.safetensors")


@pytest.fixture(autouse=True)
def _private_widget_config(tmp_path_factory, monkeypatch):
    """Widgets remember their options in a temporary folder, never the user's settings."""
    if "NAPARI_CVDM_CONFIG_DIR" not in os.environ:
        monkeypatch.setenv("NAPARI_CVDM_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
