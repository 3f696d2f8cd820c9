"""How much of real widefield light is out of focus? Fit real pairs by their SIM targets.

Each real widefield image (``*/lr.tif`` and ``*/lr_lowsnr.tif`` under the data folder, never
committed) is fitted by its SIM target (``hr.tif``) blurred by the package's own PSF
(:func:`napari_cvdm.degradation.blur`) and binned x2, by least squares with an
affine intensity fit, under two models of the optics:

- ``single``: one Gaussian PSF of width sigma (the first bundled models' optics);
- ``core+haze``: an in-focus Gaussian core of width sigma plus a share of the light spread by
  a much wider Gaussian (out-of-focus light; the widefield image is not sectioned, the SIM
  target is). The two images enter the least-squares fit as separate terms, so the share is
  measured, not assumed.

``--psf airy`` makes the in-focus core an Airy pattern with the same central lobe (the
package's ``airy`` PSF) instead of a Gaussian; the out-of-focus light stays Gaussian.

Widths are on grids, in target pixels. The residual is the share of the widefield image's
variance that the fit leaves. Writes JSON (default docs/benchmarks/optics_fit.json, or
optics_fit_airy.json with ``--psf airy``).

Usage: python benchmarks/optics_fit.py [DATA] [--psf {gaussian,airy}] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
import torch

import torch.nn.functional as F

from napari_cvdm.degradation import blur

CORE = np.arange(1.5, 6.01, 0.25)
HAZE = (6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0)


def blurred(hr: np.ndarray, sigma: float, psf: str = "gaussian") -> np.ndarray:
    """``hr`` blurred by a PSF of ``sigma`` pixels (float64, same shape)."""
    image = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32))[None, None]
    return blur(image, psf, sigma)[0, 0].double().numpy()


def binned(image: np.ndarray, scale: int = 2) -> np.ndarray:
    """Each ``scale`` x ``scale`` block averaged (the model's downsampling; a remainder
    row or column is dropped)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None, None]
    return F.avg_pool2d(tensor, scale)[0, 0].numpy()


def _blurred(hr: np.ndarray, sigma: float, psf: str = "gaussian") -> np.ndarray:
    return binned(blurred(hr, sigma, psf))


def _fit(lr: np.ndarray, terms: list[np.ndarray]) -> tuple[float, np.ndarray]:
    design = np.stack([t.ravel() for t in terms] + [np.ones(lr.size)], 1)
    coef, *_ = np.linalg.lstsq(design, lr.ravel(), rcond=None)
    residual = float(((design @ coef - lr.ravel()) ** 2).mean() / lr.var())
    return residual, coef


def fit_pair(lr: np.ndarray, hr: np.ndarray, psf: str = "gaussian") -> dict:
    """Best single-PSF and core+haze fits of ``lr`` by ``hr`` (twice its sampling); ``psf``
    is the in-focus core's shape (the out-of-focus light is always Gaussian)."""
    lr = lr.astype(np.float64)
    hr = hr[:2 * lr.shape[0], :2 * lr.shape[1]].astype(np.float64)
    hr = (hr - hr.min()) / max(float(np.ptp(hr)), 1e-12)
    cores = {float(s): _blurred(hr, float(s), psf) for s in CORE}
    hazes = {h: _blurred(hr, h) for h in HAZE}
    single = min((_fit(lr, [img])[0], s) for s, img in cores.items())
    best = None
    for s, core in cores.items():
        for h, haze in hazes.items():
            residual, coef = _fit(lr, [core, haze])
            if coef[0] <= 0 or coef[1] < 0:
                continue  # not a physical mixture
            if best is None or residual < best["residual"]:
                best = {"residual": residual, "core_sigma": s, "haze_sigma": h,
                        "haze_share": float(coef[1] / (coef[0] + coef[1]))}
    return {"single": {"residual": single[0], "sigma": single[1]}, "core+haze": best}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/real-pairs")
    parser.add_argument("--psf", choices=("gaussian", "airy"), default="gaussian",
                        help="the in-focus core's shape (default: gaussian)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    name = "optics_fit.json" if args.psf == "gaussian" else f"optics_fit_{args.psf}.json"
    out = args.out or Path(__file__).resolve().parents[1] / "docs/benchmarks" / name
    results = {}
    for folder in sorted(p for p in args.data.iterdir() if (p / "hr.tif").is_file()):
        hr = tifffile.imread(folder / "hr.tif")
        for lr_path in sorted(folder.glob("lr*.tif")):
            fit = fit_pair(tifffile.imread(lr_path), hr, args.psf)
            results[f"{folder.name}/{lr_path.name}"] = fit
            one, two = fit["single"], fit["core+haze"]
            print(f"{folder.name}/{lr_path.name}: single sigma {one['sigma']:.2f} residual "
                  f"{one['residual']:.3f} | core {two['core_sigma']:.2f} + {two['haze_share']:.0%}"
                  f" out of focus (sigma {two['haze_sigma']:.0f}) residual {two['residual']:.3f}")
    command = "python benchmarks/optics_fit.py" + (f" --psf {args.psf}" if args.psf != "gaussian" else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "pairs": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
