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

from .devices import (available_cpu_bytes, free_memory_bytes, release_cpu_memory,
                      resolve_device, tune_cpu_allocator)
from .errors import Cancelled
from .model.cvdm import CVDM
from .noise import noise_for_region
from .normalization import Normalization
from .resampling import upsample
from .precision import Precision
from .sampling import SAMPLERS, evaluations, sample
from .tiling import StatisticsBlender, Tile, fit_tile, round_up, tile_grid
from .validation import check_image, check_plane

ProgressCallback = Callable[[int, int], Any]
CancelCheck = threading.Event | Callable[[], bool] | None

# Activation memory per network call on the CPU: 384 MiB is 2**18 pixel-samples of the
# small preset (a 512 x 512 tile and one sample, or 128 x 128 and 16 samples) and 2**16 of
# the paper preset (256 x 256). That keeps both cores busy and the per-call overhead
# negligible; more pixels per call only add memory and lose cache (benchmarks/speed.py,
# docs/performance.md). Less where the computer has less than four times that free.
CPU_ACTIVATION_BYTES = 384 * 2**20
CPU_PIXELS_PER_BATCH = 2**18  # the small preset's budget, for reference
MAX_TILE = 1024  # the largest auto tile on an accelerator
MIN_RETRY_TILE = 128  # the out-of-memory retries halve the tile down to this


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


