"""Samples told a spread of PSF widths around the one ``predict()`` resolves, pooled.

A PSF-conditioned model is told one width; the width the image gives is uncertain
(docs/benchmarks.md, "the width predict() tells the model"). This runs ``predict()`` once per
factor in ``--factors`` (each told the resolved width times the factor, ``--samples`` samples,
seeds 0, 1, ...), pools the runs (mean of the means; variance = mean of the variances plus the
variance of the means, the width's share), calibrates the pooled std with the model's map and
scores it on the real pairs with ``benchmarks/quality.py``'s ``scored`` (PSNR, SSIM,
Spearman(std, |error|), 1/2-sigma coverage after the least-squares fit). ``--factors 1,1,1``
is the same number of samples at one width (the baseline).

Usage: python benchmarks/told_spread.py --factors 0.85,1,1.18 [--model M] [PAIR_FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

import napari_cvdm as nc
from napari_cvdm import calibration
from napari_cvdm.normalization import Normalization
from napari_cvdm.psf_width import resolve
from quality import scored

PAIRS = Path(__file__).resolve().parents[2] / "shared/data/real-pairs"


def pooled(lr: np.ndarray, model, factors: list[float], samples: int, steps: int):
    """(mean, calibrated std, width told at factor 1), normalised units, pooled over runs."""
    norm = Normalization.fit(lr)
    width = resolve(model, None, lr)[0]
    means, variances = [], []
    for seed, factor in enumerate(factors):
        result = nc.predict(lr, model, samples=samples, steps=steps, eta=0.0, seed=seed,
                            psf_sigma=width * factor, augment=True)
        means.append(norm.apply(result.mean))
        variances.append(result.variance / norm.half_range**2)
    mean = np.mean(means, 0)
    variance = np.mean(variances, 0) + np.var(means, 0)
    table = model.metadata.get("calibration")
    return mean, calibration.apply(np.sqrt(variance), table, mean), width


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="*", type=Path,
                        default=[PAIRS / "biosr_microtubules", PAIRS / "jin2020_microtubules"])
    parser.add_argument("--factors", required=True,
                        help="comma-separated factors on the resolved width, one run each")
    parser.add_argument("--model", default="widefield-x2")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, help="a JSON file for the scores")
    args = parser.parse_args(argv)
    factors = [float(f) for f in args.factors.split(",")]
    model = nc.load_model(args.model)
    scores = {}
    for folder in args.pairs:
        hr = tifffile.imread(folder / "hr.tif").astype(np.float32)
        target = Normalization.fit(hr).apply(hr)
        for lr_path in sorted(folder.glob("lr*.tif")):
            lr = tifffile.imread(lr_path).astype(np.float32)
            mean, std, width = pooled(lr, model, factors, args.samples, args.steps)
            h, w = target.shape
            mean, std = mean[:h, :w], std[:h, :w]
            row = {"told": width, **scored(mean, target, std)}
            scores[f"{folder.name}/{lr_path.name}"] = row
            print(f"{folder.name}/{lr_path.name} (told {width:.2f} x {factors}): PSNR "
                  f"{row['psnr']:.2f}  Spearman {row['spearman']:.3f}  coverage "
                  f"{row['coverage_1sigma']:.1%} / {row['coverage_2sigma']:.1%}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"factors": factors, "model": args.model,
                                        "samples": args.samples, "steps": args.steps,
                                        "pairs": scores}, indent=2))
    return scores


if __name__ == "__main__":
    main()
