"""How much does one camera hot pixel change a reconstruction away from it?

    python benchmarks/hot_pixels.py --pair ../shared/data/real-pairs/biosr_microtubules \
        [--out docs/benchmarks/hot_pixels.json]

The pair's ``lr.tif`` with one pixel (row 40, column 90) set to 30,000 (the image spans about
350-1,500), predicted with the bundled model (4 samples, K = 4, seed 0, PSF width estimated
from the image). PSNR against ``hr.tif`` after the least-squares affine fit, leaving out the
hot pixel's 6 x 6 output neighbourhood; with hot pixels kept out of the networks and of the
width estimate (``napari_cvdm.spikes``, the release) and, as before it, given to both (and
given to the networks with the width told as estimated on the clean image). And the pair with
0.5% of its pixels hot (20 times its maximum), scored on every pixel.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    import tifffile

    import napari_cvdm as nc
    from napari_cvdm import inference, psf_estimate
    from napari_cvdm.metrics import affine_fit

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    lr = tifffile.imread(args.pair / "lr.tif").astype(np.float64)
    hr = tifffile.imread(args.pair / "hr.tif").astype(np.float64)
    hot = lr.copy()
    hot[40, 90] = 30000.0
    away = np.ones(hr.shape, bool)
    away[78:84, 178:184] = False

    def psnr_away(mean):
        fitted, target = affine_fit(mean[away], hr[away]), hr[away]
        span = target.max() - target.min()
        return float(10 * np.log10(span**2 / np.mean((fitted - target) ** 2)))

    options = dict(samples=4, steps=4, seed=0)
    clean = nc.predict(lr, **options)
    fixed = nc.predict(hot, **options)
    kept = inference.without_spikes, psf_estimate.spike_excess
    # as before the release: the networks and the width estimate given the hot pixel
    inference.without_spikes, psf_estimate.spike_excess = (lambda x: (x, None)), (lambda x: None)
    try:
        before = nc.predict(hot, **options)
        before_told = nc.predict(hot, psf_sigma=clean.info["psf_sigma"], **options)
    finally:
        inference.without_spikes, psf_estimate.spike_excess = kept
    many = lr.copy()  # 0.5% of the pixels hot (82): they set the 99.9th percentile
    rng = np.random.default_rng(1)
    many.flat[rng.choice(lr.size, int(0.005 * lr.size), replace=False)] = 20 * lr.max()
    spoiled = nc.predict(many, **options)
    away[:] = True  # scored on every pixel, as for a clean image
    rows = {"0.5% hot pixels (every pixel scored)": {"psnr": psnr_away(spoiled.mean),
                                                    "warnings": spoiled.info["input_warnings"]}}
    away[78:84, 178:184] = False
    rows |= {name: {"psnr_away": psnr_away(r.mean), "lowest_mean": float(r.mean.min()),
                   "psf_sigma": r.info["psf_sigma"]}
            for name, r in (("clean", clean), ("hot pixel, kept out (release)", fixed),
                            ("hot pixel given, width estimated (before)", before),
                            ("hot pixel given, width told as on the clean image", before_told))}
    for name, row in rows.items():
        print(f"{name}: {json.dumps(row)}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
