"""Model files: save, load and resolve models (safetensors + JSON header, never pickle).

:func:`resolve_model` is the one place that turns a bundled name, a file path or a model
object into a model plus its provenance and summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .model_card import clean_metadata
from .model_header import (FORMAT, MODEL_SUFFIX, PICKLE_HINT, check_config_types,
                           check_metadata, newer_writer_explains, read_model_header)

BUNDLED = {"widefield-x2": "widefield-x2.cvdm.safetensors", "demo": "demo.cvdm.safetensors"}
# The largest model file we accept: the paper preset in float32 is about 0.6 GB.
MAX_PARAMETERS = 400_000_000

__all__ = ["BUNDLED", "FORMAT", "MAX_PARAMETERS", "MODEL_SUFFIX", "PICKLE_HINT",
           "bundled_model_path", "estimate_parameters", "existing_output", "load_model",
           "model_path", "read_model_header", "resolve_model", "save_model", "weights_sha256"]


def save_model(model, path: str | os.PathLike, half: bool = False,
               overwrite: bool = True) -> Path:
    """Write weights (safetensors) and a JSON header: config, normalisation, metadata.

    The metadata gets a complete model card and loses machine paths (file names stay).
    The file is written atomically with mode 0666 minus the umask (0644 usually).
    """
    from safetensors.torch import save_file

    tensors, header = model_file_contents(model, half)
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def model_file_contents(model, half: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """What :func:`save_model` writes: the tensors (on the CPU) and the safetensors header,
    for writers that put the file in place together with another (training checkpoints)."""
    import json

    import torch

    from . import __version__

    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if half and value.is_floating_point():
            value = value.to(torch.float16)
        tensors[name] = value
    header = json.dumps({
        "format": FORMAT,
        "version": __version__,
        "config": model.config.to_dict(),
        "metadata": clean_metadata(model.metadata),
    })
    # what load_model would refuse is refused here (as it will be read: tuples as lists),
    # before a working file is replaced
    check_metadata(json.loads(header)["metadata"], "the model to save")
    return tensors, {"napari_cvdm": header}


def bundled_model_path(name: str) -> Path:
    """Where the bundled model ``name`` (a key of BUNDLED) is installed."""
    ref = resources.files("napari_cvdm") / "weights" / BUNDLED[name]
    return Path(str(ref))


def existing_output(path: str | os.PathLike, init=None) -> str | None:
    """What a training output ``path`` already holds: None (nothing), ``"other"`` (a file
    that is not a napari-cvdm model, never to be replaced), ``"init"`` (the model the run
    starts from, kept as it is) or ``"model"`` (another model, replaced only when the user
    says so). The front ends phrase the refusal in their own terms."""
    path = Path(path).expanduser()
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        read_model_header(path)
    except (ValueError, OSError):
        return "other"
    if isinstance(init, (str, os.PathLike)):
        start = bundled_model_path(init) if isinstance(init, str) and init in BUNDLED \
            else Path(init).expanduser()
        try:
            if start.resolve() == path.resolve() or (start.exists() and
                                                     os.path.samefile(start, path)):
                return "init"
        except OSError:
            pass
    return "model"


def training_output_problem(output, overwrite: bool = False, init=None, resume: bool = False,
                            how_to_replace: str = "overwrite=True, in napari: 'replace an "
                                                  "existing model file'") -> str | None:
    """Why a trained model cannot be written to ``output``, or None; writes nothing that
    stays. The one check of every front end (``train()``, ``cvdm train``, napari).

    An existing file is replaced only when it is a napari-cvdm model, not the ``init``
    model the run starts from, and ``overwrite`` says so; ``resume`` continues the run
    that wrote it. The folder must take a new file (a read-only or full file system is
    found here, not at the first checkpoint). ``how_to_replace``: the front end's words."""
    import tempfile

    if output is None or not str(output).strip() or str(output) == ".":
        return "choose the file to save the trained model to (name.cvdm.safetensors)"
    path = Path(output).expanduser()
    if path.is_dir():
        return f"{path} is a folder; give a file name such as {path / 'my-model.cvdm.safetensors'}"
    if not path.name.endswith(".safetensors"):
        return f"the model file name must end in .cvdm.safetensors, not {path.name!r}"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot write {path}: {parent} is not a folder"
    try:  # os.access answers yes to root on read-only file systems: try it
        with tempfile.NamedTemporaryFile(dir=parent) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return f"cannot write to {parent} ({exc.strerror or exc}); choose another place"
    holds = existing_output(path, init)
    if holds == "other":
        return (f"{path} exists and is not a napari-cvdm model; choose a new file name (it is "
                "never replaced)")
    if holds == "init":
        return (f"{path} is the model to fine-tune; save to a new file name (the model you "
                "start from is kept as it is)")
    if holds == "model" and not (overwrite or resume):
        return f"{path} exists; choose a new file name, or replace it ({how_to_replace})"
    from .checkpoints import is_training_state, state_path

    state = state_path(path)  # written beside the model at every checkpoint: the same rules
    if state.is_dir():
        return f"{state} (where the training state goes) is a folder; choose another file name"
    if state.exists() and not resume:
        if not is_training_state(state) and not (holds == "model" and overwrite):
            # (beside a model of ours, a damaged state of its run may be replaced)
            return (f"{state} (where the training state goes) exists and is not a napari-cvdm "
                    "training state; choose a new model file name (it is never replaced)")
        if not overwrite:
            return (f"{state} holds the training state of an earlier run, which can be "
                    f"resumed; choose a new file name, or replace it ({how_to_replace})")
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} exists and is read-only; choose another file"
    return None


