"""The JSON header of a model file: read it and check every field before anything is built.

A model file is safetensors (never pickle) whose metadata entry ``napari_cvdm`` is a JSON
object ``{"format", "version", "config", "metadata"}``. A damaged or tampered header
raises ValueError here: wrong types, out-of-range values (a zero ``residual_scale``),
deep nesting, oversized text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

FORMAT = "napari-cvdm/1"
MODEL_SUFFIX = ".cvdm.safetensors"
MAX_HEADER_CHARS = 4_000_000  # training histories are a few hundred kB at most
MAX_DEPTH = 32

PICKLE_HINT = (
    "{path} is a pickle-based PyTorch file ({suffix}). Pickle files can run arbitrary code "
    "when loaded, so napari-cvdm only reads .cvdm.safetensors model files. If you trust this "
    "file, convert it once with:  python -m napari_cvdm.convert {path} OUT.cvdm.safetensors "
    "--preset PRESET --scale S"
)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
# torch.save writes a zip archive (PK..) or, in its legacy format, a pickle (0x80 protocol).
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")

# (low, high, low inclusive) for every float setting: beyond these a model divides by zero,
# overflows or is not a CVDM any more.
FLOAT_RANGES = {
    "residual_scale": (0.0, 1e3, False),
    "lambda_min": (0.0, 100.0, True),
    "logsnr_max": (-50.0, 50.0, True),
    "logsnr_min": (-50.0, 50.0, True),
    "smooth_weight": (0.0, 1e6, True),
    "aux_weight": (0.0, 1e6, True),
    "output_clip": (0.0, 1e3, False),
    "dropout": (0.0, 1.0, True),
}
INT_RANGES = {"time_hidden": (1, 4096)}


def json_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text (strings skipped), no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(text: str, what: str) -> Any:
    """JSON text of bounded size and depth; ValueError (never RecursionError) otherwise."""
    if len(text) > MAX_HEADER_CHARS:
        raise ValueError(f"{what} is too large ({len(text):,} characters)")
    if json_depth(text) > MAX_DEPTH:
        raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep; the file is "
                         "damaged or was not written by napari-cvdm")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # bad JSON, bad text, a number of 4,300+ digits
        raise ValueError(f"{what} is damaged (not valid JSON)") from None


# The first bytes of the image files most often given where a model is asked for
IMAGE_MAGIC = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"),
               (b"MM\x00+", "BigTIFF"), (b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"),
               (b"\x93NUMPY", "NumPy .npy"))


def leading_bytes(path: Path) -> bytes:
    """The first bytes of a file, enough to tell safetensors, pickle and text apart."""
    try:
        with open(path, "rb") as fh:
            return fh.read(9)
    except OSError as exc:
        raise ValueError(f"{path} could not be read ({exc})") from None


def looks_like_safetensors(magic: bytes) -> bool:
    # A safetensors file starts with its header's length (8 bytes, little-endian; a few MB
    # at most) and then the header's "{"; a length can begin with the same two bytes as a
    # pickle, the "{" tells them apart.
    return len(magic) == 9 and magic[8:9] == b"{"


def _refuse_pickle(path: Path, magic: bytes) -> None:
    suffix = "".join(path.suffixes[-1:]).lower()
    if magic.startswith(PICKLE_MAGIC) and not looks_like_safetensors(magic):
        if _is_package(path):  # a zip as PyTorch's files are, but with a description
            raise ValueError(f"{path} is a bioimage.io model package without its .zip name; "
                             "rename it to end in .zip and give that")
        if path.name == "weights.pt" and (path.parent / "rdf.yaml").is_file():
            raise ValueError(f"{path} is the network of an unpacked bioimage.io package; give "
                             "napari-cvdm the package's .zip, or the .cvdm.safetensors file "
                             "beside it (which keeps the model's calibration)")
        raise ValueError(PICKLE_HINT.format(
            path=path, suffix=suffix if suffix in PICKLE_SUFFIXES else
            "a PyTorch pickle/zip file despite its name"))
    if suffix in PICKLE_SUFFIXES and not looks_like_safetensors(magic):
        raise ValueError(PICKLE_HINT.format(path=path, suffix=suffix))


def _is_package(path: Path) -> bool:
    """Whether ``path`` is a zip archive with an rdf.yaml at its top (a bioimage.io
    package), whatever its name."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return "rdf.yaml" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _version_numbers(version: Any) -> tuple[int, ...]:
    """(0, 5, 0) for '0.5.0', '0.5.0rc1', '0.5.0.dev3+g1234'; () for anything else."""
    numbers = []
    for part in str(version).split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    return tuple(numbers)


