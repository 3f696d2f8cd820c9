"""Sample data for napari: a simulated widefield nuclei image and the real image behind it.

The ground truth is a held-out nuclei image (2018 Data Science Bowl, CC0); the widefield
input was simulated from it at half the resolution (scripts/make_sample.py). With the
ground truth at scale 0.5 and translate -0.25 the two overlay exactly (pixel centres), as
a scale 2 CVDM output does.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

WIDEFIELD = "nuclei widefield (CVDM sample)"
GROUND_TRUTH = "nuclei ground truth (CVDM sample)"


def _read(name: str) -> np.ndarray:
    import tifffile

    with resources.as_file(resources.files("napari_cvdm") / "sample_data" / name) as path:
        return tifffile.imread(path)


def nuclei() -> list[tuple]:
    """The 256 x 256 simulated widefield input (x2 downsampled, blurred, camera noise)."""
    return [(_read("nuclei_widefield.tif"), {"name": WIDEFIELD, "colormap": "gray"}, "image")]


def nuclei_ground_truth() -> list[tuple]:
    """The 512 x 512 real image the sample was simulated from, on the CVDM output grid."""
    # marked as napari-cvdm's, as its outputs are: the reconstruction widget keeps the
    # widefield input chosen when this (the target, not an input) is opened after it
    kwargs = {"name": GROUND_TRUTH, "colormap": "gray", "scale": (0.5, 0.5),
              "translate": (-0.25, -0.25),
              "metadata": {"cvdm": {"output": "ground truth of the nuclei sample"}}}
    return [(_read("nuclei_groundtruth.tif"), kwargs, "image")]
