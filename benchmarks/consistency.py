"""Does the input's unexplained part say where the uncertainty is too small?

An idea measured, not shipped (docs/benchmarks.md, "Uncertainty from the input's
unexplained part"). The reconstruction, blurred with the width ``predict()`` used and binned
back to the input grid, should explain the input up to its noise. Where it does not, the
model's optics or structures do not fit, and its std (calibrated on simulated images where
they do) is likely too small. This script measures adding that part in quadrature:

    std' = sqrt(std^2 + (a * excess)^2)

with ``excess`` the local RMS of (input - affine fit of the blurred, binned mean) above the
noise (a Poisson-Gaussian variance a*I + b fitted robustly to neighbour differences of the
input), upsampled to the output grid and scaled by the same least-squares factor as the
std. Scored like benchmarks/quality.py (affine fit to the target, Spearman(std, |error|),
coverage of the 1- and 2-sigma bands), for a = 0 (what predict() returns), 1 and 2:

    python benchmarks/consistency.py --hq HELD_OUT_DIR \
        --pairs ../shared/data/real-pairs/biosr_microtubules ../shared/data/real-pairs/jin2020_microtubules \
        --out docs/benchmarks/consistency.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

import napari_cvdm as nc
from napari_cvdm import calibration
from napari_cvdm.metrics import affine_fit, spearman
from napari_cvdm.normalization import Normalization

sys.path.insert(0, str(Path(__file__).parent))
from quality import sources  # noqa: E402  (the same inputs as the quality benchmark)

FACTORS = (0.0, 1.0, 2.0)
LOCAL = 1.5  # input pixels: the neighbourhood of the local RMS


def noise_variance(x: np.ndarray) -> np.ndarray:
    """Per-pixel noise variance a*I + b, fitted to neighbour differences (robust medians
    in ten intensity bins; white noise gives var(x - mean of 4 neighbours) = 1.25 var)."""
    ring = np.array([[0, .25, 0], [.25, 0, .25], [0, .25, 0]])
    d2 = (x - ndimage.convolve(x, ring, mode="reflect")) ** 2 / 1.25
    level = ndimage.uniform_filter(x, 3, mode="reflect")
    edges = np.quantile(level, np.linspace(0, 1, 11))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (level >= lo) & (level <= hi)
        if inside.sum() >= 50:
            xs.append(np.median(level[inside]))
            ys.append(np.median(d2[inside]) / 0.4549)  # median of chi-square(1)
    slope, offset = np.polyfit(xs, ys, 1)
    return np.clip(slope * level + offset, 0.5 * min(ys), None)


def excess(lq_norm: np.ndarray, mean: np.ndarray, sigma: float, scale: int):
    """(excess on the output grid in the mean's units, share of the input's variance)."""
    h, w = lq_norm.shape
    low = ndimage.gaussian_filter(mean.astype(np.float64), sigma)[:h * scale, :w * scale]
    low = low.reshape(h, scale, w, scale).mean((1, 3))
    design = np.stack([low.ravel(), np.ones(low.size)], 1)
    coef = np.linalg.lstsq(design, lq_norm.ravel(), rcond=None)[0]
    residual = lq_norm - (design @ coef).reshape(h, w)
    noise = noise_variance(lq_norm)
    above = np.clip(ndimage.gaussian_filter(residual ** 2, LOCAL)
                    - ndimage.gaussian_filter(noise, LOCAL), 0, None)
    share = float(np.clip(residual ** 2 - noise, 0, None).mean() / lq_norm.var())
    # in input units; the blurred mean's gain coef[0] brings it to the mean's units
    return np.kron(np.sqrt(above), np.ones((scale, scale))) / max(abs(coef[0]), 1e-6), share


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="widefield-x2")
    p.add_argument("--hq", type=Path)
    p.add_argument("--pairs", type=Path, nargs="*", default=[])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.synthetic, args.sigmas, args.haze, args.pair_sigma = False, (1.5, 2.5, 3.5), 0.0, 3.0
    model = nc.load_model(args.model)
    table = model.metadata.get("calibration")
    rows = {}
    for kind, name, lq, target, _ in sources(args, np.random.default_rng(args.seed)):
        res = nc.predict(lq, model, samples=args.samples, steps=args.steps, eta=0.0,
                         seed=args.seed)
        norm = Normalization.fit(lq)
        h, w = target.shape
        mean = norm.apply(res.mean)[:h, :w]
        std = calibration.apply(np.sqrt(res.variance) / norm.half_range, table,
                                norm.apply(res.mean))[:h, :w]
        extra, share = excess(norm.apply(lq).astype(np.float64), norm.apply(res.mean),
                              res.info["psf_sigma"], model.config.scale)
        fitted = affine_fit(mean, target)
        gain = abs(np.polyfit(mean.ravel(), target.ravel(), 1)[0])
        error = np.abs(fitted - target)
        row = {"class": kind, "psf_sigma": res.info["psf_sigma"], "unexplained_share": share}
        for a in FACTORS:
            s = gain * np.sqrt(std ** 2 + (a * extra[:h, :w]) ** 2)
            row[f"a={a:g}"] = {"spearman": spearman(s, error),
                               **calibration.coverage(fitted, s, target)}
        rows[name] = row
        print(name, f"share {share:.3f}", "  ".join(
            f"a={a:g}: {row[f'a={a:g}']['spearman']:.2f} "
            f"{row[f'a={a:g}']['coverage_1sigma']:.0%}/{row[f'a={a:g}']['coverage_2sigma']:.0%}"
            for a in FACTORS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "samples": args.samples,
                                    "steps": args.steps, "per_image": rows}, indent=1))


if __name__ == "__main__":
    main()
