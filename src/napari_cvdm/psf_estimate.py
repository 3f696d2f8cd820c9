"""A blind estimate of the PSF width of a widefield image, from the image alone.

A PSF-conditioned model is told the blur of its input as the standard deviation of a Gaussian
PSF in *output* pixels (:mod:`.psf_width`). Without the optics, the width shows in the
image's power spectrum: a Gaussian PSF of ``sigma`` input pixels multiplies it by
``exp(-(2 pi sigma f)^2)`` (``f`` in cycles per input pixel), the camera pixel (the ``scale``
x ``scale`` binning of :func:`.degradation.blur_and_downsample`) by ``sinc(fx)^2 sinc(fy)^2``,
and the camera noise adds a floor. The sample is modelled as a power law ``f^-alpha``, and the
radially averaged power spectrum of the Hann-windowed image is fitted by

    P(f) = A f^-alpha exp(-(2 pi sigma f)^2) box(f) + N floor(f)

on log P (each ring weighted by its pixel count: the variance of its log-power is about one
over it). ``floor`` is white for a camera's noise, or smoothed (a Gaussian, or linear
interpolation) for images averaged or resampled after capture, whose noise falls at high
frequencies too (the real Jin et al. 2020 widefield input: a white floor takes that fall for
the sample and finds sigma 1.3 instead of 4). ``sigma``, ``alpha`` and the floor are
searched on a grid, ``A`` and ``N`` fitted by Gauss-Newton steps for each. The Gaussian's
curvature in log P is what tells the blur from the sample's power law; ``alpha`` is kept to
1-2.5 (filaments ~1, networks and blobs ~2): wider ranges let a steep power law explain the
blur away (measured: median errors about twice as large). No empirical correction is applied:
on simulated inputs the median error is 0.1-0.2 output pixels at 200 photons and more without
one (benchmarks/psf_estimate.py).

It measures the *total* blur of the image: the PSF and the sample's own size. A model trained
on blurred targets (SIM, ~120 nm) wants the blur relative to its targets, about
``sqrt(sigma^2 - sigma_target^2)``. Real widefield PSFs are not Gaussian: the estimate
follows the spectrum's fall-off at mid and high frequencies, which is narrower than what a
least-squares fit in real space (dominated by the PSF's wide wings) finds.

Reliable for sigma of about 1.5-6 output pixels at scale 2 (below ~1 the image is nearly
aliased), best on images of at least 64 input pixels a side (32 at the least). numpy only;
about 0.1 s for a 1024 x 1024 image on one core. Bad input raises ValueError (see
:func:`estimate_psf_sigma`): no fallback value, the caller chooses one (e.g. the model's
default width).
"""

from __future__ import annotations

import numpy as np

from .spikes import spike_excess
from .validation import check_scale

MIN_SIDE = 32                                   # input pixels a side (fewer: too few rings)
SIGMA_GRID = np.linspace(0.2, 4.0, 39)          # input pixels, coarse: 0.1 steps
SIGMA_STEP = 0.02                               # input pixels, fine
ALPHA_GRID = np.linspace(1.0, 2.5, 7)           # power-law exponent of the sample
NOISE_WIDTHS = (0.3, 0.55, 0.8)                 # input pixels: Gaussian-smoothed noise floors
NOISE_SHIFTS = (0.6, 1.0)                       # noise floors after linear interpolation
MAX_BIN = 1.0 / 128                             # coarsest ring spacing (cycles per pixel)
LOW_CUT = 0.02                                  # lowest frequency fitted (cycles per pixel)
LOW_CUT_RINGS = 3                               # ... and at least this many rings from 0
DYNAMIC_RANGE = 1e-8                            # power floor, relative to the peak
MIN_SIGNAL_RINGS = 3                            # rings where the sample must beat the noise
_STEPS = 6                                       # Gauss-Newton steps of each level fit


def estimate_psf_sigma(image: np.ndarray, scale: int = 2) -> float:
    """The Gaussian PSF sigma of a 2-D widefield ``image``, in output pixels (``scale`` x
    input pixels), as a conditioned model is told it.

    Any intensity range; the image is not modified. The result lies in
    ``[SIGMA_GRID[0], SIGMA_GRID[-1]] * scale`` (0.4-8 output pixels at scale 2). ``scale``
    1 assumes no binning (the camera pixel is then the output pixel).

    ValueError: not 2-D, smaller than :data:`MIN_SIDE` a side, NaN or infinite values, a
    constant image, or no structure above the noise (nothing to measure the blur on).
    """
    check_scale(scale)
    rings = radial_power_spectrum(image, binned=scale > 1)
    sigma_in = fit_gaussian_rolloff(*rings)[0]
    return float(sigma_in * scale)


