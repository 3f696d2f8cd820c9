"""benchmarks/registration.py: a real pair's target moved into its input's geometry, by an
offset found from the pair alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_cvdm import structures
from napari_cvdm.degradation import blur


def _registration():
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # as when the benchmarks run: optics_fit beside it
    spec = importlib.util.spec_from_file_location("registration", folder / "registration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _input_of(target: np.ndarray, sigma: float = 2.5) -> np.ndarray:
    """The widefield input ``target`` gives in the model's geometry (blur, 2 x 2 average)."""
    tensor = torch.from_numpy(target.astype(np.float32))[None, None]
    return F.avg_pool2d(blur(tensor, "gaussian", sigma), 2)[0, 0].double().numpy()


def test_a_known_offset_is_found_and_undone():
    reg = _registration()
    target = structures.generate("microtubules", (192, 192), 31.0,
                                 np.random.default_rng(3)).astype(np.float64)
    lr = _input_of(target)
    off = reg.fourier_shift(target, -0.3, 0.55)        # a target gridded 0.3 / 0.55 px off
    moved, offset = reg.registered(lr, off, sigma=2.5)
    assert abs(offset["dy"] - 0.3) <= 0.0625 and abs(offset["dx"] + 0.55) <= 0.0625
    assert offset["residual"] < 0.1 * offset["residual_unshifted"]
    assert moved.shape == off.shape and moved.dtype == off.dtype
    inner = (slice(8, -8), slice(8, -8))
    before = np.abs(off - target)[inner].mean()
    after = np.abs(moved - target)[inner].mean()
    assert after < 0.2 * before


def test_an_aligned_pair_stays_where_it_is_and_the_shift_does_not_wrap():
    reg = _registration()
    target = structures.generate("ccp", (128, 128), 31.0,
                                 np.random.default_rng(4)).astype(np.float64)
    offset = reg.input_offset(_input_of(target), target, sigma=2.5)
    assert (offset["dy"], offset["dx"]) == (0.0, 0.0)
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    moved = reg.fourier_shift(ramp, 0.0, 1.0)           # one pixel to the right
    np.testing.assert_allclose(moved[:, 8:-8], ramp[:, 7:-9], atol=0.02)
    assert moved[:, 0].max() < 0.1                      # the left edge does not get the right's
