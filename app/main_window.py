"""The nvp-live main window: live 3D refractive index at a fluorescence microscope.

The window is a view of the model (:mod:`.model`: acquisition settings, reconstruction
settings, view state) and wires it to the workers. Dockable panels bind to the model:
Acquisition (microscope, time-lapse, Live/Record/Stop), Frames (camera frames of the
current timepoint), Reconstruction (settings, loss and latency), 3D (Δn volume), Pupil
(the calibrated detection pupil, :mod:`.pupil`) and Timeline (scrub/replay a recording,
offline reconstruction). The GUI thread only draws:
the live session (:class:`~nvplive.acquisition.live.LiveSession`), replay loading,
microscope loading, offline reconstruction and exports run in worker threads, whose
typed events reach the GUI thread through a :class:`~.bridge.GuiBridge` (newest-only for
frames, volumes and progress). Errors are shown in the window (a non-blocking message
box and the status bar) and logged.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from nvplive.acquisition.live import CONTINUOUS_TIMEPOINTS, DemoOptions, LiveReconstructor, LiveSession, Microscope, SessionEnd
from nvplive.errors import NvpLiveError
from nvplive.recon.reconstructor import ReconConfig, select_device

from . import acquire, actions, layout, pupil, recordings, style
from .bridge import GuiBridge
from .frames_view import FramesView
from .live_display import LiveDisplay
from .model import DEMO_SOURCE, HARDWARE_SOURCE, AppModel, absolute_path
from .movie import MovieExport
from .panels import AcquisitionPanel, ReconstructionPanel, TimelinePanel, bind
from .pupil_view import PupilView
from .status import StatusLabels
from .volume_view import VolumeView
from .workers import OfflineReconstruction, PupilCalibrationTask, RecordingLoader, ReplayItem

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
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.mkdtemp(prefix="nvplive-live-"))
        self._own_scratch = scratch_dir is None
        self.durable = durable
        self.out = Path(out) if out is not None else None

        self.bridge = GuiBridge(self, on_error=lambda exc: self.report_error("Display", exc, exc=exc))
        self.loader = RecordingLoader()
        self.microscope: Microscope | None = None
        self.reconstructor: LiveReconstructor | None = None
        self.session: LiveSession | None = None
        self.session_record = False
        self.acquisition_ended = False  # the session's acquisition reported its end (its volumes may still come)
        self.offline: OfflineReconstruction | None = None
        self.pupil_task: PupilCalibrationTask | None = None
        #: "Calibrate pupil": the z-stack (None: ``pupil.bead_stack_plan``'s default) and the fit's iterations.
        self.bead_stack_plan = None
        self.pupil_iterations = 150
        #: The instrument whose kept pupil the model's is (``pupil.instrument``'s key).
        self.pupil_instrument = ""
        self.movie: MovieExport | None = None
        self.recording_path: Path | None = None
        self.shown_meta = None
        self.live_count = 0
        self.loading = False
        self.closing = False
        self._shut_down = False
        self.auto_interval_pending = False
        self.last_session_end: SessionEnd | None = None
        self.error_box: QtWidgets.QMessageBox | None = None
        self.errors: list[str] = []
        self._shown_once = False
        self._state_restored = False

        self.frames_view = FramesView()
        self.volume_view = VolumeView()
        self.acquisition_panel = AcquisitionPanel()
        self.recon_panel = ReconstructionPanel()
        self.timeline = TimelinePanel()
        self.pupil_view = PupilView()
        self.mode_label = QtWidgets.QLabel("")
        self.mode_label.setObjectName("readout")
        self.view_menu = QtWidgets.QMenu("&View", self)
        self.live = LiveDisplay(
            self.bridge, self.model.view, self.frames_view, self.volume_view, self.recon_panel, self.timeline,
            log=self.acquisition_panel.log, notify=self.statusBar().showMessage,
            report=lambda title, message, box: self.report_error(title, message, box=box),
        )
        self.actions_by_key = actions.install_actions(self)
        for key, button in (("live", self.acquisition_panel.live_button), ("record", self.acquisition_panel.record_button),
                            ("stop", self.acquisition_panel.stop_button)):
            button.setDefaultAction(self.actions_by_key[key])
        self.docks = layout.build_docks(self, {
            "acquisition": layout.scrolling(self.acquisition_panel), "reconstruction": self.recon_panel,
            "volume": self.volume_view, "frames": self.frames_view, "pupil": self.pupil_view, "timeline": self.timeline},
            self.view_menu)
        self.view_menu.addSeparator()
        self.view_menu.addAction(self.actions_by_key["reset_layout"])
        self.default_layout()
        self.status_labels = StatusLabels(self.statusBar())

        self._restore(demo=demo, device=device, timepoints=timepoints, mm_config=mm_config,
                      settings_file=settings_file, recon_config=recon_config, interval_s=interval_s)
        self._bind()
        pupil.restore_pupil(self)
        self.update_actions()
        self._status_timer = QtCore.QTimer(self)
        self._status_timer.setInterval(STATUS_INTERVAL_MS)
        self._status_timer.timeout.connect(self.update_status)
        self._status_timer.start()
        self.update_status()

    def default_layout(self) -> None:
        """Put the docks back where they start (``layout.default_layout``)."""
        layout.default_layout(self, self.docks)

    def showEvent(self, event: QtGui.QShowEvent) -> None:
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            if not self._state_restored:
                QtCore.QTimer.singleShot(0, self, lambda: layout.size_docks(self, self.docks))

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
            signal.connect(lambda *_: acquire.on_source_changed(self))
        model.reconstruction.events.connect(self.apply_reconstruction_settings)
        model.view.events.following.connect(self._on_follow)
        model.pupil.events.calibrated.connect(lambda calibrated: pupil.on_pupil_changed(self, calibrated))
        model.pupil.events.origin.connect(lambda origin: self.pupil_view.show_pupil(model.pupil.calibrated, origin))
        for signal in (acq.source, acq.mm_config, acq.settings_file):
            signal.connect(lambda *_: pupil.on_instrument_changed(self))
        self.pupil_view.cancel_button.clicked.connect(lambda: pupil.cancel(self))
        self.pupil_view.clear_button.clicked.connect(lambda: pupil.clear_pupil(self))
        model.view.events.replay_kind.connect(lambda _kind: self.request_replay(self.timeline.current))
        self.acquisition_panel.loadRequested.connect(lambda: self.prepare_microscope())
        self.recon_panel.resetRequested.connect(self._on_reset_requested)
        self.timeline.timepointChanged.connect(self._on_timeline_t)
        self.timeline.openRequested.connect(lambda: self.open_recording())
        self.timeline.reconstructRequested.connect(lambda: self.reconstruct_recording())
        self.timeline.cancelRequested.connect(lambda: recordings.cancel_offline(self))
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
            self.auto_interval_pending = demo
        if timepoints is not None:
            acq.timepoints = 0 if timepoints >= CONTINUOUS_TIMEPOINTS else int(timepoints)
        if self.out is not None:
            acq.save_dir = absolute_path(self.out.parent if self.out.suffix == ".fdt" else self.out)
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
        self.recon_panel.latency_plot.set_target(rec.config_changes()["warm_budget"].target_latency_s)
        geometry = s.value("window/geometry")
        if isinstance(geometry, QtCore.QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        state = s.value("window/state")
        if isinstance(state, QtCore.QByteArray) and not state.isEmpty():
            self._state_restored = bool(self.restoreState(state))
        self.update_mode_label()

    def save_settings(self) -> None:
        """Write the model, the window geometry and the dock layout to the settings."""
        s = self.settings
        self.model.save(s)
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.sync()

    # ================================================================ errors, background work
    def report_error(self, title: str, message: str | BaseException, *, exc: BaseException | None = None,
                     box: bool = True) -> None:
        """Show an error in the window (non-blocking message box unless ``box`` is False, status bar) and log it."""
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
        if self.closing or not box:
            return
        self.acquisition_panel.log(f"{title}: {text}", "error")
        dialog = self.error_box
        if dialog is not None and dialog.isVisible():
            dialog.setText(dialog.text() + "\n\n" + f"{title}: {text}")
            return
        dialog = QtWidgets.QMessageBox(self)
        dialog.setIcon(QtWidgets.QMessageBox.Icon.Warning)
        dialog.setWindowTitle(f"nvp-live — {title}")
        dialog.setText(text)
        dialog.setStandardButtons(QtWidgets.QMessageBox.StandardButton.Ok)
        dialog.setWindowModality(QtCore.Qt.WindowModality.NonModal)
        dialog.setAttribute(QtCore.Qt.WidgetAttribute.WA_DeleteOnClose, True)
        dialog.finished.connect(lambda _r, d=dialog: self._forget_box(d))
        self.error_box = dialog
        dialog.show()

    def _forget_box(self, box: QtWidgets.QMessageBox) -> None:
        if self.error_box is box:
            self.error_box = None

    def run_in_background(self, label: str, fn: Callable[[], Any], on_done: Callable[[Any], None],
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

    # ================================================================ microscope, acquisition (app/acquire.py)
    prepare_microscope = acquire.prepare_microscope
    start_acquisition = acquire.start_acquisition
    stop_acquisition = acquire.stop_acquisition

    @property
    def acquiring(self) -> bool:
        """A session is taking frames."""
        return self.session is not None and self.session.running

    # ================================================================ reconstruction settings
    def apply_reconstruction_settings(self, *_: object) -> None:
        """Hand the model's reconstruction settings to the live reconstructor (applied before its next update)."""
        settings = self.model.reconstruction
        changes = settings.config_changes()
        self.recon_panel.latency_plot.set_target(changes["warm_budget"].target_latency_s)
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
            self.acquisition_panel.log(
                f"Reconstruction: {changes['method']}, budget {changes['warm_budget'].label}, τ {changes['tv_weight']:g}, "
                f"{settings.device}, warm start {'on' if settings.warm_start else 'off'} (from the next timepoint)")
        self.update_status()

    def _on_reset_requested(self) -> None:
        if self.reconstructor is not None:
            self.reconstructor.request(reset=True)
            self.statusBar().showMessage("The next timepoint starts from scratch.", 5000)
            self.acquisition_panel.log("Reconstruction restarts from scratch at the next timepoint")

    # ================================================================ detection pupil (app/pupil.py)
    calibrate_pupil = pupil.calibrate_pupil
    load_pupil = pupil.load_pupil
    save_pupil = pupil.save_pupil

    # ================================================================ recordings, replay
    open_recording = recordings.open_recording
    reconstruct_recording = recordings.reconstruct_recording

    def set_recording_text(self, text: str) -> None:
        """What the timeline shows: in its dock title (name) and tooltip (full text)."""
        self.timeline.recording_text = text
        name = self.recording_path.name if self.recording_path is not None else "no recording"
        detail = text.split(" — ", 1)[1] if " — " in text else ""
        self.docks["timeline"].setWindowTitle(f"Timeline — {name}" + (f" · {detail}" if detail else ""))
        self.docks["timeline"].setToolTip(text)

    def _on_timeline_t(self, t: int) -> None:
        if self.model.view.following and self.acquiring:
            self.model.view.following = False
        self.request_replay(t)

    def _on_follow(self, follow: bool) -> None:
        if follow and self.session is None:
            self.model.view.following = False  # nothing live to follow
        elif follow:
            self.timeline.stop_playing()

    def request_replay(self, t: int) -> None:
        """Show timepoint ``t`` of the shown recording (unless the views follow the acquisition)."""
        if self.recording_path is None or self.model.view.following:
            return
        self.loader.request(int(t), self.model.view.replay_kind)

    def _show_replay(self, item: ReplayItem) -> None:
        meta = self.shown_meta
        if self.model.view.following or item.path != self.recording_path or self.movie is not None or meta is None:
            return
        if item.n_timepoints > self.timeline.count and not self.acquiring:
            self.timeline.set_count(item.n_timepoints)
        self.frames_view.set_frames(item.frames, meta.camera.pixel_size_um, item.sources_um_xyz[:, :2])
        if item.dn is not None:
            self.volume_view.set_volume(item.dn, meta.geometry.voxel_um_zyx, meta.optics.n_medium)
            self.model.view.volume_t = item.t
        else:
            what = "ground truth" if item.dn_kind == "truth" else "reconstruction"
            self.statusBar().showMessage(f"Timepoint {item.t} has no stored {what}.", 3000)
        self.model.view.frames_t = item.t

    # ================================================================ exports
    export_dn_stack = actions.export_dn_stack
    save_snapshot = actions.save_snapshot
    export_movie = actions.export_movie

    # ================================================================ status
    def update_status(self) -> None:
        recon = self.reconstructor
        self.status_labels.show(
            self.live.stats, acquiring=self.acquiring, session=self.session is not None,
            views=self.microscope.info.n_views if self.microscope is not None else 0,
            device=recon.device if recon is not None else self.model.reconstruction.device,
        )

    def update_mode_label(self) -> None:
        if self.session is not None and not self.acquisition_ended:
            mode, color = ("● RECORDING", "#ff4d5e") if self.session_record else ("● LIVE", "#3cff8f")
        elif self.session is not None:  # the acquisition ended; the last timepoints are being reconstructed
            mode, color = "acquisition ended · reconstructing", style.MUTED
        else:
            mode, color = "idle", style.MUTED
        source = "Simulated microscope" if self.model.acquisition.source == DEMO_SOURCE else "Micro-Manager"
        self.mode_label.setText(f"{source} · {mode}  ")
        self.mode_label.setStyleSheet(f"color: {color}; font-weight: 600;")
        title = f"nvp-live — {source}"
        if self.recording_path is not None:
            title += f" — {self.recording_path.name}"
        self.setWindowTitle(title)

    def update_actions(self) -> None:
        """Enable the actions the current state allows."""
        running = self.session is not None
        offline = self.offline is not None and self.offline.running
        calibrating = self.pupil_task is not None
        busy = self.loading or offline or self.movie is not None or calibrating
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
        a["calibrate_pupil"].setEnabled(self.microscope is not None and not running and not busy)
        a["save_pupil"].setEnabled(self.model.pupil.calibrated is not None)

    # ================================================================ closing
    def shutdown(self) -> None:
        """Stop everything (abort the acquisition; the data on disk stays), release the microscope."""
        if self._shut_down:
            return
        self._shut_down = True
        self.closing = True
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
        if self.pupil_task is not None:
            self.pupil_task.cancel()  # the z-stack ends after its plane, the fit at its next evaluation
            self.pupil_task.join(30)
        self.loader.shutdown()
        if self.microscope is not None:
            self.bridge.release(self.microscope.core)
            self.microscope.close()
            self.microscope = None
        if self._own_scratch:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
        logger.info("Window closed")

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        try:
            self.save_settings()
        except Exception:
            logger.exception("Saving the settings failed")
        self.shutdown()
        super().closeEvent(event)
