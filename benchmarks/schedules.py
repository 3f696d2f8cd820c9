"""The paper's central claim on our data: a learned schedule versus hand-tuned ones.

Trains the same preset with the learned CVDM schedule and with fixed linear and cosine
schedules (same data, seed, steps and learning rate), then scores each on held-out real
images degraded like the bundled sample (PSNR/SSIM of the mean of 4 deterministic samples).

    python scripts/demo_data.py demo-data
    python benchmarks/schedules.py --train demo-data/train --test demo-data/test \
        --preset tiny --steps 600 --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality import degrade, draw_samples  # noqa: E402

from napari_cvdm.metrics import psnr, ssim  # noqa: E402
from napari_cvdm.normalization import Normalization  # noqa: E402
from napari_cvdm.resampling import upsample  # noqa: E402
from napari_cvdm.training import TrainingSettings, train  # noqa: E402


def score(model, test_dir: Path, crop: int, seed: int) -> dict[str, float]:
    rows = []
    for path in sorted(test_dir.glob("*.tif")):
        truth = tifffile.imread(path).astype(np.float64)
        cy, cx = truth.shape[0] // 2, truth.shape[1] // 2
        truth = truth[cy - crop // 2:cy + crop // 2, cx - crop // 2:cx + crop // 2]
        lq = degrade(truth, seed)
        x = upsample(torch.from_numpy(Normalization.fit(lq).apply(lq))[None, None], 2)
        target = Normalization.fit(truth).apply(truth)
        samples = draw_samples(model, x, 4, 10, 0.0, "ddim", seed)
        rows.append((psnr(samples.mean(0), target), ssim(samples.mean(0), target),
                     psnr(samples[0], target), psnr(x[0, 0].numpy(), target)))
    a = np.asarray(rows)
    return {"psnr_mean4": a[:, 0].mean(), "ssim_mean4": a[:, 1].mean(),
            "psnr_1sample": a[:, 2].mean(), "psnr_bicubic": a[:, 3].mean()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    results = {}
    for schedule in ("learned", "linear", "cosine"):
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        settings = TrainingSettings(preset=args.preset, steps=args.steps, schedule=schedule,
                                    learning_rate=args.lr, seed=args.seed,
                                    validation_every=args.steps, checkpoint_every=args.steps)
        model = train(output=args.out / f"schedule_{schedule}.cvdm.safetensors", hq=args.train,
                      settings=settings)
        results[schedule] = score(model, args.test, args.crop, args.seed)
        results[schedule]["train_seconds"] = time.perf_counter() - started
        (args.out / f"schedule_{schedule}.cvdm.safetensors").unlink(missing_ok=True)
        for suffix in (".cvdm.train-state.safetensors",):
            (args.out / f"schedule_{schedule}{suffix}").unlink(missing_ok=True)
        print(schedule, {k: round(v, 3) for k, v in results[schedule].items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "schedules.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    print("| schedule | PSNR mean of 4 | SSIM mean of 4 | PSNR 1 sample | PSNR bicubic |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['psnr_mean4']:.2f} | {r['ssim_mean4']:.3f} | "
              f"{r['psnr_1sample']:.2f} | {r['psnr_bicubic']:.2f} |")


if __name__ == "__main__":
    main()
