"""``cvdm train``: train a model from image pairs, high-quality images or structure generators."""

from __future__ import annotations

import sys
from pathlib import Path

from .progress import ProgressBar

EPILOG = """examples:
  cvdm train --hq sharp_images/ --preset small --steps 20000 -o mine.cvdm.safetensors
  cvdm train --synthetic microtubules er --psf-sigma 2 4 --steps 20000 -o mine.cvdm.safetensors
  cvdm train --init widefield-x2 --hq my_sim_images/ --steps 300 -o tuned.cvdm.safetensors
  cvdm train --pairs widefield/ sim/ --steps 20000 -o pairs.cvdm.safetensors
"""

# The simulation options' defaults; with --pairs, any other value is refused (not ignored).
SIMULATION_DEFAULTS = {
    "psf": "gaussian", "psf_sigma": (1.5,), "photons": (30.0, 1000.0),
    "background": (0.0, 10.0), "read_noise": (0.5, 3.0), "haze": (0.0, 0.0),
    "haze_sigma": (8.0, 32.0), "told_error": 0.0,
}


def add_parser(sub) -> None:
    import argparse

    from ..settings import TrainSettings
    from .options import add_options, output_file

    t = sub.add_parser("train", help="train a model from image pairs, high-quality images or "
                       "generated structures", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--pairs", nargs=2, type=Path, metavar=("LQ_DIR", "HQ_DIR"),
                   help="low/high-quality image folders, matched by file name")
    t.add_argument("--hq", type=Path, metavar="HQ_DIR",
                   help="high-quality images; the inputs are simulated (see 'simulation')")
    t.add_argument("--synthetic", nargs="+", metavar="KIND", default=(),
                   help="generated structures (microtubules actin er ccp mitochondria), alone "
                   "or with --hq")
    t.add_argument("-o", "--output", required=True, type=output_file, metavar="MODEL_FILE",
                   help="the model file to write (.cvdm.safetensors)")
    t.add_argument("--resume", action="store_true", help="continue the run that wrote MODEL_FILE")
    t.add_argument("--overwrite", action="store_true",
                   help="replace MODEL_FILE if it exists (a napari-cvdm model file only)")
    add_options(t, TrainSettings, required=("steps",))
    t.add_argument("--mean-network", choices=("on", "off"), default=None,
                   help="ZMD mean network (default: the preset's)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps "
                   "(default: auto)")
    sim = t.add_argument_group("simulation (with --hq or --synthetic)")
    sim.add_argument("--scale", type=int, default=None,
                     help="default: 2, or the scale of the --init model")
    sim.add_argument("--psf", choices=("gaussian", "airy"), default=SIMULATION_DEFAULTS["psf"],
                     help="point spread function (default: gaussian)")
    sim.add_argument("--psf-sigma", type=float, nargs="+",
                     default=SIMULATION_DEFAULTS["psf_sigma"], metavar="SIGMA",
                     help="PSF width in high-quality pixels, or MIN MAX drawn per image "
                     "(default: 1.5)")
    sim.add_argument("--photons", type=float, nargs=2, default=SIMULATION_DEFAULTS["photons"],
                     metavar=("MIN", "MAX"), help="expected photon count at the bright end, drawn "
                     "log-uniformly per image (default: 30 1000)")
    sim.add_argument("--background", type=float, nargs=2,
                     default=SIMULATION_DEFAULTS["background"],
                     metavar=("MIN", "MAX"), help="background photons per pixel "
                     "(default: 0 10)")
    sim.add_argument("--read-noise", type=float, nargs=2,
                     default=SIMULATION_DEFAULTS["read_noise"],
                     metavar=("MIN", "MAX"), help="camera read noise, electrons (standard deviation) "
                     "(default: 0.5 3)")
    sim.add_argument("--haze", type=float, nargs=2, default=SIMULATION_DEFAULTS["haze"],
                     metavar=("MIN", "MAX"),
                     help="share of the light out of focus, below 1, drawn uniformly per image "
                     "(default: 0 0, none)")
    sim.add_argument("--haze-sigma", type=float, nargs=2,
                     default=SIMULATION_DEFAULTS["haze_sigma"],
                     metavar=("MIN", "MAX"), help="width of the out-of-focus light, high-quality "
                     "pixels, log-uniform (default: 8 32)")
    sim.add_argument("--told-error", type=float, default=SIMULATION_DEFAULTS["told_error"],
                     metavar="SD",
                     help="a PSF-conditioned model is told each patch's width times "
                     "exp(N(0, SD^2)), so that it hedges when a user's width is off "
                     "(default: 0, the true width)")


