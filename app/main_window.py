"""The nvp-live main window: live 3D refractive index at a fluorescence microscope.

The window is a view of the model (:mod:`.model`: acquisition settings, reconstruction
settings, view state) and wires it to the workers. Dockable panels bind to the model:
Acquisition (microscope, time-lapse, Live/Record/Stop), Frames (camera frames of the
current timepoint), Reconstruction (settings, loss and latency), 3D (Δn volume) and
Timeline (scrub/replay a recording, offline reconstruction). The GUI thread only draws:
the live session (:class:`~nvplive.acquisition.live.LiveSession`), replay loading,
microscope loading, offline reconstruction and exports run in worker threads, whose
typed events reach the GUI thread through a :class:`~.bridge.GuiBridge` (newest-only for
frames, volumes and progress). Errors are shown in the window (a non-blocking message
box and the status bar) and logged.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from nvplive.acquisition.live import (
    CONTINUOUS_TIMEPOINTS,
    LATENCY_MODE_ITERATION_CAP,
    DemoOptions,
    LiveReconstructor,
    LiveSession,
    Microscope,
    SessionEnd,
    VolumeUpdate,
    live_reconstructor,
    load_demo_microscope,
    load_hardware_microscope,
    suggested_demo_interval,
)
from nvplive.acquisition.pipeline import AcquisitionSummary
from nvplive.acquisition.recording import Recording
from nvplive.recon.reconstructor import ReconConfig, select_device
from PySide6 import QtCore, QtGui, QtWidgets

from nvplive.errors import NvpLiveError

from . import style
from .actions import install_actions
from .bridge import GuiBridge
from .export import export_dn_stack, mp4_available
from .frames_view import FramesView
from .model import DEMO_SOURCE, HARDWARE_SOURCE, AppModel, absolute_path
from .movie import MovieExport
from .panels import AcquisitionPanel, ReconstructionPanel, TimelinePanel, bind
from .paths import default_data_dir
from .session import OfflineReconstruction, RecordingLoader, ReplayItem, remove_scratch_recording
from .status import LiveStats, StatusLabels
from .volume_view import VolumeView

logger = logging.getLogger("nvplive.app")

ORGANISATION = "nvp-live"
APPLICATION = "nvp-live"
STATUS_INTERVAL_MS = 500


class MainWindow(QtWidgets.QMainWindow):
    """The nvp-live main window.

    Args:
        demo: start on the simulated microscope (else on the Micro-Manager configuration).
        device: reconstruction device (``auto``, ``cpu``, ``cuda``); None keeps the saved choice.
        timepoints: timepoints per acquisition (None: the saved value; 0: continuous).
        out: folder (or ``NAME.fdt``) where Record writes.
        mm_config, settings_file: Micro-Manager configuration and FDT settings (hardware).
        demo_options: size and physics of the simulated microscope.
        recon_config: base reconstruction settings (the saved method, budgets and τ apply
            unless ``recon_config`` is given explicitly).
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
        self.setWindowIcon(style.app_icon())
        self.setStyleSheet(style.WINDOW_STYLESHEET)
        self.settings = qsettings if qsettings is not None else QtCore.QSettings(ORGANISATION, APPLICATION)
        self.model = AppModel()
        self.demo_options = demo_options or DemoOptions()
        self._scratch_dir = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.mkdtemp(prefix="nvplive-live-"))
        self._own_scratch = scratch_dir is None
        self._durable = durable
        self._out = Path(out) if out is not None else None

        self.bridge = GuiBridge(self, on_error=lambda exc: self.report_error("Display", exc, exc=exc))
        self.loader = RecordingLoader()
        self.microscope: Microscope | None = None
        self.reconstructor: LiveReconstructor | None = None
        self.session: LiveSession | None = None
        self.session_record = False
        self.offline: OfflineReconstruction | None = None
        self.movie: MovieExport | None = None
        self.movie_resume_t = 0
        self.recording_path: Path | None = None
        self._shown_meta = None
        self._live_count = 0
        self._loading = False
        self._closing = False
        self._shut_down = False
        self.stats = LiveStats()
        self._losses: list[float] = []
        self._recon_error_shown = False
        self._auto_interval_pending = False
        self._volume_t: int | None = None
        self._frames_t: int | None = None
        self._last_session_end: SessionEnd | None = None
        self.error_box: QtWidgets.QMessageBox | None = None
        self.errors: list[str] = []
        self._shown_once = False
        self._state_restored = False

        self.frames_view = FramesView()
        self.volume_view = VolumeView()
        self.acquisition_panel = AcquisitionPanel()
        self.recon_panel = ReconstructionPanel()
        self.timeline = TimelinePanel()
        self.mode_label = QtWidgets.QLabel("")
        self.mode_label.setObjectName("readout")
        self.view_menu = QtWidgets.QMenu("&View", self)
        self.actions_by_key = install_actions(self)
        for key, button in (("live", self.acquisition_panel.live_button), ("record", self.acquisition_panel.record_button),
                            ("stop", self.acquisition_panel.stop_button)):
            button.setDefaultAction(self.actions_by_key[key])
        self.docks = self._build_docks()
        self.default_layout()
        self.status_labels = StatusLabels(self.statusBar())

        self._restore(demo=demo, device=device, timepoints=timepoints, mm_config=mm_config,
                      settings_file=settings_file, recon_config=recon_config, interval_s=interval_s)
        self._bind()
        self._update_actions()
        self._status_timer = QtCore.QTimer(self)
        self._status_timer.setInterval(STATUS_INTERVAL_MS)
        self._status_timer.timeout.connect(self._update_status)
        self._status_timer.start()
        self._update_status()

    # ================================================================ building
    def _build_docks(self) -> dict[str, QtWidgets.QDockWidget]:
        self.setDockNestingEnabled(True)
        area = QtWidgets.QScrollArea()
        area.setWidget(self.acquisition_panel)
        area.setWidgetResizable(True)
        area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        area.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        docks = {}
        feature = QtWidgets.QDockWidget.DockWidgetFeature
        for key, title, widget in (("acquisition", "Acquisition", area), ("reconstruction", "Reconstruction", self.recon_panel),
                                   ("volume", "3D", self.volume_view), ("frames", "Frames", self.frames_view),
                                   ("timeline", "Timeline", self.timeline)):
            dock = QtWidgets.QDockWidget(title, self)
            dock.setObjectName(f"{key}Dock" if key != "reconstruction" else "reconstructionDock")
            dock.setWidget(widget)
            features = feature.DockWidgetMovable | feature.DockWidgetClosable
            if key != "volume":  # the 3D canvas owns an OpenGL context: it stays inside the window
                features |= feature.DockWidgetFloatable
            dock.setFeatures(features)
            self.view_menu.addAction(dock.toggleViewAction())
            docks[key] = dock
        self.view_menu.addSeparator()
        self.view_menu.addAction(self.actions_by_key["reset_layout"])
        return docks

    def default_layout(self) -> None:
        """Acquisition on the left (full height); 3D and frames on top; timeline and reconstruction below.

        All docks share one dock area, nested with ``splitDockWidget``: separate areas
        (left/top/bottom around no central widget) crept by a few pixels on every
        relayout, i.e. on every live update.
        """
        d = self.docks
        horizontal, vertical = QtCore.Qt.Orientation.Horizontal, QtCore.Qt.Orientation.Vertical
        for dock in d.values():
            self.removeDockWidget(dock)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, d["acquisition"])
        self.splitDockWidget(d["acquisition"], d["volume"], horizontal)
        self.splitDockWidget(d["volume"], d["timeline"], vertical)
        self.splitDockWidget(d["volume"], d["frames"], horizontal)
        self.splitDockWidget(d["timeline"], d["reconstruction"], vertical)
        for dock in d.values():
            dock.setFloating(False)
            dock.show()
        self._size_docks()

    def _size_docks(self) -> None:
        d = self.docks
        width, height = max(self.width(), 1000), max(self.height(), 600)
        left = max(290, int(0.2 * width))
        rest = width - left
        self.resizeDocks([d["acquisition"], d["volume"], d["frames"]], [left, int(0.58 * rest), int(0.42 * rest)],
                         QtCore.Qt.Orientation.Horizontal)
        self.resizeDocks([d["volume"], d["timeline"], d["reconstruction"]], [int(0.62 * height), 40, int(0.25 * height)],
                         QtCore.Qt.Orientation.Vertical)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            if not self._state_restored:
                QtCore.QTimer.singleShot(0, self, self._size_docks)

    def _bind(self) -> None:
        """Panels show and set the model; the window acts on the model's changes and the panels' buttons.

        The panels bind first: a window listener that corrects a field (a device this
        machine lacks) re-emits it, and the panels must already have seen the outer value.
        """
        model = self.model
        self.acquisition_panel.bind(model.acquisition)
        self.recon_panel.bind(model.reconstruction)
        self.timeline.bind(model.view)
        bind(model.view, "render_mode", self.volume_view.set_mode, self.volume_view.modeChanged)
        acq = model.acquisition.events
        for signal in (acq.source, acq.mm_config, acq.settings_file, acq.views):
            signal.connect(self._on_source_changed)
        model.reconstruction.events.connect(self.apply_reconstruction_settings)
        model.view.events.following.connect(self._on_follow)
        model.view.events.replay_kind.connect(lambda _kind: self._request_replay(self.timeline.current))
        self.acquisition_panel.loadRequested.connect(lambda: self.prepare_microscope())
        self.recon_panel.resetRequested.connect(self._on_reset_requested)
        self.timeline.timepointChanged.connect(self._on_timeline_t)
        self.timeline.openRequested.connect(lambda: self.open_recording())
        self.timeline.reconstructRequested.connect(lambda: self.reconstruct_recording())
        self.timeline.cancelRequested.connect(self._cancel_offline)
        self.bridge.latest(self.loader.events.item, self._show_replay)
        self.bridge.queued(self.loader.events.error, lambda message: self.report_error("Replay", message))

    # ================================================================ settings
    def _restore(self, *, demo, device, timepoints, mm_config, settings_file, recon_config, interval_s) -> None:
        """The model from the saved settings, then the command line's choices on top."""
        s = self.settings
        self.model.load(s)
        acq, rec = self.model.acquisition, self.model.reconstruction
        acq.source = DEMO_SOURCE if demo else HARDWARE_SOURCE
        if mm_config:
            acq.mm_config = absolute_path(mm_config)
        if settings_file:
            acq.settings_file = absolute_path(settings_file)
        if interval_s is not None:
            acq.interval_s = float(interval_s)
        elif not s.contains("acquisition/interval_s"):
            acq.interval_s = 0.0
            self._auto_interval_pending = demo
        if timepoints is not None:
            acq.timepoints = 0 if timepoints >= CONTINUOUS_TIMEPOINTS else int(timepoints)
        if self._out is not None:
            acq.save_dir = absolute_path(self._out.parent if self._out.suffix == ".fdt" else self._out)
        if recon_config is not None:
            rec.use_config(recon_config)
        if device:
            rec.device = device
        if rec.device.startswith("cuda"):
            try:
                select_device(rec.device)
            except NvpLiveError as exc:
                self.errors.append(str(exc))
                QtCore.QTimer.singleShot(0, self, lambda m=str(exc): self.report_error("Reconstruction device", m))
                rec.device = "cpu"
        self.recon_panel.latency_plot.set_target(rec.config_changes()["time_budget_s"])
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
        """Write the model, the window geometry and the dock layout to the settings."""
        s = self.settings
        self.model.save(s)
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.sync()

    # ================================================================ errors, background work
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

    def _run_in_background(self, label: str, fn: Callable[[], Any], on_done: Callable[[Any], None],
                           on_error: Callable[[], None] | None = None) -> None:
        """Run ``fn`` in a thread; ``on_done(result)`` runs in the GUI thread; a failure is
        reported, then ``on_error()`` runs in the GUI thread."""

        def failed(exc: BaseException) -> None:
            self.report_error(label, exc, exc=exc)
            if on_error is not None:
                on_error()

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:  # shown to the user, never lost in a thread
                logger.exception("%s failed", label)
                self.bridge.call(failed, exc)
            else:
                self.bridge.call(on_done, result)

        threading.Thread(target=run, name=f"nvplive-{label.lower().replace(' ', '-')}", daemon=True).start()

    # ================================================================ microscope
    def _microscope_key(self) -> tuple:
        acq = self.model.acquisition
        if acq.source == DEMO_SOURCE:
            return ("demo", acq.views, self.demo_options)
        return ("hw", acq.mm_config, acq.settings_file)

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
        acq, rec = self.model.acquisition, self.model.reconstruction
        views, exposure = acq.views, acq.exposure_ms
        config, device, warm = rec.config(), rec.device, rec.warm_start
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
            recon = reconstructor or live_reconstructor(microscope.info, config, device, warm_start=warm)
            interval = suggested_demo_interval(microscope) if want_interval else None
            return microscope, recon, interval

        self._loading = True
        self._update_actions()
        panel.state_label.setText("Loading the microscope…")
        self.statusBar().showMessage("Loading the microscope…")
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.BusyCursor)

        def failed() -> None:
            QtWidgets.QApplication.restoreOverrideCursor()
            self._loading = False
            panel.state_label.setText("Microscope not loaded")
            self._update_actions()

        def done(result: tuple) -> None:
            QtWidgets.QApplication.restoreOverrideCursor()
            self._loading = False
            self._microscope_ready(*result)
            if then is not None:
                then()

        self._run_in_background("Loading the microscope", load, done, failed)

    def _microscope_ready(self, microscope: Microscope, recon: LiveReconstructor, interval: float | None) -> None:
        panel = self.acquisition_panel
        if self.microscope is not None and self.microscope is not microscope:
            self.microscope.close()
        self.microscope = microscope
        if recon is not self.reconstructor:
            self.reconstructor = recon
            self._losses = []
            self.recon_panel.loss_plot.clear_data()
        if interval is not None:
            self._auto_interval_pending = False
            self.model.acquisition.interval_s = interval
        info = microscope.info
        panel.set_sources(list(info.presets), info.sources_um_xyz)
        if self._volume_t is None:
            # The empty volume's box and µm axes right away: the user sees the field of
            # view, and the first reconstruction only uploads a texture (no stall then).
            geometry = info.geometry
            self.volume_view.set_volume(np.zeros(geometry.shape_zyx, np.float32), geometry.voxel_um_zyx, info.optics.n_medium)
            self.volume_view.canvas.render()
        if not microscope.demo:
            self.model.acquisition.views = info.n_views
        panel.microscope_label.setText(microscope.label)
        panel.state_label.setText("Ready")
        panel.log(f"Microscope ready: {microscope.label}")
        self.statusBar().showMessage(f"Microscope ready: {microscope.label}", 5000)
        self._update_actions()
        self._update_status()

    # ================================================================ acquisition
    def start_acquisition(self, record: bool = False) -> None:
        """Live (scratch recording) or Record (saved recording): acquire and reconstruct."""
        if self.session is not None or self._loading or self._closing:
            self._update_actions()
            return
        busy = ("An offline reconstruction is running; cancel it first." if self.offline is not None and self.offline.running
                else "A movie is being exported; wait for it to finish." if self.movie is not None else None)
        if busy:
            self.report_error("Acquisition", busy)
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
        folder = Path(self.model.acquisition.save_dir or default_data_dir() / "recordings").expanduser()
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
        acq = self.model.acquisition
        self.loader.set_path(None)
        previous = self.recording_path
        if previous is not None and previous.parent == self._scratch_dir:
            remove_scratch_recording(previous)
        try:
            microscope.core.setExposure(acq.exposure_ms)
            microscope.info.exposure_ms = float(acq.exposure_ms)
            self.apply_reconstruction_settings()
            path = self._recording_target(record)
            path.parent.mkdir(parents=True, exist_ok=True)
            session = LiveSession(
                microscope, reconstructor, path, timepoints=acq.timepoint_count, interval_s=acq.interval_s,
                extra={"app": "nvp-live", "mode": "record" if record else "live"}, durable=self._durable,
            )
            self._connect_session(session)
            session.start()
        except Exception as exc:
            self.report_error("Could not start the acquisition", exc)
            self._update_actions()
            return
        self.session = session
        self.session_record = record
        self.stats.reset()
        self._recon_error_shown = False
        self._volume_t = self._frames_t = None
        self.recon_panel.latency_plot.clear_data()
        self.recording_path = path
        self._shown_meta = session.writer.meta
        self.model.view.following = True
        self.timeline.stop_playing()
        self.timeline.set_count(0)
        self._set_recording_text(f"{path} — {'recording' if record else 'live (scratch recording)'}")
        self.loader.set_path(path)
        self.acquisition_panel.set_running(True)
        what = "Recording" if record else "Live"
        n = acq.timepoints
        self.acquisition_panel.state_label.setText(
            f"{what}: {'continuous' if n == 0 else f'{n} timepoints'}, interval {acq.interval_s:.2f} s")
        self.statusBar().showMessage(f"{what} started: {path}", 5000)
        self.acquisition_panel.log(f"{what} started → {path.name}", "ok")
        self._update_actions()
        self._update_mode_label()

    def _connect_session(self, session: LiveSession) -> None:
        """The session's events, delivered in the GUI thread (frames, volumes, progress: newest only)."""
        events, bridge = session.events, self.bridge
        bridge.latest(events.frames, self._show_live_frames, owner=session)
        bridge.latest(events.volume, self._show_live_volume, owner=session)
        bridge.latest(events.progress, self._show_progress, owner=session)
        bridge.queued(events.timepoint, self._on_timepoint, owner=session)
        bridge.queued(events.reconstructed, self._on_reconstructed, owner=session)
        bridge.queued(events.skipped, self._on_skipped, owner=session)
        bridge.queued(events.reconstruction_error, self._on_reconstruction_error, owner=session)
        bridge.queued(events.truth_error, lambda _t, message: self._on_reconstruction_error(message), owner=session)
        bridge.queued(events.flagged, self._on_flagged, owner=session)
        bridge.queued(events.acquisition_error, self._on_acquisition_error, owner=session)
        bridge.queued(events.acquisition_finished, self._on_acquisition_finished, owner=session)
        bridge.queued(events.closed, self._session_closed, owner=session)

    def stop_acquisition(self) -> None:
        """Finish the current timepoint, reconstruct what is pending, close the recording."""
        if self.session is not None and self.session.running:
            self.session.stop()
            self.acquisition_panel.state_label.setText("Stopping: finishing the current timepoint…")
            self.acquisition_panel.log("Stop requested: finishing the current timepoint")
        self._update_actions()

    @property
    def acquiring(self) -> bool:
        """A session is taking frames."""
        return self.session is not None and self.session.running

    # ================================================================ live events (GUI thread)
    def _show_live_frames(self, t: int, frames: np.ndarray) -> None:
        session = self.session
        if session is None or not self.model.view.following:
            return
        info = session.microscope.info
        last = self.reconstructor.last_result if self.reconstructor is not None else None
        sources = np.asarray(last.sources_um_xyz if last is not None else info.sources_um_xyz, float)
        xy = sources[:, :2] if sources.shape[0] == frames.shape[0] else None
        self.frames_view.set_frames(frames, info.geometry.camera_pixel_um, xy)
        self._frames_t = t

    def _show_live_volume(self, update: VolumeUpdate) -> None:
        session = self.session
        if session is None or not self.model.view.following or self.movie is not None:
            return
        info = session.microscope.info
        self.volume_view.set_volume(update.dn, info.geometry.voxel_um_zyx, info.optics.n_medium)
        if not update.warm:
            self.acquisition_panel.log(f"t={update.t}: cold start done ({update.iterations} it in {update.seconds:.1f} s)", "ok")
        self._volume_t = update.t
        self.recon_panel.progress_label.setText(
            f"t {update.t}: {update.method}, {'warm' if update.warm else 'cold'}, {update.iterations} it in "
            f"{update.seconds:.2f} s ({update.stopped_by})")

    def _show_progress(self, it: int, total: int, loss: float, cold: bool) -> None:
        of = f"/{total}" if total < LATENCY_MODE_ITERATION_CAP else ""
        self.recon_panel.progress_label.setText(f"{'Cold start' if cold else 'Warm update'}: iteration {it}{of} · loss {loss:.4g}")

    def _on_timepoint(self, t: int, completed_s: float, frames_written: int) -> None:
        self.stats.timepoint(completed_s, frames_written)
        self.timeline.set_count(t + 1)
        if self.model.view.following:
            self.timeline.show_timepoint(t)

    def _on_reconstructed(self, _t: int, latency_s: float, losses: list[float], warm: bool) -> None:
        self.stats.volume(latency_s)
        if warm and np.isfinite(latency_s):  # the plot shows warm-update latency; cold starts go to the log
            self.recon_panel.latency_plot.append(latency_s)
        if losses:
            plot = self.recon_panel.loss_plot
            self._losses = (self._losses + list(losses))[-plot.max_points:]
            plot.set_data(self._losses)

    def _on_skipped(self, _t: int, total: int) -> None:
        self.stats.skipped = total

    def _on_reconstruction_error(self, message: str) -> None:
        if not self._recon_error_shown:
            self._recon_error_shown = True
            self.report_error("Reconstruction", message)
        else:
            self.errors.append(message)
            self.statusBar().showMessage(f"Reconstruction: {message}", 10000)

    def _on_flagged(self, t: int, message: str) -> None:
        self.statusBar().showMessage(
            f"Reconstruction of timepoint {t} diverged and was rolled back; acquisition goes on. {message}", 15000)

    def _on_acquisition_error(self, message: str) -> None:
        self.statusBar().showMessage(f"Acquisition error: {message}", 15000)

    def _on_acquisition_finished(self, _summary: AcquisitionSummary) -> None:
        self.acquisition_panel.state_label.setText("Acquisition ended; finishing the reconstruction…")
        self._update_actions()

    def _session_closed(self, end: SessionEnd) -> None:
        session, self.session = self.session, None
        if session is not None:
            self.bridge.release(session)
        self._last_session_end = end
        panel = self.acquisition_panel
        panel.set_running(False)
        summary = end.summary
        n = summary.timepoints_complete if summary is not None else 0
        where = f"saved in {end.path}" if self.session_record else f"in the scratch recording {end.path}"
        if summary is not None and summary.status == "failed":
            self.report_error("Acquisition stopped",
                              f"{summary.error or 'The acquisition failed.'}\n\nThe {n} complete timepoint(s) are {where}.")
            panel.state_label.setText(f"Stopped by an error after {n} timepoints ({where}).")
        else:
            status = summary.status if summary is not None else "ended"
            panel.state_label.setText(
                f"{status.capitalize()}: {n} timepoints, {end.reconstructed} reconstructed, {end.skipped} skipped; {where}.")
            panel.log(f"Acquisition {status}: {n} timepoints, {end.reconstructed} reconstructed → {end.path.name}", "ok")
        self.statusBar().showMessage(f"Acquisition {summary.status if summary else 'ended'}: {end.path}", 10000)
        self.model.view.following = False  # the timeline now replays the finished recording
        if session is not None and self.recording_path == session.path:
            try:
                with Recording.open(end.path) as rec:
                    self._shown_meta = rec.meta
                    self.timeline.set_count(rec.n_timepoints)
                    label = f"{end.path} — {rec.n_timepoints} timepoints, {len(rec.volume_timepoints)} volumes"
                self._set_recording_text(label + ("" if self.session_record else ", scratch"))
                self.loader.set_path(end.path)
            except Exception as exc:
                self.report_error("Recording", exc)
        self._update_actions()
        self._update_mode_label()

    # ================================================================ reconstruction settings
    def apply_reconstruction_settings(self, *_: object) -> None:
        """Hand the model's reconstruction settings to the live reconstructor (applied before its next update)."""
        settings = self.model.reconstruction
        changes = settings.config_changes()
        self.recon_panel.latency_plot.set_target(changes["time_budget_s"])
        recon = self.reconstructor
        if recon is None:
            return
        try:
            recon.request(device=settings.device, warm_start=settings.warm_start, **changes)
        except NvpLiveError as exc:
            self.report_error("Reconstruction settings", exc)
            settings.device = recon.device_name
            return
        if self.session is not None:
            budget = (f"{changes['time_budget_s']:.2f} s" if changes["time_budget_s"] is not None
                      else f"{changes['warm_iterations']} it")
            self.acquisition_panel.log(
                f"Reconstruction: {changes['method']}, budget {budget}, τ {changes['tv_weight']:g}, "
                f"{settings.device}, warm start {'on' if settings.warm_start else 'off'} (from the next timepoint)")
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
            path = QtWidgets.QFileDialog.getExistingDirectory(self, "Open recording (NAME.fdt folder)", start)
            if not path:
                return False
        path = Path(path)
        try:
            with Recording.open(path) as rec:
                n, meta, volumes = rec.n_timepoints, rec.meta, len(rec.volume_timepoints)
                truth, interrupted = rec.has_ground_truth, rec.interrupted
        except Exception as exc:
            self.report_error("Could not open the recording", exc)
            return False
        self.settings.setValue("paths/last_open", str(path.parent))
        self.recording_path = path
        self._shown_meta = meta
        self.model.view.following = False
        self.timeline.stop_playing()
        self.timeline.set_count(n)
        self.timeline.show_timepoint(0)
        notes = [f"{n} timepoints", f"{meta.n_views} views", f"{volumes} volumes"]
        notes += ["ground truth"] if truth else []
        notes += ["interrupted"] if interrupted else []
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
        self.docks["timeline"].setWindowTitle(f"Timeline — {name}" + (f" · {detail}" if detail else ""))
        self.docks["timeline"].setToolTip(text)

    def _on_timeline_t(self, t: int) -> None:
        if self.model.view.following and self.acquiring:
            self.model.view.following = False
        self._request_replay(t)

    def _on_follow(self, follow: bool) -> None:
        if follow and self.session is None:
            self.model.view.following = False  # nothing live to follow
        elif follow:
            self.timeline.stop_playing()

    def _request_replay(self, t: int) -> None:
        if self.recording_path is None or self.model.view.following:
            return
        self.loader.request(int(t), self.model.view.replay_kind)

    def _show_replay(self, item: ReplayItem) -> None:
        meta = self._shown_meta
        if self.model.view.following or item.path != self.recording_path or self.movie is not None or meta is None:
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
        config, device = self.model.reconstruction.config(), self.model.reconstruction.device
        self.loader.release()
        offline = self.offline = OfflineReconstruction(path, config, device)
        events = offline.events
        self.bridge.latest(events.progress, self._show_offline_progress, owner=offline)
        self.bridge.queued(events.done, lambda s: self._offline_finished(
            f"Reconstructed {s.timepoints} timepoints on {s.device} in {s.seconds:.1f} s"), owner=offline)
        self.bridge.queued(events.cancelled, lambda _p: self._offline_finished("Offline reconstruction cancelled"),
                           owner=offline)
        self.bridge.queued(events.failed, lambda message: self._offline_finished(message, error=True), owner=offline)
        offline.start()
        self.timeline.set_offline_running(True)
        self.statusBar().showMessage(f"Reconstructing {path} ({config.method} on {device})…")
        self.acquisition_panel.log(f"Offline reconstruction of {path.name} started ({config.method}, {device})")
        self._update_actions()
        return True

    def _show_offline_progress(self, done: int, total: int, message: str) -> None:
        self.timeline.progress.setValue(int(1000 * done / max(total, 1)))
        self.timeline.progress.setFormat(f"%p% · {message}")

    def _hide_offline_progress(self) -> None:
        if self.offline is None or not self.offline.running:
            self.timeline.progress.hide()

    def _cancel_offline(self) -> None:
        if self.offline is not None and self.offline.running:
            self.offline.cancel()
            self.timeline.progress.setFormat("cancelling…")

    def _offline_finished(self, message: str, error: bool = False) -> None:
        offline = self.offline
        if offline is not None:
            self.bridge.release(offline)
            offline.join(5)
        path = offline.path if offline is not None else None
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

        def done(written: Path) -> None:
            self.statusBar().showMessage(f"Δn stack written: {written}", 10000)
            self.acquisition_panel.log(f"Δn stack written: {written}", "ok")

        self.statusBar().showMessage(f"Exporting Δn to {path}…")
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
            movie = MovieExport(self.volume_view, self.recording_path, Path(path), fps or self.model.view.fps, self)
        except Exception as exc:
            self.report_error("Export movie", exc)
            return None
        self.movie = movie
        self.movie_resume_t = self.timeline.current
        movie.finished.connect(self._movie_finished)
        self.statusBar().showMessage(f"Rendering movie {path}…")
        movie.start()
        self._update_actions()
        return movie

    def _movie_finished(self, path: Path | None, message: str) -> None:
        self.movie = None
        if path is None:
            if "cancelled" in message:
                self.statusBar().showMessage(message, 5000)
            else:
                self.report_error("Export movie", message)
        else:
            self.statusBar().showMessage(f"Movie written: {path}", 10000)
            self.acquisition_panel.log(f"Movie written: {path}", "ok")
        self._request_replay(self.movie_resume_t)
        self._update_actions()

    # ================================================================ status
    def _update_status(self) -> None:
        recon = self.reconstructor
        self.status_labels.show(
            self.stats, acquiring=self.acquiring, session=self.session is not None,
            views=self.microscope.info.n_views if self.microscope is not None else 0,
            device=recon.device if recon is not None else self.model.reconstruction.device,
        )

    def _update_mode_label(self) -> None:
        if self.session is not None:
            mode, color = ("● RECORDING", "#ff4d5e") if self.session_record else ("● LIVE", "#3cff8f")
        else:
            mode, color = "idle", style.MUTED
        source = "Simulated microscope" if self.model.acquisition.source == DEMO_SOURCE else "Micro-Manager"
        self.mode_label.setText(f"{source} · {mode}  ")
        self.mode_label.setStyleSheet(f"color: {color}; font-weight: 600;")
        title = f"nvp-live — {source}"
        if self.recording_path is not None:
            title += f" — {self.recording_path.name}"
        self.setWindowTitle(title)

    def _update_actions(self) -> None:
        running = self.session is not None
        offline = self.offline is not None and self.offline.running
        busy = self._loading or offline or self.movie is not None
        a = self.actions_by_key
        a["live"].setEnabled(not running and not busy)
        a["record"].setEnabled(not running and not busy)
        a["live"].setChecked(running and not self.session_record)
        a["record"].setChecked(running and self.session_record)
        a["stop"].setEnabled(self.acquiring)
        a["open"].setEnabled(not running and not offline)
        self.timeline.open_button.setEnabled(not running and not offline)
        self.timeline.reconstruct_button.setEnabled(not running and not offline and self.recording_path is not None)
        a["export_movie"].setEnabled(not self.acquiring and self.movie is None)

    # ================================================================ closing
    def shutdown(self) -> None:
        """Stop everything (abort the acquisition; the data on disk stays), release the microscope."""
        if self._shut_down:
            return
        self._shut_down = True
        self._closing = True
        self.bridge.stop()
        self._status_timer.stop()
        if self.movie is not None:
            self.movie.cancel()
        session = self.session
        if session is not None and not session.shutdown(timeout=30):
            logger.warning("The session did not end within 30 s")
        if self.offline is not None and self.offline.running:
            self.offline.cancel()
            self.offline.join(30)
        self.loader.shutdown()
        if self.microscope is not None:
            self.microscope.close()
            self.microscope = None
        if self._own_scratch:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)
        logger.info("Window closed")

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        try:
            self.save_settings()
        except Exception:
            logger.exception("Saving the settings failed")
        self.shutdown()
        super().closeEvent(event)
