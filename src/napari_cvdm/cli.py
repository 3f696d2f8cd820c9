"""The ``cvdm`` command: predict, train, info. It mirrors the widget's options."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


class ProgressBar:
    """A one-line text progress bar with remaining time, on stderr."""

    def __init__(self, label: str, stream=None, width: int = 30):
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.started = time.perf_counter()
        self.last_draw = 0.0
        self.first: int | None = None  # a resumed run starts counting part-way

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = done - 1
        if done < total and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        fraction = done / max(total, 1)
        elapsed = now - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        bar = "#" * int(fraction * self.width)
        self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {done}/{total} "
                          f"{elapsed:5.0f}s elapsed, {eta:5.0f}s left {extra}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvdm", description=(
        "Super-resolution with per-pixel uncertainty (Conditional Variational Diffusion Model)."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="reconstruct TIFF images; writes mean and variance")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT.tif")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR")
    p.add_argument("--model", default="demo", help="'demo' (bundled) or a .cvdm.safetensors file")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--sampler", choices=("ddim", "reference"), default="ddim")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--tile-size", type=int, default=None, metavar="PX")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

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

    sub.add_parser("info", help="versions, devices, bundled models, parameter counts")
    return parser


def _output_stem(path: Path) -> str:
    return path.name.split(".")[0] or path.stem or "image"


def _check_predict_args(args) -> list[tuple[Path, Path, Path]]:
    """Everything that can be checked before loading a model or an image."""
    import math

    from .devices import resolve_device

    if args.samples < 1 or args.steps < 1:
        raise ValueError("--samples and --steps must be at least 1")
    if not (math.isfinite(args.eta) and 0.0 <= args.eta <= 1.0):
        raise ValueError(f"--eta must be between 0 and 1, not {args.eta}")
    if args.tile_size is not None and args.tile_size < 8:
        raise ValueError(f"--tile-size must be at least 8 pixels, not {args.tile_size}")
    resolve_device(args.device)
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"the output {args.output} exists and is not a folder")
    plan, seen = [], {}
    inputs = {p.resolve() for p in args.inputs if p.is_file()}
    for path in args.inputs:
        if not path.is_file():
            raise ValueError(f"input file not found: {path}" if not path.exists()
                             else f"input {path} is not a file")
        stem = _output_stem(path)
        if stem in seen and seen[stem] != path.resolve():
            raise ValueError(f"{seen[stem]} and {path} would both be written as "
                             f"{stem}_cvdm_*.tif; rename one or run them separately")
        seen[stem] = path.resolve()
        mean_path = args.output / f"{stem}_cvdm_mean.tif"
        var_path = args.output / f"{stem}_cvdm_var.tif"
        if {mean_path.resolve(), var_path.resolve()} & inputs:
            raise ValueError(f"an output of {path} would overwrite an input; choose another "
                             "output folder")
        if (path, mean_path, var_path) not in plan:
            plan.append((path, mean_path, var_path))
    return plan


def _predict(args) -> int:
    """Each input: read, predict, then write its mean and variance together (both or none).

    A failure or Ctrl-C leaves the outputs of the inputs finished before it, complete,
    and nothing of the input it was working on.
    """
    from . import predict
    from .io import load_model, read_tiff, write_tiffs
    from .validation import check_output_size

    plan = _check_predict_args(args)
    model = load_model(args.model)
    args.output.mkdir(parents=True, exist_ok=True)
    for path, mean_path, var_path in plan:
        image = read_tiff(path)
        check_output_size(image.data.shape, model.config.scale)
        bar = None if args.quiet else ProgressBar(path.name)
        result = predict(image.data, model, samples=args.samples, steps=args.steps, eta=args.eta,
                         tile_size=args.tile_size, device=args.device, seed=args.seed,
                         progress=bar, sampler=args.sampler)
        pixel = None
        if image.pixel_size is not None:
            pixel = tuple(v / result.scale for v in image.pixel_size)
        write_tiffs([(mean_path, result.mean), (var_path, result.variance)], pixel, image.unit)
        print(f"{path} -> {mean_path}, {var_path} ({result.seconds:.1f} s on {result.device})")
    return 0


def _check_train_args(args) -> None:
    import math

    from .devices import resolve_device

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


def _train(args) -> int:
    from .degradation import Degradation
    from .training import TrainingSettings, train

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


def _info(args) -> int:
    import torch

    from . import __version__
    from .devices import available_devices
    from .io import BUNDLED, bundled_model_path, read_model_header
    from .model import CVDM, PRESETS

    print(f"napari-cvdm {__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'not built'}), "
          f"python {sys.version.split()[0]}")
    print("devices: " + ", ".join(available_devices()))
    print("presets (parameters for one channel):")
    with torch.device("meta"):
        for name in PRESETS:
            counts = CVDM(PRESETS[name]).parameter_counts()
            print(f"  {name:6s} total {counts['total']:>12,d}  denoiser {counts['denoiser']:>12,d}"
                  f"  schedule {counts['schedule']:>10,d}  mean network {counts['mean']:>10,d}")
    print("bundled models:")
    for name in BUNDLED:
        path = bundled_model_path(name)
        if path.is_file():
            header = read_model_header(path)
            cfg = header["config"]
            training = header.get("metadata", {}).get("training", {})
            print(f"  {name}: preset {cfg.get('preset')}, scale x{cfg.get('scale')}, "
                  f"{training.get('step', '?')} training steps, {path}")
        else:
            print(f"  {name}: not installed")
    return 0


def _one_line(message: object) -> str:
    """The message on one line: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or predict's own "out of memory" RuntimeError
    (raised when even its smallest tiles do not fit)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    import re

    return isinstance(exc, RuntimeError) and re.search(
        r"out of (gpu |cuda |mps |device )?memory|does not fit in the memory",
        str(exc), re.IGNORECASE) is not None


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 out of memory or a file system error, 2 bad input (one line
    on stderr saying what and how to fix it), 130 cancelled (Ctrl-C). argparse exits with
    2 for malformed options. Anything else is a bug and shows its traceback."""
    args = _parser().parse_args(argv)
    from .errors import Cancelled, TrainingDiverged

    handler = {"predict": _predict, "train": _train, "info": _info}[args.command]
    try:
        return handler(args)
    except ValueError as exc:
        print(f"cvdm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        kept = ("the last checkpoint is kept" if args.command == "train"
                else "no partial output was written")
        print(f"\ncvdm {args.command}: cancelled; {kept}", file=sys.stderr)
        return EXIT_CANCELLED
    except (OSError, TrainingDiverged) as exc:
        print(f"cvdm {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        hint = ("use a smaller --tile-size or fewer --samples, or --device cpu"
                if args.command == "predict" else "use a smaller --batch-size or --patch-size")
        print(f"cvdm {args.command}: error: out of memory ({_one_line(exc)[:200]}); {hint}",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
