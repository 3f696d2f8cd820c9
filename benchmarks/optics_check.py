"""Does simulated widefield look like real widefield? Power spectra and intensity histograms.

Generated microtubules (31 nm pixels) go through the package's widefield simulation
(Gaussian PSF of sigma 3.5 high-resolution pixels, x2 binning, camera noise) and are compared
with real widefield images (``*/lr.tif`` under the data folder, never committed) by their
radially averaged power spectra and their intensity histograms after percentile normalisation.
The real SIM targets (``*/hr.tif``) put through the same simulation are shown as well: they
separate the optics (same structure, simulated optics) from the structures (generated).

Usage: python benchmarks/optics_check.py [DATA] [--out docs/images/optics_check.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_cvdm.degradation import Degradation, blur_and_downsample, simulate
from napari_cvdm.structures import generate

BINS = np.linspace(0.0, 0.5, 41)           # radial frequency bins, cycles per widefield pixel
HIST_BINS = np.linspace(-0.1, 1.1, 61)
PHOTON_LEVELS = (30, 100, 300, 1000, 3000, 10000)


def normalise(image: np.ndarray) -> np.ndarray:
    """Percentile normalisation (0.5 -> 0, 99.8 -> 1), as the training pipeline does."""
    lo, hi = np.percentile(image, [0.5, 99.8])
    return (image - lo) / max(hi - lo, 1e-12)


def radial_spectrum(image: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum of a normalised, Hann-windowed image, summing to 1."""
    image = normalise(image.astype(np.float64))
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    power = np.abs(np.fft.fft2((image - image.mean()) * window)) ** 2
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    radius = np.hypot(fy, fx).ravel()
    index = np.digitize(radius, BINS) - 1
    valid = (index >= 0) & (index < len(BINS) - 1) & (radius > 0)
    sums = np.bincount(index[valid], power.ravel()[valid], minlength=len(BINS) - 1)
    counts = np.bincount(index[valid], minlength=len(BINS) - 1)
    spectrum = sums / np.maximum(counts, 1)
    return spectrum / spectrum.sum()


