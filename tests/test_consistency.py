"""The input's unexplained part: near zero where the reconstruction explains the input up to
its noise, large where the input holds what the reconstruction lacks, and in predict()'s
calibrated std (in-memory and lazy alike)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import napari_cvdm as nc
from napari_cvdm import calibration
from napari_cvdm.consistency import noise_variance, tile_unexplained, unexplained_variance
from napari_cvdm.normalization import Normalization
from napari_cvdm.tiling import Tile

SIGMA, SCALE = 2.5, 2


def _structure(size=128, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size))
    image[rng.integers(0, size, 80), rng.integers(0, size, 80)] = 1.0
    return ndimage.gaussian_filter(image, 1.0) * 8 - 0.8  # about [-0.8, 1] like normalised


def _forward(mean, sigma=SIGMA, scale=SCALE):
    h, w = mean.shape
    low = ndimage.gaussian_filter(mean, sigma)
    return low.reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))


def test_the_noise_variance_follows_a_poisson_gaussian_camera():
    rng = np.random.default_rng(1)
    clean = np.tile(np.linspace(0.0, 1.0, 96), (96, 1))  # a smooth ramp
    noisy = clean + rng.normal(0, 1, clean.shape) * np.sqrt(0.002 + 0.01 * clean)
    found = noise_variance(noisy)
    expected = 0.002 + 0.01 * clean
    assert np.median(np.abs(found / expected - 1)) < 0.25
    assert found[:, -10:].mean() > 3 * found[:, :10].mean()  # brighter, noisier


def test_an_input_the_mean_explains_leaves_almost_nothing_unexplained():
    mean = _structure()
    rng = np.random.default_rng(2)
    lq = 0.7 * _forward(mean) + 0.1  # another gain and offset: the fit takes them
    noisy = lq + rng.normal(0, 0.02, lq.shape)
    u = unexplained_variance(mean, noisy, SIGMA, SCALE)
    assert u.shape == mean.shape and u.dtype == np.float32
    residual = (0.02 / 0.7) ** 2  # the noise, in the mean's units
    assert u.mean() < 0.2 * residual


def test_what_the_mean_lacks_is_unexplained_there_and_only_there():
    mean = _structure()
    lq = _forward(mean)
    missing = np.zeros_like(mean)
    missing[80:84, 30:34] = 3.0  # a bright spot the reconstruction left out
    lq_with_spot = _forward(mean + missing)
    u = unexplained_variance(mean, lq_with_spot, SIGMA, SCALE)
    near = u[72:92, 22:42].mean()
    far = np.concatenate([u[:40].ravel(), u[:, 90:].ravel()]).mean()
    assert near > 100 * max(far, 1e-9)
    assert unexplained_variance(mean, lq, SIGMA, SCALE).max() < 0.01 * near


def test_a_tile_uses_the_input_pixels_it_covers_whole():
    mean = _structure(64)
    lq = _forward(np.pad(mean, 16))  # a plane of 48 x 48 input pixels
    plane = np.asarray(lq)
    tile = Tile(15, 17, 64, 64)  # odd start: the aligned part starts one pixel in
    u = tile_unexplained(np.pad(mean, 16)[15:79, 17:81], plane, tile, SCALE, SIGMA)
    assert u.shape == (64, 64) and np.all(np.isfinite(u))
    part = plane[8:39, 9:40]  # the same tile from a region of the plane (a lazy run)
    np.testing.assert_array_equal(
        tile_unexplained(np.pad(mean, 16)[15:79, 17:81], part, tile, SCALE, SIGMA, (8, 9)), u)
    small = tile_unexplained(np.zeros((8, 8)), plane, Tile(0, 0, 8, 8), SCALE, SIGMA)
    assert not small.any()  # 4 x 4 input pixels: too few to say anything


@pytest.fixture(scope="module")
def conditioned():
    import torch

    from conftest import randomized

    torch.manual_seed(0)
    model = randomized(nc.CVDM(nc.CVDMConfig.preset("tiny", psf_conditioned=True)))
    model.metadata["calibration"] = {"method": "scale", "scale": 1.0}
    return model


def test_predict_widens_the_calibrated_std_by_the_unexplained_part(conditioned):
    image = (200 + 800 * np.clip(_structure(48, 3), 0, None)).astype(np.float32)
    options = {"samples": 2, "steps": 2, "seed": 4, "precision": "fp32", "device": "cpu",
               "psf_sigma": SIGMA, "augment": False}
    res = nc.predict(image, conditioned, **options)
    norm = Normalization.fit(image)
    mean = norm.apply(res.mean)
    u = unexplained_variance(mean, norm.apply(image), SIGMA, SCALE)
    expected = calibration.uncertainty(res.variance / norm.half_range ** 2, u) * norm.half_range
    np.testing.assert_allclose(res.std, expected, rtol=1e-3, atol=1e-4 * norm.half_range)
    assert (res.std >= res.sample_std * (1 - 1e-5)).all() and (res.std > res.sample_std).any()
    import dask.array as da

    lazy = nc.predict(da.from_array(image, chunks=24), conditioned, **options)
    np.testing.assert_allclose(np.asarray(lazy.std), res.std, rtol=1e-5, atol=1e-6)


def test_a_blind_model_is_calibrated_on_its_samples_alone(tiny_model):
    model = nc.CVDM(tiny_model.config, metadata={"calibration": {"method": "scale",
                                                                  "scale": 2.0}})
    model.load_state_dict(tiny_model.state_dict())
    res = nc.predict(np.random.default_rng(0).random((32, 32)).astype(np.float32), model,
                     samples=2, steps=2, seed=1, precision="fp32", device="cpu")
    np.testing.assert_allclose(res.std, 2 * np.maximum(res.sample_std, 0), rtol=1e-4,
                               atol=1e-6)
