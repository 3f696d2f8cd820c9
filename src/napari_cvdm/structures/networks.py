"""Endoplasmic reticulum: a polygonal network of tubules with three-way junctions, and sheets."""

from __future__ import annotations

import numpy as np

from .curves import labelling, log_uniform, smooth_modulation
from .render import sigma_from_fwhm


def honeycomb(rng: np.random.Generator, extent_nm, edge_nm: float, margin_nm: float):
    """A jittered, warped, randomly rotated honeycomb: vertices (N, 2) and edges (E, 2).

    Every vertex of a honeycomb joins three edges, the three-way junctions of the ER.
    """
    height, width = extent_nm
    half = 0.5 * np.hypot(height, width) + margin_nm
    a1 = np.array([0.0, np.sqrt(3) * edge_nm])
    a2 = np.array([1.5 * edge_nm, np.sqrt(3) / 2 * edge_nm])
    n = int(np.ceil(2 * half / edge_nm)) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    i, j = i.ravel(), j.ravel()
    a_sites = i[:, None] * a1 + j[:, None] * a2
    b_sites = a_sites + np.array([edge_nm, 0.0])
    side = 2 * n + 1
    index = (i + n) * side + (j + n)
    edges = [np.stack([index, len(index) + index], 1)]
    for di, dj in ((0, -1), (1, -1)):  # A(i, j) also touches B(i, j - 1) and B(i + 1, j - 1)
        ok = (i + di <= n) & (j + dj >= -n)
        other = (i[ok] + di + n) * side + (j[ok] + dj + n)
        edges.append(np.stack([index[ok], len(index) + other], 1))
    vertices = np.concatenate([a_sites, b_sites])
    theta = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    vertices = vertices @ rot.T + np.array([height / 2, width / 2])
    vertices += rng.normal(0, 0.3 * edge_nm, vertices.shape)
    for _ in range(3):  # a smooth large-scale warp breaks the lattice's regularity
        k = rng.normal(0, 2 * np.pi / log_uniform(rng, 3e3, 12e3), 2)
        shift = rng.normal(0, 0.3 * edge_nm, 2)
        vertices += np.sin(vertices @ k + rng.uniform(0, 2 * np.pi))[:, None] * shift
    edges = np.concatenate(edges)
    inside = np.all((np.abs(vertices[edges] - np.array([height / 2, width / 2]))
                     < np.array([height / 2, width / 2]) + margin_nm).reshape(len(edges), -1), 1)
    return vertices, edges[inside]


def relax(vertices: np.ndarray, edges: np.ndarray, iterations: int, step: float = 0.5):
    """Move each junction towards the mean of its neighbours, as tubule tension would.

    Tension in ER tubules drives junction angles towards 120 degrees and straightens the
    tubules through two-way points; a few Laplacian smoothing steps imitate that.
    """
    vertices = vertices.copy()
    degree = np.bincount(edges.ravel(), minlength=len(vertices)).astype(np.float64)
    for _ in range(iterations):
        total = np.zeros_like(vertices)
        np.add.at(total, edges[:, 0], vertices[edges[:, 1]])
        np.add.at(total, edges[:, 1], vertices[edges[:, 0]])
        moved = degree > 0
        mean = total[moved] / degree[moved, None]
        vertices[moved] += step * (mean - vertices[moved])
    return vertices


