"""PSF-width benchmark: the blind estimate (napari_cvdm.psf_estimate) against the true width.

High-quality images (generated structures, ``--per-class`` per class, and real ones from the
``--hq`` folders: centre crops of 256 pixels, percentile-normalised to [0, 1] as in
benchmarks/quality.py) are degraded like quality.py's ``degrade()``: a Gaussian PSF of sigma
output pixels, x2 binning, camera noise at each ``--photons`` level (background 5 photons,
read noise 2 electrons). Reported per photon level, per true sigma and per structure class:
the median estimate, the median and 90th percentile absolute error, and how many inputs the
estimator refused (ValueError: no structure above the noise).

The estimate is the *total* blur of the input: the PSF and the target's own width (the SIM or
STED resolution of a real target, the size of the structure). That width, sigma_hq, is the
estimate on the target itself (scale 1); "vs total" errors compare with
sqrt(sigma^2 + sigma_hq^2). Real widefield inputs (``--pairs`` folders with lr.tif,
lr_lowsnr.tif and their SIM hr.tif) get their estimate and the width relative to their SIM
target: the sigma at which the SIM target, degraded like the other inputs, gets the same
estimate (what the pairs' README fits by least squares, in SIM pixels).

    python benchmarks/psf_estimate.py --hq /work/train-data/heldout /work/train-data/hq \
        --pairs ../shared/data/real-pairs/biosr_microtubules ../shared/data/real-pairs/jin2020_microtubules \
        --out docs/benchmarks/psf_estimate.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_cvdm import structures
from napari_cvdm.degradation import Degradation, add_camera_noise, blur_and_downsample
from napari_cvdm.normalization import Normalization
from napari_cvdm.psf_estimate import estimate_psf_sigma

SIGMAS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
PHOTONS = (20.0, 200.0, 2000.0)
BACKGROUND, READ_NOISE = 5.0, 2.0       # as benchmarks/quality.py
CROP = 256                              # output-grid side
SCALE = 2


def degrade(hq01: np.ndarray, sigma: float, photons: float, seed: int) -> np.ndarray:
    """quality.py's ``degrade()`` at a given signal level: blur, x2 binning, camera noise."""
    clean = blur_and_downsample(torch.from_numpy(hq01)[None, None], Degradation(psf_sigma=sigma),
                                torch.tensor([sigma]))
    one = torch.ones(1)
    return add_camera_noise(clean, one * photons, one * BACKGROUND, one * READ_NOISE,
                            torch.Generator().manual_seed(seed))[0, 0].numpy()


def own_width(hq01: np.ndarray) -> float:
    """The target's own blur (output pixels): the estimate on the target itself (scale 1)."""
    return estimate_or_nan(hq01, scale=1)


def matched_sigma(hq01: np.ndarray, estimate: float, photons: float = 200.0) -> float:
    """The PSF width relative to a real pair's target: the sigma at which the target,
    degraded like the benchmark inputs, gets the same estimate (median of 3 noise draws)."""
    grid = np.arange(1.0, 6.01, 0.25)
    curve = [np.nanmedian([estimate_or_nan(degrade(hq01, s, photons, seed)) for seed in range(3)])
             for s in grid]
    curve = np.maximum.accumulate(np.nan_to_num(curve, nan=0.0))
    if not math.isfinite(estimate) or estimate < curve[0] or estimate > curve[-1]:
        return math.nan
    return float(np.interp(estimate, curve, grid))


def estimate_or_nan(image: np.ndarray, scale: int = SCALE) -> float:
    """The estimate, NaN where the estimator refuses the image (ValueError)."""
    try:
        return estimate_psf_sigma(image, scale)
    except ValueError:
        return math.nan


