"""``cvdm train``: train a model from image pairs, high-quality images or structure generators."""

from __future__ import annotations

import sys
from pathlib import Path

from .progress import ProgressBar

EPILOG = """examples:
  cvdm train --hq sharp_images/ --preset small --steps 20000 -o mine.cvdm.safetensors
  cvdm train --synthetic microtubules er --psf-sigma 2 4 --steps 20000 -o mine.cvdm.safetensors
  cvdm train --init demo --hq my_sim_images/ --steps 300 -o tuned.cvdm.safetensors
  cvdm train --pairs widefield/ sim/ --steps 20000 -o pairs.cvdm.safetensors
"""


def add_parser(sub) -> None:
    import argparse

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
    t.add_argument("--init", metavar="MODEL", default=None,
                   help="fine-tune a bundled model or model file (fresh optimizer; its scale "
                   "and preset are used)")
    t.add_argument("--preset", default="small", choices=("tiny", "small", "paper"),
                   help="model size for a new model (default: small)")
    t.add_argument("--steps", type=int, required=True, help="training steps")
    t.add_argument("-o", "--output", required=True, type=Path, metavar="MODEL_FILE")
    t.add_argument("--resume", action="store_true", help="continue the run that wrote MODEL_FILE")
    t.add_argument("--batch-size", type=int, default=8, help="patches per step (default: 8)")
    t.add_argument("--patch-size", type=int, default=64, help="high-quality pixels (default: 64)")
    t.add_argument("--lr", type=float, default=None, help="default: 1e-4 (paper), 2e-4 else")
    t.add_argument("--schedule", choices=("learned", "linear", "cosine"), default=None,
                   help="noise schedule (default: the preset's, learned)")
    t.add_argument("--mean-network", choices=("on", "off"), default=None,
                   help="ZMD mean network (default: the preset's)")
    t.add_argument("--validate-every", type=int, default=500, help="steps (default: 500)")
    t.add_argument("--checkpoint-every", type=int, default=500, help="steps (default: 500)")
    t.add_argument("--first-checkpoint", type=int, default=50,
                   help="steps before the first checkpoint (default: 50, or 5 minutes)")
    t.add_argument("--seed", type=int, default=0, help="default: 0")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="the networks' arithmetic (default: auto = bf16 on CPUs with it)")
    sim = t.add_argument_group("simulation (with --hq or --synthetic)")
    sim.add_argument("--scale", type=int, default=None,
                     help="default: 2, or the scale of the --init model")
    sim.add_argument("--psf", choices=("gaussian", "airy"), default="gaussian")
    sim.add_argument("--psf-sigma", type=float, nargs="+", default=(1.5,), metavar="SIGMA",
                     help="PSF width in high-quality pixels, or MIN MAX drawn per image "
                     "(default: 1.5)")
    sim.add_argument("--photons", type=float, nargs=2, default=(30.0, 1000.0), metavar=("MIN", "MAX"))
    sim.add_argument("--background", type=float, nargs=2, default=(0.0, 10.0), metavar=("MIN", "MAX"))
    sim.add_argument("--read-noise", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"))


def _check_train_args(args) -> None:
    import math

    from ..devices import resolve_device
    from ..precision import resolve_precision

    sources = [args.pairs is not None, args.hq is not None or bool(args.synthetic)]
    if sum(sources) != 1:
        raise ValueError("give --pairs LQ_DIR HQ_DIR, or --hq HQ_DIR and/or --synthetic KIND ...")
    for name in ("steps", "batch_size", "validate_every", "checkpoint_every", "first_checkpoint"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                             f"not {getattr(args, name)}")
    if args.patch_size < 8:
        raise ValueError(f"--patch-size must be at least 8 pixels, not {args.patch_size}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, not {args.lr}")
    if args.scale is not None and args.scale not in (1, 2, 3, 4):
        raise ValueError(f"--scale must be 1, 2, 3 or 4, not {args.scale}")
    if len(args.psf_sigma) > 2 or not all(math.isfinite(s) and s > 0 for s in args.psf_sigma):
        raise ValueError(f"--psf-sigma must be one positive number or MIN MAX, not "
                         f"{' '.join(map(str, args.psf_sigma))}")
    for name in ("photons", "background", "read_noise"):
        low, high = getattr(args, name)
        positive = name == "photons"
        if not (math.isfinite(low) and math.isfinite(high) and low <= high
                and (low > 0 if positive else low >= 0)):
            raise ValueError(f"--{name.replace('_', '-')} must be MIN MAX with "
                             f"{'0 <' if positive else '0 <='} MIN <= MAX, not {low} {high}")
    if args.output.exists() and args.output.is_dir():
        raise ValueError(f"the output {args.output} is a folder; give a model file name "
                         "(e.g. my.cvdm.safetensors)")
    resolve_precision(args.precision, resolve_device(args.device), training=True)


def run(args) -> int:
    from ..degradation import Degradation
    from ..errors import TrainingDiverged
    from ..training import TrainingSettings, train

    _check_train_args(args)
    settings = TrainingSettings(
        preset=args.preset, steps=args.steps, batch_size=args.batch_size,
        patch_size=args.patch_size, learning_rate=args.lr, schedule=args.schedule,
        mean_network=None if args.mean_network is None else args.mean_network == "on",
        validation_every=args.validate_every, checkpoint_every=args.checkpoint_every,
        first_checkpoint=args.first_checkpoint, seed=args.seed, precision=args.precision,
        init=args.init)
    degradation = None
    if args.pairs is None:
        scale = args.scale or 2
        if args.init is not None and args.scale is None:
            from ..io import load_model

            scale = load_model(args.init).config.scale
        sigma = args.psf_sigma[0] if len(args.psf_sigma) == 1 else tuple(args.psf_sigma)
        degradation = Degradation(psf=args.psf, psf_sigma=sigma, scale=scale,
                                  photons=tuple(args.photons), background=tuple(args.background),
                                  read_noise=tuple(args.read_noise))
    bar = ProgressBar("training")
    try:
        train(output=args.output, pairs=tuple(args.pairs) if args.pairs else None, hq=args.hq,
              synthetic=tuple(args.synthetic), settings=settings, degradation=degradation,
              resume=args.resume, device=args.device,
              progress=lambda step, total, loss: bar(step, total, f"loss {loss['total']:.4f}"),
              log=lambda message: print("\n" + message, file=sys.stderr, flush=True))
    except TrainingDiverged:
        print(file=sys.stderr)  # end the progress line before the message
        raise
    print(f"model written to {args.output}")
    return 0
