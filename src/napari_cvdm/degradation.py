"""Simulated widefield optics: a high-quality image becomes a realistic low-quality input.

blur by the PSF (Gaussian or Airy), with a share of the light out of focus (a much wider
Gaussian "haze", as a widefield microscope collects from the planes around focus) ->
average-downsample by the scale -> photons: Poisson(photons * image + background) + Gaussian
read noise. Images are in [0, 1]
(percentile-normalised) before simulation, so ``photons`` is the expected count at the
bright end of the image: the signal level. Every image draws its own PSF width, signal,
background and read noise from the ranges, so one model sees the spread of real microscopes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .simulation_defaults import SIMULATION_DEFAULTS as _DEFAULTS

# Gaussian approximation of a widefield PSF: sigma = 0.21 lambda / NA (Zhang et al., Appl.
# Opt. 46:1819, 2007). Real widefield -> SIM pairs from three labs fit a relative blur of
# 2.75-3.75 SIM pixels (shared/data/real-pairs), wider than the ideal optics give.
SIGMA_PER_LAMBDA_OVER_NA = 0.21


def _range(value, name: str, positive: bool = False) -> tuple[float, float]:
    """A (low, high) pair from a number or a pair; ValueError when it is not a range."""
    low, high = (value, value) if np.isscalar(value) else tuple(value)
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high
            and (low > 0 if positive else low >= 0)):
        bound = "0 < low" if positive else "0 <= low"
        raise ValueError(f"{name} must be a number or a (low, high) range with {bound} <= high, "
                         f"not {value}")
    return low, high


# Upper limits of the camera levels. Beyond 1e6 photons an image is already noiseless, and
# PyTorch's Poisson sampler overflows near 1e19 (the inputs became -9.2e18 everywhere).
LEVEL_LIMITS = {"photons": 1e6, "background": 1e5, "read_noise": 1e3}


@dataclass(frozen=True)
class Degradation:
    """Ranges of the simulated optics; each image draws its own values.

    ``psf_sigma``: the PSF width relative to the target, in high-quality pixels, a number or
    a (min, max) range drawn log-uniformly (for Airy, the same-sigma Gaussian's width).
    ``haze``: the share of the light that is out of focus, drawn uniformly from the range;
    it is spread by a Gaussian of ``haze_sigma`` high-quality pixels (log-uniform). Real
    widefield -> SIM pairs fit 36-68 % of out-of-focus light (docs/method.md); (0, 0), the
    default, simulates a perfectly sectioned image. ``told_error``: how far the width a
    PSF-conditioned model is told strays from the true one, the standard deviation of its
    log (0.1: about 10 %), drawn afresh for every patch; users tell an estimated or nominal
    width, never the exact one, and a model always told the truth learns to trust it
    entirely (measured: told 3.2 instead of 2.3 output pixels costs 4 dB on the BioSR
    pair). 0, the default, tells the truth.
    """

    # defaults: napari_cvdm.simulation_defaults (one place for every front end)
    psf: str = _DEFAULTS["psf"]                                   # "gaussian" or "airy"
    psf_sigma: float | tuple[float, float] = _DEFAULTS["psf_sigma"]
    scale: int = 2
    photons: tuple[float, float] = _DEFAULTS["photons"]           # log-uniform signal level
    background: tuple[float, float] = _DEFAULTS["background"]     # photons per pixel
    read_noise: tuple[float, float] = _DEFAULTS["read_noise"]     # electrons (std)
    haze: tuple[float, float] = _DEFAULTS["haze"]                 # share out of focus
    haze_sigma: tuple[float, float] = _DEFAULTS["haze_sigma"]     # its blur, HQ pixels
    told_error: float = _DEFAULTS["told_error"]                   # spread of the told width

    def __post_init__(self) -> None:
        if self.psf not in ("gaussian", "airy"):
            raise ValueError(f"psf must be 'gaussian' or 'airy', not {self.psf!r}")
        if not isinstance(self.scale, (int, np.integer)) or not 1 <= self.scale <= 4:
            raise ValueError(f"scale must be 1, 2, 3 or 4, not {self.scale}")
        sigma = _range(self.psf_sigma, "psf_sigma", positive=True)
        if sigma[1] > 20:
            raise ValueError(f"psf_sigma must be at most 20 pixels, not {self.psf_sigma}")
        object.__setattr__(self, "psf_sigma", sigma[0] if sigma[0] == sigma[1] else sigma)
        for name in LEVEL_LIMITS:
            levels = _range(getattr(self, name), name, positive=name == "photons")
            if levels[1] > LEVEL_LIMITS[name]:
                raise ValueError(f"{name} must be at most {LEVEL_LIMITS[name]:g}, not "
                                 f"{getattr(self, name)}")
            object.__setattr__(self, name, levels)
        haze = _range(self.haze, "haze")
        if haze[1] >= 1:
            raise ValueError(f"haze is a share of the light, below 1, not {self.haze}")
        object.__setattr__(self, "haze", haze)
        haze_sigma = _range(self.haze_sigma, "haze_sigma", positive=True)
        if haze_sigma[1] > 200:
            raise ValueError(f"haze_sigma must be at most 200 pixels, not {self.haze_sigma}")
        object.__setattr__(self, "haze_sigma", haze_sigma)
        if isinstance(self.told_error, bool) or not isinstance(self.told_error, (int, float)) \
                or not 0 <= self.told_error <= 0.5:
            raise ValueError(f"told_error is the spread of the told width's log, 0-0.5, not "
                             f"{self.told_error!r}")
        object.__setattr__(self, "told_error", float(self.told_error))

    @property
    def sigma_range(self) -> tuple[float, float]:
        return _range(self.psf_sigma, "psf_sigma", positive=True)

    @classmethod
    def from_optics(cls, numerical_aperture=(1.1, 1.5), wavelength_nm=(450.0, 650.0),
                    pixel_size_nm: float = 31.0, target_resolution_nm: float = 0.0,
                    **kwargs) -> Degradation:
        """PSF widths from objective NA and emission wavelength ranges, on a target grid of
        ``pixel_size_nm``, relative to the target's own resolution (FWHM; 0 for an ideal
        target, about 100-120 nm for SIM, 50-80 nm for STED)."""
        na, lam = _range(numerical_aperture, "numerical_aperture", True), _range(
            wavelength_nm, "wavelength_nm", True)
        target_sigma = target_resolution_nm / 2.3548
        widths = []
        for sigma_nm in (SIGMA_PER_LAMBDA_OVER_NA * lam[0] / na[1],
                         SIGMA_PER_LAMBDA_OVER_NA * lam[1] / na[0]):
            relative = math.sqrt(max(sigma_nm**2 - target_sigma**2, (0.25 * sigma_nm) ** 2))
            widths.append(relative / pixel_size_nm)
        return cls(psf_sigma=(min(widths), max(widths)), **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Degradation:
        data = dict(data)
        for key in ("photons", "background", "read_noise", "haze", "haze_sigma"):
            if key in data:
                data[key] = tuple(data[key])
        if isinstance(data.get("psf_sigma"), list):
            data["psf_sigma"] = tuple(data["psf_sigma"])
        return cls(**data)


def trained_optics(model) -> Degradation | None:
    """The simulated optics ``model`` (a model, or its file's metadata) was last trained
    with, or None: trained on measured pairs, a record without them, or one that does not
    read."""
    metadata = model if isinstance(model, dict) else getattr(model, "metadata", None)
    training = (metadata or {}).get("training") or {}
    data = training.get("data") if isinstance(training, dict) else None
    if not isinstance(data, dict) or data.get("mode") != "simulated":
        return None
    recorded = data.get("degradation")
    if not isinstance(recorded, dict):
        return None
    try:
        return Degradation.from_dict(
            {k: v for k, v in recorded.items() if k in Degradation.__dataclass_fields__})
    except (TypeError, ValueError):
        return None


def run_optics(recorded: Degradation | None = None, scale: int | None = None) -> Degradation:
    """The optics a training run simulates when it is given none: ``recorded``, those its
    model was trained with (:func:`napari_cvdm.checkpoints.recorded_optics`), else the
    defaults; at ``scale`` where given (a fine-tune keeps its model's)."""
    optics = recorded or Degradation()
    return optics if scale is None else replace(optics, scale=scale)


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


def blur(image: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) blurred by one PSF, reflecting at the borders (separable when Gaussian)."""
    kernel = psf_kernel(kind, sigma).to(image)
    pad = kernel.shape[-1] // 2
    mode = "reflect" if pad < min(image.shape[-2:]) else "replicate"
    padded = F.pad(image, (pad,) * 4, mode=mode)
    if kind == "gaussian":
        line = kernel.sum(0)
        rows = F.conv2d(padded, line.reshape(1, 1, 1, -1))
        return F.conv2d(rows, line.reshape(1, 1, -1, 1))
    return F.conv2d(padded, kernel[None, None])


def blur_and_downsample(image: torch.Tensor, degradation: Degradation,
                        sigmas: torch.Tensor | None = None,
                        haze: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> blurred, downsampled (B, 1, H / s, W / s), noise-free.

    ``sigmas`` (B,): each image's PSF width; default the low end of the range.
    ``haze``: each image's out-of-focus share and its width, two (B,) tensors; default none.
    """
    if sigmas is None:
        sigmas = torch.full((image.shape[0],), degradation.sigma_range[0])
    count = image.shape[0]
    hazes = [None] * count if haze is None else list(zip(haze[0].tolist(), haze[1].tolist()))
    blurred = torch.cat([_blur_one(image[i:i + 1], degradation.psf, float(sigmas[i]), hazes[i])
                         for i in range(count)])
    s = degradation.scale
    return F.avg_pool2d(blurred, s) if s > 1 else blurred


def _blur_one(image: torch.Tensor, psf: str, sigma: float,
              haze: tuple[float, float] | None) -> torch.Tensor:
    """One (1, 1, H, W) image through the in-focus PSF, mixed with its out-of-focus share."""
    core = blur(image, psf, sigma)
    if haze is None or haze[0] <= 0:
        return core
    share, width = haze
    return (1 - share) * core + share * blur(image, "gaussian", width)


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


def _uniform(u: torch.Tensor, bounds: tuple[float, float], log: bool = False) -> torch.Tensor:
    lo, hi = bounds
    if log:
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
    return lo + (hi - lo) * u


def draw_levels(degradation: Degradation, count: int, generator: torch.Generator | None = None):
    """Random (photons, background, read_noise), each (count,), photons log-uniform."""
    u = torch.rand(3, count, generator=generator, dtype=torch.float64)
    return (_uniform(u[0], degradation.photons, log=True).float(),
            _uniform(u[1], degradation.background).float(),
            _uniform(u[2], degradation.read_noise).float())


def draw_sigmas(degradation: Degradation, count: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image's PSF width (count,), log-uniform in the range."""
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    return _uniform(u, degradation.sigma_range, log=True).float()


def told_widths(sigmas: torch.Tensor, told_error: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The widths a conditioned model is told for patches of true width ``sigmas``: each
    times exp(N(0, told_error^2)); ``sigmas`` itself for 0."""
    if not told_error:
        return sigmas
    spread = torch.randn(sigmas.shape, generator=generator, dtype=torch.float32)
    return sigmas * torch.exp(told_error * spread).to(sigmas.dtype)


def draw_haze(degradation: Degradation, count: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each image's out-of-focus share (uniform) and width (log-uniform), or None when the
    range has no haze (no random numbers are drawn then)."""
    if degradation.haze[1] <= 0:
        return None
    u = torch.rand(2, count, generator=generator, dtype=torch.float64)
    return (_uniform(u[0], degradation.haze).float(),
            _uniform(u[1], degradation.haze_sigma, log=True).float())


def simulate(hq: torch.Tensor, degradation: Degradation, generator: torch.Generator | None = None,
             return_sigmas: bool = False):
    """High-quality (B, 1, H, W) in [0, 1] -> noisy low-quality counts (B, 1, H/s, W/s).

    ``return_sigmas``: also return each image's PSF width (B,), in high-quality pixels.
    """
    sigmas = draw_sigmas(degradation, hq.shape[0], generator)
    clean = blur_and_downsample(hq, degradation, sigmas, draw_haze(degradation, hq.shape[0],
                                                                    generator))
    photons, background, read = draw_levels(degradation, hq.shape[0], generator)
    counts = add_camera_noise(clean, photons, background, read, generator)
    return (counts, sigmas) if return_sigmas else counts


def simulate_image(image: np.ndarray, degradation: Degradation, seed: int = 0) -> np.ndarray:
    """A simulated low-quality (widefield) version of one 2D high-quality image, float32.

    The image is percentile-normalised to [0, 1] first, as in training; its sides are cut to
    a multiple of the scale. The result is in photon counts, shape (H // s, W // s).
    """
    from .normalization import Normalization

    plane = np.asarray(image)
    if plane.ndim != 2 or min(plane.shape) < degradation.scale:
        raise ValueError(f"simulate_image needs a 2D image of at least {degradation.scale} "
                         f"pixels a side, not shape {plane.shape}")
    plane = plane.astype(np.float32)
    if not np.isfinite(plane).all():
        raise ValueError("the image has NaN or infinite values")
    s = degradation.scale
    plane = plane[:plane.shape[0] // s * s, :plane.shape[1] // s * s]
    unit = np.clip((Normalization.fit(plane).apply(plane) + 1) / 2, 0, None)
    generator = torch.Generator().manual_seed(int(seed) % 2**63)
    out = simulate(torch.from_numpy(np.ascontiguousarray(unit))[None, None], degradation, generator)
    return out[0, 0].numpy().astype(np.float32)
