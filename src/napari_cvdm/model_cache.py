"""Models named across processes (:class:`ModelRef`) and loaded once per process (a cache).

A dask worker, a subprocess or another machine gets a :class:`ModelRef`, never a pickled
torch module: a model file is named by its absolute path and SHA-256, a model in memory
travels as the bytes of its model file (safetensors + JSON, as ``save_model`` writes it).
:func:`load_cached` loads a reference once per process (a small LRU, thread-safe) and
refuses a file whose contents changed since the reference was made. No Qt, napari or dask.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelRef", "cache_info", "clear_cache", "load_cached", "remember"]

MAX_CACHED = 4  # models kept per process (a worker rarely needs more than one)


@dataclass(frozen=True)
class ModelRef:
    """A model for another process: a file (``path`` + ``sha256``) or file bytes (``blob``).

    Picklable and small for files; equal references load the same weights. ``name`` is the
    bundled name or the model's own name (for messages and provenance only).
    """

    sha256: str
    path: str | None = None
    blob: bytes | None = field(default=None, repr=False, compare=False)
    name: str | None = None

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.path, self.sha256)

    @classmethod
    def of(cls, model: Any) -> ModelRef:
        """The reference of a bundled name, a model file path, a CVDM or a ModelRef."""
        from .model.cvdm import CVDM
        from .model_files import BUNDLED, model_path, weights_sha256

        if isinstance(model, ModelRef):
            return model
        if isinstance(model, CVDM):
            blob = model_file_bytes(model)
            return cls(hashlib.sha256(blob).hexdigest(), None, blob,
                       (model.metadata or {}).get("name"))
        if model is None:
            from .settings import DEFAULT_MODEL

            model = DEFAULT_MODEL
        if isinstance(model, (str, os.PathLike)):
            path = model_path(model).resolve()
            if not path.is_file():
                raise ValueError(f"the model file {path} does not exist")
            name = model if isinstance(model, str) and model in BUNDLED else None
            return cls(weights_sha256(path), str(path), None, name)
        raise ValueError(f"model must be a bundled model name, a model file path or a CVDM "
                         f"instance, not {type(model).__name__}")


def model_file_bytes(model) -> bytes:
    """The model file of ``model`` (what ``save_model`` writes), as bytes."""
    from .model_files import MODEL_SUFFIX, save_model

    with tempfile.TemporaryDirectory(prefix="cvdm-ref-") as folder:
        path = save_model(model, Path(folder) / f"model{MODEL_SUFFIX}")
        return path.read_bytes()


_cache: OrderedDict[tuple[str | None, str], Any] = OrderedDict()
_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def _load(ref: ModelRef):
    from .model_files import BUNDLED, MODEL_SUFFIX, load_model, weights_sha256

    if ref.path is not None:
        path = Path(ref.path)
        if not path.is_file():
            raise ValueError(f"the model file {path} is not there (on this machine); every "
                             "worker needs the model file at the same path")
        found = weights_sha256(path)
        if found != ref.sha256:
            raise ValueError(f"the model file {path} has changed since the run started "
                             f"(SHA-256 {found[:12]}..., expected {ref.sha256[:12]}...); "
                             "restart the run with the file as it is now")
        net = load_model(path)
        if ref.name in BUNDLED:
            net.metadata.setdefault("name", ref.name)
        return net
    if ref.blob is None:
        raise ValueError("the model reference has neither a file nor the model's bytes")
    found = hashlib.sha256(ref.blob).hexdigest()
    if found != ref.sha256:
        raise ValueError(f"the model's bytes are damaged (SHA-256 {found[:12]}..., expected "
                         f"{ref.sha256[:12]}...)")
    with tempfile.TemporaryDirectory(prefix="cvdm-ref-") as folder:
        path = Path(folder) / f"model{MODEL_SUFFIX}"
        path.write_bytes(ref.blob)
        return load_model(path)


def load_cached(ref: ModelRef | Any):
    """The CVDM of ``ref`` (a ModelRef, or anything ``ModelRef.of`` takes), loaded once.

    Cached per process by (path, SHA-256), or by SHA-256 for a model sent as bytes; the
    last MAX_CACHED models are kept. A file whose SHA-256 no longer matches the reference
    raises ValueError (checked when loaded; a cached model is the one that matched).
    Callers share the returned model: predict() never modifies it.
    """
    ref = ModelRef.of(ref)
    with _lock:
        net = _cache.get(ref.key)
        if net is not None:
            _cache.move_to_end(ref.key)
            _stats["hits"] += 1
            return net
        _stats["misses"] += 1
        net = _load(ref)  # under the lock: threads of one worker load a model once
        _cache[ref.key] = net
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
        return net


def remember(ref: ModelRef, model) -> None:
    """Make ``load_cached(ref)`` in this process return ``model`` (the caller's own CVDM,
    already loaded: a lazy prediction's tasks that run here use it, not a reloaded copy)."""
    with _lock:
        _cache[ref.key] = model
        _cache.move_to_end(ref.key)
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)


def cache_info() -> dict[str, int]:
    """Hits, misses and the number of models cached in this process."""
    with _lock:
        return {**_stats, "cached": len(_cache)}


def clear_cache() -> None:
    with _lock:
        _cache.clear()
        _stats.update(hits=0, misses=0)
