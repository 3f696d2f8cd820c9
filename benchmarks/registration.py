"""Where a real pair's target sits relative to its input, to a fraction of a target pixel.

A model's output is in its input's geometry: each input pixel is the average of the
``scale`` x ``scale`` output pixels it covers (``degradation.blur_and_downsample``, what the
model was trained on, and what places its napari layer over the input). A SIM target made by
another program need not be: an upsampling that puts output pixel ``2 i`` on input pixel
``i``'s centre, or a crop aligned to whole pixels, leaves it a fraction of a pixel off, and
PSNR against it then penalises every sharp reconstruction for the offset, not for its
content.

:func:`input_offset` finds the offset from the pair alone (never from a prediction, so
every method is scored against the same target): the target, blurred by an in-focus
Gaussian of ``sigma`` target pixels and an out-of-focus Gaussian (both shares fitted by
least squares with an offset, as ``benchmarks/optics_fit.py`` does) and binned, is shifted
on a grid of sub-pixel offsets (coarse, then fine around the best) until it fits the input
best. :func:`registered` moves the target by that offset into the input's geometry
(a Fourier shift of the reflect-padded image, so nothing wraps around).
"""

from __future__ import annotations

import numpy as np

from optics_fit import _fit, binned, blurred

COARSE = np.arange(-1.5, 1.5001, 0.25)  # target pixels, each axis
FINE_STEP = 0.0625
HAZE_SIGMA = 16.0                       # target pixels (the real pairs fit 12-48)
MARGIN = 8                              # input pixels left out of the fit at each side
PAD = 32                                # target pixels of reflection around a shifted image


def fourier_shift(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels (new[y, x] = old[y - dy, x - dx]), band-limited,
    with reflected borders instead of wrap-around."""
    padded = np.pad(np.asarray(image, np.float64), PAD, mode="reflect")
    ky = np.fft.fftfreq(padded.shape[0])[:, None]
    kx = np.fft.fftfreq(padded.shape[1])[None, :]
    moved = np.real(np.fft.ifft2(np.fft.fft2(padded)
                                 * np.exp(-2j * np.pi * (ky * dy + kx * dx))))
    return moved[PAD:-PAD, PAD:-PAD]


def _residual(lr: np.ndarray, core: np.ndarray, haze: np.ndarray) -> float:
    """Share of the input's variance (inside the margin) left by the least-squares fit
    a core + b haze + c (``optics_fit``'s fit)."""
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    return _fit(lr[inner], [core[inner], haze[inner]])[0]


def input_offset(lr: np.ndarray, target: np.ndarray, sigma: float, scale: int = 2) -> dict:
    """The (dy, dx) in target pixels that moves ``target`` into ``lr``'s geometry, and the
    fit's residual there and without a shift."""
    lr = np.asarray(lr, np.float64)
    target = np.asarray(target, np.float64)[:lr.shape[0] * scale, :lr.shape[1] * scale]
    # blurring and shifting commute: blur once, shift the blurred images
    terms = {name: blurred(target, width) for name, width in
             (("core", sigma), ("haze", HAZE_SIGMA))}

    def residual(dy: float, dx: float) -> float:
        core, haze = (binned(fourier_shift(terms[k], dy, dx), scale) for k in ("core", "haze"))
        return _residual(lr, core, haze)

    coarse = {(dy, dx): residual(dy, dx) for dy in COARSE for dx in COARSE}  # holds (0, 0)
    best = min((r, dy, dx) for (dy, dx), r in coarse.items())
    fine = np.arange(-0.25, 0.2501, FINE_STEP)
    best = min((residual(best[1] + a, best[2] + b), best[1] + a, best[2] + b)
               for a in fine for b in fine)
    return {"dy": round(float(best[1]), 4), "dx": round(float(best[2]), 4),
            "residual": best[0], "residual_unshifted": coarse[(0.0, 0.0)]}


def registered(lr: np.ndarray, target: np.ndarray, sigma: float,
               scale: int = 2) -> tuple[np.ndarray, dict]:
    """``target`` moved into ``lr``'s geometry (same shape and dtype), and the offset."""
    offset = input_offset(lr, target, sigma, scale)
    moved = fourier_shift(target, offset["dy"], offset["dx"]).astype(np.asarray(target).dtype)
    return moved, offset
