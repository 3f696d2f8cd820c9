"""The preview layers of training: the simulated low-quality image and the live reconstruction.

No Qt here, and napari only inside functions. The preview region is a rectangle of the first
training image that the current averaged model reconstructs at every validation, placed so it
overlays that image; the simulated layer shows what the chosen optics make of a high-quality
image, to compare with a real acquisition before training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .degradation import Degradation
from .layers import own_layer, output_transform

PREVIEW_NAME = "CVDM training preview"
PREVIEW_SIZE = 64  # low-quality pixels per side of the default preview region
PREVIEW_STEPS = 10  # denoising steps of the one preview sample


def simulated_name(layer) -> str:
    return f"{layer.name} simulated low-quality"


def preview_region(hq_layer, scale: int, shapes_layer=None,
                   size: int = PREVIEW_SIZE) -> tuple[int, int, int, int]:
    """(y, x, height, width) in the high-quality layer's pixels, multiples of ``scale``:
    the bounding box of the first rectangle of ``shapes_layer`` (as the reconstruction's
    region; a layer with none is refused), else the centre ``size`` x ``size`` low-quality
    pixels; clipped to the image."""
    height, width = hq_layer.data.shape[-2:]
    if shapes_layer is not None:
        rectangles = [d for d, kind in zip(shapes_layer.data, shapes_layer.shape_type)
                      if kind == "rectangle"]
        if not rectangles:
            raise ValueError(f"the shapes layer {shapes_layer.name!r} has no rectangle: draw "
                             "one around the preview region, or choose the centre")
        corners = np.asarray(rectangles[0], dtype=float)
        world = np.array([shapes_layer.data_to_world(c) for c in corners])
        data = np.array([hq_layer.world_to_data(w) for w in world])[:, -2:]
        y0, x0 = np.floor(data.min(axis=0)).astype(int)
        y1, x1 = np.ceil(data.max(axis=0)).astype(int)
    else:
        side = size * scale
        y0, x0 = (height - side) // 2, (width - side) // 2
        y1, x1 = y0 + side, x0 + side
    y0, x0 = max(0, y0) // scale * scale, max(0, x0) // scale * scale
    y1, x1 = min(height, y1) // scale * scale, min(width, x1) // scale * scale
    if y1 - y0 < 8 * scale or x1 - x0 < 8 * scale:
        raise ValueError("the preview rectangle must cover at least 8 x 8 low-quality pixels "
                         "of the first training image")
    return int(y0), int(x0), int(y1 - y0), int(x1 - x0)


def preview_input(job, region, seed: int = 0) -> np.ndarray:
    """The low-quality input the preview reconstructs: a crop of the first pair's
    low-quality image, or the simulation of the first high-quality image's crop."""
    y, x, h, w = region
    if job.pairs is not None:
        s = job.scale
        return np.array(job.pairs[0][0][y // s:(y + h) // s, x // s:(x + w) // s])
    from .degradation import simulate_image

    return simulate_image(np.asarray(job.hq[0][y:y + h, x:x + w]), job.degradation, seed=seed)


def plane_overlay(layer, scale_factor: float = 1.0, offset=(0, 0)) -> dict[str, Any]:
    """Keyword arguments that place a 2D image of ``layer``'s last two axes, ``scale_factor``
    times finer and starting at its pixel ``offset`` (Y, X), exactly over the layer: scale,
    translate, rotation, shear and affine included. For a layer with leading axes, its
    data-to-world map restricted to Y, X (at the first plane) becomes the affine."""
    from napari.utils.transforms import Affine

    placed = output_transform(layer, scale_factor, offset)
    keys = ("scale", "translate", "rotate", "shear", "affine")
    # the layer's Y, X units and labels: a layer without them made napari drop every
    # layer's units ("Inconsistent units across layers")
    named = {"units": placed["units"][-2:], "axis_labels": placed["axis_labels"][-2:]}
    if layer.ndim == 2:
        return {**{k: placed[k] for k in keys}, **named}
    n = layer.ndim  # the placed image's whole data-to-world map, restricted to Y, X
    whole = np.asarray(placed["affine"], dtype=float) @ Affine(
        scale=placed["scale"], translate=placed["translate"], rotate=placed["rotate"],
        shear=placed["shear"], ndim=n).affine_matrix
    yx = [n - 2, n - 1, n]
    plane = whole[np.ix_(yx, yx)]
    plane[2] = (0.0, 0.0, 1.0)
    return {"scale": np.ones(2), "translate": np.zeros(2), "rotate": np.eye(2),
            "shear": np.zeros(1), "affine": plane, **named}


def preview_layer_kwargs(hq_layer, region) -> dict[str, Any]:
    """A preview reconstruction of ``region`` overlays the high-quality layer there."""
    return {"name": PREVIEW_NAME, **plane_overlay(hq_layer, 1.0, region[:2]),
            "colormap": hq_layer.colormap,
            "metadata": {"cvdm": {"output": "training preview", "region": list(region)}}}


def simulated_layer_data(hq_layer, degradation: Degradation, seed: int = 0):
    """The simulated low-quality version of a high-quality layer's (first) plane, as a
    napari layer data tuple placed so that it overlays the layer."""
    from .degradation import simulate_image
    from .training_layers import layer_problem

    problem = layer_problem(hq_layer)
    if problem:
        raise ValueError(problem)
    data = hq_layer.data  # read the first plane only: a stack may be large, or lazy
    plane = np.asarray(data[(0,) * (data.ndim - 2)])
    lq = simulate_image(plane, degradation, seed=seed)
    kwargs = plane_overlay(hq_layer, 1.0 / degradation.scale)
    kwargs.update(name=simulated_name(hq_layer), colormap=hq_layer.colormap,
                  metadata={"cvdm": {"output": "simulated low-quality",
                                     "degradation": degradation.to_dict()}})
    return lq, kwargs, "image"


def update_image(viewer, data: np.ndarray, kwargs: dict[str, Any]):
    """Replace the data and placement of the preview layer ``kwargs["name"]``, or add it
    (a user's layer of that name is left alone: ``layers.own_layer``)."""
    layer = own_layer(viewer, kwargs["name"], data.ndim)
    if layer is None:
        return viewer.add_image(data, **kwargs)
    layer.data = data
    for key in ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels",
                "metadata"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    layer.reset_contrast_limits()
    return layer


def preview_callback(lq: np.ndarray | None, device: str, emit):
    """An ``on_validation`` callback for train(): reconstruct ``lq`` with the current averaged
    model (one quick sample, on the training thread) and ``emit(step, scores, mean)``; the
    mean is None without a preview input, or the error message if the preview failed."""
    from .inference import predict

    def on_validation(step, scores, model):
        mean = None
        try:
            if lq is not None:
                mean = predict(lq, model, samples=1, steps=PREVIEW_STEPS, eta=0.0, seed=0,
                               device=device, check_input=False).mean  # a preview
        except Exception as exc:  # noqa: BLE001  (a failed preview must not stop training)
            mean = f"{type(exc).__name__}: {exc}"
        emit(step, dict(scores), mean)

    return on_validation
