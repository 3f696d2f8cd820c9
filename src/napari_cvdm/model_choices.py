"""The models a user trained in this session, so every widget can offer them at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

_lock = threading.Lock()
_models: list[Path] = []
_subscribers: list[Callable[[list[Path]], object]] = []


def register(path) -> None:
    """Add a model file (newest first) and tell every subscriber."""
    path = Path(path).resolve()
    with _lock:
        if path in _models:
            _models.remove(path)
        _models.insert(0, path)
        current, subscribers = list(_models), list(_subscribers)
    for callback in subscribers:
        callback(current)


def models() -> list[Path]:
    """The registered model files that still exist, newest first."""
    with _lock:
        return [p for p in _models if p.is_file()]


def subscribe(callback: Callable[[list[Path]], object]) -> None:
    with _lock:
        if callback not in _subscribers:
            _subscribers.append(callback)


def unsubscribe(callback: Callable[[list[Path]], object]) -> None:
    with _lock:
        if callback in _subscribers:
            _subscribers.remove(callback)
