"""Guard against PySide6 6.12's missing references to ``None`` and ``True`` (Python 3.11).

What was seen
-------------
A process holding a vispy ``SceneCanvas`` and a pyqtgraph ``ImageView`` aborted
at interpreter exit with ``Fatal Python error: bool_dealloc: deallocating True or
False`` (exit code 134) even after closing both widgets; resizing the same
window a few hundred times aborted it while running, with ``none_dealloc``.

The cause (found by measuring ``sys.getrefcount`` around single binding calls)
-------------------------------------------------------------------------------
Not pyqtgraph's exit cleanup (``pg.setConfigOption('exitCleanup', False)``
changed nothing) and not the vispy/GL teardown order. The wheel
PySide6-Essentials 6.12.0 returns the ``None`` and ``True`` singletons to Python
without taking a new reference:

* every wrapped C++ ``void`` method (``QWidget.resize``, ``QPainter.drawLine``,
  ``QRectF.setWidth``, ``QObject.setObjectName`` ...) and every null-pointer
  result (``QObject.parent()`` of an orphan) removes one reference from ``None``;
* ``SignalInstance.emit(...)`` (any signature, connected or not, blocked or not)
  and ``SignalInstance.disconnect(slot)`` remove one reference from ``True``.

``False`` results and other return values are correct, and PySide6 6.11.3 on the
same interpreter is correct. On Python 3.12+ ``None``/``True``/``False`` are
immortal (PEP 683) and ignore reference counts, which hides the defect; on the
project's Python 3.11 they start with a few thousand references. pyqtgraph calls
hundreds of ``void`` Qt methods per repaint (about 380 ``None`` references per
``ImageView`` resize) and emits Python signals on every range change; a vispy
canvas drains about 9 per resize. Whichever singleton runs out first is
deallocated: ``bool_dealloc``/``none_dealloc``, usually at exit when the garbage
collector releases the last genuine holders, or mid-run in a live view. vispy +
pyqtgraph together just crossed the threshold sooner; pyqtgraph alone, or any
busy Qt application, crashes the same way given enough events.

The fix
-------
:func:`ensure_singleton_refcounts_safe` probes the installed binding once (one
``void`` call and a few ``emit`` calls on private objects). Only when references
are lost, and only on Python < 3.12 release builds, it gives ``None``, ``True``
and ``False`` a reserve of 2**40 references each: the same thing CPython 3.12
does for immortal objects. The reserve outlasts any realistic run (10**12 lost
references; a busy GUI loses about 10**4 per second). A PySide6 release without
the defect makes the probe come back clean and the guard does nothing. Pinning
``PySide6-Essentials!=6.12.0`` (or running Python >= 3.12) removes the need.
"""

from __future__ import annotations

import ctypes
import sys

from PySide6 import QtCore

RESERVE = 1 << 40
_PROBE_CALLS = 8
_active = False


class _Probe(QtCore.QObject):
    """Owner of a private signal used only to probe the binding's refcounting."""

    ping = QtCore.Signal()


def _lost_references(singleton: object, call) -> int:
    """References to ``singleton`` lost over ``_PROBE_CALLS`` calls of ``call``."""
    before = sys.getrefcount(singleton)
    for _ in range(_PROBE_CALLS):
        call()
    return before - sys.getrefcount(singleton)


def binding_leaks_singletons() -> dict[str, int]:
    """Probe PySide6: references to ``None``/``True`` lost per ``_PROBE_CALLS`` calls.

    The probe hands back what it took, so it leaves the counts as they were.
    """
    probe = _Probe()
    lost = {
        "None": _lost_references(None, lambda: probe.setObjectName("probe")),
        "True": _lost_references(True, probe.ping.emit),
    }
    for name, singleton in (("None", None), ("True", True)):
        for _ in range(max(lost[name], 0)):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(singleton))
    return lost


def ensure_singleton_refcounts_safe() -> bool:
    """Give ``None``/``True``/``False`` a reference reserve when this PySide6 needs it.

    Idempotent. Returns True when the guard is active in this process.
    """
    global _active
    if _active:
        return True
    if sys.version_info >= (3, 12) or hasattr(sys, "gettotalrefcount"):
        # Immortal singletons (3.12+) are immune; debug builds have another object header.
        return False
    lost = binding_leaks_singletons()
    if max(lost.values()) < _PROBE_CALLS:
        return False
    # On CPython 3.11 release builds ob_refcnt (Py_ssize_t) is the first field of every object.
    for singleton in (None, True, False):
        ctypes.c_ssize_t.from_address(id(singleton)).value += RESERVE
    _active = True
    return True
