"""Percentile normalisation to [-1, 1] and its inverse for means and variances (SPEC 4).

An input to be reconstructed (``fit(..., padding=True)``, as every prediction path does) has
its padding (one exact value in flat regions along a plane's edges, :mod:`napari_cvdm.padding`)
left out of the percentiles: it is not part of the image, and counted it would set the
contrast the real pixels are reconstructed with. Training pairs (inputs and targets, made
from the same target by simulation) keep every value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import padding as _padding

DEFAULT_PERCENTILES = (0.1, 99.9)


@dataclass(frozen=True)
class Normalization:
    """The affine map ``v -> 2 (v - low) / (high - low) - 1`` of one image."""

    low: float
    high: float
    padding: float | None = None  # the value left out of the percentiles, if any ...
    shown_as: float | None = None  # ... and the level it is shown to the model at (input units)

    @classmethod
    def fit(cls, image: np.ndarray, percentiles=DEFAULT_PERCENTILES,
            padding: bool = False) -> Normalization:
        """The normalisation of ``image``; ``padding``: leave padding out (a prediction's
        input; :attr:`padding` and :attr:`shown_as` say what was left out and how
        :meth:`apply` shows it)."""
        data = np.asarray(image, dtype=np.float64)
        found = _padding.find(data, percentiles) if padding and data.ndim == 2 else None
        if found is not None and not found.left_out:
            found = None  # inside the image's range: data
        fill = None if found is None else found.value
        counted = data if found is None else data[~found.mask]
        low, high, median = np.percentile(counted, tuple(percentiles) + (50,))
        if not high > low:
            # Sparse structure on a flat background (e.g. one bright spot) has equal
            # percentiles; the full range keeps it instead of treating the image as constant.
            # (Padding is only left out where the others' percentiles differ.)
            low, high = data.min(), data.max()
        return cls(float(low), float(high), fill, None if fill is None else float(median))

    @property
    def is_constant(self) -> bool:
        # a range whose half rounds to zero (e.g. 0 and 5e-324) is constant too: dividing by
        # it gave inf and NaN (found by the property tests, session 27)
        return not (self.high - self.low) / 2 > 0

    @property
    def half_range(self) -> float:
        """(high - low) / 2: one normalised unit in input units (1 for a constant image)."""
        return (self.high - self.low) / 2 if not self.is_constant else 1.0

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image in normalised units; padding (the pixels at :attr:`padding`) at
        :attr:`shown_as`, the other pixels' median, and its one-pixel rim clipped to [-1, 1]
        (:func:`napari_cvdm.padding.shown`): the network's normalisation layers see a whole
        tile, so a flat block far from the image's level (zeros below a camera offset, a
        saturated fill) shifts the real pixels' result too; at the median it shifts it
        least (benchmarks/padding.py)."""
        center = (self.high + self.low) / 2 if not self.is_constant else self.low + 1.0
        out = ((np.asarray(image, dtype=np.float64) - center) / self.half_range).astype(np.float32)
        if self.padding is not None and out.ndim == 2:
            level = self.padding if self.shown_as is None else self.shown_as
            _padding.shown(out, image, self.padding, (level - center) / self.half_range)
        return out

    def invert_mean(self, values: np.ndarray) -> np.ndarray:
        center = (self.high + self.low) / 2 if not self.is_constant else self.low + 1.0
        return (np.asarray(values, dtype=np.float64) * self.half_range + center).astype(np.float32)

    def invert_variance(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) * self.half_range**2).astype(np.float32)
