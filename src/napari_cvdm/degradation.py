"""Simulated widefield optics: a high-quality image becomes a realistic low-quality input.

blur by the PSF (Gaussian or Airy) -> average-downsample by the scale -> photons:
Poisson(photons * image + background) + Gaussian read noise. Images are in [0, 1]
(percentile-normalised) before simulation, so ``photons`` is the expected count at the
bright end of the image: the signal level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Degradation:
    """Ranges of the simulated optics; each training patch draws its own level."""

    psf: str = "gaussian"              # "gaussian" or "airy"
    psf_sigma: float = 1.5             # PSF width, high-quality pixels (Gaussian sigma;
                                       # for Airy the same-sigma Gaussian approximation)
    scale: int = 2
    photons: tuple[float, float] = (30.0, 1000.0)   # log-uniform signal level
    background: tuple[float, float] = (0.0, 10.0)   # photons per pixel
    read_noise: tuple[float, float] = (0.5, 3.0)    # electrons (standard deviation)

    def __post_init__(self) -> None:
        if self.psf not in ("gaussian", "airy"):
            raise ValueError(f"psf must be 'gaussian' or 'airy', not {self.psf!r}")
        if self.psf_sigma <= 0 or self.scale < 1:
            raise ValueError("psf_sigma must be positive and scale at least 1")
        if not 0 < self.photons[0] <= self.photons[1]:
            raise ValueError(f"photons must be a positive range, not {self.photons}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Degradation:
        data = dict(data)
        for key in ("photons", "background", "read_noise"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def psf_kernel(kind: str, sigma: float) -> torch.Tensor:
    """A normalised 2D PSF on the high-quality grid."""
    radius = max(1, int(math.ceil(4 * sigma)))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    rho = torch.sqrt(yy**2 + xx**2)
    if kind == "gaussian":
        kernel = torch.exp(-0.5 * (rho / sigma) ** 2)
    else:
        # Airy pattern (2 J1(v) / v)^2 with its first zero placed so that its central lobe
        # matches a Gaussian of the same sigma (first zero at ~ 2.9 sigma).
        v = 3.8317 * rho / (2.9 * sigma)
        safe = torch.where(v == 0, torch.ones_like(v), v)
        kernel = torch.where(v == 0, torch.ones_like(v),
                             (2 * torch.special.bessel_j1(safe) / safe) ** 2)
    kernel = kernel / kernel.sum()
    return kernel.float()


def blur_and_downsample(image: torch.Tensor, degradation: Degradation) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> blurred, downsampled (B, 1, H / s, W / s), noise-free."""
    kernel = psf_kernel(degradation.psf, degradation.psf_sigma).to(image)
    pad = kernel.shape[-1] // 2
    blurred = F.conv2d(F.pad(image, (pad,) * 4, mode="reflect"), kernel[None, None])
    s = degradation.scale
    return F.avg_pool2d(blurred, s) if s > 1 else blurred


def add_camera_noise(clean: torch.Tensor, photons: torch.Tensor, background: torch.Tensor,
                     read_noise: torch.Tensor, generator: torch.Generator | None = None):
    """Poisson shot noise at ``photons`` per unit intensity, plus background and read noise.

    Per-image parameters are (B,) tensors. Returns counts (B, 1, h, w).
    """
    shape = (-1, 1, 1, 1)
    rate = clean.clamp_min(0) * photons.reshape(shape) + background.reshape(shape)
    counts = torch.poisson(rate, generator=generator)
    return counts + read_noise.reshape(shape) * torch.randn(
        counts.shape, generator=generator, dtype=counts.dtype, device=counts.device)


def draw_levels(degradation: Degradation, count: int, generator: torch.Generator | None = None):
    """Random (photons, background, read_noise), each (count,), photons log-uniform."""
    u = torch.rand(3, count, generator=generator, dtype=torch.float64)
    lo, hi = (math.log(v) for v in degradation.photons)
    photons = torch.exp(lo + (hi - lo) * u[0])
    background = degradation.background[0] + (degradation.background[1] - degradation.background[0]) * u[1]
    read = degradation.read_noise[0] + (degradation.read_noise[1] - degradation.read_noise[0]) * u[2]
    return photons.float(), background.float(), read.float()


def simulate(hq: torch.Tensor, degradation: Degradation, generator: torch.Generator | None = None):
    """High-quality (B, 1, H, W) in [0, 1] -> noisy low-quality counts (B, 1, H/s, W/s)."""
    clean = blur_and_downsample(hq, degradation)
    photons, background, read = draw_levels(degradation, hq.shape[0], generator)
    return add_camera_noise(clean, photons, background, read, generator)
