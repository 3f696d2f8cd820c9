"""Calibrated uncertainty: a monotone map from the samples' standard deviation to the error.

The spread of a few CVDM samples ranks pixels by how wrong the mean is likely to be, but
it is not an error bar: a briefly trained model is overconfident, and the error has a floor
where every sample agrees. ``fit`` learns, on held-out images, the expected absolute error
of the mean as a non-decreasing function of log(std) (isotonic regression on quantile bins)
and turns it into a standard deviation (E|e| = sigma sqrt(2/pi) for Gaussian errors).
``apply`` evaluates it; the table travels in the model file (``metadata["calibration"]``).
All values are in normalised units (the [-1, 1] percentile scale of predict()).

The samples' spread misses the mean's bias, and the bias is largest on bright structure.
When ``fit`` is given the mean as well, it also learns how much the brightness adds: the
map's input becomes std * (signal + floor) ** b, with signal the mean on a [0, 1] scale
and b chosen on half of the pixels by the Gaussian negative log-likelihood of the other half
(b = 0, the std alone, when brightness does not help). Still a monotone map of the std at
each brightness; ``apply`` then needs the mean too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .model_header import finite_number

GAUSSIAN_ABS = math.sqrt(2.0 / math.pi)  # E|e| / sigma for a Gaussian error
MIN_STD = 1e-6
MAX_KNOTS = 64
SIGNAL_FLOOR = 0.05                      # keeps dark pixels' uncertainty from vanishing
SIGNAL_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
MAX_SIGNAL_EXPONENT = 4.0
# Bounds that keep every calibrated std finite in float32 (normalised units: the image's
# range is about 2; a table beyond these is damaged, not cautious)
MAX_CALIBRATED = 1e3
MAX_LOG_STD = 50.0


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values.astype(float), weights.astype(float)):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, _, c in blocks])


def _signal_factor(mean: np.ndarray, exponent: float, floor: float) -> np.ndarray:
    """(signal + floor) ** exponent with signal the normalised mean on [0, 1]."""
    signal = np.clip((np.asarray(mean, np.float32) + np.float32(1)) / np.float32(2), 0, 1)
    return (signal + np.float32(floor)) ** np.float32(exponent)


def _gaussian_nll(std: np.ndarray, abs_error: np.ndarray) -> float:
    std = np.maximum(std, MIN_STD)
    return float(np.mean(np.log(std) + 0.5 * (abs_error / std) ** 2))


def fit(std: np.ndarray, abs_error: np.ndarray, bins: int = 32,
        mean: np.ndarray | None = None) -> dict[str, Any]:
    """An isotonic calibration table from per-pixel std and |mean - target| (same shapes).

    ``mean``: the predicted mean (normalised units) of the same pixels; when given, the
    brightness term (module docstring) is fitted as well; the table then also records the
    held-out NLL of each exponent tried (``nll_by_signal_exponent``, read by no one at run
    time: it shows how clear the choice was).
    """
    s = np.asarray(std, np.float64).ravel()
    e = np.asarray(abs_error, np.float64).ravel()
    m = None if mean is None else np.asarray(mean, np.float64).ravel()
    if m is not None and m.size != s.size:
        raise ValueError(f"mean has {m.size} pixels, std {s.size}")
    keep = np.isfinite(s) & np.isfinite(e) & (np.isfinite(m) if m is not None else True)
    s, e = np.maximum(s[keep], MIN_STD), e[keep]
    if s.size < 100:
        raise ValueError(f"calibration needs at least 100 pixels, not {s.size}")
    if not np.ptp(s) > 0:  # one sample (variance 0) or a constant std: nothing to map
        raise ValueError("calibration needs a std that varies between pixels (draw at least "
                         "2 samples)")
    if not np.sum(e) > 0:
        raise ValueError("calibration needs errors: every prediction equals its target")
    if m is None:
        return _isotonic(s, e, bins)
    m = m[keep]
    half = np.random.default_rng(0).random(s.size) < 0.5
    scores = {}
    for exponent in SIGNAL_EXPONENTS:
        effective = s * _signal_factor(m, exponent, SIGNAL_FLOOR)
        table = _isotonic(effective[half], e[half], bins)
        scores[exponent] = _gaussian_nll(apply(effective[~half], table), e[~half])
    best = min(scores, key=scores.get)
    table = _isotonic(s * _signal_factor(m, best, SIGNAL_FLOOR), e, bins)
    if best:
        table.update(signal_exponent=best, signal_floor=SIGNAL_FLOOR)
    table["nll_by_signal_exponent"] = {str(k): round(v, 5) for k, v in scores.items()}
    return table


def _isotonic(s: np.ndarray, e: np.ndarray, bins: int) -> dict[str, Any]:
    log_s = np.log(s)
    edges = np.unique(np.quantile(log_s, np.linspace(0, 1, min(bins, MAX_KNOTS) + 1)))
    index = np.clip(np.searchsorted(edges, log_s, side="right") - 1, 0, len(edges) - 2)
    count = np.bincount(index, minlength=len(edges) - 1).astype(float)
    used = count > 0
    centre = (np.bincount(index, log_s, len(edges) - 1)[used] / count[used])
    mean_error = np.bincount(index, e, len(edges) - 1)[used] / count[used]
    monotone = _pool_adjacent_violators(mean_error, count[used])
    scale = float(np.sum(e) / np.sum(s) / GAUSSIAN_ABS)
    return {"method": "isotonic", "log_std": [round(float(v), 6) for v in centre],
            "std": [round(float(v / GAUSSIAN_ABS), 7) for v in monotone],
            "scale": round(scale, 6), "pixels": int(s.size)}


def check(table: Any) -> dict[str, Any]:
    """A calibration table from a model file, checked; ValueError when it is malformed."""
    if not isinstance(table, dict) or table.get("method") not in ("isotonic", "scale"):
        raise ValueError("the model's calibration table is malformed (method)")
    scale = table.get("scale")
    if not finite_number(scale) or not 0 < scale <= MAX_CALIBRATED:
        raise ValueError("the model's calibration table is malformed (scale)")
    if table["method"] == "isotonic":
        x, y = table.get("log_std"), table.get("std")
        if not (isinstance(x, list) and isinstance(y, list)
                and 1 <= len(x) == len(y) <= MAX_KNOTS
                and all(finite_number(v) and abs(v) <= MAX_LOG_STD for v in x)
                and all(finite_number(v) and v <= MAX_CALIBRATED for v in y)):
            raise ValueError("the model's calibration table is malformed (knots)")
        xa, ya = np.asarray(x, float), np.asarray(y, float)
        if not (np.isfinite(xa).all() and np.isfinite(ya).all() and (ya >= 0).all()
                and (np.diff(xa) > 0).all() and (np.diff(ya) >= 0).all()):
            raise ValueError("the model's calibration table is malformed (not monotone)")
    exponent = table.get("signal_exponent", 0.0)
    floor = table.get("signal_floor", SIGNAL_FLOOR)
    if not (finite_number(exponent) and finite_number(floor)
            and 0 <= exponent <= MAX_SIGNAL_EXPONENT and 0 < floor <= 1):
        raise ValueError("the model's calibration table is malformed (signal term)")
    return table


def needs_mean(table: dict[str, Any] | None) -> bool:
    """Whether ``apply`` needs the mean for this table (it has a brightness term)."""
    return bool(table) and bool(table.get("signal_exponent", 0.0))


def apply(std: np.ndarray, table: dict[str, Any] | None,
          mean: np.ndarray | None = None) -> np.ndarray:
    """Calibrated standard deviation for raw sample std (normalised units), float32.

    Between knots: linear in log(std); beyond the last knot: proportional to std, so the
    map stays monotone and never saturates. ``mean`` (normalised units, same shape): needed
    when the table has a brightness term.
    """
    if table is None:
        return np.asarray(std, np.float32)
    s = np.maximum(np.asarray(std, np.float32), MIN_STD)
    if needs_mean(table):
        if mean is None:
            raise ValueError("this calibration also needs the predicted mean")
        factor = _signal_factor(mean, float(table["signal_exponent"]),
                                float(table.get("signal_floor", SIGNAL_FLOOR)))
        s = np.maximum(s * factor.astype(np.float32), MIN_STD)
    if table["method"] == "scale":
        return (s * np.float32(table["scale"])).astype(np.float32)
    x = np.asarray(table["log_std"], np.float32)
    y = np.asarray(table["std"], np.float32)
    log_s = np.log(s)
    out = np.interp(log_s, x, y).astype(np.float32)
    above = log_s > x[-1]
    if above.any():
        out[above] = y[-1] * np.exp(log_s[above] - x[-1])
    return out


def coverage(mean: np.ndarray, std: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Fraction of pixels whose error lies within 1 and 2 standard deviations."""
    error = np.abs(np.asarray(mean, np.float64) - target)
    s = np.asarray(std, np.float64)
    return {"coverage_1sigma": float(np.mean(error <= s)),
            "coverage_2sigma": float(np.mean(error <= 2 * s))}
