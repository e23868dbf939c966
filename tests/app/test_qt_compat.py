"""PySide6 6.12 work-arounds: the reference-count guard (nvplive/app/qt_compat.py)
and the views' widget ownership."""

from __future__ import annotations

import sys

import pytest
import shiboken6
from PySide6 import QtCore, QtWidgets

import nvplive.app  # noqa: F401
from nvplive.app import qt_compat


class _Emitter(QtCore.QObject):
    ping = QtCore.Signal(int)


@pytest.mark.nodisplay
def test_probe_gives_back_what_it_takes():
    before = (sys.getrefcount(None), sys.getrefcount(True))
    qt_compat.binding_leaks_singletons()
    assert (sys.getrefcount(None), sys.getrefcount(True)) == before


@pytest.mark.nodisplay
def test_many_emits_and_void_calls_keep_singletons_alive():
    emitter = _Emitter()
    received = []
    emitter.ping.connect(received.append)
    for i in range(30000):
        emitter.ping.emit(i)
        emitter.setObjectName("x")
    assert len(received) == 30000
    lost = qt_compat.binding_leaks_singletons()
    if max(lost.values()) > 0:
        # Leaking binding: the guard must be active and hold a large reserve.
        assert qt_compat.ensure_singleton_refcounts_safe()
        assert min(sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)) > qt_compat.RESERVE // 2
    assert sys.getrefcount(True) > 100 and sys.getrefcount(None) > 100


@pytest.mark.nodisplay
def test_guard_is_idempotent():
    first = qt_compat.ensure_singleton_refcounts_safe()
    count = sys.getrefcount(None)
    assert qt_compat.ensure_singleton_refcounts_safe() == first
    assert abs(sys.getrefcount(None) - count) < 100  # no second reserve


def test_view_widgets_are_owned_by_their_parents(qtbot):
    """Every QObject inside the views belongs to its C++ parent, none to Python.

    PySide6 6.12 leaves widgets that were put into a loose layout owned by Python
    when the layout is nested later; at exit such widgets are deleted twice.
    """
    from nvplive.app.frames_view import FramesView
    from nvplive.app.plots import LatencyPlot, LossPlot
    from nvplive.app.volume_view import VolumeView

    for cls in (VolumeView, FramesView, LossPlot, LatencyPlot):
        widget = cls()
        qtbot.addWidget(widget)
        owned = [type(o).__name__ for o in widget.findChildren(QtCore.QObject) if shiboken6.Shiboken.ownedByPython(o)]
        assert owned == [], (cls.__name__, owned)
    parent = QtWidgets.QWidget()
    qtbot.addWidget(parent)
    outer = QtWidgets.QVBoxLayout(parent)
    inner = QtWidgets.QHBoxLayout()
    outer.addLayout(inner)
    label = QtWidgets.QLabel("nested first")
    inner.addWidget(label)
    assert label.parent() is parent and not shiboken6.Shiboken.ownedByPython(label)
