"""Overlapping tiles and the smooth blending of per-tile statistics (SPEC section 4).

Per-tile *statistics* are blended, never individual samples: the blended variance is the
variance of the mixture, sum_i w_i (v_i + (m_i - mean)^2) / sum_i w_i, so two tiles that
agree give back their variance unchanged in the overlap (no seam in the uncertainty map).

Memory: the blender keeps only the two output maps (float32, and they can be the caller's
output arrays). The running weight under a new tile is recomputed from the tiles already
added that intersect it, so there is no whole-image weight map, and the mixture is
accumulated in normalised form (a weighted Welford update), so there is no
sum-of-squares map whose cancellation would need float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    y: int
    x: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.height), slice(self.x, self.x + self.width)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def intersection(a: Tile, b: Tile) -> Tile | None:
    """The region two tiles share, or None."""
    y0, y1 = max(a.y, b.y), min(a.y + a.height, b.y + b.height)
    x0, x1 = max(a.x, b.x), min(a.x + a.width, b.x + b.width)
    if y0 >= y1 or x0 >= x1:
        return None
    return Tile(y0, x0, y1 - y0, x1 - x0)


def tiles_along(size: int, tile: int, overlap: int) -> int:
    """How many tiles of ``tile`` pixels cover ``size`` with neighbours sharing ``overlap``."""
    if size <= tile:
        return 1
    return int(math.ceil((size - overlap) / max(tile - overlap, 1)))


def _starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Evenly spaced starts, multiples of ``align`` (but the last, which ends at the edge):
    the fewest tiles with every overlap at least ``overlap``."""
    n = tiles_along(size, tile, overlap)
    if n == 1:
        return [0]
    span = size - tile
    if tile - overlap < align:
        align = 1  # cannot keep the overlap on that grid: alignment gives way
    for count in (n, n + 1):
        starts = [int(round(i * span / (count - 1) / align)) * align for i in range(count - 1)]
        starts.append(span)
        if all(0 < b - a <= tile - overlap for a, b in zip(starts, starts[1:])):
            return starts
    # Greedy on the aligned grid (always valid, the last gap may be short).
    starts = [0]
    while starts[-1] + tile < size:
        nxt = (starts[-1] + tile - overlap) // align * align
        starts.append(min(nxt, span))
    return starts


def fit_tile(size: int, max_tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile (a multiple of ``multiple``) that needs no more tiles than
    ``max_tile`` does: no pixels wasted on tiles that reach far past the image."""
    if size <= max_tile:
        return min(round_up(size, multiple), max(max_tile, multiple))
    n = len(_starts(size, max_tile, overlap, multiple))
    tile = round_up(int(math.ceil((size + (n - 1) * overlap) / n)), multiple)
    while tile < max_tile and len(_starts(size, tile, overlap, multiple)) > n:
        tile += multiple
    return min(tile, max_tile)


def tile_grid(height: int, width: int, tile_size, overlap: int, align: int = 1) -> list[Tile]:
    """Tiles of at most ``tile_size`` covering the image, neighbours sharing >= ``overlap``.

    ``tile_size``: one side for square tiles or ``(height, width)``. ``align``: tile starts
    on multiples of it (the network's stride, so that every tile sees the same
    downsampling phase as the whole image), the last tile of a row or column excepted.
    """
    if isinstance(tile_size, (tuple, list)):
        tile_h, tile_w = (int(v) for v in tile_size)
    else:
        tile_h = tile_w = int(tile_size)
    th, tw = min(tile_h, height), min(tile_w, width)
    return [Tile(y, x, th, tw) for y in _starts(height, th, overlap, align)
            for x in _starts(width, tw, overlap, align)]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1 inside; a raised-cosine ramp over ``overlap`` pixels at edges inside the image."""
    weight = np.ones(length, dtype=np.float64)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_len) + 0.5) / ramp_len)
        if not at_start:
            weight[:ramp_len] = ramp
        if not at_end:
            weight[length - ramp_len:] = ramp[::-1]
    return weight


def _weights_1d(tile: Tile, height: int, width: int, overlap: int):
    wy = _ramp(tile.height, overlap, tile.y == 0, tile.y + tile.height >= height)
    wx = _ramp(tile.width, overlap, tile.x == 0, tile.x + tile.width >= width)
    return wy, wx


