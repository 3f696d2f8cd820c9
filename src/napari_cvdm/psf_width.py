"""The PSF width a PSF-conditioned model is told: given, from the optics, or the model's own.

A conditioned model (``CVDMConfig.psf_conditioned``) takes the blur of its input relative to
its output, as the standard deviation of a Gaussian PSF in *output* pixels. A user knows it
from the objective (numerical aperture), the emission wavelength and the output pixel size
(:func:`from_optics`), or from a measured bead; without it the model's typical value is used
(:func:`psf_sigma_for`). Blind models ignore it.
"""

from __future__ import annotations

import math
from typing import Any

from .degradation import SIGMA_PER_LAMBDA_OVER_NA

# Real widefield images fit their SIM targets by a Gaussian of 2.75-3.75 target pixels
# (shared/data/real-pairs README; BioSR 3.5): 3.0 is the middle of what users bring.
DEFAULT_PSF_SIGMA = 3.0


def psf_sigma_for(model, requested: float | None) -> float | None:
    """The width ``model`` is told: None for a blind model, else ``requested`` or its default."""
    if not model.config.psf_conditioned:
        return None
    if requested is not None:
        return float(requested)
    value = (model.metadata or {}).get("psf_sigma_default", DEFAULT_PSF_SIGMA)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"the model's default PSF width {value!r} is not a positive number; "
                         "the model file is damaged")
    return value


def trained_range(model) -> tuple[float, float] | None:
    """The PSF widths (output pixels) the model was trained on, from its file, if recorded."""
    return trained_range_of(model.metadata)


def trained_range_of(metadata: dict[str, Any] | None) -> tuple[float, float] | None:
    """:func:`trained_range` from a model file's metadata (e.g. its header alone)."""
    data = ((metadata or {}).get("training") or {}).get("data") or {}
    sigma = (data.get("degradation") or {}).get("psf_sigma")
    if sigma is None:
        return None
    try:
        low, high = (float(sigma), float(sigma)) if not isinstance(sigma, (list, tuple)) \
            else (float(sigma[0]), float(sigma[-1]))
    except (TypeError, ValueError):
        return None
    return (low, high) if 0 < low <= high else None


def from_optics(numerical_aperture: float, wavelength_nm: float, pixel_size_nm: float,
                target_resolution_nm: float = 0.0) -> float:
    """The widefield PSF sigma in output pixels of ``pixel_size_nm``, relative to a target of
    ``target_resolution_nm`` (FWHM; about 100-120 nm for a SIM target, 0 for an ideal one).

    sigma = 0.21 lambda / NA (Zhang et al., Appl. Opt. 46:1819, 2007). Example: NA 1.49,
    525 nm emission, 31 nm output pixels, relative to SIM (110 nm) -> about 1.8 pixels;
    real widefield microscopes measure wider (2.75-3.75) than this ideal.
    """
    values: dict[str, Any] = {"numerical aperture": numerical_aperture,
                              "wavelength": wavelength_nm, "pixel size": pixel_size_nm}
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            raise ValueError(f"the {name} must be a positive number, not {v!r}")
    if not 0.1 <= numerical_aperture <= 1.7:
        raise ValueError(f"the numerical aperture must be between 0.1 and 1.7, not "
                         f"{numerical_aperture}")
    sigma_nm = SIGMA_PER_LAMBDA_OVER_NA * wavelength_nm / numerical_aperture
    target = max(float(target_resolution_nm), 0.0) / (2 * math.sqrt(2 * math.log(2)))
    relative = math.sqrt(max(sigma_nm**2 - target**2, (0.25 * sigma_nm) ** 2))
    return relative / pixel_size_nm
