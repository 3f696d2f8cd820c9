"""The README figure: a real widefield image, the CVDM mean and std, and the SIM target.

    python scripts/real_pair_figure.py ../shared/data/real-pairs/biosr_microtubules \
        --model widefield-x2 --out docs/images/real_pair.png

The pair is development data (BioSR, Qiao et al. 2021, CC BY 4.0): the figure shows it with
its attribution; the images themselves are never committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
import torch

import napari_cvdm as nc
from napari_cvdm.metrics import affine_fit, psnr
from napari_cvdm.normalization import Normalization
from napari_cvdm.resampling import upsample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pair", type=Path)
    parser.add_argument("--model", default="widefield-x2")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/images/real_pair.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr = tifffile.imread(args.pair / "lr.tif").astype(np.float32)
    hr = tifffile.imread(args.pair / "hr.tif").astype(np.float32)
    options = {"steps": args.steps} if args.steps else {}
    res = nc.predict(lr, args.model, samples=args.samples, seed=0, **options)
    target = Normalization.fit(hr).apply(hr)
    norm = Normalization.fit(lr)
    mean = norm.apply(res.mean)
    up = upsample(torch.from_numpy(norm.apply(lr))[None, None], 2)[0, 0].numpy()
    panels = [("widefield input (bicubic x2)", up, f"{psnr(up, target):.1f} dB"),
              (f"CVDM mean of {args.samples}", mean, f"{psnr(mean, target):.1f} dB"),
              ("CVDM standard deviation", res.std / norm.half_range, "where not to trust the mean"),
              ("SIM target", target, "")]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3), dpi=110)
    for ax, (title, image, note) in zip(axes, panels):
        shown = affine_fit(image, target) if "deviation" not in title and "target" not in title else image
        low, high = np.percentile(shown, (0.5, 99.5))
        ax.imshow(shown, cmap="magma" if "deviation" in title else "gray", vmin=low, vmax=high)
        ax.set_title(f"{title}\n{note}", fontsize=9)
        ax.axis("off")
    fig.suptitle("Real BioSR microtubules (Qiao et al., Nat. Methods 2021, CC BY 4.0), never "
                 "seen in training; PSNR after an affine fit to the SIM target", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
