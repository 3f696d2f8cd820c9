"""The simulated optics: PSFs, downsampling and the camera noise model's statistics."""

import numpy as np
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


def test_psf_width_ranges_are_drawn_per_image_within_the_range():
    import torch

    from napari_cvdm.degradation import Degradation, draw_sigmas

    d = Degradation(psf_sigma=(2.0, 4.0))
    sigmas = draw_sigmas(d, 2000, torch.Generator().manual_seed(0))
    assert float(sigmas.min()) >= 2.0 and float(sigmas.max()) <= 4.0
    # log-uniform: the median is the geometric mean of the ends
    assert abs(float(sigmas.median()) - (2.0 * 4.0) ** 0.5) < 0.1
    assert Degradation(psf_sigma=(3.0, 3.0)).psf_sigma == 3.0
    for bad in [(4.0, 2.0), (0.0, 1.0), (1.0, float("nan")), 25.0]:
        with pytest.raises(ValueError, match="psf_sigma"):
            Degradation(psf_sigma=bad)


def test_wider_psf_blurs_more_and_simulate_image_keeps_its_input(nuclei_truth):
    from napari_cvdm.degradation import Degradation, simulate_image

    image = nuclei_truth[:128, :128].copy()
    sharp = simulate_image(image, Degradation(psf_sigma=1.0, photons=(1e5, 1e5),
                                              read_noise=(0, 0), background=(0, 0)))
    blurred = simulate_image(image, Degradation(psf_sigma=4.0, photons=(1e5, 1e5),
                                                read_noise=(0, 0), background=(0, 0)))
    assert sharp.shape == blurred.shape == (64, 64)
    gradient = lambda a: np.abs(np.diff(a, axis=1)).mean() / a.mean()  # noqa: E731
    assert gradient(blurred) < 0.7 * gradient(sharp)
    assert np.array_equal(image, nuclei_truth[:128, :128])
    with pytest.raises(ValueError, match="2D"):
        simulate_image(np.zeros((2, 8, 8)), Degradation())


def test_psf_widths_from_objective_and_wavelength():
    from napari_cvdm.degradation import Degradation

    d = Degradation.from_optics(numerical_aperture=(1.1, 1.5), wavelength_nm=(450, 650),
                                pixel_size_nm=31.0)
    low, high = d.psf_sigma
    # 0.21 * 450 / 1.5 = 63 nm -> 2.0 px; 0.21 * 650 / 1.1 = 124 nm -> 4.0 px
    assert abs(low - 63 / 31) < 0.05 and abs(high - 124.1 / 31) < 0.05
    sim = Degradation.from_optics(pixel_size_nm=31.0, target_resolution_nm=110)
    assert sim.psf_sigma[1] < high  # relative to a SIM target: narrower


def test_out_of_focus_haze_moves_light_into_a_wide_blur_and_keeps_its_total():
    from napari_cvdm.degradation import draw_haze

    image = torch.zeros(1, 1, 128, 128)
    image[..., 64, 64] = 1.0                                   # one point source
    d = Degradation(psf_sigma=1.5)
    share, width = torch.tensor([0.4]), torch.tensor([12.0])
    sharp = blur_and_downsample(image, d)
    hazy = blur_and_downsample(image, d, haze=(share, width))
    assert float(hazy.sum()) == pytest.approx(float(sharp.sum()), rel=1e-4)
    # the in-focus peak keeps 60 % of its light; the rest lies in a wide, faint skirt
    assert float(hazy.max()) == pytest.approx(0.6 * float(sharp.max()), rel=0.02)
    far = (slice(None), slice(None), slice(40, 48), slice(32, 40))   # ~ 8 widefield px away
    assert float(sharp[far].max()) < 1e-6 < float(hazy[far].min())
    assert draw_haze(d, 4) is None                             # no haze: no random numbers
    shares, widths = draw_haze(Degradation(haze=(0.1, 0.5), haze_sigma=(8, 32)), 2000,
                               torch.Generator().manual_seed(0))
    assert 0.1 <= float(shares.min()) and float(shares.max()) <= 0.5
    assert 8 <= float(widths.min()) and float(widths.max()) <= 32
    assert abs(float(widths.median()) - 16.0) < 1.0            # log-uniform


def test_haze_settings_are_checked_and_survive_the_model_file_round_trip():
    d = Degradation(psf_sigma=(1.5, 4.0), haze=(0.0, 0.6), haze_sigma=(8.0, 32.0))
    assert Degradation.from_dict(d.to_dict()) == d
    old = {k: v for k, v in d.to_dict().items() if not k.startswith("haze")}
    assert Degradation.from_dict(old).haze == (0.0, 0.0)       # files written before haze
    for bad in [dict(haze=(0.0, 1.0)), dict(haze=(-0.1, 0.2)), dict(haze=(0.5, 0.2))]:
        with pytest.raises(ValueError, match="haze"):
            Degradation(**bad)
    with pytest.raises(ValueError, match="haze_sigma"):
        Degradation(haze_sigma=(0.0, 3.0))


def test_haze_off_draws_the_same_inputs_as_before_and_on_changes_them():
    hq = torch.rand(2, 1, 64, 64)
    plain = simulate(hq, Degradation(), torch.Generator().manual_seed(5))
    zero = simulate(hq, Degradation(haze=(0.0, 0.0)), torch.Generator().manual_seed(5))
    hazy = simulate(hq, Degradation(haze=(0.3, 0.5)), torch.Generator().manual_seed(5))
    assert torch.equal(plain, zero)
    assert not torch.equal(plain, hazy)


def test_told_widths_stray_log_normally_around_the_truth_and_zero_tells_the_truth():
    from napari_cvdm.degradation import told_widths

    sigmas = torch.full((20000,), 2.5)
    assert told_widths(sigmas, 0.0) is sigmas
    told = told_widths(sigmas, 0.1, torch.Generator().manual_seed(0))
    spread = torch.log(told / sigmas)
    assert abs(float(spread.mean())) < 0.005 and abs(float(spread.std()) - 0.1) < 0.005
    assert Degradation.from_dict(Degradation(told_error=0.1).to_dict()).told_error == 0.1
    old = {k: v for k, v in Degradation().to_dict().items() if k != "told_error"}
    assert Degradation.from_dict(old).told_error == 0.0         # files written before it
    for bad in (-0.1, 0.6, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="told_error"):
            Degradation(told_error=bad)
