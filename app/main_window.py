"""The nvp-live main window: live 3D refractive index at a fluorescence microscope.

Dockable panels: Acquisition (microscope, time-lapse, Live/Record/Stop), Frames
(camera frames of the current timepoint), Reconstruction (settings, loss and
latency), 3D (Δn volume) and Timeline (scrub/replay a recording, offline
reconstruction). The GUI thread only draws: the acquisition, the reconstruction,
replay loading, microscope loading, offline reconstruction and exports run in
worker threads and hand their results over through a :class:`~.session.Mailbox`
that a QTimer drains at ~25 Hz (newest frame/volume only). Errors are shown in
the window (a non-blocking message box and the status bar) and logged.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from nvplive.acquisition.demo import make_reconstructor
from nvplive.acquisition.recording import Recording
from nvplive.errors import NvpLiveError
from nvplive.recon.reconstructor import ReconConfig, select_device

from . import style
from .export import BackgroundMovieWriter, export_dn_stack, mp4_available, open_movie
from .frames_view import FramesView
from .panels import DEMO_SOURCE, HARDWARE_SOURCE, AcquisitionPanel, ReconstructionPanel, TimelinePanel
from .session import (
    CONTINUOUS_TIMEPOINTS,
    LATENCY_MODE_CHECK_EVERY,
    LATENCY_MODE_ITERATION_CAP,
    DemoOptions,
    LiveReconstructor,
    LiveSession,
    Mailbox,
    Microscope,
    OfflineReconstruction,
    RecordingLoader,
    ReplayItem,
    SessionEnd,
    VolumeUpdate,
    device_status,
    load_demo_microscope,
    load_hardware_microscope,
    remove_scratch_recording,
    suggested_demo_interval,
)
from .volume_view import VolumeView

logger = logging.getLogger("nvplive.app")

#: Reconstruction settings of the live app before the user saved any: a short cold start
#: and a 1 s latency budget per timepoint (quality settings stay ReconConfig's defaults).
LIVE_DEFAULT_CONFIG = replace(
    ReconConfig(), iterations=120, time_budget_s=1.0, warm_iterations=LATENCY_MODE_ITERATION_CAP,
    check_every=LATENCY_MODE_CHECK_EVERY, stop_on_plateau=False,
)
ORGANISATION = "nvp-live"
APPLICATION = "nvp-live"
DRAIN_INTERVAL_MS = 40  # 25 Hz: live views draw at most this often
STATUS_INTERVAL_MS = 500
RESOURCES = Path(__file__).resolve().parent.parent / "resources"

WINDOW_STYLESHEET = f"""
QMainWindow::separator {{ background: #0d1014; width: 3px; height: 3px; }}
QDockWidget {{ color: {style.FOREGROUND}; font-weight: 600; }}
QDockWidget::title {{ background: #20262e; padding: 4px 8px; border-bottom: 1px solid #2c343f; }}
QLabel#sectionTitle {{ color: {style.ACCENT}; font-size: 8pt; font-weight: 700; letter-spacing: 1px;
    padding: 4px 0 0 0; border-bottom: 1px solid #2c343f; }}
QLabel#stateLabel {{ color: {style.FOREGROUND}; background: #141920; border: 1px solid #2a313b;
    border-radius: 3px; padding: 4px 6px; }}
QToolButton#liveButton, QToolButton#recordButton, QToolButton#stopButton {{
    font-weight: 600; padding: 4px 8px; border-radius: 4px; border: 1px solid #323b47; background: #232a33; }}
QToolButton#liveButton:checked {{ background: #1f5f3a; border-color: #3cff8f; }}
QToolButton#recordButton:checked {{ background: #6a1f25; border-color: #ff4d5e; }}
QToolButton:disabled {{ color: {style.MUTED}; }}
QPlainTextEdit#activity {{ background: {style.BACKGROUND}; border: 1px solid #2a313b; font-size: 8pt; }}
QLineEdit, QTreeWidget {{ background: {style.BACKGROUND}; border: 1px solid #323b47; border-radius: 3px; }}
QTreeWidget {{ alternate-background-color: #161b22; }}
QHeaderView::section {{ background: #20262e; color: {style.MUTED}; border: none; padding: 2px 4px; }}
QPushButton {{ background: #232a33; border: 1px solid #323b47; border-radius: 3px; padding: 3px 10px; }}
QPushButton:hover, QToolButton:hover {{ border-color: {style.ACCENT}; }}
QProgressBar {{ background: {style.BACKGROUND}; border: 1px solid #323b47; border-radius: 3px; text-align: center;
    color: {style.FOREGROUND}; }}
QProgressBar::chunk {{ background: #245a86; }}
QStatusBar {{ background: #161b21; border-top: 1px solid #2c343f; }}
QStatusBar QLabel {{ color: {style.FOREGROUND}; padding: 0 8px; border-left: 1px solid #2c343f; }}
QToolBar {{ background: #1d232b; border-bottom: 1px solid #2c343f; spacing: 4px; padding: 2px; }}
QSlider::groove:horizontal {{ height: 4px; background: #2c343f; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {style.ACCENT}; width: 12px; margin: -5px 0; border-radius: 6px; }}
QSlider::sub-page:horizontal {{ background: #245a86; border-radius: 2px; }}
"""


def app_icon() -> QtGui.QIcon:
    """The application icon (resources/nvplive.svg)."""
    return QtGui.QIcon(str(RESOURCES / "nvplive.svg"))


def _dot_icon(color: str, size: int = 16) -> QtGui.QIcon:
    pix = QtGui.QPixmap(size, size)
    pix.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pix)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setBrush(QtGui.QColor(color))
    painter.setPen(QtCore.Qt.PenStyle.NoPen)
    painter.drawEllipse(QtCore.QRectF(2.5, 2.5, size - 5, size - 5))
    painter.end()
    return QtGui.QIcon(pix)


def default_data_dir() -> Path:
    """Where logs (and by default recordings) go: the platform's app data folder."""
    location = QtCore.QStandardPaths.writableLocation(QtCore.QStandardPaths.StandardLocation.AppLocalDataLocation)
    return Path(location) if location else Path.home() / ".nvp-live"


def setup_logging(log_dir: Path | None = None) -> Path | None:
    """Log the ``nvplive`` loggers to ``<log_dir>/nvplive.log`` (rotating); returns the file."""
    from logging.handlers import RotatingFileHandler

    root = logging.getLogger("nvplive")
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        if isinstance(handler, RotatingFileHandler):
            return Path(handler.baseFilename)
    folder = Path(log_dir) if log_dir is not None else default_data_dir() / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(folder / "nvplive.log", maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return Path(handler.baseFilename)


class MovieExport(QtCore.QObject):
    """Renders every stored volume of a recording in the 3D view and writes a movie.

    A thread reads the volumes ahead (bounded queue); a GUI timer renders one per
    tick and hands the picture to a :class:`BackgroundMovieWriter`, so the window
    stays responsive.
    """

    finished = QtCore.Signal(object, str)  # path or None, message

    def __init__(self, window: "MainWindow", recording: Path, path: Path, fps: float) -> None:
        super().__init__(window)
        import queue

        self.window = window
        self.recording = Path(recording)
        self.path = Path(path)
        self.fps = float(fps)
        self.done = 0
        self.total = 0
        self._queue: queue.Queue = queue.Queue(maxsize=3)
        self._cancel = threading.Event()
        self._writer: BackgroundMovieWriter | None = None
        self._meta = None
        with Recording.open(self.recording) as rec:
            self.timepoints = list(rec.volume_timepoints)
            self._meta = rec.meta
        if not self.timepoints:
            raise NvpLiveError(f"{self.recording} has no reconstructed volumes to make a movie of.")
        self.total = len(self.timepoints)
        self._writer = BackgroundMovieWriter(open_movie(self.path, self.fps))
        self._reader = threading.Thread(target=self._read, name="nvplive-movie-read", daemon=True)
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(5)
        self._timer.timeout.connect(self._step)

    def start(self) -> None:
        self._reader.start()
        self._timer.start()

    def cancel(self) -> None:
        self._cancel.set()

    def _read(self) -> None:
        try:
            with Recording.open(self.recording) as rec:
                for t in self.timepoints:
                    if self._cancel.is_set():
                        break
                    self._put((t, rec.volume(t)))
        except Exception as exc:
            self._put(("error", str(exc)))
        self._put(None)

    def _put(self, item) -> None:
        import queue

        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _step(self) -> None:
        import queue

        if self._cancel.is_set():
            self._end(None, "Movie export cancelled.")
            return
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return
        if item is None:
            self._end(self.path, "")
            return
        t, dn = item
        if t == "error":
            self._end(None, f"Reading {self.recording} failed: {dn}")
            return
        view = self.window.volume_view
        meta = self._meta
        view.set_volume(dn, meta.geometry.voxel_um_zyx, meta.optics.n_medium)
        if self.done == 0:
            view.set_clim(*view.clim)  # one colour scale for the whole movie
        try:
            self._writer.append(view.snapshot())
        except Exception as exc:
            self._end(None, f"Writing {self.path} failed: {exc}")
            return
        self.done += 1

    def _end(self, path: Path | None, message: str) -> None:
        self._timer.stop()
        self._cancel.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as exc:
                path, message = None, f"Writing {self.path} failed: {exc}"
        self.window.volume_view.set_auto_clim(True)
        self.finished.emit(path, message)


class MainWindow(QtWidgets.QMainWindow):
    """The nvp-live main window.

    Args:
        demo: start on the simulated microscope (else on the Micro-Manager configuration).
        device: reconstruction device (``auto``, ``cpu``, ``cuda``); None keeps the saved choice.
        timepoints: timepoints per acquisition (None: the saved value; 0: continuous).
        out: folder (or ``NAME.fdt``) where Record writes.
        mm_config, settings_file: Micro-Manager configuration and FDT settings (hardware).
        demo_options: size and physics of the simulated microscope.
        recon_config: base reconstruction settings (the panel's saved values override
            method, budgets and τ unless ``recon_config`` is given explicitly).
        interval_s: acquisition interval (None: saved value, or a suggestion for the demo).
        qsettings: where settings persist (default: ``QSettings("nvp-live", "nvp-live")``).
        scratch_dir: folder for the scratch recordings of Live (default: a temp folder).
        durable: fsync recordings as they are written.
    """

    def __init__(
        self,
        *,
        demo: bool = True,
        device: str | None = None,
        timepoints: int | None = None,
        out: Path | None = None,
        mm_config: Path | None = None,
        settings_file: Path | None = None,
        demo_options: DemoOptions | None = None,
        recon_config: ReconConfig | None = None,
        interval_s: float | None = None,
        qsettings: QtCore.QSettings | None = None,
        scratch_dir: Path | None = None,
        durable: bool = True,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("nvp-live")
        self.setWindowIcon(app_icon())
        self.setStyleSheet(WINDOW_STYLESHEET)
        self.settings = qsettings if qsettings is not None else QtCore.QSettings(ORGANISATION, APPLICATION)
        self.demo_options = demo_options or DemoOptions()
        self._base_config = recon_config or LIVE_DEFAULT_CONFIG
        self._scratch_dir = Path(scratch_dir) if scratch_dir is not None else Path(
            tempfile.mkdtemp(prefix="nvplive-live-")
        )
        self._own_scratch = scratch_dir is None
        self._durable = durable
        self._out = Path(out) if out is not None else None

        self.mailbox = Mailbox()
        self.loader = RecordingLoader(self.mailbox)
        self.microscope: Microscope | None = None
        self.reconstructor: LiveReconstructor | None = None
        self.session: LiveSession | None = None
        self.offline: OfflineReconstruction | None = None
        self.movie: MovieExport | None = None
        self.recording_path: Path | None = None
        self._shown_meta = None
        self._live_count = 0
        self._loading = False
        self._following = True
        self._closing = False
        self._shut_down = False
        self._tp_times: deque[float] = deque(maxlen=8)
        self._latency_s: float | None = None
        self._skipped = 0
        self._frames_written = 0
        self._losses: list[float] = []
        self._recon_error_shown = False
        self._auto_interval_pending = False
        self._volume_t: int | None = None
        self._last_session_end: SessionEnd | None = None
        self._frames_t: int | None = None
        self.error_box: QtWidgets.QMessageBox | None = None
        self.errors: list[str] = []
        self._tasks: dict[int, Callable[[Any], None]] = {}
        self._task_ids = 0
        self._shown_once = False
        self._state_restored = False

        self._build_views()
        self._build_actions()
        self._build_docks()
        self._build_status_bar()
        self._restore_settings(
            demo=demo, device=device, timepoints=timepoints, mm_config=mm_config, settings_file=settings_file,
            recon_config=recon_config, interval_s=interval_s,
        )
        self._connect()
        self._update_actions()

        self._drain_timer = QtCore.QTimer(self)
        self._drain_timer.setInterval(DRAIN_INTERVAL_MS)
        self._drain_timer.timeout.connect(self._drain)
        self._drain_timer.start()
        self._status_timer = QtCore.QTimer(self)
        self._status_timer.setInterval(STATUS_INTERVAL_MS)
        self._status_timer.timeout.connect(self._update_status)
        self._status_timer.start()
        self._update_status()

    # ================================================================ building
    def _build_views(self) -> None:
        self.frames_view = FramesView()
        self.volume_view = VolumeView()
        self.acquisition_panel = AcquisitionPanel()
        self.recon_panel = ReconstructionPanel()
        self.timeline = TimelinePanel()

    def _build_actions(self) -> None:
        st = self.style()
        sp = QtWidgets.QStyle.StandardPixmap
        self.live_action = QtGui.QAction(st.standardIcon(sp.SP_MediaPlay), "Live", self)
        self.live_action.setToolTip("Acquire and reconstruct live (frames go to a scratch recording)")
        self.live_action.setShortcut(QtGui.QKeySequence("F5"))
        self.live_action.setCheckable(True)
        self.record_action = QtGui.QAction(_dot_icon("#ff4d5e"), "Record", self)
        self.record_action.setToolTip("Acquire, reconstruct and save a recording in the chosen folder")
        self.record_action.setShortcut(QtGui.QKeySequence("F6"))
        self.record_action.setCheckable(True)
        self.stop_action = QtGui.QAction(st.standardIcon(sp.SP_MediaStop), "Stop", self)
        self.stop_action.setToolTip("Finish the current timepoint, reconstruct what is pending and save")
        self.stop_action.setShortcut(QtGui.QKeySequence("F8"))
        self.open_action = QtGui.QAction(st.standardIcon(sp.SP_DirOpenIcon), "Open recording…", self)
        self.open_action.setShortcut(QtGui.QKeySequence.StandardKey.Open)
        self.export_stack_action = QtGui.QAction("Export Δn stack (OME-TIFF)…", self)
        self.export_png_action = QtGui.QAction(st.standardIcon(sp.SP_DialogSaveButton), "Save 3D snapshot (PNG)…", self)
        self.export_png_action.setShortcut(QtGui.QKeySequence("Ctrl+P"))
        self.export_movie_action = QtGui.QAction("Export movie…", self)
        self.quit_action = QtGui.QAction("Quit", self)
        self.quit_action.setShortcut(QtGui.QKeySequence.StandardKey.Quit)
        self.reset_layout_action = QtGui.QAction("Reset layout", self)
        self.about_action = QtGui.QAction("About nvp-live", self)

        panel = self.acquisition_panel
        panel.live_button.setDefaultAction(self.live_action)
        panel.record_button.setDefaultAction(self.record_action)
        panel.stop_button.setDefaultAction(self.stop_action)

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_stack_action)
        file_menu.addAction(self.export_png_action)
        file_menu.addAction(self.export_movie_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        acq_menu = menu.addMenu("&Acquisition")
        for action in (self.live_action, self.record_action, self.stop_action):
            acq_menu.addAction(action)
        self.view_menu = menu.addMenu("&View")
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.about_action)

        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("mainToolbar")
        toolbar.setMovable(False)
        toolbar.setIconSize(QtCore.QSize(16, 16))
        toolbar.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        for action in (self.live_action, self.record_action, self.stop_action):
            toolbar.addAction(action)
        toolbar.addSeparator()
        toolbar.addAction(self.open_action)
        toolbar.addAction(self.export_png_action)
        spacer = QtWidgets.QWidget()
        toolbar.addWidget(spacer)
        spacer.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Preferred)
        self.mode_label = QtWidgets.QLabel("")
        toolbar.addWidget(self.mode_label)
        self.mode_label.setObjectName("readout")

    def _dock(self, title: str, name: str, widget: QtWidgets.QWidget, *, floatable: bool = True) -> QtWidgets.QDockWidget:
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        features = QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetClosable
        if floatable:
            features |= QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetFloatable
        dock.setFeatures(features)
        self.view_menu.addAction(dock.toggleViewAction())
        return dock

    def _build_docks(self) -> None:
        self.setDockNestingEnabled(True)
        self.acquisition_dock = self._dock("Acquisition", "acquisitionDock", self._scrolling(self.acquisition_panel))
        self.recon_dock = self._dock("Reconstruction", "reconstructionDock", self.recon_panel)
        # The 3D canvas owns an OpenGL context: it stays inside the window (no floating).
        self.volume_dock = self._dock("3D", "volumeDock", self.volume_view, floatable=False)
        self.frames_dock = self._dock("Frames", "framesDock", self.frames_view)
        self.timeline_dock = self._dock("Timeline", "timelineDock", self.timeline)
        self.view_menu.addSeparator()
        self.view_menu.addAction(self.reset_layout_action)
        self._default_layout()

    def _scrolling(self, widget: QtWidgets.QWidget) -> QtWidgets.QScrollArea:
        area = QtWidgets.QScrollArea()
        area.setWidget(widget)
        area.setWidgetResizable(True)
        area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        area.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        return area

    def _default_layout(self) -> None:
        """Acquisition on the left (full height); 3D and frames on top; timeline and reconstruction below.

        All docks share one dock area, nested with ``splitDockWidget``: separate areas
        (left/top/bottom around no central widget) crept by a few pixels on every
        relayout, i.e. on every live update.
        """
        area = QtCore.Qt.DockWidgetArea.LeftDockWidgetArea
        horizontal, vertical = QtCore.Qt.Orientation.Horizontal, QtCore.Qt.Orientation.Vertical
        docks = (self.acquisition_dock, self.recon_dock, self.volume_dock, self.frames_dock, self.timeline_dock)
        for dock in docks:
            self.removeDockWidget(dock)
        self.addDockWidget(area, self.acquisition_dock)
        self.splitDockWidget(self.acquisition_dock, self.volume_dock, horizontal)
        self.splitDockWidget(self.volume_dock, self.timeline_dock, vertical)
        self.splitDockWidget(self.volume_dock, self.frames_dock, horizontal)
        self.splitDockWidget(self.timeline_dock, self.recon_dock, vertical)
        for dock in docks:
            dock.setFloating(False)
            dock.show()
        self._size_docks()

    def _size_docks(self) -> None:
        width = max(self.width(), 1000)
        height = max(self.height(), 600)
        left = max(290, int(0.2 * width))
        rest = width - left
        self.resizeDocks(
            [self.acquisition_dock, self.volume_dock, self.frames_dock],
            [left, int(0.58 * rest), int(0.42 * rest)],
            QtCore.Qt.Orientation.Horizontal,
        )
        self.resizeDocks([self.volume_dock, self.timeline_dock, self.recon_dock],
                         [int(0.62 * height), 40, int(0.25 * height)], QtCore.Qt.Orientation.Vertical)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            if not self._state_restored:
                QtCore.QTimer.singleShot(0, self, self._size_docks)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        bar.setSizeGripEnabled(False)
        self.acq_rate_label = QtWidgets.QLabel("Acquisition —")
        self.latency_label = QtWidgets.QLabel("Latency —")
        self.skipped_label = QtWidgets.QLabel("Skipped 0")
        self.device_label = QtWidgets.QLabel("Device —")
        for label, tip in (
            (self.acq_rate_label, "Acquisition rate over the last timepoints"),
            (self.latency_label, "Reconstruction latency: from a timepoint's last frame to its volume"),
            (self.skipped_label, "Timepoints the reconstruction skipped because a newer one was waiting"),
            (self.device_label, "Reconstruction device and its memory"),
        ):
            label.setToolTip(tip)
            bar.addPermanentWidget(label)

    def _connect(self) -> None:
        self.live_action.triggered.connect(lambda: self.start_acquisition(record=False))
        self.record_action.triggered.connect(lambda: self.start_acquisition(record=True))
        self.stop_action.triggered.connect(self.stop_acquisition)
        self.open_action.triggered.connect(lambda: self.open_recording())
        self.export_stack_action.triggered.connect(lambda: self.export_dn_stack())
        self.export_png_action.triggered.connect(lambda: self.save_snapshot())
        self.export_movie_action.triggered.connect(lambda: self.export_movie())
        self.quit_action.triggered.connect(self.close)
        self.reset_layout_action.triggered.connect(self._default_layout)
        self.about_action.triggered.connect(self._about)
        self.acquisition_panel.sourceChanged.connect(self._on_source_changed)
        self.acquisition_panel.loadRequested.connect(lambda: self.prepare_microscope())
        self.recon_panel.settingsChanged.connect(self.apply_reconstruction_settings)
        self.recon_panel.resetRequested.connect(self._on_reset_requested)
        self.timeline.timepointChanged.connect(self._on_timeline_t)
        self.timeline.followToggled.connect(self._on_follow)
        self.timeline.openRequested.connect(lambda: self.open_recording())
        self.timeline.reconstructRequested.connect(lambda: self.reconstruct_recording())
        self.timeline.cancelRequested.connect(self._cancel_offline)
        self.timeline.kindChanged.connect(lambda _k: self._request_replay(self.timeline.current))

    # ================================================================ settings
    def _restore_settings(
        self, *, demo, device, timepoints, mm_config, settings_file, recon_config, interval_s,
    ) -> None:
        s = self.settings
        panel = self.acquisition_panel
        panel.set_source(DEMO_SOURCE if demo else HARDWARE_SOURCE)
        panel.mm_config.set_text(str(mm_config) if mm_config else s.value("acquisition/mm_config", "", type=str))
        panel.settings_file.set_text(
            str(settings_file) if settings_file else s.value("acquisition/settings_file", "", type=str)
        )
        panel.exposure.setValue(s.value("acquisition/exposure_ms", 20.0, type=float))
        panel.views.blockSignals(True)
        panel.views.setValue(s.value("acquisition/views", 7, type=int))
        panel.views.blockSignals(False)
        if interval_s is not None:
            panel.interval.setValue(float(interval_s))
        elif s.contains("acquisition/interval_s"):
            panel.interval.setValue(s.value("acquisition/interval_s", 0.0, type=float))
        else:
            panel.interval.setValue(0.0)
            self._auto_interval_pending = demo
        if timepoints is not None:
            panel.timepoints.setValue(0 if timepoints >= CONTINUOUS_TIMEPOINTS else int(timepoints))
        else:
            panel.timepoints.setValue(s.value("acquisition/timepoints", 0, type=int))
        save_dir = s.value("acquisition/save_dir", str(Path.home() / "nvp-live-recordings"), type=str)
        if self._out is not None:
            save_dir = str(self._out.parent if self._out.suffix == ".fdt" else self._out)
        panel.save_dir.set_text(save_dir)

        config = self._base_config
        if recon_config is None and s.contains("reconstruction/method"):
            saved_latency = s.value("reconstruction/latency_s", 0.0, type=float)
            config = replace(
                config,
                method=s.value("reconstruction/method", config.method, type=str),
                iterations=s.value("reconstruction/cold_iterations", config.iterations, type=int),
                warm_iterations=s.value("reconstruction/warm_iterations", config.warm_iterations, type=int),
                tv_weight=s.value("reconstruction/tv_weight", config.tv_weight, type=float),
                time_budget_s=saved_latency if s.value("reconstruction/budget_mode", "iterations", type=str) == "latency" else None,
            )
        dev = device or s.value("reconstruction/device", "auto", type=str)
        if dev.startswith("cuda"):
            try:
                select_device(dev)
            except NvpLiveError as exc:
                self.errors.append(str(exc))
                QtCore.QTimer.singleShot(0, self, lambda m=str(exc): self.report_error("Reconstruction device", m))
                dev = "cpu"
        self.recon_panel.set_config(config, device=dev, warm_start=s.value("reconstruction/warm_start", True, type=bool))
        # The budget not in use shows its saved value, ready when the user switches to it.
        if config.time_budget_s is None:
            self.recon_panel.latency.setValue(s.value("reconstruction/latency_s", 1.0, type=float))
        else:
            self.recon_panel.warm_iterations.setValue(
                s.value("reconstruction/warm_iterations", ReconConfig().warm_iterations, type=int)
            )
        self._base_config = config
        mode = s.value("view/render_mode", "mip", type=str)
        try:
            self.volume_view.set_mode(mode)
        except ValueError:
            pass
        self.timeline.fps.setValue(s.value("timeline/fps", 5, type=int))
        geometry = s.value("window/geometry")
        if isinstance(geometry, QtCore.QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        state = s.value("window/state")
        if isinstance(state, QtCore.QByteArray) and not state.isEmpty():
            self._state_restored = bool(self.restoreState(state))
        self._update_mode_label()

    def save_settings(self) -> None:
        """Write the panels' values, the window geometry and the dock layout to QSettings."""
        s = self.settings
        panel = self.acquisition_panel
        s.setValue("acquisition/source", panel.source)
        s.setValue("acquisition/mm_config", panel.mm_config.text())
        s.setValue("acquisition/settings_file", panel.settings_file.text())
        s.setValue("acquisition/exposure_ms", panel.exposure.value())
        s.setValue("acquisition/views", panel.views.value())
        s.setValue("acquisition/interval_s", panel.interval.value())
        s.setValue("acquisition/timepoints", panel.timepoints.value())
        s.setValue("acquisition/save_dir", panel.save_dir.text())
        rp = self.recon_panel
        s.setValue("reconstruction/method", rp.method.currentData())
        s.setValue("reconstruction/budget_mode", rp.budget_mode.currentData())
        s.setValue("reconstruction/warm_iterations", rp.warm_iterations.value())
        s.setValue("reconstruction/latency_s", rp.latency.value())
        s.setValue("reconstruction/cold_iterations", rp.cold_iterations.value())
        s.setValue("reconstruction/tv_weight", rp.tv_weight.value())
        s.setValue("reconstruction/device", rp.device_name)
        s.setValue("reconstruction/warm_start", rp.warm_start.isChecked())
        s.setValue("view/render_mode", self.volume_view.mode)
        s.setValue("timeline/fps", self.timeline.fps.value())
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.sync()

    # ================================================================ errors
    def report_error(self, title: str, message: str | BaseException, *, exc: BaseException | None = None) -> None:
        """Show an error in the window (non-blocking message box, status bar) and log it."""
        if isinstance(message, BaseException):
            exc = exc or message
            message = str(message) or type(message).__name__
        text = str(message)
        self.errors.append(text)
        if exc is not None and not isinstance(exc, NvpLiveError):
            logger.error("%s: %s", title, text, exc_info=(type(exc), exc, exc.__traceback__))
        else:
            logger.error("%s: %s", title, text)
        self.statusBar().showMessage(f"{title}: {text}", 15000)
        if self._closing:
            return
        self.acquisition_panel.log(f"{title}: {text}", "error")
        box = self.error_box
        if box is not None and box.isVisible():
            box.setText(box.text() + "\n\n" + f"{title}: {text}")
            return
        box = QtWidgets.QMessageBox(self)
        box.setIcon(QtWidgets.QMessageBox.Icon.Warning)
        box.setWindowTitle(f"nvp-live — {title}")
        box.setText(text)
        box.setStandardButtons(QtWidgets.QMessageBox.StandardButton.Ok)
        box.setWindowModality(QtCore.Qt.WindowModality.NonModal)
        box.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose, True)
        box.finished.connect(lambda _r, b=box: self._forget_box(b))
        self.error_box = box
        box.show()

    def _forget_box(self, box: QtWidgets.QMessageBox) -> None:
        if self.error_box is box:
            self.error_box = None

    def _run_in_background(self, label: str, fn: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        """Run ``fn`` in a thread; ``on_done(result)`` runs in the GUI thread; errors are reported."""
        self._task_ids += 1
        task_id = self._task_ids
        self._tasks[task_id] = on_done

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:  # shown to the user, never lost in a thread
                logger.exception("%s failed", label)
                self.mailbox.post("task_error", task_id, label, exc)
            else:
                self.mailbox.post("task_done", task_id, result)

        threading.Thread(target=run, name=f"nvplive-{label.lower().replace(' ', '-')}", daemon=True).start()

    # ================================================================ microscope
    def _microscope_key(self) -> tuple:
        panel = self.acquisition_panel
        if panel.source == DEMO_SOURCE:
            return ("demo", panel.views.value(), self.demo_options)
        return ("hw", panel.mm_config.text(), panel.settings_file.text())

    def _on_source_changed(self) -> None:
        self._update_mode_label()
        if self.session is None and self.microscope is not None and self.microscope.key != self._microscope_key():
            self.acquisition_panel.microscope_label.setText("changed: loads on Live/Record")

    def prepare_microscope(self, then: Callable[[], None] | None = None) -> None:
        """Load the microscope (and its reconstructor) in a worker thread, then call ``then``."""
        if self._loading:
            return
        key = self._microscope_key()
        panel = self.acquisition_panel
        if key[0] == "hw" and (not key[1] or not key[2]):
            self.report_error(
                "Microscope", "Choose a Micro-Manager configuration (.cfg) and an FDT settings file (.json) first."
            )
            return
        current = self.microscope if self.microscope is not None and self.microscope.key == key else None
        views, exposure = panel.views.value(), panel.exposure.value()
        config = replace(self._base_config, **self.recon_panel.config_changes())
        device, warm = self.recon_panel.device_name, self.recon_panel.warm_start.isChecked()
        reconstructor = self.reconstructor if current is not None else None
        want_interval = self._auto_interval_pending and key[0] == "demo"
        options = self.demo_options

        def load() -> tuple:
            microscope = current
            if microscope is None:
                if key[0] == "demo":
                    microscope = load_demo_microscope(views, exposure, options)
                else:
                    microscope = load_hardware_microscope(Path(key[1]), Path(key[2]))
            recon = reconstructor
            if recon is None:
                info = microscope.info
                recon = LiveReconstructor(
                    lambda cfg, dev: make_reconstructor(info, cfg, dev), config, device, warm_start=warm
                )
            interval = suggested_demo_interval(microscope) if want_interval else None
            return microscope, recon, interval

        self._loading = True
        self._update_actions()
        panel.state_label.setText("Loading the microscope…")
        self.statusBar().showMessage("Loading the microscope…")
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.BusyCursor)

        def done(result: tuple | None) -> None:
            QtWidgets.QApplication.restoreOverrideCursor()
            self._loading = False
            if result is None:
                panel.state_label.setText("Microscope not loaded")
                self._update_actions()
                return
            microscope, recon, interval = result
            if self.microscope is not None and self.microscope is not microscope:
                self.microscope.close()
            self.microscope = microscope
            if recon is not self.reconstructor:
                self.reconstructor = recon
                self._losses = []
                self.recon_panel.loss_plot.clear_data()
            if interval is not None:
                self._auto_interval_pending = False
                panel.interval.setValue(interval)
            info = microscope.info
            panel.set_sources(list(info.presets), info.sources_um_xyz)
            if self._volume_t is None:
                # The empty volume's box and µm axes right away: the user sees the field of
                # view, and the first reconstruction only uploads a texture (no stall then).
                geometry = info.geometry
                self.volume_view.set_volume(
                    np.zeros(geometry.shape_zyx, np.float32), geometry.voxel_um_zyx, info.optics.n_medium
                )
                self.volume_view.canvas.render()
            if not microscope.demo:
                panel.views.blockSignals(True)
                panel.views.setValue(info.n_views)
                panel.views.blockSignals(False)
            panel.microscope_label.setText(microscope.label)
            panel.state_label.setText("Ready")
            panel.log(f"Microscope ready: {microscope.label}")
            self.statusBar().showMessage(f"Microscope ready: {microscope.label}", 5000)
            self._update_actions()
            self._update_status()
            if then is not None:
                then()

        self._run_in_background("Loading the microscope", load, done)

    # ================================================================ acquisition
    def start_acquisition(self, record: bool = False) -> None:
        """Live (scratch recording) or Record (saved recording): acquire and reconstruct."""
        if self.session is not None or self._loading or self._closing:
            self._update_actions()
            return
        if self.offline is not None and self.offline.running:
            self.report_error("Acquisition", "An offline reconstruction is running; cancel it first.")
            self._update_actions()
            return
        if self.movie is not None:
            self.report_error("Acquisition", "A movie is being exported; wait for it to finish.")
            self._update_actions()
            return
        if self.microscope is None or self.microscope.key != self._microscope_key() or self.reconstructor is None:
            self.prepare_microscope(then=lambda: self._start_session(record))
            self._update_actions()
            return
        self._start_session(record)

    def _recording_target(self, record: bool) -> Path:
        if not record:
            self._live_count += 1
            return self._scratch_dir / f"live-{self._live_count:03d}.fdt"
        if self._out is not None and self._out.suffix == ".fdt":
            target, self._out = self._out, None  # the command line's exact name is used once
            return target
        folder = Path(self.acquisition_panel.save_dir.text() or default_data_dir() / "recordings").expanduser()
        prefix = "demo" if self.microscope is not None and self.microscope.demo else "fdt"
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = folder / f"{prefix}-{stamp}.fdt"
        n = 1
        while target.exists():
            n += 1
            target = folder / f"{prefix}-{stamp}-{n}.fdt"
        return target

    def _start_session(self, record: bool) -> None:
        microscope, reconstructor = self.microscope, self.reconstructor
        if microscope is None or reconstructor is None or self.session is not None:
            self._update_actions()
            return
        panel = self.acquisition_panel
        self.loader.set_path(None)
        previous = self.recording_path
        if previous is not None and previous.parent == self._scratch_dir:
            remove_scratch_recording(previous)
        try:
            exposure = panel.exposure.value()
            microscope.core.setExposure(exposure)
            microscope.info.exposure_ms = float(exposure)
            self.apply_reconstruction_settings()
            path = self._recording_target(record)
            path.parent.mkdir(parents=True, exist_ok=True)
            session = LiveSession(
                microscope,
                reconstructor,
                path,
                timepoints=panel.timepoint_count,
                interval_s=panel.interval.value(),
                mailbox=self.mailbox,
                extra={"mode": "record" if record else "live"},
                durable=self._durable,
            )
            session.start()
        except Exception as exc:
            self.report_error("Could not start the acquisition", exc)
            self._update_actions()
            return
        self.session = session
        self._session_record = record
        self._tp_times.clear()
        self._skipped = 0
        self._frames_written = 0
        self._latency_s = None
        self._recon_error_shown = False
        self._volume_t = self._frames_t = None
        self.recon_panel.latency_plot.clear_data()
        self.recording_path = path
        self._shown_meta = session.writer.meta
        self._following = True
        self.timeline.set_following(True)
        self.timeline.stop_playing()
        self.timeline.set_count(0)
        self._set_recording_text(f"{path} — {'recording' if record else 'live (scratch recording)'}")
        self.loader.set_path(path)
        panel.set_running(True)
        what = "Recording" if record else "Live"
        n = panel.timepoints.value()
        panel.state_label.setText(f"{what}: {'continuous' if n == 0 else f'{n} timepoints'}, "
                                  f"interval {panel.interval.value():.2f} s")
        self.statusBar().showMessage(f"{what} started: {path}", 5000)
        panel.log(f"{what} started → {path.name}", "ok")
        self._update_actions()
        self._update_mode_label()

    def stop_acquisition(self) -> None:
        """Finish the current timepoint, reconstruct what is pending, close the recording."""
        if self.session is not None and self.session.running:
            self.session.stop()
            self.acquisition_panel.state_label.setText("Stopping: finishing the current timepoint…")
            self.acquisition_panel.log("Stop requested: finishing the current timepoint")
        self._update_actions()

    @property
    def acquiring(self) -> bool:
        return self.session is not None and self.session.running

    # ================================================================ reconstruction settings
    def apply_reconstruction_settings(self) -> None:
        """Hand the panel's settings to the live reconstructor (applied before its next update)."""
        panel = self.recon_panel
        changes = panel.config_changes()
        self._base_config = replace(self._base_config, **changes)
        self.recon_panel.latency_plot.set_target(changes["time_budget_s"])
        recon = self.reconstructor
        if recon is None:
            return
        try:
            recon.request(device=panel.device_name, warm_start=panel.warm_start.isChecked(), **changes)
        except NvpLiveError as exc:
            self.report_error("Reconstruction settings", exc)
            panel.set_device(recon.device_name)
            return
        if self.session is not None:
            budget = (f"{changes['time_budget_s']:.2f} s" if changes["time_budget_s"] is not None
                      else f"{changes['warm_iterations']} it")
            self.acquisition_panel.log(
                f"Reconstruction: {changes['method']}, budget {budget}, τ {changes['tv_weight']:g}, "
                f"{panel.device_name}, warm start {'on' if panel.warm_start.isChecked() else 'off'} "
                "(from the next timepoint)"
            )
        self._update_status()

    def _on_reset_requested(self) -> None:
        if self.reconstructor is not None:
            self.reconstructor.request(reset=True)
            self.statusBar().showMessage("The next timepoint starts from scratch.", 5000)
            self.acquisition_panel.log("Reconstruction restarts from scratch at the next timepoint")

    # ================================================================ recordings, replay
    def open_recording(self, path: str | Path | None = None) -> bool:
        """Show a recording in the timeline (validated first); False when it cannot be opened."""
        if self.acquiring:
            self.report_error("Open recording", "Stop the acquisition before opening another recording.")
            return False
        if self.offline is not None and self.offline.running:
            self.report_error("Open recording", "An offline reconstruction is running; cancel it first.")
            return False
        if path is None:
            start = self.settings.value("paths/last_open", str(Path.home()), type=str)
            chosen = QtWidgets.QFileDialog.getExistingDirectory(self, "Open recording (NAME.fdt folder)", start)
            if not chosen:
                return False
            path = chosen
        path = Path(path)
        try:
            with Recording.open(path) as rec:
                n = rec.n_timepoints
                meta = rec.meta
                volumes = len(rec.volume_timepoints)
                truth = rec.has_ground_truth
                interrupted = rec.interrupted
        except Exception as exc:
            self.report_error("Could not open the recording", exc)
            return False
        self.settings.setValue("paths/last_open", str(path.parent))
        self.recording_path = path
        self._shown_meta = meta
        self._following = False
        self.timeline.set_following(False)
        self.timeline.stop_playing()
        self.timeline.set_count(n)
        self.timeline.show_timepoint(0)
        notes = [f"{n} timepoints", f"{meta.n_views} views", f"{volumes} volumes"]
        if truth:
            notes.append("ground truth")
        if interrupted:
            notes.append("interrupted")
        self._set_recording_text(f"{path} — {', '.join(notes)}")
        self.loader.set_path(path)
        self._request_replay(0)
        logger.info("Opened recording %s (%s)", path, ", ".join(notes))
        self.acquisition_panel.log(f"Opened {path.name}: {', '.join(notes)}")
        self.statusBar().showMessage(f"Opened {path}", 5000)
        self._update_actions()
        return True

    def _set_recording_text(self, text: str) -> None:
        """What the timeline shows: in its dock title (name) and tooltip (full text)."""
        self.timeline.recording_text = text
        name = self.recording_path.name if self.recording_path is not None else "no recording"
        detail = text.split(" — ", 1)[1] if " — " in text else ""
        self.timeline_dock.setWindowTitle(f"Timeline — {name}" + (f" · {detail}" if detail else ""))
        self.timeline_dock.setToolTip(text)

    def _on_timeline_t(self, t: int) -> None:
        if self._following and self.acquiring:
            self._following = False
            self.timeline.set_following(False)
        self._request_replay(t)

    def _on_follow(self, follow: bool) -> None:
        self._following = bool(follow) and self.session is not None
        if follow and not self._following:
            self.timeline.set_following(False)
        if self._following:
            self.timeline.stop_playing()

    def _request_replay(self, t: int) -> None:
        if self.recording_path is None or self._following:
            return
        self.loader.request(int(t), self.timeline.kind.currentData())

    def _show_replay(self, item: ReplayItem) -> None:
        if self._following or item.path != self.recording_path or self.movie is not None:
            return
        meta = self._shown_meta
        if meta is None:
            return
        if item.n_timepoints > self.timeline.count and not self.acquiring:
            self.timeline.set_count(item.n_timepoints)
        self.frames_view.set_frames(item.frames, meta.camera.pixel_size_um, item.sources_um_xyz[:, :2])
        if item.dn is not None:
            self.volume_view.set_volume(item.dn, meta.geometry.voxel_um_zyx, meta.optics.n_medium)
            self._volume_t = item.t
        else:
            what = "ground truth" if item.dn_kind == "truth" else "reconstruction"
            self.statusBar().showMessage(f"Timepoint {item.t} has no stored {what}.", 3000)
        self._frames_t = item.t

    # ================================================================ offline reconstruction
    def reconstruct_recording(self, path: str | Path | None = None) -> bool:
        """Reconstruct every timepoint of the shown (or given) recording in a worker thread."""
        path = Path(path) if path is not None else self.recording_path
        if path is None:
            self.report_error("Reconstruct recording", "Open a recording first.")
            return False
        if self.session is not None and self.session.path == path:
            self.report_error("Reconstruct recording", "This recording is still being written; stop the acquisition first.")
            return False
        if self.offline is not None and self.offline.running:
            return False
        if path != self.recording_path and not self.open_recording(path):
            return False
        config = replace(self._base_config, **self.recon_panel.config_changes())
        device = self.recon_panel.device_name
        self.loader.release()
        self.offline = OfflineReconstruction(path, config, device, self.mailbox)
        self.offline.start()
        self.timeline.set_offline_running(True)
        self.statusBar().showMessage(f"Reconstructing {path} ({config.method} on {device})…")
        self.acquisition_panel.log(f"Offline reconstruction of {path.name} started ({config.method}, {device})")
        self._update_actions()
        return True

    def _hide_offline_progress(self) -> None:
        if self.offline is None or not self.offline.running:
            self.timeline.progress.hide()

    def _cancel_offline(self) -> None:
        if self.offline is not None and self.offline.running:
            self.offline.cancel()
            self.timeline.progress.setFormat("cancelling…")

    def _offline_finished(self, message: str, error: bool = False) -> None:
        path = self.offline.path if self.offline is not None else None
        self.timeline.set_offline_running(False)
        self.timeline.progress.setFormat(message if not error else "failed")
        QtCore.QTimer.singleShot(8000, self, self._hide_offline_progress)
        if error:
            self.report_error("Offline reconstruction", message)
        else:
            self.statusBar().showMessage(message, 10000)
            self.acquisition_panel.log(message, "ok")
        if path is not None and path == self.recording_path:
            t = self.timeline.current
            self.open_recording(path)
            self.timeline.show_timepoint(min(t, max(0, self.timeline.count - 1)))
            self._request_replay(self.timeline.current)
        self._update_actions()

    # ================================================================ exports
    def _ask_save(self, caption: str, suggested: str, file_filter: str) -> Path | None:
        start = self.settings.value("paths/last_export", str(Path.home()), type=str)
        chosen, _ = QtWidgets.QFileDialog.getSaveFileName(self, caption, str(Path(start) / suggested), file_filter)
        if not chosen:
            return None
        self.settings.setValue("paths/last_export", str(Path(chosen).parent))
        return Path(chosen)

    def export_dn_stack(self, path: str | Path | None = None, *, all_timepoints: bool = True) -> None:
        """Write Δn as OME-TIFF: every stored volume of the shown recording (TZYX), else the shown volume (ZYX)."""
        meta = self._shown_meta
        if meta is None or self.recording_path is None:
            self.report_error("Export Δn stack", "Nothing to export yet: acquire or open a recording first.")
            return
        if path is None:
            path = self._ask_save("Export Δn stack", f"{self.recording_path.stem}_dn.ome.tif", "OME-TIFF (*.ome.tif)")
            if path is None:
                return
        recording, t_shown = self.recording_path, self._volume_t
        interval = meta.extra.get("interval_s") if isinstance(meta.extra, dict) else None

        def work() -> Path:
            with Recording.open(recording) as rec:
                ts = list(rec.volume_timepoints)
                if not ts:
                    raise NvpLiveError(f"{recording} has no reconstructed volumes yet.")
                if not all_timepoints:
                    ts = [t_shown if t_shown in ts else ts[-1]]
                stack = np.stack([rec.volume(t) for t in ts]) if len(ts) > 1 else rec.volume(ts[0])
            return export_dn_stack(
                path, stack, meta.geometry.voxel_um_zyx, n_medium=meta.optics.n_medium,
                interval_s=float(interval) if isinstance(interval, (int, float)) else None, timepoints=ts,
                name=recording.stem, description=f"Recording {recording}.",
            )

        self.statusBar().showMessage(f"Exporting Δn to {path}…")
        def done(written: Path) -> None:
            self.statusBar().showMessage(f"Δn stack written: {written}", 10000)
            self.acquisition_panel.log(f"Δn stack written: {written}", "ok")

        self._run_in_background("Export Δn stack", work, done)

    def save_snapshot(self, path: str | Path | None = None) -> Path | None:
        """Save the 3D view as a PNG."""
        if path is None:
            path = self._ask_save("Save 3D snapshot", "nvplive_3d.png", "PNG image (*.png)")
            if path is None:
                return None
        path = Path(path)
        try:
            self.volume_view.save_png(path)
        except Exception as exc:
            self.report_error("Save 3D snapshot", exc)
            return None
        self.statusBar().showMessage(f"Snapshot written: {path}", 10000)
        self.acquisition_panel.log(f"3D snapshot written: {path}", "ok")
        return path

    def export_movie(self, path: str | Path | None = None, fps: float | None = None) -> MovieExport | None:
        """Render every stored volume of the shown recording into a movie (MP4, animated PNG or PNG frames)."""
        if self.movie is not None:
            return self.movie
        if self.recording_path is None:
            self.report_error("Export movie", "Nothing to export yet: acquire or open a recording first.")
            return None
        if self.acquiring:
            self.report_error("Export movie", "Stop the acquisition before exporting a movie.")
            return None
        if path is None:
            filters = "Animated PNG (*.png);;Folder of PNG frames (*)"
            if mp4_available():
                filters = "MP4 video (*.mp4);;" + filters
            path = self._ask_save("Export movie", f"{self.recording_path.stem}_3d.png", filters)
            if path is None:
                return None
        try:
            movie = MovieExport(self, self.recording_path, Path(path), fps or self.timeline.fps.value())
        except Exception as exc:
            self.report_error("Export movie", exc)
            return None
        self.movie = movie
        self._movie_resume_t = self.timeline.current
        movie.finished.connect(self._movie_finished)
        self.statusBar().showMessage(f"Rendering movie {path}…")
        movie.start()
        self._update_actions()
        return movie

    def _movie_finished(self, path, message: str) -> None:
        self.movie = None
        if path is None:
            if "cancelled" in message:
                self.statusBar().showMessage(message, 5000)
            else:
                self.report_error("Export movie", message)
        else:
            self.statusBar().showMessage(f"Movie written: {path}", 10000)
            self.acquisition_panel.log(f"Movie written: {path}", "ok")
        self._request_replay(getattr(self, "_movie_resume_t", 0))
        self._update_actions()

    # ================================================================ the drain (GUI thread)
    def _drain(self) -> None:
        """Take what the worker threads handed over; draw only the newest frame and volume."""
        try:
            # Newest data first, then events: the volume of the last timepoint and the end
            # of its session can arrive in the same tick; the volume must still be drawn.
            frames = self.mailbox.take_latest("frames")
            if frames is not None and self._following and self.session is not None:
                self._show_live_frames(*frames)
            volume = self.mailbox.take_latest("volume")
            if volume is not None and self._following and self.session is not None and self.movie is None:
                self._show_live_volume(volume)
            progress = self.mailbox.take_latest("recon_progress")
            if progress is not None:
                it, total, loss, cold = progress
                kind = "Cold start" if cold else "Warm update"
                of = f"/{total}" if total < LATENCY_MODE_ITERATION_CAP else ""
                self.recon_panel.progress_label.setText(f"{kind}: iteration {it}{of} · loss {loss:.4g}")
            replay = self.mailbox.take_latest("replay")
            if replay is not None:
                self._show_replay(replay)
            offline = self.mailbox.take_latest("offline_progress")
            if offline is not None and self.offline is not None:
                done, total, message = offline
                self.timeline.progress.setValue(int(1000 * done / max(total, 1)))
                self.timeline.progress.setFormat(f"%p% · {message}")
            for event in self.mailbox.drain_events():
                self._handle_event(event)
        except Exception as exc:  # a drawing bug must not stop the drain timer
            self.report_error("Display", exc, exc=exc)

    def _handle_event(self, event: tuple) -> None:
        kind = event[0]
        if kind == "timepoint":
            _, t, completed_s, frames_written = event
            self._tp_times.append(completed_s)
            self._frames_written = frames_written
            self.timeline.set_count(t + 1)
            if self._following:
                self.timeline.show_timepoint(t)
        elif kind == "volume_done":
            _, t, latency, losses, warm = event
            self._latency_s = latency
            if math.isfinite(latency) and warm:  # the plot shows warm-update latency; cold starts go to the log
                self.recon_panel.latency_plot.append(latency)
            if losses:
                self._losses.extend(losses)
                if len(self._losses) > self.recon_panel.loss_plot.max_points:
                    del self._losses[: len(self._losses) - self.recon_panel.loss_plot.max_points]
                self.recon_panel.loss_plot.set_data(self._losses)
        elif kind == "skipped":
            self._skipped = event[2]
        elif kind == "recon_error":
            message = event[1]
            if not self._recon_error_shown:
                self._recon_error_shown = True
                self.report_error("Reconstruction", message)
            else:
                self.errors.append(message)
                self.statusBar().showMessage(f"Reconstruction: {message}", 10000)
        elif kind == "recon_flagged":
            self.statusBar().showMessage(
                f"Reconstruction of timepoint {event[1]} diverged and was rolled back; acquisition goes on. {event[2]}", 15000
            )
        elif kind == "acq_error":
            self.statusBar().showMessage(f"Acquisition error: {event[1]}", 15000)
        elif kind == "acquisition_finished":
            self.acquisition_panel.state_label.setText("Acquisition ended; finishing the reconstruction…")
            self._update_actions()
        elif kind == "session_closed":
            self._session_closed(event[1])
        elif kind == "replay_error":
            self.report_error("Replay", event[1])
        elif kind == "offline_done":
            summary = event[1]
            self._offline_finished(
                f"Reconstructed {summary.timepoints} timepoints on {summary.device} in {summary.seconds:.1f} s"
            )
        elif kind == "offline_cancelled":
            self._offline_finished("Offline reconstruction cancelled")
        elif kind == "offline_error":
            self._offline_finished(event[1], error=True)
        elif kind == "task_done":
            on_done = self._tasks.pop(event[1], None)
            if on_done is not None:
                on_done(event[2])
        elif kind == "task_error":
            _, task_id, label, exc = event
            on_done = self._tasks.pop(task_id, None)
            self.report_error(label, exc, exc=exc)
            if label == "Loading the microscope" and on_done is not None:
                on_done(None)

    def _show_live_frames(self, t: int, frames: np.ndarray) -> None:
        session = self.session
        if session is None:
            return
        info = session.microscope.info
        sources = self.reconstructor.last_result.sources_um_xyz if (
            self.reconstructor is not None and self.reconstructor.last_result is not None
        ) else info.sources_um_xyz
        sources = np.asarray(sources, float)
        xy = sources[:, :2] if sources.shape[0] == frames.shape[0] else None
        self.frames_view.set_frames(frames, info.geometry.camera_pixel_um, xy)
        self._frames_t = t

    def _show_live_volume(self, update: VolumeUpdate) -> None:
        session = self.session
        if session is None:
            return
        info = session.microscope.info
        self.volume_view.set_volume(update.dn, info.geometry.voxel_um_zyx, info.optics.n_medium)
        if not update.warm:
            self.acquisition_panel.log(
                f"t={update.t}: cold start done ({update.iterations} it in {update.seconds:.1f} s)", "ok"
            )
        self._volume_t = update.t
        how = "warm" if update.warm else "cold"
        self.recon_panel.progress_label.setText(
            f"t {update.t}: {update.method}, {how}, {update.iterations} it in {update.seconds:.2f} s "
            f"({update.stopped_by})"
        )

    def _session_closed(self, end: SessionEnd) -> None:
        session = self.session
        self.session = None
        self._last_session_end = end
        record = getattr(self, "_session_record", False)
        panel = self.acquisition_panel
        panel.set_running(False)
        summary = end.summary
        n = summary.timepoints_complete if summary is not None else 0
        where = f"saved in {end.path}" if record else f"in the scratch recording {end.path}"
        if summary is not None and summary.status == "failed":
            self.report_error(
                "Acquisition stopped",
                f"{summary.error or 'The acquisition failed.'}\n\nThe {n} complete timepoint(s) are {where}.",
            )
            panel.state_label.setText(f"Stopped by an error after {n} timepoints ({where}).")
        else:
            status = summary.status if summary is not None else "ended"
            panel.state_label.setText(
                f"{status.capitalize()}: {n} timepoints, {end.reconstructed} reconstructed, {end.skipped} skipped; {where}."
            )
            panel.log(f"Acquisition {status}: {n} timepoints, {end.reconstructed} reconstructed → {end.path.name}", "ok")
        self.statusBar().showMessage(f"Acquisition {summary.status if summary else 'ended'}: {end.path}", 10000)
        # The timeline now replays the finished recording.
        self._following = False
        self.timeline.set_following(False)
        if session is not None and self.recording_path == session.path:
            try:
                with Recording.open(end.path) as rec:
                    self._shown_meta = rec.meta
                    self.timeline.set_count(rec.n_timepoints)
                    label = f"{end.path} — {rec.n_timepoints} timepoints, {len(rec.volume_timepoints)} volumes"
                self._set_recording_text(label + ("" if record else ", scratch"))
                self.loader.set_path(end.path)
            except Exception as exc:
                self.report_error("Recording", exc)
        self._update_actions()
        self._update_mode_label()

    # ================================================================ status
    def acquisition_rate(self) -> float | None:
        """Timepoints per second over the last few timepoints (None before two)."""
        times = list(self._tp_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def _update_status(self) -> None:
        rate = self.acquisition_rate()
        views = self.microscope.info.n_views if self.microscope is not None else 0
        if rate is not None and self.acquiring:
            self.acq_rate_label.setText(f"Acquisition {rate:.2f} tp/s · {rate * views:.1f} frames/s")
        elif self.session is None:
            self.acq_rate_label.setText("Acquisition idle")
        self.latency_label.setText(
            "Latency —" if self._latency_s is None else f"Latency {self._latency_s:.2f} s"
        )
        self.skipped_label.setText(f"Skipped {self._skipped}")
        recon = self.reconstructor
        try:
            device = recon.device if recon is not None else select_device(self.recon_panel.device_name)
            self.device_label.setText(device_status(device))
        except Exception as exc:  # e.g. CUDA chosen on a machine without it
            self.device_label.setText(f"Device: {exc}")

    def _update_mode_label(self) -> None:
        panel = self.acquisition_panel
        if self.session is not None:
            mode = "● RECORDING" if getattr(self, "_session_record", False) else "● LIVE"
        else:
            mode = "idle"
        source = "Simulated microscope" if panel.source == DEMO_SOURCE else "Micro-Manager"
        self.mode_label.setText(f"{source} · {mode}  ")
        color = "#ff4d5e" if "RECORDING" in mode else ("#3cff8f" if "LIVE" in mode else style.MUTED)
        self.mode_label.setStyleSheet(f"color: {color}; font-weight: 600;")
        title = f"nvp-live — {source}"
        if self.recording_path is not None:
            title += f" — {self.recording_path.name}"
        self.setWindowTitle(title)

    def _update_actions(self) -> None:
        running = self.session is not None
        acquiring = self.acquiring
        offline = self.offline is not None and self.offline.running
        busy = self._loading or offline or self.movie is not None
        record = getattr(self, "_session_record", False)
        self.live_action.setEnabled(not running and not busy)
        self.record_action.setEnabled(not running and not busy)
        self.live_action.setChecked(running and not record)
        self.record_action.setChecked(running and record)
        self.stop_action.setEnabled(acquiring)
        self.open_action.setEnabled(not running and not offline)
        self.timeline.open_button.setEnabled(not running and not offline)
        self.timeline.reconstruct_button.setEnabled(not running and not offline and self.recording_path is not None)
        self.export_movie_action.setEnabled(not acquiring and self.movie is None)

    def _about(self) -> None:
        from nvplive import __version__

        box = QtWidgets.QMessageBox(self)
        box.setIconPixmap(app_icon().pixmap(64, 64))
        box.setWindowTitle("About nvp-live")
        box.setText(
            f"<b>nvp-live {__version__}</b><br>Live 3D refractive index by fluorescence diffraction tomography "
            "with a neural volumetric prior."
        )
        box.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose, True)
        box.show()

    # ================================================================ closing
    def shutdown(self) -> None:
        """Stop everything (abort the acquisition; the data on disk stays), release the microscope."""
        if self._shut_down:
            return
        self._shut_down = True
        self._closing = True
        self._drain_timer.stop()
        self._status_timer.stop()
        if self.movie is not None:
            self.movie.cancel()
        session = self.session
        if session is not None:
            if not session.shutdown(timeout=30):
                logger.warning("The session did not end within 30 s")
        if self.offline is not None and self.offline.running:
            self.offline.cancel()
            self.offline.join(30)
        self.loader.shutdown()
        if self.microscope is not None:
            self.microscope.close()
            self.microscope = None
        if self._own_scratch:
            import shutil

            shutil.rmtree(self._scratch_dir, ignore_errors=True)
        logger.info("Window closed")

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        try:
            self.save_settings()
        except Exception:
            logger.exception("Saving the settings failed")
        self.shutdown()
        super().closeEvent(event)
