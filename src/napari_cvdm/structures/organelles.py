"""Membrane organelles: clathrin-coated pits and vesicles, and hollow mitochondria."""

from __future__ import annotations

import numpy as np

from .curves import chain_through, field_anchor, labelling, log_uniform, poisson_count, resample


def ring_points(rng, centre, diameter_nm: float, spacing_nm: float, arc: float = 2 * np.pi):
    """Points evenly spaced on a circle (or an arc of ``arc`` radians) of ``diameter_nm``."""
    count = max(8, int(np.ceil(arc * diameter_nm / 2 / spacing_nm)))
    angle = rng.uniform(0, 2 * np.pi) + np.linspace(0, arc, count, endpoint=False)
    return centre[0] + diameter_nm / 2 * np.sin(angle), centre[1] + diameter_nm / 2 * np.cos(angle)


def disc_points(rng, centre, diameter_nm: float, spacing_nm: float):
    """Points filling a disc evenly (jittered grid)."""
    count = max(8, int(np.pi * (diameter_nm / 2) ** 2 / spacing_nm**2))
    r = diameter_nm / 2 * np.sqrt(rng.random(count))
    angle = rng.uniform(0, 2 * np.pi, count)
    return centre[0] + r * np.sin(angle), centre[1] + r * np.cos(angle)


def ccp(canvas, rng: np.random.Generator) -> None:
    """Clathrin-coated pits and vesicles, 60-200 nm across: rings, arcs and spots.

    A pit seen from below is a ring (the coat around a dimmer neck); early pits are arcs,
    small vesicles and pits seen edge-on are spots. Coat about 20-35 nm thick (FWHM).
    """
    height, width = canvas.extent_nm
    count = poisson_count(rng, log_uniform(rng, 0.3, 4.0) * height * width * 1e-6)
    spacing = canvas.point_spacing_nm
    label_density = log_uniform(rng, 0.05, 0.4)
    coat = rng.uniform(20.0, 35.0)  # one blur per image: each distinct width is a render pass
    for _ in range(count):
        centre = field_anchor(rng, canvas)
        diameter = rng.uniform(60.0, 200.0)
        kind = rng.random()
        if kind < 0.5:
            y, x = ring_points(rng, centre, diameter - coat, spacing)
        elif kind < 0.65:
            arc = rng.uniform(np.pi, 1.7 * np.pi)
            y, x = ring_points(rng, centre, diameter - coat, spacing, arc)
        else:
            y, x = disc_points(rng, centre, diameter - coat, spacing)
        # a bigger pit holds more clathrin: total ~ coat area, with a random labelling level
        total = (diameter / 100.0) ** 2 * rng.lognormal(0.0, 0.4) * 400.0
        weights = labelling(rng, len(y), spacing, label_density * 5)
        canvas.add_points(y, x, total * weights / len(y), coat)


def tube_surface_points(rng, centreline: np.ndarray, radius_nm: float, spacing_nm: float,
                        lumen_fraction: float = 0.0):
    """Projected fluorophores of a tube's outer membrane, closed by hemispherical caps.

    The membrane is sampled evenly over the 3D surface and projected onto the image plane,
    which makes the rim bright and the middle dim, as in a labelled outer membrane.
    ``lumen_fraction`` adds that share of points filling the tube's volume (matrix).
    """
    points, tangents, arc = resample(centreline, spacing_nm)
    normals = np.stack([tangents[:, 1], -tangents[:, 0]], axis=1)
    per_station = max(8, int(2 * np.pi * radius_nm / spacing_nm))
    theta = rng.uniform(0, 2 * np.pi, (len(points), per_station))
    station = np.repeat(np.arange(len(points)), per_station)
    offset = radius_nm * np.cos(theta).ravel()
    along = rng.uniform(-0.5, 0.5, station.size) * (arc[-1] / max(len(points) - 1, 1))
    body = points[station] + offset[:, None] * normals[station] + along[:, None] * tangents[station]
    caps = []
    cap_count = max(8, int(2 * np.pi * radius_nm**2 / spacing_nm**2))
    for end, outward in ((0, -1.0), (-1, 1.0)):
        cos_polar = rng.random(cap_count)  # uniform on the hemisphere
        sin_polar = np.sqrt(1 - cos_polar**2)
        phi = rng.uniform(0, 2 * np.pi, cap_count)
        caps.append(points[end] + (outward * radius_nm * cos_polar)[:, None] * tangents[end]
                    + (radius_nm * sin_polar * np.cos(phi))[:, None] * normals[end])
    surface = np.concatenate([body, *caps])
    if lumen_fraction <= 0:
        return surface
    fill = int(lumen_fraction * len(surface))
    pick = rng.integers(0, len(points), fill)
    across = radius_nm * np.sqrt(rng.random(fill)) * np.cos(rng.uniform(0, 2 * np.pi, fill))
    return np.concatenate([surface, points[pick] + across[:, None] * normals[pick]])


def mitochondria(canvas, rng: np.random.Generator) -> None:
    """Curved tubules 250-500 nm wide and 1-5 um long with a labelled outer membrane."""
    height, width = canvas.extent_nm
    count = poisson_count(rng, log_uniform(rng, 0.05, 0.4) * height * width * 1e-6)
    membrane = rng.uniform(30.0, 50.0)
    spacing = max(canvas.fine_nm, membrane / 3)  # stratified points, smooth after the blur
    lumen = rng.uniform(0.0, 0.15)
    for _ in range(count):
        radius = rng.uniform(125.0, 250.0)
        length = rng.uniform(1e3, 5e3)
        centreline = chain_through(rng, field_anchor(rng, canvas), length,
                                   log_uniform(rng, 2e3, 8e3), 50.0)
        # smooth the chain so that its bends are gentle on the scale of the tube's radius
        kernel = np.ones(5) / 5
        smooth = np.stack([np.convolve(np.pad(c, 2, mode="edge"), kernel, "valid")
                           for c in centreline.T], 1)
        points = tube_surface_points(rng, smooth, radius, spacing, lumen)
        keep = canvas.contains(points[:, 0], points[:, 1], margin_nm=3 * membrane)
        brightness = rng.lognormal(0.0, 0.3) * spacing**2 * 0.05
        canvas.add_points(points[keep, 0], points[keep, 1], brightness, membrane)
