"""Is an input like what the model was trained on? Warnings for results not to be trusted.

A model learned one kind of image: fluorescence (bright structures on a dark background) at
some pixel size with some optics. Far from that, it still returns a confident-looking image.
``input_warnings`` names what is off, for the command line to print and napari to notify.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .normalization import Normalization
from .padding import find as find_padding
from .physical import NM_PER_UNIT
from .spikes import without_spikes

# A pixel size this many times outside the model's range is "far": finer by 1.3 (below 38 nm
# for a 50-80 nm model: a SIM, STED or Airyscan image, not widefield), coarser by 1.6.
PIXEL_TOLERANCE = (1.3, 1.6)
PSF_TOLERANCE = 1.15    # a PSF width this much outside the trained range is "far"
MAX_PIXELS = 2**20      # statistics on a subsample of large planes
# Neighbouring pixels of a diffraction-limited image are correlated: 0.08-0.3 at the
# model's lowest training signal (20 photons, background 10), 0.7-0.98 on real widefield
# and super-resolution images; pure noise has about 0.
NOISE_CORRELATION = 0.05
NOISE_CROP = 1024       # the correlation is measured on a central crop (never subsampled)
CLIP_PERCENTILES = (0.1, 99.9)  # the correlation ignores outliers (hot pixels, cosmic rays)
# A label image or a mask is flat regions: most of its pixels off the background equal both
# their right and lower neighbours; on fluorescence, noise makes that rare (about 0.2 even at
# a few photons per pixel).
FLAT_SHARE = 0.8
# DIC and phase contrast: structure both darker and brighter than a mid-grey background.
# The relief skew (the image minus its local mean) is 0.15 or more on the real and simulated
# fluorescence images the project was checked on (except two planes near the ends of a
# confocal stack, mostly out-of-focus light: one has a dark median, the other uncorrelated
# neighbours) and -0.06-0.05 on simulated DIC; the median and the neighbour correlation keep
# those, hazy and dim fluorescence out
# (python benchmarks/transmitted_light.py, docs/reliability.md).
RELIEF_MEDIAN = (0.35, 0.65)
RELIEF_SKEW = 0.08
# ... and of its extremes (0.01 and 99.99 percentiles): a few beads or spots, too rare to move
# the bulk's percentiles, make it 0.9; simulated DIC has -0.08-0.34
RELIEF_EXTREME_SKEW = 0.5
RELIEF_CORRELATION = 0.5
# ... and the relief must be most of the image's variation (0.74-0.96 on simulated DIC): smooth
# light (a wide blob, out-of-focus haze, a ramp) has a symmetric relief too, but a small one
# (0.03-0.36)
RELIEF_SHARE = 0.55
RELIEF_SCALE = 12       # pixels: the radius of the local mean the relief is measured against
SATURATED_SHARE = 0.01  # this share of the pixels at the image's maximum: clipped
SATURATED_PIXELS = 16   # ... and at least this many (one brightest pixel of a tiny image is not)
HOT_PIXEL_SHARE = 1e-3   # isolated hot pixels in this share of the pixels set the 99.9th
                         # percentile the image is normalised by (spikes.py) ...
HOT_PIXEL_PERCENTILES = (0.1, 99.0)  # ... so they are found against the 99th
# The brightest 1% of the pixels spanning more of the range than this: a small, far brighter
# object sets the normalisation. 105 fluorescence images (benchmarks/bright_objects.py): at
# most 74%; a bead 30 (100) times the image's range: at least 86% (96%); 10 times: 62-87%,
# not told apart from fluorescence
BRIGHT_OBJECT_SPAN = 0.84
BRIGHT_OBJECTS = 3      # ... when that bright part is this many objects at most (not puncta)
CHECKED_PLANES = 8      # planes of a stack checked (each leading axis first to last)
# Transmitted light and relief (DIC, phase) are judged on planes at least this wide: on
# crops of real widefield of 16-48 pixels, 1-20 % were taken for them (a review; none at 64)
MODALITY_SIDE = 64
# An image enlarged without interpolation (nearest neighbour, e.g. for display or a figure)
# repeats each camera pixel in blocks: within a block of this factor at least REPEATED_SHARE
# of the neighbouring pairs are equal, across blocks at most BLOCK_EDGE_SHARE (a camera's
# noise makes exact repeats rare; flat zeros or saturation repeat across blocks as well, so
# they are not mistaken for it)
# A background clipped at the image's lowest value (a detector offset set too low, or a
# background subtracted and cut at zero): at least CLIPPED_SHARE of the plane at its minimum,
# in regions whose pixels have both right and lower neighbours there this often (dim photon
# counts have many zeros, but scattered: 0.55 at 0.3 photons per pixel).
CLIPPED_SHARE = 0.05
CLIPPED_FLAT = 0.9
# ... or, in a noisy background cut at zero, scattered: a spike at the lowest value, at least
# CLIPPED_SPIKE_SHARE of the plane and CLIPPED_SPIKE times the next value's share, with the
# rest of the image far above it (photon counts of a dim image step by one from 0: 0, 1, 2)
CLIPPED_SPIKE_SHARE = 0.2
CLIPPED_SPIKE = 5.0
CLIPPED_SPIKE_GAP = 8.0
REPEAT_FACTORS = (8, 6, 5, 4, 3, 2)  # largest first: blocks of 4 are blocks of 2 too
REPEATED_SHARE = 0.99
BLOCK_EDGE_SHARE = 0.8
REPEAT_BLOCKS = 16      # at least this many blocks along the axis
REPEAT_LINES = 128      # lines (rows for X, columns for Y) looked at, spread over the plane


def _unit_image(plane: np.ndarray) -> np.ndarray | None:
    """A subsample scaled to [0, 1]; None for values that are not finite real numbers
    (the input checks reject those with their own message)."""
    step = max(1, int(np.sqrt(plane.size / MAX_PIXELS)))
    plane = np.asarray(plane[::step, ::step])  # subsample before converting
    if not np.issubdtype(plane.dtype, np.number) or np.iscomplexobj(plane):
        return None
    plane = plane.astype(np.float32)
    if not np.isfinite(plane).all():
        return None
    return np.clip((Normalization.fit(plane).apply(plane) + 1) / 2, 0, 1)


def neighbour_correlation(plane: np.ndarray) -> float | None:
    """The lower of the horizontal and vertical lag-1 correlations of a central crop, of its
    values as they are or clipped to :data:`CLIP_PERCENTILES`, whichever is higher (hot
    pixels lower the first, structure rarer than the clipped share, such as a few beads,
    the second); None where it says nothing (not finite real numbers, a constant image,
    fewer than 2 pixels along an axis)."""
    crop = _central_crop(plane, 2)
    if crop is None:
        return None
    found = [c for c in (_lag_correlation(crop),
                         _lag_correlation(np.clip(crop, *np.percentile(crop, CLIP_PERCENTILES))))
             if c is not None]
    return max(found) if found else None


def _central_crop(plane: np.ndarray, smallest: int) -> np.ndarray | None:
    """The central :data:`NOISE_CROP` square of a plane (never subsampled) as float64; None
    for values that are not finite real numbers or a plane under ``smallest`` pixels along
    an axis."""
    h, w = plane.shape[-2:]
    if min(h, w) < smallest:
        return None
    top, left = max(0, (h - NOISE_CROP) // 2), max(0, (w - NOISE_CROP) // 2)
    crop = np.asarray(plane[top:top + NOISE_CROP, left:left + NOISE_CROP])
    if not np.issubdtype(crop.dtype, np.number) or np.iscomplexobj(crop):
        return None
    crop = crop.astype(np.float64)
    return crop if np.isfinite(crop).all() else None


def _lag_correlation(crop: np.ndarray) -> float | None:
    peak = float(np.abs(crop).max())
    if not 0 < peak < np.inf:
        return None
    crop = crop / peak  # values near the float64 limits square without overflowing
    crop = crop - crop.mean()
    variance = float((crop * crop).mean())
    # constant: a variance of at most 1e-12 of max(1, peak)**2 in the plane's units; here
    # (divided by the peak, a variance <= 1) always so for a peak under 1e-6, whose inverse
    # squared would overflow for tiny or subnormal values
    scale = max(1.0, 1.0 / peak)
    if scale >= 1e6 or variance <= 1e-12 * scale * scale:
        return None
    across = float((crop[:, 1:] * crop[:, :-1]).mean())
    down = float((crop[1:] * crop[:-1]).mean())
    return min(across, down) / variance


def _is_noise(correlation: float | None) -> bool:
    return correlation is not None and correlation < NOISE_CORRELATION


def looks_like_noise(plane: np.ndarray) -> bool:
    """Noise without structure: neighbouring pixels (almost) uncorrelated."""
    return _is_noise(neighbour_correlation(plane))


def looks_transmitted(plane: np.ndarray) -> bool:
    """Dark structures on a bright background: brightfield, DIC or an inverted image.

    After percentile normalisation, fluorescence has a dark median (0.05-0.36 on the real
    widefield and super-resolution images the project was checked on) and a positive skew.
    """
    u = _unit_image(plane)
    if u is None or u.std() < 1e-6:
        return False
    skew = float(((u - u.mean()) ** 3).mean() / u.std() ** 3)
    return float(np.median(u)) > 0.5 and skew < 0.2


def relief_skew(plane: np.ndarray, tail: float = 1.0) -> float | None:
    """The skew of a central crop's relief (smoothed over 3 x 3 pixels, minus its mean over
    about :data:`RELIEF_SCALE` pixels) from its ``tail``, 50th and 100 - ``tail`` percentiles
    (Bowley's, -1..1): clearly positive for bright structures on a dark background, about 0
    for a relief with both signs (DIC), negative for dark structures; None where it says
    nothing (not finite real numbers, a flat crop, under 4 * RELIEF_SCALE pixels along an
    axis)."""
    stats = _relief_stats(plane, (tail,))
    return None if stats is None else stats[0][0]


def _relief_stats(plane: np.ndarray,
                  tails: tuple[float, ...]) -> tuple[tuple[float, ...], float] | None:
    """:func:`relief_skew` for each of ``tails`` (the relief computed once), and the relief's
    share of the crop's variation (1st-99th percentile spans: about 1 where the structure
    is all relief, as in DIC; under 0.4 for smooth light, a ramp or a wide blob)."""
    crop = _central_crop(plane, 4 * RELIEF_SCALE)
    if crop is None:
        return None
    peak = float(np.abs(crop).max())
    if not 0 < peak < np.inf:
        return None
    smooth = _box_mean(crop / peak, 1)  # 3 x 3: the pixel noise down by 3
    local = _box_mean(_box_mean(smooth, RELIEF_SCALE), RELIEF_SCALE)  # about a Gaussian
    relief = smooth - local
    skews = []
    for tail in tails:
        low, mid, high = np.percentile(relief, (tail, 50, 100 - tail))
        if not high - low > 1e-9:
            return None
        skews.append(float((high + low - 2 * mid) / (high - low)))
    low, high = np.percentile(relief, (1, 99))
    span = float(np.subtract(*np.percentile(smooth, (99, 1))))
    return tuple(skews), float(high - low) / span if span > 0 else 0.0


def _box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """The mean over a (2 radius + 1)-pixel square around each pixel, the borders mirrored
    (summed-area table: the cost does not grow with the radius)."""
    size = 2 * radius + 1
    padded = np.pad(image, radius, mode="symmetric")
    table = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    box = table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]
    return box / (size * size)


def looks_like_relief(plane: np.ndarray, correlation: float | None = None) -> bool:
    """A relief on a mid-grey background, as DIC and phase contrast show cells: a median in
    :data:`RELIEF_MEDIAN` after normalisation, neighbours correlated at least
    :data:`RELIEF_CORRELATION` (``correlation``: the plane's :func:`neighbour_correlation`,
    measured here when not given), a relief skew below :data:`RELIEF_SKEW` in its bulk and
    below :data:`RELIEF_EXTREME_SKEW` in its extremes, and a relief that makes at least
    :data:`RELIEF_SHARE` of the image's variation."""
    u = _unit_image(plane)
    if u is None or not RELIEF_MEDIAN[0] <= float(np.median(u)) <= RELIEF_MEDIAN[1]:
        return False
    if correlation is None:
        correlation = neighbour_correlation(plane)
    if correlation is None or correlation < RELIEF_CORRELATION:
        return False
    stats = _relief_stats(plane, (1.0, 0.01))
    if stats is None:
        return False
    (bulk, extreme), share = stats
    return bulk < RELIEF_SKEW and extreme < RELIEF_EXTREME_SKEW and share >= RELIEF_SHARE


