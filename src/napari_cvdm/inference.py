"""predict(): from a microscope image to the CVDM mean and variance, in the input's units.

One code path for the widget, the command line and scripts: progress and cancellation
come in as plain callables. Per plane: percentile normalisation, resampling onto the
model's finer grid, overlapping tiles, samples drawn in batches with streaming statistics
(memory does not grow with the number of samples), blending of per-tile statistics.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .devices import free_memory_bytes, resolve_device
from .errors import Cancelled
from .model.cvdm import CVDM
from .noise import noise_for_region
from .normalization import Normalization
from .resampling import upsample
from .sampling import SAMPLERS, evaluations, sample
from .tiling import StatisticsBlender, Tile, round_up, tile_grid
from .validation import check_image, check_plane

ProgressCallback = Callable[[int, int], Any]
CancelCheck = threading.Event | Callable[[], bool] | None

# Pixel-samples per denoiser call on the CPU: large enough to keep both cores busy, small
# enough to bound memory (measured in benchmarks/speed.py; see docs/performance.md).
CPU_PIXELS_PER_BATCH = 2**18
CPU_TILE = 256
MAX_TILE = 1024


@dataclass
class PredictionResult:
    """Per-pixel mean and variance of the CVDM samples, float32, in input units."""

    mean: np.ndarray
    variance: np.ndarray
    samples: int
    steps: int
    eta: float
    sampler: str
    device: str
    scale: int
    seed: int
    tile_size: int
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)


def _cancel_requested(cancel: CancelCheck) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _resolve_model(model) -> CVDM:
    if isinstance(model, CVDM):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .io import load_model

        return load_model(model)
    raise ValueError(f"model must be a CVDM, a bundled model name or a file path, not "
                     f"{type(model).__name__}")


def _bytes_per_pixel_sample(model: CVDM) -> float:
    """Rough peak activation memory of one denoiser call per pixel and sample (float32)."""
    base = model.config.denoiser.base_channels
    return 4.0 * base * 24


def plan_tiles(model: CVDM, height: int, width: int, samples: int, device: torch.device,
               tile_size: int | None) -> tuple[int, int]:
    """(tile size, samples per batch) from the image, the device and its free memory."""
    stride = model.config.stride
    free = free_memory_bytes(device)
    if free is None:
        budget = CPU_PIXELS_PER_BATCH
        auto_tile = CPU_TILE
    else:
        budget = int(free * 0.5 / _bytes_per_pixel_sample(model))
        if device.type == "cuda":
            budget *= 2  # half-precision activations
        auto_tile = int(np.sqrt(max(budget, stride * stride)))
        auto_tile = min(MAX_TILE, max(stride, auto_tile // stride * stride))
    tile = tile_size if tile_size else auto_tile
    tile = max(stride, round_up(tile, stride))
    tile = min(tile, round_up(max(height, width), stride))
    batch = max(1, min(samples, budget // (tile * tile)))
    return tile, batch


def predict(image, model="demo", samples: int = 8, steps: int = 50, eta: float = 1.0,
            tile_size: int | None = None, overlap: int | None = None, device="auto",
            seed: int | None = None, progress: ProgressCallback | None = None,
            cancel: CancelCheck = None, sampler: str = "ddim",
            batch_size: int | None = None, half: bool | None = None) -> PredictionResult:
    """Reconstruct ``image`` with CVDM; return the per-pixel mean and variance.

    ``image``: 2D, or nD with the last two axes Y, X (leading axes plane by plane); any
    real dtype. Outputs have the input's shape with the last two axes times
    ``model.config.scale``. ``sampler="reference"`` runs the authors' T-step ancestral
    sampler and ignores ``steps``. ``tile_size`` and ``overlap`` are on the output grid.
    """
    started = time.perf_counter()
    shape, dtype = check_image(image)
    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    if sampler == "ddim" and steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be between 0 and 1, not {eta}")
    if tile_size is not None and tile_size < 8:
        raise ValueError(f"tile_size must be at least 8 pixels, not {tile_size}")
    net = _resolve_model(model)
    if net.config.channels != 1:
        raise ValueError(f"this model expects {net.config.channels}-channel images; "
                         "napari-cvdm predicts single-channel planes")
    dev = resolve_device(device)
    use_half = (dev.type == "cuda") if half is None else bool(half and dev.type == "cuda")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))

    scale = net.config.scale
    height, width = shape[-2] * scale, shape[-1] * scale
    tile, batch = plan_tiles(net, height, width, samples, dev, tile_size)
    if batch_size is not None:
        batch = max(1, min(int(batch_size), samples))
    if overlap is None:
        overlap = max(net.config.stride, tile // 8)
    overlap = int(min(max(overlap, 0), tile // 2))
    tiles = tile_grid(height, width, tile, overlap)
    plane_index = list(np.ndindex(*shape[:-2]))
    chunks = [range(i, min(i + batch, samples)) for i in range(0, samples, batch)]
    per_chunk = evaluations(steps, sampler, net.config.timesteps)
    total = len(plane_index) * len(tiles) * len(chunks) * per_chunk
    done = 0

    def on_evaluation() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)
        if _cancel_requested(cancel):
            raise Cancelled("prediction cancelled")

    if _cancel_requested(cancel):
        raise Cancelled("prediction cancelled")

    mean_out = np.empty(shape[:-2] + (height, width), dtype=np.float32)
    var_out = np.empty_like(mean_out)
    was_training = net.training
    net.to(dev).eval()
    try:
        with torch.inference_mode():
            for p, index in enumerate(plane_index):
                plane = check_plane(image[index] if index else image, index)
                norm = Normalization.fit(plane)
                if norm.is_constant:
                    # Nothing to resolve: the reconstruction is the constant, with certainty.
                    mean_out[index] = plane.flat[0]
                    var_out[index] = 0.0
                    done += len(tiles) * len(chunks) * per_chunk
                    if progress is not None:
                        progress(done, total)
                    continue
                x_full = upsample(torch.from_numpy(norm.apply(plane))[None, None], scale)[0, 0].numpy()
                blender = StatisticsBlender(height, width, overlap)
                generator = torch.Generator(device=dev)
                for t_index, t in enumerate(tiles):
                    generator.manual_seed((seed * 1_000_003 + p * 10_007 + t_index) % (2**63))
                    m, v = _tile_statistics(net, x_full, t, chunks, seed, p, steps, eta,
                                            sampler, generator, on_evaluation, use_half, dev)
                    blender.add(t, m, v)
                mean_n, var_n = blender.result()
                mean_out[index] = norm.invert_mean(mean_n)
                var_out[index] = norm.invert_variance(var_n)
    finally:
        net.train(was_training)
    return PredictionResult(mean_out, var_out, samples, steps if sampler == "ddim" else
                            net.config.timesteps, eta, sampler, str(dev), scale, seed, tile,
                            time.perf_counter() - started,
                            {"tiles": len(tiles), "batch": batch, "overlap": overlap,
                             "evaluations": total, "half": use_half})


def _tile_statistics(net: CVDM, x_full: np.ndarray, tile: Tile, chunks: list[range], seed: int,
                     plane: int, steps: int, eta: float, sampler: str,
                     generator: torch.Generator, on_evaluation, half: bool,
                     device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance over all samples of one tile (Chan et al.'s streaming merge)."""
    stride = net.config.stride
    region = x_full[tile.slices]
    ph, pw = round_up(tile.height, stride), round_up(tile.width, stride)
    x = torch.from_numpy(np.ascontiguousarray(region))[None, None]
    if (ph, pw) != (tile.height, tile.width):
        # Pad (reflect where possible) to the network's stride, then crop: never resize.
        mode = "reflect" if ph - tile.height < tile.height and pw - tile.width < tile.width \
            else "replicate"
        x = F.pad(x, (0, pw - tile.width, 0, ph - tile.height), mode=mode)
    x = x.to(device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    count, mean, m2 = 0, None, None
    for chunk in chunks:
        noise = noise_for_region(seed, plane, chunk, tile.y, tile.x, ph, pw).to(device)
        out = sample(net, x, noise[:, None], steps=steps, eta=eta, sampler=sampler,
                     generator=generator, on_evaluation=on_evaluation, autocast=half)
        out = out[:, 0, 0, :tile.height, :tile.width].double()
        n = out.shape[0]
        c_mean = out.mean(0)
        c_m2 = ((out - c_mean) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = n, c_mean, c_m2
        else:
            delta = c_mean - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + c_m2 + delta**2 * (count * n / total)
            count = total
    variance = m2 / max(count - 1, 1)
    return mean.cpu().numpy(), variance.cpu().numpy()