def _checked(image: np.ndarray) -> np.ndarray:
    """A float64 copy of ``image`` scaled to about [0, 1]; ValueError if unusable."""
    plane = np.asarray(image)
    if plane.ndim != 2:
        raise ValueError(f"the PSF width is estimated on a 2-D image, not shape {plane.shape}")
    if min(plane.shape) < MIN_SIDE:
        raise ValueError(f"the image must be at least {MIN_SIDE} pixels a side to estimate "
                         f"its PSF width, not shape {plane.shape}")
    if not np.issubdtype(plane.dtype, np.number) or np.iscomplexobj(plane):
        raise ValueError(f"the image must be real numbers, not {plane.dtype}")
    plane = plane.astype(np.float64)              # a copy: the input is never touched
    if not np.isfinite(plane).all():
        raise ValueError("the image has NaN or infinite values; fill or crop them first")
    low, high = np.percentile(plane, (1.0, 99.8))
    if not high > low:
        high = plane.max()
        if not high > low:
            raise ValueError("the image is constant: it has no structure to measure a PSF on")
    plane = (plane - low) / (high - low)
    excess = spike_excess(2 * plane - 1)  # a hot pixel adds a white floor to the spectrum
    return plane if excess is None else plane - excess / 2


def radial_power_spectrum(image: np.ndarray, binned: bool = True):
    """Rings of the Hann-windowed image's power spectrum.

    Returns (f, power, box, floors, counts), per ring: the mean frequency (cycles per pixel),
    the mean power, the mean camera-pixel transfer ``sinc(fx)^2 sinc(fy)^2`` (ones when not
    ``binned``), the shapes a noise floor may have (:func:`noise_floors`, one row each) and
    the number of Fourier pixels in the ring. Only rings at or above the low-frequency cut
    are returned (the window and the sample's large-scale layout dominate below it).
    """
    plane = _checked(image)
    height, width = plane.shape
    window = np.outer(np.hanning(height + 2)[1:-1], np.hanning(width + 2)[1:-1])
    plane -= (plane * window).sum() / window.sum()   # no leak of the mean into low rings
    plane *= window
    power = np.abs(np.fft.rfft2(plane)) ** 2 / (window**2).sum()
    # A floor far below any camera's noise: a noise-free (rendered) image then ends in a white
    # floor too, not in rounding errors and the ripples of a truncated PSF kernel.
    power = np.maximum(power, power.max() * DYNAMIC_RANGE)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    box = (np.sinc(fy) * np.sinc(fx)) ** 2 if binned else np.ones_like(f)
    spacing = max(1.0 / min(height, width), MAX_BIN)
    ring = np.rint(f / spacing).astype(np.intp).ravel()
    counts = np.bincount(ring)
    keep = (counts > 0) & (np.arange(len(counts)) * spacing
                           >= max(LOW_CUT, LOW_CUT_RINGS / min(height, width)))

    def rings(values: np.ndarray) -> np.ndarray:
        values = np.broadcast_to(values, f.shape).ravel()
        return np.bincount(ring, values, len(counts))[keep] / counts[keep]

    floors = np.maximum(np.stack([rings(floor) for floor in noise_floors(fy, fx)]), 1e-6)
    return rings(f), rings(power), rings(box), floors, counts[keep]


def noise_floors(fy: np.ndarray, fx: np.ndarray) -> list[np.ndarray]:
    """The power spectra the noise may have, peak 1: white (a camera), smoothed by a Gaussian
    of :data:`NOISE_WIDTHS`, or by linear interpolation (a registration shift; 1.0 is half a
    pixel in both axes, :data:`NOISE_SHIFTS`): images averaged or resampled after capture."""
    f2 = fy**2 + fx**2
    floors = [np.ones_like(f2)]
    floors += [np.exp(-(2 * np.pi * tau) ** 2 * f2) for tau in NOISE_WIDTHS]
    floors += [(1 - c * np.sin(np.pi * fy) ** 2) * (1 - c * np.sin(np.pi * fx) ** 2)
               for c in NOISE_SHIFTS]
    return floors