def centre_crop01(path: Path) -> np.ndarray:
    """A CROP x CROP centre crop, percentile-normalised to [0, 1] (quality.py ``sources()``)."""
    image = tifffile.imread(path).astype(np.float32)
    cy, cx, half = image.shape[0] // 2, image.shape[1] // 2, CROP // 2
    crop = image[max(0, cy - half):cy + half, max(0, cx - half):cx + half]
    crop = crop[:crop.shape[0] // 2 * 2, :crop.shape[1] // 2 * 2]
    return np.clip((Normalization.fit(crop).apply(crop) + 1) / 2, 0, None).astype(np.float32)


def targets(args):
    """(source, class, name, hq01) for every high-quality image."""
    rng = np.random.default_rng(args.seed)
    for kind in structures.STRUCTURES:
        for i in range(args.per_class):
            yield "generated", kind, f"generated {kind} {i}", \
                structures.generate(kind, (CROP, CROP), 31.0, rng)
    for folder in args.hq:
        for path in sorted(folder.glob("*.tif")):
            yield "real", path.stem.split("_")[0], path.stem, centre_crop01(path)


def measure(args) -> list[dict]:
    """One record per (target, sigma, photons): the true width, the estimate (NaN if refused)."""
    records = []
    for t, (source, cls, name, hq01) in enumerate(targets(args)):
        width = own_width(hq01)
        for s, sigma in enumerate(args.sigmas):
            for p, photons in enumerate(args.photons):
                seed = args.seed + 1000 * t + 10 * s + p
                lq = degrade(hq01, sigma, photons, seed)
                started = time.perf_counter()
                estimate = estimate_or_nan(lq)
                records.append({"source": source, "class": cls, "name": name, "sigma": sigma,
                                "photons": photons, "estimate": estimate, "sigma_hq": width,
                                "seconds": time.perf_counter() - started})
        print(f"{name}: own width {width:.2f}", flush=True)
    return records


def stats(rows: list[dict]) -> dict:
    """Median estimate, median / 90th percentile absolute error (also against the total
    width), failures, over the inputs the estimator did not refuse."""
    ok = [r for r in rows if math.isfinite(r["estimate"])]
    out = {"inputs": len(rows), "refused": len(rows) - len(ok)}
    if not ok:
        return out
    est = np.array([r["estimate"] for r in ok])
    sigma = np.array([r["sigma"] for r in ok])
    total = np.sqrt(sigma**2 + np.nan_to_num(np.array([r["sigma_hq"] for r in ok])) ** 2)
    err, err_total = np.abs(est - sigma), np.abs(est - total)
    out.update(median_estimate=float(np.median(est)), median_bias=float(np.median(est - sigma)),
               median_abs_error=float(np.median(err)), p90_abs_error=float(np.percentile(err, 90)),
               median_abs_error_vs_total=float(np.median(err_total)),
               p90_abs_error_vs_total=float(np.percentile(err_total, 90)),
               median_sigma_hq=float(np.nanmedian([r["sigma_hq"] for r in ok])))
    return out


def summarise(records: list[dict], args) -> dict:
    """stats() per photon level: per (source, true sigma) and per (source, class)."""
    summary = {}
    for photons in args.photons:
        at = [r for r in records if r["photons"] == photons]
        sources = sorted({r["source"] for r in at})
        summary[str(photons)] = {
            "per_sigma": {f"{src} {sigma}": stats([r for r in at if r["source"] == src
                                                   and r["sigma"] == sigma])
                          for src in sources for sigma in args.sigmas},
            "per_class": {f"{src} {cls}": stats([r for r in at if r["source"] == src
                                                 and r["class"] == cls])
                          for src in sources
                          for cls in sorted({r["class"] for r in at if r["source"] == src})},
            "all": {src: stats([r for r in at if r["source"] == src]) for src in sources},
        }
    return summary


def real_inputs(folders: list[Path]) -> dict:
    """The estimate on each real widefield input and the width relative to its SIM target
    (:func:`matched_sigma`; output = SIM pixels)."""
    out = {}
    for folder in folders:
        hr01 = centre_crop01(folder / "hr.tif") if (folder / "hr.tif").is_file() else None
        for lr_name in ("lr.tif", "lr_lowsnr.tif"):
            if (folder / lr_name).is_file():
                lr = tifffile.imread(folder / lr_name).astype(np.float32)
                est = estimate_or_nan(lr)
                out[f"{folder.name}/{lr_name}"] = {
                    "estimate": est, "sigma_hr": own_width(hr01) if hr01 is not None else None,
                    "relative_to_hr": matched_sigma(hr01, est) if hr01 is not None
                    else math.nan}
    return out


def speed() -> float:
    """Seconds per estimate of a 1024 x 1024 image (best of 3)."""
    rng = np.random.default_rng(0)
    hq = structures.generate("microtubules", (512, 512), 31.0, rng)
    lq = np.tile(degrade(hq, 3.0, 200.0, 0), (4, 4))
    times = []
    for _ in range(3):
        started = time.perf_counter()
        estimate_psf_sigma(lq, SCALE)
        times.append(time.perf_counter() - started)
    return min(times)


def _json_safe(value):
    """NaN (a refused input, a missing width) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value, digits=2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(summary: dict, reals: dict, seconds_1024: float) -> str:
    lines = []
    cols = ("| {} | n | refused | median estimate | median abs error | p90 abs error | "
            "median abs error vs total | median sigma_hq |")
    for photons, tables in summary.items():
        lines.append(f"\n### {float(photons):g} photons\n")
        for key, title in (("per_sigma", "true sigma"), ("per_class", "class"),
                           ("all", "all")):
            lines += ["", cols.format(title), "| --- " * 8 + "|"]
            for name, s in tables[key].items():
                lines.append(f"| {name} | {s['inputs']} | {s['refused']} | "
                             f"{_fmt(s.get('median_estimate'))} | "
                             f"{_fmt(s.get('median_abs_error'))} | "
                             f"{_fmt(s.get('p90_abs_error'))} | "
                             f"{_fmt(s.get('median_abs_error_vs_total'))} | "
                             f"{_fmt(s.get('median_sigma_hq'))} |")
    if reals:
        lines += ["\n### Real widefield inputs\n",
                  "| input | estimate (total) | SIM target's own width | relative to the "
                  "target (matched in simulation) |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {_fmt(v['estimate'])} | {_fmt(v.get('sigma_hr'))} | "
                  f"{_fmt(v['relative_to_hr'])} |" for k, v in reals.items()]
    lines.append(f"\n1024 x 1024 input: {seconds_1024:.3f} s per estimate")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hq", type=Path, nargs="*", default=[],
                        help="folders of real high-quality TIFFs (none by default)")
    parser.add_argument("--pairs", type=Path, nargs="*", default=[],
                        help="folders with real widefield lr.tif / lr_lowsnr.tif and hr.tif")
    parser.add_argument("--per-class", type=int, default=4,
                        help="generated images per structure class (0: none)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS),
                        help="true PSF widths (output pixels)")
    parser.add_argument("--photons", type=float, nargs="+", default=list(PHOTONS),
                        help="signal levels (photons at the bright end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = measure(args)
    summary = summarise(records, args)
    reals = real_inputs(args.pairs)
    seconds = speed()
    print(markdown(summary, reals, seconds))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_json_safe(
            {"sigmas": args.sigmas, "photons": args.photons, "background": BACKGROUND,
             "read_noise": READ_NOISE, "per_class": args.per_class, "seed": args.seed,
             "hq": [str(p) for p in args.hq], "seconds_1024": seconds, "summary": summary,
             "real_inputs": reals, "per_input": records}), indent=1))


if __name__ == "__main__":
    main()
