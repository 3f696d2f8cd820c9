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


@pytest.mark.parametrize("table", [
    {"method": "scale", "scale": 1e300},
    {"method": "scale", "scale": True},
    {"method": "isotonic", "scale": 1.0, "log_std": [-9, -8], "std": [1e300, 1e301]},
    {"method": "isotonic", "scale": 1.0, "log_std": [-1e308, 1e308], "std": [0, 1e308]},
    {"method": "isotonic", "scale": 1.0, "log_std": [[0], [1]], "std": [0.1, 0.2]},
    {"method": "isotonic", "scale": 1.0, "log_std": ["-5", "-1"], "std": [0.1, 0.2]},
    {"method": "isotonic", "scale": 1.0, "log_std": [-5, -1], "std": [False, True]},
    {"method": "scale", "scale": 1.0, "signal_exponent": True}])
def test_tables_that_would_give_infinite_nan_or_zero_uncertainty_are_refused(table):
    """Found by an audit: values beyond float32 passed the float64 check, and every std
    pixel came out inf or NaN (exit 0); booleans and strings passed as numbers."""
    with pytest.raises(ValueError, match="calibration"):
        calibration.check(table)
    grid = np.geomspace(1e-6, 10, 50).astype(np.float32)
    good = {"method": "isotonic", "scale": 1.0, "log_std": [-9.0, 40.0], "std": [1e-4, 999.0]}
    assert np.isfinite(calibration.apply(grid, calibration.check(good))).all()


def test_fit_needs_enough_pixels():
    with pytest.raises(ValueError, match="100 pixels"):
        calibration.fit(np.ones(10), np.ones(10))


def test_fit_needs_a_std_that_varies_and_errors():
    """One sample (std 0 everywhere) failed with a NumPy message from the binning; errors
    all zero gave a table (scale 0) that the model file then refused on load."""
    errors = np.random.default_rng(0).random(1000)
    for std in (np.zeros(1000), np.full(1000, 0.3)):
        with pytest.raises(ValueError, match="std that varies"):
            calibration.fit(std, errors)
        with pytest.raises(ValueError, match="std that varies"):
            calibration.fit(std, errors, mean=np.zeros(1000))
    with pytest.raises(ValueError, match="every prediction equals its target"):
        calibration.fit(np.linspace(0.1, 1, 1000), np.zeros(1000))


def _brightness_dependent(seed=0, n=60000):
    """Errors 3x the reported std on bright pixels and 0.6x on dark ones (the bias the
    samples miss sits on structure)."""
    rng = np.random.default_rng(seed)
    reported = np.exp(rng.uniform(np.log(0.01), np.log(0.2), n))
    mean = rng.uniform(-1, 1, n)                        # normalised units
    signal = (mean + 1) / 2
    true = reported * (0.6 + 2.4 * signal)
    return reported, mean, np.abs(rng.normal(0, true))


def test_the_brightness_term_is_learned_when_errors_follow_the_mean():
    std, mean, error = _brightness_dependent()
    with_mean = calibration.check(calibration.fit(std, error, mean=mean))
    std_only = calibration.fit(std, error)
    assert with_mean["signal_exponent"] >= 0.5 and calibration.needs_mean(with_mean)
    assert not calibration.needs_mean(std_only)
    test_std, test_mean, test_error = _brightness_dependent(seed=1)
    bright, dark = test_mean > 0.5, test_mean < -0.5
    for table, expect_good in ((with_mean, True), (std_only, False)):
        calibrated = calibration.apply(test_std, table, test_mean)
        cover = [calibration.coverage(np.zeros(m.sum()), calibrated[m], test_error[m])
                 ["coverage_1sigma"] for m in (bright, dark)]
        # honest on bright and on dark pixels only with the brightness term
        assert all(0.6 < c < 0.76 for c in cover) == expect_good, cover
    with pytest.raises(ValueError, match="mean"):
        calibration.apply(test_std, with_mean)


def test_without_a_brightness_effect_the_std_alone_is_kept():
    std, error = _overconfident()
    mean = np.random.default_rng(3).uniform(-1, 1, std.size)
    table = calibration.fit(std, error, mean=mean)
    assert not calibration.needs_mean(table)
    np.testing.assert_allclose(calibration.apply(std[:50], table),
                               calibration.apply(std[:50], calibration.fit(std, error)))
    with pytest.raises(ValueError, match="pixels"):
        calibration.fit(std, error, mean=mean[:10])


@pytest.mark.parametrize("term", [{"signal_exponent": -1.0}, {"signal_exponent": 9.0},
                                  {"signal_exponent": 1.0, "signal_floor": 0.0},
                                  {"signal_exponent": "1"}])
def test_malformed_brightness_terms_are_refused(term):
    std, error = _overconfident()
    with pytest.raises(ValueError, match="signal term"):
        calibration.check({**calibration.fit(std, error), **term})


def test_predict_applies_the_brightness_term_eagerly_and_lazily_alike(tiny_model):
    import dask.array as da

    import napari_cvdm as nc

    std, mean, error = _brightness_dependent()
    tiny_model.metadata["calibration"] = calibration.fit(std, error, mean=mean)
    assert calibration.needs_mean(tiny_model.metadata["calibration"])
    image = np.random.default_rng(4).uniform(0, 200, (96, 80)).astype(np.float32)
    options = dict(samples=2, steps=2, seed=1, precision="fp32")
    eager = nc.predict(image, tiny_model, **options)
    lazy = nc.predict(da.from_array(image, chunks=(48, 40)), tiny_model, **options)
    lazy_std = lazy.std.compute()
    np.testing.assert_allclose(lazy_std, eager.std, rtol=1e-5, atol=1e-6)
    # the same map as the table gives for the normalised mean and sample std
    from napari_cvdm.normalization import Normalization

    norm = Normalization.fit(image)
    expected = calibration.apply(np.sqrt(eager.variance) / norm.half_range,
                                 tiny_model.metadata["calibration"],
                                 norm.apply(eager.mean)) * norm.half_range
    np.testing.assert_allclose(eager.std, expected, rtol=1e-3, atol=1e-5)


def test_calibrate_model_script_writes_where_told_at_any_scale_and_needs_images(tmp_path,
                                                                               capsys):
    """Found by an audit: the script failed with a broadcast error on a x3 model trained on
    pairs (it simulated x2 inputs), and with a concatenate error given no images; it could
    only rewrite the model in place."""
    import dataclasses

    import torch
    from conftest import randomized, script_module

    import napari_cvdm as nc
    from napari_cvdm.model.config import CVDMConfig
    from napari_cvdm.model.cvdm import CVDM

    script = script_module("calibrate_model")
    torch.manual_seed(0)
    config = dataclasses.replace(CVDMConfig.preset("tiny"), scale=3)
    source = nc.save_model(randomized(CVDM(config)), tmp_path / "x3.cvdm.safetensors")
    before = source.read_bytes()
    out = tmp_path / "x3-calibrated.cvdm.safetensors"
    assert script.main([str(source), "--synthetic", "1", "--samples", "2", "--steps", "1",
                        "-o", str(out)]) == 0
    assert source.read_bytes() == before
    calibrated = nc.load_model(out)
    assert calibrated.config.scale == 3 and calibrated.metadata["calibration"]["pixels"] > 0
    with pytest.raises(SystemExit) as stop:
        script.main([str(source), "--synthetic", "0"])
    assert stop.value.code == 2 and "no held-out images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # was a NumPy error after every prediction
        script.main([str(source), "--synthetic", "1", "--samples", "1"])
    assert stop.value.code == 2 and "at least 2" in capsys.readouterr().err
