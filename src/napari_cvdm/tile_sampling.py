"""One plane of a prediction: tiles sampled in batches, streaming statistics, blending.

x-only work (the mean network, lambda) runs once per group of tiles (and per group of its
turned copies, symmetry.py), then the samples run in chunks merged by Chan et al.'s
streaming update, so memory does not grow with the number of samples; the per-tile mean and
variance are blended into the plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import symmetry
from .errors import CancelCheck, Cancelled, cancel_requested
from .model.cvdm import CVDM
from .noise import noise_for_region
from .normalization import DEFAULT_PERCENTILES
from .planning import TilePlan
from .precision import Precision
from .resampling import upsample
from .sampling import evaluations, sample
from .settings import PredictSettings
from .spikes import block_excess
from .tiling import StatisticsBlender, Tile, round_up


@dataclass
class Run:
    """The state of one predict() call: what runs, how, and how far it has come."""

    net: CVDM
    device: torch.device
    precision: Precision
    settings: PredictSettings
    seed: int
    plan: TilePlan
    height: int  # output plane size
    width: int
    progress: Any = None  # callable(done, total) or None
    cancel: CancelCheck = None
    denoise: Any = None  # a compiled denoiser, or None
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES  # the model's normalisation
    calibration: dict | None = None  # the model's std -> error map (calibration.py)
    source: Any = None  # what the caller named the model by (a name, a file or the CVDM)
    psf_from: str | None = None  # where the told PSF width came from (psf_width.resolve)
    input_warnings: tuple[str, ...] = ()  # why the result may not be trusted (domain.py)
    done: int = 0
    total: int = 0
    network_calls: int = 0
    retries: int = 0

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cpu"

    @property
    def psf_sigma(self) -> float | None:
        """The PSF width the network is told (None: a blind model); ``_prepare`` has put the
        resolved width (psf_width.resolve) into the settings where none was given."""
        return self.settings.psf_sigma if self.net.config.psf_conditioned else None

    def tiles(self) -> list[Tile]:
        return self.plan.tiles(self.height, self.width, self.net.config.stride)

    def plane_evaluations(self) -> int:
        """Denoiser evaluations (counted per tile) for one plane with the current plan."""
        s = self.settings
        per_sample = evaluations(s.steps, s.sampler, self.net.config.timesteps)
        calls = symmetry.network_calls(s.samples, self.plan.batch, s.augment)
        return len(self.tiles()) * calls * per_sample

    def check_cancel(self) -> None:
        if cancel_requested(self.cancel):
            raise Cancelled("prediction cancelled")

    def advance(self, evaluations_done: int = 1) -> None:
        """Count evaluations, report progress, and stop here if cancelled."""
        self.done += evaluations_done
        if self.progress is not None:
            self.progress(self.done, self.total)
        self.check_cancel()


def conditioning(x_plane: torch.Tensor, tile: Tile, scale: int,
                 origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The tile's region of the input resampled onto the output grid, (height, width).

    Upsamples only the input pixels the tile needs, plus a margin wider than the bicubic
    kernel, so the result equals the same region of the whole upsampled plane (which is
    never built: it would be a full-size float32 image). ``x_plane`` may be a part of the
    plane that starts at input pixel ``origin`` and holds at least :func:`input_region`
    of the tile (a lazy run reads no more than that); the tile is in plane coordinates.
    """
    if scale == 1:
        oy, ox = origin
        return x_plane[tile.y - oy:tile.y - oy + tile.height, tile.x - ox:tile.x - ox + tile.width]
    h_in, w_in = x_plane.shape
    y0, y1, x0, x1 = input_region(tile, scale, origin[0] + h_in, origin[1] + w_in)
    region = x_plane[y0 - origin[0]:y1 - origin[0], x0 - origin[1]:x1 - origin[1]]
    up = upsample(region[None, None], scale)[0, 0]
    oy, ox = tile.y - y0 * scale, tile.x - x0 * scale
    return up[oy:oy + tile.height, ox:ox + tile.width]


