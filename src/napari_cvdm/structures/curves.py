"""Curves and labelling shared by the generators: worm-like chains, resampling, textures."""

from __future__ import annotations

import numpy as np


def log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    """Values spread evenly in log scale between ``low`` and ``high``."""
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def worm_like_chain(rng: np.random.Generator, start, angle: float, length_nm: float,
                    persistence_nm: float, step_nm: float = 50.0,
                    curvature_per_nm: float = 0.0) -> np.ndarray:
    """A 2D semiflexible chain (N, 2) of (y, x) nm from ``start`` heading along ``angle``.

    Tangent angles random-walk with variance step / persistence length per step, so the
    tangent correlation decays as exp(-s / (2 Lp)) (2D worm-like chain); an optional
    intrinsic curvature adds a constant turn per nanometre.
    """
    steps = max(1, int(np.ceil(length_nm / step_nm)))
    turns = rng.normal(0.0, np.sqrt(step_nm / persistence_nm), steps) + curvature_per_nm * step_nm
    angles = angle + np.cumsum(turns)
    dy = np.concatenate([[0.0], np.sin(angles) * (length_nm / steps)])
    dx = np.concatenate([[0.0], np.cos(angles) * (length_nm / steps)])
    return np.stack([start[0] + np.cumsum(dy), start[1] + np.cumsum(dx)], axis=1)


def chain_through(rng: np.random.Generator, anchor, length_nm: float, persistence_nm: float,
                  step_nm: float = 50.0, curvature_per_nm: float = 0.0) -> np.ndarray:
    """A worm-like chain of ``length_nm`` that passes through ``anchor`` at a random point."""
    angle = rng.uniform(0, 2 * np.pi)
    ahead = rng.uniform(0, 1) * length_nm
    forward = worm_like_chain(rng, anchor, angle, ahead, persistence_nm, step_nm, curvature_per_nm)
    back = worm_like_chain(rng, anchor, angle + np.pi, length_nm - ahead, persistence_nm,
                           step_nm, -curvature_per_nm)
    return np.concatenate([back[::-1], forward[1:]])


def resample(polyline: np.ndarray, spacing_nm: float):
    """Evenly spaced points along a polyline: positions (N, 2), unit tangents (N, 2), arclength."""
    seg = np.diff(polyline, axis=0)
    seg_len = np.hypot(seg[:, 0], seg[:, 1])
    arc = np.concatenate([[0.0], np.cumsum(seg_len)])
    count = max(2, int(np.ceil(arc[-1] / spacing_nm)) + 1)
    s = np.linspace(0.0, arc[-1], count)
    points = np.stack([np.interp(s, arc, polyline[:, 0]), np.interp(s, arc, polyline[:, 1])], 1)
    index = np.clip(np.searchsorted(arc, s, side="right") - 1, 0, len(seg) - 1)
    tangents = seg[index] / np.maximum(seg_len[index], 1e-12)[:, None]
    return points, tangents, s


def labelling(rng: np.random.Generator, count: int, spacing_nm: float,
              density_per_nm: float) -> np.ndarray:
    """Fluorophores per point, mean 1: Gamma(k = density x spacing), a continuous Poisson.

    Sparse labelling (k << 1) gives separate puncta; dense labelling a nearly even line.
    """
    k = max(density_per_nm * spacing_nm, 1e-3)
    return rng.gamma(k, 1.0 / k, count)


def smooth_modulation(rng: np.random.Generator, arclength_nm: np.ndarray, amplitude: float,
                      wavelength_nm: tuple[float, float] = (500.0, 4000.0)) -> np.ndarray:
    """A slowly varying positive factor along a curve (focus, local labelling, mean 1)."""
    factor = np.ones_like(arclength_nm)
    for _ in range(3):
        wavelength = log_uniform(rng, *wavelength_nm)
        phase = rng.uniform(0, 2 * np.pi)
        factor += amplitude / 3 * np.sin(2 * np.pi * arclength_nm / wavelength + phase)
    return np.clip(factor, 0.1, None)


def add_line(canvas, rng: np.random.Generator, polyline: np.ndarray, fwhm_nm: float,
             brightness: float, density_per_nm: float, modulation: float = 0.3) -> None:
    """Render a labelled line of Gaussian cross-section ``fwhm_nm`` along ``polyline``.

    ``brightness`` is the mean number of fluorophores per nanometre of line.
    """
    spacing = canvas.point_spacing_nm
    points, _, arc = resample(polyline, spacing)
    keep = canvas.contains(points[:, 0], points[:, 1], margin_nm=3 * fwhm_nm)
    if not keep.any():
        return
    points, arc = points[keep], arc[keep]
    weights = brightness * spacing * labelling(rng, len(points), spacing, density_per_nm)
    if modulation > 0:
        weights *= smooth_modulation(rng, arc, modulation)
    canvas.add_points(points[:, 0], points[:, 1], weights, fwhm_nm)


def field_anchor(rng: np.random.Generator, canvas, margin_nm: float = 0.0) -> np.ndarray:
    """A random (y, x) in the field of view grown by ``margin_nm``."""
    height, width = canvas.extent_nm
    return np.array([rng.uniform(-margin_nm, height + margin_nm),
                     rng.uniform(-margin_nm, width + margin_nm)])


def poisson_count(rng: np.random.Generator, mean: float, minimum: int = 1) -> int:
    """A Poisson count, at least ``minimum`` (so that no field of view is empty)."""
    return max(minimum, int(rng.poisson(mean)))
