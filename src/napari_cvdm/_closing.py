"""Noticing that a dock widget is closed: napari deletes it with the viewer, but its dock's
close button only takes it out of the dock (no parent), and it lives on unless told."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget


class _Undocked(QObject):
    """Calls back when the watched widget, once docked, loses its parent."""

    def __init__(self, widget: QWidget, callback: Callable[[], None]):
        super().__init__(widget)
        self._callback, self._docked = callback, widget.parent() is not None

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._callback()
        return False


def when_closed(widget: QWidget, callback: Callable[[bool], None]) -> None:
    """Call ``callback(False)`` when ``widget`` is taken out of its dock (the dock's close
    button: the viewer and its layers are still there), and ``callback(True)`` when it is
    deleted (the viewer closed), each at most once."""
    called = set()

    def once(viewer_gone: bool) -> None:
        if viewer_gone not in called:
            called.add(viewer_gone)
            callback(viewer_gone)

    widget.destroyed.connect(lambda *_: once(True))
    widget.installEventFilter(_Undocked(widget, lambda: once(False)))


def disconnect(emitter, *callbacks) -> None:
    """Disconnect ``callbacks`` from a napari event emitter (those not connected: ignored)."""
    for callback in callbacks:
        try:
            emitter.disconnect(callback)
        except (RuntimeError, TypeError, ValueError):
            pass
