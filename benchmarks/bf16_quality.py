"""bfloat16 against float32 sampling quality on real images (issue 11's quality target).

    python benchmarks/bf16_quality.py --pairs ../shared/data/real-pairs/biosr_microtubules \
        ../shared/data/real-pairs/jin2020_microtubules [--model widefield-x2] [--json OUT]

For the bundled sample (simulated widefield of a real nuclei image, with its ground truth)
and each real widefield -> SIM pair: predict() with the same seed and settings (8 samples,
the default steps) in float32 and in bfloat16; PSNR of each mean after the least-squares
affine fit to the target, and the ratio of the mean standard deviations (bf16 / fp32).
Target: |PSNR difference| <= 0.1 dB and the std ratio within 5 % on every image. Timing is
not measured here (see speed_precision.py), so a shared CPU does not affect the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from few_steps import images  # the same inputs as the few-step curve (this folder)

import napari_cvdm as nc
from napari_cvdm.metrics import psnr
from napari_cvdm.normalization import Normalization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="widefield-x2")
    parser.add_argument("--pairs", type=Path, nargs="*", default=[])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = nc.load_model(args.model)
    rows = {}
    for name, lq, hq in images(args.pairs, crop=512):  # 512: the whole bundled sample
        target = Normalization.fit(hq).apply(hq)
        norm = Normalization.fit(lq)
        row = {}
        for precision in ("fp32", "bf16"):
            res = nc.predict(lq, model, samples=args.samples, seed=args.seed, device="cpu",
                             precision=precision)
            mean = norm.apply(res.mean)[:target.shape[0], :target.shape[1]]
            row[precision] = {"psnr": psnr(mean, target), "std": float(res.std.mean())}
        row["psnr_difference"] = row["bf16"]["psnr"] - row["fp32"]["psnr"]
        row["std_ratio"] = row["bf16"]["std"] / row["fp32"]["std"]
        rows[name] = row
        print(f"{name}: PSNR fp32 {row['fp32']['psnr']:.3f} bf16 {row['bf16']['psnr']:.3f} "
              f"(difference {row['psnr_difference']:+.3f} dB), std ratio "
              f"{row['std_ratio']:.4f}", flush=True)
    met = all(abs(r["psnr_difference"]) <= 0.1 and abs(r["std_ratio"] - 1) <= 0.05
              for r in rows.values())
    print(f"target (|dPSNR| <= 0.1 dB, std within 5 %) on every image: {'met' if met else 'missed'}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "samples": args.samples,
                                         "rows": rows, "met": met}, indent=1))


if __name__ == "__main__":
    main()
