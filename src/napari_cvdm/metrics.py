"""Image quality: PSNR and SSIM after the least-squares affine fit used for microscopy.

Prediction and target come from different instruments or normalisations, so (as in the
CARE and BioSR evaluations) the prediction is first mapped by the affine a * p + b that
best fits the target, then compared on the target's [0, 1] percentile range.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


SCORED_RANGE = (0.1, 99.9)  # the target's percentiles scored as its [0, 1] range


def _to01(target: np.ndarray) -> tuple[np.ndarray, float, float]:
    low, high = np.percentile(target, SCORED_RANGE)
    span = high - low if high > low else 1.0
    return (target - low) / span, low, span


def has_range(target: np.ndarray) -> bool:
    """Whether ``target`` has an intensity range to score against: PSNR and SSIM of a flat
    (blank) target say nothing (any prediction fits it to about 120 dB)."""
    low, high = np.percentile(np.asarray(target, dtype=np.float64), SCORED_RANGE)
    return bool(high > low)


def affine_fit(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    p = np.asarray(prediction, dtype=np.float64).ravel()
    t = np.asarray(target, dtype=np.float64).ravel()
    a = np.vstack([p, np.ones_like(p)]).T
    coef, *_ = np.linalg.lstsq(a, t, rcond=None)
    return (np.asarray(prediction, dtype=np.float64) * coef[0] + coef[1])


def psnr(prediction: np.ndarray, target: np.ndarray, fit: bool = True) -> float:
    target01, low, span = _to01(np.asarray(target, dtype=np.float64))
    pred = affine_fit(prediction, target) if fit else np.asarray(prediction, np.float64)
    pred01 = (pred - low) / span
    mse = float(np.mean((pred01 - target01) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def ssim(prediction: np.ndarray, target: np.ndarray, fit: bool = True) -> float:
    """Mean SSIM (Wang et al. 2004; Gaussian window sigma 1.5, data range 1)."""
    target01, low, span = _to01(np.asarray(target, dtype=np.float64))
    pred = affine_fit(prediction, target) if fit else np.asarray(prediction, np.float64)
    pred01 = (pred - low) / span
    x = torch.from_numpy(pred01)[None, None]
    y = torch.from_numpy(target01)[None, None]
    # the usual 11 x 11 window, smaller for images under 11 pixels (small validation patches)
    half = max(1, min(5, (min(x.shape[-2:]) - 1) // 2))
    r = torch.arange(-half, half + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (r / 1.5) ** 2)
    g = (g / g.sum())
    win = (g[:, None] * g[None, :])[None, None]
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays of the same size (ties broken by order)."""
    ra, rb = (np.argsort(np.argsort(np.ravel(v))).astype(np.float64) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])