def newer_writer_hint(header: Any) -> str:
    """'; it was written by napari-cvdm X, newer than this one (Y): ...' where the file says
    a newer napari-cvdm wrote it (whose model files this one may not know), else ''."""
    from . import __version__

    written = header.get("version") if isinstance(header, dict) else None
    if not isinstance(written, str):
        return ""
    theirs, ours = _version_numbers(written), _version_numbers(__version__)
    if not theirs or not ours or theirs <= ours:
        return ""
    return (f"; it was written by napari-cvdm {written[:40]}, newer than this one "
            f"({__version__}): update napari-cvdm (pip install -U napari-cvdm) to read it")


@contextlib.contextmanager
def newer_writer_explains(header: Any):
    """A ValueError raised inside says, where the file was written by a newer napari-cvdm,
    that updating may be the cure (a newer version's settings are unknown here)."""
    try:
        yield
    except ValueError as exc:
        hint = newer_writer_hint(header)
        if not hint:
            raise
        raise ValueError(f"{exc}{hint}") from None


def read_model_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a model file, checked; raises ValueError for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            raise ValueError(f"model file {path} is a symbolic link to a missing file (or a "
                             "loop of links)")
        raise ValueError(f"model file not found: {path}")
    if path.suffix.lower() == ".zip":
        raise ValueError(f"{path} is a bioimage.io package, not a model file: give it where a "
                         "model is asked for (--model, --init, load_model), which reads its "
                         f"model file (*{MODEL_SUFFIX})")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        raise ValueError(f"{path} is a description, not a model file; give the model file "
                         f"(*{MODEL_SUFFIX}), or a bioimage.io package's .zip")
    magic = leading_bytes(path)
    # a safetensors file starts with its header's length, whose high bytes are zero
    if len(magic) == 9 and all(32 <= b < 127 or b in (9, 10, 13) for b in magic):
        raise ValueError(f"{path} is a text file (a web page, or a Git LFS pointer saved in "
                         "place of the file?), not a napari-cvdm model file; download the "
                         "model file itself")
    _refuse_pickle(path, magic)
    image = next((kind for start, kind in IMAGE_MAGIC if magic.startswith(start)), None)
    if image:
        raise ValueError(f"{path} is an image ({image}), not a napari-cvdm model file: give "
                         "it as an input (cvdm predict IMAGE -o OUTDIR) and a model with "
                         "--model (a bundled model's name or a *.cvdm.safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            raw = header.get("napari_cvdm")
            state = "napari_cvdm_state" in header
    except Exception as exc:  # safetensors raises its own error types for bad headers
        said = int.from_bytes(magic[:8], "little") if len(magic) >= 8 else None
        # a length beyond safetensors' own limit on headers (100 MB) says the file is
        # something else, not that it was cut
        incomplete = ("not fully covered" in str(exc) or said is None
                      or path.stat().st_size < 8 + said <= 8 + 100_000_000)
        raise ValueError(f"{path} is not a napari-cvdm model file (it could not be read as "
                         f"safetensors: {exc})" + ("; the file looks cut short (an interrupted "
                                                   "download or copy?)" if incomplete else "")
                         ) from None
    if raw is None and state:
        raise ValueError(f"{path} is a training state (what --resume continues from), not a "
                         "model: give the model file written beside it (*.cvdm.safetensors)")
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but not a napari-cvdm model "
                         "(it has no napari_cvdm header)")
    header = parse_json(raw, f"{path}: the model header")
    with newer_writer_explains(header):
        if not isinstance(header, dict) or header.get("format") != FORMAT \
                or "config" not in header:
            raise ValueError(f"{path}: unsupported model header (expected format {FORMAT})")
        if not isinstance(header["config"], dict):
            raise ValueError(f"{path}: the model configuration is invalid (not a JSON "
                             "object)")
        metadata = header.get("metadata")
        if metadata is None:
            header["metadata"] = {}
        elif not isinstance(metadata, dict):
            raise ValueError(f"{path}: the model metadata is damaged (not a JSON object)")
        check_metadata(header["metadata"], path)
    return header


