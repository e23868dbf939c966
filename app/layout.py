"""The window's docks: Acquisition, Reconstruction, 3D, Frames, Pupil and Timeline, and their default layout."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

#: The docks: key, title (the object name is ``<key>Dock``).
DOCKS = (("acquisition", "Acquisition"), ("reconstruction", "Reconstruction"), ("volume", "3D"), ("frames", "Frames"),
         ("pupil", "Pupil"), ("timeline", "Timeline"))


def scrolling(widget: QtWidgets.QWidget) -> QtWidgets.QScrollArea:
    """``widget`` in a vertical scroll area (a tall panel in a short dock)."""
    area = QtWidgets.QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return area


def full_width(widget: QtWidgets.QWidget) -> int:
    """The width a dock needs to show ``widget`` uncut: a :func:`scrolling` area's panel at its
    minimum width beside the vertical scroll bar (the area scrolls only vertically)."""
    if isinstance(widget, QtWidgets.QScrollArea) and widget.widget() is not None:
        bar = widget.verticalScrollBar().sizeHint().width()
        return widget.widget().minimumSizeHint().width() + bar + 2 * widget.frameWidth() + 4
    return widget.minimumSizeHint().width()


def build_docks(window: QtWidgets.QMainWindow, widgets: dict[str, QtWidgets.QWidget],
                view_menu: QtWidgets.QMenu) -> dict[str, QtWidgets.QDockWidget]:
    """One dock per entry of :data:`DOCKS` holding ``widgets[key]``; each listed in ``view_menu``."""
    window.setDockNestingEnabled(True)
    docks = {}
    feature = QtWidgets.QDockWidget.DockWidgetFeature
    for key, title in DOCKS:
        dock = QtWidgets.QDockWidget(title, window)
        dock.setObjectName(f"{key}Dock")
        dock.setWidget(widgets[key])
        features = feature.DockWidgetMovable | feature.DockWidgetClosable
        if key != "volume":  # the 3D canvas owns an OpenGL context: it stays inside the window
            features |= feature.DockWidgetFloatable
        dock.setFeatures(features)
        view_menu.addAction(dock.toggleViewAction())
        docks[key] = dock
    return docks


def default_layout(window: QtWidgets.QMainWindow, docks: dict[str, QtWidgets.QDockWidget]) -> None:
    """Acquisition on the left (full height); 3D and frames (the pupil a tab behind them) on top;
    timeline and reconstruction below.

    All docks share one dock area, nested with ``splitDockWidget``: separate areas
    (left/top/bottom around no central widget) crept by a few pixels on every
    relayout, i.e. on every live update.
    """
    d = docks
    horizontal, vertical = QtCore.Qt.Orientation.Horizontal, QtCore.Qt.Orientation.Vertical
    for dock in d.values():
        window.removeDockWidget(dock)
    window.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, d["acquisition"])
    window.splitDockWidget(d["acquisition"], d["volume"], horizontal)
    window.splitDockWidget(d["volume"], d["timeline"], vertical)
    window.splitDockWidget(d["volume"], d["frames"], horizontal)
    window.splitDockWidget(d["timeline"], d["reconstruction"], vertical)
    window.tabifyDockWidget(d["frames"], d["pupil"])
    for dock in d.values():
        dock.setFloating(False)
        dock.show()
    d["frames"].raise_()
    size_docks(window, docks)


def size_docks(window: QtWidgets.QMainWindow, docks: dict[str, QtWidgets.QDockWidget]) -> None:
    """Share the window: the acquisition panel a fifth of the width, the 3D view most of the rest."""
    d = docks
    width, height = max(window.width(), 1000), max(window.height(), 600)
    left = max(full_width(d["acquisition"].widget()), int(0.2 * width))
    rest = width - left
    window.resizeDocks([d["acquisition"], d["volume"], d["frames"]], [left, int(0.58 * rest), int(0.42 * rest)],
                       QtCore.Qt.Orientation.Horizontal)
    window.resizeDocks([d["volume"], d["timeline"], d["reconstruction"]], [int(0.62 * height), 40, int(0.25 * height)],
                       QtCore.Qt.Orientation.Vertical)
