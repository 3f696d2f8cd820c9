"""``cvdm predict``: reconstruct image files; writes the mean, calibrated std and variance
of each."""

from __future__ import annotations

import contextlib
import glob
import sys
import warnings
from pathlib import Path

from ..image_names import (TIFF_OUTPUTS, TIFF_SUFFIXES, ZARR_SUFFIX, image_stem, is_cvdm_output,
                           is_hidden, is_tiff, is_zarr, output_name, zarr_store)
from .progress import ProgressBar

EPILOG = """examples:
  cvdm predict cell.tif -o results/
  cvdm predict images/ -o results/ --samples 16 --seed 1
  cvdm predict "data/*.tif" -o results/ --model mine.cvdm.safetensors --device cuda
  cvdm predict images/ -o results/ --workers 2 --resume
  cvdm predict images/ -o results/ --scheduler tcp://head-node:8786 --device cuda

Each input gives INPUT_cvdm_mean.tif, INPUT_cvdm_std.tif (the calibrated standard deviation:
the expected error of the mean) and INPUT_cvdm_var.tif (the samples' raw variance): OME-TIFF,
float32, in the input's units, pixel size divided by the model's scale, written together or
not at all. Existing outputs are refused unless --overwrite is given; --resume skips inputs
whose outputs are complete and redoes incomplete ones. The seed and precision used are
printed and stored in the files: a run repeats with both given (--seed, --precision) on the
same device (--precision auto is chosen by a speed test on each run).

With --workers or --scheduler each file is a task on a dask cluster (pip install
'napari-cvdm[cluster]'); every worker loads the model once and predicts one file at a time.
"""

SKIP = ("model",)  # --model is added with its own help below


# an -o ending in one of these is a file name given where a folder is wanted
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg")


