"""Quality benchmark: CVDM against bicubic, Richardson-Lucy and its own regression U-Net.

Per structure class: held-out real high-quality images and freshly generated structures,
each degraded with simulated widefield optics at several PSF widths (fixed signal level and
seed; ``--haze`` puts a share of the light out of focus); and real widefield -> SIM pairs. Every method reconstructs the same input and is
scored against the target by PSNR and SSIM after a least-squares affine fit (the std is
scaled by the fit's factor). The uncertainty is scored by Spearman(std, |error|) and the
coverage of the 1- and 2-sigma bands of the calibrated std; ``spearman_context`` says what
that Spearman could reach (the ceiling if the std were exact, and against the error's local
scale).

    python benchmarks/quality.py --model MODEL --hq HELD_OUT_DIR \
        --pairs ../shared/data/real-pairs/biosr_microtubules ../shared/data/real-pairs/jin2020_microtubules \
        --out docs/benchmarks
Writes OUT/quality.json (``--name``) and prints a Markdown table per class.

A PSF-conditioned model is told each input's PSF width (``--psf told``: the simulated width,
``--pair-sigma`` for real pairs), its default width (``--psf default``), or nothing
(``--psf auto``: what a user who does not know the optics gets, the width ``predict()``
estimates from the image where it is sharper than the default). Blind models ignore it.

``--register``: each real pair's target is first moved by the sub-pixel offset that puts it
in its input's geometry (``registration.py``; found from the pair alone, recorded per input
as ``_registration``), so that every method is scored on its content, not on how the target
was gridded. Off by default: issue 13's figures are on the targets as given.
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
from napari_cvdm import calibration, structures
from napari_cvdm.psf_width import psf_sigma_for, resolve
from napari_cvdm.degradation import Degradation, add_camera_noise, blur_and_downsample, psf_kernel
from napari_cvdm.metrics import affine_fit, psnr, spearman, ssim
from napari_cvdm.normalization import Normalization
from napari_cvdm.resampling import upsample

PHOTONS, BACKGROUND, READ_NOISE = 200.0, 5.0, 2.0
SIGMAS = (1.5, 2.5, 3.5)
HAZE_SIGMA = 16.0  # out-of-focus light's width with --haze (target pixels)
CROP = 256  # output-grid side
LOCAL_SIGMA = 2.0  # output pixels: the neighbourhood of spearman_local


def richardson_lucy(image: np.ndarray, psf: torch.Tensor, iterations: int = 20) -> np.ndarray:
    """Richardson-Lucy deconvolution of a non-negative image with a normalised PSF."""
    obs = torch.from_numpy(np.clip(image, 1e-6, None)).double()[None, None]
    k = psf.double()[None, None]
    pad = k.shape[-1] // 2
    conv = lambda v, w: torch.nn.functional.conv2d(  # noqa: E731
        torch.nn.functional.pad(v, (pad,) * 4, mode="reflect"), w)
    est = obs.clone()
    for _ in range(iterations):
        est = est * conv(obs / conv(est, k).clamp_min(1e-9), k.flip(-1, -2))
    return est[0, 0].numpy()


def degrade(hq01: np.ndarray, sigma: float, seed: int, haze: float = 0.0) -> np.ndarray:
    haze_terms = (torch.tensor([haze]), torch.tensor([HAZE_SIGMA])) if haze else None
    clean = blur_and_downsample(torch.from_numpy(hq01)[None, None], Degradation(psf_sigma=sigma),
                                torch.tensor([sigma]), haze_terms)
    one = torch.ones(1)
    return add_camera_noise(clean, one * PHOTONS, one * BACKGROUND, one * READ_NOISE,
                            torch.Generator().manual_seed(seed))[0, 0].numpy()


def spearman_context(std: np.ndarray, error: np.ndarray) -> dict[str, float]:
    """What a per-pixel Spearman(std, |error|) can reach, for reading the one measured.

    ``spearman_if_exact``: the Spearman if the errors were Gaussian with exactly this std
    (|error| = std |z|): the ceiling the std map's own spread allows, below 1 because one
    pixel's |error| is one draw. ``spearman_local``: against the error's local scale (RMS
    of |error| over a Gaussian of LOCAL_SIGMA output pixels), what an uncertainty map
    claims to predict. ``spearman_oracle_local``: that local scale itself as the std, a
    ceiling no model reaches (it knows the target).
    """
    from scipy import ndimage

    draw = np.abs(std * np.random.default_rng(0).standard_normal(std.shape))
    local = np.sqrt(ndimage.gaussian_filter(error.astype(np.float64) ** 2, LOCAL_SIGMA))
    return {"spearman_if_exact": spearman(std, draw), "spearman_local": spearman(std, local),
            "spearman_oracle_local": spearman(local, error)}


def scored(pred: np.ndarray, target: np.ndarray, std: np.ndarray | None = None) -> dict:
    """One output's row: PSNR and SSIM after the least-squares affine fit to ``target``;
    with a ``std``, Spearman(std, |fitted - target|) with its context and the 1- and
    2-sigma coverage of the std scaled by the fit's gain."""
    fitted = affine_fit(pred, target)
    row = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
    if std is not None:
        gain = np.polyfit(np.ravel(pred), np.ravel(target), 1)[0]
        error = np.abs(fitted - target)
        row["spearman"] = spearman(std, error)
        row.update(spearman_context(std, error))
        row.update(calibration.coverage(fitted, np.abs(gain) * std, target))
    return row


