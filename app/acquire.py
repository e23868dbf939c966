"""Window actions on the microscope and the live acquisition: load, Live/Record, Stop, the session's end.

Small functions of the window (pymmcore-gui style); the window offers
:func:`prepare_microscope`, :func:`start_acquisition` and :func:`stop_acquisition` as
its methods. Loading runs in a worker thread; the session itself is the Qt-free
:class:`~nvplive.acquisition.live.LiveSession`, drawn by the window's
:class:`~nvplive.app.live_display.LiveDisplay`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6 import QtCore, QtWidgets

from nvplive.acquisition.live import (
    LiveReconstructor,
    LiveSession,
    Microscope,
    SessionEnd,
    live_reconstructor,
    load_demo_microscope,
    load_hardware_microscope,
    new_recording_path,
    suggested_demo_interval,
)
from nvplive.acquisition.pipeline import AcquisitionSummary
from nvplive.acquisition.recording import Recording

from .model import DEMO_SOURCE
from .paths import default_data_dir
from .pupil import warn_of_other_beads
from .workers import remove_scratch_recording

if TYPE_CHECKING:
    from .main_window import MainWindow


def microscope_key(window: MainWindow) -> tuple:
    """What the model says to load: ('demo', views, options) or ('hw', cfg, settings)."""
    acq = window.model.acquisition
    if acq.source == DEMO_SOURCE:
        return ("demo", acq.views, window.demo_options)
    return ("hw", acq.mm_config, acq.settings_file)

def on_source_changed(window: MainWindow) -> None:
    """The microscope configuration changed: say that it loads on Live/Record."""
    window.update_mode_label()
    if window.session is None and window.microscope is not None and window.microscope.key != microscope_key(window):
        window.acquisition_panel.microscope_label.setText("changed: loads on Live/Record")

def prepare_microscope(window: MainWindow, then: Callable[[], None] | None = None) -> None:
    """Load the microscope (and its reconstructor) in a worker thread, then call ``then``."""
    if window.loading or window.pupil_task is not None:
        return
    key = microscope_key(window)
    panel = window.acquisition_panel
    if key[0] == "hw" and (not key[1] or not key[2]):
        window.report_error(
            "Microscope", "Choose a Micro-Manager configuration (.cfg) and an FDT settings file (.json) first."
        )
        return
    current = window.microscope if window.microscope is not None and window.microscope.key == key else None
    acq, rec = window.model.acquisition, window.model.reconstruction
    views, exposure = acq.views, acq.exposure_ms
    config, device, warm = rec.config(), rec.device, rec.warm_start
    calibrated = window.model.pupil.calibrated
    pupil = calibrated.pupil if calibrated is not None else None
    reconstructor = window.reconstructor if current is not None else None
    want_interval = window.auto_interval_pending and key[0] == "demo"
    options = window.demo_options

    def load() -> tuple:
        microscope = current
        if microscope is None:
            if key[0] == "demo":
                microscope = load_demo_microscope(views, exposure, options)
            else:
                microscope = load_hardware_microscope(Path(key[1]), Path(key[2]))
        recon = reconstructor or live_reconstructor(microscope.info, config, device, warm_start=warm, pupil=pupil)
        interval = suggested_demo_interval(microscope) if want_interval else None
        return microscope, recon, interval

    window.loading = True
    window.update_actions()
    panel.state_label.setText("Loading the microscope…")
    window.statusBar().showMessage("Loading the microscope…")
    QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.BusyCursor)

    def failed() -> None:
        QtWidgets.QApplication.restoreOverrideCursor()
        window.loading = False
        panel.state_label.setText("Microscope not loaded")
        window.update_actions()

    def done(result: tuple) -> None:
        QtWidgets.QApplication.restoreOverrideCursor()
        window.loading = False
        microscope_ready(window, *result)
        if then is not None:
            then()

    window.run_in_background("Loading the microscope", load, done, failed)

def microscope_ready(window: MainWindow, microscope: Microscope, recon: LiveReconstructor, interval: float | None) -> None:
    """A loaded microscope and its live reconstructor become the window's."""
    panel = window.acquisition_panel
    if window.microscope is not microscope:
        if window.microscope is not None:
            window.bridge.release(window.microscope.core)
            window.microscope.close()
        events = microscope.core.events  # the panel's instrument readout follows the core
        for signal in (events.pixelSizeChanged, events.roiSet, events.propertyChanged, events.systemConfigurationLoaded):
            window.bridge.latest(signal, lambda *_: show_instrument(window), owner=microscope.core)
    window.microscope = microscope
    warn_of_other_beads(window)
    if recon is not window.reconstructor:
        window.reconstructor = recon
        window.live.clear_losses()
    if interval is not None:
        window.auto_interval_pending = False
        window.model.acquisition.interval_s = interval
    info = microscope.info
    panel.set_sources(list(info.presets), info.sources_um_xyz)
    if window.model.view.volume_t is None:
        # The empty volume's box and µm axes right away: the user sees the field of
        # view, and the first reconstruction only uploads a texture (no stall then).
        geometry = info.geometry
        window.volume_view.set_volume(np.zeros(geometry.shape_zyx, np.float32), geometry.voxel_um_zyx, info.optics.n_medium)
        window.volume_view.canvas.render()
    if not microscope.demo:
        window.model.acquisition.views = info.n_views
    panel.microscope_label.setText(microscope.label)
    show_instrument(window)
    panel.state_label.setText("Ready")
    panel.log(f"Microscope ready: {microscope.label}")
    window.statusBar().showMessage(f"Microscope ready: {microscope.label}", 5000)
    window.update_actions()
    window.update_status()