def add_parser(sub) -> None:
    import argparse

    from ..settings import PredictSettings
    from .options import add_options, output_folder

    p = sub.add_parser("predict",
                       help="reconstruct TIFF images; writes mean, calibrated std and variance",
                       description="Reconstruct TIFF images with CVDM.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="TIFF (or Zeiss LSM) files or OME-Zarr images (or a series or "
                   "field inside a store: 'store.ome.zarr/1', 'plate.ome.zarr/A/1/0'), "
                   "folders of them, or patterns such as 'data/*.tif'")
    p.add_argument("-o", "--output", required=True, type=output_folder, metavar="OUTDIR",
                   help="folder for the outputs (created if missing)")
    add_options(p, PredictSettings)
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: refuse, before any work)")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose outputs are all complete, redo those whose outputs "
                        "are incomplete (default: off)")
    cluster = p.add_argument_group(
        "cluster", "run the files as tasks on dask.distributed (pip install "
        "'napari-cvdm[cluster]'); with --device cuda and several GPUs, worker i uses "
        "cuda:(i mod GPUs)")
    where = cluster.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a local cluster of N worker processes (default: no "
                            "cluster, one process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="use the running dask cluster at ADDRESS, e.g. "
                            "tcp://10.0.0.5:8786 (default: none)")
    cluster.add_argument("--threads-per-worker", type=int, metavar="T",
                         help="torch threads of each worker (default: 1 with --workers, the "
                              "worker's own thread count with --scheduler)")
    cluster.add_argument("--scheduler-timeout", type=float, metavar="S",
                         help="seconds to wait for --scheduler to answer (default: 15)")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their TIFF (and LSM) files and OME-Zarr images, patterns
    as their TIFF and OME-Zarr matches (sorted); a file named twice (also as a relative and
    an absolute path, or through a link) once. A folder inside an OME-Zarr store (a series
    of a bioformats2raw store, a plate's field) is an OME-Zarr image.

    Folders and patterns leave out hidden files and napari-cvdm's own outputs, so outputs
    written beside their inputs are not taken for new inputs by the next run; of the folders
    inside a store, they take only those holding an image (not its OME folder)."""
    found: list[Path] = []
    resolved: set[Path] = set()
    for text in inputs:
        path = Path(text)
        if path.is_dir() and is_zarr(path):
            files = [path]  # an OME-Zarr image (its reader says what is wrong if it is not)
        elif path.is_dir():
            entries = list(path.iterdir())
            _warn_about_broken_links(entries)
            files = sorted(p for p in entries if _is_image(p) and not _skipped(p))
            if not files:
                raise ValueError(f"the folder {path} has no .tif, .tiff, .lsm or OME-Zarr "
                                 "images (other than hidden files and napari-cvdm outputs)")
        elif not path.exists() and glob.has_magic(text):
            entries = [Path(p) for p in glob.glob(text)]
            _warn_about_broken_links(entries)
            files = sorted(p for p in entries if _is_image(p) and not _skipped(p))
            if not files:
                raise ValueError(f"no .tif, .tiff, .lsm or OME-Zarr images match {text} "
                                 "(other than hidden files and napari-cvdm outputs)")
        elif not path.exists():
            raise ValueError(f"input file not found: {path}")
        elif not path.is_file():
            raise ValueError(f"input {path} is not a file")
        else:
            files = [path]
        for file in files:
            real = file.resolve()
            if real not in resolved:
                resolved.add(real)
                found.append(file)
    return found


def _warn_about_broken_links(entries: list[Path]) -> None:
    """Say which image names in a folder or pattern are links to nothing (a moved or
    unmounted original): they are left out, and were left out without a word."""
    broken = sorted(p.name for p in entries
                    if is_tiff(p) and p.is_symlink() and not p.exists() and not _skipped(p))
    if broken:
        warnings.warn(f"left out {len(broken)} link(s) to missing files: "
                      f"{', '.join(broken[:5])}{', ...' if len(broken) > 5 else ''}",
                      stacklevel=2)


def _is_image(path: Path) -> bool:
    """A TIFF file, a folder named .zarr, or a folder inside one that holds an image."""
    if path.is_file():
        return is_tiff(path)
    if not path.is_dir() or not is_zarr(path):
        return False
    if path.name.lower().endswith(ZARR_SUFFIX):
        return True
    from ..zarr_files import holds_image

    return holds_image(path)


def _skipped(path: Path) -> bool:
    return is_hidden(path) or is_cvdm_output(path)


def _resolved_output(path: Path) -> Path:
    """``path.resolve()``; ValueError saying why where its folder cannot be resolved (a
    symbolic link loop, which Python before 3.13 raises as RuntimeError)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        from ..tiff_writer import _folder_problem

        raise ValueError(_folder_problem(path.parent) or
                         f"the output folder {path.parent} cannot be resolved (a symbolic "
                         "link loop?); choose another output folder") from None


def _check_cluster_args(args) -> bool:
    """Whether the run uses a cluster; ValueError for options that do not go together."""
    if args.resume and args.overwrite:
        raise ValueError("--resume keeps complete outputs and --overwrite replaces them; "
                         "give one of them")
    if args.scheduler_timeout is not None and args.scheduler is None:
        raise ValueError("--scheduler-timeout needs --scheduler (a local cluster's workers "
                         "start in this process)")
    clustered = args.workers is not None or args.scheduler is not None
    if not clustered:
        if args.threads_per_worker is not None:
            raise ValueError("--threads-per-worker needs --workers or --scheduler")
        return False
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {args.workers}")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        raise ValueError(f"--threads-per-worker must be at least 1, not "
                         f"{args.threads_per_worker}")
    from ..distributed import DEFAULT_TIMEOUT, MAX_SCHEDULER_TIMEOUT

    if args.scheduler_timeout is None:
        args.scheduler_timeout = DEFAULT_TIMEOUT  # not given: only a --scheduler reads it
    if not 0 < args.scheduler_timeout <= MAX_SCHEDULER_TIMEOUT:
        raise ValueError(f"--scheduler-timeout must be more than 0 and at most "
                         f"{MAX_SCHEDULER_TIMEOUT:g} seconds, not {args.scheduler_timeout}")
    return True


