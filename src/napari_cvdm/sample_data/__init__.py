"""The bundled sample: a held-out real nuclei image (DSB 2018, CC0) and its widefield input.

See docs/data.md for provenance and scripts/make_sample.py for how it was made.
"""

from importlib import resources
from pathlib import Path

WIDEFIELD = "nuclei_widefield.tif"
GROUND_TRUTH = "nuclei_groundtruth.tif"


def path(name: str = WIDEFIELD) -> Path:
    """The file's path inside the installed package."""
    return Path(str(resources.files(__name__) / name))
