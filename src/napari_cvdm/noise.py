"""Position-deterministic starting noise: the same pixel gets the same noise in every tile.

The image plane is divided into fixed blocks, each filled from its own generator seeded by
(seed, plane, sample, block row, block column). Any tile assembles its noise from the
blocks it touches, so tiled and untiled runs start from identical noise and overlapping
tiles agree, without ever allocating noise for the whole image.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

BLOCK = 64


def _block_seed(*keys: int) -> int:
    digest = hashlib.blake2b(np.asarray(keys, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def noise_for_region(seed: int, plane: int, sample_ids: range, y: int, x: int,
                     height: int, width: int, channels: int = 1) -> torch.Tensor:
    """Standard normal noise (S, C, height, width) for the region at (y, x) of a plane."""
    by0, by1 = y // BLOCK, (y + height - 1) // BLOCK
    bx0, bx1 = x // BLOCK, (x + width - 1) // BLOCK
    canvas = torch.empty(len(sample_ids), channels, (by1 - by0 + 1) * BLOCK,
                         (bx1 - bx0 + 1) * BLOCK)
    generator = torch.Generator()
    for i, sample in enumerate(sample_ids):
        for by in range(by0, by1 + 1):
            for bx in range(bx0, bx1 + 1):
                generator.manual_seed(_block_seed(seed, plane, sample, by, bx))
                block = torch.randn(channels, BLOCK, BLOCK, generator=generator)
                oy, ox = (by - by0) * BLOCK, (bx - bx0) * BLOCK
                canvas[i, :, oy:oy + BLOCK, ox:ox + BLOCK] = block
    oy, ox = y - by0 * BLOCK, x - bx0 * BLOCK
    return canvas[:, :, oy:oy + height, ox:ox + width]
