"""Files: model files (safetensors + JSON header, never pickle) and TIFF images.

Every writer goes through :func:`atomic_write`: a temporary file beside the target,
renamed over it only once complete, so an interrupted write never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import json
import math
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
    "--preset PRESET [--scale S]"
)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
# torch.save writes a zip archive (PK..) or, in its legacy format, a pickle (0x80 protocol).
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on failure it is removed.

    The temporary file is ``.<name>.<random>.part`` beside ``path``. Only a process killed
    outright (SIGKILL, power loss) can leave one behind; nothing reads ``*.part`` files,
    so they never stand in for the real file (remove them at leisure).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
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
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(PICKLE_HINT.format(path=path, suffix=suffix))
    if not path.is_file():
        raise ValueError(f"model file not found: {path}")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(9)
    except OSError as exc:
        raise ValueError(f"{path} could not be read ({exc})") from None
    # A safetensors file starts with its header length (8 bytes) and then "{"; a header
    # length can begin with the same two bytes as a pickle, the "{" tells them apart.
    if magic.startswith(PICKLE_MAGIC) and magic[8:9] != b"{":
        raise ValueError(PICKLE_HINT.format(path=path, suffix="a PyTorch pickle/zip file "
                                            "despite its name"))
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


def estimate_parameters(config) -> int:
    """The parameter count of a configuration, without allocating it (meta tensors)."""
    import torch

    from .model.cvdm import CVDM

    with torch.device("meta"):
        return int(CVDM(config).parameter_counts()["total"])


def _check_types(config) -> None:
    """Every setting has the type of its default (a tampered header could say "x" or 1e400)."""
    import dataclasses

    reference = type(config)()
    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), getattr(reference, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if default is not None and type(value) is not type(default):
                raise ValueError(f"setting {f.name!r} has an unexpected value {value!r}")
            _check_types(value)
            continue
        if default is None:
            if value is not None:
                raise ValueError(f"setting {f.name!r} has an unexpected value {value!r}")
            continue
        if isinstance(default, bool) or isinstance(default, str):
            ok = type(value) is type(default)
        elif isinstance(default, int):
            ok = type(value) is int
        elif isinstance(default, float):
            ok = type(value) in (int, float) and math.isfinite(value)
        elif isinstance(default, tuple):
            ok = isinstance(value, tuple) and all(type(v) is int for v in value)
        else:
            ok = True
        if not ok:
            raise ValueError(f"setting {f.name!r} has an unexpected value {value!r}")


def _config_from_header(path: Path, header: dict[str, Any]):
    from .model.config import CVDMConfig

    try:
        config = CVDMConfig.from_dict(header["config"])
        _check_types(config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path}: the model configuration is invalid: {exc}") from None
    try:
        count = estimate_parameters(config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: the model configuration is invalid: {exc}") from None
    if count > MAX_PARAMETERS:
        raise ValueError(f"{path}: the model configuration asks for {count:,} parameters, "
                         f"more than the {MAX_PARAMETERS:,} napari-cvdm accepts; the file is "
                         "damaged or not meant for napari-cvdm")
    return config


def load_model(name_or_path: str | os.PathLike = "demo", device: str = "cpu"):
    """Load a bundled model by name (``"demo"``) or a ``.cvdm.safetensors`` file.

    Nothing is unpickled, and nothing large is allocated before the file has passed its
    checks: the header and configuration are read and the parameter count is computed on
    PyTorch's meta device; the names and shapes of the stored tensors are compared with
    that configuration from the safetensors index; only then are weights read.
    """
    import torch
    from safetensors import safe_open

    from .model.cvdm import CVDM

    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        path = bundled_model_path(name_or_path)
        if not path.is_file():
            raise ValueError(f"the bundled model {name_or_path!r} is not installed "
                             f"(expected {path}); reinstall napari-cvdm")
    else:
        path = Path(name_or_path)
    header = read_model_header(path)
    config = _config_from_header(path, header)
    metadata = header.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: the model metadata is damaged (not a JSON object)")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CVDM(config).state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as fh:
            names = set(fh.keys())
            missing = sorted(set(expected) - names)
            unexpected = sorted(names - set(expected))
            if missing or unexpected:
                raise ValueError(f"{path}: the weights do not match the configuration "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
            for name in sorted(names):
                shape = tuple(fh.get_slice(name).get_shape())
                if shape != expected[name]:
                    raise ValueError(f"{path}: weight {name} has shape {shape}, the "
                                     f"configuration needs {expected[name]}")
            model = CVDM(config, metadata=metadata)
            state = model.state_dict()
            for name in sorted(names):
                value = fh.get_tensor(name)
                if not (value.is_floating_point() or value.dtype == state[name].dtype):
                    raise ValueError(f"{path}: weight {name} has type {value.dtype}, "
                                     f"expected {state[name].dtype}")
                if value.is_floating_point() and not bool(value.float().isfinite().all()):
                    raise ValueError(f"{path}: weight {name} contains NaN or infinite values")
                with torch.no_grad():
                    state[name].copy_(value)
    except ValueError:
        raise
    except Exception as exc:  # safetensors' own errors, OSError, truncated data
        raise ValueError(f"{path}: the weights are damaged or truncated ({exc})") from None
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


class _Refused(Exception):
    """A file read_tiff refuses with its own message."""


def max_image_bytes() -> int | None:
    """The largest image read_tiff loads: half of this computer's memory (None: no limit)."""
    from .validation import MAX_OUTPUT_FRACTION, memory_bytes

    total = memory_bytes()
    return int(total * MAX_OUTPUT_FRACTION) if total else None


