"""Build the bundled sample: a held-out real nuclei image and its simulated widefield input.

The ground truth is stardist's 2D test image (2018 Data Science Bowl, CC0; see docs/data.md),
never used for training. The low-quality input is simulated with the demo model's optics
at a fixed, moderate signal level and a fixed seed, so the sample is reproducible:

    python scripts/make_sample.py   ->  src/napari_cvdm/sample_data/*.tif
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch

from demo_data import fetch
from napari_cvdm.degradation import Degradation, add_camera_noise, blur_and_downsample
from napari_cvdm.normalization import Normalization

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_cvdm" / "sample_data"
PHOTONS, BACKGROUND, READ_NOISE, SEED = 150.0, 5.0, 2.0, 2024
PSF_SIGMA = 1.5  # the sample was made with this width (before the default became 3.0)


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as cache:
        truth = fetch(Path(cache))["dsb2018"]
    norm = Normalization.fit(truth)
    hq01 = np.clip((norm.apply(truth) + 1) / 2, 0, None)
    clean = blur_and_downsample(torch.from_numpy(hq01)[None, None], Degradation(psf_sigma=PSF_SIGMA))
    one = torch.ones(1)
    noisy = add_camera_noise(clean, one * PHOTONS, one * BACKGROUND, one * READ_NOISE,
                             torch.Generator().manual_seed(SEED))[0, 0].numpy()
    OUT.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(OUT / "nuclei_widefield.tif", np.round(noisy).clip(0, 65535).astype(np.uint16))
    tifffile.imwrite(OUT / "nuclei_groundtruth.tif", truth.astype(np.uint16))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