def blend_weight(tile: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    wy, wx = _weights_1d(tile, height, width, overlap)
    return np.outer(wy, wx)


class StatisticsBlender:
    """Accumulates weighted per-tile mean and variance into whole-image maps.

    ``mean`` and ``variance``: optional float arrays to accumulate into (for example views
    of the caller's output arrays); by default float32 arrays are made. ``window``: the
    region of the (height, width) plane to accumulate (default: all of it); tiles are given
    in plane coordinates and only their part inside the window is used, with the weights
    they have in the whole plane, so a window of the blend equals the same region of the
    whole blend (what a lazy, chunk-by-chunk result needs). After all tiles are added the
    maps hold the blended mean and mixture variance.
    """

    def __init__(self, height: int, width: int, overlap: int,
                 mean: np.ndarray | None = None, variance: np.ndarray | None = None,
                 dtype=np.float32, window: Tile | None = None):
        self.height, self.width, self.overlap = height, width, overlap
        self.window = window or Tile(0, 0, height, width)
        shape = (self.window.height, self.window.width)
        self.mean = np.zeros(shape, dtype) if mean is None else mean
        self.variance = np.zeros(shape, dtype) if variance is None else variance
        if self.mean.shape != shape or self.variance.shape != shape:
            raise ValueError("the accumulators must have the window's shape")
        self.mean[...] = 0
        self.variance[...] = 0
        self._added: list[tuple[Tile, np.ndarray, np.ndarray]] = []

    def _weight_before(self, tile: Tile) -> np.ndarray | None:
        """Sum of the weights of the tiles already added on ``tile``'s region (None: 0)."""
        total = None
        for other, wy, wx in self._added:
            shared = intersection(tile, other)
            if shared is None:
                continue
            if total is None:
                total = np.zeros((tile.height, tile.width), dtype=np.float32)
            y0, y1 = shared.y, shared.y + shared.height
            x0, x1 = shared.x, shared.x + shared.width
            total[y0 - tile.y:y1 - tile.y, x0 - tile.x:x1 - tile.x] += np.outer(
                wy[y0 - other.y:y1 - other.y], wx[x0 - other.x:x1 - other.x])
        return total

    def add(self, tile: Tile, mean: np.ndarray, variance: np.ndarray) -> None:
        wy, wx = _weights_1d(tile, self.height, self.width, self.overlap)
        part = intersection(tile, self.window)
        if part is None:
            return
        if part != tile:  # keep the part inside the window, with the whole tile's weights
            ty, tx = part.y - tile.y, part.x - tile.x
            mean = mean[ty:ty + part.height, tx:tx + part.width]
            variance = variance[ty:ty + part.height, tx:tx + part.width]
            wy, wx = wy[ty:ty + part.height], wx[tx:tx + part.width]
        tile = Tile(part.y - self.window.y, part.x - self.window.x, part.height, part.width)
        region_mean, region_var = self.mean[tile.slices], self.variance[tile.slices]
        before = self._weight_before(tile)
        self._added.append((tile, wy.astype(np.float32), wx.astype(np.float32)))
        if before is None:  # the first tile here: its statistics as they are
            region_mean[...] = mean
            region_var[...] = variance
            return
        # Weighted Welford update of a mixture: the new tile has weight w, the pixels
        # already covered weight ``before``; f = w / (before + w) is 1 where this tile is
        # the first. In place, a few tile-sized float32 temporaries.
        w = np.outer(wy.astype(np.float32), wx.astype(np.float32))
        before += w
        f = np.divide(w, before, out=before)
        delta = np.subtract(mean, region_mean, dtype=np.float32)
        np.multiply(delta, delta, out=w)  # w now holds delta^2
        region_mean += f * delta
        one_minus_f = np.subtract(1.0, f, out=delta, dtype=np.float32)
        region_var *= one_minus_f
        w *= one_minus_f
        w += variance
        w *= f
        region_var += w  # (1 - f) var + f (v + (1 - f) delta^2)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        np.maximum(self.variance, 0.0, out=self.variance)
        return self.mean, self.variance