def score(model, lq: np.ndarray, target: np.ndarray, sigma: float, args) -> dict[str, dict]:
    """Every method's PSNR/SSIM (and CVDM's uncertainty scores) on one input."""
    norm = Normalization.fit(lq)
    x = upsample(torch.from_numpy(norm.apply(lq))[None, None], model.config.scale)
    h, w = min(x.shape[-2], target.shape[0]), min(x.shape[-1], target.shape[1])
    target = target[:h, :w]
    out: dict[str, dict] = {}

    def add(name, pred, std=None):
        out[name] = scored(pred, target, std)

    add("bicubic", x[0, 0, :h, :w].numpy())
    add("Richardson-Lucy", richardson_lucy((x[0, 0, :h, :w].numpy() + 1) / 2,
                                           psf_kernel("gaussian", sigma)))
    # told: the true width; default: the model's default; auto: what predict() resolves
    # without one (estimated from the image where sharper than the default)
    told = {"told": sigma, "default": psf_sigma_for(model, None), "auto": None}[args.psf]
    with torch.inference_mode():
        prep = model.prepare(x[..., :h // 8 * 8, :w // 8 * 8],
                             psf_sigma=resolve(model, told, lq)[0])
    if "mu" in prep:
        mu = np.pad(prep["mu"][0, 0].numpy(), ((0, h - h // 8 * 8), (0, w - w // 8 * 8)), "edge")
        add("regression U-Net (the model's mean network)", mu)
    started = time.perf_counter()
    res = nc.predict(lq, model, samples=args.samples, steps=args.steps, eta=0.0, seed=args.seed,
                     psf_sigma=told, augment=args.augment)
    seconds = time.perf_counter() - started
    mean = norm.apply(res.mean)[:h, :w]
    raw_std = (np.sqrt(res.variance) / norm.half_range)[:h, :w]
    table = model.metadata.get("calibration")
    add(f"CVDM mean of {args.samples}, K={args.steps}", mean,
        calibration.apply(raw_std, table, mean) if table else raw_std)
    one = nc.predict(lq, model, samples=1, steps=args.steps, eta=0.0, seed=args.seed,
                     psf_sigma=told)
    add(f"CVDM 1 sample, K={args.steps}", norm.apply(one.mean)[:h, :w])
    out["_seconds"] = {"predict": seconds}
    out["_psf"] = {"told": res.info.get("psf_sigma"), "from": res.info.get("psf_sigma_from"),
                   "true": sigma}
    return out


def sources(args, rng, notes: dict | None = None):
    """(class, name, lq, target, sigma) for every benchmark input; ``notes`` (a dict) gets
    each registered pair's offset (``--register``)."""
    for path in sorted(args.hq.glob("*.tif")) if args.hq else []:
        image = tifffile.imread(path).astype(np.float32)
        cy, cx, half = image.shape[0] // 2, image.shape[1] // 2, CROP // 2
        crop = image[max(0, cy - half):cy + half, max(0, cx - half):cx + half]
        crop = crop[:crop.shape[0] // 2 * 2, :crop.shape[1] // 2 * 2]
        hq01 = np.clip((Normalization.fit(crop).apply(crop) + 1) / 2, 0, None).astype(np.float32)
        for sigma in args.sigmas:
            yield path.stem.split("_")[0], f"{path.stem} sigma {sigma}", \
                degrade(hq01, sigma, args.seed, args.haze), hq01 * 2 - 1, sigma
    for kind in structures.STRUCTURES if args.synthetic else ():
        hq01 = structures.generate(kind, (CROP, CROP), 31.0, rng)
        for sigma in args.sigmas:
            yield kind, f"generated {kind} sigma {sigma}", degrade(hq01, sigma, args.seed,
                                                                   args.haze), \
                hq01 * 2 - 1, sigma
    for folder in args.pairs:
        hr = tifffile.imread(folder / "hr.tif").astype(np.float32)
        target = Normalization.fit(hr).apply(hr)
        for lr_name in ("lr.tif", "lr_lowsnr.tif"):
            if (folder / lr_name).is_file():
                lr = tifffile.imread(folder / lr_name).astype(np.float32)
                name, compared = f"{folder.name}/{lr_name}", target
                if getattr(args, "register", False):
                    from registration import registered

                    compared, offset = registered(lr, target, args.pair_sigma)
                    if notes is not None:
                        notes[name] = {"_registration": offset}
                yield "real pairs", name, lr, compared, args.pair_sigma


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--hq", type=Path, help="folder of held-out high-quality TIFFs")
    parser.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=True,
                        help="also generated structures (one per class, fresh seed)")
    parser.add_argument("--pairs", type=Path, nargs="*", default=[],
                        help="folders with lr.tif (and lr_lowsnr.tif) / hr.tif real pairs")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--name", default="quality.json", help="the JSON file in --out")
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS),
                        help="PSF widths of the simulated inputs (target pixels)")
    parser.add_argument("--pair-sigma", type=float, default=3.5,
                        help="the real pairs' PSF width (BioSR fits 3.5): Richardson-Lucy's "
                             "PSF, and what a conditioned model is told with --psf told")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="samples on the input's flips and rotations (the default)")
    parser.add_argument("--haze", type=float, default=0.0,
                        help="share of the simulated inputs' light out of focus (a Gaussian of "
                             f"{HAZE_SIGMA:.0f} target pixels); real pairs fit 0.35-0.65")
    parser.add_argument("--psf", choices=("told", "default", "auto"), default="told",
                        help="what a PSF-conditioned model is told")
    parser.add_argument("--register", action="store_true",
                        help="move each real pair's target into its input's geometry first "
                             "(a sub-pixel offset found from the pair; registration.py)")
    args = parser.parse_args(argv)
    model = nc.load_model(args.model)
    rng = np.random.default_rng(2024)
    per_image: dict[str, dict] = {}
    classes: dict[str, list[str]] = {}
    notes: dict[str, dict] = {}
    for cls, name, lq, target, sigma in sources(args, rng, notes):
        per_image[name] = {**score(model, lq, target, sigma, args), **notes.get(name, {})}
        classes.setdefault(cls, []).append(name)
        cvdm = next(k for k in per_image[name] if k.startswith("CVDM mean"))
        print(f"{name}: bicubic {per_image[name]['bicubic']['psnr']:.2f}  CVDM "
              f"{per_image[name][cvdm]['psnr']:.2f} dB  Spearman "
              f"{per_image[name][cvdm]['spearman']:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for cls, names in classes.items():
        methods = [m for m in per_image[names[0]] if not m.startswith("_")]
        summary[cls] = {m: {k: float(np.mean([per_image[n][m][k] for n in names]))
                            for k in per_image[names[0]][m]} for m in methods}
    (args.out / args.name).write_text(json.dumps(
        {"model": str(args.model), "samples": args.samples, "steps": args.steps,
         "photons": PHOTONS, "sigmas": args.sigmas, "pair_sigma": args.pair_sigma,
         "psf": args.psf, "augment": args.augment, "haze": args.haze,
         "register": args.register, "conditioned": model.config.psf_conditioned,
         "summary": summary,
         "per_image": per_image},
        indent=1))
    for cls, rows in summary.items():
        print(f"\n### {cls} ({len(classes[cls])} inputs)\n")
        print("| method | PSNR (dB) | SSIM | Spearman | if std exact | local error | "
              "1-sigma | 2-sigma |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
        for m, r in rows.items():
            extra = (f"{r['spearman']:.2f} | {r['spearman_if_exact']:.2f} | "
                     f"{r['spearman_local']:.2f} | {r['coverage_1sigma']:.0%} | "
                     f"{r['coverage_2sigma']:.0%}" if "spearman" in r else " | | | | ")
            print(f"| {m} | {r['psnr']:.2f} | {r['ssim']:.3f} | {extra} |")


if __name__ == "__main__":
    main()
