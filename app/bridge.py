"""The Qt twin of the worker events: psygnal emissions from worker threads, delivered on the GUI thread.

Workers (the live session, the replay loader, an offline reconstruction, a background
task) report through typed psygnal signals emitted from their own threads. The window
connects each one through a :class:`GuiBridge` in one of two ways:

- :meth:`GuiBridge.latest` — *newest-only*: an emission still waiting is replaced by
  the newer one (a live view draws the newest frame, volume or progress, never a
  backlog);
- :meth:`GuiBridge.queued` — every emission, in order (errors, skipped timepoints,
  the end of a run must not be lost).

A GUI timer delivers what is waiting at most every :data:`DRAIN_INTERVAL_MS` (~25 Hz):
newest-only slots first (in the order they were connected), then the queue. So the GUI
thread only draws and never waits for a worker, and a burst of frames costs one draw.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from psygnal import SignalInstance
from PySide6 import QtCore

logger = logging.getLogger("nvplive.app")

#: Delivery period (ms): live views draw at most this often (25 Hz).
DRAIN_INTERVAL_MS = 40


class GuiBridge(QtCore.QObject):
    """Delivers worker-thread emissions to slots in the GUI thread (newest-only or queued).

    Args:
        on_error: called in the GUI thread with ``(exception)`` when a slot raises (a
            drawing bug must not stop the deliveries); default: log it.
        interval_ms: delivery period.
    """

    def __init__(
        self,
        parent: QtCore.QObject | None = None,
        *,
        on_error: Callable[[BaseException], None] | None = None,
        interval_ms: int = DRAIN_INTERVAL_MS,
    ) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._latest: dict[int, tuple[Callable[..., Any], tuple]] = {}
        self._queue: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._connections: dict[object, list[tuple[SignalInstance, Callable[..., None]]]] = {}
        self._keys = 0
        self._on_error = on_error
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(int(interval_ms))
        self._timer.timeout.connect(self.deliver)
        self._timer.start()

    # -- connecting (GUI thread) ----------------------------------------------------------------
    def latest(self, signal: SignalInstance, slot: Callable[..., Any], *, owner: object = None) -> None:
        """Deliver only the newest emission of ``signal`` waiting at a delivery to ``slot``."""
        self._keys += 1
        key = self._keys

        def put(*args: Any) -> None:
            with self._lock:
                self._latest[key] = (slot, args)

        self._connect(signal, put, owner)

    def queued(self, signal: SignalInstance, slot: Callable[..., Any], *, owner: object = None) -> None:
        """Deliver every emission of ``signal`` to ``slot``, in order."""

        def put(*args: Any) -> None:
            self.call(slot, *args)

        self._connect(signal, put, owner)

    def release(self, owner: object) -> None:
        """Disconnect everything connected with ``owner`` (what already waits is still delivered)."""
        for signal, put in self._connections.pop(owner, []):
            signal.disconnect(put)

    def _connect(self, signal: SignalInstance, put: Callable[..., None], owner: object) -> None:
        signal.connect(put)
        self._connections.setdefault(owner, []).append((signal, put))

    # -- any thread ---------------------------------------------------------------------------------
    def call(self, slot: Callable[..., Any], *args: Any) -> None:
        """Call ``slot(*args)`` in the GUI thread at the next delivery (from any thread)."""
        with self._lock:
            self._queue.append((slot, args))

    # -- delivery (GUI thread) ----------------------------------------------------------------------
    def deliver(self) -> None:
        """Run what is waiting: newest-only slots first, then the queue in order."""
        with self._lock:
            latest = [self._latest[key] for key in sorted(self._latest)]
            self._latest.clear()
            queued = list(self._queue)
            self._queue.clear()
        for slot, args in (*latest, *queued):
            try:
                slot(*args)
            except Exception as exc:  # a drawing bug must not stop the deliveries
                if self._on_error is not None:
                    self._on_error(exc)
                else:
                    logger.exception("A GUI slot raised")

    def stop(self) -> None:
        """Stop delivering and disconnect every worker signal."""
        self._timer.stop()
        for owner in list(self._connections):
            self.release(owner)
