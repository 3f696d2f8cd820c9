"""Warnings for inputs unlike the training data: noise, transmitted light, far-off pixel sizes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_cvdm.domain import (input_warnings, looks_like_noise, looks_transmitted,
                                neighbour_correlation, pixel_size_nm)


class _Model:
    metadata = {"intended": {"input_pixel_size_nm": [50, 80]}}


def test_fluorescence_passes_and_an_inverted_image_is_flagged(nuclei_widefield):
    assert input_warnings(nuclei_widefield, _Model()) == []
    inverted = nuclei_widefield.max() - nuclei_widefield
    assert looks_transmitted(inverted)
    (message,) = input_warnings(inverted, _Model())
    assert "transmitted light" in message and "fluorescence" in message


def test_a_brightfield_like_image_is_flagged():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    cells = 0.35 * np.exp(-((yy - 64) ** 2 + (xx - 50) ** 2) / 300.0)
    image = (1000 * (0.8 - cells) + rng.normal(0, 10, (128, 128))).astype(np.float32)
    assert looks_transmitted(image)


@pytest.mark.parametrize("size,unit,warned", [(0.065, "µm", False), (65, "nm", False),
                                              (0.065, "um", False), (0.2, "µm", True),
                                              (10, "nm", True), (None, None, False),
                                              (0.2, "pixel", False)])
def test_pixel_size_far_from_the_model_is_flagged(nuclei_widefield, size, unit, warned):
    out = input_warnings(nuclei_widefield, _Model(), size, unit)
    assert bool(out) == warned
    if warned:
        assert "pixel size" in out[0] and "50-80 nm" in out[0]


def test_pixel_size_units():
    assert pixel_size_nm(0.1, "µm") == pytest.approx(100)
    assert pixel_size_nm(2, "s") is None
    assert pixel_size_nm(None, "µm") is None


def test_a_model_without_declared_pixel_size_only_checks_the_image(nuclei_widefield):
    class Bare:
        metadata = {}

    assert input_warnings(nuclei_widefield, Bare(), 5.0, "µm") == []


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_input_gets_no_numpy_warnings(bad):
    # The input checks reject such an image with their own message; the domain check must
    # not print NumPy's "invalid value" warnings before it.
    image = np.ones((64, 64), np.float32)
    image[:, :40] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert looks_transmitted(image) is False
        input_warnings(image, _Model())


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "poisson"])
def test_pure_noise_is_named_as_noise_not_as_transmitted_light(kind):
    rng = np.random.default_rng(3)
    image = {"uniform": lambda: rng.random((200, 300)),
             "gaussian": lambda: rng.normal(100, 5, (200, 300)),
             "poisson": lambda: rng.poisson(3.0, (200, 300))}[kind]()
    assert looks_like_noise(image)
    (message,) = input_warnings(image, _Model())
    assert "noise without structure" in message and "transmitted" not in message


def test_a_dim_but_real_widefield_image_is_not_noise(nuclei_widefield):
    # Shot noise at about 20 photons at the brightest structure, the model's lowest
    # training signal, on top of a background of 10: still well correlated.
    rng = np.random.default_rng(0)
    clean = nuclei_widefield.astype(np.float64)
    dim = rng.poisson(10 + 20 * (clean - clean.min()) / np.ptp(clean)).astype(np.float32)
    assert not looks_like_noise(dim) and neighbour_correlation(dim) > 0.1
    assert input_warnings(dim, _Model()) == []
    assert neighbour_correlation(np.ones((50, 50))) is None  # a constant image says nothing
    assert neighbour_correlation(np.ones((1, 50))) is None


@pytest.mark.parametrize("sizes,units,far,square", [
    ((0.065, 0.065), "µm", False, True),
    ((0.2, 0.065), "µm", True, False),     # Y far off and not square: X alone was checked
    ((66, 60), ("nm", "nm"), False, True),  # within 10 %: square enough
    ((0.1, 0.065), ("µm", "µm"), False, False),
    ((0.2, 0.065), ("pixel", "µm"), False, True),  # Y has no length: X alone
    ((None, 0.065), "µm", False, True)])
def test_each_axis_pixel_size_is_checked_and_pixels_that_are_not_square_are_flagged(
        nuclei_widefield, sizes, units, far, square):
    out = input_warnings(nuclei_widefield, _Model(), sizes, units)
    assert any("pixel size" in m and "along Y" in m for m in out) == far
    assert any("not square" in m for m in out) == (not square)
    assert len(out) == far + (not square)


def test_one_sample_is_said_to_measure_no_uncertainty(nuclei_widefield):
    (message,) = input_warnings(nuclei_widefield, _Model(), samples=1)
    assert "one sample" in message and "at least 2 samples" in message
    assert input_warnings(nuclei_widefield, _Model(), samples=2) == []
