"""napari layers into train(): checks before anything starts, training data, preview regions.

No Qt here, and napari only inside functions. Scripts call :func:`train_on_layers`
(blocking); the "CVDM training" dock widget calls :func:`prepare_training` on the main
thread, runs :meth:`TrainingJob.run` in a worker and registers the model when it is done,
so both check the same things and train the same way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import model_choices
from .data import Pair, plane_problem, split_images, split_validation
from .degradation import Degradation, run_optics
from .layers import named_layer
from .model.config import CVDMConfig
from .model.cvdm import CVDM
from .model_files import training_output_problem as output_problem

PATCH_MULTIPLE = 8


# -- checks: each returns a message, or None when all is well ------------------------------
def layer_problem(layer, role: str = "high-quality") -> str | None:
    """Why ``layer`` cannot be a training image, or None."""
    from napari.layers import Image, Labels

    if layer is None:
        return f"choose a {role} image layer"
    if isinstance(layer, Labels):
        return (f"{layer.name!r} is a Labels layer (a segmentation); training needs "
                f"{role} intensity images")
    if not isinstance(layer, Image):
        return f"{layer.name!r} is a {type(layer).__name__} layer; training needs Image layers"
    if layer.rgb:
        return (f"{layer.name!r} is RGB; train on one channel at a time (right-click the "
                "layer > Split RGB)")
    if layer.multiscale:
        return f"{layer.name!r} is a multiscale pyramid; crop a region into a new layer first"
    data = layer.data
    dtype = np.dtype(data.dtype if hasattr(data, "dtype") else np.asarray(data).dtype)
    if dtype.kind == "b":
        return f"{layer.name!r} holds True/False values (a mask), not intensities"
    if dtype.kind not in "iuf":
        return f"{layer.name!r} holds {dtype} values, not intensities"
    from .validation import spare_memory

    needed = 4 * int(np.prod(np.shape(data), dtype=np.float64))  # held as float32
    limit = spare_memory()
    if limit is not None and needed > limit:
        return (f"{layer.name!r} would need {needed / 2**30:.1f} GiB in memory to train on, "
                f"more than this computer can spare ({limit / 2**30:.1f} GiB); crop a "
                "region or take fewer planes into a new layer")
    return None


def dimensionality_problem(layers) -> str | None:
    """Layers trained on together must all have the same number of axes."""
    ndims = {layer.ndim for layer in layers}
    if len(ndims) > 1:
        names = ", ".join(f"{layer.name!r} ({layer.ndim}-D)" for layer in layers)
        return (f"the layers have different dimensionality: {names}; use layers with the "
                "same axes (2-D images, or stacks of the same kind)")
    return None


def pair_scale(lq_shape, hq_shape) -> int | str:
    """The integer scale between a low- and a high-quality image, or why there is none."""
    if tuple(lq_shape[:-2]) != tuple(hq_shape[:-2]):
        return (f"the pair's leading axes differ: {tuple(lq_shape)} and {tuple(hq_shape)}")
    ratio_y, ratio_x = hq_shape[-2] / lq_shape[-2], hq_shape[-1] / lq_shape[-1]
    if ratio_y != ratio_x or ratio_y != int(ratio_y) or ratio_y < 1:
        return (f"high-quality {tuple(hq_shape[-2:])} is not an integer multiple of "
                f"low-quality {tuple(lq_shape[-2:])} (it must be 1x, 2x, 3x ... larger "
                "along both Y and X)")
    return int(ratio_y)


def start_model(init=None, preset: str | None = None) -> tuple[CVDMConfig, str]:
    """The configuration training starts from, and a line about it; ValueError if none."""
    if init is not None and preset is not None:
        raise ValueError("give init (fine-tune a model) or preset (train from scratch), "
                         "not both")
    if init is None:
        config = CVDMConfig.preset(preset or "small")
        return config, f"preset {config.preset} from scratch"
    from .layers import model_summary
    from .model_files import header_of, model_path

    summary = model_summary(init)  # ValueError: not found, not a model, pickle, ...
    return (CVDMConfig.from_dict(header_of(model_path(init))["config"]),
            f"fine-tune {summary}")


def _run_optics(init, config: CVDMConfig | None) -> Degradation:
    """The optics a job given none simulates: a fine-tune's model's training optics, else
    the defaults (:func:`~napari_cvdm.degradation.run_optics`)."""
    if init is None or config is None:
        return run_optics()
    from .checkpoints import recorded_optics

    return run_optics(recorded_optics(init), config.scale)


def largest_patch(hq_shapes, scale: int, multiple: int, validation_fraction: float,
                  wanted: int, simulated: bool = False) -> int:
    """The largest patch size <= ``wanted`` that every training image still holds after
    the validation split (0 if none does); asks the library's own split functions."""
    step = math.lcm(scale, multiple)
    zeros = np.float32(0)
    for patch in range(wanted // step * step, 0, -step):
        if simulated:  # high-quality images are split first, then simulated
            train, _ = split_images([(np.broadcast_to(zeros, shape), str(i))
                                     for i, shape in enumerate(hq_shapes)],
                                    validation_fraction, patch)
            sides = [(im.shape[0] // scale * scale, im.shape[1] // scale * scale)
                     for im, _ in train]
        else:
            pairs = [Pair(np.broadcast_to(zeros, (h // scale, w // scale)),
                          np.broadcast_to(zeros, (h // scale * scale, w // scale * scale)),
                          str(i)) for i, (h, w) in enumerate(hq_shapes)]
            sides = [p.hq.shape for p in split_validation(pairs, validation_fraction, patch)[0]]
        if all(min(side) >= patch for side in sides):
            return patch
    return 0


# -- layers to arrays -----------------------------------------------------------------------
def _planes(layer) -> list[np.ndarray]:
    data = np.asarray(layer.data)
    return list(data.reshape(-1, *data.shape[-2:]))


@dataclass
class TrainingJob:
    """Everything train() needs, taken from layers and checked; running it writes the model."""

    output: Path
    settings: Any  # TrainingSettings
    scale: int
    layers: list = field(default_factory=list)
    hq: list[np.ndarray] | str | None = None  # arrays, or a folder
    pairs: list[tuple[np.ndarray, np.ndarray]] | tuple[str, str] | None = None
    degradation: Degradation | None = None
    notes: list[str] = field(default_factory=list)
    start: str = ""
    overwrite: bool = False  # replace an existing model file at output (checked up front)

    def run(self, device: str = "auto", progress=None, log=None, cancel=None,
            on_validation=None) -> CVDM:
        """Train (blocking); the model file is written at checkpoints and at the end."""
        from .training import train

        return train(output=self.output, hq=self.hq, pairs=self.pairs, settings=self.settings,
                     degradation=self.degradation, overwrite=self.overwrite, device=device,
                     progress=progress, log=log, cancel=cancel, on_validation=on_validation)


def _start_and_output(init, preset, output, overwrite, settings, problems: list[str]):
    """The starting configuration and a line about it; problems appended, not raised."""
    from .training import TrainingSettings

    known = {f.name for f in dataclasses.fields(TrainingSettings)} - {"preset", "init"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; choose from {sorted(known)}")
    try:
        config, start = start_model(init, preset)
    except ValueError as exc:
        problems.append(str(exc))
        config, start = None, ""
    message = output_problem(output, overwrite, init)
    if message:
        problems.append(message)
    return config, start


def _settings(config: CVDMConfig, init, settings: dict[str, Any]):
    from .training import TrainingSettings

    values = {"preset": config.preset, **settings}
    if init is not None:
        values["init"] = str(init)
    try:
        return TrainingSettings(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def prepare_folder_training(hq_dir, lq_dir=None, *, output, init=None,
                            preset: str | None = None, degradation: Degradation | None = None,
                            overwrite: bool = False, **settings) -> TrainingJob:
    """Folders of TIFFs: with ``lq_dir``, pairs matched by file name; without, high-quality
    images with simulated optics. The images themselves are checked when training starts.
    ``overwrite``: replace an existing model file at ``output`` (see :func:`output_problem`)."""
    problems: list[str] = []
    config, start = _start_and_output(init, preset, output, overwrite, settings,
                                      problems)
    for role, folder in (("high-quality", hq_dir), ("low-quality", lq_dir)):
        if folder is None and role == "low-quality":
            continue
        if folder is None or not str(folder).strip() or not Path(folder).is_dir():
            problems.append(f"choose an existing {role} folder (not {str(folder or '')!r})")
    if problems:
        raise ValueError("; ".join(problems))
    job = TrainingJob(output=Path(output).expanduser(), settings=_settings(config, init, settings),
                      scale=config.scale, start=start, overwrite=overwrite)
    if lq_dir is not None:
        job.pairs = (str(lq_dir), str(hq_dir))
    else:
        job.degradation = degradation or _run_optics(init, config)
        job.scale, job.hq = job.degradation.scale, str(hq_dir)
    return job


# Pixel sizes further apart than this (a ratio) are said to differ.
PIXEL_SIZE_TOLERANCE = 1.15


def _pixel_size_nm(layer) -> float | None:
    """A layer's X pixel size in nm where its Y and X scales are in a length unit (None: in
    pixels, napari's default, or not a length)."""
    from .domain import axis_sizes_nm
    from .layers import input_of

    _, sizes, units = input_of(layer)
    nm = axis_sizes_nm(sizes, units)
    return nm["X"] if len(nm) == 2 else None


def _hq_pixel_size_notes(layers) -> list[str]:
    """High-quality layers of different pixel sizes: the simulated optics are in pixels, so
    one PSF width means different optics on each."""
    sizes = {layer.name: size for layer in layers if (size := _pixel_size_nm(layer))}
    if len(sizes) < 2 or max(sizes.values()) / min(sizes.values()) <= PIXEL_SIZE_TOLERANCE:
        return []
    listed = ", ".join(f"{name!r} {size:.3g} nm" for name, size in sizes.items())
    return [f"the high-quality images have different pixel sizes ({listed}); the simulated "
            "blur is in pixels, so it means different optics on each: resample them to one "
            "pixel size, or train on images of one"]


def _pair_pixel_size_notes(lq, hq, scale: int) -> list[str]:
    """A pair whose layers' pixel sizes do not differ by the scale its shapes give: the two
    do not cover the same field at x``scale``."""
    low, high = _pixel_size_nm(lq), _pixel_size_nm(hq)
    if low is None or high is None:
        return []
    ratio = low / high
    if max(ratio, scale) / min(ratio, scale) <= PIXEL_SIZE_TOLERANCE:
        return []
    return [f"{lq.name!r} / {hq.name!r}: their shapes make a x{scale} pair, but their pixel "
            f"sizes ({low:.3g} and {high:.3g} nm) differ by {ratio:.2g}x, so they do not "
            "cover the same field; check the pair or the layers' scale"]


def prepare_training(viewer=None, hq=None, pairs=None, *, output, init=None,
                     preset: str | None = None, degradation: Degradation | None = None,
                     overwrite: bool = False, **settings) -> TrainingJob:
    """Check the layers, the starting model and the output, and gather the training data.

    ``hq``: high-quality image layers (or names), trained with simulated optics;
    ``pairs``: (low-quality, high-quality) layer tuples, the scale detected from their
    shapes. Raises ValueError saying every problem found; nothing is written. A patch size
    larger than the images allow is lowered to the largest that fits (said in ``notes``).
    ``overwrite``: replace an existing model file at ``output`` (never another file, nor
    the ``init`` model; :func:`output_problem`).
    """
    if (hq is None) == (pairs is None):
        raise ValueError("give hq=[high-quality layers] or pairs=[(low, high), ...], not both")
    problems: list[str] = []
    notes: list[str] = []
    config, start = _start_and_output(init, preset, output, overwrite, settings,
                                      problems)

    if pairs is not None:
        if not isinstance(pairs, (list, tuple)) or \
                any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in pairs):
            raise ValueError("pairs must be a list of (low-quality layer, high-quality "
                             "layer) tuples, e.g. pairs=[('widefield', 'sim')]")
        groups = [tuple(p) for p in pairs]
    else:  # one layer (or its name) is a list of one
        groups = [(h,) for h in ([hq] if isinstance(hq, str) or not isinstance(
            hq, (list, tuple)) else hq)]
    if not groups:
        problems.append("choose at least one training image")
    groups = [tuple(named_layer(viewer, layer) for layer in group) for group in groups]
    layers = [layer for group in groups for layer in group]
    roles = ["low-quality", "high-quality"] if pairs is not None else ["high-quality"]
    for i, layer in enumerate(layers):
        message = layer_problem(layer, roles[i % len(roles)])
        if message:
            problems.append(message)
    if problems:
        raise ValueError("; ".join(problems))
    message = dimensionality_problem(layers)
    if message:
        raise ValueError(message)

    if pairs is not None:
        scales = []
        for lq, hq_layer in groups:
            if lq is hq_layer:
                problems.append(f"{lq.name!r} is both the low- and the high-quality image of "
                                "a pair; choose its matching acquisition")
                continue
            scale = pair_scale(lq.data.shape, hq_layer.data.shape)
            if isinstance(scale, str):
                problems.append(f"{lq.name!r} / {hq_layer.name!r}: {scale}")
            else:
                scales.append(scale)
                notes.extend(_pair_pixel_size_notes(lq, hq_layer, scale))
        if len(set(scales)) > 1:
            problems.append(f"the pairs have different scales: {sorted(set(scales))}")
        scale = scales[0] if scales else 0
    else:
        degradation = degradation or _run_optics(init, config)
        scale = degradation.scale
        notes.extend(_hq_pixel_size_notes(layers))
    if init is not None and config is not None and scale and scale != config.scale:
        problems.append(f"the model to fine-tune is x{config.scale} but the data is x{scale}; "
                        "use data of the model's scale or train from a preset")
    if problems:
        raise ValueError("; ".join(problems))

    training_settings = _settings(config, init, settings)
    targets = layers[1::2] if pairs is not None else layers
    planes = [tuple(layer.data.shape[-2:]) for layer in targets
              for _ in range(int(np.prod(layer.data.shape[:-2], dtype=int)))]
    wanted = training_settings.patch_size
    fitted = largest_patch(planes, scale, math.lcm(PATCH_MULTIPLE, config.stride),
                           training_settings.validation_fraction, wanted, simulated=hq is not None)
    if fitted == 0:
        smallest = min(planes, key=min)
        raise ValueError(f"the images are too small to train on: the smallest is "
                         f"{smallest[0]} x {smallest[1]} pixels; training needs at least "
                         f"{2 * math.lcm(PATCH_MULTIPLE, config.stride, scale)} pixels per side")
    if fitted != wanted:
        smallest = min(planes, key=min)
        notes.append(f"patch size lowered from {wanted} to {fitted}, the largest that fits the "
                     f"smallest image ({smallest[0]} x {smallest[1]}) and its validation strip")
        training_settings = dataclasses.replace(training_settings, patch_size=fitted)

    job = TrainingJob(output=Path(output).expanduser(), settings=training_settings,
                      scale=scale, layers=layers, degradation=degradation if hq is not None
                      else None, notes=notes, start=start, overwrite=overwrite)
    # Planes with nothing to learn (blank, NaN) are left out, as train() does with files;
    # a layer (or pair) with no usable plane at all is refused.
    kept: list[tuple[np.ndarray, ...]] = []
    for group in groups:
        usable, why, planes_here = [], None, list(zip(*(_planes(layer) for layer in group)))
        for index, planes in enumerate(planes_here):
            found = next(filter(None, (plane_problem(plane, layer.name)
                                       for layer, plane in zip(group, planes))), None)
            if found is None:
                usable.append(planes)
            else:
                why = why or (found if len(planes_here) == 1 else f"{found} (plane {index})")
        if not usable:
            problems.append(why)
        elif len(usable) < len(planes_here):
            notes.append(f"{len(planes_here) - len(usable)} of the {len(planes_here)} planes of "
                         f"{' / '.join(repr(layer.name) for layer in group)} left out: {why}")
        kept += usable
    if problems:
        raise ValueError("; ".join(problems))
    if pairs is not None:
        job.pairs = [(lq, hq_plane) for lq, hq_plane in kept]
    else:
        job.hq = [plane for (plane,) in kept]
    return job


def train_on_layers(viewer, hq=None, pairs=None, *, output, init=None,
                    preset: str | None = None, steps: int = 1000,
                    degradation: Degradation | None = None, device: str = "auto",
                    progress=None, log=None, cancel=None, on_validation=None,
                    **settings) -> CVDM:
    """Train or fine-tune CVDM on image layers, blocking; return the trained model.

    ``hq=[layers]``: high-quality images with simulated optics (``degradation``);
    ``pairs=[(low, high), ...]``: real pairs. ``init``: a bundled model name or a model
    file to fine-tune (its scale and preset are kept), or ``preset`` to train from
    scratch. Other keywords are :class:`~napari_cvdm.training.TrainingSettings` fields.
    The model is written to ``output`` and offered in the reconstruction widget.
    """
    job = prepare_training(viewer, hq, pairs, output=output, init=init, preset=preset,
                           degradation=degradation, steps=steps, **settings)
    for note in job.notes:
        (log or print)(note)
    model = job.run(device=device, progress=progress, log=log, cancel=cancel,
                    on_validation=on_validation)
    model_choices.register(job.output)
    return model