def summary(spectrum: np.ndarray, image: np.ndarray) -> dict:
    """Spectral slope, noise floor, where the spectrum meets it, and histogram shape."""
    f = 0.5 * (BINS[1:] + BINS[:-1])
    band = (f > 0.02) & (f < 0.15)
    slope = np.polyfit(np.log(f[band]), np.log(spectrum[band]), 1)[0]
    floor = float(np.median(spectrum[f > 0.4]))
    above = np.flatnonzero(spectrum > 2 * floor)
    cutoff = float(f[above[-1]]) if above.size else 0.0
    values = normalise(image.astype(np.float64)).ravel()
    return {"slope": round(float(slope), 2), "noise_floor": float(f"{floor:.2e}"),
            "cutoff_cycles_per_px": round(cutoff, 3),
            "median": round(float(np.median(values)), 3),
            "dark_fraction": round(float(np.mean(values < 0.2)), 3)}


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two intensity distributions (sorted quantiles)."""
    q = np.linspace(0.005, 0.995, 199)
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=Path("/work/shared/data/real-pairs"))
    parser.add_argument("--out", type=Path, default=Path("docs/images/optics_check.png"))
    parser.add_argument("--sigma", type=float, default=3.5, help="PSF sigma, SIM pixels")
    parser.add_argument("--count", type=int, default=16, help="generated images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution-nm", type=float, default=0.0,
                        help="resolution (FWHM) of the generated targets, as generate() takes")
    args = parser.parse_args(argv)

    real = {f"{p.parent.name}/{p.stem}": tifffile.imread(p).astype(np.float32)
            for p in sorted(args.data.glob("*/lr*.tif"))}
    if not real:
        raise SystemExit(f"no */lr.tif under {args.data}")
    optics = Degradation(psf_sigma=args.sigma, scale=2)
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    def widefield(hq: np.ndarray, degradation: Degradation = optics) -> np.ndarray:
        hq = torch.from_numpy(np.clip(normalise(hq), 0, 1).astype(np.float32))[None, None]
        return simulate(hq, degradation, generator)[0, 0].numpy()

    truths = [generate("microtubules", (256, 256), 31.0, rng, resolution_nm=args.resolution_nm)
              for _ in range(args.count)]
    generated = [widefield(hq) for hq in truths]
    noise_free = [blur_and_downsample(torch.from_numpy(hq)[None, None], optics)[0, 0].numpy()
                  for hq in truths]
    from_sim = {name: widefield(tifffile.imread(p).astype(np.float32))
                for name, p in ((p.parent.name, p) for p in sorted(args.data.glob("*/hr.tif")))}

    results = {f"real {n}": summary(radial_spectrum(im), im) for n, im in real.items()}
    results.update({f"simulated from real SIM {n}": summary(radial_spectrum(im), im)
                    for n, im in from_sim.items()})
    spectra = np.array([radial_spectrum(im) for im in generated])
    per_image = [summary(s, im) for s, im in zip(spectra, generated)]
    results[f"generated microtubules, default noise (median of {len(generated)})"] = _median(
        per_image)
    results[f"generated microtubules, noise-free (median of {len(generated)})"] = _median(
        [summary(radial_spectrum(im), im) for im in noise_free])
    for photons in PHOTON_LEVELS:
        level = Degradation(psf_sigma=args.sigma, scale=2, photons=(photons, photons))
        results[f"generated microtubules, {photons} photons"] = _median(
            [summary(radial_spectrum(im), im) for im in
             (widefield(hq, level) for hq in truths[:4])])
    pooled = np.concatenate([normalise(im).ravel() for im in generated])
    for name, image in real.items():
        results[f"real {name}"]["histogram_distance_to_generated"] = round(
            wasserstein(normalise(image).ravel(), pooled), 3)
    # the high-resolution side: real SIM targets against generated ones, with and without
    # a SIM-like resolution of 110 nm
    for name, path in ((p.parent.name, p) for p in sorted(args.data.glob("*/hr.tif"))):
        results[f"high resolution: real SIM {name}"] = _histogram(tifffile.imread(path))
    for resolution in (0.0, 110.0):
        rows = [_histogram(generate("microtubules", (256, 256), 31.0, np.random.default_rng(
            [args.seed, i]), resolution_nm=resolution)) for i in range(args.count)]
        results[f"high resolution: generated, resolution {resolution:g} nm"] = _median(rows)
    print(json.dumps(results, indent=1))
    _figure(args.out, real, from_sim, generated, spectra, pooled, args.sigma)
    print(f"wrote {args.out}")


def _histogram(image: np.ndarray) -> dict:
    values = normalise(image.astype(np.float64))
    return {"median": round(float(np.median(values)), 3),
            "dark_fraction": round(float(np.mean(values < 0.2)), 3)}


def _median(rows: list[dict]) -> dict:
    return {key: float(f"{np.median([r[key] for r in rows]):.3g}") for key in rows[0]}


def _figure(out, real, from_sim, generated, spectra, pooled, sigma) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = 0.5 * (BINS[1:] + BINS[:-1])
    shown = [(f"real widefield: {n}", im) for n, im in real.items()]
    shown += [(f"generated, simulated (sigma {sigma:g}) #{i}", generated[i]) for i in range(2)]
    shown = shown[:5]
    top = [f"image{i}" for i in range(len(shown)) for _ in range(2)]
    half = len(top) // 2
    fig, axes = plt.subplot_mosaic([top, ["spectrum"] * half + ["histogram"] * (len(top) - half)],
                                   figsize=(3 * len(shown), 8.5),
                                   gridspec_kw={"height_ratios": [1, 1.3]})
    for i, (title, image) in enumerate(shown):
        axes[f"image{i}"].imshow(np.clip(normalise(image), 0, 1), cmap="gray")
        axes[f"image{i}"].set_title(title, fontsize=8)
        axes[f"image{i}"].set_axis_off()
    ax = axes["spectrum"]
    lo, mid, hi = np.percentile(spectra, [10, 50, 90], axis=0)
    ax.fill_between(f, lo, hi, color="tab:orange", alpha=0.3, label="generated, 10-90%")
    ax.semilogy(f, mid, color="tab:orange", label="generated, median")
    for name, image in from_sim.items():
        ax.semilogy(f, radial_spectrum(image), "--", label=f"real SIM {name}, simulated")
    for name, image in real.items():
        ax.semilogy(f, radial_spectrum(image), linewidth=2, label=f"real widefield {name}")
    ax.set_xlabel("spatial frequency (cycles per widefield pixel)")
    ax.set_ylabel("normalised radial power")
    ax.legend(fontsize=7)
    ax = axes["histogram"]
    ax.hist(pooled, HIST_BINS, density=True, histtype="stepfilled", alpha=0.4,
            color="tab:orange", label="generated, simulated")
    for name, image in from_sim.items():
        ax.hist(normalise(image).ravel(), HIST_BINS, density=True, histtype="step",
                linestyle="--", label=f"real SIM {name}, simulated")
    for name, image in real.items():
        ax.hist(normalise(image).ravel(), HIST_BINS, density=True, histtype="step",
                linewidth=2, label=f"real widefield {name}")
    ax.set_yscale("log")
    ax.set_xlabel("intensity after percentile normalisation (0.5 -> 0, 99.8 -> 1)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
