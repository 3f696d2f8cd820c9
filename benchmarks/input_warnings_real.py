"""Which input warnings fire on real images, and on the same images made into the inputs the
warnings are for?

    python benchmarks/input_warnings_real.py ../shared/data/real-pairs \
        ../shared/data/hq-structures demo-data [--model widefield-x2] \
        [--out docs/benchmarks/input_warnings_real.json]

Every TIFF under the given folders (up to 6 planes of a stack, evenly spread) is checked
with :func:`napari_cvdm.domain.input_warnings` for the bundled model, as it is (a false
alarm where a widefield input is flagged), then in three altered forms whose warning must
fire: padded (a zero border of 12 % of the plane on two sides, as registration leaves it),
enlarged 2 x 2 without interpolation, and scaled to 3 photons at its brightest (Poisson
counts). The super-resolution images are no widefield inputs; their warnings are listed, not
counted as false alarms. Prints one line per plane; ``--out`` keeps them as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _planes(path: Path):
    import tifffile

    image = np.asarray(tifffile.imread(path))
    stack = image.reshape(-1, *image.shape[-2:]) if image.ndim > 2 else image[None]
    for k in np.unique(np.linspace(0, len(stack) - 1, min(6, len(stack))).astype(int)):
        yield int(k), stack[k]


def _kinds(messages) -> list[str]:
    keys = {"padding": "padding", "background is clipped": "clipped",
            "enlarged without interpolation": "enlarged", "far fewer photons": "dim",
            "looks like noise": "noise", "transmitted": "transmitted",
            "label image": "labels", "saturated": "saturated", "hot pixels": "hot pixels",
            "far brighter": "bright object", "DIC": "relief"}
    return sorted({name for m in messages for key, name in keys.items() if key in m})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--model", default="widefield-x2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from napari_cvdm.domain import input_warnings
    from napari_cvdm.model_files import load_model

    model = load_model(args.model)
    rng = np.random.default_rng(0)
    rows = []
    for folder in args.folders:
        for path in sorted(folder.rglob("*.tif")):
            for k, plane in _planes(path):
                plane = np.asarray(plane)
                h, w = plane.shape
                padded = plane.copy()
                padded[: h * 6 // 100] = 0
                padded[:, : w * 6 // 100] = 0
                scaled = plane.astype(np.float64) - plane.min()
                dim = rng.poisson(3 * scaled / max(scaled.max(), 1e-12)).astype(np.uint16)
                row = {"file": str(path), "plane": k,
                       "as_is": _kinds(input_warnings(plane, model)),
                       "padded": _kinds(input_warnings(padded, model)),
                       "enlarged": _kinds(input_warnings(
                           np.kron(plane, np.ones((2, 2), plane.dtype)), model)),
                       "dim": _kinds(input_warnings(dim, model))}
                rows.append(row)
                print(f"{path.name}[{k}]: as is {row['as_is'] or '-'}; padded "
                      f"{row['padded']}; enlarged {row['enlarged']}; dim {row['dim']}",
                      flush=True)
    for form, kind in (("padded", "padding"), ("enlarged", "enlarged"), ("dim", "dim")):
        missed = [r for r in rows if kind not in r[form]]
        print(f"{form}: '{kind}' fired on {len(rows) - len(missed)} of {len(rows)} planes")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
