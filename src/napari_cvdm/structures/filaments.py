"""Cytoskeletal filaments: microtubules (long semiflexible) and F-actin (meshwork, bundles)."""

from __future__ import annotations

import numpy as np

from .curves import (
    add_line,
    chain_through,
    field_anchor,
    labelling,
    log_uniform,
    poisson_count,
    resample,
    worm_like_chain,
)


def _mean_chord(canvas) -> float:
    """Mean length of a random line crossing the field (Cauchy: pi x area / perimeter)."""
    height, width = canvas.extent_nm
    return np.pi * height * width / (2 * (height + width))


def microtubules(canvas, rng: np.random.Generator) -> None:
    """Long, gently curving, crossing filaments about 25 nm wide.

    Density is the filament length per area, 0.5-6 um per um^2 (a sparse cell edge to the
    dense BioSR fields); persistence length 4-40 um (tens of um in cells, the lower end
    for the curlier filaments of some cell lines); sometimes radiating from a centrosome.
    """
    height, width = canvas.extent_nm
    density = log_uniform(rng, 0.5, 6.0) * 1e-3
    count = poisson_count(rng, density * height * width / _mean_chord(canvas))
    persistence = log_uniform(rng, 4e3, 40e3)
    fwhm = rng.uniform(22.0, 30.0)
    label_density = log_uniform(rng, 0.05, 0.5)
    centre = None
    if rng.random() < 0.3:  # an aster: many filaments grow out of one centrosome
        centre = field_anchor(rng, canvas, margin_nm=0.5 * max(height, width))
    for _ in range(count):
        lp = persistence * rng.uniform(0.7, 1.3)
        curvature = rng.normal(0.0, 0.25 / lp)
        if centre is not None:
            target = field_anchor(rng, canvas)
            angle = np.arctan2(*(target - centre)) + rng.normal(0, 0.2)
            reach = float(np.hypot(*(target - centre)))
            chain = worm_like_chain(rng, centre + rng.normal(0, 150, 2), angle,
                                    reach + rng.uniform(2e3, 15e3), lp, 50.0, curvature)
        else:
            chain = chain_through(rng, field_anchor(rng, canvas), rng.uniform(8e3, 30e3),
                                  lp, 50.0, curvature)
        add_line(canvas, rng, chain, fwhm, rng.lognormal(0.0, 0.3), label_density)


def add_segments(canvas, rng: np.random.Generator, centres: np.ndarray, angles: np.ndarray,
                 lengths: np.ndarray, brightness: np.ndarray, fwhm_nm: float,
                 label_density: float) -> None:
    """Many short straight filaments at once (vectorised; a Python loop would be too slow)."""
    spacing = canvas.point_spacing_nm
    counts = np.maximum(2, np.ceil(lengths / spacing).astype(np.int64))
    owner = np.repeat(np.arange(len(lengths)), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    along = ((np.arange(owner.size) - start) / (counts[owner] - 1) - 0.5) * lengths[owner]
    y = centres[owner, 0] + along * np.sin(angles[owner])
    x = centres[owner, 1] + along * np.cos(angles[owner])
    keep = canvas.contains(y, x, margin_nm=3 * fwhm_nm)
    step = lengths[owner] / (counts[owner] - 1)
    weights = brightness[owner] * step * labelling(rng, owner.size, spacing, label_density)
    canvas.add_points(y[keep], x[keep], weights[keep], fwhm_nm)


def actin(canvas, rng: np.random.Generator) -> None:
    """F-actin: a cortical meshwork of short filaments, single filaments and stress fibres.

    Filaments are 7 nm thick, 8-12 nm with the label; stress fibres are bundles of 4-16
    staggered parallel filaments 80-300 nm across, mostly along one cell axis.
    """
    height, width = canvas.extent_nm
    margin = 1000.0
    area = (height + 2 * margin) * (width + 2 * margin)
    fwhm = rng.uniform(8.0, 12.0)
    label_density = log_uniform(rng, 0.1, 0.5)
    axis = rng.uniform(0, np.pi)

    # cortical meshwork: short straight segments in every direction
    mean_length = log_uniform(rng, 400.0, 2000.0)
    count = poisson_count(rng, log_uniform(rng, 2.0, 20.0) * 1e-3 * area / mean_length)
    centres = np.stack([rng.uniform(-margin, height + margin, count),
                        rng.uniform(-margin, width + margin, count)], axis=1)
    lengths = np.clip(rng.exponential(mean_length, count), 100.0, 4 * mean_length)
    add_segments(canvas, rng, centres, rng.uniform(0, 2 * np.pi, count), lengths,
                 rng.lognormal(0.0, 0.4, count), fwhm, label_density)

    # longer single filaments, gently curved
    for _ in range(int(rng.poisson(log_uniform(rng, 0.3, 4.0) * 1e-3 * area / 5000.0))):
        chain = chain_through(rng, field_anchor(rng, canvas, margin), rng.uniform(2e3, 10e3),
                              log_uniform(rng, 5e3, 20e3), 50.0)
        add_line(canvas, rng, chain, fwhm, rng.lognormal(0.0, 0.3), label_density, 0.2)

    # stress fibres: bundles of staggered parallel filaments
    bundles = 0
    if rng.random() < 0.6:
        bundles = int(rng.poisson(log_uniform(rng, 0.3, 8.0) * area / 64e6))
    for _ in range(bundles):
        length = rng.uniform(5e3, 20e3)
        start = field_anchor(rng, canvas) - 0.5 * length * np.array(
            [np.sin(axis), np.cos(axis)]) * rng.uniform(0.5, 1.5)
        angle = axis + rng.normal(0, 0.15)
        centre, tangents, _ = resample(worm_like_chain(rng, start, angle, length, 60e3), 50.0)
        normals = np.stack([tangents[:, 1], -tangents[:, 0]], axis=1)
        bundle_width = rng.uniform(80.0, 300.0)
        for _ in range(int(rng.integers(4, 17))):
            piece = int(len(centre) * rng.uniform(0.3, 1.0))
            first = int(rng.integers(0, len(centre) - piece + 1))
            offset = rng.normal(0, bundle_width / 4)
            line = centre[first:first + piece] + offset * normals[first:first + piece]
            if len(line) >= 2:
                add_line(canvas, rng, line, fwhm, rng.lognormal(0.0, 0.3), label_density, 0.2)
