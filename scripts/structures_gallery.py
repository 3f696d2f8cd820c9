"""Make docs/images/structures_gallery.png: each generated structure and its simulated widefield.

Usage: python scripts/structures_gallery.py [--out docs/images/structures_gallery.png] [--seed 0]
       python scripts/structures_gallery.py --time     (generation time per kind, one core)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_cvdm.degradation import Degradation, simulate
from napari_cvdm.structures import STRUCTURES, generate

PIXEL_NM = 31.0
SHAPE = (256, 256)
ZOOM = 64   # side of the zoomed crop, high-resolution pixels (2 um)
OPTICS = Degradation(psf_sigma=3.5, scale=2, photons=(300.0, 300.0), background=(3.0, 3.0),
                     read_noise=(1.5, 1.5))


def _stretch(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.8])
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)


def _busiest_window(image: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size x size window (on a half-window grid) with most signal."""
    step = size // 2
    corners = [(y, x) for y in range(0, image.shape[0] - size + 1, step)
               for x in range(0, image.shape[1] - size + 1, step)]
    bright = image > 0.3  # count structure, not background haze
    return max(corners, key=lambda c: bright[c[0]:c[0] + size, c[1]:c[1] + size].sum())


def _time_generators(repeats: int = 8) -> None:
    """CPU seconds (process time, so other load on the machine counts less) per image."""
    for shape in ((256, 256), (512, 512)):
        for kind in STRUCTURES:
            seconds = []
            for seed in range(repeats):
                start = time.process_time()
                generate(kind, shape, PIXEL_NM, rng=seed)
                seconds.append(time.process_time() - start)
            print(f"{shape[0]}x{shape[1]} {kind:13s} mean {np.mean(seconds):.3f} s  "
                  f"max {np.max(seconds):.3f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/structures_gallery.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time", action="store_true", help="only time the generators")
    args = parser.parse_args(argv)
    if args.time:
        _time_generators()
        return

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generator = torch.Generator().manual_seed(args.seed)
    fig, axes = plt.subplots(4, len(STRUCTURES), figsize=(3.2 * len(STRUCTURES), 13.2))
    for column, kind in enumerate(STRUCTURES):
        image = generate(kind, SHAPE, PIXEL_NM, rng=np.random.default_rng([args.seed, column]))
        widefield = simulate(torch.from_numpy(image)[None, None], OPTICS, generator)[0, 0].numpy()
        y0, x0 = _busiest_window(image, ZOOM)
        crop = image[y0:y0 + ZOOM, x0:x0 + ZOOM]
        panels = [(image, f"{kind}: {SHAPE[0] * PIXEL_NM / 1000:.1f} um, {PIXEL_NM:g} nm px"),
                  (crop, f"zoom {ZOOM * PIXEL_NM / 1000:.1f} um"),
                  (widefield, f"widefield, sigma 3.5 px, x2 bin, {OPTICS.photons[0]:g} photons"),
                  (generate(kind, SHAPE, PIXEL_NM, rng=np.random.default_rng([args.seed + 1, column])),
                   f"{kind}: another draw")]
        for row, (panel, title) in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(_stretch(panel), cmap="gray", interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        axes[0, column].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), ZOOM, ZOOM, fill=False,
                                                edgecolor="tab:orange", linewidth=1))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