# The PSF widths (output pixels) a conditioned model may be told: by the user, or as its
# default from its file.
PSF_SIGMA_RANGE = (0.25, 20.0)


def check_metadata(metadata: dict[str, Any], path: str | os.PathLike = "model") -> None:
    """The fields napari-cvdm reads from the metadata have the types it expects."""
    def need(ok: bool, field: str) -> None:
        if not ok:
            raise ValueError(f"{path}: the model metadata field {field!r} is damaged")

    need(isinstance(metadata.get("name", ""), str), "name")
    card = metadata.get("card", {})
    need(isinstance(card, dict) and all(isinstance(v, (str, list)) for v in card.values()),
         "card")
    training = metadata.get("training", {})
    need(isinstance(training, dict), "training")
    step = training.get("step")
    need(step is None or (type(step) is int and step >= 0), "training.step")
    norm = metadata.get("normalization", {})
    need(isinstance(norm, dict), "normalization")
    if "percentiles" in norm:
        p = norm["percentiles"]
        need(isinstance(p, list) and len(p) == 2 and all(type(v) in (int, float) for v in p)
             and 0 <= p[0] < p[1] <= 100, "normalization.percentiles")
    if metadata.get("calibration") is not None:
        from .calibration import check

        try:
            check(metadata["calibration"])
        except ValueError:
            need(False, "calibration")
    for part in ("data", "settings"):
        need(isinstance(training.get(part, {}), dict), f"training.{part}")
    degradation = training.get("data", {}).get("degradation", {})
    need(isinstance(degradation, dict), "training.data.degradation")
    sigma = degradation.get("psf_sigma")
    widths = sigma if isinstance(sigma, list) else [sigma]
    need(sigma is None or (1 <= len(widths) <= 2 and all(_positive(v) for v in widths)),
         "training.data.degradation.psf_sigma")
    default = metadata.get("psf_sigma_default")
    need(default is None or (finite_number(default)
                             and PSF_SIGMA_RANGE[0] <= default <= PSF_SIGMA_RANGE[1]),
         "psf_sigma_default")
    intended = metadata.get("intended", {})
    need(isinstance(intended, dict), "intended")
    pixels = intended.get("input_pixel_size_nm")
    need(pixels is None or (isinstance(pixels, list) and len(pixels) == 2
                            and all(_positive(v) for v in pixels) and pixels[0] <= pixels[1]),
         "intended.input_pixel_size_nm")


def finite_number(value: Any) -> bool:
    """A finite int or float from a JSON header (not a bool, a string or a list)."""
    return type(value) in (int, float) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return finite_number(value) and value > 0


def _check_value(name: str, value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(default, str):
        return type(value) is type(default)
    if isinstance(default, int):
        low, high = INT_RANGES.get(name, (-2**31, 2**31))
        return type(value) is int and low <= value <= high
    if isinstance(default, float):
        if not finite_number(value):
            return False
        if name in FLOAT_RANGES:
            low, high, inclusive = FLOAT_RANGES[name]
            return (value >= low if inclusive else value > low) and value <= high
        return True
    if isinstance(default, tuple):
        return isinstance(value, tuple) and all(type(v) is int for v in value)
    return True


def check_config_types(config) -> None:
    """Every setting has the type of its default and lies in its range."""
    reference = type(config)()
    for f in dataclasses.fields(config):
        value, default = getattr(config, f.name), getattr(reference, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if default is not None and type(value) is not type(default):
                raise ValueError(f"setting {f.name!r} has an unexpected value {value!r}")
            check_config_types(value)
            continue
        if default is None:
            if value is not None:
                raise ValueError(f"setting {f.name!r} has an unexpected value {value!r}")
            continue
        if not _check_value(f.name, value, default):
            raise ValueError(f"setting {f.name!r} has an unexpected value {value!r}")
    if hasattr(config, "logsnr_max") and not config.logsnr_max > config.logsnr_min:
        raise ValueError(f"setting 'logsnr_max' ({config.logsnr_max}) must be above "
                         f"'logsnr_min' ({config.logsnr_min})")
