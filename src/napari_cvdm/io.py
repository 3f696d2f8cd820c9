"""Files: model files (safetensors + JSON header, never pickle) and TIFF images.

Every writer goes through :func:`atomic_write`: a temporary file beside the target,
renamed over it only once complete, so an interrupted write never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "napari-cvdm/1"
MODEL_SUFFIX = ".cvdm.safetensors"
BUNDLED = {"demo": "demo.cvdm.safetensors"}
# The largest model file we accept: the paper preset in float32 is about 0.6 GB.
MAX_PARAMETERS = 400_000_000

PICKLE_HINT = (
    "{path} is a pickle-based PyTorch file ({suffix}). Pickle files can run arbitrary code "
    "when loaded, so napari-cvdm only reads .cvdm.safetensors model files. If you trust this "
    "file, convert it once with:  python -m napari_cvdm.convert {path} OUT.cvdm.safetensors "
    "--preset PRESET"
)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# -- model files -------------------------------------------------------------------------
def save_model(model, path: str | os.PathLike, half: bool = False) -> Path:
    """Write weights (safetensors) and a JSON header: config, normalisation, metadata."""
    import torch
    from safetensors.torch import save_file

    from . import __version__

    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        tensors[name] = value
    header = {
        "format": FORMAT,
        "version": __version__,
        "config": model.config.to_dict(),
        "metadata": model.metadata,
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"napari_cvdm": json.dumps(header)})
    return path


def bundled_model_path(name: str) -> Path:
    ref = resources.files("napari_cvdm") / "weights" / BUNDLED[name]
    return Path(str(ref))


def read_model_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a model file, checked; raises ValueError for anything else."""
    from safetensors import safe_open

    path = Path(path)
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"):
        raise ValueError(PICKLE_HINT.format(path=path, suffix=suffix))
    if not path.is_file():
        raise ValueError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("napari_cvdm")
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a napari-cvdm model file (it could not be read as "
                         f"safetensors: {exc})") from None
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but not a napari-cvdm model "
                         "(it has no napari_cvdm header)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"{path}: the model header is damaged (not valid JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or "config" not in header:
        raise ValueError(f"{path}: unsupported model header (expected format {FORMAT})")
    return header


def load_model(name_or_path: str | os.PathLike = "demo", device: str = "cpu"):
    """Load a bundled model by name (``"demo"``) or a ``.cvdm.safetensors`` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model.config import CVDMConfig
    from .model.cvdm import CVDM

    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        path = bundled_model_path(name_or_path)
        if not path.is_file():
            raise ValueError(f"the bundled model {name_or_path!r} is not installed "
                             f"(expected {path}); reinstall napari-cvdm")
    else:
        path = Path(name_or_path)
    header = read_model_header(path)
    try:
        config = CVDMConfig.from_dict(header["config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: the model configuration is invalid: {exc}") from None
    model = CVDM(config, metadata=header.get("metadata") or {})
    expected = model.state_dict()
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: the weights are damaged or truncated ({exc})") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: the weights do not match the configuration "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(f"{path}: weight {name} has shape {tuple(value.shape)}, the "
                             f"configuration needs {tuple(expected[name].shape)}")
        if not bool(value.float().isfinite().all()):
            raise ValueError(f"{path}: weight {name} contains NaN or infinite values")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.metadata.setdefault("name", Path(path).name.removesuffix(MODEL_SUFFIX))
    return model.to(device).eval()


# -- images ------------------------------------------------------------------------------
@dataclass
class ImageFile:
    data: np.ndarray
    axes: str = ""
    pixel_size: tuple[float, float] | None = None  # (y, x) in ``unit`` per pixel
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def read_tiff(path: str | os.PathLike) -> ImageFile:
    """Read a TIFF or OME-TIFF with its physical pixel size; clear errors for bad files."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            pixel_size, unit = _pixel_size(tif)
    except ValueError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ValueError(f"{path} could not be read as a TIFF image ({type(exc).__name__}: "
                         f"{exc})") from None
    return ImageFile(np.asarray(data), axes, pixel_size, unit)


def _pixel_size(tif) -> tuple[tuple[float, float] | None, str]:
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            px, py = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
            if px and py:
                return (float(py), float(px)), pixels.get("PhysicalSizeXUnit", "µm")
        except (ET.ParseError, StopIteration, ValueError):
            pass
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" in tags and "YResolution" in tags:
        try:
            xn, xd = tags["XResolution"].value
            yn, yd = tags["YResolution"].value
            if xn > 0 and yn > 0 and not (xn == xd == 1 and yn == yd == 1):
                unit = (tif.imagej_metadata or {}).get("unit", "")
                unit = {"micron": "µm", "\\u00B5m": "µm"}.get(unit, unit)
                return (yd / yn, xd / xn), unit
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    return None, ""


def write_tiff(path: str | os.PathLike, data: np.ndarray, pixel_size=None, unit: str = "") -> Path:
    """Write float32 data atomically, ImageJ-compatible, with the pixel size if known."""
    import tifffile

    data = np.asarray(data, dtype=np.float32)
    kwargs: dict[str, Any] = {"imagej": True}
    metadata: dict[str, Any] = {}
    if data.ndim == 3:
        metadata["axes"] = "ZYX"
    elif data.ndim == 2:
        metadata["axes"] = "YX"
    else:
        kwargs["imagej"] = False
    if pixel_size is not None:
        py, px = pixel_size
        kwargs["resolution"] = (1.0 / px, 1.0 / py)
        if unit:
            # ImageJ metadata is ASCII; "micron" is its spelling of µm.
            metadata["unit"] = {"µm": "micron", "μm": "micron", "um": "micron"}.get(unit, unit)
    if kwargs["imagej"]:
        kwargs["metadata"] = metadata
    path = Path(path)
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path