def _plan(args, seed: int | None, clustered: bool = False):
    """Everything that can be checked before loading a model or an image.

    Returns ``(tasks, skipped, repeated)``: a FileTask per input to predict (outputs: (mean,
    std, var) TIFFs, or one OME-Zarr folder; the seed drawn now when none was given), with
    --resume the inputs whose outputs are complete, as ``(input, why)``, and the files of a
    multi-file OME-TIFF dataset after its first (each reads the whole), as ``(input, why)``.
    The device is checked here only for a run in this process (a cluster's workers have
    their own).
    """
    from ..devices import resolve_device
    from ..file_prediction import FileTask, check_zarr_input
    from ..finished_outputs import ABSENT, COMPLETE, foreign_tiff, output_state
    from ..settings import draw_seed
    from ..tiff_writer import check_outputs
    from ..zarr_files import check_replaceable, read_ome_zarr

    if not clustered:
        resolve_device(args.device)
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"the output {args.output} exists and is not a folder")
    if not args.output.exists() and args.output.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"-o names the output folder (each input's outputs are named after "
                         f"it), and {args.output} looks like a file name; give a folder")
    paths = expand_inputs(args.inputs)
    for path in paths:
        if is_zarr(path):  # its metadata only: a folder that is no image fails here, not midway
            with warnings.catch_warnings():  # said when it is read for the work
                warnings.simplefilter("ignore")
                array, meta = read_ome_zarr(path)  # its errors name the store
            try:
                check_zarr_input(array, meta)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    plan, seen = [], {}
    inputs = {p.resolve() for p in paths}
    # the whole store of an input given as a folder inside it (its series, a plate's field)
    zarr_inputs = [zarr_store(p).resolve() for p in paths if is_zarr(p)]
    for path in paths:
        stem = image_stem(path)
        if stem in seen and seen[stem] != path.resolve():
            raise ValueError(f"{seen[stem]} and {path} would both be written as "
                             f"{stem}_cvdm (one output name per input in a batch: "
                             f"{output_name(stem, 'mean')}, ... or {output_name(stem)}); "
                             "rename one or run them separately")
        seen[stem] = path.resolve()
        if is_zarr(path):
            outputs = (args.output / output_name(stem),)
        else:
            outputs = tuple(args.output / output_name(stem, kind) for kind in TIFF_OUTPUTS)
        resolved = [_resolved_output(p) for p in outputs]
        if inputs.intersection(resolved):
            raise ValueError(f"an output of {path} would overwrite an input; choose "
                             "another output folder")
        if any(store == out or store in out.parents for store in zarr_inputs
               for out in resolved):
            raise ValueError(f"the output folder {args.output} is inside an input OME-Zarr "
                             "image, which is never modified; choose another output folder")
        if is_zarr(path):
            check_replaceable(outputs[0])
        plan.append((path, outputs))
    plan, repeated = _one_per_dataset(plan)  # before --resume: a finished dataset stays done
    tasks, skipped = [], []
    made_with = _made_with(args) if args.resume else None
    for path, outputs in plan:
        state, why = output_state(outputs, path, made_with) if args.resume else (ABSENT, "")
        if state == COMPLETE:
            skipped.append((path, why))
            continue
        tasks.append(FileTask(path, outputs, draw_seed() if seed is None else seed,
                              replace=state != ABSENT))
    foreign = [p for t in tasks if not is_zarr(t.input) and (args.overwrite or t.replace)
               for p in t.outputs if foreign_tiff(p)]
    if foreign:
        raise ValueError(f"{foreign[0]} has an output's name but is not a napari-cvdm output "
                         f"(no napari-cvdm provenance); it is never replaced: move or rename "
                         f"it{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}")
    for folders in (False, True):
        for replace in (False, True):
            check_outputs([p for t in tasks if is_zarr(t.input) == folders
                           and t.replace == replace for p in t.outputs],
                          overwrite=args.overwrite or replace, folders=folders)
    return tasks, skipped, repeated


def _made_with(args) -> dict:
    """What outputs kept by --resume must have been made with: this run's model (by its
    weights' hash), sampling settings and precision where given, as their provenance
    records them."""
    from ..model_files import model_path, weights_sha256
    from ..settings import PredictSettings
    from .options import settings_from_args

    settings = settings_from_args(PredictSettings, args)
    made = {"samples": settings.samples, "sampler": settings.sampler, "eta": settings.eta,
            "augment": settings.augment}
    if settings.sampler == "ddim":  # the others run the model's own number of steps
        made["steps"] = settings.steps
    if settings.psf_sigma is not None:  # given (else estimated per image: not compared)
        made["psf_sigma"] = settings.psf_sigma
    if settings.precision != "auto":  # given (auto is chosen per run: not compared)
        made["precision"] = settings.precision
    try:
        made["weights_sha256"] = weights_sha256(model_path(settings.model))
    except (ValueError, OSError):
        pass  # said when the model is loaded
    return made


