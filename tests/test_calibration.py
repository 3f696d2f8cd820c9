"""Calibration of the uncertainty: a monotone std -> error map that gives honest coverage."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cvdm import calibration


def _overconfident(seed=0, n=40000):
    """Errors whose true std is 2x the reported one, plus a floor of 0.03."""
    rng = np.random.default_rng(seed)
    reported = np.exp(rng.uniform(np.log(0.005), np.log(0.3), n))
    true = np.sqrt((2 * reported) ** 2 + 0.03**2)
    return reported, np.abs(rng.normal(0, true))


def test_fitted_map_is_monotone_and_restores_gaussian_coverage():
    std, error = _overconfident()
    table = calibration.check(calibration.fit(std, error))
    assert np.all(np.diff(table["std"]) >= 0)
    raw = calibration.coverage(np.zeros_like(error), std, error)
    test_std, test_error = _overconfident(seed=1)
    calibrated = calibration.coverage(np.zeros_like(test_error),
                                      calibration.apply(test_std, table), test_error)
    assert raw["coverage_1sigma"] < 0.45  # overconfident before
    assert 0.62 < calibrated["coverage_1sigma"] < 0.74
    assert 0.92 < calibrated["coverage_2sigma"] < 0.98


def test_the_error_floor_is_learned_where_samples_agree():
    std, error = _overconfident()
    table = calibration.fit(std, error)
    tiny = calibration.apply(np.array([0.005]), table)[0]
    assert tiny > 0.02  # the floor, not 2 x 0.005


def test_apply_is_monotone_beyond_the_fitted_range_and_keeps_shape():
    std, error = _overconfident()
    table = calibration.fit(std, error)
    grid = np.geomspace(1e-7, 10, 200).reshape(10, 20).astype(np.float32)
    out = calibration.apply(grid, table)
    assert out.shape == grid.shape and out.dtype == np.float32
    assert np.all(np.diff(out.ravel()) >= 0)
    assert calibration.apply(grid, None) is not None
    np.testing.assert_array_equal(calibration.apply(grid, None), grid)


@pytest.mark.parametrize("table", [None, {"method": "isotonic"}, {"method": "scale", "scale": -1},
                                   {"method": "isotonic", "scale": 1.0, "log_std": [0, 1],
                                    "std": [2.0, 1.0]},
                                   {"method": "isotonic", "scale": 1.0, "log_std": [1, 0],
                                    "std": [1.0, 2.0]}])
def test_malformed_tables_are_refused(table):
    with pytest.raises(ValueError, match="calibration"):
        calibration.check(table)


def test_fit_needs_enough_pixels():
    with pytest.raises(ValueError, match="100 pixels"):
        calibration.fit(np.ones(10), np.ones(10))
