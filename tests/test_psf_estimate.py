"""The blind PSF-width estimate: accuracy on simulated widefield inputs, monotonicity, bad
inputs, and that it leaves its input alone. Tolerances measured (benchmarks/psf_estimate.py
for the full picture); every image is generated here, with fixed seeds."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_cvdm.degradation import Degradation, add_camera_noise, blur_and_downsample
from napari_cvdm.psf_estimate import MIN_SIDE, estimate_psf_sigma
from napari_cvdm.structures import STRUCTURES, generate

SIDE = 256  # output pixels: the widefield inputs are 128 x 128


@pytest.fixture(scope="module")
def targets() -> dict[str, np.ndarray]:
    """One generated high-quality image per structure class."""
    return {kind: generate(kind, (SIDE, SIDE), 31.0, 1) for kind in STRUCTURES}


def widefield(hq01: np.ndarray, sigma: float, photons: float | None = 2000.0,
              seed: int = 0) -> np.ndarray:
    """benchmarks/quality.py's degrade(): Gaussian PSF of sigma output pixels, x2 binning,
    camera noise (background 5, read noise 2; none when photons is None)."""
    clean = blur_and_downsample(torch.from_numpy(hq01)[None, None],
                                Degradation(psf_sigma=sigma), torch.tensor([sigma]))
    if photons is None:
        return clean[0, 0].numpy()
    one = torch.ones(1)
    return add_camera_noise(clean, one * photons, one * 5.0, one * 2.0,
                            torch.Generator().manual_seed(seed))[0, 0].numpy()


@pytest.mark.parametrize("photons", [200.0, 2000.0])
def test_estimate_is_close_to_the_true_width_for_every_structure(targets, photons):
    # Measured on these images: median |error| 0.13-0.14, largest 0.62 (ER reads wide at
    # small sigma: its tubes have a width of their own; mitochondria, CCPs at 3.5).
    errors = [estimate_psf_sigma(widefield(hq, sigma, photons)) - sigma
              for hq in targets.values() for sigma in (1.5, 2.5, 3.5)]
    assert np.median(np.abs(errors)) <= 0.25
    assert np.max(np.abs(errors)) <= 0.9


def test_estimate_increases_with_the_true_width(targets):
    sigmas = np.arange(1.5, 4.01, 0.25)
    estimates = [estimate_psf_sigma(widefield(targets["microtubules"], s, seed=3))
                 for s in sigmas]
    assert np.all(np.diff(estimates) > 0), estimates
    assert estimates[0] == pytest.approx(1.5, abs=0.2)
    assert estimates[-1] == pytest.approx(4.0, abs=0.3)


def test_noise_free_input_is_measured_too(targets):
    for sigma in (1.5, 3.5):
        estimate = estimate_psf_sigma(widefield(targets["actin"], sigma, photons=None))
        assert estimate == pytest.approx(sigma, abs=0.25)


def test_smoothed_noise_is_not_taken_for_sharp_structure(targets):
    # Half a pixel of linear interpolation (a registration shift) smooths signal and noise
    # alike: the total blur becomes sqrt(sigma^2 + 1) output pixels. A white noise floor
    # would take the noise's fall-off for structure and read about 1.2.
    for sigma in (2.5, 3.5):
        lq = widefield(targets["microtubules"], sigma, photons=200.0)
        shifted = (lq + np.roll(lq, 1, 0) + np.roll(lq, 1, 1) + np.roll(lq, (1, 1), (0, 1))) / 4
        assert estimate_psf_sigma(shifted) == pytest.approx(np.hypot(sigma, 1.0), abs=0.3)


def test_scale_intensity_and_dtype_do_not_change_the_width(targets):
    lq = widefield(targets["er"], 3.0)
    base = estimate_psf_sigma(lq)
    assert estimate_psf_sigma(lq, scale=4) == pytest.approx(2 * base)
    assert estimate_psf_sigma(3.7 * lq - 120.0) == pytest.approx(base, abs=1e-6)
    counts = np.clip(np.rint(lq), 0, 65535).astype(np.uint16)
    assert estimate_psf_sigma(counts) == pytest.approx(base, abs=0.05)


def test_input_is_not_modified(targets):
    lq = widefield(targets["ccp"], 2.5)
    before = lq.copy()
    estimate_psf_sigma(lq)
    np.testing.assert_array_equal(lq, before)
    lq.flags.writeable = False            # a read-only view (e.g. a memory-mapped file) works
    assert np.isfinite(estimate_psf_sigma(lq))


def test_bad_inputs_raise_a_clear_value_error():
    rng = np.random.default_rng(0)
    with_nan = rng.random((64, 64))
    with_nan[3, 5] = np.nan
    with_inf = rng.random((64, 64))
    with_inf[0, 0] = np.inf
    cases = {
        "constant": (np.full((64, 64), 7.0), "constant"),
        "NaN": (with_nan, "NaN"),
        "infinity": (with_inf, "NaN or infinite"),
        "tiny": (rng.random((MIN_SIDE - 1, 64)), "at least"),
        "3-D": (rng.random((3, 64, 64)), "2-D"),
        "1-D": (rng.random(4096), "2-D"),
        "complex": (rng.random((64, 64)) + 1j, "real numbers"),
        "white noise": (rng.normal(100.0, 10.0, (128, 128)), "no structure above the noise"),
        "camera noise": (rng.poisson(50.0, (128, 128)), "no structure above the noise"),
    }
    for name, (image, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            estimate_psf_sigma(image)
    for scale in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="scale"):
            estimate_psf_sigma(rng.random((64, 64)), scale=scale)


def test_the_compute_core_imports_neither_qt_nor_napari_nor_torch():
    code = ("import sys, napari_cvdm.psf_estimate; print(sorted(m for m in sys.modules if "
            "m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
