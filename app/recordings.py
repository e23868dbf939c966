"""Window actions on recordings: open one in the timeline, reconstruct one offline.

Small functions of the window (pymmcore-gui style); the window offers them as its
methods. Reading timepoints for replay is the :class:`~nvplive.app.workers.RecordingLoader`'s
job (a worker thread); an offline reconstruction runs in an
:class:`~nvplive.app.workers.OfflineReconstruction` whose events reach the GUI thread
through the window's bridge.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6 import QtCore, QtWidgets

from nvplive.acquisition.recording import Recording
from nvplive.errors import NvpLiveError

from .workers import OfflineReconstruction

if TYPE_CHECKING:
    from nvplive.recon.reconstructor import ReconConfig

    from .main_window import MainWindow

logger = logging.getLogger("nvplive.app")


def open_recording(window: MainWindow, path: str | Path | None = None) -> bool:
    """Show a recording in the timeline (validated first); False when it cannot be opened."""
    if window.acquiring:
        window.report_error("Open recording", "Stop the acquisition before opening another recording.")
        return False
    if window.offline is not None and window.offline.running:
        window.report_error("Open recording", "An offline reconstruction is running; cancel it first.")
        return False
    if path is None:
        start = window.settings.value("paths/last_open", str(Path.home()), type=str)
        path = QtWidgets.QFileDialog.getExistingDirectory(window, "Open recording (NAME.fdt folder)", start)
        if not path:
            return False
    path = Path(path)
    try:
        with Recording.open(path) as rec:
            n, meta = rec.n_timepoints, rec.meta
            volumes = "volumes missing (Reconstruct… writes them again)" if rec.missing_volumes else (
                f"{len(rec.volume_timepoints)} volumes")
            truth, interrupted, writer = rec.has_ground_truth, rec.interrupted, rec.writer
    except Exception as exc:
        window.report_error("Could not open the recording", exc)
        return False
    window.settings.setValue("paths/last_open", str(path.parent))
    window.recording_path = path
    window.shown_meta = meta
    window.model.view.following = False
    timeline = window.timeline
    timeline.stop_playing()
    timeline.set_count(n)
    timeline.show_timepoint(0)
    notes = [f"{n} timepoints", f"{meta.n_views} views", volumes]
    notes += ["ground truth"] if truth else []
    if writer is not None:  # open: another process writes it (docs/format.md, "One writer")
        notes.append(f"being written by process {writer.get('pid', '?')}")
    elif interrupted:
        notes.append("interrupted")
    window.set_recording_text(f"{path} — {', '.join(notes)}")
    window.loader.set_path(path)
    window.request_replay(0)
    logger.info("Opened recording %s (%s)", path, ", ".join(notes))
    window.acquisition_panel.log(f"Opened {path.name}: {', '.join(notes)}")
    window.statusBar().showMessage(f"Opened {path}", 5000)
    window.update_actions()
    return True


def reconstruct_recording(window: MainWindow, path: str | Path | None = None) -> bool:
    """Reconstruct every timepoint of the shown (or given) recording in a worker thread, with the
    model's reconstruction settings; progress in the timeline, Cancel stops it."""
    path = Path(path) if path is not None else window.recording_path
    if path is None:
        window.report_error("Reconstruct recording", "Open a recording first.")
        return False
    if window.session is not None and window.session.path == path:
        window.report_error("Reconstruct recording", "This recording is still being written; stop the acquisition first.")
        return False
    if window.offline is not None and window.offline.running:
        return False
    if path != window.recording_path and not open_recording(window, path):
        return False
    config, device = window.model.reconstruction.config(), window.model.reconstruction.device
    window.loader.release()
    offline = window.offline = OfflineReconstruction(path, config, device)
    timeline, bridge, events = window.timeline, window.bridge, offline.events

    def progress(done: int, total: int, message: str) -> None:
        timeline.progress.setValue(int(1000 * done / max(total, 1)))
        timeline.progress.setFormat(f"%p% · {message}")

    def finished(message: str, error: bool = False) -> None:
        bridge.release(offline)
        offline.join(5)
        timeline.set_offline_running(False)
        timeline.progress.setFormat(message if not error else "failed")
        QtCore.QTimer.singleShot(8000, timeline, lambda: None if window.offline is not None and window.offline.running
                                 else timeline.progress.hide())
        if error:
            window.report_error("Offline reconstruction", message)
        else:
            window.statusBar().showMessage(message, 10000)
            window.acquisition_panel.log(message, "ok")
        if path == window.recording_path:
            t = timeline.current
            open_recording(window, path)
            timeline.show_timepoint(min(t, max(0, timeline.count - 1)))
            window.request_replay(timeline.current)
        window.update_actions()

    bridge.latest(events.progress, progress, owner=offline)
    bridge.queued(events.done, lambda s: finished(
        f"Reconstructed {s.timepoints} timepoints on {s.device} in {s.seconds:.1f} s"), owner=offline)
    bridge.queued(events.cancelled, lambda _path: finished("Offline reconstruction cancelled"), owner=offline)
    bridge.queued(events.failed, lambda message: finished(message, error=True), owner=offline)
    offline.start()
    timeline.set_offline_running(True)
    window.statusBar().showMessage(f"Reconstructing {path} ({config.method} on {device})…")
    window.acquisition_panel.log(f"Offline reconstruction of {path.name} started ({config.method}, {device})")
    warn_of_other_beads_in(window, path, config)
    window.update_actions()
    return True


def warn_of_other_beads_in(window: MainWindow, path: Path, config: ReconConfig) -> None:
    """Say in the activity log when the recording's own pupil.json, which the offline
    reconstruction starts from, was calibrated with other beads than it images (an unreadable
    file is the reconstruction's own error to report)."""
    from nvplive.acquisition.offline import other_beads_warning

    try:
        warning = other_beads_warning(path, config)
    except NvpLiveError:
        return
    if warning:
        window.acquisition_panel.log(warning, "warning")


def cancel_offline(window: MainWindow) -> None:
    """Cancel the running offline reconstruction (it ends at its next progress report)."""
    if window.offline is not None and window.offline.running:
        window.offline.cancel()
        window.timeline.progress.setFormat("cancelling…")