def show_instrument(window: MainWindow) -> None:
    """The Acquisition panel shows what the loaded microscope reports now (pixel size, bit depth, trigger)."""
    microscope = window.microscope
    if microscope is None:
        window.acquisition_panel.set_instrument(None)
        return
    info = microscope.info
    try:
        state = info.read_instrument(microscope.core)
    except Exception as exc:  # a device that fails to answer must not break the window
        window.acquisition_panel.log(f"Could not read the instrument: {exc}", "warning")
        return
    window.acquisition_panel.set_instrument(state, info.geometry.camera_pixel_um)

def start_acquisition(window: MainWindow, record: bool = False) -> None:
    """Live (scratch recording) or Record (saved recording): acquire and reconstruct."""
    if window.session is not None or window.loading or window.closing:
        window.update_actions()
        return
    busy = ("An offline reconstruction is running; cancel it first." if window.offline is not None and window.offline.running
            else "A movie is being exported; wait for it to finish." if window.movie is not None else None)
    if busy:
        window.report_error("Acquisition", busy)
        window.update_actions()
        return
    if window.microscope is None or window.microscope.key != microscope_key(window) or window.reconstructor is None:
        window.prepare_microscope(then=lambda: start_session(window, record))
        window.update_actions()
        return
    start_session(window, record)

def recording_target(window: MainWindow, record: bool) -> Path:
    """Where a session writes: a scratch recording (Live) or a new name in the save folder (Record)."""
    if not record:
        window.live_count += 1
        return window.scratch_dir / f"live-{window.live_count:03d}.fdt"
    if window.out is not None and window.out.suffix == ".fdt":
        target, window.out = window.out, None  # the command line's exact name is used once
        return target
    folder = Path(window.model.acquisition.save_dir or default_data_dir() / "recordings").expanduser()
    return new_recording_path(folder, "demo" if window.microscope is not None and window.microscope.demo else "fdt")