def looks_like_labels(plane: np.ndarray) -> bool:
    """A label image or a mask: whole numbers (of an integer type, or floats such as a 0/1
    mask) in flat regions (most pixels off the most common value equal both neighbours),
    not intensities through a microscope."""
    plane = np.asarray(plane)
    if plane.ndim != 2 or min(plane.shape) < 2 or not _whole_numbers(plane):
        return False
    background = _most_common(plane)
    if background is None:
        return False
    inner = plane[:-1, :-1]
    off_background = inner != background
    if off_background.sum() < 16:
        return False
    flat = (inner == plane[1:, :-1]) & (inner == plane[:-1, 1:])
    return float(flat[off_background].mean()) >= FLAT_SHARE


# At most this many distinct values, spaced apart: a posterised image (found by a review: BioSR
# exported to 8 bits and reduced to 4 levels lost 3 dB, to 16 levels 0.65 dB, with no word)
POSTERISED_LEVELS = 16


def posterised_levels(plane: np.ndarray) -> int | None:
    """The number of grey levels of a plane that has only a few, spaced apart (an export or
    screenshot with its contrast stretched, heavy quantisation); None otherwise. Dim photon
    counts have few levels too, but one apart (0, 1, 2, ...): not these."""
    plane = np.asarray(plane)
    if plane.ndim != 2 or not np.issubdtype(plane.dtype, np.number) \
            or np.iscomplexobj(plane) or not np.isfinite(plane).all():
        return None
    values = np.unique(plane)
    if not 2 <= values.size <= POSTERISED_LEVELS:
        return None
    if _whole_numbers(values) and float(np.median(np.diff(values.astype(np.float64)))) <= 1:
        return None  # consecutive whole numbers: counts of a few photons
    return int(values.size)


