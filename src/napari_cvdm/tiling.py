"""Overlapping tiles and the smooth blending of per-tile statistics (SPEC section 4).

Per-tile *statistics* are blended, never individual samples: the blended variance is the
variance of the mixture, sum_i w_i (v_i + m_i^2) / sum_i w_i - mean^2, so two tiles that
agree give back their variance unchanged in the overlap (no seam in the uncertainty map).
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


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Tiles of at most ``tile_size`` covering the image, neighbours sharing >= ``overlap``."""
    th, tw = min(tile_size, height), min(tile_size, width)
    return [Tile(y, x, th, tw)
            for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


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


def blend_weight(tile: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    wy = _ramp(tile.height, overlap, tile.y == 0, tile.y + tile.height >= height)
    wx = _ramp(tile.width, overlap, tile.x == 0, tile.x + tile.width >= width)
    return np.outer(wy, wx)


class StatisticsBlender:
    """Accumulates weighted per-tile mean and variance into whole-image maps."""

    def __init__(self, height: int, width: int, overlap: int):
        self.height, self.width, self.overlap = height, width, overlap
        self.weight = np.zeros((height, width), dtype=np.float64)
        self.first = np.zeros((height, width), dtype=np.float64)
        self.second = np.zeros((height, width), dtype=np.float64)

    def add(self, tile: Tile, mean: np.ndarray, variance: np.ndarray) -> None:
        w = blend_weight(tile, self.height, self.width, self.overlap)
        region = tile.slices
        self.weight[region] += w
        self.first[region] += w * mean
        self.second[region] += w * (variance + mean.astype(np.float64) ** 2)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.first / self.weight
        variance = np.maximum(self.second / self.weight - mean**2, 0.0)
        return mean, variance
