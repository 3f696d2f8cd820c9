"""``cvdm train``: train a model from image pairs, high-quality images or structure generators."""

from __future__ import annotations

import sys
from pathlib import Path

from .progress import ProgressBar


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model from image pairs or simulated optics")
    data = t.add_mutually_exclusive_group(required=True)
    data.add_argument("--pairs", nargs=2, type=Path, metavar=("LQ_DIR", "HQ_DIR"))
    data.add_argument("--hq", type=Path, metavar="HQ_DIR")
    t.add_argument("--preset", default="small", choices=("tiny", "small", "paper"))
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("-o", "--output", required=True, type=Path, metavar="MODEL_FILE")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--patch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=None, help="default: 1e-4 (paper), 2e-4 else")
    t.add_argument("--schedule", choices=("learned", "linear", "cosine"), default=None)
    t.add_argument("--mean-network", choices=("on", "off"), default=None)
    t.add_argument("--validate-every", type=int, default=500)
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    sim = t.add_argument_group("simulation (with --hq)")
    sim.add_argument("--scale", type=int, default=2)
    sim.add_argument("--psf", choices=("gaussian", "airy"), default="gaussian")
    sim.add_argument("--psf-sigma", type=float, default=1.5, help="in high-quality pixels")
    sim.add_argument("--photons", type=float, nargs=2, default=(30.0, 1000.0), metavar=("MIN", "MAX"))
    sim.add_argument("--background", type=float, nargs=2, default=(0.0, 10.0), metavar=("MIN", "MAX"))
    sim.add_argument("--read-noise", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"))


def _check_train_args(args) -> None:
    import math

    from ..devices import resolve_device

    for name in ("steps", "batch_size", "validate_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                             f"not {getattr(args, name)}")
    if args.patch_size < 8:
        raise ValueError(f"--patch-size must be at least 8 pixels, not {args.patch_size}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, not {args.lr}")
    if args.scale not in (1, 2, 3, 4):
        raise ValueError(f"--scale must be 1, 2, 3 or 4, not {args.scale}")
    if not (math.isfinite(args.psf_sigma) and args.psf_sigma > 0):
        raise ValueError(f"--psf-sigma must be a positive number, not {args.psf_sigma}")
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
    resolve_device(args.device)


def run(args) -> int:
    from ..degradation import Degradation
    from ..training import TrainingSettings, train

    _check_train_args(args)
    settings = TrainingSettings(
        preset=args.preset, steps=args.steps, batch_size=args.batch_size,
        patch_size=args.patch_size, learning_rate=args.lr, schedule=args.schedule,
        mean_network=None if args.mean_network is None else args.mean_network == "on",
        validation_every=args.validate_every, checkpoint_every=args.checkpoint_every,
        seed=args.seed)
    degradation = None
    if args.hq is not None:
        degradation = Degradation(psf=args.psf, psf_sigma=args.psf_sigma, scale=args.scale,
                                  photons=tuple(args.photons), background=tuple(args.background),
                                  read_noise=tuple(args.read_noise))
    bar = ProgressBar("training")
    train(output=args.output, pairs=tuple(args.pairs) if args.pairs else None, hq=args.hq,
          settings=settings, degradation=degradation, resume=args.resume, device=args.device,
          progress=lambda step, total, loss: bar(step, total, f"loss {loss['total']:.4f}"),
          log=lambda message: print("\n" + message, file=sys.stderr, flush=True))
    print(f"model written to {args.output}")
    return 0


