"""Samples drawn on the flips and rotations of the input, and which run together.

A convolutional network has no preferred orientation in principle, but a trained one does:
its errors differ between an image and the same image rotated. With ``augment`` (the
default), sample ``i`` of a pixel is drawn on the input turned by the dihedral element
``i mod n`` (``n = min(8, samples)``: identity, the flips, the transposes) and turned back,
so the mean averages those errors out and the spread between orientations joins the
uncertainty; it costs nothing extra, as every sample is still one pass of the sampler.
Measured in docs/benchmarks.md ("Samples on the flips and rotations").

The samples of transforms that keep the tile's orientation (or all transpose it) run side by
side in one network call (:class:`Pass`), so a call holds as many images as without
augmentation (``batch`` per tile).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TRANSFORMS = 8  # the dihedral group of the square: 4 flips, each with or without transpose


def transposes(k: int) -> bool:
    """Whether dihedral element ``k`` swaps the image's height and width."""
    return k >= 4


def forward(t: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0 = identity) applied to the last two dimensions of ``t``."""
    if transposes(k):
        t = t.transpose(-1, -2)
    dims = [d for bit, d in ((1, -1), (2, -2)) if k & bit]
    return torch.flip(t, dims) if dims else t


def inverse(t: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`forward` with the same ``k``."""
    dims = [d for bit, d in ((1, -1), (2, -2)) if k & bit]
    if dims:
        t = torch.flip(t, dims)
    return t.transpose(-1, -2) if transposes(k) else t


@dataclass(frozen=True)
class Pass:
    """Samples run side by side: ``ids[j][i]`` is drawn in row ``j`` on ``transforms[i]``.

    Every transform of a pass has the same orientation and number of samples, so a network
    call stacks ``len(transforms)`` turned copies of the tiles; ``rows_per_call`` rows go
    into one call.
    """

    transforms: tuple[int, ...]
    ids: tuple[tuple[int, ...], ...]
    rows_per_call: int

    def calls(self) -> list[tuple[tuple[int, ...], ...]]:
        """The rows of each network call, in order."""
        step = self.rows_per_call
        return [self.ids[j:j + step] for j in range(0, len(self.ids), step)]


def passes(samples: int, batch: int, augment: bool) -> list[Pass]:
    """How ``samples`` samples of a tile group are drawn, ``batch`` per tile and call.

    Without ``augment`` this is one pass on the identity, ``batch`` samples per call.
    """
    n = min(TRANSFORMS, samples) if augment else 1
    batch = max(1, batch)
    ids = {k: list(range(k, samples, n)) for k in range(n)}
    out: list[Pass] = []
    piece: list[int] = []

    def flush() -> None:
        if piece:
            rows = len(ids[piece[0]])
            out.append(Pass(tuple(piece), tuple(tuple(ids[k][j] for k in piece)
                                                 for j in range(rows)),
                            max(1, batch // len(piece))))
            piece.clear()

    for k in range(n):
        if piece and ((transposes(k), len(ids[k])) != (transposes(piece[0]), len(ids[piece[0]]))
                      or len(piece) == batch):
            flush()
        piece.append(k)
    flush()
    return out


def network_calls(samples: int, batch: int, augment: bool) -> int:
    """Sampler runs (each of ``steps`` evaluations) per tile group."""
    return sum(len(p.calls()) for p in passes(samples, batch, augment))
