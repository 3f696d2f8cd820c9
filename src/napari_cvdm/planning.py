"""How predict() cuts a plane: tile shape, overlap, samples and tiles per network call.

The plan comes from the memory budget of the device (a fixed activation budget on the CPU,
half the free memory on an accelerator); after running out of memory the next, smaller plan
is tried: one tile per call, then halved tiles, then halved samples per call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .devices import available_cpu_bytes, free_memory_bytes
from .model.cvdm import CVDM
from .tiling import fit_tile, round_up, tile_grid

# Activation memory per network call on the CPU: 384 MiB is 2**18 pixel-samples of the
# small preset (a 512 x 512 tile and one sample, or 128 x 128 and 16 samples) and 2**16 of
# the paper preset (256 x 256). That keeps both cores busy and the per-call overhead
# negligible; more pixels per call only add memory and lose cache (benchmarks/speed.py,
# docs/performance.md). Less where the computer has less than four times that free.
CPU_ACTIVATION_BYTES = 384 * 2**20
MAX_TILE = 1024  # the largest auto tile on an accelerator
MIN_RETRY_TILE = 128  # the out-of-memory retries halve the tile down to this


@dataclass(frozen=True)
class TilePlan:
    """How predict() cuts one plane: tile shape, overlap, samples and tiles per call."""

    tile: tuple[int, int]  # (height, width) on the output grid, multiples of the stride
    overlap: int
    batch: int  # samples per network call
    group: int  # tiles per network call (only > 1 when all samples fit in one call)
    budget: int  # pixel-samples per network call the plan was made for

    @property
    def tile_size(self) -> int:
        return max(self.tile)

    def tiles(self, height: int, width: int, stride: int):
        return tile_grid(height, width, self.tile, self.overlap, stride)


def _bytes_per_pixel_sample(model: CVDM) -> float:
    """Rough peak activation memory of one denoiser call per pixel and sample (float32)."""
    return 4.0 * model.config.denoiser.base_channels * 24


def pixel_budget(model: CVDM, device: torch.device,
                 low_precision: bool = False) -> tuple[int, int]:
    """(pixel-samples per network call, largest auto tile side) for ``device``; activations
    in bf16 or fp16 (``low_precision``) take half the memory of float32 ones."""
    stride = model.config.stride
    free = free_memory_bytes(device)
    if free is None:
        memory = CPU_ACTIVATION_BYTES
        available = available_cpu_bytes()
        if available is not None:
            memory = min(memory, available // 4)
        budget = int(memory / _bytes_per_pixel_sample(model))
        cap = None
    else:
        budget = int(free * 0.5 / _bytes_per_pixel_sample(model))
        if low_precision:
            budget *= 2
        cap = MAX_TILE
    budget = max(budget, stride * stride)
    auto_tile = max(stride, int(np.sqrt(budget)) // stride * stride)
    return budget, auto_tile if cap is None else min(cap, auto_tile)


def plan(model: CVDM, height: int, width: int, samples: int, device: torch.device,
         tile_size: int | None = None, overlap: int | None = None,
         batch_size: int | None = None, low_precision: bool = False) -> TilePlan:
    """Tile shape, overlap, samples per call and tiles per call for a (height, width) output.

    Auto tiles are fitted to the image: the fewest tiles of at most the budget's side, each
    as small as that count allows (a 512 x 512 output on the CPU is one tile, not nine
    overlapping 256 tiles). A given ``tile_size`` is used as it is (rounded to the stride).
    """
    stride = model.config.stride
    budget, auto_tile = pixel_budget(model, device, low_precision)
    base = max(stride, round_up(tile_size, stride)) if tile_size else auto_tile
    if overlap is None:
        overlap = max(stride, base // 8)
    overlap = int(min(max(overlap, 0), base // 2))
    if tile_size:
        th = min(base, round_up(height, stride))
        tw = min(base, round_up(width, stride))
    else:
        # Fit the shorter side first, then let the other side use what the budget leaves.
        longest = 4 * base if device.type == "cpu" else base
        if height <= width:
            th = fit_tile(height, base, overlap, stride)
            wide = max(base, min(longest, budget // th // stride * stride))
            tw = fit_tile(width, wide, overlap, stride)
        else:
            tw = fit_tile(width, base, overlap, stride)
            tall = max(base, min(longest, budget // tw // stride * stride))
            th = fit_tile(height, tall, overlap, stride)
    pixels = th * tw
    if batch_size is not None:
        batch, group = max(1, min(int(batch_size), samples)), 1
    else:
        batch = max(1, min(samples, budget // pixels))
        n_tiles = len(tile_grid(height, width, (th, tw), overlap, stride))
        group = max(1, min(n_tiles, budget // (pixels * batch))) if batch == samples else 1
    return TilePlan((th, tw), overlap, batch, group, budget)


def fewer_per_call(current: TilePlan) -> TilePlan | None:
    """The next plan with the same tiles after running out of memory (a lazy run's graph is
    cut into these tiles): one tile per call, then half the samples per call down to 1;
    None when none is left."""
    if current.group > 1:
        return replace(current, group=1)
    if current.batch > 1:
        return replace(current, batch=current.batch // 2, group=1)
    return None


def smaller_plan(current: TilePlan, stride: int) -> TilePlan | None:
    """The next plan to try after running out of memory, or None when none is left.

    One tile per call first, then halve the tile down to MIN_RETRY_TILE, then halve the
    samples per call down to 1 (:func:`fewer_per_call`'s steps around the tile's).
    """
    if current.group > 1:
        return fewer_per_call(current)
    floor = max(stride, round_up(MIN_RETRY_TILE, stride))
    th, tw = current.tile
    if max(th, tw) > floor:
        th = max(min(th, floor), round_up(th // 2, stride))
        tw = max(min(tw, floor), round_up(tw // 2, stride))
        overlap = min(current.overlap, min(th, tw) // 2)
        return TilePlan((th, tw), overlap, current.batch, 1, current.budget)
    return fewer_per_call(current)
