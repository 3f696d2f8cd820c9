"""The simulated microscope's defaults: one place for the library, the command line and the
training widget (no torch here, so that ``cvdm --help`` stays fast).

The PSF width is relative to the high-quality target, in its pixels: real widefield -> SIM
pairs from three labs fit 2.75-3.75 (shared/data/real-pairs), so the default is 3.0; the
first bundled model's 1.5 made it no better than bicubic on real widefield (issue 13).
A fine-tune (``--init``, ``init=``) or a resume simulates, for every option not given, what
its model or run was trained with (:func:`napari_cvdm.checkpoints.recorded_optics`).
"""

from __future__ import annotations

SIMULATION_DEFAULTS = {
    "psf": "gaussian",
    "psf_sigma": 3.0,
    "photons": (30.0, 1000.0),      # expected photons at the bright end, log-uniform
    "background": (0.0, 10.0),      # photons per pixel
    "read_noise": (0.5, 3.0),       # electrons (standard deviation)
    "haze": (0.0, 0.0),             # share of the light out of focus
    "haze_sigma": (8.0, 32.0),      # its blur, high-quality pixels
    "told_error": 0.0,              # log-normal spread of the width a model is told
}