def _whole_numbers(plane: np.ndarray) -> bool:
    if np.issubdtype(plane.dtype, np.integer):
        return True
    if not np.issubdtype(plane.dtype, np.floating) or not np.isfinite(plane).all():
        return False
    return bool(np.array_equal(plane, np.round(plane)))


def _most_common(plane: np.ndarray):
    """The most common value of a plane of whole numbers; None for a constant plane."""
    if np.issubdtype(plane.dtype, np.integer) and plane.min() >= 0 and plane.max() < 2**16:
        counts = np.bincount(plane.ravel().astype(np.intp))  # 20x np.unique on 16-bit images
        return None if np.count_nonzero(counts) < 2 else counts.argmax()
    values, counts = np.unique(plane, return_counts=True)
    return None if len(values) < 2 else values[np.argmax(counts)]


def bright_object_share(plane: np.ndarray) -> float | None:
    """How much of the image's 0.1-99.9 percentile range lies above its 99th percentile
    (None for values the input checks refuse)."""
    return _span_above_99(_unit_image(plane))


def _span_above_99(unit: np.ndarray | None) -> float | None:
    return None if unit is None else float(1 - np.percentile(unit, 99))


def _blob_count(mask: np.ndarray, limit: int) -> int:
    """Connected regions (8-neighbours) of ``mask``; counting stops above ``limit``."""
    ys, xs = np.nonzero(mask)
    where = {(y, x): i for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist()))}
    parent = list(range(len(where)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (y, x), i in where.items():
        for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
            j = where.get((y + dy, x + dx))
            if j is not None and root(i) != root(j):
                parent[root(i)] = root(j)
    roots: set[int] = set()
    for i in range(len(parent)):
        roots.add(root(i))
        if len(roots) > limit:
            break
    return len(roots)


def bright_object(plane: np.ndarray) -> float | None:
    """The share of :func:`bright_object_share` where a few objects (at most
    :data:`BRIGHT_OBJECTS` regions above half the range) far brighter than the rest set the
    contrast; None otherwise (sparse puncta or beads all alike are the structure itself)."""
    unit = _unit_image(plane)
    share = _span_above_99(unit)
    if share is None or share <= BRIGHT_OBJECT_SPAN:
        return None
    top = unit > 0.5  # under 1% of the pixels here
    if not 0 < _blob_count(top, BRIGHT_OBJECTS) <= BRIGHT_OBJECTS:
        return None  # none: a constant image (no range) has no brighter object
    return share


def saturated_share(plane: np.ndarray) -> float:
    """The share of the pixels at the plane's maximum (0 for a constant or non-real plane)."""
    plane = np.asarray(plane)
    if not np.issubdtype(plane.dtype, np.number) or np.iscomplexobj(plane) or plane.size == 0:
        return 0.0
    finite = plane[np.isfinite(plane)] if np.issubdtype(plane.dtype, np.floating) else plane
    if finite.size == 0 or finite.max() == finite.min():
        return 0.0
    return float(np.mean(finite == finite.max()))


def _repeats_along(plane: np.ndarray, axis: int, factor: int) -> bool:
    """Whether the pixels along ``axis`` repeat in blocks of ``factor`` (at any phase)."""
    lines = np.moveaxis(plane, axis, -1)
    lines = lines[::max(1, lines.shape[0] // REPEAT_LINES)]  # a block repeats on every line
    for phase in range(factor):
        n = (lines.shape[-1] - phase) // factor
        if n < REPEAT_BLOCKS:
            return False
        blocks = lines[:, phase:phase + n * factor].reshape(lines.shape[0], n, factor)
        within = np.mean(blocks[:, :, 1:] == blocks[:, :, :1])
        if within >= REPEATED_SHARE:
            across = np.mean(blocks[:, 1:, 0] == blocks[:, :-1, -1])
            return bool(across <= BLOCK_EDGE_SHARE)
    return False


def _flat_share(at: np.ndarray, both: bool) -> float:
    """Of the pixels in ``at`` (a mask), the share whose right and/or lower neighbours are
    in it too (the last row and column left out)."""
    inner = at[:-1, :-1]
    right, down = at[:-1, 1:], at[1:, :-1]
    beside = (right & down) if both else (right | down)
    return np.count_nonzero(inner & beside) / max(1, np.count_nonzero(inner))


PADDING_KINDS = ("padding", "padding kept")  # flat_value's kinds for padding: left out, kept


def flat_value(plane: np.ndarray) -> tuple[str, float, float] | None:
    """(kind, value, share of the plane) where one exact value fills flat regions along the
    plane's edges (padding, :mod:`napari_cvdm.padding`: kind "padding" where it lies outside
    the image's range and a prediction leaves it out, "padding kept" where it is inside and
    stays data) or is its lowest value in flat regions anywhere (kind "clipped", a clipped
    background); None otherwise."""
    if plane.ndim != 2 or min(plane.shape) < 4:
        return None
    padded = find_padding(plane)
    if padded is not None:
        return ("padding" if padded.left_out else "padding kept", padded.value, padded.share)
    lowest = plane.min()
    at = plane == lowest
    share = float(at.mean())
    if CLIPPED_SHARE <= share < 1.0 and _flat_share(at, both=True) >= CLIPPED_FLAT:
        return "clipped", float(lowest), share
    if CLIPPED_SPIKE_SHARE <= share < 1.0 and _spike_at_lowest(plane, at, share):
        return "clipped", float(lowest), share
    return None


def _spike_at_lowest(plane: np.ndarray, at: np.ndarray, share: float) -> bool:
    """Whether the plane's lowest value is a spike of its histogram (:data:`CLIPPED_SPIKE`)
    above an image that lies far from it: a noisy background cut at zero."""
    rest = plane[~at].astype(np.float64)
    lowest, following = float(plane[at][0]), float(rest.min())
    following_share = float(np.count_nonzero(plane == plane.dtype.type(following))) / plane.size
    step = following - lowest
    return share >= CLIPPED_SPIKE * following_share and step > 0 and \
        float(np.median(rest)) - lowest >= CLIPPED_SPIKE_GAP * step


def repeated_pixels(plane: np.ndarray) -> dict[str, int]:
    """{axis: factor} for the axes ('Y', 'X') along which the plane's pixels repeat in
    blocks: an image enlarged by that factor without interpolation."""
    out = {}
    for axis, name in ((0, "Y"), (1, "X")):
        for factor in REPEAT_FACTORS:
            if _repeats_along(plane, axis, factor):
                out[name] = factor
                break
    return out


def pixel_size_nm(size: float | None, unit: str | None) -> float | None:
    """A pixel size in nanometres, or None when the unit is not a length."""
    from .physical import NO_UNIT, normalise

    if size is None or unit is None or unit.strip().lower() in NO_UNIT:
        return None
    checked = normalise(size, unit)
    if checked is None or checked.unit not in NM_PER_UNIT:
        return None
    return checked.size * NM_PER_UNIT[checked.unit]


def _without_hot_pixels(plane: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The plane with its isolated hot pixels at their neighbours' median (the other checks
    look at that), and a message where there are enough of them to spoil the result."""
    # values the input checks refuse, with their own message
    if not np.issubdtype(plane.dtype, np.number) or np.iscomplexobj(plane) \
            or not np.isfinite(plane).all():
        return plane, None
    norm = Normalization.fit(plane, HOT_PIXEL_PERCENTILES)
    if norm.is_constant:
        return plane, None
    cleaned, excess = without_spikes(norm.apply(plane))
    if excess is None:
        return plane, None
    count = int(np.count_nonzero(excess))
    share = count / plane.size
    if share < HOT_PIXEL_SHARE:  # a few: taken out of the reconstruction, harmless
        return norm.invert_mean(cleaned), None
    return norm.invert_mean(cleaned), (
        f"{count} isolated pixels ({share:.2%}) are far brighter than all their neighbours: "
        "hot pixels or cosmic rays, not structure (a microscope blurs every point over "
        "several pixels). This many set the image's contrast (its 99.9th percentile), so "
        "the rest is reconstructed from too little of it: replace them by their neighbours' "
        "median first (e.g. Fiji's Process > Noise > Remove Outliers), or do not trust the "
        "result")


def _plane_warnings(plane: np.ndarray, whole: np.ndarray | None = None) -> dict[str, str]:
    """{kind: message} for what is off in one plane's pixels: ``plane`` the central crop the
    checks look at, ``whole`` the whole plane where it is in memory (saturation anywhere in
    the field counts: a clipped cell in a corner of a camera frame)."""
    if looks_like_labels(plane):
        return {"labels": "the image looks like a label image or a mask (flat regions of whole "
                          "numbers), not fluorescence intensities: the model invents "
                          "intensities in and around them; do not trust the result"}
    out = {}
    levels = posterised_levels(plane)
    if levels is not None:
        out["levels"] = (f"the image has only {levels} grey levels, spaced apart: an export or "
                         "screenshot with its contrast stretched (8 bits), or heavy "
                         "quantisation. The model reads the fine gradations and noise of a "
                         "camera's raw image and turns these steps into structure; use the "
                         "raw image (the camera's 12- or 16-bit file), or do not trust the "
                         "result")
    flat = flat_value(whole if whole is not None else plane)
    if flat is not None and flat[0] in PADDING_KINDS:
        # (a kind each: a stack's planes may differ, and each says what was done with it)
        left_out = flat[0] == "padding"
        done = ("It lies outside the image's own range: it is left out of the contrast, "
                "shown to the model at the other pixels' median and kept as it is in the "
                "result (with no uncertainty), but the model never saw such flat regions: "
                "the real pixels' result still shifts by a few percent" if left_out else
                "The model never saw such flat regions: the result there is invented, and "
                "the real pixels' result shifts")
        out[flat[0]] = (
            f"{flat[2]:.0%} of the image is exactly {flat[1]:g}, in flat regions along its "
            f"edges: padding (from registration, stitching or a rotation). {done}; crop it "
            "away (or select the region with structure)")
    elif flat is not None:
        out["clipped"] = (
            f"{flat[2]:.0%} of the image is exactly {flat[1]:g}, its lowest value: the "
            "background is clipped (a detector offset set too low, or a "
            "background subtracted and cut at zero). The model learned a camera's noise on a "
            "background level: it invents structure in flat background, and the contrast "
            "shifts; raise the detector offset, or use the image before the subtraction")
    repeats = repeated_pixels(plane)
    if repeats:
        (axis, factor), = repeats.items() if len(repeats) == 1 else ((None, None),)
        what = (f"runs of {factor} along {axis}" if axis else
                f"blocks of {repeats['Y']} x {repeats['X']} (Y x X)")
        out["upsampled"] = (f"the image's pixels repeat in {what}: it was enlarged without "
                            "interpolation (for display or a figure), so each camera pixel "
                            "is several pixels here. The model expects the camera's own "
                            "pixels: it sees every structure that many times larger and "
                            "blurrier than it is; use the original image (or bin these "
                            "blocks back to one pixel), or do not trust the result")
    plane, hot = _without_hot_pixels(plane)
    if hot:
        out["hot pixels"] = hot
    correlation = neighbour_correlation(plane)
    if _is_noise(correlation):
        out["noise"] = (f"the image looks like noise without structure (or is too dim to "
                        f"show any): neighbouring pixels are uncorrelated (correlation "
                        f"{correlation:.3g}; a fluorescence image through a microscope has "
                        f"well above {NOISE_CORRELATION:g}). The model turns noise into "
                        "plausible-looking structures that are not in the sample; do not "
                        "trust the result")
        for kind in (*PADDING_KINDS, "clipped"):
            out.pop(kind, None)  # nearly empty photon counts: many flat zeros, said above
    elif flat is not None and flat[0] in PADDING_KINDS:
        pass  # the padding's flat grey or black skews the transmitted-light statistics
    elif min(plane.shape[-2:]) < MODALITY_SIDE:
        pass  # a few structures do not tell fluorescence from transmitted light
    elif looks_transmitted(plane):
        out["transmitted"] = ("the image looks like transmitted light (brightfield/DIC) or an "
                              "inverted image: dark structures on a bright background. The "
                              "model was trained on fluorescence, bright structures on a dark "
                              "background; do not trust the result")
    elif looks_like_relief(plane, correlation):
        out["transmitted"] = ("the image looks like DIC or phase contrast: a relief of "
                              "structures on a mid-grey background. The model was "
                              "trained on fluorescence, bright structures on a dark "
                              "background; do not trust the result")
    brightest = bright_object(plane)
    if brightest is not None:
        out["bright object"] = (
            f"the brightest 1% of the pixels span {brightest:.0%} of the image's range: a "
            "small object far brighter than the rest (a bead, a dead cell, debris) sets the "
            "contrast, so the rest is reconstructed from a small part of it and comes out "
            "poorer; crop the bright object away, or run the regions apart")
    share, pixels = max((saturated_share(p), p.size) for p in
                        ([plane] if whole is None else [plane, whole]))
    if share >= SATURATED_SHARE and share * pixels >= SATURATED_PIXELS:
        out["saturated"] = (f"{share:.0%} of the pixels are at the image's maximum value "
                            "(saturated or clipped): the detector recorded no structure there, "
                            "so the model invents it; lower the exposure or gain, or do not "
                            "trust the result in those regions")
    return out


def _checked_planes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Up to :data:`CHECKED_PLANES` planes of a stack, each leading axis run through from its
    first to its last index (every channel of up to 8, and never in step with the channel
    period, as an even spread over the flattened planes could be)."""
    lead = shape[:-2]
    count = min(CHECKED_PLANES, max(lead, default=1))
    if count <= 1:
        return [tuple(0 for _ in lead)]
    planes = [tuple(int(k * (n - 1) / (count - 1) + 0.5) for n in lead) for k in range(count)]
    return list(dict.fromkeys(planes))


def _structure_elsewhere(image, index: tuple[int, ...]) -> bool:
    """Whether a plane larger than the central crop the checks read shows structure in one
    of four more crops (around its quarter points): a large field, mostly empty, whose
    centre is background."""
    from .psf_width import ESTIMATE_SIDE

    h, w = image.shape[-2:]
    if h <= ESTIMATE_SIDE and w <= ESTIMATE_SIDE:
        return False
    side = ESTIMATE_SIDE // 2
    for fy, fx in ((1, 1), (1, 3), (3, 1), (3, 3)):
        y0 = min(max(0, h * fy // 4 - side // 2), max(0, h - side))
        x0 = min(max(0, w * fx // 4 - side // 2), max(0, w - side))
        crop = np.asarray(image[tuple(index) + (slice(y0, y0 + side), slice(x0, x0 + side))])
        if not looks_like_noise(crop):
            return True
    return False


def _checked_crops(image) -> dict[tuple[int, ...], np.ndarray]:
    """{plane index: its central crop} for the checked planes (a large or lazy image: only
    those crops are read, once for every check); empty for an empty image."""
    from .psf_width import central_plane

    if 0 in tuple(image.shape):
        return {}
    return {index: central_plane(image, index)
            for index in _checked_planes(tuple(image.shape))}


def _image_warnings(image, crops: dict[tuple[int, ...], np.ndarray] | None = None
                    ) -> list[str]:
    """What is off in the pixels: the central crop of each checked plane (``crops``, read
    here where not given), each message once, naming the planes where not all."""
    if crops is None:
        crops = _checked_crops(image)
    if not crops:
        return []  # an empty image: the input checks say so
    planes = list(crops)
    found: dict[str, tuple[str, list[tuple[int, ...]]]] = {}
    for index, crop in crops.items():
        whole = image[index] if isinstance(image, np.ndarray) else None  # a view
        said = _plane_warnings(crop, whole)
        if "noise" in said and _structure_elsewhere(image, index):
            del said["noise"]  # a large field, empty in its centre
        for kind, message in said.items():
            found.setdefault(kind, (message, []))[1].append(index)
    out = []
    count = int(np.prod(image.shape[:-2], dtype=np.int64))
    for message, where in found.values():
        if len(where) < len(planes):
            names = ", ".join(str(i[0]) if len(i) == 1 else str(i) for i in where)
            message = (f"plane{'s' if len(where) > 1 else ''} {names} (of {count}, "
                       f"{len(planes)} checked): {message}")
        out.append(message)
    return out


def input_warnings(image, model, pixel_size=None, unit=None,
                   psf_sigma: float | None = None, samples: int | None = None) -> list[str]:
    """Why a result on ``image`` (Y, X or a stack, NumPy or lazy: the central crops of up to
    :data:`CHECKED_PLANES` planes are checked, input units) may not be trustworthy;
    ``pixel_size`` in ``unit`` where the file says it: one number (X), or (Y, X) sizes with
    one unit or one per axis; ``psf_sigma`` the PSF width a conditioned model is told (None:
    its default); ``samples`` the samples drawn."""
    crops = _checked_crops(image)
    out = _narrow_warnings(image, model)
    out.extend(_image_warnings(image, crops))
    out.extend(_photon_warnings(image, model, crops))
    out.extend(_pixel_size_warnings(model, pixel_size, unit))
    # (a width outside the trained range is said first; its being wider than the image's
    # blur as well goes without saying)
    out.extend(_psf_warnings(model, psf_sigma) or _wider_than_the_image(image, model, psf_sigma))
    if samples == 1:
        out.append("one sample was drawn, so the uncertainty is not measured (the samples' "
                   "variance is 0; the std is 0, or the calibration's floor, not an error "
                   "bar). Draw at least 2 samples (8 by default) for an uncertainty")
    return out


NARROW_PIXELS = 8  # input pixels across: a plane narrower than this is mostly the model's edge


def _narrow_warnings(image, model) -> list[str]:
    """A plane only a few pixels across in Y or X: the network sees its padding more than
    the image (a 5000 x 1 input gave means far below its darkest pixel)."""
    height, width = (int(n) for n in image.shape[-2:])
    if min(height, width) >= NARROW_PIXELS:
        return []
    return [f"the image is only {min(height, width)} pixel(s) across ({height} x {width}); the "
            "model reconstructs structures from their surroundings (it was trained on patches "
            "tens of pixels a side), so the result is mostly its guess at the image's edge: "
            "do not trust it"]


DIM_SHARE = 0.5  # integer counts spanning less than this share of the lowest trained signal


def _photon_warnings(image, model, crops: dict[tuple[int, ...], np.ndarray]) -> list[str]:
    """Integer counts (a camera's or a photon counter's) whose whole span, in every checked
    plane, is below half the lowest signal the model was trained with: far fewer photons
    than it ever saw (it was told nothing about them, and turns their noise into
    structure); ``crops`` the checked planes' central crops."""
    from .degradation import trained_optics

    optics = trained_optics(model)
    if optics is None or not crops or not np.issubdtype(np.dtype(image.dtype), np.integer):
        return []
    lowest = float(optics.photons[0])
    spans = [int(crop.max()) - int(crop.min()) for crop in crops.values()]
    if max(spans) == 0 or max(spans) >= DIM_SHARE * lowest:
        return []
    return [f"the image spans at most {max(spans)} counts (its darkest to its brightest "
            f"pixel): far fewer photons than the model was trained with ({lowest:g} or "
            "more at the brightest structure), so most of what it shows is its guess, not "
            "the sample; collect more light (longer exposure, binning, more frames "
            "averaged), or do not trust the result"]


def as_provenance(messages) -> str:
    """The input warnings as one provenance value (files and layers keep them: a warning on
    the terminal or a notification goes away)."""
    return " | ".join(messages)


def axis_sizes_nm(pixel_size, unit) -> dict[str, float]:
    """{'Y': nm, 'X': nm} for the axes whose size is a length (one number: X only)."""
    if pixel_size is None:
        return {}
    sizes = list(pixel_size)[-2:] if isinstance(pixel_size, (tuple, list, np.ndarray)) \
        else [pixel_size]
    units = list(unit)[-2:] if isinstance(unit, (tuple, list)) else [unit]
    units = units if len(units) == len(sizes) else [units[-1] if units else None] * len(sizes)
    out = {}
    for axis, size, u in zip("YX"[-len(sizes):], sizes, units):
        try:
            measured = pixel_size_nm(None if size is None else float(size),
                                     None if u is None else str(u))
        except (TypeError, ValueError):
            measured = None
        if measured is not None and np.isfinite(measured) and measured > 0:
            out[axis] = measured
    return out


def _nm(size: float) -> str:
    """A size in nm for a message: whole nanometres, or two digits below 10 nm (0.013)."""
    return f"{size:.0f}" if size >= 10 else f"{size:.2g}"


ANISOTROPY_TOLERANCE = 1.1  # Y and X pixel sizes further apart than this are "not square"


def _pixel_size_warnings(model, pixel_size, unit) -> list[str]:
    """Pixel sizes (per axis) far from the model's range, and pixels that are not square."""
    sizes = axis_sizes_nm(pixel_size, unit)
    out = []
    intended: dict[str, Any] = (getattr(model, "metadata", None) or {}).get("intended") or {}
    expected = intended.get("input_pixel_size_nm")
    if isinstance(expected, (list, tuple)) and len(expected) == 2:
        low, high = float(expected[0]), float(expected[1])
        finer, coarser = PIXEL_TOLERANCE
        far = {axis: nm for axis, nm in sizes.items() if not low / finer <= nm <= high * coarser}
        if far:
            which = (f"{_nm(next(iter(far.values())))} nm" if len(sizes) == 1 else
                     ", ".join(f"{_nm(nm)} nm along {axis}" for axis, nm in sizes.items()))
            out.append(f"the image's pixel size is {which}, but the model was made for "
                       f"inputs of {low:.0f}-{high:.0f} nm pixels: structures appear at "
                       "another size than it learned; resample the image or train a model "
                       "for this pixel size")
    if len(sizes) == 2:
        ratio = max(sizes.values()) / min(sizes.values())
        if ratio > ANISOTROPY_TOLERANCE:
            out.append(f"the image's pixels are not square ({_nm(sizes['Y'])} nm along Y, "
                       f"{_nm(sizes['X'])} nm along X): the model learned square pixels, so "
                       "structures look stretched to it and the blur differs between the "
                       "axes; resample the image to square pixels first")
    return out


# A width given this much wider than the image's own estimate (and by TOLD_WIDER_PX) is
# warned about: on the BioSR pair (estimate 2.06) told 2.8 gained 0.3 dB, told 3.2 lost 1.3
# (docs/benchmarks.md, session 26's sweep), told 3.5 lost 3.1, below bicubic; Jin (estimate
# 2.88) told 3.5 gained 0.6 (docs/benchmarks/quality_session29_told3.5_pairs.json)
TOLD_WIDER = 1.35
TOLD_WIDER_PX = 0.75


def _wider_than_the_image(image, model, psf_sigma: float | None) -> list[str]:
    """A PSF width given that is much wider than the image's own blur (estimated from its
    spectrum, relative to the model's output): the result comes out over-sharpened."""
    from .psf_width import estimated_width

    config = getattr(model, "config", None)
    if psf_sigma is None or config is None or not config.psf_conditioned:
        return []
    estimate = estimated_width(model, image)
    if estimate is None or not (psf_sigma >= TOLD_WIDER * estimate
                                and psf_sigma - estimate >= TOLD_WIDER_PX):
        return []
    return [f"the PSF width given, {psf_sigma:g} output pixels, is much wider than this "
            f"image's blur (about {estimate:.2g}, estimated from its spectrum relative to the "
            "model's output): a width too wide over-sharpens the result into dots and gaps "
            "(the BioSR pair, estimate 2.06: 21.1 dB told 3.5, 24.3 dB with the estimate, "
            "bicubic 21.4). The width the model takes is the blur relative to a SIM-like "
            "output, narrower than one fitted against a SIM image; leave it out to use the "
            "estimate"]


def _psf_warnings(model, psf_sigma: float | None) -> list[str]:
    """A PSF width outside what a conditioned model was trained on."""
    from .psf_width import psf_sigma_for, trained_range

    config = getattr(model, "config", None)
    if config is None or not config.psf_conditioned:
        return []
    told, trained = psf_sigma_for(model, psf_sigma), trained_range(model)
    if trained is None or trained[0] / PSF_TOLERANCE <= told <= trained[1] * PSF_TOLERANCE:
        return []
    return [f"the PSF width {told:g} output pixels is outside the widths the model was "
            f"trained on ({trained[0]:g}-{trained[1]:g}): it has not learned to undo this "
            "blur; check the PSF width, or train a model for these optics"]