def fit_gaussian_rolloff(f: np.ndarray, power: np.ndarray, box: np.ndarray, floors: np.ndarray,
                         counts: np.ndarray) -> tuple[float, float, int]:
    """The (sigma, alpha, noise floor) of ``A f^-alpha exp(-(2 pi sigma f)^2) box + N floor``
    that fits the rings best on log power; sigma in pixels of ``f``'s grid, the floor as an
    index into ``floors``.

    A grid search, coarse (:data:`SIGMA_GRID`) then fine (:data:`SIGMA_STEP` around the
    best), with the sub-step minimum from a parabola. ValueError when the best fit has fewer
    than :data:`MIN_SIGNAL_RINGS` rings where the sample is above the noise.
    """
    if not np.all(power > 0):
        raise ValueError("the image has no structure above the noise to measure a PSF on")
    rings = (f, power, box, floors, counts)
    coarse = _costs(SIGMA_GRID, *rings)[0].min((1, 2))
    best = SIGMA_GRID[np.argmin(coarse)]
    spacing = SIGMA_GRID[1] - SIGMA_GRID[0]
    fine_grid = np.arange(best - spacing, best + spacing + SIGMA_STEP / 2, SIGMA_STEP)
    fine_grid = fine_grid[(fine_grid >= SIGMA_GRID[0] - 1e-9)
                          & (fine_grid <= SIGMA_GRID[-1] + 1e-9)]
    cost, signal_rings = _costs(fine_grid, *rings)
    i, j, k = np.unravel_index(np.argmin(cost), cost.shape)
    if signal_rings[i, j, k] < MIN_SIGNAL_RINGS:
        raise ValueError("the image has no structure above the noise to measure a PSF on")
    return float(_refine(fine_grid, cost.min((1, 2)), i)), float(ALPHA_GRID[j]), int(k)


def _costs(sigmas: np.ndarray, f: np.ndarray, power: np.ndarray, box: np.ndarray,
           floors: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fit's cost (counts-weighted squared log error) and the number of rings where the
    sample beats the noise, for every (sigma in ``sigmas``, alpha, noise floor)."""
    k2 = (2 * np.pi * f) ** 2
    log_shape = (np.log(box) - ALPHA_GRID[:, None] * np.log(f)               # (alpha, ring)
                 - sigmas[:, None, None] ** 2 * k2)                         # (sigma, ...)
    shape = np.exp(log_shape - log_shape.max(-1, keepdims=True))[:, :, None]  # peak 1
    amplitude, noise = _fit_levels(shape, floors, power, counts)           # (s, a, floor)
    signal, noise = amplitude[..., None] * shape, noise[..., None] * floors
    cost = (counts * np.log(power / (signal + noise)) ** 2).sum(-1)
    return cost, np.count_nonzero(signal > noise, axis=-1)


def _fit_levels(shape: np.ndarray, floor: np.ndarray, power: np.ndarray, counts: np.ndarray):
    """(A, noise) for every pair of a sample ``shape`` and a noise ``floor`` (broadcast over
    the leading axes, rings last): least squares of ``counts``-weighted
    log(power) - log(A shape + noise floor), by damped Gauss-Newton steps in the logs."""
    top = slice(-max(3, len(power) // 5), None)
    log_noise = np.log(np.median(power[top] / floor[:, top], axis=-1))
    log_noise = np.broadcast_to(log_noise, np.broadcast_shapes(shape.shape, floor.shape)[:-1])
    excess = np.clip(power - np.exp(log_noise)[..., None] * floor, 0, None)
    log_amp = np.log(np.maximum((counts * shape * excess).sum(-1)
                                / (counts * shape**2).sum(-1), 1e-30))
    log_power = np.log(power)
    for _ in range(_STEPS):
        signal = np.exp(log_amp)[..., None] * shape
        model = signal + np.exp(log_noise)[..., None] * floor
        share = signal / model                           # d log(model) / d log A
        rest = 1.0 - share                                # d log(model) / d log noise
        residual = log_power - np.log(model)
        h11, h12, h22 = ((counts * share**2).sum(-1), (counts * share * rest).sum(-1),
                         (counts * rest**2).sum(-1))
        g1, g2 = (counts * residual * share).sum(-1), (counts * residual * rest).sum(-1)
        h11, h22 = h11 * 1.1 + 1e-9, h22 * 1.1 + 1e-9    # Levenberg damping
        det = h11 * h22 - h12**2
        log_amp = log_amp + np.clip((g1 * h22 - h12 * g2) / det, -2, 2)
        log_noise = log_noise + np.clip((h11 * g2 - h12 * g1) / det, -2, 2)
    return np.exp(log_amp), np.exp(log_noise)


def _refine(grid: np.ndarray, cost: np.ndarray, i: int) -> float:
    """The minimum of a parabola through the grid's best point and its neighbours."""
    if i == 0 or i == len(grid) - 1:
        return float(grid[i])
    left, mid, right = cost[i - 1], cost[i], cost[i + 1]
    curvature = left - 2 * mid + right
    if curvature <= 0:
        return float(grid[i])
    step = grid[i + 1] - grid[i]
    return float(grid[i] + 0.5 * step * (left - right) / curvature)
