"""Headless demo: the app's live path without the window.

``nvplive demo --headless`` calls :func:`run_headless_demo`: it loads the simulated
microscope (beating cardiomyocyte, ``views`` beads) and runs the same
:class:`~nvplive.acquisition.live.LiveSession` the app runs for Live/Record, with the
same live configuration (:data:`~nvplive.acquisition.live.LIVE_CONFIG`) and the same
failure policy: every frame goes to ``NAME.fdt`` as it arrives together with the
phantom's true Δn of each timepoint (ground truth, at the sample time the frames
report), the newest complete timepoint is reconstructed in a worker thread (older ones
are skipped when it falls behind) and the volumes go to the same recording.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvplive.errors import AcquisitionError
from nvplive.recon.reconstructor import ReconConfig
from nvplive.recon.simulate import PartialCoherence

from .devices import SimulatedScene
from .live import LIVE_CONFIG, DemoOptions, LiveSession, live_reconstructor, load_demo_microscope, new_recording_path
from .microscope import MicroscopeInfo
from .pipeline import AcquisitionSummary, VolumeRecord
from .recording import SUFFIX

ReconstructorFactory = Callable[[MicroscopeInfo], Any]


def default_reconstructor_factory(device: str = "auto", config: ReconConfig = LIVE_CONFIG) -> ReconstructorFactory:
    """A factory of the app's live reconstructor (:func:`~nvplive.acquisition.live.live_reconstructor`)
    with ``config`` (default: the live configuration) on ``device``."""
    return lambda info: live_reconstructor(info, config, device)


@dataclass
class DemoTimepoint:
    """One timepoint of the demo: acquisition and reconstruction timing."""

    t: int
    sample_time_s: float
    acquisition_s: float
    reconstructed: bool
    latency_s: float | None = None
    recon_seconds: float | None = None
    iterations: int | None = None
    loss: float | None = None
    flagged: bool = False
    stopped_by: str = ""


#: What ended a warm update, in the report's words (:attr:`.pipeline.VolumeRecord.stopped_by`).
STOP_WORDS = {"iterations": "iteration budget", "plateau": "loss plateau", "time": "time budget", "diverged": "diverged"}


@dataclass
class DemoResult:
    """What :func:`run_headless_demo` did.

    Attributes:
        path: the recording folder.
        acquisition: the acquisition summary.
        timepoints: per complete timepoint: acquisition time, reconstruction latency.
        skipped: timepoints the reconstruction skipped (a newer one was waiting).
        reconstruction_errors: messages of failed reconstructions.
        interval_s: the acquisition interval used (s).
        seconds: wall time of the whole demo (s).
    """

    path: Path
    acquisition: AcquisitionSummary
    timepoints: list[DemoTimepoint]
    skipped: int
    skipped_timepoints: list[int]
    reconstruction_errors: list[str]
    interval_s: float
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def reconstructed(self) -> list[int]:
        """Timepoints whose volume was reconstructed, in order."""
        return [tp.t for tp in self.timepoints if tp.reconstructed]

    @property
    def flagged(self) -> list[int]:
        """Timepoints whose reconstruction diverged and was rolled back."""
        return [tp.t for tp in self.timepoints if tp.flagged]

    def report(self) -> str:
        """A small text table of the run."""
        lines = [
            f"Recording: {self.path}",
            f"Acquisition: {self.acquisition.status}, {self.acquisition.timepoints_complete}/"
            f"{self.acquisition.timepoints_requested} timepoints, interval {self.interval_s:.3f} s"
            + (f" — {self.acquisition.error}" if self.acquisition.error else ""),
            "   t  sample_t[s]  acquire[s]  recon latency[s]  recon[s]  iterations  stopped by",
        ]
        for tp in self.timepoints:
            if tp.reconstructed:
                recon = (f"{tp.latency_s:16.3f}  {tp.recon_seconds:8.3f}  {tp.iterations:10d}  "
                         f"{STOP_WORDS.get(tp.stopped_by, tp.stopped_by)}" + ("  flagged" if tp.flagged else ""))
            else:
                recon = f"{'skipped':>16}"
            lines.append(f"{tp.t:4d}  {tp.sample_time_s:11.3f}  {tp.acquisition_s:10.3f}  {recon}".rstrip())
        lines.append(
            f"Reconstructed {len(self.reconstructed)}, skipped {self.skipped}"
            + (f", flagged {len(self.flagged)}" if self.flagged else "")
            + (f", failed {len(self.reconstruction_errors)}" if self.reconstruction_errors else "")
            + f"; total {self.seconds:.1f} s."
        )
        late = sum(1 for tp in self.timepoints if self.interval_s > 0 and tp.acquisition_s > self.interval_s)
        if late:
            lines.append(
                f"Acquisition took longer than the {self.interval_s:.3f} s interval at {late} of "
                f"{len(self.timepoints)} timepoints (the simulated camera renders on this machine's CPU: a busy "
                "machine, or a larger volume, needs a longer interval: nvplive demo --headless --interval S)."
            )
        return "\n".join(lines)


def recording_path(out: Path) -> Path:
    """The recording a demo writes for ``out``: ``out`` itself if it ends in .fdt, else a new
    ``demo-YYYYmmdd-HHMMSS.fdt`` in the folder ``out`` (:func:`.live.new_recording_path`), so
    that a second run never meets the first one's recording."""
    out = Path(out)
    return out if out.suffix == SUFFIX else new_recording_path(out, "demo")


