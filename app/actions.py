"""The window's actions: each one a small function of the window, declared once with its look.

:data:`ACTIONS` lists every action (text, shortcut, tooltip, icon, what it does);
:func:`install_actions` makes the ``QAction`` objects and puts them in the menus and
the toolbar. To add an action, add an :class:`ActionInfo` here (and, if it belongs in
a menu, its key in :data:`MENUS`); what it does is a function of the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6 import QtCore, QtGui, QtWidgets

from . import style

if TYPE_CHECKING:
    from .main_window import MainWindow


@dataclass(frozen=True)
class ActionInfo:
    """One action of the window.

    Attributes:
        key: name (``window.actions_by_key[key]``); text: menu text; tip: tooltip.
        trigger: what it does, a function of the window.
        shortcut: key sequence (text or a standard key); icon: a standard pixmap name or
            a function returning an icon; checkable: a toggle (Live/Record show the mode).
    """

    key: str
    text: str
    trigger: Callable[[MainWindow], Any]
    tip: str = ""
    shortcut: str | QtGui.QKeySequence.StandardKey | None = None
    icon: str | Callable[[], QtGui.QIcon] | None = None
    checkable: bool = False


def _about(window: MainWindow) -> None:
    from nvplive import __version__

    box = QtWidgets.QMessageBox(window)
    box.setIconPixmap(style.app_icon().pixmap(64, 64))
    box.setWindowTitle("About nvp-live")
    box.setText(
        f"<b>nvp-live {__version__}</b><br>Live 3D refractive index by fluorescence diffraction tomography "
        "with a neural volumetric prior."
    )
    box.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose, True)
    box.show()


ACTIONS: tuple[ActionInfo, ...] = (
    ActionInfo("live", "Live", lambda w: w.start_acquisition(record=False),
               "Acquire and reconstruct live (frames go to a scratch recording)", "F5", "SP_MediaPlay", True),
    ActionInfo("record", "Record", lambda w: w.start_acquisition(record=True),
               "Acquire, reconstruct and save a recording in the chosen folder", "F6",
               lambda: style.dot_icon("#ff4d5e"), True),
    ActionInfo("stop", "Stop", lambda w: w.stop_acquisition(),
               "Finish the current timepoint, reconstruct what is pending and save", "F8", "SP_MediaStop"),
    ActionInfo("open", "Open recording…", lambda w: w.open_recording(), "Open a recording (NAME.fdt folder)",
               QtGui.QKeySequence.StandardKey.Open, "SP_DirOpenIcon"),
    ActionInfo("export_stack", "Export Δn stack (OME-TIFF)…", lambda w: w.export_dn_stack()),
    ActionInfo("export_png", "Save 3D snapshot (PNG)…", lambda w: w.save_snapshot(), "", "Ctrl+P",
               "SP_DialogSaveButton"),
    ActionInfo("export_movie", "Export movie…", lambda w: w.export_movie()),
    ActionInfo("quit", "Quit", lambda w: w.close(), "", QtGui.QKeySequence.StandardKey.Quit),
    ActionInfo("reset_layout", "Reset layout", lambda w: w.default_layout()),
    ActionInfo("about", "About nvp-live", _about),
)

#: Menus and their actions (None: a separator); the View menu also lists the docks.
MENUS: dict[str, tuple[str | None, ...]] = {
    "&File": ("open", None, "export_stack", "export_png", "export_movie", None, "quit"),
    "&Acquisition": ("live", "record", "stop"),
    "&Help": ("about",),
}
#: Toolbar actions (None: a separator).
TOOLBAR: tuple[str | None, ...] = ("live", "record", "stop", None, "open", "export_png")


def _icon(window: QtWidgets.QWidget, icon: str | Callable[[], QtGui.QIcon] | None) -> QtGui.QIcon | None:
    if icon is None:
        return None
    if callable(icon):
        return icon()
    return window.style().standardIcon(getattr(QtWidgets.QStyle.StandardPixmap, icon))


def install_actions(window: MainWindow) -> dict[str, QtGui.QAction]:
    """Create the actions of :data:`ACTIONS`, the menus (File, Acquisition, View, Help) and the toolbar.

    Returns the actions by key; the View menu is ``window.view_menu`` (the docks add
    themselves to it).
    """
    actions: dict[str, QtGui.QAction] = {}
    for info in ACTIONS:
        action = QtGui.QAction(info.text, window)
        icon = _icon(window, info.icon)
        if icon is not None:
            action.setIcon(icon)
        if info.tip:
            action.setToolTip(info.tip)
        if info.shortcut is not None:
            action.setShortcut(QtGui.QKeySequence(info.shortcut))
        action.setCheckable(info.checkable)
        action.triggered.connect(lambda _checked=False, run=info.trigger: run(window))
        actions[info.key] = action

    bar = window.menuBar()
    for title, keys in MENUS.items():
        if title == "&Help":
            window.view_menu.setTitle("&View")
            bar.addMenu(window.view_menu)
        menu = bar.addMenu(title)
        for key in keys:
            if key is None:
                menu.addSeparator()
            else:
                menu.addAction(actions[key])

    toolbar = window.addToolBar("Main")
    toolbar.setObjectName("mainToolbar")
    toolbar.setMovable(False)
    toolbar.setIconSize(QtCore.QSize(16, 16))
    toolbar.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    for key in TOOLBAR:
        if key is None:
            toolbar.addSeparator()
        else:
            toolbar.addAction(actions[key])
    spacer = QtWidgets.QWidget()
    toolbar.addWidget(spacer)
    spacer.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Preferred)
    toolbar.addWidget(window.mode_label)
    return actions
