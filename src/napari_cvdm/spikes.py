"""Isolated hot pixels: single pixels far brighter than all eight of their neighbours.

A widefield image is blurred by its PSF over several pixels, so nothing a microscope images
is one pixel far above all its neighbours; a camera's hot pixels and cosmic rays are. The
networks normalise their features over a whole tile (GroupNorm), so one such pixel changes
the reconstruction everywhere: a single hot pixel at 60 times the BioSR pair's range took its
PSNR away from the pixel from 27.1 to 23.6 dB, pixels 40 away included, with a ring of
negative values around it (docs/reliability.md, "Hot pixels"). The network is therefore
given the plane with each such pixel at its neighbours' median, and the pixel's excess above
that median goes to the output unchanged (on its ``scale`` x ``scale`` block of the output
grid) and into the variance: the input loses nothing, the rest of the image is unharmed, and
the pixel is marked unsure.

A pixel is a spike when it exceeds its brightest neighbour by more than :data:`SPIKE_MIN`
normalised units (twice the image's 0.1-99.9 percentile range: only values far outside the
range the networks were trained on disturb them; below that a pixel is bright structure or
noise to them like any other) and by more than :data:`SPIKE_RATIO` times the spread of its
neighbours (brightest minus darkest). A point source blurred by a PSF of sigma 0.75 input
pixels (the narrowest the bundled model knows) exceeds its brightest neighbour by 0.59 of its
peak while its neighbours spread over 0.24: a ratio of 2.4, below 3. Noise does not reach
these margins: none of 4 million pixels of Gaussian or Poisson noise (0.5 to 20 photons) is
a spike (tests/test_spikes.py). Two such pixels side by side (a cosmic ray's hit, two hot
pixels) are caught as a pair by the same margins over their other neighbours; three or more
in a row or a cluster are not, nor a pair across the image's edge row or column (the reflected
border shows a pixel its partner twice).
"""

from __future__ import annotations

import numpy as np

SPIKE_MIN = 4.0     # normalised units above the brightest neighbour
SPIKE_RATIO = 3.0   # ... and this many times the neighbours' spread
_ROWS = 64          # rows per strip: temporaries of a strip, not of the plane
HALO = 2            # a part of a plane judges its pixels as the plane does but for this rim
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices past either end of 0..n-1 mirrored back (as ``np.pad(mode="reflect")``)."""
    i = np.abs(i)
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


def spike_excess(x: np.ndarray) -> np.ndarray | None:
    """For a normalised (H, W) plane: the excess of each spike over its neighbours' median
    (float32, zero elsewhere), or None where the plane has no spike.

    A spike is one pixel far above all eight neighbours (a hot pixel), or one of two
    adjacent pixels far above the other neighbours of both (a cosmic ray's hit, two hot
    pixels side by side): each is the other's brightest neighbour, exceeds its second
    brightest by the same margins, and the excess is over the median of its seven other
    neighbours.

    Borders are reflected (a border pixel's neighbours are its inner neighbours), so a
    pixel's verdict depends on its 5 x 5 neighbourhood only (a pair's on its partner's
    3 x 3): a part of the plane gives the same verdicts as the whole plane everywhere but
    on its own two outer rings (:data:`HALO`). Strips of rows keep the temporaries small (a
    few strip-sized buffers beside a padded copy).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or min(x.shape) < 2:
        return None
    height, width = x.shape
    padded = np.pad(x, 1, mode="reflect")
    excess = None
    candidates = []  # (rows, cols) of possible pair members, judged once all are known
    for r0 in range(0, height, _ROWS):
        r1 = min(r0 + _ROWS, height)
        views = [padded[r0 + 1 + dy:r1 + 1 + dy, 1 + dx:width + 1 + dx] for dy, dx in _OFFSETS]
        brightest, lowest = views[0].copy(), views[0].copy()
        second = np.full_like(brightest, -np.inf)
        for view in views[1:]:
            np.maximum(second, np.minimum(brightest, view), out=second)
            np.maximum(brightest, view, out=brightest)
            np.minimum(lowest, view, out=lowest)
        here = x[r0:r1]
        above = here - brightest
        spikes = (above > SPIKE_MIN) & (above > SPIKE_RATIO * (brightest - lowest))
        above_second = here - second
        pair = (~spikes & (above_second > SPIKE_MIN)
                & (above_second > SPIKE_RATIO * (second - lowest))
                & (brightest - second > SPIKE_MIN))
        if pair.any():
            ys, xs = np.nonzero(pair)
            candidates.append((r0 + ys, xs))
        if not spikes.any():
            continue
        if excess is None:
            excess = np.zeros_like(x)
        ys, xs = np.nonzero(spikes)
        median = np.median(np.stack([view[ys, xs] for view in views]), axis=0)
        excess[r0 + ys, xs] = x[r0 + ys, xs] - median
    if candidates:
        excess = _pair_excess(x, padded, candidates, excess)
    return excess


