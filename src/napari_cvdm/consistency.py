"""The part of the input a reconstruction leaves unexplained, beyond the noise.

The mean, blurred with the PSF width the model was told and binned back to the input grid,
should reproduce the input up to its noise (after an affine intensity fit: input and output
are normalised separately). Where it does not, the model's optics or structures do not fit
the sample there, and the spread of its samples understates the error: the samples agree
with each other, not with the data. That part, the local mean square of the residual above
the noise, brought to the output grid and the mean's units, is added to the sample variance
before calibration (inference.py), so the calibrated std grows where the input contradicts
the reconstruction (docs/benchmarks.md, "Uncertainty from the input's unexplained part").

Computed per tile from the tile's own mean and input (the tile's aligned part; its few edge
rows repeat their neighbours), and blended like the mean, so lazy, distributed and in-memory
results agree. The noise is a Poisson-Gaussian variance ``a * I + b`` fitted robustly to
neighbour differences of the tile's input.
"""

from __future__ import annotations

import math

import numpy as np

LOCAL_SIGMA = 1.5  # input pixels: the neighbourhood of the local mean square
MIN_SIDE = 8  # input pixels: a smaller aligned region says nothing (zeros)
MIN_GAIN = 0.05  # the blurred mean's fitted gain is taken as at least this
CHI2_1_MEDIAN = 0.4549  # median of a chi-square variable with one degree of freedom
LEVELS = 10  # intensity bins of the noise fit


def _neighbour_difference_variance(x: np.ndarray) -> np.ndarray:
    """(x - mean of its 4 neighbours)^2 / 1.25: each pixel's white-noise variance, once."""
    from scipy import ndimage

    ring = np.array([[0, .25, 0], [.25, 0, .25], [0, .25, 0]])
    return (x - ndimage.convolve(x, ring, mode="reflect")) ** 2 / 1.25


def noise_variance(x: np.ndarray) -> np.ndarray:
    """Per-pixel noise variance ``a * I + b`` of an image (float64), fitted to the robust
    (median) neighbour-difference variance in intensity bins; a constant where the image is
    too small or too flat to fit a slope."""
    from scipy import ndimage

    d2 = _neighbour_difference_variance(x)
    level = ndimage.uniform_filter(x, 3, mode="reflect")
    flat = np.full(x.shape, np.median(d2) / CHI2_1_MEDIAN)
    edges = np.quantile(level, np.linspace(0, 1, LEVELS + 1))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (level >= lo) & (level <= hi)
        if inside.sum() >= 30:
            xs.append(float(np.median(level[inside])))
            ys.append(float(np.median(d2[inside])) / CHI2_1_MEDIAN)
    if len(set(xs)) < 3:
        return flat
    slope, offset = np.polyfit(xs, ys, 1)
    return np.maximum(slope * level + offset, 0.5 * min(ys))


def unexplained_variance(mean: np.ndarray, lq: np.ndarray, sigma: float, scale: int,
                         offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The unexplained variance of a tile, on its output grid in the mean's units (float32).

    ``mean``: the tile's mean (normalised output units), ``(H, W)``; ``lq``: the normalised
    input pixels the tile covers whole, the first of them starting at output pixel
    ``offset`` of the tile; ``sigma``: the PSF width in output pixels; ``scale``: output
    pixels per input pixel.
    """
    from scipy import ndimage

    out = np.zeros(mean.shape, np.float32)
    h, w = lq.shape
    oy, ox = offset
    if h < MIN_SIDE or w < MIN_SIDE or not (math.isfinite(sigma) and sigma > 0):
        return out
    block = np.asarray(mean[oy:oy + h * scale, ox:ox + w * scale], np.float64)
    low = ndimage.gaussian_filter(block, sigma, mode="reflect")
    low = low.reshape(h, scale, w, scale).mean(axis=(1, 3))
    x = np.asarray(lq, np.float64)
    design = np.stack([low.ravel(), np.ones(low.size)], axis=1)
    (gain, shift), *_ = np.linalg.lstsq(design, x.ravel(), rcond=None)
    residual = x - (gain * low + shift)
    above = ndimage.gaussian_filter(residual ** 2, LOCAL_SIGMA, mode="reflect") - \
        ndimage.gaussian_filter(noise_variance(x), LOCAL_SIGMA, mode="reflect")
    above = np.maximum(above, 0.0) / max(abs(gain), MIN_GAIN) ** 2  # to the mean's units
    out[oy:oy + h * scale, ox:ox + w * scale] = np.kron(above, np.ones((scale, scale)))
    # the tile's few rows and columns outside its aligned part repeat their neighbours
    out[:oy] = out[oy]
    out[oy + h * scale:] = out[oy + h * scale - 1]
    out[:, :ox] = out[:, ox:ox + 1]
    out[:, ox + w * scale:] = out[:, ox + w * scale - 1:ox + w * scale]
    return out


def tile_unexplained(mean: np.ndarray, x_plane: np.ndarray, tile, scale: int, sigma: float,
                     origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """:func:`unexplained_variance` of one tile (plane coordinates) from the normalised input
    plane ``x_plane``, or the part of it that starts at input pixel ``origin``."""
    y0, x0 = -(-tile.y // scale), -(-tile.x // scale)  # the input pixels the tile covers
    y1, x1 = (tile.y + tile.height) // scale, (tile.x + tile.width) // scale
    lq = x_plane[y0 - origin[0]:y1 - origin[0], x0 - origin[1]:x1 - origin[1]]
    return unexplained_variance(mean, np.asarray(lq), sigma, scale,
                                (y0 * scale - tile.y, x0 * scale - tile.x))