def start_session(window: MainWindow, record: bool) -> None:
    """Start a live session on the loaded microscope (errors are reported)."""
    microscope, reconstructor = window.microscope, window.reconstructor
    if microscope is None or reconstructor is None or window.session is not None:
        window.update_actions()
        return
    acq = window.model.acquisition
    window.loader.set_path(None)
    previous = window.recording_path
    if previous is not None and previous.parent == window.scratch_dir:
        remove_scratch_recording(previous)
    try:
        microscope.core.setExposure(acq.exposure_ms)
        microscope.info.exposure_ms = float(acq.exposure_ms)
        window.apply_reconstruction_settings()
        path = recording_target(window, record)
        path.parent.mkdir(parents=True, exist_ok=True)
        session = LiveSession(
            microscope, reconstructor, path, timepoints=acq.timepoint_count, interval_s=acq.interval_s,
            extra={"app": "nvp-live", "mode": "record" if record else "live"}, durable=window.durable,
        )
        window.live.attach(session)
        window.bridge.queued(session.events.acquisition_finished, lambda summary: on_acquisition_finished(window, summary),
                             owner=session)
        window.bridge.queued(session.events.closed, lambda end: session_closed(window, end), owner=session)
        session.start()
    except Exception as exc:
        window.live.detach()
        window.report_error("Could not start the acquisition", exc)
        window.update_actions()
        return
    window.session = session
    window.session_record = record
    window.acquisition_ended = False
    calibrated = window.model.pupil.calibrated
    if calibrated is not None:  # the recording reconstructs offline through the same pupil
        try:
            session.writer.write_pupil(calibrated.pupil, calibrated.optics, **calibrated.provenance)
        except Exception as exc:
            window.report_error("Pupil", f"Could not store the pupil in {path.name}: {exc}", box=False)
    window.model.view.volume_t = window.model.view.frames_t = None
    window.recording_path = path
    window.shown_meta = session.writer.meta
    window.model.view.following = True
    window.timeline.stop_playing()
    window.timeline.set_count(0)
    window.set_recording_text(f"{path} — {'recording' if record else 'live (scratch recording)'}")
    window.loader.set_path(path)
    window.acquisition_panel.set_running(True)
    what = "Recording" if record else "Live"
    n = acq.timepoints
    window.acquisition_panel.state_label.setText(
        f"{what}: {'continuous' if n == 0 else f'{n} timepoints'}, interval {acq.interval_s:.2f} s")
    window.statusBar().showMessage(f"{what} started: {path}", 5000)
    window.acquisition_panel.log(f"{what} started → {path.name}", "ok")
    window.update_actions()
    window.update_mode_label()

def stop_acquisition(window: MainWindow) -> None:
    """Finish the current timepoint, reconstruct what is pending, close the recording."""
    if window.session is not None and window.session.running:
        window.session.stop()
        window.acquisition_panel.state_label.setText("Stopping: finishing the current timepoint…")
        window.acquisition_panel.log("Stop requested: finishing the current timepoint")
    window.update_actions()

def on_acquisition_finished(window: MainWindow, _summary: AcquisitionSummary) -> None:
    """The acquisition ended; the reconstruction finishes what is waiting."""
    window.acquisition_ended = True  # the thread that emitted this may still be alive: say so by the event
    window.acquisition_panel.state_label.setText("Acquisition ended; finishing the reconstruction…")
    window.update_actions()
    window.update_mode_label()

def session_closed(window: MainWindow, end: SessionEnd) -> None:
    """The session closed its recording: report how it ended; the timeline replays it."""
    session, window.session = window.session, None
    if session is not None:
        window.bridge.release(session)
    window.live.detach()
    window.last_session_end = end
    panel = window.acquisition_panel
    panel.set_running(False)
    summary = end.summary
    n = summary.timepoints_complete if summary is not None else 0
    where = f"saved in {end.path}" if window.session_record else f"in the scratch recording {end.path}"
    if summary is not None and summary.status == "failed":
        window.report_error("Acquisition stopped",
                          f"{summary.error or 'The acquisition failed.'}\n\nThe {n} complete timepoint(s) are {where}.")
        panel.state_label.setText(f"Stopped by an error after {n} timepoints ({where}).")
    else:
        status = summary.status if summary is not None else "ended"
        panel.state_label.setText(
            f"{status.capitalize()}: {n} timepoints, {end.reconstructed} reconstructed, {end.skipped} skipped; {where}.")
        panel.log(f"Acquisition {status}: {n} timepoints, {end.reconstructed} reconstructed → {end.path.name}", "ok")
    window.statusBar().showMessage(f"Acquisition {summary.status if summary else 'ended'}: {end.path}", 10000)
    window.model.view.following = False  # the timeline now replays the finished recording
    if session is not None and window.recording_path == session.path:
        try:
            with Recording.open(end.path) as rec:
                window.shown_meta = rec.meta
                window.timeline.set_count(rec.n_timepoints)
                label = f"{end.path} — {rec.n_timepoints} timepoints, {len(rec.volume_timepoints)} volumes"
            window.set_recording_text(label + ("" if window.session_record else ", scratch"))
            window.loader.set_path(end.path)
        except Exception as exc:
            window.report_error("Recording", exc)
    window.update_actions()
    window.update_mode_label()
