"""Procedural high-resolution fluorescence images of cell structures, for training.

Each generator places fluorophores in physical units (nanometres) and renders them through
an anti-aliased canvas (see :mod:`.render`): the image a SIM or STED microscope would see
before its own blur, at any pixel size. See docs/structures.md for the models and sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .filaments import actin, microtubules
from .networks import er
from .organelles import ccp, mitochondria
from .render import Canvas

_GENERATORS = {
    "microtubules": microtubules,
    "actin": actin,
    "er": er,
    "ccp": ccp,
    "mitochondria": mitochondria,
}
STRUCTURES: tuple[str, ...] = tuple(_GENERATORS)
MIN_SIDE = 16
_ATTEMPTS = 20


def _check(kind: str, shape, pixel_size_nm: float) -> tuple[int, int]:
    if kind not in _GENERATORS:
        raise ValueError(f"unknown structure {kind!r}; choose one of {', '.join(STRUCTURES)}")
    if not np.isfinite(pixel_size_nm) or pixel_size_nm <= 0:
        raise ValueError(f"pixel_size_nm must be a positive number, not {pixel_size_nm!r}")
    if len(shape) != 2 or min(int(s) for s in shape) < MIN_SIDE:
        raise ValueError(f"shape must be (height, width) of at least {MIN_SIDE} pixels, "
                         f"not {shape!r}")
    return int(shape[0]), int(shape[1])


def _background(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A constant offset plus a faint smooth haze (out-of-focus and cytosolic signal)."""
    reference = max(float(np.percentile(image, 99.9)), 1e-30)
    height, width = image.shape
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    centre = rng.uniform(-0.5, 1.5, 2)
    spread = rng.uniform(0.3, 1.0)
    haze = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * spread**2))
    offset = rng.uniform(0.0, 0.04) + rng.uniform(0.0, 0.12) * haze
    return image + offset * reference


def _normalise(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]: the 99.9th percentile (or half the maximum, if higher) becomes 1."""
    scale = max(float(np.percentile(image, 99.9)), 0.5 * float(image.max()))
    if scale <= 0:
        return np.zeros(image.shape, dtype=np.float32)
    return np.clip(image / scale, 0.0, 1.0).astype(np.float32)


def generate(kind: str, shape: tuple[int, int] = (256, 256), pixel_size_nm: float = 31.0,
             rng: np.random.Generator | int | None = None, *,
             resolution_nm: float = 0.0) -> np.ndarray:
    """One image of ``kind`` (one of :data:`STRUCTURES`): float32 (H, W) in [0, 1].

    ``rng`` is a numpy Generator (advanced in place), a seed, or None for fresh entropy;
    the same seed gives the same image. ``resolution_nm`` (FWHM of a Gaussian) blurs the
    structure as the high-resolution microscope would (about 100-120 nm for SIM, 40-70 nm
    for STED); the default 0 gives the labelled structure itself.
    """
    shape = _check(kind, shape, pixel_size_nm)
    if not np.isfinite(resolution_nm) or resolution_nm < 0:
        raise ValueError(f"resolution_nm must be zero or positive, not {resolution_nm!r}")
    rng = np.random.default_rng(rng)
    for _ in range(_ATTEMPTS):  # a tiny field can miss every object: draw again
        canvas = Canvas(shape, pixel_size_nm)
        _GENERATORS[kind](canvas, rng)
        image = canvas.render(resolution_nm)
        if image.max() > 0:
            break
    return _normalise(_background(image, rng))


def generate_batch(kinds: Sequence[str], count: int, shape: tuple[int, int] = (256, 256),
                   pixel_size_nm: float = 31.0, rng: np.random.Generator | int | None = None,
                   *, resolution_nm: float = 0.0) -> list[tuple[np.ndarray, str]]:
    """``count`` (image, name) pairs, each kind drawn uniformly from ``kinds``.

    Names are like ``synthetic-microtubules-0007`` (the index in the batch).
    """
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        raise ValueError(f"kinds must name at least one of {', '.join(STRUCTURES)}")
    for kind in kinds:
        _check(kind, shape, pixel_size_nm)
    if count < 0:
        raise ValueError(f"count must be non-negative, not {count}")
    rng = np.random.default_rng(rng)
    batch = []
    for index in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        image = generate(kind, shape, pixel_size_nm, rng, resolution_nm=resolution_nm)
        batch.append((image, f"synthetic-{kind}-{index:04d}"))
    return batch


__all__ = ["STRUCTURES", "generate", "generate_batch"]
