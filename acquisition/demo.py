"""Headless demo: the simulated microscope, live warm-started reconstruction, a recording.

``nvplive demo --headless`` calls :func:`run_headless_demo`: it builds the simulated
core (beating cardiomyocyte, ``views`` beads), acquires ``timepoints`` FDT
timepoints, writes every frame to ``NAME.fdt`` as it arrives together with the
phantom's true Δn of each timepoint (ground truth), reconstructs the newest
complete timepoint in a worker thread (skipping older ones when it falls behind)
and writes the volumes to the same recording.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nvplive.errors import AcquisitionError
from nvplive.recon.reconstructor import ReconConfig, Reconstructor
from nvplive.recon.simulate import PartialCoherence

from .devices import SimulatedScene, demo_scene
from .microscope import MicroscopeInfo, build_demo_core, release_core
from .offline import reconstructor_for
from .pipeline import AcquisitionSummary, FDTAcquisition, ReconstructionWorker, VolumeRecord, recording_meta
from .recording import SUFFIX, RecordingWriter

ReconstructorFactory = Callable[[MicroscopeInfo], Any]


#: Live settings: a short cold start, then warm updates within a 1 s latency budget.
LIVE_CONFIG = ReconConfig(iterations=150, warm_iterations=30, time_budget_s=1.0)


def make_reconstructor(info: MicroscopeInfo, config: ReconConfig, device: str = "auto") -> Reconstructor:
    """The project's :class:`~nvplive.recon.reconstructor.Reconstructor` for a microscope
    (the one a recording of it would be reconstructed with)."""
    return reconstructor_for(recording_meta(info), config, device)


def default_reconstructor_factory(device: str = "auto", config: ReconConfig = LIVE_CONFIG) -> ReconstructorFactory:
    """A factory building the project's reconstructor with live settings."""
    return lambda info: make_reconstructor(info, config, device)


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
            "   t  sample_t[s]  acquire[s]  recon latency[s]  recon[s]  iterations",
        ]
        for tp in self.timepoints:
            if tp.reconstructed:
                recon = f"{tp.latency_s:16.3f}  {tp.recon_seconds:8.3f}  {tp.iterations:10d}" + ("  flagged" if tp.flagged else "")
            else:
                recon = f"{'skipped':>16}  {'':8}  {'':10}"
            lines.append(f"{tp.t:4d}  {tp.sample_time_s:11.3f}  {tp.acquisition_s:10.3f}  {recon}")
        lines.append(
            f"Reconstructed {len(self.reconstructed)}, skipped {self.skipped}"
            + (f", flagged {len(self.flagged)}" if self.flagged else "")
            + (f", failed {len(self.reconstruction_errors)}" if self.reconstruction_errors else "")
            + f"; total {self.seconds:.1f} s."
        )
        return "\n".join(lines)


