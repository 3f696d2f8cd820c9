"""Padding: one exact value filling flat regions along a plane's edges (registration,
stitching, a rotated canvas, NaNs filled with a number).

Padding is not part of the image. Where its value lies outside the range of the image's own
pixels (zeros below a camera offset, a saturated fill), counting it in the percentiles a
plane is normalised by squeezes the real pixels' contrast (a review measured a 16-27 %
change in their result, against 1-3 % between two seeds). A prediction's input therefore
leaves such padding out (:meth:`napari_cvdm.normalization.Normalization.fit` with
``padding=True``) and shows it to the network at the other pixels' median; a value inside
the image's range (a background clipped at zero around a cell, a fill at the median) is
data, or as good as data, and is left as it is. The input checks name both
(:func:`napari_cvdm.domain.flat_value`). Every decision is made here, from the whole plane
or, for a plane read in chunks, from counts summed over the chunks that equal the whole
plane's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SHARE = 0.02    # of the plane at the one value ...
EDGE = 0.25     # ... which holds this share of the pixels along the edges ...
CENTRE = 0.01   # ... and at most this share of the central half, or a quarter of its share of
                # the plane (a fill value the data hold too), so not the background itself ...
FLAT = 0.9      # ... and whose pixels have a right or lower neighbour at the value this often
                # (a band one pixel wide too; photon counts' zeros are scattered over the
                # whole image, centre included) ...
GAP = 0.05      # ... and which lies outside the other pixels' percentile range by at least
                # this share of it (a background clipped at zero continues the image's own
                # values: no gap; zeros below a camera offset of 300 on a span of 1,100: 0.3)
RIM = 1         # pixels next to padding are left out too: a rotation interpolates them
                # between the fill and the image


def edges(plane) -> list:
    """The four edges of a 2D plane, each pixel once, as slices of the plane's own type (a
    dask plane's are read lazily)."""
    return [plane[0], plane[-1], plane[1:-1, 0], plane[1:-1, -1]]


def edge_pixels(plane) -> np.ndarray:
    """The pixels along the four edges of a 2D plane (each once), in one NumPy array."""
    return np.concatenate([np.asarray(edge).ravel() for edge in edges(plane)])


def edge_candidate(edges: np.ndarray) -> float | None:
    """The value holding at least :data:`EDGE` of a plane's edge pixels, or None."""
    edges = np.asarray(edges)
    if edges.size == 0:
        return None
    values, counts = np.unique(edges, return_counts=True)
    if counts.max() < EDGE * edges.size:
        return None
    value = values[np.argmax(counts)]
    return float(value) if np.isfinite(value) else None


