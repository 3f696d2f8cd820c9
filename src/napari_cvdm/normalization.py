"""Percentile normalisation to [-1, 1] and its inverse for means and variances (SPEC 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_PERCENTILES = (0.1, 99.9)


@dataclass(frozen=True)
class Normalization:
    """The affine map ``v -> 2 (v - low) / (high - low) - 1`` of one image."""

    low: float
    high: float

    @classmethod
    def fit(cls, image: np.ndarray, percentiles=DEFAULT_PERCENTILES) -> Normalization:
        data = np.asarray(image, dtype=np.float64)
        low, high = np.percentile(data, percentiles)
        if not high > low:
            # Sparse structure on a flat background (e.g. one bright spot) has equal
            # percentiles; the full range keeps it instead of treating the image as constant.
            low, high = data.min(), data.max()
        return cls(float(low), float(high))

    @property
    def is_constant(self) -> bool:
        return not self.high > self.low

    @property
    def half_range(self) -> float:
        """(high - low) / 2: one normalised unit in input units (1 for a constant image)."""
        return (self.high - self.low) / 2 if not self.is_constant else 1.0

    def apply(self, image: np.ndarray) -> np.ndarray:
        center = (self.high + self.low) / 2 if not self.is_constant else self.low + 1.0
        return ((np.asarray(image, dtype=np.float64) - center) / self.half_range).astype(np.float32)

    def invert_mean(self, values: np.ndarray) -> np.ndarray:
        center = (self.high + self.low) / 2 if not self.is_constant else self.low + 1.0
        return (np.asarray(values, dtype=np.float64) * self.half_range + center).astype(np.float32)

    def invert_variance(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) * self.half_range**2).astype(np.float32)