def _recording_path(out: Path) -> Path:
    out = Path(out)
    return out if out.suffix == SUFFIX else out / f"demo{SUFFIX}"


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
        out: the recording folder (``*.fdt``) or a directory to put ``demo.fdt`` in.
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
            default: :class:`~nvplive.recon.reconstructor.Reconstructor` on ``device``.
        progress: called with one line of text per event (timepoint acquired,
            volume reconstructed, timepoint skipped, errors).
        overwrite: replace an existing recording; durable: fsync as it writes.
    """
    begin = time.perf_counter()
    say = progress or (lambda _line: None)
    path = _recording_path(out)
    options: dict[str, Any] = {"time_quantum_s": time_quantum_s}
    if coherence is not None:
        options["coherence"] = coherence
    scene = demo_scene(shape, voxel_um, views, seed=seed, **options)
    if interval_s is None:
        interval_s = auto_interval(scene, views, exposure_ms)
    if not (math.isfinite(interval_s) and interval_s >= 0):
        raise AcquisitionError(f"The interval must be ≥ 0 s, got {interval_s!r}.")
    core, info = build_demo_core(scene, exposure_ms=exposure_ms)
    factory = reconstructor_factory or default_reconstructor_factory(device)
    reconstructor = factory(info)

    meta = recording_meta(
        info,
        {
            "phantom": type(scene.phantom).__name__,
            "seed": seed,
            "interval_s": float(interval_s),
            "true_sources_um_xyz": scene.sources_um_xyz.tolist(),
            "photons_at_reference_exposure": scene.photons,
            "coherence": {"n_wavelengths": scene.coherence.n_wavelengths,
                          "bead_diameter_um": scene.coherence.bead_diameter_um,
                          "n_subsources": scene.coherence.n_subsources},
        },
    )
    writer = RecordingWriter(path, meta, overwrite=overwrite, durable=durable)
    acquisition = FDTAcquisition(core, info, writer, timepoints=timepoints, interval_s=interval_s)
    worker = ReconstructionWorker(reconstructor, writer)
    sample_times: dict[int, list[float]] = {}
    truth_errors: list[str] = []
    recon_errors: list[str] = []

    def on_frame(t: int, view: int, _frame: np.ndarray) -> None:
        last = scene.last_frame
        if last is not None:
            sample_times.setdefault(t, []).append(last.sample_time_s)

    def on_timepoint(t: int, _frames: np.ndarray) -> None:
        times = sample_times.get(t, [float("nan")])
        try:
            writer.write_ground_truth(t, scene.dn_at(times[0]))
        except Exception as exc:  # the frames are safe; report and go on
            truth_errors.append(f"Ground truth of timepoint {t} not written: {exc}")
            acquisition.abort()
        records = acquisition.timepoint_records
        record = records[-1] if records else None
        held = "" if len(set(times)) == 1 else f" (specimen moved during the timepoint: {sorted(set(times))})"
        say(f"t={t} acquired in {record.seconds if record else float('nan'):.3f} s{held}")

    def on_volume(t: int, _dn: np.ndarray, result: Any) -> None:
        rec = worker.records[-1]
        say(f"t={t} reconstructed: latency {rec.latency_s:.3f} s, {rec.iterations} iterations, loss {rec.loss:.4g}"
            + (f" — flagged: {rec.message}" if rec.flagged else ""))

    def on_skipped(t: int, total: int) -> None:
        say(f"t={t} skipped by the reconstruction (newer timepoint waiting; {total} skipped)")

    def on_recon_error(message: str) -> None:
        recon_errors.append(message)
        say(message)

    acquisition.frame_written.connect(on_frame)
    acquisition.timepoint_complete.connect(on_timepoint)
    acquisition.timepoint_complete.connect(worker.submit)
    worker.volume_ready.connect(on_volume)
    worker.skipped_changed.connect(on_skipped)
    worker.error.connect(on_recon_error)

    say(f"Demo: {views} views × {timepoints} timepoints, volume {tuple(shape)}, interval {interval_s:.3f} s → {path}")
    worker.start()
    try:
        acquisition.start()
        try:
            summary = acquisition.wait()
        except KeyboardInterrupt:
            say("Interrupted: finishing the current timepoint.")
            acquisition.stop()
            summary = acquisition.wait()
        assert summary is not None
        if summary.error:
            say(f"Acquisition error: {summary.error}")
        worker.finish()
    finally:
        if acquisition.is_running:
            acquisition.abort()
            acquisition.wait(30)
        worker.cancel(timeout=60)
        writer.close()
        release_core(core)

    volumes: dict[int, VolumeRecord] = {r.t: r for r in worker.records}
    rows = []
    for record in summary.timepoints:
        vol = volumes.get(record.t)
        rows.append(
            DemoTimepoint(
                t=record.t,
                sample_time_s=sample_times.get(record.t, [float("nan")])[0],
                acquisition_s=record.seconds,
                reconstructed=vol is not None,
                latency_s=None if vol is None else vol.latency_s,
                recon_seconds=None if vol is None else vol.seconds,
                iterations=None if vol is None else vol.iterations,
                loss=None if vol is None else vol.loss,
                flagged=vol is not None and vol.flagged,
            )
        )
    result = DemoResult(
        path=path,
        acquisition=summary,
        timepoints=rows,
        skipped=worker.skipped,
        skipped_timepoints=list(worker.skipped_timepoints),
        reconstruction_errors=recon_errors + truth_errors,
        interval_s=float(interval_s),
        seconds=time.perf_counter() - begin,
        extra={"phantom_renders": scene.phantom_renders},
    )
    for line in result.report().splitlines():
        say(line)
    return result