def run(args) -> int:
    """Each input: read, predict, then write its outputs together (all or none).

    A failure or Ctrl-C leaves the outputs of the inputs finished before it, complete,
    and nothing of the input it was working on. With a cluster, a file that fails does
    not stop the others; the failed ones are listed at the end (exit 2 if every failure
    was bad input, 1 otherwise) and --resume finishes the batch.
    """
    from ..atomic import missing_folders
    from ..file_prediction import describe
    from ..model_files import resolve_model
    from ..settings import PredictSettings
    from . import _one_line
    from .options import settings_from_args

    settings = settings_from_args(PredictSettings, args)
    clustered = _check_cluster_args(args)
    if clustered:
        from ..distributed import require_distributed

        require_distributed()  # before any work: say how to install it
    tasks, skipped, repeated = _plan(args, settings.seed, clustered)
    model, summary = resolve_model(settings.model)
    # a cluster's workers check the outputs against their own memory
    _probe_tiffs(tasks, None if clustered else model.config.scale)
    steps = settings.steps if settings.sampler == "ddim" else model.config.timesteps
    for path, why in skipped:
        print(_one_line(describe({"input": str(path), "skipped": why})))
    for path, why in repeated:
        print(_one_line(describe({"input": str(path), "repeats": why})))
    if not tasks:
        return 0
    created = missing_folders(args.output)
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, tasks, settings, model, summary, steps, clustered)
    finally:
        for folder in created:  # deepest first: a run that wrote nothing leaves nothing
            with contextlib.suppress(OSError):
                if any(folder.iterdir()):
                    break  # written to (or by someone else): kept, with the ones above
                folder.rmdir()


def _probe_tiffs(tasks, scale: int | None) -> None:
    """A TIFF that cannot be read, or (with ``scale``) whose outputs would not fit in this
    computer's memory, stops the batch before its work, from its header alone (found at its
    turn, it came after the files before it, and a large one was decoded whole first); every
    such file is named, in one message."""
    from ..image_files import probe_tiff

    refused = []
    for task in tasks:
        if not is_zarr(task.input):
            try:
                probe_tiff(task.input, scale)
            except ValueError as exc:  # every bad file at once: one round trip, not one each
                refused.append(str(exc))
    if len(refused) == 1:
        raise ValueError(refused[0])
    if refused:
        raise ValueError(f"{len(refused)} of the {len(tasks)} inputs cannot be predicted "
                         f"(nothing was done): {'; '.join(refused)}")


def _one_per_dataset(plan) -> tuple[list, list]:
    """(plan, repeated) for ``plan``'s (input, outputs): of the files of one multi-file
    OME-TIFF dataset (each reads the whole of it), only the first in the batch is kept; the
    others would repeat its work and write the same result under their own names."""
    from ..image_files import dataset_files

    kept, repeated, first_of = [], [], {}
    for path, outputs in plan:
        files = () if is_zarr(path) else dataset_files(path)
        if len(files) > 1 and files in first_of:
            first = first_of[files]
            repeated.append((path, f"part of the {len(files)}-file OME-TIFF dataset that "
                                   f"{first.name} reads whole: predicted once, from "
                                   f"{first.name}"))
            continue
        if len(files) > 1:
            first_of[files] = path
        kept.append((path, outputs))
    return kept, repeated


def _run(args, tasks, settings, model, summary, steps, clustered) -> int:
    from ..devices import resolve_device
    from ..file_prediction import RunSpec, describe, predict_file
    from ..precision import resolve_precision
    from . import _one_line

    if clustered:
        _say_if_steps_unused(settings)
        return _run_on_cluster(args, tasks, settings, summary, steps)
    # The precision is checked before the work (the provenance of each file records it).
    resolve_precision(settings.precision, resolve_device(settings.device))
    _say_if_steps_unused(settings)
    spec = RunSpec(settings.replace(model=model), summary, steps, args.overwrite)

    def warn(message: str) -> None:
        print(f"cvdm predict: warning: {message}", file=sys.stderr)

    for number, task in enumerate(tasks):
        bar = None if args.quiet else ProgressBar(task.input.name, unit="eval")
        try:
            done = predict_file(task, spec, model, progress=bar, warn=warn)
        except ValueError as exc:  # found in the pixels: say which file, and what is kept
            if _said_finished_meanwhile(args, task):
                continue
            raise ValueError(_in_batch(task, exc, number)) from exc
        except OSError as exc:  # a full disk, say: which input, and what the batch keeps
            if not number or exc.errno is None:
                raise
            raise OSError(exc.errno, _in_batch(task, exc.strerror or str(exc), number)) \
                from exc
        print(_one_line(describe(done)))  # a newline in a file name: escaped
    return 0


