"""Build the bundled model's training folder (docs/data.md), so that a later run trains on
the same images: TRAIN_HQ_DIR, or TRAIN_HQ_DIR_ACTIN_TWICE with ``--actin-twice``.

    python scripts/training_folder.py HQ_STRUCTURES DEMO_TRAIN OUT [--actin-twice]

HQ_STRUCTURES: the real super-resolution images (``../shared/data/hq-structures``); the five
held out for the benchmark and the widefield image are left out, the other 13 linked
(symbolic links: nothing is copied). DEMO_TRAIN: ``demo-data/train`` from
``scripts/demo_data.py``; four planes of its cells3d nuclei stack and three frames of its
time-lapse are written as TIFFs. ``--actin-twice``: a second link to each actin image
(``NAME_again.tif``), as the session-25 stage of the bundled model used. OUT must not exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tifffile

# docs/data.md: held out of training for benchmarks/quality.py --hq, and not used at all
HELD_OUT = ("actin_pinn_gt30", "actin_stedactinfcn_axon4", "ccp_pinn_gt35", "er_pinn_gt35",
            "microtubules_pinn_gt30")
NOT_USED = ("microtubules_nanopyx_storm_cell2_lr",)  # a widefield image at another scale
# The earlier folders' planes were not all recorded (the shipped model files name z10, z11
# and z15 among their validation images); fixed here: two out-of-focus planes, two through
# the nuclei.
NUCLEI_PLANES = (10, 15, 30, 40)
TIMELAPSE_FRAMES = (0, 12, 24)


def build(hq: Path, demo_train: Path, out: Path, actin_twice: bool = False) -> list[Path]:
    """Create ``out`` with the training images; returns the files made, sorted."""
    real = sorted(p for p in hq.glob("*.tif") if p.stem not in HELD_OUT + NOT_USED)
    if not real:
        raise SystemExit(f"no .tif images in {hq}")
    missing = [n for n in HELD_OUT if not (hq / f"{n}.tif").is_file()]
    if missing:
        raise SystemExit(f"{hq} lacks the held-out images {missing}: is it hq-structures?")
    nuclei = tifffile.imread(demo_train / "nuclei_cells3d.tif")
    lapse = tifffile.imread(demo_train / "timelapse.tif")
    out.mkdir(parents=True, exist_ok=False)
    for path in real:
        (out / path.name).symlink_to(path.resolve())
        if actin_twice and path.stem.startswith("actin_"):
            (out / f"{path.stem}_again.tif").symlink_to(path.resolve())
    for z in NUCLEI_PLANES:
        tifffile.imwrite(out / f"nuclei_cells3d_z{z}.tif", nuclei[z])
    for t in TIMELAPSE_FRAMES:
        tifffile.imwrite(out / f"timelapse_t{t}.tif", lapse[t])
    return sorted(out.iterdir())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hq", type=Path, help="the real images (../shared/data/hq-structures)")
    parser.add_argument("demo_train", type=Path, help="demo-data/train (scripts/demo_data.py)")
    parser.add_argument("out", type=Path, help="the folder to create")
    parser.add_argument("--actin-twice", action="store_true",
                        help="link each actin image twice (TRAIN_HQ_DIR_ACTIN_TWICE)")
    args = parser.parse_args(argv)
    files = build(args.hq, args.demo_train, args.out, args.actin_twice)
    print(f"{len(files)} training images in {args.out}")


if __name__ == "__main__":
    main()
