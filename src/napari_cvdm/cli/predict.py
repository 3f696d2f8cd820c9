"""``cvdm predict``: reconstruct image files; writes the mean and variance of each."""

from __future__ import annotations

import glob
from pathlib import Path

from .progress import ProgressBar

EPILOG = """examples:
  cvdm predict cell.tif -o results/
  cvdm predict images/ -o results/ --samples 16 --seed 1
  cvdm predict "data/*.tif" -o results/ --model mine.cvdm.safetensors --device cuda

Each input gives INPUT_cvdm_mean.tif, INPUT_cvdm_std.tif (the calibrated standard deviation:
the expected error of the mean) and INPUT_cvdm_var.tif (the samples' raw variance): OME-TIFF,
float32, in the input's units, pixel size divided by the model's scale, written together or
not at all. Existing outputs are refused unless --overwrite is given.
The seed used is printed and stored in the files, so any run can be repeated.
"""

TIFF_SUFFIXES = (".tif", ".tiff")
SKIP = ("model",)  # --model is added with its own help below


def add_parser(sub) -> None:
    import argparse

    from ..settings import PredictSettings
    from .options import add_options

    p = sub.add_parser("predict", help="reconstruct TIFF images; writes mean and variance",
                       description="Reconstruct TIFF images with CVDM.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="TIFF files, folders of TIFF files, or patterns such as 'data/*.tif'")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR",
                   help="folder for the outputs (created if missing)")
    add_options(p, PredictSettings)
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: refuse, before any work)")


def is_zarr(path: Path) -> bool:
    return path.name.lower().endswith(".zarr")


def _output_stem(path: Path) -> str:
    return path.name.split(".")[0] or path.stem or "image"


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their TIFF files, patterns as their matches (sorted)."""
    found: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir() and path.name.lower().endswith(".zarr"):
            files = [path]  # an OME-Zarr image
        elif path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES)
            if not files:
                raise ValueError(f"the folder {path} has no .tif or .tiff files")
        elif not path.exists() and glob.has_magic(text):
            files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not files:
                raise ValueError(f"no files match {text}")
        elif not path.exists():
            raise ValueError(f"input file not found: {path}")
        elif not path.is_file():
            raise ValueError(f"input {path} is not a file")
        else:
            files = [path]
        found += [f for f in files if f not in found]
    return found


def _check_predict_args(args) -> list[tuple[Path, tuple[Path, ...]]]:
    """Everything that can be checked before loading a model or an image.

    Returns (input, outputs): outputs are (mean, std, var) TIFFs, or one OME-Zarr folder.
    """
    from ..devices import resolve_device
    from ..tiff_writer import check_outputs

    resolve_device(args.device)
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"the output {args.output} exists and is not a folder")
    paths = expand_inputs(args.inputs)
    plan, seen = [], {}
    inputs = {p.resolve() for p in paths}
    for path in paths:
        stem = _output_stem(path)
        if stem in seen and seen[stem] != path.resolve():
            raise ValueError(f"{seen[stem]} and {path} would both be written as "
                             f"{stem}_cvdm_*.tif; rename one or run them separately")
        seen[stem] = path.resolve()
        if is_zarr(path):
            out = args.output / f"{stem}_cvdm.ome.zarr"
            check_outputs([out], overwrite=args.overwrite, folders=True)
            plan.append((path, (out,)))
            continue
        outputs = tuple(args.output / f"{stem}_cvdm_{kind}.tif" for kind in ("mean", "std", "var"))
        if {p.resolve() for p in outputs} & inputs:
            raise ValueError(f"an output of {path} would overwrite an input; choose another "
                             "output folder")
        plan.append((path, outputs))
    check_outputs([p for src, outs in plan if not is_zarr(src) for p in outs],
                  overwrite=args.overwrite)
    return plan


def provenance(summary: dict, settings, steps: int, device: str, precision: str) -> dict:
    """What the output files record about how they were made (known before the run)."""
    import datetime

    from .. import __version__

    return {"software": f"napari-cvdm {__version__}", "model": summary.get("name"),
            "weights_sha256": summary.get("sha256"), "seed": settings.seed,
            "samples": settings.samples, "steps": steps, "eta": settings.eta,
            "sampler": settings.sampler, "precision": precision, "device": device,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def run(args) -> int:
    """Each input: read, predict, then write its mean and variance together (both or none).

    A failure or Ctrl-C leaves the outputs of the inputs finished before it, complete,
    and nothing of the input it was working on.
    """
    import sys

    import napari_cvdm

    from ..devices import resolve_device, tune_cpu_allocator
    from ..domain import input_warnings
    from ..image_files import read_tiff
    from ..model_files import resolve_model
    from ..precision import resolve_precision
    from ..settings import PredictSettings, draw_seed
    from ..tiff_writer import spec_for, write_ome_tiffs
    from ..validation import check_output_size
    from .options import settings_from_args

    settings = settings_from_args(PredictSettings, args)
    plan = _check_predict_args(args)
    model, summary = resolve_model(settings.model)
    settings = settings.replace(model=model)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device).name
    steps = settings.steps if settings.sampler == "ddim" else model.config.timesteps
    tune_cpu_allocator()  # this process only predicts: keep freed memory for the next tile
    args.output.mkdir(parents=True, exist_ok=True)
    for path, outputs in plan:
        if is_zarr(path):
            _predict_zarr(path, outputs[0], model, summary, settings, steps, device, precision,
                          args)
            continue
        image = read_tiff(path)
        check_output_size(image.data.shape, model.config.scale)
        run_settings = settings.replace(seed=draw_seed() if settings.seed is None
                                        else settings.seed)
        # The output metadata is checked before the work, not after it.
        spec = spec_for(image, model.config.scale,
                        provenance(summary, run_settings, steps, str(device), precision))
        size = image.pixel_size[-1] if image.pixel_size else None
        for message in input_warnings(image.data, model, size, image.unit or None):
            print(f"cvdm predict: warning: {path.name}: {message}", file=sys.stderr)
        bar = None if args.quiet else ProgressBar(path.name, unit="eval")
        result = napari_cvdm.predict(image.data, settings=run_settings, progress=bar)
        mean_path, std_path, var_path = outputs
        write_ome_tiffs(list(zip(outputs, (result.mean, result.std, result.variance))), spec,
                        overwrite=args.overwrite)
        print(f"{path} -> {mean_path}, {std_path}, {var_path} (seed {result.seed}, "
              f"{result.info.get('precision')}, {result.seconds:.1f} s on {result.device})")
    return 0


def _predict_zarr(path: Path, out: Path, model, summary, settings, steps, device, precision,
                  args) -> None:
    """An OME-Zarr input, read lazily, to ``out``: mean and calibrated std as two images."""
    import napari_cvdm

    from ..settings import draw_seed
    from ..validation import check_output_size
    from ..zarr_files import read_ome_zarr, write_ome_zarr

    array, meta = read_ome_zarr(path)
    check_output_size(tuple(array.shape), model.config.scale)
    run_settings = settings.replace(seed=draw_seed() if settings.seed is None else settings.seed)
    bar = None if args.quiet else ProgressBar(path.name, unit="eval")
    result = napari_cvdm.predict(array, settings=run_settings, progress=bar)
    write_ome_zarr(out, result.mean, result.std, meta, scale=model.config.scale,
                   provenance=provenance(summary, run_settings, steps, str(device), precision),
                   overwrite=args.overwrite)
    print(f"{path} -> {out} (seed {result.seed}, {result.info.get('precision')}, "
          f"{result.seconds:.1f} s on {result.device})")
