"""Fit a model's uncertainty calibration on held-out images and store it in the model file.

    python scripts/calibrate_model.py MODEL.cvdm.safetensors --hq HELD_OUT_DIR \
        [--synthetic 6] [--samples 8] [--steps 10] [--plot docs/images/reliability.png] \
        [-o CALIBRATED.cvdm.safetensors]

Held-out high-quality images (never trained on) and freshly generated structures get
simulated widefield inputs with the optics the model was trained with; predict() runs on
them; ``calibration.fit`` maps the samples' std to the expected |error| of the mean
(normalised units). Half the pixels fit, the other half report coverage before and after.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import napari_cvdm as nc
from napari_cvdm import calibration, structures
from napari_cvdm.data import load_hq
from napari_cvdm.degradation import Degradation, simulate
from napari_cvdm.metrics import spearman
from napari_cvdm.normalization import Normalization

CROP = 128


def held_out_pairs(hq_dir, synthetic: int, degradation: Degradation, seed: int):
    images = load_hq(hq_dir) if hq_dir else []
    rng = np.random.default_rng(seed)
    for i in range(synthetic):
        kind = structures.STRUCTURES[i % len(structures.STRUCTURES)]
        images.append((structures.generate(kind, (192, 192), 31.0, rng), f"synthetic-{kind}-{i}"))
    generator = torch.Generator().manual_seed(seed)
    for image, name in images:
        h, w = image.shape
        y0, x0 = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
        hq01 = np.ascontiguousarray(image[y0:y0 + CROP, x0:x0 + CROP])
        scale = degradation.scale  # a whole number of input pixels
        hq01 = hq01[:hq01.shape[0] // scale * scale, :hq01.shape[1] // scale * scale]
        lq, sigma = simulate(torch.from_numpy(hq01)[None, None], degradation, generator,
                             return_sigmas=True)
        yield lq[0, 0].numpy(), hq01 * 2 - 1, name, float(sigma[0])


def normalised_prediction(lq, model, samples, steps, seed, psf_sigma=None, augment=True):
    """A conditioned model is told ``psf_sigma`` (the simulated width: known optics; None:
    what predict() resolves by itself, as for a user who gives none); blind ones nothing."""
    told = psf_sigma if model.config.psf_conditioned else None
    res = nc.predict(lq, model, samples=samples, steps=steps, eta=0.0, seed=seed,
                     psf_sigma=told, augment=augment)
    norm = Normalization.fit(lq)
    return norm.apply(res.mean), np.sqrt(res.variance) / norm.half_range


def reliability_plot(std, error, table, path, mean=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4), dpi=120)
    for label, s in (("raw sample std", std), ("calibrated std", calibration.apply(std, table, mean))):
        edges = np.quantile(s, np.linspace(0, 1, 21))
        idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 19)
        pred = [np.sqrt(np.mean(s[idx == k] ** 2)) for k in range(20) if np.any(idx == k)]
        obs = [np.sqrt(np.mean(error[idx == k] ** 2)) for k in range(20) if np.any(idx == k)]
        ax.loglog(pred, obs, "o-", ms=3, label=label)
    lo, hi = 1e-3, 1.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="ideal")
    ax.set_xlabel("predicted std (RMS per bin)")
    ax.set_ylabel("observed RMS error of the mean")
    ax.legend(fontsize=8)
    ax.set_title("Reliability on held-out images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--hq", type=Path, default=None, help="held-out high-quality images")
    p.add_argument("--synthetic", type=int, default=6, help="generated held-out images")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="samples on the input's flips and rotations (predict's default)")
    p.add_argument("--brightness", action=argparse.BooleanOptionalAction, default=True,
                   help="let the calibration learn how much the mean's brightness adds to the "
                   "error (calibration module)")
    p.add_argument("--told", choices=("true", "auto"), default="true",
                   help="a conditioned model is told the simulated PSF width (true), or "
                   "nothing, so that predict() estimates it as for a user who gives none (auto)")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true", help="report only; do not write the model")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="write the calibrated model here (default: MODEL itself); its weights "
                        "are stored as float16, as bundled models are")
    args = p.parse_args(argv)
    if args.hq is None and args.synthetic < 1:
        p.error("no held-out images: give --hq HELD_OUT_DIR and/or --synthetic N (N >= 1)")
    if args.samples < 2:
        p.error("--samples must be at least 2: one sample has no spread to calibrate")
    model = nc.load_model(args.model)
    deg = model.metadata.get("training", {}).get("data", {}).get("degradation")
    # A model trained on measured pairs records no optics: simulate the typical widefield
    # range at the model's own scale.
    degradation = Degradation.from_dict(deg) if deg else \
        Degradation(psf_sigma=(1.5, 4.0), scale=model.config.scale)
    stds, errors, means = [], [], []
    for lq, target, name, sigma in held_out_pairs(args.hq, args.synthetic, degradation,
                                                  args.seed):
        told = sigma if args.told == "true" else None
        mean, std = normalised_prediction(lq, model, args.samples, args.steps, args.seed, told,
                                          args.augment)
        stds.append(std.ravel())
        means.append(mean.ravel())
        errors.append(np.abs(mean - target).ravel())
        print(f"{name}: RMSE {np.sqrt(np.mean((mean - target) ** 2)):.4f}, mean std "
              f"{std.mean():.4f}", flush=True)
    std, error, mean = (np.concatenate(v) for v in (stds, errors, means))
    signal = mean if args.brightness else None
    rng = np.random.default_rng(args.seed)
    half = rng.random(std.size) < 0.5
    table = calibration.fit(std[half], error[half],
                            mean=None if signal is None else signal[half])
    test_s, test_e, test_m = std[~half], error[~half], mean[~half]
    calibrated = calibration.apply(test_s, table, test_m)
    report = {"pixels": int(std.size), "signal_exponent": table.get("signal_exponent", 0.0)}
    if "nll_by_signal_exponent" in table:  # the held-out choice of the brightness term
        report["nll_by_signal_exponent"] = table["nll_by_signal_exponent"]
    scaled = calibration.apply(test_s, {**table, "method": "scale"}, test_m)
    for label, s in (("raw", test_s), ("scale", scaled), ("isotonic", calibrated)):
        report[label] = calibration.coverage(np.zeros_like(test_e), s, test_e)
        report[label]["spearman"] = round(spearman(s, test_e), 4)
    print(json.dumps(report, indent=1))
    if args.plot:
        reliability_plot(test_s, test_e, table, args.plot, test_m)
    if not args.dry_run:
        model.metadata["calibration"] = calibration.fit(std, error, mean=signal)
        model.metadata["calibration"]["held_out"] = report
        model.metadata["calibration"]["fitted_with"] = {
            "samples": args.samples, "steps": args.steps, "augment": args.augment,
            "told": args.told}
        output = args.output or args.model
        nc.save_model(model, output, half=True)
        print(f"calibration written into {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