def read_tiff(path: str | os.PathLike) -> ImageFile:
    """Read a TIFF or OME-TIFF with its physical pixel size; clear errors for bad files.

    Anything wrong with the file (damaged, truncated, not a TIFF, an image larger than
    half of this computer's memory) raises ValueError; the file is only read.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file not found: {path}")
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise _Refused(f"{path} could not be read as a TIFF image (it contains no "
                               "image data)")
            series = tif.series[0]
            declared = int(np.prod(series.shape, dtype=np.float64)) * series.dtype.itemsize
            limit = max_image_bytes()
            if limit is not None and declared > limit:
                raise _Refused(f"{path} declares an image of {declared / 2**30:.1f} GiB "
                               f"(shape {series.shape}, {series.dtype}), more than half of "
                               "this computer's memory; crop it or process it in parts")
            data = series.asarray()
            axes = series.axes
            pixel_size, unit = _pixel_size(tif)
    except _Refused as exc:
        raise ValueError(str(exc)) from None
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
            if px and py and _positive(float(px)) and _positive(float(py)):
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
                if not isinstance(unit, str):
                    unit = ""
                unit = {"micron": "µm", "\\u00B5m": "µm"}.get(unit, unit)
                size = (yd / yn, xd / xn)
                if all(_positive(v) for v in size):
                    return size, unit
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    return None, ""


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _write_tiff_to(path: Path, data: np.ndarray, pixel_size=None, unit: str = "") -> None:
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
    tifffile.imwrite(path, data, **kwargs)


def write_tiff(path: str | os.PathLike, data: np.ndarray, pixel_size=None, unit: str = "") -> Path:
    """Write float32 data atomically, ImageJ-compatible, with the pixel size if known."""
    path = Path(path)
    with atomic_write(path) as tmp:
        _write_tiff_to(tmp, data, pixel_size, unit)
    return path


def write_tiffs(items, pixel_size=None, unit: str = "") -> list[Path]:
    """Write several ``(path, data)`` TIFFs as one unit: all of them, or none.

    Each goes to a temporary file first; only when every one is complete are they renamed
    into place, so a failure while writing the second leaves neither (an earlier complete
    set of files with the same names stays untouched).
    """
    items = [(Path(p), d) for p, d in items]
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(atomic_write(p)) for p, _ in items]
        for tmp, (_, data) in zip(temps, items):
            _write_tiff_to(tmp, data, pixel_size, unit)
    return [p for p, _ in items]
