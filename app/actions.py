"""The window's actions: each one a small function of the window, declared once with its look.

:data:`ACTIONS` lists every action (text, shortcut, tooltip, icon, what it does);
:func:`install_actions` makes the ``QAction`` objects and puts them in the menus and
the toolbar. To add an action, add an :class:`ActionInfo` here (and, if it belongs in
a menu, its key in :data:`MENUS`); what it does is a function of the window. The
exports (Δn stack, 3D snapshot, movie) are such functions and live here too; the
window offers them as its methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from nvplive.acquisition.ome import export_dn_stack as write_dn_stack
from nvplive.acquisition.recording import Recording
from nvplive.errors import NvpLiveError

from . import style
from .export import mp4_available
from .movie import MovieExport

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


def ask_save(window: MainWindow, caption: str, suggested: str, file_filter: str) -> Path | None:
    """A save dialog starting in the last export folder; None when cancelled."""
    start = window.settings.value("paths/last_export", str(Path.home()), type=str)
    chosen, _ = QtWidgets.QFileDialog.getSaveFileName(window, caption, str(Path(start) / suggested), file_filter)
    if not chosen:
        return None
    window.settings.setValue("paths/last_export", str(Path(chosen).parent))
    return Path(chosen)


def export_dn_stack(window: MainWindow, path: str | Path | None = None, *, all_timepoints: bool = True) -> None:
    """Write Δn as OME-TIFF in a worker thread: every stored volume of the shown recording (TZYX), else the shown volume (ZYX)."""
    meta, recording = window.shown_meta, window.recording_path
    if meta is None or recording is None:
        window.report_error("Export Δn stack", "Nothing to export yet: acquire or open a recording first.")
        return
    if path is None:
        path = ask_save(window, "Export Δn stack", f"{recording.stem}_dn.ome.tif", "OME-TIFF (*.ome.tif)")
        if path is None:
            return
    t_shown = window.model.view.volume_t
    interval = meta.extra.get("interval_s") if isinstance(meta.extra, dict) else None

    def work() -> Path:
        with Recording.open(recording) as rec:
            ts = list(rec.volume_timepoints)
            if not ts:
                raise NvpLiveError(f"{recording} has no reconstructed volumes yet.")
            if not all_timepoints:
                ts = [t_shown if t_shown in ts else ts[-1]]
            stack = np.stack([rec.volume(t) for t in ts]) if len(ts) > 1 else rec.volume(ts[0])
        return write_dn_stack(
            path, stack, meta.geometry.voxel_um_zyx, n_medium=meta.optics.n_medium,
            interval_s=float(interval) if isinstance(interval, (int, float)) else None, timepoints=ts,
            name=recording.stem, description=f"Recording {recording}.",
        )

    def done(written: Path) -> None:
        window.statusBar().showMessage(f"Δn stack written: {written}", 10000)
        window.acquisition_panel.log(f"Δn stack written: {written}", "ok")

    window.statusBar().showMessage(f"Exporting Δn to {path}…")
    window.run_in_background("Export Δn stack", work, done)


def save_snapshot(window: MainWindow, path: str | Path | None = None) -> Path | None:
    """Save the 3D view as a PNG; the path, or None (cancelled or failed, reported)."""
    if path is None:
        path = ask_save(window, "Save 3D snapshot", "nvplive_3d.png", "PNG image (*.png)")
        if path is None:
            return None
    path = Path(path)
    try:
        window.volume_view.save_png(path)
    except Exception as exc:
        window.report_error("Save 3D snapshot", exc)
        return None
    window.statusBar().showMessage(f"Snapshot written: {path}", 10000)
    window.acquisition_panel.log(f"3D snapshot written: {path}", "ok")
    return path


def export_movie(window: MainWindow, path: str | Path | None = None, fps: float | None = None) -> MovieExport | None:
    """Render every stored volume of the shown recording into a movie (MP4, animated PNG or PNG frames)."""
    if window.movie is not None:
        return window.movie
    recording = window.recording_path
    if recording is None:
        window.report_error("Export movie", "Nothing to export yet: acquire or open a recording first.")
        return None
    if window.acquiring:
        window.report_error("Export movie", "Stop the acquisition before exporting a movie.")
        return None
    if path is None:
        filters = "Animated PNG (*.png);;Folder of PNG frames (*)"
        if mp4_available():
            filters = "MP4 video (*.mp4);;" + filters
        path = ask_save(window, "Export movie", f"{recording.stem}_3d.png", filters)
        if path is None:
            return None
    try:
        movie = MovieExport(window.volume_view, recording, Path(path), fps or window.model.view.fps, window)
    except Exception as exc:
        window.report_error("Export movie", exc)
        return None
    resume_t = window.timeline.current

    def finished(written: Path | None, message: str, failed: bool) -> None:
        window.movie = None
        window.live.paused = False
        if failed:
            window.report_error("Export movie", message)
        elif written is None:
            window.statusBar().showMessage(message, 5000)
        else:
            window.statusBar().showMessage(f"Movie written: {written}", 10000)
            window.acquisition_panel.log(f"Movie written: {written}", "ok")
        window.request_replay(resume_t)
        window.update_actions()

    window.movie = movie
    window.live.paused = True
    movie.finished.connect(finished)
    window.statusBar().showMessage(f"Rendering movie {path}…")
    movie.start()
    window.update_actions()
    return movie


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
    ActionInfo("calibrate_pupil", "Calibrate pupil", lambda w: w.calibrate_pupil(),
               "Acquire a bead z-stack through the MDA and fit the detection pupil to it (the live "
               "reconstruction renders through it from its next timepoint)"),
    ActionInfo("load_pupil", "Load pupil (pupil.json)…", lambda w: w.load_pupil(),
               "Use a pupil file for the live reconstruction (kept for this instrument's next session)"),
    ActionInfo("save_pupil", "Save pupil (pupil.json)…", lambda w: w.save_pupil()),
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
    "&File": ("open", None, "export_stack", "export_png", "export_movie", "load_pupil", "save_pupil", None, "quit"),
    "&Acquisition": ("live", "record", "stop", None, "calibrate_pupil"),
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