def _as_given(value):
    return tuple(value) if isinstance(value, list) else value


def _check_train_args(args) -> None:
    import math

    from ..degradation import LEVEL_LIMITS
    from ..devices import resolve_device
    from ..precision import resolve_precision

    sources = [args.pairs is not None, args.hq is not None or bool(args.synthetic)]
    if sum(sources) != 1:
        raise ValueError("give --pairs LQ_DIR HQ_DIR, or --hq HQ_DIR and/or --synthetic KIND ...")
    if args.pairs is not None:
        given = [name for name, default in SIMULATION_DEFAULTS.items()
                 if _as_given(getattr(args, name)) != default]
        if args.scale is not None:
            raise ValueError("--scale: with --pairs the scale is measured, as the size ratio of "
                             "the two folders' images; leave --scale out")
        if given:
            names = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{names} simulate inputs from high-quality images (--hq or "
                             "--synthetic); with --pairs the inputs are measured, so they "
                             "would be ignored")
    if args.scale is not None and args.scale not in (1, 2, 3, 4):
        raise ValueError(f"--scale must be 1, 2, 3 or 4, not {args.scale}")
    if len(args.psf_sigma) > 2 or not all(math.isfinite(s) and s > 0 for s in args.psf_sigma):
        raise ValueError(f"--psf-sigma must be one positive number or MIN MAX, not "
                         f"{' '.join(map(str, args.psf_sigma))}")
    for name, limit in LEVEL_LIMITS.items():
        low, high = getattr(args, name)
        positive = name == "photons"
        if not (math.isfinite(low) and math.isfinite(high) and low <= high <= limit
                and (low > 0 if positive else low >= 0)):
            raise ValueError(f"--{name.replace('_', '-')} must be MIN MAX with "
                             f"{'0 <' if positive else '0 <='} MIN <= MAX <= {limit:g}, not "
                             f"{low} {high}")
    from ..model_files import training_output_problem

    # A typo in -o must not overwrite an image or a trained model, and a folder that cannot
    # take the model is found now, not at the first checkpoint.
    problem = training_output_problem(
        args.output, args.overwrite, args.init, args.resume,
        how_to_replace="pass --overwrite, or --resume to continue the run that wrote it")
    if problem:
        raise ValueError(problem)
    resolve_precision(args.precision, resolve_device(args.device), training=True)


def run(args) -> int:
    from ..degradation import Degradation
    from ..errors import TrainingDiverged
    from ..settings import TrainSettings
    from ..training import train
    from .options import settings_from_args

    settings = settings_from_args(
        TrainSettings, args,
        mean_network=None if args.mean_network is None else args.mean_network == "on")
    _check_train_args(args)
    degradation = None
    if args.pairs is None:
        scale = args.scale or 2
        if args.init is not None and args.scale is None:
            from ..io import load_model

            scale = load_model(args.init).config.scale
        elif args.resume and args.scale is None:  # the run's own scale (a x4 fine-tune, say)
            from ..checkpoints import state_scale

            scale = state_scale(args.output) or scale
        sigma = args.psf_sigma[0] if len(args.psf_sigma) == 1 else tuple(args.psf_sigma)
        degradation = Degradation(psf=args.psf, psf_sigma=sigma, scale=scale,
                                  photons=tuple(args.photons), background=tuple(args.background),
                                  read_noise=tuple(args.read_noise), haze=tuple(args.haze),
                                  haze_sigma=tuple(args.haze_sigma),
                                  told_error=args.told_error)
    bar = ProgressBar("training")
    try:
        train(output=args.output, pairs=tuple(args.pairs) if args.pairs else None, hq=args.hq,
              synthetic=tuple(args.synthetic), settings=settings, degradation=degradation,
              resume=args.resume, overwrite=args.overwrite, device=args.device,
              progress=lambda step, total, loss: bar(step, total, f"loss {loss['total']:.4f}"),
              log=lambda message: print("\n" + message, file=sys.stderr, flush=True))
    except TrainingDiverged:
        print(file=sys.stderr)  # end the progress line before the message
        raise
    print(f"model written to {args.output}")
    return 0
