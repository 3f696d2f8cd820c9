"""Where a training run's images come from: folders, arrays, generated structures; the split.

``TrainingData`` holds the training patch sampler and the fixed validation patches, and
re-simulates the optics (and swaps some generated images) at each ``refresh()``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .data import (PatchSampler, SyntheticPool, check_patch_fits, hq_from_arrays, load_hq,
                   load_pairs, pairs_from_arrays, simulate_pairs, split_images,
                   split_validation)
from .degradation import Degradation

SYNTHETIC_IMAGES = 48      # generated images in the training pool at any time
SYNTHETIC_SIZE = 192       # their side, high-quality pixels
SYNTHETIC_VALIDATION = 8   # generated images held out for validation (fixed for the run)


def _is_folder_pair(pairs) -> bool:
    return (isinstance(pairs, (tuple, list)) and len(pairs) == 2
            and all(isinstance(p, (str, os.PathLike)) for p in pairs))


@dataclass
class TrainingData:
    sampler: PatchSampler
    val_x: torch.Tensor
    val_y: torch.Tensor
    val_sigma: torch.Tensor  # each validation patch's PSF width (NaN for real pairs)
    scale: int
    info: dict[str, Any]
    validation_names: list[str]
    training_images: int
    _real: list = field(default_factory=list)
    _pool: SyntheticPool | None = None
    _degradation: Degradation | None = None
    _generator: torch.Generator | None = None

    @property
    def simulated(self) -> bool:
        return self._degradation is not None

    def refresh(self) -> None:
        """Fresh optics and noise for every training image; a few new generated images."""
        if not self.simulated:
            return
        if self._pool is not None:
            self._pool.refresh()
        images = self._real + (self._pool.images if self._pool is not None else [])
        self.sampler.pairs = simulate_pairs(images, self._degradation, self._generator)


def _validation_patches(val_pairs, scale: int, patch: int, count: int, seed: int):
    usable = [p for p in val_pairs if min(p.hq.shape) >= patch]
    if not usable:
        step = math.lcm(8, scale)  # a multiple of the scale, as every patch is
        patch = max(step, min(min(p.hq.shape) for p in val_pairs) // step * step)
        usable = [p for p in val_pairs if min(p.hq.shape) >= patch]
    if not usable:
        raise ValueError("the images are too small to hold out a validation patch; give larger "
                         "images or more of them")
    sampler = PatchSampler(usable, scale, patch, torch.Generator().manual_seed(seed + 1),
                           augment=False)
    return sampler.batch(count, with_psf=True)


def _folder_name(folder) -> str:
    """A data folder's own name, as recorded (``data/lq/`` and ``data/lq`` alike)."""
    return os.path.basename(os.path.normpath(os.fspath(folder)))


def fingerprint(items) -> str:
    """A digest of the training images (each ``(name, array, ...)``: names, shapes and
    pixels, as loaded): a resumed run with other images of the same names and number is
    told apart from the run it would continue (``checkpoints.check_same_run``)."""
    import hashlib

    digest = hashlib.sha256()
    for name, *arrays in items:
        digest.update(str(name).encode("utf-8", "backslashreplace") + b"\0")
        for array in arrays:
            array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
            digest.update(str(array.shape).encode() + array.tobytes())
    return digest.hexdigest()[:16]


def prepare_data(*, pairs=None, hq=None, synthetic=(), degradation: Degradation | None,
                 patch_size: int, validation_fraction: float, validation_patches: int,
                 seed: int, generator: torch.Generator) -> TrainingData:
    """Load or generate the images, hold some out, and build the patch sampler."""
    if isinstance(synthetic, str):
        raise TypeError(f"synthetic must be a list of structure kinds, e.g. [{synthetic!r}], "
                        f"not the string {synthetic!r}")
    synthetic = tuple(synthetic or ())
    given = sum(x is not None and x != () for x in (pairs, hq)) + bool(synthetic)
    if pairs is not None and (hq is not None or synthetic):
        raise ValueError("give either image pairs, or high-quality images and/or generated "
                         "structures, not both")
    if given == 0:
        raise ValueError("no training data: give pairs, high-quality images (hq) or "
                         "generated structures (synthetic)")
    if pairs is not None and degradation is not None:
        raise ValueError("degradation simulates inputs from high-quality images (hq or "
                         "synthetic); with pairs the inputs are measured, so it would be "
                         "ignored: leave it out")
    if pairs is not None:
        if _is_folder_pair(pairs):
            all_pairs, scale = load_pairs(*pairs)
            info: dict[str, Any] = {"mode": "pairs", "lq": _folder_name(pairs[0]),
                                    "hq": _folder_name(pairs[1])}
        else:
            all_pairs, scale = pairs_from_arrays(pairs)
            info = {"mode": "pairs", "source": "arrays"}
        info["images"] = len(all_pairs)
        info["fingerprint"] = fingerprint((p.name, p.lq, p.hq) for p in all_pairs)
        train, val = split_validation(all_pairs, validation_fraction, patch_size)
        check_patch_fits([(p.name, p.hq.shape) for p in all_pairs],
                         [(p.name, p.hq.shape) for p in train], patch_size)
        val_x, val_y, val_sigma = _validation_patches(val, scale, patch_size,
                                                      validation_patches, seed)
        return TrainingData(PatchSampler(train, scale, patch_size, generator), val_x, val_y,
                            val_sigma, scale, info, sorted({p.name for p in val}), len(train))

    degradation = degradation or Degradation()
    real = []
    info = {"mode": "simulated", "degradation": degradation.to_dict()}
    if hq is not None:
        if isinstance(hq, (str, os.PathLike)):
            real = load_hq(hq)
            info["hq"] = _folder_name(hq)
        else:
            real = hq_from_arrays(hq)
            info["hq"] = "arrays"
    if real:
        info["fingerprint"] = fingerprint((name, image) for image, name in real)
    train_real, val_real = split_images(real, validation_fraction, patch_size) if real else ([], [])
    check_patch_fits([(name, image.shape) for image, name in real],
                     [(name, image.shape) for image, name in train_real], patch_size)
    pool = val_synthetic = None
    if synthetic:
        pool = SyntheticPool(synthetic, SYNTHETIC_IMAGES, SYNTHETIC_SIZE, seed)
        val_synthetic = SyntheticPool(synthetic, SYNTHETIC_VALIDATION, SYNTHETIC_SIZE, seed + 7919)
        info["synthetic"] = list(synthetic)
    info["images"] = len(real) + (SYNTHETIC_IMAGES if synthetic else 0)
    val_images = val_real + (val_synthetic.images if val_synthetic else [])
    val_pairs = simulate_pairs(val_images, degradation, torch.Generator().manual_seed(seed + 2))
    val_x, val_y, val_sigma = _validation_patches(val_pairs, degradation.scale, patch_size,
                                                  validation_patches, seed)
    train_images = train_real + (pool.images if pool else [])
    sampler = PatchSampler(simulate_pairs(train_images, degradation, generator), degradation.scale,
                           patch_size, generator)
    return TrainingData(sampler, val_x, val_y, val_sigma, degradation.scale, info,
                        sorted(name for _, name in val_images), len(train_images),
                        train_real, pool, degradation, generator)
