"""How few sampling steps keep the quality: the mean of N samples and one sample against K.

    python benchmarks/few_steps.py --model widefield-x2 \
        --pairs ../shared/data/real-pairs/biosr_microtubules ../shared/data/real-pairs/jin2020_microtubules

For the bundled sample (its ground truth ships with it) and each real pair: PSNR and SSIM of
the mean of ``--samples`` samples and of one sample, and Spearman(std, |error|), for
K = 2, 4, 6, 10, 16, 25, 50 deterministic (eta = 0) steps and the reference T-step sampler
(``--reference-samples`` samples, it is 200 steps each). Scores after a least-squares affine
fit to the percentile-normalised target. Prints the smallest K whose mean is within 0.1 dB
of the best K on every image: the default of the library, the CLI and the widget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile

import napari_cvdm as nc
from napari_cvdm.metrics import affine_fit, psnr, spearman, ssim
from napari_cvdm.normalization import Normalization
from napari_cvdm.sample_data import path as sample_path

STEPS = (2, 4, 6, 10, 16, 25, 50)


def images(pairs, crop: int):
    truth = tifffile.imread(sample_path("nuclei_groundtruth.tif")).astype(np.float32)
    lq = tifffile.imread(sample_path("nuclei_widefield.tif")).astype(np.float32)
    c = crop // 2
    yield "bundled nuclei sample", lq[:c, :c], truth[:crop, :crop]
    for folder in pairs:
        for name in ("lr.tif", "lr_lowsnr.tif"):
            if (folder / name).is_file():
                yield f"{folder.name}/{name}", tifffile.imread(folder / name).astype(np.float32), \
                    tifffile.imread(folder / "hr.tif").astype(np.float32)


def run(model, lq, truth, steps, samples, sampler, seed):
    started = time.perf_counter()
    res = nc.predict(lq, model, samples=samples, steps=steps or 1, eta=0.0 if sampler == "ddim"
                     else 1.0, sampler=sampler, seed=seed)
    seconds = time.perf_counter() - started
    target = Normalization.fit(truth).apply(truth)
    norm = Normalization.fit(lq)
    mean, std = norm.apply(res.mean), np.sqrt(res.variance)
    one = nc.predict(lq, model, samples=1, steps=steps or 1, eta=0.0 if sampler == "ddim" else 1.0,
                     sampler=sampler, seed=seed + 1)
    error = np.abs(affine_fit(mean, target) - target)
    return {"mean_psnr": psnr(mean, target), "mean_ssim": ssim(mean, target),
            "one_psnr": psnr(norm.apply(one.mean), target), "spearman": spearman(std, error),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="widefield-x2")
    parser.add_argument("--pairs", type=Path, nargs="*", default=[])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--reference-samples", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="*", default=list(STEPS))
    parser.add_argument("--crop", type=int, default=256, help="sample crop, output pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args()
    model = nc.load_model(args.model)
    table: dict[str, dict] = {}
    for name, lq, truth in images(args.pairs, args.crop):
        rows = {f"K={k}": run(model, lq, truth, k, args.samples, "ddim", args.seed)
                for k in args.steps}
        if args.reference_samples:
            rows[f"reference T={model.config.timesteps}"] = run(
                model, lq, truth, 0, args.reference_samples, "reference", args.seed)
        table[name] = rows
        print(f"\n{name}\n| steps | mean PSNR | mean SSIM | 1-sample PSNR | Spearman | s |\n"
              "| --- | --- | --- | --- | --- | --- |")
        for k, r in rows.items():
            print(f"| {k} | {r['mean_psnr']:.2f} | {r['mean_ssim']:.3f} | {r['one_psnr']:.2f} | "
                  f"{r['spearman']:.2f} | {r['seconds']:.1f} |", flush=True)
    chosen = next(k for k in args.steps if all(
        rows[f"K={k}"]["mean_psnr"] >= max(rows[f"K={j}"]["mean_psnr"] for j in args.steps) - 0.1
        for rows in table.values()))
    print(f"\nsmallest K within 0.1 dB of the best on every image: {chosen}")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "samples": args.samples,
                                        "results": table, "chosen_steps": chosen}, indent=1))


if __name__ == "__main__":
    main()
