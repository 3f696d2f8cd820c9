"""``cvdm predict``: reconstruct image files; writes the mean and variance of each."""

from __future__ import annotations

from pathlib import Path

from .progress import ProgressBar


def add_parser(sub) -> None:
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


def _output_stem(path: Path) -> str:
    return path.name.split(".")[0] or path.stem or "image"


def _check_predict_args(args) -> list[tuple[Path, Path, Path]]:
    """Everything that can be checked before loading a model or an image."""
    import math

    from ..devices import resolve_device

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


def run(args) -> int:
    """Each input: read, predict, then write its mean and variance together (both or none).

    A failure or Ctrl-C leaves the outputs of the inputs finished before it, complete,
    and nothing of the input it was working on.
    """
    from .. import predict
    from ..io import load_model, read_tiff, write_tiffs
    from ..validation import check_output_size

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


