"""When does the input check say a small, far brighter object sets an image's contrast?

    python benchmarks/bright_objects.py --hq ../shared/data/hq-structures \
        --pairs ../shared/data/real-pairs/biosr_microtubules ../shared/data/real-pairs/jin2020_microtubules \
        --nuclei demo-data/train/nuclei_cells3d.tif demo-data/train/timelapse.tif demo-data/test/dsb2018_nuclei.tif \
        [--out docs/benchmarks/bright_objects.json]

The fluorescence images of benchmarks/transmitted_light.py (same arguments) as they are, and
each simulated widefield one (and each real pair) with a bead added: a 2 x 2 pixel spot
blurred like the image (two 3-pixel boxes), its peak 10, 30 or 100 times the image's 0.1-99.9
percentile range above the image's median; and sparse puncta all alike (20, 50 or 100 blurred
spots on a 512 x 512 background, as a bead slide or vesicles: the structure itself, not to be
warned about). Prints :func:`napari_cvdm.domain.bright_object_share` (the share of the range
above the 99th percentile) and whether the warning fires (:func:`~napari_cvdm.domain.bright_object`:
that share above the threshold, in at most a few objects); for the beads, also how far the
bead moved the 99.9th percentile (under 1.5 times: too small a part of a large image to change
the normalisation, and no warning is needed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _with_bead(image: np.ndarray, strength: float) -> np.ndarray:
    from transmitted_light import _smooth

    x = np.asarray(image, np.float64)
    h, w = x.shape
    spot = np.zeros_like(x)
    spot[h // 3:h // 3 + 2, w // 3:w // 3 + 2] = 1.0
    spot = _smooth(spot, 1)
    low, high = np.percentile(x, (0.1, 99.9))
    return x + spot / spot.max() * strength * (high - low)


def _puncta(count: int, seed: int) -> np.ndarray:
    from transmitted_light import _smooth

    rng = np.random.default_rng(seed)
    points = np.zeros((512, 512))
    points[rng.integers(8, 504, count), rng.integers(8, 504, count)] = 1.0
    clean = np.clip(_smooth(points, 1), 0, None)
    return rng.poisson(clean / clean.max() * 500 + 5).astype(np.float64)


def main(argv=None) -> int:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from transmitted_light import build

    from napari_cvdm.domain import BRIGHT_OBJECT_SPAN, bright_object, bright_object_share

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hq", type=Path)
    parser.add_argument("--pairs", type=Path, nargs="*")
    parser.add_argument("--nuclei", type=Path, nargs="*")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for kind, name, image in build(args):
        if kind != "fluorescence":
            continue
        image = np.asarray(image)
        if image.ndim > 2:
            image = image.reshape(-1, *image.shape[-2:])[0]
        share = bright_object_share(image)
        rows.append({"image": name, "bead": 0, "share": share,
                     "warned": bright_object(image) is not None})
        if "widefield" not in name and "/" not in name:
            continue
        for strength in (10, 30, 100):
            beaded = _with_bead(image, strength)
            moved = float(np.percentile(beaded, 99.9) - np.percentile(beaded, 0.1)) / max(
                float(np.percentile(image, 99.9) - np.percentile(image, 0.1)), 1e-12)
            share = bright_object_share(beaded)
            rows.append({"image": name, "bead": strength, "share": share,
                         "range_moved": moved, "warned": bright_object(beaded) is not None})
    for count in (20, 50, 100):
        for seed in range(3):
            image = _puncta(count, seed)
            rows.append({"image": f"{count} puncta alike, seed {seed}", "bead": 0,
                         "share": bright_object_share(image),
                         "warned": bright_object(image) is not None})
    plain = [r for r in rows if not r["bead"] and "puncta" not in r["image"]]
    puncta = [r for r in rows if "puncta" in r["image"]]
    beads = [r for r in rows if r["bead"] and r["range_moved"] >= 1.5]
    summary = {
        "threshold": BRIGHT_OBJECT_SPAN,
        "fluorescence images": len(plain),
        "fluorescence warned": sum(r["warned"] for r in plain),
        "fluorescence largest share": max(r["share"] for r in plain),
        "sparse puncta images": len(puncta),
        "sparse puncta warned": sum(r["warned"] for r in puncta),
        "sparse puncta smallest share": min(r["share"] for r in puncta),
        "beads that moved the range 1.5x or more": len(beads),
    }
    for strength in (10, 30, 100):
        these = [r for r in beads if r["bead"] == strength]
        summary[f"bead {strength}x warned"] = f"{sum(r['warned'] for r in these)} of {len(these)}"
        summary[f"bead {strength}x smallest share"] = min((r["share"] for r in these),
                                                          default=None)
    for r in rows:
        wrong = r["warned"] != bool(r["bead"] and r.get("range_moved", 0) >= 1.5)
        print(f"{'!' if wrong else ' '} {r['share']:.2f} bead {r['bead']:>3} {r['image']}")
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
