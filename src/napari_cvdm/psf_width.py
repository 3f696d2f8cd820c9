"""The PSF width a PSF-conditioned model is told: given, from the optics, or the model's own.

A conditioned model (``CVDMConfig.psf_conditioned``) takes the blur of its input relative to
its output, as the standard deviation of a Gaussian PSF in *output* pixels. A user knows it
from the objective (numerical aperture), the emission wavelength and the output pixel size
(:func:`from_optics`), or from a measured bead. Without it (:func:`resolve`), the width is
estimated from the image's power spectrum (:mod:`.psf_estimate`) and used where it is
*narrower* than the model's typical widefield value, which is used otherwise: telling a
model a width wider than the input's over-sharpens it (3 dB below bicubic at 1.5 told 3.0),
telling it a narrower one costs little (0.2 dB at 3.5 told 3.0), so the estimate only ever
lowers the default. Blind models ignore all of this.
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


#: where the width a conditioned model is told came from (results' ``info["psf_sigma_from"]``)
GIVEN, ESTIMATED, DEFAULT = "given", "estimated from the image", "the model's default"
ESTIMATE_SIDE = 1024  # input pixels a side of the central crop the width is estimated on
# The estimate is the input's *total* blur; the model is told the blur relative to its
# output, whose own resolution is SIM-like (110-120 nm FWHM at 31 nm pixels: sigma ~1.5
# output px), and a real source's own resolution adds to it. Subtracted in quadrature with
# 2.0 px, the told width errs on the narrow side, which costs a few tenths of a dB, where a
# width too wide by 0.5-1 px costs up to 4 dB (docs/benchmarks.md: 2.0 against 1.5).
OUTPUT_SIGMA = 2.0


def resolve(model, requested: float | None, image=None) -> tuple[float | None, str | None]:
    """(width, where it came from) for ``model`` and an input ``image``.

    Blind model: (None, None). ``requested``: that. Otherwise the width estimated on the
    central crop of the image's middle plane (any array: NumPy, dask, zarr; only the crop
    is read), relative to an output of :data:`OUTPUT_SIGMA`, where it is below the model's
    default (never below its trained range); else the default, also when the image gives
    no estimate (too small, no structure, NaN).
    """
    if not model.config.psf_conditioned:
        return None, None
    if requested is not None:
        return float(requested), GIVEN
    default = psf_sigma_for(model, None)
    relative = None if image is None else estimated_width(model, image)
    if relative is None or not relative < default:
        return default, DEFAULT
    low = (trained_range(model) or (relative, default))[0]
    return round(max(relative, low), 2), ESTIMATED


def estimated_width(model, image) -> float | None:
    """The blur of ``image`` relative to the model's output, from its spectrum (the total
    blur less :data:`OUTPUT_SIGMA` in quadrature), on its central plane's central crop;
    None where the image gives no estimate (too small, no structure, NaN)."""
    from .psf_estimate import estimate_psf_sigma

    try:
        total = estimate_psf_sigma(central_plane(image), model.config.scale)
    except ValueError:
        return None
    return math.sqrt(max(total**2 - OUTPUT_SIGMA**2, 0.0))


def central_plane(image, index: tuple[int, ...] | None = None):
    """The middle plane of a stack (its last two axes; or the plane at ``index`` of the
    leading axes), cropped to at most :data:`ESTIMATE_SIDE` pixels a side around its
    centre, as NumPy."""
    import numpy as np

    if index is None:
        index = tuple(n // 2 for n in image.shape[:-2])
    h, w = image.shape[-2:]
    y0, x0 = max(0, (h - ESTIMATE_SIDE) // 2), max(0, (w - ESTIMATE_SIDE) // 2)
    return np.asarray(image[index + (slice(y0, y0 + ESTIMATE_SIDE),
                                     slice(x0, x0 + ESTIMATE_SIDE))])


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