def auto_interval(scene: SimulatedScene, views: int, exposure_ms: float) -> float:
    """An interval (s) the simulated acquisition keeps up with: V frames of max(exposure, render) + 30 %."""
    scene.expected_frame(0, 0.0, exposure_ms=exposure_ms)  # builds the simulator and renders Δn(0)
    timings = []
    for view in range(min(3, scene.n_views)):  # the fastest of three: robust to a busy machine
        start = time.perf_counter()
        scene.expected_frame(view, 0.0, exposure_ms=exposure_ms)
        timings.append(time.perf_counter() - start)
    render_s = min(timings)
    frame_s = max(exposure_ms / 1000.0, render_s)
    return math.ceil(views * frame_s * 1.3 / 0.05) * 0.05


def run_headless_demo(
    out: Path,
    timepoints: int,
    views: int = 7,
    shape: tuple[int, int, int] = (32, 64, 64),
    voxel_um: tuple[float, float, float] = (0.25, 0.25, 0.25),
    *,
    interval_s: float | None = None,
    exposure_ms: float = 20.0,
    seed: int = 0,
    time_quantum_s: float = 0.01,
    coherence: PartialCoherence | None = None,
    reconstructor_factory: ReconstructorFactory | None = None,
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
    durable: bool = True,
) -> DemoResult:
    """Acquire on the simulated microscope with live reconstruction; write the recording.

    Args:
        out: the recording folder (``*.fdt``) or a directory to put a new
            ``demo-YYYYmmdd-HHMMSS.fdt`` in (:func:`recording_path`).
        timepoints: number of timepoints; views: sources per timepoint.
        shape, voxel_um: the simulated and reconstructed volume (voxels ZYX, µm).
        interval_s: time between timepoints (s); ``None`` picks one the simulator keeps
            up with.
        exposure_ms: camera exposure per frame.
        seed: phantom, beads and noise.
        time_quantum_s: the specimen is held still during each timepoint at the time
            of its first frame, rounded down to this quantum; all views image that Δn,
            which is stored as the timepoint's ground truth.
        coherence: simulator partial coherence (default: 5 wavelengths × 4 sub-sources).
        reconstructor_factory: ``info -> reconstructor`` with ``warm_update(frames)``;
            default: the app's live reconstructor with :data:`LIVE_CONFIG` on ``device``.
        progress: called with one line of text per event (timepoint acquired,
            volume reconstructed, timepoint skipped, errors); the summary is
            :meth:`DemoResult.report`, for the caller to show.
        overwrite: replace an existing recording; durable: fsync as it writes.

    Raises:
        AcquisitionError: a negative or non-finite interval.
        RecordingError: the recording exists (without ``overwrite``) or cannot be created.
    """
    begin = time.perf_counter()
    say = progress or (lambda _line: None)
    path = recording_path(out)
    options = DemoOptions(tuple(shape), tuple(voxel_um), coherence, seed=seed, time_quantum_s=time_quantum_s)
    microscope = load_demo_microscope(views, exposure_ms, options)
    try:
        scene = microscope.scene
        if interval_s is None:
            interval_s = auto_interval(scene, views, exposure_ms)
        if not (math.isfinite(interval_s) and interval_s >= 0):
            raise AcquisitionError(f"The interval must be ≥ 0 s, got {interval_s!r}.")
        factory = reconstructor_factory or default_reconstructor_factory(device)
        session = LiveSession(
            microscope, factory(microscope.info), path, timepoints=timepoints, interval_s=interval_s,
            extra={"mode": "headless"}, durable=durable, overwrite=overwrite,
        )
        summary, errors = _run(session, say, views, timepoints, shape, interval_s)
    finally:
        microscope.close()

    worker = session.worker
    volumes: dict[int, VolumeRecord] = {r.t: r for r in worker.records}
    rows = []
    for record in summary.timepoints:
        vol = volumes.get(record.t)
        rows.append(
            DemoTimepoint(
                t=record.t,
                sample_time_s=session.sample_times.get(record.t, [float("nan")])[0],
                acquisition_s=record.seconds,
                reconstructed=vol is not None,
                latency_s=None if vol is None else vol.latency_s,
                recon_seconds=None if vol is None else vol.seconds,
                iterations=None if vol is None else vol.iterations,
                loss=None if vol is None else vol.loss,
                flagged=vol is not None and vol.flagged,
                stopped_by="" if vol is None else vol.stopped_by,
            )
        )
    result = DemoResult(
        path=path,
        acquisition=summary,
        timepoints=rows,
        skipped=worker.skipped,
        skipped_timepoints=list(worker.skipped_timepoints),
        reconstruction_errors=errors,
        interval_s=float(interval_s),
        seconds=time.perf_counter() - begin,
        extra={"phantom_renders": scene.phantom_renders},
    )
    return result


