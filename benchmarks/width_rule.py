"""The quality benchmark under another rule for the PSF width ``predict()`` tells the model.

    python benchmarks/width_rule.py --output-sigma 1.5 -- QUALITY_ARGUMENTS
    python benchmarks/width_rule.py --up-to 4.0 -- QUALITY_ARGUMENTS

``QUALITY_ARGUMENTS`` are those of ``benchmarks/quality.py`` (``--psf auto`` for the rule to
matter). ``--output-sigma``: the width subtracted in quadrature from the estimate instead of
``psf_width.OUTPUT_SIGMA`` (2.0). ``--up-to``: where the estimate (relative to the output) is
above the model's default, tell it, up to this width, instead of the default. The rule is
changed for this process only; docs/benchmarks.md ("Tried in session 26") has the results.
"""

from __future__ import annotations

import argparse
import math
import runpy
import sys
from pathlib import Path

from napari_cvdm import psf_width


def _above_default(cap: float):
    shipped = psf_width.resolve

    def resolve(model, requested, image=None):
        sigma, source = shipped(model, requested, image)
        if requested is not None or source != psf_width.DEFAULT or image is None:
            return sigma, source
        from napari_cvdm.psf_estimate import estimate_psf_sigma

        try:
            total = estimate_psf_sigma(psf_width.central_plane(image), model.config.scale)
        except ValueError:
            return sigma, source
        relative = math.sqrt(max(total**2 - psf_width.OUTPUT_SIGMA**2, 0.0))
        return (round(min(relative, cap), 2), psf_width.ESTIMATED) if relative > sigma \
            else (sigma, source)

    return resolve


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-sigma", type=float, default=psf_width.OUTPUT_SIGMA)
    parser.add_argument("--up-to", type=float, help="tell estimates above the default, to this")
    args = parser.parse_args(argv[:split])
    psf_width.OUTPUT_SIGMA = args.output_sigma
    if args.up_to:
        psf_width.resolve = _above_default(args.up_to)
        import napari_cvdm.inference as inference

        inference.resolve_psf_sigma = psf_width.resolve
    sys.argv = ["quality.py", *argv[split + 1:]]
    runpy.run_path(str(Path(__file__).with_name("quality.py")), run_name="__main__")


if __name__ == "__main__":
    main()
