"""How much does padding change the reconstruction of an image's real pixels?

    python benchmarks/padding.py ../shared/data/real-pairs/biosr_microtubules/lr.tif \
        ../shared/data/real-pairs/jin2020_microtubules/lr.tif \
        src/napari_cvdm/sample_data/nuclei_widefield.tif [--crop 192] \
        [--out docs/benchmarks/padding.json]

Each image (its central ``--crop`` pixels) is reconstructed as it is and on canvases that
pad it as registration, stitching and rotations leave it: a border of zeros on two sides
(12 % and 30 % of the canvas), the same at the image's own median (a NaN border filled with
a typical value), and a border at the detector's maximum. The real pixels' region of each
padded result is compared with the unpadded one: the mean absolute difference relative to
the unpadded result's 0.1-99.9 percentile span (the pixels next to the padding included),
in three modes: padding left out of the
normalisation and shown to the network at the other pixels' median (``now``), left out and
shown at the low percentile (``dark``, as dark background), and counted in the percentiles
and shown as it is (``before``, ``padding.find`` switched off); against the same image run
with another seed (what sampling alone changes). Bundled model, default settings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path
from unittest import mock

import numpy as np

from napari_cvdm.normalization import Normalization


def _canvases(image: np.ndarray):
    h, w = image.shape
    top = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else float(image.max()) * 4
    for name, fill, share in (("zeros 12%", 0, 0.12), ("zeros 30%", 0, 0.30),
                              ("median 12%", np.median(image), 0.12),
                              ("maximum 12%", top, 0.12)):
        # a border on the top and left: canvas side s with (s^2 - h w) / s^2 = share
        side = int(np.ceil(np.sqrt(h * w / (1 - share))))
        dy, dx = side - h, side - w
        canvas = np.full((h + dy, w + dx), fill, dtype=image.dtype)
        canvas[dy:, dx:] = image
        yield name, canvas, (dy, dx)


_fit = Normalization.fit.__func__


def _dark(cls, image, *args, **kwargs):
    """Normalization.fit, the padding shown at the low percentile."""
    norm = _fit(Normalization, image, *args, **kwargs)
    return dataclasses.replace(norm, shown_as=norm.low) if norm.padding is not None else norm


def _difference(a: np.ndarray, b: np.ndarray, span: float) -> float:
    return float(np.mean(np.abs(a - b)) / span)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import tifffile

    from napari_cvdm import load_model, predict

    model = load_model("widefield-x2")
    s = model.config.scale
    rows = []
    for path in args.images:
        image = np.asarray(tifffile.imread(path))
        image = image.reshape(-1, *image.shape[-2:])[0]
        h, w = image.shape
        c = min(args.crop, h, w)
        image = np.ascontiguousarray(image[(h - c) // 2:(h - c) // 2 + c,
                                           (w - c) // 2:(w - c) // 2 + c])
        base = predict(image, model, seed=1, check_input=False).mean
        seed = predict(image, model, seed=2, check_input=False).mean
        span = float(np.diff(np.percentile(base, (0.1, 99.9)))[0])
        row = {"image": str(path), "crop": c, "another seed": _difference(base, seed, span)}
        for name, canvas, (dy, dx) in _canvases(image):
            for mode, patch in (("now", contextlib.nullcontext()),
                                ("dark", mock.patch.object(Normalization, "fit", classmethod(_dark))),
                                ("before", mock.patch("napari_cvdm.padding.find",
                                                      return_value=None))):
                with patch:
                    out = predict(canvas, model, seed=1, check_input=False).mean
                real = out[dy * s:, dx * s:]
                row[f"{name}, {mode}"] = _difference(real, base, span)
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items()}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