def central_half(shape: tuple[int, int]) -> tuple[slice, slice]:
    """The central half of a plane (a quarter of each side cut away)."""
    h, w = shape
    return slice(h // 4, h - h // 4), slice(w // 4, w - w // 4)


def central_size(shape: tuple[int, int]) -> int:
    """The number of pixels in :func:`central_half`."""
    ys, xs = central_half(shape)
    return (ys.stop - ys.start) * (xs.stop - xs.start)


def _dilated(at: np.ndarray) -> np.ndarray:
    """``at`` grown by :data:`RIM` pixels (3 x 3 neighbourhoods)."""
    out = at.copy()
    h, w = at.shape
    padded = np.pad(at, RIM, mode="edge")
    for dy in range(2 * RIM + 1):
        for dx in range(2 * RIM + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def padding_mask(image: np.ndarray, value: float) -> np.ndarray:
    """The pixels of a 2D ``image`` left out of the percentiles as padding at ``value``:
    those at the value and their neighbours (:data:`RIM`). A part of a plane with a rim of
    :data:`RIM` pixels more on each side (the image's edge excepted) gives the plane's own
    answer inside the rim."""
    at = np.asarray(image) == value
    if at.ndim != 2 or not at.any():
        return at
    return _dilated(at)


def shown(normalised: np.ndarray, image: np.ndarray, value: float, level: float) -> None:
    """What the network sees of padding, in place on the ``normalised`` image: the pixels at
    ``value`` at ``level`` (the other pixels' median, normalised), their rim (real pixels
    beside a shifted border, or a rotation's interpolation between the fill and the image)
    clipped to the normalised range [-1, 1], so kept where it is data."""
    at = np.asarray(image) == value
    if at.ndim != 2 or not at.any():
        return
    rim = _dilated(at) & ~at
    normalised[rim] = np.clip(normalised[rim], -1.0, 1.0)
    normalised[at] = level


def block_counts(block: np.ndarray, own: tuple[slice, slice], origin: tuple[int, int],
                 shape: tuple[int, int], value: float | None) -> dict:
    """What one chunk of a plane of ``shape`` says about padding at ``value``: ``block`` the
    chunk with up to :data:`RIM` pixels of its neighbours on each side, ``own`` the chunk
    within it, ``origin`` the chunk's corner in the plane. Summed over the chunks, the counts
    equal the whole plane's (:func:`find`)."""
    empty = {"at": 0, "centre": 0, "flat": 0, "inner": 0, "rim": None}
    block = np.asarray(block)
    if value is None or block.size == 0:
        return empty
    at_all = block == value
    at = at_all[own]
    if not at_all.any():
        return empty
    h, w = shape
    y0, x0 = origin
    bh, bw = at.shape
    # pixels with a right and a lower neighbour in the plane (as the whole plane's [:-1, :-1])
    ny, nx = min(bh, h - 1 - y0), min(bw, w - 1 - x0)
    oy, ox = own[0].start, own[1].start
    inner = at[:max(ny, 0), :max(nx, 0)]
    right = at_all[oy:oy + ny, ox + 1:ox + 1 + nx]
    down = at_all[oy + 1:oy + 1 + ny, ox:ox + nx]
    ys, xs = central_half(shape)
    cy = slice(max(ys.start - y0, 0), max(min(ys.stop - y0, bh), 0))
    cx = slice(max(xs.start - x0, 0), max(min(xs.stop - x0, bw), 0))
    rim = _dilated(at_all)[own]
    return {"at": int(np.count_nonzero(at)), "centre": int(np.count_nonzero(at[cy, cx])),
            "flat": int(np.count_nonzero(inner & (right | down))),
            "inner": int(np.count_nonzero(inner)), "rim": rim}


def is_flat_border(at: int, size: int, centre_at: int, centre_size: int, flat: int,
                   inner: int) -> bool:
    """Whether ``at`` pixels of ``size`` at the edges' candidate value, ``centre_at`` of the
    ``centre_size`` central ones, ``flat`` of whose ``inner`` have a neighbour at it too,
    lie as padding does."""
    share = at / max(size, 1)
    centre = centre_at / max(centre_size, 1)
    return (SHARE <= share < 1.0 and centre <= max(CENTRE, share / 4)
            and flat >= FLAT * max(inner, 1))


def outside(value: float, low: float, high: float) -> bool:
    """Whether ``value`` lies outside the other pixels' percentiles ``low``-``high`` by at
    least :data:`GAP` of their span (padding to leave out, not data)."""
    return high > low and max(low - value, value - high) >= GAP * (high - low)


def _candidate(plane: np.ndarray):
    """(value, mask at it, the counts :func:`is_flat_border` takes) for the edges'
    candidate value of a 2D plane, or None."""
    plane = np.asarray(plane)
    if plane.ndim != 2 or min(plane.shape) < 4:
        return None
    value = edge_candidate(edge_pixels(plane))
    if value is None:
        return None
    at = plane == value
    inner = at[:-1, :-1]
    flat = int(np.count_nonzero(inner & (at[:-1, 1:] | at[1:, :-1])))
    centre = at[central_half(plane.shape)]
    return value, at, (int(np.count_nonzero(at)), at.size, int(np.count_nonzero(centre)),
                       centre.size, flat, int(np.count_nonzero(inner)))


class Padding(NamedTuple):
    """Padding found in a 2D plane (:func:`find`)."""

    value: float
    share: float        # of the plane at the value
    mask: np.ndarray    # the pixels at the value and their rim (:func:`padding_mask`)
    left_out: bool      # outside the other pixels' range: left out of the percentiles


def find(plane: np.ndarray, percentiles=(0.1, 99.9)) -> Padding | None:
    """Where one exact value fills flat regions along a 2D plane's edges: the padding, and
    whether it lies outside the range (``percentiles``) of the other pixels, to be left out
    of the normalisation (:attr:`Padding.left_out`); inside it, it is data or as good as
    data. None where there is none. The input checks name both
    (:func:`napari_cvdm.domain.flat_value`); computed once for them and the prediction."""
    found = _candidate(plane)
    if found is None:
        return None
    value, at, counts = found
    if not is_flat_border(*counts):
        return None
    mask = _dilated(at)
    rest = np.asarray(plane, dtype=np.float64)[~mask]
    left_out = rest.size > 0 and outside(value, *np.percentile(rest, percentiles))
    return Padding(value, counts[0] / counts[1], mask, bool(left_out))


def write_back(at: np.ndarray, value: float, scale: int, origin: tuple[int, int],
               outputs: list[np.ndarray | None]) -> None:
    """Padding is padding in the result too: the output pixels that the input pixels of the
    mask ``at`` (the pixels at the padding ``value``) cover get the value in the mean
    (``outputs[0]``) and 0 in the variance and standard deviations (the others), not a flat
    region the network invented. ``origin``: the outputs' first row and column, counted in
    output pixels from the mask's corner (0, 0 for a whole plane)."""
    if not at.any():
        return
    h, w = outputs[0].shape
    oy, ox = origin
    up = np.repeat(np.repeat(at, scale, axis=0), scale, axis=1)[oy:oy + h, ox:ox + w]
    for i, out in enumerate(outputs):
        if out is not None:
            out[:up.shape[0], :up.shape[1]][up] = value if i == 0 else 0.0
