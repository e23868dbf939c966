"""The views of a running live session: they follow its events.

Like a napari vispy layer that only follows ``layer.events``, :class:`LiveDisplay`
connects a :class:`~nvplive.acquisition.live.LiveSession`'s typed events (through the
:class:`~nvplive.app.bridge.GuiBridge`, so in the GUI thread; newest-only for frames,
volumes and progress) to the frames view, the 3D view, the reconstruction panel's
progress and traces, the timeline and the status figures. It draws only while the
view state says the views follow the acquisition.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nvplive.acquisition.live import LiveSession, VolumeUpdate
from nvplive.recon.loop import LATENCY_ITERATION_CAP

from .bridge import GuiBridge
from .frames_view import FramesView
from .model import ViewState
from .panels import ReconstructionPanel, TimelinePanel
from .status import LiveStats
from .volume_view import VolumeView


class LiveDisplay:
    """Draws what a live session reports.

    Args:
        bridge: delivers the session's events in the GUI thread.
        view: the model's view state (``following``; ``frames_t``/``volume_t`` are set
            to the timepoints drawn).
        frames_view, volume_view, recon_panel, timeline: the views it draws in.
        log: ``(text, level)`` → the activity list; report: ``(title, message, box)`` → an
            error for the user (in a message box when ``box``); notify: ``(text, ms)`` → the status bar.
    """

    def __init__(
        self,
        bridge: GuiBridge,
        view: ViewState,
        frames_view: FramesView,
        volume_view: VolumeView,
        recon_panel: ReconstructionPanel,
        timeline: TimelinePanel,
        *,
        log: Callable[[str, str], None],
        report: Callable[[str, str, bool], None],
        notify: Callable[[str, int], None],
    ) -> None:
        self.bridge = bridge
        self.view = view
        self.frames_view = frames_view
        self.volume_view = volume_view
        self.recon_panel = recon_panel
        self.timeline = timeline
        self._log, self._report, self._notify = log, report, notify
        self.stats = LiveStats()
        self.session: LiveSession | None = None
        self.losses: list[float] = []
        #: The update in progress: its loss at every iteration reported so far (iterations whose
        #: reports were coalesced take the next one's value), drawn after ``losses`` until the update ends.
        self.update_losses: list[float] = []
        self.error_shown = False
        self.paused = False

    def attach(self, session: LiveSession) -> None:
        """Follow ``session`` (forgetting the previous one's figures)."""
        self.detach()
        self.session = session
        self.stats.reset()
        self.error_shown = False
        self.recon_panel.latency_plot.clear_data()
        events, bridge = session.events, self.bridge
        bridge.latest(events.frames, self.show_frames, owner=self)
        bridge.latest(events.volume, self.show_volume, owner=self)
        bridge.latest(events.progress, self.show_progress, owner=self)
        bridge.queued(events.timepoint, self._on_timepoint, owner=self)
        bridge.queued(events.reconstructed, self._on_reconstructed, owner=self)
        bridge.queued(events.skipped, self._on_skipped, owner=self)
        bridge.queued(events.reconstruction_error, self._on_error, owner=self)
        bridge.queued(events.truth_error, lambda _t, message: self._on_error(message), owner=self)
        bridge.queued(events.flagged, self._on_flagged, owner=self)
        bridge.queued(events.acquisition_error, lambda message: self._notify(f"Acquisition error: {message}", 15000),
                      owner=self)

    def detach(self) -> None:
        """Stop following the session (what already waits is still drawn)."""
        self.bridge.release(self)
        self.session = None

    def clear_losses(self) -> None:
        """A new reconstructor: its loss trace starts empty."""
        self.losses = []
        self.update_losses = []
        self.recon_panel.loss_plot.clear_data()

    def _drawing(self) -> bool:
        return self.session is not None and self.view.following and not self.paused

    # -- newest-only ---------------------------------------------------------------------------
    def show_frames(self, t: int, frames: np.ndarray) -> None:
        """Camera frames ``[V, Y, X]`` of timepoint ``t``, with the sources the reconstruction uses."""
        session = self.session
        if session is None or not self._drawing():
            return
        info = session.microscope.info
        last = getattr(session.reconstructor, "last_result", None)
        sources = np.asarray(last.sources_um_xyz if last is not None else info.sources_um_xyz, float)
        xy = sources[:, :2] if sources.shape[0] == frames.shape[0] else None
        self.frames_view.set_frames(frames, info.geometry.camera_pixel_um, xy)
        self.view.frames_t = t

    def show_volume(self, update: VolumeUpdate) -> None:
        """A reconstructed Δn volume."""
        session = self.session
        if session is None or not self._drawing():
            return
        info = session.microscope.info
        self.volume_view.set_volume(update.dn, info.geometry.voxel_um_zyx, info.optics.n_medium)
        if not update.warm:
            self._log(f"t={update.t}: cold start done ({update.iterations} it in {update.seconds:.1f} s)", "ok")
        self.view.volume_t = update.t
        self.recon_panel.progress_label.setText(
            f"t {update.t}: {update.method}, {'warm' if update.warm else 'cold'}, {update.iterations} it in "
            f"{update.seconds:.2f} s ({update.stopped_by})")

    def show_progress(self, it: int, total: int, loss: float, cold: bool, phase: str) -> None:
        """The update in progress: the pupil calibration's evaluations, or the volume's iterations."""
        update = "Cold start" if cold else "Warm update"
        if phase == "calibration":
            self.recon_panel.progress_label.setText(f"{update}: calibrating the pupil, evaluation {it}/{total} · loss {loss:.4g}")
            return
        of = f"/{total}" if total < LATENCY_ITERATION_CAP else ""
        self.recon_panel.progress_label.setText(f"{update}: iteration {it}{of} · loss {loss:.4g}")
        self._trace_update(it, loss)

    def _trace_update(self, it: int, loss: float) -> None:
        """Draw the update in progress up to iteration ``it`` (a cold start of minutes on a CPU
        shows its loss falling, not an empty plot); its own losses replace it when it ends."""
        if it < len(self.update_losses):  # a new update began
            self.update_losses = []
        self.update_losses.extend([loss] * (it - len(self.update_losses)))
        plot = self.recon_panel.loss_plot
        plot.set_data((self.losses + self.update_losses)[-plot.max_points:])

    # -- every event ----------------------------------------------------------------------------
    def _on_timepoint(self, t: int, completed_s: float, frames_written: int) -> None:
        self.stats.timepoint(completed_s, frames_written)
        self.timeline.set_count(t + 1)
        if self.view.following:
            self.timeline.show_timepoint(t)

    def _on_reconstructed(self, t: int, latency_s: float, losses: list[float], warm: bool) -> None:
        self.stats.volume(latency_s)
        if warm and np.isfinite(latency_s):  # the plot shows warm-update latency; cold starts go to the log
            self.recon_panel.latency_plot.append(latency_s, x=t)  # at its timepoint: skipped ones leave a gap
        self.update_losses = []
        plot = self.recon_panel.loss_plot
        if losses:
            self.losses = (self.losses + list(losses))[-plot.max_points:]
        plot.set_data(self.losses)

    def _on_skipped(self, _t: int, total: int) -> None:
        self.stats.skipped = total

    def _on_error(self, message: str) -> None:
        """The first reconstruction error of a session in a message box, the others in the status bar."""
        self._report("Reconstruction", message, not self.error_shown)
        self.error_shown = True

    def _on_flagged(self, t: int, message: str) -> None:
        self._notify(f"Reconstruction of timepoint {t} diverged and was rolled back; acquisition goes on. {message}",
                     15000)