def _pixel_budget(model: CVDM, device: torch.device) -> tuple[int, int]:
    """(pixel-samples per network call, largest auto tile side) for ``device``."""
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
        if device.type == "cuda":
            budget *= 2  # half-precision activations
        cap = MAX_TILE
    budget = max(budget, stride * stride)
    auto_tile = max(stride, int(np.sqrt(budget)) // stride * stride)
    return budget, auto_tile if cap is None else min(cap, auto_tile)


def plan(model: CVDM, height: int, width: int, samples: int, device: torch.device,
         tile_size: int | None = None, overlap: int | None = None,
         batch_size: int | None = None) -> TilePlan:
    """Tile shape, overlap, samples per call and tiles per call for a (height, width) output.

    Auto tiles are fitted to the image: the fewest tiles of at most the budget's side, each
    as small as that count allows (a 512 x 512 output on the CPU is one tile, not nine
    overlapping 256 tiles). A given ``tile_size`` is used as it is (rounded to the stride).
    """
    stride = model.config.stride
    budget, auto_tile = _pixel_budget(model, device)
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


def plan_tiles(model: CVDM, height: int, width: int, samples: int, device: torch.device,
               tile_size: int | None) -> tuple[int, int]:
    """(tile size, samples per batch) from the image, the device and its free memory."""
    p = plan(model, height, width, samples, device, tile_size)
    return p.tile_size, p.batch


def _smaller_plan(current: TilePlan, stride: int) -> TilePlan | None:
    """The next plan to try after running out of memory, or None when none is left.

    One tile per call first, then halve the tile down to MIN_RETRY_TILE, then halve the
    samples per call down to 1.
    """
    if current.group > 1:
        return TilePlan(current.tile, current.overlap, current.batch, 1, current.budget)
    floor = max(stride, round_up(MIN_RETRY_TILE, stride))
    th, tw = current.tile
    if max(th, tw) > floor:
        th = max(min(th, floor), round_up(th // 2, stride))
        tw = max(min(tw, floor), round_up(tw // 2, stride))
        overlap = min(current.overlap, min(th, tw) // 2)
        return TilePlan((th, tw), overlap, current.batch, 1, current.budget)
    if current.batch > 1:
        return TilePlan(current.tile, current.overlap, current.batch // 2, 1, current.budget)
    return None


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # MPS reports running out of memory as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc)


def _release_accelerator_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


class _CompiledDenoiser:
    """``torch.compile`` of ``net.denoise``, falling back to eager if compiling fails."""

    def __init__(self, net: CVDM):
        self.net = net
        self.compiled = torch.compile(net.denoise)
        self.failed = False

    def __call__(self, z, inputs, gamma):
        if not self.failed:
            try:
                return self.compiled(z, inputs, gamma)
            except Exception as exc:  # noqa: BLE001  (no compiler, unsupported backend, ...)
                if _is_out_of_memory(exc):
                    raise
                import warnings

                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); "
                              "running the model uncompiled", RuntimeWarning, stacklevel=2)
                self.failed = True
        return self.net.denoise(z, inputs, gamma)


def predict(image, model="demo", samples: int = 8, steps: int = 50, eta: float = 1.0,
            tile_size: int | None = None, overlap: int | None = None, device="auto",
            seed: int | None = None, progress: ProgressCallback | None = None,
            cancel: CancelCheck = None, sampler: str = "ddim",
            batch_size: int | None = None, half: bool | None = None,
            compile: bool = False) -> PredictionResult:  # noqa: A002
    """Reconstruct ``image`` with CVDM; return the per-pixel mean and variance.

    ``image``: 2D, or nD with the last two axes Y, X (leading axes plane by plane); any
    real dtype. Outputs have the input's shape with the last two axes times
    ``model.config.scale``. ``sampler="reference"`` runs the authors' T-step ancestral
    sampler and ignores ``steps``. ``tile_size`` and ``overlap`` are on the output grid.
    ``batch_size``: samples per network call (default: from the memory budget).
    ``half``: float16 autocast, CUDA only (default on CUDA). ``compile``: run the denoiser
    through ``torch.compile`` (first call slow; worth it for long runs on a GPU).
    On a GPU that runs out of memory the tiles, then the samples per call, are made
    smaller and the plane is run again; RuntimeError if even the smallest does not fit.
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
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
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
    current = plan(net, height, width, samples, dev, tile_size, overlap, batch_size)
    plane_index = list(np.ndindex(*shape[:-2]))
    per_chunk = evaluations(steps, sampler, net.config.timesteps)

    def plane_evaluations(p: TilePlan) -> int:
        tiles = len(tile_grid(height, width, p.tile, p.overlap, net.config.stride))
        return tiles * -(-samples // p.batch) * per_chunk

    total = len(plane_index) * plane_evaluations(current)
    done = 0
    stats = {"network_calls": 0, "retries": 0}

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
    channels_last = dev.type == "cpu"
    # Put the weights back as they were: NCHW unless the caller had made them NHWC.
    restore_format = channels_last and all(
        p.is_contiguous() for p in net.parameters() if p.dim() == 4)
    try:
        net.to(dev)
    except Exception as exc:
        if _is_out_of_memory(exc):
            _release_accelerator_memory(dev)
            raise RuntimeError(f"the model does not fit in the memory of {dev}; try --device "
                               "cpu") from None
        raise
    cudnn_benchmark = torch.backends.cudnn.benchmark
    denoise = _CompiledDenoiser(net) if compile else None
    try:
        net.eval()
        if channels_last:
            # Weights and activations both NHWC: oneDNN's fast convolutions, no reorders.
            net.to(memory_format=torch.channels_last)
            tune_cpu_allocator()
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every tile has the same shape
        with torch.inference_mode():
            for p, index in enumerate(plane_index):
                plane = check_plane(image[index] if index else image, index)
                norm = Normalization.fit(plane)
                if norm.is_constant:
                    # Nothing to resolve: the reconstruction is the constant, with certainty.
                    mean_out[index] = plane.flat[0]
                    var_out[index] = 0.0
                    done += plane_evaluations(current)
                    if progress is not None:
                        progress(done, total)
                    continue
                x_plane = torch.from_numpy(norm.apply(plane))
                del plane
                while True:
                    try:
                        _predict_plane(net, x_plane, mean_out[index], var_out[index], current,
                                       samples, seed, p, steps, eta, sampler, on_evaluation,
                                       use_half, dev, channels_last, denoise, stats)
                        break
                    except Exception as exc:
                        if not _is_out_of_memory(exc):
                            raise
                    # Outside the except clause: the traceback (and the tensors its frames
                    # hold) is gone, so the memory can really be released.
                    _release_accelerator_memory(dev)
                    smaller = _smaller_plan(current, net.config.stride)
                    if smaller is None:
                        raise RuntimeError(
                            f"out of GPU memory even with tile {current.tile_size} and "
                            "batch 1; try --device cpu or a smaller --tile-size")
                    current = smaller
                    stats["retries"] += 1
                    # Progress never goes back: the rest is counted from here.
                    total = done + (len(plane_index) - p) * plane_evaluations(current)
                # Back to input units, in row blocks (no whole-image float64 temporaries).
                m_view, v_view = mean_out[index], var_out[index]
                rows = max(1, 2**16 // width)
                for r in range(0, height, rows):
                    m_view[r:r + rows] = norm.invert_mean(m_view[r:r + rows])
                    v_view[r:r + rows] = norm.invert_variance(v_view[r:r + rows])
    finally:
        if restore_format:
            net.to(memory_format=torch.contiguous_format)
        if channels_last:
            release_cpu_memory()
        torch.backends.cudnn.benchmark = cudnn_benchmark
        net.train(was_training)
    calls = stats["network_calls"]
    return PredictionResult(mean_out, var_out, samples, steps if sampler == "ddim" else
                            net.config.timesteps, eta, sampler, str(dev), scale, seed,
                            current.tile_size, time.perf_counter() - started,
                            {"tiles": len(tile_grid(height, width, current.tile, current.overlap,
                                                    net.config.stride)),
                             "tile_shape": current.tile, "batch": current.batch,
                             "group": current.group, "overlap": current.overlap,
                             "evaluations": total, "network_calls": calls,
                             "retries": stats["retries"], "half": use_half,
                             "compiled": bool(compile and denoise is not None
                                              and not denoise.failed)})


def _conditioning(x_plane: torch.Tensor, tile: Tile, scale: int) -> torch.Tensor:
    """The tile's region of the input resampled onto the output grid, (height, width).

    Upsamples only the input pixels the tile needs, plus a margin wider than the bicubic
    kernel, so the result equals the same region of the whole upsampled plane (which is
    never built: it would be a full-size float32 image).
    """
    if scale == 1:
        return x_plane[tile.slices]
    margin = 3
    h_in, w_in = x_plane.shape
    y0 = max(tile.y // scale - margin, 0)
    x0 = max(tile.x // scale - margin, 0)
    y1 = min(-(-(tile.y + tile.height) // scale) + margin, h_in)
    x1 = min(-(-(tile.x + tile.width) // scale) + margin, w_in)
    up = upsample(x_plane[y0:y1, x0:x1][None, None], scale)[0, 0]
    oy, ox = tile.y - y0 * scale, tile.x - x0 * scale
    return up[oy:oy + tile.height, ox:ox + tile.width]


def _predict_plane(net: CVDM, x_plane: torch.Tensor, mean_view: np.ndarray,
                   var_view: np.ndarray, p: TilePlan, samples: int, seed: int, plane: int,
                   steps: int, eta: float, sampler: str, on_evaluation, half: bool,
                   device: torch.device, channels_last: bool, denoise, stats: dict) -> None:
    """All tiles of one plane, blended into ``mean_view`` and ``var_view`` (normalised)."""
    height, width = mean_view.shape
    tiles = tile_grid(height, width, p.tile, p.overlap, net.config.stride)
    chunks = [range(i, min(i + p.batch, samples)) for i in range(0, samples, p.batch)]
    blender = StatisticsBlender(height, width, p.overlap, mean=mean_view, variance=var_view)
    generator = torch.Generator(device=device)
    for first in range(0, len(tiles), p.group):
        group = tiles[first:first + p.group]
        generator.manual_seed((seed * 1_000_003 + plane * 10_007 + first) % (2**63))
        means, variances = _tile_statistics(net, x_plane, group, chunks, seed, plane, steps,
                                            eta, sampler, generator, on_evaluation, half,
                                            device, channels_last, denoise, stats)
        for i, t in enumerate(group):
            blender.add(t, means[i], variances[i])
    blender.result()


def _tile_statistics(net: CVDM, x_plane: torch.Tensor, tiles: list[Tile], chunks: list[range],
                     seed: int, plane: int, steps: int, eta: float, sampler: str,
                     generator: torch.Generator, on_evaluation, half: bool,
                     device: torch.device, channels_last: bool = False, denoise=None,
                     stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance over all samples of equally sized tiles run together, (G, h, w).

    x-only work (mean network, lambda) runs once per group of tiles, then the samples run
    in chunks merged by Chan et al.'s streaming update: memory does not grow with samples.
    """
    stride = net.config.stride
    th, tw = tiles[0].height, tiles[0].width
    ph, pw = round_up(th, stride), round_up(tw, stride)
    scale = net.config.scale
    x = torch.stack([_conditioning(x_plane, t, scale) for t in tiles])[:, None]
    if (ph, pw) != (th, tw):
        # Pad (reflect where possible) to the network's stride, then crop: never resize.
        mode = "reflect" if ph - th < th and pw - tw < tw else "replicate"
        x = F.pad(x, (0, pw - tw, 0, ph - th), mode=mode)
    x = x.to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    prepared = net.prepare(x)  # once per tile group, shared by every chunk of samples
    n_tiles = len(tiles)

    def tick() -> None:  # progress counts tile-evaluations, however tiles are grouped
        for _ in range(n_tiles):
            on_evaluation()
        if stats is not None:
            stats["network_calls"] += 1

    acc = torch.float32 if device.type == "mps" else torch.float64
    count, mean, m2 = 0, None, None
    for chunk in chunks:
        noise = torch.stack([noise_for_region(seed, plane, chunk, t.y, t.x, ph, pw)
                             for t in tiles], dim=1).to(device)  # (S, G, 1, ph, pw)
        out = sample(net, x, noise, steps=steps, eta=eta, sampler=sampler,
                     generator=generator, on_evaluation=tick,
                     precision=Precision("fp16", device.type) if half else None,
                     prepared=prepared, denoise=denoise)
        out = out[:, :, 0, :th, :tw].to(acc)
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