def _run(session: LiveSession, say: Callable[[str], None], views: int, timepoints: int, shape, interval_s: float):
    """Run ``session`` to its end, reporting each event as a line of text.

    Returns the acquisition summary and the messages of failed reconstructions and
    ground-truth writes (the session's secondary products).
    """
    events = session.events
    errors: list[str] = []

    def on_error(message: str) -> None:
        errors.append(message)
        say(message)

    def on_timepoint(t: int, _completed_s: float, _frames: int) -> None:
        records = session.acquisition.timepoint_records
        record = records[-1] if records else None
        times = sorted(set(session.sample_times.get(t, [])))
        held = "" if len(times) <= 1 else f" (specimen moved during the timepoint: {times})"
        say(f"t={t} acquired in {record.seconds if record else float('nan'):.3f} s{held}")

    def on_reconstructed(t: int, *_: object) -> None:
        rec = session.worker.records[-1]
        say(f"t={t} reconstructed: latency {rec.latency_s:.3f} s, {rec.iterations} iterations, loss {rec.loss:.4g}"
            + (f" — flagged: {rec.message}" if rec.flagged else ""))

    events.timepoint.connect(on_timepoint)
    events.reconstructed.connect(on_reconstructed)
    events.skipped.connect(
        lambda t, total: say(f"t={t} skipped by the reconstruction (newer timepoint waiting; {total} skipped)")
    )
    events.reconstruction_error.connect(on_error)
    events.truth_error.connect(lambda _t, message: on_error(message))
    events.acquisition_error.connect(lambda message: say(f"Acquisition error: {message}"))

    path = session.path
    say(f"Demo: {views} views × {timepoints} timepoints, volume {tuple(shape)}, interval {interval_s:.3f} s → {path}")
    session.start()
    try:
        try:
            while not session.wait_closed(0.2):
                pass
        except KeyboardInterrupt as interrupt:
            # SIGTERM arrives as a KeyboardInterrupt subclass (nvplive.cli.Terminated); name what the user did
            again = "Ctrl+C" if type(interrupt) is KeyboardInterrupt else "another stop signal"
            say(f"Interrupted: the acquisition stops after the timepoint in progress and the reconstruction finishes "
                f"what is waiting ({again} cancels it); the recording keeps every complete timepoint.")
            session.stop()
            try:
                while not session.wait_closed(0.2):
                    pass
            except KeyboardInterrupt:
                say(f"Interrupted again: reconstruction cancelled; the recording {path} keeps its complete timepoints "
                    f"(nvplive reconstruct {path} fits their volumes).")
                raise
    finally:
        if not session.closed:
            session.shutdown(timeout=60)
    summary = session.acquisition.summary
    assert summary is not None
    return summary, errors