def _say_if_steps_unused(settings) -> None:
    """A warning where --steps was given to a sampler that runs the model's own number of
    steps; said once every check has passed (a refused run says one line: its error)."""
    from ..settings import PredictSettings

    if settings.sampler != "ddim" and settings.steps != PredictSettings().steps:
        print(f"cvdm predict: warning: --steps {settings.steps} is for the ddim sampler; "
              f"--sampler {settings.sampler} runs the model's own number of steps",
              file=sys.stderr)


def _said_finished_meanwhile(args, task) -> bool:
    """Whether ``task``'s outputs, absent when the run was planned, are now complete and
    made as this run would make them (another ``--resume`` run on the same folder wrote them
    first; this run's own are not written: the outputs are never replaced then); if so, it
    says so as a skipped input."""
    from ..file_prediction import describe
    from ..finished_outputs import COMPLETE, output_state
    from . import _one_line

    if not args.resume or task.replace or \
            output_state(task.outputs, task.input, _made_with(args))[0] != COMPLETE:
        return False
    print(_one_line(describe({"input": str(task.input),
                              "skipped": "another run completed them meanwhile"})))
    return True


def _in_batch(task, error, finished: int) -> str:
    """``error`` naming the input it is about, and what a batch keeps of the inputs before it."""
    message = str(error)
    if str(task.input) not in message:
        message = f"{task.input}: {message}"
    if finished:
        message += (f" (the {finished} input(s) before it are done and their outputs complete; "
                    "fix or move this one and rerun with --resume to finish the batch)")
    return message


def _run_on_cluster(args, tasks, settings, summary, steps) -> int:
    """The tasks on a local cluster (--workers) or an existing one (--scheduler)."""
    from tqdm import tqdm

    from ..distributed import connect, run_batch
    from ..errors import is_out_of_memory
    from ..file_prediction import RunSpec, describe
    from ..model_cache import ModelRef
    from . import EXIT_BAD_INPUT, EXIT_FAILED, _one_line

    threads = args.threads_per_worker or (1 if args.workers is not None else None)
    spec = RunSpec(settings.replace(model=ModelRef.of(settings.model)), summary, steps,
                   args.overwrite, threads)

    def report(outcome) -> None:  # as each file finishes; failures are listed at the end
        if outcome.error is not None:
            return
        task = outcome.task  # as given (the workers got absolute paths)
        done = {**outcome.done, "input": str(task.input),
                "outputs": [str(p) for p in task.outputs]}
        for message in done.get("warnings", ()):
            tqdm.write(f"cvdm predict: warning: {message}", file=sys.stderr)
        tqdm.write(_one_line(describe(done)), file=sys.stdout)  # above the finished files' bar

    # a worker runs one file at a time: more workers than files would only start idle ones
    workers = None if args.workers is None else min(args.workers, len(tasks))
    with connect(workers, threads or 1, args.scheduler, args.scheduler_timeout) as client:
        outcomes = run_batch(client, tasks, spec, progress=not args.quiet, on_outcome=report)
    failed = []
    for outcome in outcomes:
        if outcome.error is None:
            continue
        if not _said_finished_meanwhile(args, outcome.task):  # as in one process
            failed.append(outcome)
    for outcome in failed:
        error = outcome.error
        what = _one_line(error) or type(error).__name__
        if is_out_of_memory(error):
            what = f"out of memory ({what[:200]}); use a smaller --tile-size, a smaller " \
                   "--batch-size or fewer --samples"
        elif not isinstance(error, (ValueError, OSError)):
            what = f"{type(error).__name__}: {what}"
        print(f"cvdm predict: error: {outcome.task.input}: {what}", file=sys.stderr)
    if not failed:
        return 0
    print(f"cvdm predict: error: {len(failed)} of {len(tasks)} inputs failed (listed above); "
          "the others' outputs are complete; fix the inputs and rerun with --resume",
          file=sys.stderr)
    bad_input = all(isinstance(o.error, ValueError) for o in failed)
    return EXIT_BAD_INPUT if bad_input else EXIT_FAILED