def er(canvas, rng: np.random.Generator) -> None:
    """ER tubules 60-100 nm wide (polygons 0.4-1.1 um across edges) with flat sheets.

    Sheets are smooth flat cisternae, dimmer per area than a tubule's peak, with bright rims
    and small fenestrations; tubules inside a sheet are removed.
    """
    extent = canvas.extent_nm
    edge_nm = rng.uniform(350.0, 800.0)
    fwhm = rng.uniform(60.0, 100.0)
    label_density = log_uniform(rng, 0.2, 1.0)
    vertices, edges = honeycomb(rng, extent, edge_nm, margin_nm=2 * edge_nm)
    edges = edges[rng.random(len(edges)) >= rng.uniform(0.0, 0.3)]  # merged polygons
    degree = np.bincount(edges.ravel(), minlength=len(vertices))
    dead_end = (degree[edges] == 1).any(axis=1)
    edges = edges[~dead_end | (rng.random(len(edges)) < 0.3)]  # a few free ends stay
    vertices = relax(vertices, edges, iterations=2, step=0.4)

    sheets = _sheets(rng, extent) if rng.random() < 0.6 else []
    if sheets:
        mid = vertices[edges].mean(axis=1)
        edges = edges[~np.any([_inside(s, mid) for s in sheets], axis=0)]

    # each tubule a gently bowed quadratic Bezier curve between its junctions
    spacing = canvas.point_spacing_nm
    p0, p2 = vertices[edges[:, 0]], vertices[edges[:, 1]]
    chord = p2 - p0
    lengths = np.hypot(chord[:, 0], chord[:, 1])
    normal = np.stack([chord[:, 1], -chord[:, 0]], 1) / np.maximum(lengths, 1e-9)[:, None]
    p1 = 0.5 * (p0 + p2) + normal * rng.normal(0, 0.08, (len(edges), 1)) * lengths[:, None]
    counts = np.maximum(2, np.ceil(lengths / spacing).astype(np.int64))
    owner = np.repeat(np.arange(len(edges)), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    t = ((np.arange(owner.size) - start) / (counts[owner] - 1))[:, None]
    points = (1 - t) ** 2 * p0[owner] + 2 * t * (1 - t) * p1[owner] + t**2 * p2[owner]
    keep = canvas.contains(points[:, 0], points[:, 1], margin_nm=2 * fwhm)
    step = lengths[owner] / (counts[owner] - 1)
    brightness = rng.lognormal(0.0, 0.25, len(edges))
    weights = brightness[owner] * step * labelling(rng, owner.size, spacing, label_density)
    weights *= smooth_modulation(rng, points[:, 0] + points[:, 1], 0.3)
    canvas.add_points(points[keep, 0], points[keep, 1], weights[keep], fwhm)

    peak = 1.0 / (np.sqrt(2 * np.pi) * sigma_from_fwhm(fwhm))  # a tubule's peak density
    level = rng.uniform(0.25, 0.5) * peak
    for i, sheet in enumerate(sheets):
        others = sheets[:i] + sheets[i + 1:]
        _render_sheet(canvas, rng, sheet, others, level * rng.uniform(0.8, 1.2), fwhm,
                      label_density)


def _sheets(rng, extent):
    """1-3 sheets: (centre, mean radius, harmonic amplitudes, phases, holes)."""
    height, width = extent
    sheets = []
    for _ in range(int(rng.integers(1, 4))):
        centre = np.array([rng.uniform(0, height), rng.uniform(0, width)])
        radius = log_uniform(rng, 300.0, 1200.0)
        amps = rng.normal(0, 0.12, 4) / np.arange(1, 5) ** 0.5
        phases = rng.uniform(0, 2 * np.pi, 4)
        holes = centre + rng.uniform(-radius, radius, (int(rng.poisson(radius / 300)), 2))
        sheets.append((centre, radius, amps, phases, holes))
    return sheets


def _radius(sheet, angle):
    _, radius, amps, phases, _ = sheet
    k = np.arange(2, 6)
    return radius * (1 + np.sum(amps * np.cos(k * angle[..., None] + phases), axis=-1))


def _inside(sheet, points):
    d = points - sheet[0]
    return np.hypot(d[:, 0], d[:, 1]) < _radius(sheet, np.arctan2(d[:, 0], d[:, 1]))


def _render_sheet(canvas, rng, sheet, others, level, fwhm, label_density):
    """A flat sheet as a smooth density with a bright tubular rim and fenestrations.

    Overlapping sheets merge: densities combine by their maximum, and a rim inside another
    sheet is left out.
    """
    centre, radius, _, _, holes = sheet
    reach = 1.6 * radius
    ys, xs, region = canvas.fine_grid_nm((centre[0] - reach, centre[0] + reach),
                                         (centre[1] - reach, centre[1] + reach))
    if ys.size == 0 or xs.size == 0:
        return
    dy, dx = ys[:, None] - centre[0], xs[None, :] - centre[1]
    edge = _radius(sheet, np.arctan2(dy, dx))
    softness = max(25.0, canvas.pixel_size_nm / 2)
    density = 1.0 / (1.0 + np.exp(np.clip((np.hypot(dy, dx) - edge) / softness, -50, 50)))
    for hole in holes:
        hole_radius = rng.uniform(40.0, 110.0)
        r = np.hypot(ys[:, None] - hole[0], xs[None, :] - hole[1])
        density *= 1.0 - 0.8 / (1.0 + np.exp(np.clip((r - hole_radius) / softness, -50, 50)))
    canvas.add_density(region, level * density, union=True)
    # the rim: a tubule running along the sheet's edge
    count = max(16, int(2 * np.pi * radius * 1.5 / canvas.point_spacing_nm))
    angle = np.linspace(0, 2 * np.pi, count)
    rim = _radius(sheet, angle)
    y, x = centre[0] + rim * np.sin(angle), centre[1] + rim * np.cos(angle)
    outside = np.ones(len(y), dtype=bool)
    for other in others:
        outside &= ~_inside(other, np.stack([y, x], 1))
    step = 2 * np.pi * radius * 1.0 / len(angle)
    weights = 0.7 * step * labelling(rng, len(angle), step, label_density)
    canvas.add_points(y[outside], x[outside], weights[outside], fwhm)
