"""Does the std rank the error better when averaged over neighbouring pixels?

    python benchmarks/smoothed_std.py ../shared/data/real-pairs/biosr_microtubules \
        ../shared/data/real-pairs/jin2020_microtubules [--model widefield-x2]

On each real pair (the quality benchmark's inputs, settings and affine fit: 8 samples, K = 4,
the width ``predict()`` estimates), Spearman(std, |error|) of the raw sample std with its
variance averaged over a Gaussian of 0 (none) to 3 output pixels, of the calibrated std
``predict()`` returns, and of the calibration applied to the variance averaged over 1 px.
Prints one row per input and the mean. Results: docs/benchmarks.md ("Tried in session 26").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

import napari_cvdm as nc
from napari_cvdm import calibration
from napari_cvdm.metrics import affine_fit, spearman
from napari_cvdm.normalization import Normalization

WIDTHS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)  # output pixels


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path, nargs="+", help="folders with lr.tif / hr.tif")
    parser.add_argument("--model", default="widefield-x2")
    args = parser.parse_args(argv)
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import quality

    model = nc.load_model(args.model)
    table = model.metadata["calibration"]
    source = argparse.Namespace(hq=None, synthetic=False, pairs=args.pairs, seed=0, sigmas=[],
                                haze=0.0, pair_sigma=3.0)
    print("input | raw, smoothed " + " / ".join(f"{w:g}" for w in WIDTHS)
          + " px | calibrated | calibrated, smoothed 1 px")
    rows = []
    for _, name, lq, target, _ in quality.sources(source, np.random.default_rng(2024)):
        norm = Normalization.fit(lq)
        h, w = min(lq.shape[0] * 2, target.shape[0]), min(lq.shape[1] * 2, target.shape[1])
        res = nc.predict(lq, model, samples=8, steps=4, eta=0.0, seed=0, psf_sigma=None)
        mean = norm.apply(res.mean)[:h, :w]
        variance = (res.variance / norm.half_range**2)[:h, :w].astype(np.float64)
        error = np.abs(affine_fit(mean, target[:h, :w]) - target[:h, :w])
        smoothed = {s: ndimage.gaussian_filter(variance, s) if s else variance for s in WIDTHS}
        row = [spearman(np.sqrt(smoothed[s]), error) for s in WIDTHS]
        for v in (variance, smoothed[1.0]):
            row.append(spearman(calibration.apply(np.sqrt(v).astype(np.float32), table, mean),
                                error))
        rows.append(row)
        print(name, "|", " ".join(f"{v:.3f}" for v in row), flush=True)
    print("mean |", " ".join(f"{v:.3f}" for v in np.mean(rows, 0)))


if __name__ == "__main__":
    main()