def _brightest_neighbour(padded: np.ndarray, ys: np.ndarray, xs: np.ndarray):
    """(the eight neighbours' values (8, N), the plane coordinates of the brightest)."""
    height, width = padded.shape[0] - 2, padded.shape[1] - 2
    around = np.stack([padded[ys + 1 + dy, xs + 1 + dx] for dy, dx in _OFFSETS])
    toward = np.asarray(_OFFSETS)[np.argmax(around, axis=0)]
    return around, _reflect(ys + toward[:, 0], height), _reflect(xs + toward[:, 1], width)


def _pair_excess(x: np.ndarray, padded: np.ndarray, candidates, excess):
    """``excess`` with the pairs among ``candidates`` added: a member's brightest neighbour
    is its partner, and the partner's brightest neighbour is the member; the partner is a
    member too, or a spike on its own (far brighter than the member: then its excess is
    taken over its seven other neighbours as well)."""
    ys = np.concatenate([c[0] for c in candidates])
    xs = np.concatenate([c[1] for c in candidates])
    around, partner_y, partner_x = _brightest_neighbour(padded, ys, xs)
    single = excess[partner_y, partner_x] != 0 if excess is not None else \
        np.zeros(ys.size, bool)
    members = {(int(y), int(x_)): i for i, (y, x_) in enumerate(zip(ys, xs))}
    keep = np.zeros(ys.size, bool)
    for i in range(ys.size):
        j = members.get((int(partner_y[i]), int(partner_x[i])))
        keep[i] = j is not None and (int(partner_y[j]), int(partner_x[j])) == (ys[i], xs[i])
    if single.any():  # the partner a spike by itself: it must point back at the member
        _, back_y, back_x = _brightest_neighbour(padded, partner_y[single], partner_x[single])
        keep[single] = (back_y == ys[single]) & (back_x == xs[single])
    if not keep.any():
        return excess
    if excess is None:
        excess = np.zeros_like(x)
    others = np.sort(around[:, keep], axis=0)[:-1]  # the seven besides the partner
    excess[ys[keep], xs[keep]] = x[ys[keep], xs[keep]] - np.median(others, axis=0)
    lone = keep & single
    if lone.any():
        py, px = partner_y[lone], partner_x[lone]
        their = np.sort(_brightest_neighbour(padded, py, px)[0], axis=0)[:-1]
        excess[py, px] = x[py, px] - np.median(their, axis=0)
    return excess


def without_spikes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(the plane with its spikes at their neighbours' median, their excess or None)."""
    excess = spike_excess(x)
    if excess is None:
        return x, None
    return np.asarray(x, dtype=np.float32) - excess, excess


def spike_count(x: np.ndarray) -> int:
    """How many spikes a normalised plane holds."""
    excess = spike_excess(x)
    return 0 if excess is None else int(np.count_nonzero(excess))


def block_excess(excess: np.ndarray, y: int, x: int, height: int, width: int,
                 scale: int, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The excess on the output grid over the window (y, x, height, width): each input
    pixel's value on its ``scale`` x ``scale`` block. ``excess`` may be a part of the plane
    that starts at input pixel ``origin``."""
    rows = np.arange(y, y + height) // scale - origin[0]
    cols = np.arange(x, x + width) // scale - origin[1]
    return excess[np.ix_(rows, cols)]
