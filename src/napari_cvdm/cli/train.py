"""``cvdm train``: train a model from image pairs, high-quality images or structure generators."""

from __future__ import annotations

import sys

from .progress import ProgressBar

EPILOG = """examples:
  cvdm train --hq sharp_images/ --preset small --steps 20000 -o mine.cvdm.safetensors
  cvdm train --synthetic microtubules er --psf-sigma 2 4 --steps 20000 -o mine.cvdm.safetensors
  cvdm train --init widefield-x2 --hq my_sim_images/ --steps 300 -o tuned.cvdm.safetensors
  cvdm train --pairs widefield/ sim/ --steps 20000 -o pairs.cvdm.safetensors
"""

# The simulation options (every default None: "not given"). Not given, they take the --init
# model's training optics, or napari_cvdm.simulation_defaults; with --pairs, giving any is
# refused (they would be ignored).
SIMULATION_OPTIONS = ("psf", "psf_sigma", "photons", "background", "read_noise", "haze",
                      "haze_sigma", "told_error")


def _shown(value) -> str:
    return " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}" \
        if isinstance(value, float) else str(value)


def add_parser(sub) -> None:
    import argparse

    from ..settings import TrainSettings
    from ..simulation_defaults import SIMULATION_DEFAULTS as D
    from .options import add_options, input_folder, output_file

    t = sub.add_parser("train", help="train a model from image pairs, high-quality images or "
                       "generated structures", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--pairs", nargs=2, type=input_folder, metavar=("LQ_DIR", "HQ_DIR"),
                   help="low/high-quality image folders, matched by file name")
    t.add_argument("--hq", type=input_folder, metavar="HQ_DIR",
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
    sim = t.add_argument_group(
        "simulation (with --hq or --synthetic; with --init or --resume, options not given take "
        "the optics the model was trained with)")
    sim.add_argument("--scale", type=int, default=None,
                     help="default: 2, or the scale of the --init model")
    sim.add_argument("--psf", choices=("gaussian", "airy"), default=None,
                     help=f"point spread function (default: {D['psf']})")
    sim.add_argument("--psf-sigma", type=float, nargs="+", default=None, metavar="SIGMA",
                     help="PSF width in high-quality pixels, or MIN MAX drawn per image "
                     f"(default: {_shown(D['psf_sigma'])}, what real widefield -> SIM pairs "
                     "measure)")
    sim.add_argument("--photons", type=float, nargs=2, default=None,
                     metavar=("MIN", "MAX"), help="expected photon count at the bright end, drawn "
                     f"log-uniformly per image (default: {_shown(D['photons'])})")
    sim.add_argument("--background", type=float, nargs=2, default=None,
                     metavar=("MIN", "MAX"), help="background photons per pixel "
                     f"(default: {_shown(D['background'])})")
    sim.add_argument("--read-noise", type=float, nargs=2, default=None,
                     metavar=("MIN", "MAX"), help="camera read noise, electrons (standard "
                     f"deviation) (default: {_shown(D['read_noise'])})")
    sim.add_argument("--haze", type=float, nargs=2, default=None,
                     metavar=("MIN", "MAX"),
                     help="share of the light out of focus, below 1, drawn uniformly per image "
                     f"(default: {_shown(D['haze'])}, none)")
    sim.add_argument("--haze-sigma", type=float, nargs=2, default=None,
                     metavar=("MIN", "MAX"), help="width of the out-of-focus light, high-quality "
                     f"pixels, log-uniform (default: {_shown(D['haze_sigma'])})")
    sim.add_argument("--told-error", type=float, default=None, metavar="SD",
                     help="a PSF-conditioned model is told each patch's width times "
                     "exp(N(0, SD^2)), so that it hedges when a user's width is off "
                     f"(default: {_shown(D['told_error'])}, the true width)")


def _simulation(args) -> tuple[dict, bool | None]:
    """Every simulation option: as given, else the optics the --init model (or, with
    --resume, the run's own model) was trained with, else the defaults; and whether that
    model's optics filled the gaps (None: no model was asked)."""
    from ..simulation_defaults import SIMULATION_DEFAULTS

    base, recorded = dict(SIMULATION_DEFAULTS), None
    if (args.init is not None or args.resume) and \
            any(getattr(args, n) is None for n in SIMULATION_OPTIONS):
        from ..checkpoints import recorded_optics

        optics = recorded_optics(args.init, args.output if args.resume else None)
        recorded = optics is not None
        if recorded:
            base = {name: getattr(optics, name) for name in SIMULATION_OPTIONS}
    out = {}
    for name in SIMULATION_OPTIONS:
        given = getattr(args, name)
        value = base[name] if given is None else given
        if name == "psf_sigma":
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out, recorded


def _check_train_args(args) -> None:
    import math

    from ..degradation import LEVEL_LIMITS
    from ..devices import resolve_device
    from ..precision import resolve_precision

    sources = [args.pairs is not None, args.hq is not None or bool(args.synthetic)]
    if sum(sources) != 1:
        raise ValueError("give --pairs LQ_DIR HQ_DIR, or --hq HQ_DIR and/or --synthetic KIND ...")
    if args.pairs is not None:
        given = [name for name in SIMULATION_OPTIONS if getattr(args, name) is not None]
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
    sigma = args.psf_sigma or ()
    if len(sigma) > 2 or not all(math.isfinite(s) and s > 0 for s in sigma):
        raise ValueError(f"--psf-sigma must be one positive number or MIN MAX, not "
                         f"{' '.join(map(str, sigma))}")
    for name, limit in LEVEL_LIMITS.items():
        if getattr(args, name) is None:
            continue
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


def _describe(d) -> str:
    low, high = d.sigma_range
    sigma = f"{low:g}" if low == high else f"{low:g}-{high:g}"
    return (f"{d.psf} PSF sigma {sigma} high-quality pixels, {d.photons[0]:g}-{d.photons[1]:g} "
            f"photons, background {d.background[0]:g}-{d.background[1]:g}, read noise "
            f"{d.read_noise[0]:g}-{d.read_noise[1]:g} e-, "
            f"{d.haze[0]:.0%}-{d.haze[1]:.0%} of the light out of focus")


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
        if args.init is not None:
            from ..io import load_model

            scale = load_model(args.init).config.scale
            if args.scale is not None and args.scale != scale:  # before any word on optics
                raise ValueError(f"--scale {args.scale}: the model to fine-tune ({args.init}) "
                                 f"is x{scale}, and a fine-tune keeps its model's scale; "
                                 "leave --scale out")
        elif args.resume and args.scale is None:  # the run's own scale (a x4 fine-tune, say)
            from ..checkpoints import state_scale

            scale = state_scale(args.output) or scale
        optics, recorded = _simulation(args)
        sigma = optics.pop("psf_sigma")
        degradation = Degradation(psf_sigma=sigma[0] if len(sigma) == 1 else sigma,
                                  scale=scale, **optics)
        source = args.init if args.init is not None else args.output
        if recorded:
            print(f"simulating the optics {source} was trained with, where not given: "
                  f"{_describe(degradation)}", file=sys.stderr)
        elif recorded is not None and args.init is not None:
            print(f"simulated optics (none recorded in {source}; the defaults, where not "
                  f"given): {_describe(degradation)}", file=sys.stderr)
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
