"""Which images the input checks call transmitted light (brightfield, DIC, phase contrast)?

    python benchmarks/transmitted_light.py --hq ../shared/data/hq-structures \
        --pairs ../shared/data/real-pairs/biosr_microtubules ../shared/data/real-pairs/jin2020_microtubules \
        --nuclei demo-data/train/nuclei_cells3d.tif demo-data/train/timelapse.tif demo-data/test/dsb2018_nuclei.tif \
        [--out docs/benchmarks/transmitted_light.json]

Fluorescence: every real super-resolution image in ``--hq``, each also as simulated widefield
(Gaussian blur 3 px, x2 binning, 20 / 200 / 2,000 photons at the brightest structure, and 500
photons with 60 % of the light out of focus); every TIFF in the ``--pairs`` folders; planes 5,
30 and 55 (or the first) of each ``--nuclei`` stack. Transmitted light, made from the nuclei
and one ER image as objects (their intensity as optical path): brightfield (absorption, in and
out of focus), DIC (a sheared difference on a mid-grey background), phase contrast (dark
objects with bright halos) and inverted fluorescence, at 300 and 3,000 photons; plus
scikit-image's quantitative phase image of a cell (``skimage.data.cell``) where installed.
Prints what each check says and the rule's statistics; a wrong call is marked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _smooth(image: np.ndarray, radius: int) -> np.ndarray:
    from napari_cvdm.domain import _box_mean

    return _box_mean(_box_mean(image, radius), radius)


def _widefield(hq, rng, photons: float, haze: float = 0.0) -> np.ndarray:
    x = hq.astype(np.float64)
    x = np.clip(x - np.percentile(x, 1), 0, None)
    x /= max(float(x.max()), 1e-12)
    blurred = _smooth(x, 3)  # two 7-pixel boxes: about a Gaussian of 2.8 px
    if haze:
        wide = _smooth(x, 20)
        blurred = blurred + haze * wide / max(float(wide.max()), 1e-12)
    h, w = (s // 2 * 2 for s in blurred.shape)
    binned = blurred[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    signal = binned / max(float(binned.max()), 1e-12) * photons + 10
    return (rng.poisson(signal) + rng.normal(0, 2, signal.shape) + 100).astype(np.float32)


def _transmitted(obj: np.ndarray, rng, photons: float) -> dict[str, np.ndarray]:
    x = obj.astype(np.float64)
    x = np.clip((x - np.percentile(x, 1)) / max(np.ptp(np.percentile(x, (1, 99.9))), 1e-12),
                0, 1.5)
    phase = _smooth(x, 2)

    def shot(mean):
        return (rng.poisson(np.clip(mean, 0.005, None) * photons) / photons).astype(np.float32)

    shear = np.roll(phase, 1, 1) - np.roll(phase, -1, 1)
    return {
        "brightfield": shot(0.8 * np.exp(-phase) + 0.05),
        "brightfield, defocused": shot(0.8 * np.exp(-0.3 * phase)
                                       * (1 + 5 * (phase - _smooth(phase, 4)))),
        "DIC": shot(0.5 + 0.4 * shear / max(float(np.abs(shear).max()), 1e-12)),
        "phase contrast": shot(0.6 - 0.3 * phase + 0.6 * _smooth(phase, 8)),
        "inverted fluorescence": shot(1.02 - 0.8 * np.clip(x, 0, 1)),
    }


def _planes(path: Path) -> dict[str, np.ndarray]:
    import tifffile

    stack = tifffile.imread(path)
    if stack.ndim == 2:
        return {path.stem: stack}
    picks = [i for i in (5, 30, 55) if i < len(stack)] or [0]
    return {f"{path.stem}[{i}]": stack[i] for i in picks}


def build(args) -> list[tuple[str, str, np.ndarray]]:
    import tifffile

    rng = np.random.default_rng(0)
    images: list[tuple[str, str, np.ndarray]] = []
    for path in sorted(Path(args.hq).glob("*.tif")) if args.hq else []:
        hq = tifffile.imread(path)
        images.append(("fluorescence", f"{path.stem} (super-resolved)", hq))
        for photons in (20, 200, 2000):
            images.append(("fluorescence", f"{path.stem}, widefield {photons} photons",
                           _widefield(hq, rng, photons)))
        images.append(("fluorescence", f"{path.stem}, widefield, 60 % out of focus",
                       _widefield(hq, rng, 500, haze=0.6)))
    for folder in args.pairs or []:
        for path in sorted(Path(folder).glob("*.tif")):
            images.append(("fluorescence", f"{Path(folder).name}/{path.name}",
                           tifffile.imread(path)))
    objects = {}
    for path in args.nuclei or []:
        planes = _planes(Path(path))
        for name, plane in planes.items():
            images.append(("fluorescence", name, plane))
        objects[Path(path).stem] = list(planes.values())[len(planes) // 2]  # the middle
    er = sorted(Path(args.hq).glob("er_*.tif")) if args.hq else []
    if er:
        objects[er[0].stem] = tifffile.imread(er[0])
    for name, obj in objects.items():
        for photons in (300, 3000):
            for kind, image in _transmitted(obj, rng, photons).items():
                images.append(("transmitted", f"{kind} of {name}, {photons} photons", image))
    try:
        from skimage import data

        images.append(("transmitted", "quantitative phase of a cell (skimage.data.cell)",
                       data.cell()))
    except Exception:  # noqa: BLE001 - scikit-image is optional here
        pass
    return images


def main(argv=None) -> int:
    from napari_cvdm import domain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hq", help="folder of real super-resolution TIFFs")
    parser.add_argument("--pairs", nargs="*", help="folders of real widefield/SIM TIFFs")
    parser.add_argument("--nuclei", nargs="*", help="nuclei TIFFs (2-D or stacks)")
    parser.add_argument("--out", help="JSON of every image's statistics and verdict")
    args = parser.parse_args(argv)
    rows, wrong = [], 0
    for truth, name, image in build(args):
        image = np.asarray(image, np.float32)
        found = domain._plane_warnings(image)
        flagged = "transmitted" in found
        unit = domain._unit_image(image)
        row = {"truth": truth, "image": name, "flagged": flagged,
               "dark_on_bright": domain.looks_transmitted(image),
               "warnings": sorted(found),
               "median": None if unit is None else round(float(np.median(unit)), 3),
               "correlation": domain.neighbour_correlation(image)}
        stats = domain._relief_stats(image, (1.0, 0.01))  # the relief, computed once
        row["relief_skew"], row["relief_extreme_skew"], row["relief_share"] = \
            (None, None, None) if stats is None else (*stats[0], round(stats[1], 3))
        bad = flagged != (truth == "transmitted")
        wrong += bad
        rows.append(row)
        print(f"{'WRONG ' if bad else ''}{truth:12s} {name:62s} flagged={int(flagged)} "
              f"median={row['median']} corr={row['correlation'] or 0:.2f} "
              f"relief={row['relief_skew'] if row['relief_skew'] is None else round(row['relief_skew'], 3)}")
    for truth in ("fluorescence", "transmitted"):
        some = [r for r in rows if r["truth"] == truth]
        print(f"{truth}: {sum(r['flagged'] for r in some)} of {len(some)} flagged "
              f"({sum(r['dark_on_bright'] for r in some)} by the dark-on-bright rule alone)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