def model_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a bundled model name or a model path; ValueError if it is missing."""
    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        path = bundled_model_path(name_or_path)
        if not path.is_file():
            raise ValueError(f"the bundled model {name_or_path!r} is not installed "
                             f"(expected {path}); reinstall napari-cvdm")
        return path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"a model name or path must be a string or a path, not "
                        f"{type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        inside = sorted(path.glob(f"*{MODEL_SUFFIX}"))
        hint = (f"; the model file in it is {inside[0]}" if len(inside) == 1 else
                " (an unpacked bioimage.io package? give its .zip)"
                if (path / "rdf.yaml").is_file() else "")
        raise ValueError(f"{path} is a folder, not a model file (*{MODEL_SUFFIX}){hint}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a pipe or a device?); give a model "
                         f"file (*{MODEL_SUFFIX})")
    if isinstance(name_or_path, str) and path.name == name_or_path and not path.suffix \
            and not path.exists():  # a bare name, no folder, no suffix: meant as bundled
        raise ValueError(f"no bundled model or model file is called {name_or_path!r}; the "
                         f"bundled models are {', '.join(sorted(BUNDLED))}")
    return path


def estimate_parameters(config) -> int:
    """The parameter count of a configuration, without allocating it (meta tensors)."""
    import torch

    from .model.cvdm import CVDM

    with torch.device("meta"):
        return int(CVDM(config).parameter_counts()["total"])


def _config_from_header(path: Path, header: dict[str, Any]):
    from .model.config import CVDMConfig

    try:
        config = CVDMConfig.from_dict(header["config"])
        check_config_types(config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        # a nested part's dataclass names an unknown setting in Python's words
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        detail = f"unknown model setting {unknown.group(1)!r}" if unknown else str(exc)
        raise ValueError(f"{path}: the model configuration is invalid: {detail}") from None
    try:
        count = estimate_parameters(config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: the model configuration is invalid: {exc}") from None
    if count > MAX_PARAMETERS:
        raise ValueError(f"{path}: the model configuration asks for {count:,} parameters, "
                         f"more than the {MAX_PARAMETERS:,} napari-cvdm accepts; the file is "
                         "damaged or not meant for napari-cvdm")
    return config


def expected_shapes(config) -> dict[str, tuple]:
    """Each weight's name and shape for ``config``, from PyTorch's meta device (nothing
    allocated)."""
    import torch

    from .model.cvdm import CVDM

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CVDM(config).state_dict().items()}


def _check_index(path: Path, fh, expected: dict[str, tuple]) -> None:
    """The stored tensors' names and shapes (the safetensors index) against ``expected``."""
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


@contextlib.contextmanager
def _weight_errors(path: Path):
    """Reading the weights: safetensors' own errors, OSError and truncated data become one
    ValueError naming the file (a ValueError of the checks passes as it is)."""
    try:
        yield
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: the weights are damaged or truncated ({exc})") from None


def check_weight_index(path: Path, config) -> None:
    """ValueError unless the file's stored tensors are those ``config`` needs (names and
    shapes, read from the index: no weights loaded). What ``cvdm info`` checks beyond the
    header, so that it shows a card only for a file ``load_model`` takes."""
    from safetensors import safe_open

    with _weight_errors(path), safe_open(str(path), framework="pt") as fh:
        _check_index(path, fh, expected_shapes(config))


def _read_weights(path: Path, model, expected: dict[str, tuple]) -> None:
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        _check_index(path, fh, expected)
        names = set(fh.keys())
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