def input_region(tile: Tile, scale: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the input pixels of a (height, width) input plane that the tile's
    conditioning reads (its footprint plus a margin wider than the bicubic kernel)."""
    margin = 3 if scale > 1 else 0
    return (max(tile.y // scale - margin, 0),
            min(-(-(tile.y + tile.height) // scale) + margin, height),
            max(tile.x // scale - margin, 0),
            min(-(-(tile.x + tile.width) // scale) + margin, width))


def turned_noise(run: Run, plane: int, rows, transforms: tuple[int, ...], tiles: list[Tile],
                 height: int, width: int) -> torch.Tensor:
    """The starting noise of one call, (rows, T*G, 1, h, w): each sample's noise is laid out
    on the plane (noise.py), then turned with its copy of the tiles (``symmetry.forward``)."""
    return torch.cat([
        torch.stack([symmetry.forward(noise_for_region(run.seed, plane, [row[i] for row in rows],
                                                       t.y, t.x, height, width), k)
                     for t in tiles], dim=1)
        for i, k in enumerate(transforms)], dim=1)


def group_seed(seed: int, plane: int, first: int) -> int:
    """The seed of the sampler's generator for the tile group starting at tile ``first``."""
    return (seed * 1_000_003 + plane * 10_007 + first) % (2**63)


def predict_plane(run: Run, x_plane: torch.Tensor, plane: int, mean_view: np.ndarray,
                  var_view: np.ndarray, excess: np.ndarray | None = None) -> None:
    """All tiles of one plane, blended into ``mean_view`` and ``var_view`` (normalised).
    ``excess``: the plane's hot pixels, taken out of ``x_plane`` (see :func:`tile_statistics`)."""
    p = run.plan
    tiles = run.tiles()
    blender = StatisticsBlender(run.height, run.width, p.overlap, mean=mean_view,
                                variance=var_view)
    generator = torch.Generator(device=run.device)
    for first in range(0, len(tiles), p.group):
        group = tiles[first:first + p.group]
        generator.manual_seed(group_seed(run.seed, plane, first))
        means, variances = tile_statistics(run, x_plane, group, plane, generator,
                                           excess=excess)
        for i, t in enumerate(group):
            blender.add(t, means[i], variances[i])
    blender.result()


def tile_statistics(run: Run, x_plane: torch.Tensor, tiles: list[Tile], plane: int,
                    generator: torch.Generator, origin: tuple[int, int] = (0, 0),
                    excess: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance over all samples of equally sized tiles run together, (G, h, w).

    ``x_plane`` is the normalised input plane, or the part of it that starts at input
    pixel ``origin`` (see :func:`conditioning`). ``excess`` (same grid as ``x_plane``):
    hot pixels' excess over their neighbours, already taken out of ``x_plane``
    (:func:`~napari_cvdm.spikes.without_spikes`); it is added back to each pixel's output
    block, and its square to the variance.
    """
    net, device, s = run.net, run.device, run.settings
    stride = net.config.stride
    th, tw = tiles[0].height, tiles[0].width
    ph, pw = round_up(th, stride), round_up(tw, stride)
    x = torch.stack([conditioning(x_plane, t, net.config.scale, origin) for t in tiles])[:, None]
    if (ph, pw) != (th, tw):
        # Pad (reflect where possible) to the network's stride, then crop: never resize.
        mode = "reflect" if ph - th < th and pw - tw < tw else "replicate"
        x = F.pad(x, (0, pw - tw, 0, ph - th), mode=mode)
    x = x.to(device)
    g = len(tiles)

    def tick() -> None:  # progress counts tile-evaluations, however tiles are grouped
        run.network_calls += 1
        for _ in tiles:
            run.advance()

    acc = torch.float32 if device.type == "mps" else torch.float64
    count, mean, m2 = 0, None, None
    for p in symmetry.passes(s.samples, run.plan.batch, s.augment):
        # The pass's turned copies of the tiles side by side, (T*G, 1, h, w); x-only work
        # once per pass, shared by its calls.
        xs = torch.cat([symmetry.forward(x, k) for k in p.transforms])
        if run.channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        prepared = net.prepare(xs, run.precision, psf_sigma=run.psf_sigma)
        for rows in p.calls():
            noise = turned_noise(run, plane, rows, p.transforms, tiles, ph, pw).to(device)
            out = sample(net, xs, noise, steps=s.steps, eta=s.eta, sampler=s.sampler,
                         generator=generator, on_evaluation=tick, precision=run.precision,
                         prepared=prepared, denoise=run.denoise)
            out = out[:, :, 0].reshape(len(rows), len(p.transforms), g, *out.shape[-2:])
            out = torch.cat([symmetry.inverse(out[:, i], k)
                             for i, k in enumerate(p.transforms)])[..., :th, :tw].to(acc)
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
    mean, variance = mean.cpu().numpy(), variance.cpu().numpy()
    if excess is not None:
        for i, t in enumerate(tiles):
            block = block_excess(excess, t.y, t.x, th, tw, net.config.scale, origin)
            mean[i] += block
            variance[i] += block.astype(variance.dtype) ** 2
    return mean, variance
