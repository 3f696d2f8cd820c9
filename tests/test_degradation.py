"""The simulated optics: PSFs, downsampling and the camera noise model's statistics."""

import pytest
import torch

from napari_cvdm.degradation import (Degradation, add_camera_noise, blur_and_downsample,
                                     psf_kernel, simulate)


@pytest.mark.parametrize("kind", ["gaussian", "airy"])
def test_psf_is_normalised_symmetric_and_peaked(kind):
    k = psf_kernel(kind, 1.5)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(k, k.flip(0))
    torch.testing.assert_close(k, k.T)
    c = k.shape[0] // 2
    assert float(k[c, c]) == float(k.max())


def test_gaussian_psf_has_the_requested_width():
    k = psf_kernel("gaussian", 2.0).double()
    r = torch.arange(k.shape[0], dtype=torch.float64) - k.shape[0] // 2
    variance = float((k.sum(0) * r**2).sum())
    assert variance == pytest.approx(4.0, rel=0.02)


def test_blur_and_downsample_keeps_mean_intensity_and_shape():
    image = torch.rand(1, 1, 64, 48)
    out = blur_and_downsample(image, Degradation(scale=2))
    assert out.shape == (1, 1, 32, 24)
    assert float(out.mean()) == pytest.approx(float(image.mean()), rel=0.02)


def test_noise_variance_matches_the_requested_photon_level():
    g = torch.Generator().manual_seed(0)
    clean = torch.full((1, 1, 256, 256), 0.5)
    photons, background, read = torch.tensor([200.0]), torch.tensor([3.0]), torch.tensor([2.0])
    counts = add_camera_noise(clean, photons, background, read, g)
    expected_mean = 0.5 * 200 + 3
    expected_var = expected_mean + 2.0**2          # Poisson + read noise
    assert float(counts.mean()) == pytest.approx(expected_mean, rel=0.01)
    assert float(counts.var()) == pytest.approx(expected_var, rel=0.03)


def test_lower_signal_gives_lower_snr():
    g = torch.Generator().manual_seed(1)
    clean = torch.full((1, 1, 128, 128), 0.5)
    low = add_camera_noise(clean, torch.tensor([20.0]), torch.zeros(1), torch.zeros(1), g)
    high = add_camera_noise(clean, torch.tensor([2000.0]), torch.zeros(1), torch.zeros(1), g)
    snr = lambda c: float(c.mean() / c.std())  # noqa: E731
    assert snr(high) > 5 * snr(low)


def test_simulate_draws_levels_in_the_given_range():
    hq = torch.rand(4, 1, 32, 32)
    d = Degradation(photons=(100.0, 100.0), background=(0.0, 0.0), read_noise=(0.0, 0.0))
    lq = simulate(hq, d, torch.Generator().manual_seed(0))
    assert lq.shape == (4, 1, 16, 16)
    ratio = float(lq.mean() / blur_and_downsample(hq, d).mean())
    assert ratio == pytest.approx(100.0, rel=0.05)


def test_invalid_degradation_is_refused():
    with pytest.raises(ValueError, match="psf"):
        Degradation(psf="box")
    with pytest.raises(ValueError, match="photons"):
        Degradation(photons=(0.0, 10.0))