@contextlib.contextmanager
def model_file_of(path: Path):
    """The model file itself for ``path``; for a bioimage.io package exported by napari-cvdm
    (``.zip``), its ``.cvdm.safetensors`` attachment, extracted to a temporary folder for
    the duration, with errors about it naming the package, not the temporary copy."""
    if path.suffix.lower() != ".zip":
        yield path
        return
    import tempfile

    from .bioimageio_export import model_file_in_package

    with tempfile.TemporaryDirectory(prefix="cvdm-package-") as folder:
        inner = model_file_in_package(path, folder)
        try:
            yield inner
        except ValueError as exc:
            raise ValueError(str(exc).replace(str(inner), f"{path} (its model "
                                              "attachment)")) from None


_PACKAGE_HEADERS: dict[tuple[str, int, int], dict[str, Any]] = {}


def header_of(path: Path) -> dict[str, Any]:
    """The checked header of a model file or of a package's model attachment (a package's
    is kept by path, size and modification time: the widget asks on every change of its
    options, and reading it means extracting the attachment)."""
    import copy

    path = Path(path)
    if path.suffix.lower() != ".zip" or not path.is_file():
        with model_file_of(path) as file:
            return read_model_header(file)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _PACKAGE_HEADERS:
        with model_file_of(path) as file:
            _PACKAGE_HEADERS[key] = read_model_header(file)
    return copy.deepcopy(_PACKAGE_HEADERS[key])


def load_model(name_or_path: str | os.PathLike | None = None, device: str = "cpu"):
    """Load a bundled model by name (default ``settings.DEFAULT_MODEL``, ``"widefield-x2"``;
    also ``"demo"``), a ``.cvdm.safetensors`` file, or a
    bioimage.io package (``.zip``) exported by napari-cvdm (its safetensors attachment).

    Nothing is unpickled, and nothing large is allocated before the file has passed its
    checks: the header (every field's type and range) is read and the parameter count is
    computed on PyTorch's meta device; the names and shapes of the stored tensors are
    compared with that configuration from the safetensors index; only then are weights
    read. A damaged, truncated or tampered file raises ValueError.
    """
    if name_or_path is None:
        from .settings import DEFAULT_MODEL

        name_or_path = DEFAULT_MODEL
    with model_file_of(model_path(name_or_path)) as path:
        return _load_file(path, device)


def _load_file(path: Path, device: str):
    from .model.cvdm import CVDM

    header = read_model_header(path)
    with newer_writer_explains(header):
        config = _config_from_header(path, header)
        metadata = header["metadata"]
        expected = expected_shapes(config)
        model = CVDM(config, metadata=metadata)
        with _weight_errors(path):
            _read_weights(path, model, expected)
    model.metadata.setdefault("name", path.name.removesuffix(MODEL_SUFFIX))
    from .devices import resolve_device

    return model.to(resolve_device(device)).eval()


_HASHES: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a model file (cached by path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _summary(model, path: Path | None, sha256: str | None) -> dict[str, Any]:
    from .model_card import card_of

    metadata = model.metadata or {}
    training = metadata.get("training") or {}
    name = metadata.get("name")
    if name is None:
        name = (path.name.removesuffix(MODEL_SUFFIX) if path is not None
                else f"{model.config.preset} (in memory)")
    counts = model.parameter_counts()
    return {"model": name, "name": name, "path": None if path is None else str(path),
            "sha256": sha256, "preset": model.config.preset, "scale": model.config.scale,
            "training_step": training.get("step"),
            "parameters": {k: int(v) for k, v in counts.items()},
            "description": card_of(metadata)["description"]}


def resolve_model(model, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A model from a bundled name, a file path or a CVDM instance, with its provenance.

    Returns ``(model, summary)``; ``summary`` has ``model``/``name``, ``path`` (None for a
    model in memory), ``sha256`` of the weights file (None in memory), ``preset``,
    ``scale``, ``training_step``, ``parameters`` (counts by part) and ``description``.
    A model object is returned as it is (``device`` is ignored for it).
    """
    from .model.cvdm import CVDM

    if isinstance(model, CVDM):
        return model, _summary(model, None, None)
    if isinstance(model, (str, os.PathLike)):
        path = model_path(model)
        net = load_model(path, device=device)
        if isinstance(model, str) and model in BUNDLED:
            net.metadata.setdefault("name", model)
        return net, _summary(net, path, weights_sha256(path))
    raise ValueError(f"model must be a bundled model name ('demo'), a model file path or a "
                     f"CVDM instance, not {type(model).__name__}")
