"""Copy a trained model into the package as a bundled model (float16 weights, <= 20 MB).

    python scripts/bundle_model.py RUN.cvdm.safetensors [--name widefield-x2]

The model card and the intended inputs (``metadata["intended"]``, read by
``domain.input_warnings``) are written for the named bundled model. Fit the calibration
first (``scripts/calibrate_model.py``): it travels in the model file.
"""

import argparse
from pathlib import Path

import napari_cvdm as nc
from napari_cvdm.model_files import BUNDLED
from napari_cvdm.psf_width import DEFAULT_PSF_SIGMA

CARDS = {
    "widefield-x2": {
        "card": {
            "description": (
                "Widefield -> x2 super-resolution of single-channel fluorescence images of "
                "subcellular structures (microtubules, F-actin, ER, clathrin-coated pits, "
                "mitochondria, nuclei), with a calibrated per-pixel standard deviation. A "
                "small CVDM (4.9 M parameters, learned schedule, ZMD mean network) trained "
                "on a 2-core CPU."),
            "training_data": (
                "Real SIM, STED and SMLM images from public repositories and nuclei images "
                "from PyPI wheels (docs/data.md lists each source and licence), plus "
                "procedurally generated structures; widefield inputs simulated with a "
                "Gaussian PSF of 1.5-4 target pixels with 0-60 % of the light out of focus "
                "(a Gaussian of 8-32 target pixels), 20-10,000 photons, background and read "
                "noise. The weights are averages of that model and its continuations on the "
                "real images alone, the last two on 96- and 128-pixel patches, then one "
                "more 128-pixel stage with the actin images counted twice "
                "(docs/training.md)."),
            "intended_use": (
                "Widefield (or similar diffraction-limited) fluorescence images sampled at "
                "about 50-80 nm per pixel (Nyquist for a high-NA objective), reconstructed "
                "on a grid twice as fine; the standard deviation layer says where not to "
                "trust it."),
            "limitations": (
                "A generative model trained mostly on simulated optics: it can invent "
                "plausible filaments or rings where the input has no information; check the "
                "uncertainty and never measure from the mean alone. Not for transmitted light, "
                "for other pixel sizes, or for structures far from the training set. Quality "
                "on real data: docs/benchmarks.md."),
            "license": "BSD-3-Clause",
        },
        "intended": {"input_pixel_size_nm": [50, 80], "psf_sigma_px": [1.5, 4.0],
                     "structures": ["microtubules", "actin", "er", "ccp", "mitochondria",
                                    "nuclei"], "modality": "widefield fluorescence"},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--name", default="widefield-x2", choices=sorted(BUNDLED))
    parser.add_argument("--psf-sigma-default", type=float, default=DEFAULT_PSF_SIGMA,
                        help="the width a PSF-conditioned model is told when the user gives "
                             "none (output pixels)")
    args = parser.parse_args()
    target = Path(__file__).resolve().parents[1] / "src" / "napari_cvdm" / "weights" / BUNDLED[args.name]
    model = nc.load_model(args.model)
    model.metadata["name"] = args.name
    model.metadata.update(CARDS.get(args.name, {}))
    if model.config.psf_conditioned:
        model.metadata["psf_sigma_default"] = args.psf_sigma_default
        card = dict(model.metadata.get("card") or {})
        card["intended_use"] = card.get("intended_use", "") + (
            f" The model is told the input's blur: psf_sigma (the widget's psf sigma, "
            f"cvdm predict --psf-sigma), the Gaussian sigma of the in-focus PSF in output "
            f"pixels; when not given, it is estimated from the image and used where "
            f"narrower than {args.psf_sigma_default:g}, else {args.psf_sigma_default:g}.")
        model.metadata["card"] = card
    nc.save_model(model, target, half=True)
    size = target.stat().st_size / 1e6
    assert size <= 20, f"bundled weights must stay under 20 MB, got {size:.1f} MB"
    print(f"wrote {target} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
