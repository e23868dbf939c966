"""Live FDT acquisition: MDA → disk first → (newest timepoint) → warm-started reconstruction.

Data flow (docs/acquisition.md, "Threads and data flow")::

    MDA thread (pymmcore-plus runner)          reconstruction thread
    ───────────────────────────────────        ─────────────────────────────
    camera frame ─► writer.write_frame ─┐
                    frame_written       │
    all V views ─► timepoint_complete ──┼──► ReconstructionWorker.submit
                                        │    (single-slot mailbox: the newest
                                        │     pending timepoint replaces an
                                        │     older one, which is *skipped*)
                                        │    reconstructor.warm_update(frames)
                                        │    writer.write_volume ► volume_ready

Every frame is on disk before anything else sees it. The acquisition never waits
for the reconstruction. Memory is bounded: the acquisition holds one timepoint
being assembled, the worker one pending and one in progress.

Signals (psygnal) are emitted from the thread that produced the data (MDA thread
or reconstruction thread); a GUI connects with ``thread="main"`` or a queued
connection and only draws.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Protocol

import numpy as np
import useq
from psygnal import Signal

from nvplive.errors import AcquisitionError, NvpLiveError

from . import offline
from .engine import quiet_cancel_notice
from .instrument import instrument_mismatches
from .microscope import TIMESTAMP_SOURCE_KEY, FDTEngine, MicroscopeInfo, event_view_timepoint
from .pupil_file import volume_pupil_setting
from .recording import RecordingMeta

logger = logging.getLogger("nvplive.acquisition")


def recording_meta(info: MicroscopeInfo, extra: Mapping | None = None) -> RecordingMeta:
    """The recording metadata of an acquisition on this microscope."""
    more = {"exposure_ms": info.exposure_ms, "source_group": info.group, "presets": list(info.presets),
            "microscope": info.source, **info.extra, **(dict(extra) if extra else {})}
    instrument = None
    if info.instrument is not None:
        instrument = {**info.instrument.to_dict(), "overrides": dict(info.overrides)}
    return offline.recording_meta(info.optics, info.geometry, info.camera_model, info.sources_um_xyz, more, instrument,
                                  bead_diameter_um=info.bead_diameter_um)


#: Keys of Micro-Manager's per-image metadata that the recording leaves out (kept elsewhere).
_CAMERA_KEYS_LEFT_OUT = frozenset({"Height", "Width", "PixelType", "TimeReceivedByCore"})


def _scalar(text: str) -> Any:
    """A metadata string as the int or float it spells exactly, else the string."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is int and str(value) != text.strip():
            continue
        return value
    return text


def camera_metadata(tags: Mapping[str, Any]) -> dict[str, Any]:
    """The camera's own metadata of one frame (Micro-Manager tags, numbers parsed).

    Real cameras report binning, ROI, elapsed time and image number here; the
    simulated camera adds ``sim_view``, ``sim_sample_time_s`` … of the frame it
    rendered, which, unlike the device state, is right for triggered sequences too.
    """
    return {str(k): _scalar(v) if isinstance(v, str) else v for k, v in tags.items() if k not in _CAMERA_KEYS_LEFT_OUT}


class FrameSink(Protocol):
    """Where frames go first (a :class:`~nvplive.acquisition.recording.RecordingWriter`)."""

    def write_frame(self, t: int, view: int, frame: np.ndarray, timestamp_s: float, metadata: Mapping) -> None:
        """Store frame ``view`` of timepoint ``t`` (``[Y, X]`` ADU) with its time (s) and metadata."""


class VolumeSink(Protocol):
    """Where reconstructed volumes go."""

    def write_volume(self, t: int, dn: np.ndarray, method: str, settings: Mapping) -> None:
        """Store the Δn volume ``[Z, Y, X]`` of timepoint ``t`` with the method and its settings."""


class WarmReconstructor(Protocol):
    """What the worker needs of a reconstructor (``nvplive.recon.reconstructor.Reconstructor``)."""

    def warm_update(self, frames: np.ndarray) -> Any:
        """Fit the frames ``[V, Y, X]`` of the next timepoint, warm-started from the previous one."""


def _emit(signal: Any, *args: Any) -> None:
    """Emit without letting a faulty listener break the data path (it is logged)."""
    try:
        signal.emit(*args)
    except Exception:  # a listener's bug must not lose frames
        logger.exception("A listener of %s raised", getattr(signal, "name", "a signal"))


@dataclass
class TimepointRecord:
    """Timing of one complete timepoint (s since the acquisition started)."""

    t: int
    started_s: float
    completed_s: float
    frame_timestamps_s: list[float]

    @property
    def seconds(self) -> float:
        """Time from the start of its first event to its last frame on disk (s)."""
        return self.completed_s - self.started_s


@dataclass
class AcquisitionSummary:
    """How an acquisition ended.

    Attributes:
        status: ``completed``, ``stopped`` (stop: every started timepoint finished),
            ``aborted`` (abort or an external cancel) or ``failed`` (see ``error``).
        timepoints_requested, timepoints_complete: counts.
        frames_written: frames on disk (including those of an unfinished timepoint).
        error: the error message of a failed run.
        seconds: duration of the run (s).
        timepoints: timing of each complete timepoint.
    """

    status: str
    timepoints_requested: int
    timepoints_complete: int
    frames_written: int
    error: str | None
    seconds: float
    timepoints: list[TimepointRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the acquisition ended without an error (completed or stopped by the user)."""
        return self.status in ("completed", "stopped")


class FDTAcquisition:
    """Runs an FDT time-lapse on a core and writes every frame to disk as it arrives.

    Args:
        core: a ``UniMMCore``/``CMMCorePlus`` prepared by :func:`build_demo_core` or
            :func:`load_hardware_core`.
        info: the matching :class:`MicroscopeInfo`.
        writer: frame sink (``write_frame``), normally a ``RecordingWriter``; the
            acquisition does not close it.
        timepoints: number of timepoints; interval_s: between timepoint starts (s).
        sequence: a ready sequence instead of ``info.sequence(timepoints, interval_s)``.

    Signals: ``frame_written(t, view, frame, metadata)`` (the metadata written with the frame), ``timepoint_complete(t, frames[V,Y,X])``,
    ``finished(AcquisitionSummary)``, ``error(message)`` (before ``finished``).

    Stop vs abort: :meth:`stop` lets the timepoint in progress finish (all its views
    on disk) and takes no frame of a later one; :meth:`abort` ends after the frame
    being exposed (a snap cannot be interrupted), leaving that timepoint incomplete
    (its frames stay on disk; readers only show complete timepoints).
    """

    frame_written = Signal(int, int, object, object)
    timepoint_complete = Signal(int, object)
    finished = Signal(object)
    error = Signal(str)

    def __init__(
        self,
        core: Any,
        info: MicroscopeInfo,
        writer: FrameSink,
        *,
        timepoints: int,
        interval_s: float = 0.0,
        sequence: useq.MDASequence | None = None,
    ) -> None:
        self.core = core
        self.info = info
        self.writer = writer
        self.timepoints = int(timepoints)
        self.sequence = sequence if sequence is not None else info.sequence(self.timepoints, interval_s)
        engine = core.mda.engine
        if not isinstance(engine, FDTEngine):
            engine = FDTEngine(core)
            core.mda.set_engine(engine)
        self._engine: FDTEngine = engine
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._prepared = False
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.perf_counter()
        self._open_t: int | None = None
        self._open_started_s = 0.0
        self._buffer: np.ndarray | None = None
        self._buffer_t = -1
        self._received: set[int] = set()
        self._stamps: list[float] = []
        self._next_t = 0
        self._stop_requested = False
        self._abort_requested = False
        self._external_cancel = False
        self._error: str | None = None
        self._records: list[TimepointRecord] = []
        self.frames_written = 0
        self.summary: AcquisitionSummary | None = None

    # -- control ------------------------------------------------------------------------
    @property
    def n_views(self) -> int:
        """Views (sources) per timepoint."""
        return self.info.n_views

    @property
    def is_running(self) -> bool:
        """Whether the acquisition thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def completed_timepoints(self) -> list[int]:
        """Timepoints whose views have all been written, in order."""
        with self._lock:
            return [r.t for r in self._records]

    @property
    def timepoint_records(self) -> list[TimepointRecord]:
        """Timing of the timepoints completed so far."""
        with self._lock:
            return list(self._records)

    def start(self) -> threading.Thread:
        """Run in a new thread; returns it (``finished`` tells when it ends)."""
        if self.is_running or self.core.mda.is_running():
            raise AcquisitionError("An acquisition is already running on this microscope.")
        self._done.clear()
        self._reset()
        self._prepared = True
        self._thread = threading.Thread(target=self.run, name="nvplive-acquisition", daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> AcquisitionSummary | None:
        """Block until the run ends; the summary, or ``None`` on timeout."""
        if not self._done.wait(timeout):
            return None
        return self.summary

    def stop(self) -> None:
        """Finish the timepoint in progress, then end (no frame of a later timepoint)."""
        with self._lock:
            self._stop_requested = True
            limit = self._open_t + 1 if self._open_t is not None else self._next_t
            self._engine.skip_from_timepoint = limit
            cancel_now = self._open_t is None
        if cancel_now:
            self.core.mda.cancel()

    def abort(self) -> None:
        """End now: after the frame being exposed; the current timepoint stays incomplete."""
        with self._lock:
            self._abort_requested = True
            self._engine.skip_from_timepoint = 0
        self.core.mda.cancel()

    # -- the run --------------------------------------------------------------------------
    def run(self) -> AcquisitionSummary:
        """Run in the calling thread until the sequence ends; returns the summary."""
        if not self._prepared:
            self._reset()
        self._prepared = False
        mda = self.core.mda
        if self.core.isSequenceRunning():  # live mode: its frames must not mix with the FDT views
            logger.info("Live mode was running; it is stopped before the FDT acquisition starts.")
            self.core.stopSequenceAcquisition()
        self._instrument = self.info.read_instrument(self.core)
        problems = self.info.instrument_problems(self._instrument)
        if problems:
            summary = AcquisitionSummary(
                "failed", self.timepoints, 0, 0,
                "The acquisition cannot start: " + "; ".join(problems) + ".", 0.0,
            )
            self.summary = summary
            _emit(self.error, summary.error)
            _emit(self.finished, summary)
            self._done.set()
            return summary
        mda.events.frameReady.connect(self._on_frame)
        mda.events.eventStarted.connect(self._on_event_started)
        mda.events.sequenceCanceled.connect(self._on_canceled)
        mda.events.sequenceStarted.connect(self._on_sequence_started)
        watched = self._instrument_signals()
        for signal, slot in watched:
            signal.connect(slot)
        failure: str | None = None
        try:
            self._t0 = time.perf_counter()
            with quiet_cancel_notice():
                mda.run(self.sequence)
        except Exception as exc:
            failure = str(exc) if isinstance(exc, AcquisitionError) else f"Acquisition failed: {exc}"
        finally:
            mda.events.frameReady.disconnect(self._on_frame)
            mda.events.eventStarted.disconnect(self._on_event_started)
            mda.events.sequenceCanceled.disconnect(self._on_canceled)
            mda.events.sequenceStarted.disconnect(self._on_sequence_started)
            for signal, slot in watched:
                signal.disconnect(slot)
        summary = self._summarise(failure)
        self.summary = summary
        if summary.error:
            _emit(self.error, summary.error)
        _emit(self.finished, summary)
        self._done.set()
        return summary

    def _summarise(self, failure: str | None) -> AcquisitionSummary:
        with self._lock:
            error = self._error or failure
            complete = len(self._records)
            if error:
                status = "failed"
            elif self._abort_requested or (self._external_cancel and not self._stop_requested):
                status = "aborted"
            elif self._stop_requested:
                status = "stopped"
            elif complete == self.timepoints:
                status = "completed"
            else:
                status = "failed"
                error = (
                    f"The acquisition ended with {complete} of {self.timepoints} timepoints complete "
                    f"({self.frames_written} frames written); frames were lost."
                )
            return AcquisitionSummary(
                status=status,
                timepoints_requested=self.timepoints,
                timepoints_complete=complete,
                frames_written=self.frames_written,
                error=error,
                seconds=time.perf_counter() - self._t0,
                timepoints=list(self._records),
            )

    def _fail(self, message: str) -> None:
        with self._lock:
            if self._error is None:
                self._error = message
            self._engine.skip_from_timepoint = 0
        self.core.mda.cancel()

    def _on_sequence_started(self, *_: object) -> None:
        with self._lock:
            early = self._stop_requested or self._abort_requested or self._error is not None
            if early:  # stop/abort arrived before the engine set the sequence up
                self._engine.skip_from_timepoint = 0
        if early:
            self.core.mda.cancel()

    def _instrument_signals(self) -> list[tuple[Any, Callable[..., None]]]:
        """The core's signals after which the camera or the pixel calibration may have changed."""
        events = self.core.events
        check = self._on_instrument_changed
        return [(events.pixelSizeChanged, check), (events.pixelSizeAffineChanged, check), (events.roiSet, check),
                (events.exposureChanged, check), (events.propertyChanged, self._on_property_changed)]

    def _on_property_changed(self, device: str, prop: str, value: object) -> None:
        if device in (self._instrument.camera, "Core"):  # not the source selector, which steps every view
            self._on_instrument_changed()

    def _on_instrument_changed(self, *_: object) -> None:
        """Read the instrument again; a change that the recording would not describe ends the run."""
        state = self.info.read_instrument(self.core)
        start = self._instrument
        changed = [
            f"{name} from {before!r} to {after!r}"
            for name, before, after in (
                ("the pixel size (µm)", start.pixel_size_um, state.pixel_size_um),
                ("the binning", start.binning, state.binning),
                ("the bit depth", start.bit_depth, state.bit_depth),
                ("the ROI", list(start.roi_xywh), list(state.roi_xywh)),
            )
            if before != after
        ]
        changed += instrument_mismatches(state, exposure_ms=self.info.exposure_ms, where="the acquisition's settings")
        if changed:
            self._fail("The instrument changed during the acquisition: " + "; ".join(changed) + ".")

    def _on_canceled(self, *_: object) -> None:
        self._external_cancel = True

    def _on_event_started(self, event: useq.MDAEvent) -> None:
        t, _ = event_view_timepoint(event)
        with self._lock:
            if self._open_t is None:
                self._open_t = t
                self._open_started_s = time.perf_counter() - self._t0

    def _on_frame(self, img: np.ndarray, event: useq.MDAEvent, meta: Mapping) -> None:
        if self._error is not None:
            return
        t, view = event_view_timepoint(event)
        frame = np.array(img, copy=True)
        runner_ms = meta.get("runner_time_ms") if isinstance(meta, Mapping) else None
        timestamp_s = float(runner_ms) / 1000.0 if runner_ms is not None else time.perf_counter() - self._t0
        fdt = event.metadata.get("nvplive") or {}
        metadata: dict[str, Any] = {"preset": fdt.get("preset", ""), "exposure_ms": float(self.core.getExposure())}
        tags = meta.get("camera_metadata") if isinstance(meta, Mapping) else None
        metadata["hardware_triggered"] = bool(meta.get("hardware_triggered", False))
        metadata[TIMESTAMP_SOURCE_KEY] = str(meta.get(TIMESTAMP_SOURCE_KEY, "host"))
        if tags:  # frames of a sequence carry the camera's own tags
            metadata.update(camera_metadata(tags))
        elif self.info.frame_metadata is not None:  # a snap: ask the device what it took
            metadata.update(self.info.frame_metadata())
        if not 0 <= view < self.n_views:
            self._fail(f"Frame of timepoint {t} has view {view}, outside 0…{self.n_views - 1}.")
            return
        try:
            self.writer.write_frame(t, view, frame, timestamp_s, metadata)
        except Exception as exc:
            self._fail(f"Could not write frame (timepoint {t}, view {view}) to disk: {exc}")
            return
        self.frames_written += 1
        _emit(self.frame_written, t, view, frame, metadata)

        completed: np.ndarray | None = None
        cancel = False
        with self._lock:
            if self._buffer is None or self._buffer_t != t or self._buffer.shape[1:] != frame.shape:
                self._buffer = np.empty((self.n_views, *frame.shape), dtype=frame.dtype)
                self._buffer_t = t
                self._received = set()
                self._stamps = [float("nan")] * self.n_views
                if self._open_t != t:
                    self._open_t = t
                    self._open_started_s = timestamp_s
            self._buffer[view] = frame
            self._received.add(view)
            self._stamps[view] = timestamp_s
            if len(self._received) == self.n_views:
                completed = self._buffer
                now = time.perf_counter() - self._t0
                self._records.append(TimepointRecord(t, self._open_started_s, now, list(self._stamps)))
                self._buffer = None
                self._received = set()
                self._open_t = None
                self._next_t = t + 1
                cancel = self._stop_requested
        if completed is not None:
            _emit(self.timepoint_complete, t, completed)
        if cancel:
            self.core.mda.cancel()


# ---------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------
@dataclass
class VolumeRecord:
    """One reconstructed timepoint.

    Attributes:
        t: timepoint.
        latency_s: from the timepoint's frames being complete to its volume being written (s).
        seconds: time inside ``warm_update`` (s).
        iterations, loss: from the reconstructor's result.
        flagged: the update diverged and was rolled back to the last good state (the
            volume written is that state); message: the reconstructor's note.
        stopped_by: what ended the update ("iterations", "plateau", "time", "diverged";
            "" when the reconstructor does not say).
    """

    t: int
    latency_s: float
    seconds: float
    iterations: int
    loss: float
    flagged: bool = False
    message: str = ""
    stopped_by: str = ""


class UpdateCancelled(NvpLiveError):
    """Raised by a reconstructor's ``warm_update`` that was cancelled (its session is closing);
    the :class:`ReconstructionWorker` drops that timepoint without reporting an error."""


def _config_of(reconstructor: Any) -> tuple[str, dict]:
    config = getattr(reconstructor, "config", None)
    method = str(getattr(config, "method", type(reconstructor).__name__))
    if config is None:
        return method, {}
    if hasattr(config, "to_dict"):
        return method, dict(config.to_dict())
    if is_dataclass(config):
        return method, asdict(config)
    return method, {}


class ReconstructionWorker:
    """Reconstructs the newest complete timepoint in its own thread.

    :meth:`submit` never blocks: it puts the timepoint in a single-slot mailbox; a
    timepoint still waiting there is replaced and counted as *skipped*. The worker
    calls ``reconstructor.warm_update(frames)`` (warm start from the previous
    timepoint it reconstructed), writes ``result.dn`` with ``writer.write_volume``
    (if a writer is given) and emits ``volume_ready(t, dn, result)``. A failing
    update emits ``error(message)`` and the worker goes on with the next timepoint.
    An update the reconstructor *flagged* (``result.flagged``: it diverged and was
    rolled back) is written with ``"flagged": true`` and its message in the volume's
    settings, counted in :attr:`flagged_timepoints` and announced by ``flagged(t, message)``.

    Signals: ``volume_ready(t, dn, result)``, ``skipped_changed(t_skipped, total)``,
    ``flagged(t, message)``, ``error(message)``.
    """

    volume_ready = Signal(int, object, object)
    skipped_changed = Signal(int, int)
    flagged = Signal(int, str)
    error = Signal(str)

    def __init__(
        self,
        reconstructor: WarmReconstructor,
        writer: VolumeSink | None = None,
        *,
        method: str | None = None,
        settings: Mapping | None = None,
    ) -> None:
        self.reconstructor = reconstructor
        self.writer = writer
        auto_method, auto_settings = _config_of(reconstructor)
        self.method = method or auto_method
        self.settings = dict(settings) if settings is not None else auto_settings
        self._cond = threading.Condition()
        self._pending: tuple[int, np.ndarray, float] | None = None
        self._closing = False
        self._drain = True
        self._busy_t: int | None = None
        self._thread: threading.Thread | None = None
        self.skipped_timepoints: list[int] = []
        self.records: list[VolumeRecord] = []
        self.failed: list[int] = []
        self.flagged_timepoints: list[int] = []
        self.submitted = 0

    # -- control ---------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        """Timepoints replaced in the mailbox by a newer one before being reconstructed."""
        return len(self.skipped_timepoints)

    @property
    def reconstructed(self) -> list[int]:
        """Timepoints reconstructed so far, in order."""
        return [r.t for r in self.records]

    @property
    def is_running(self) -> bool:
        """Whether the reconstruction thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ReconstructionWorker:
        """Start the reconstruction thread (no-op when it runs); returns ``self``."""
        if self.is_running:
            return self
        with self._cond:
            self._closing = False
        self._thread = threading.Thread(target=self._loop, name="nvplive-reconstruction", daemon=True)
        self._thread.start()
        return self

    def submit(self, t: int, frames: np.ndarray) -> None:
        """Hand over a complete timepoint ``[V, Y, X]`` (never blocks)."""
        dropped: int | None = None
        with self._cond:
            if self._closing:
                return
            if self._pending is not None:
                dropped = self._pending[0]
                self.skipped_timepoints.append(dropped)
            self._pending = (int(t), frames, time.perf_counter())
            self.submitted += 1
            self._cond.notify()
        if dropped is not None:
            _emit(self.skipped_changed, dropped, self.skipped)

    def finish(self, timeout: float | None = None) -> bool:
        """Reconstruct what is pending, then end the thread; ``False`` on timeout."""
        return self._close(drain=True, timeout=timeout)

    def cancel(self, timeout: float | None = None) -> bool:
        """Drop the pending timepoint, end after the update in progress; ``False`` on timeout."""
        return self._close(drain=False, timeout=timeout)

    def _close(self, *, drain: bool, timeout: float | None) -> bool:
        dropped: int | None = None
        with self._cond:
            self._closing = True
            self._drain = drain
            if not drain and self._pending is not None:
                dropped = self._pending[0]
                self.skipped_timepoints.append(dropped)
                self._pending = None
            self._cond.notify_all()
        if dropped is not None:
            _emit(self.skipped_changed, dropped, self.skipped)
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._pending is None:
                    return
                t, frames, submitted = self._pending
                self._pending = None
                self._busy_t = t
            try:
                self._reconstruct(t, frames, submitted)
            finally:
                self._busy_t = None

    def _reconstruct(self, t: int, frames: np.ndarray, submitted: float) -> None:
        start = time.perf_counter()
        try:
            result = self.reconstructor.warm_update(frames)
            dn = np.ascontiguousarray(np.asarray(result.dn), dtype=np.float32)
        except UpdateCancelled:
            logger.info("Reconstruction of timepoint %d cancelled", t)
            return
        except Exception as exc:
            self.failed.append(t)
            _emit(self.error, f"Reconstruction of timepoint {t} failed: {exc}")
            return
        flagged = bool(getattr(result, "flagged", False))
        message = str(getattr(result, "message", "") or "")
        settings = {**self.settings, "flagged": True, "message": message} if flagged else self.settings
        if hasattr(result, "pupil"):  # the pupil this volume was rendered with (docs/format.md, volumes)
            settings = {**settings, "pupil": volume_pupil_setting(result.pupil)}
        if self.writer is not None:
            try:
                self.writer.write_volume(t, dn, self.method, settings)
            except Exception as exc:
                self.failed.append(t)
                _emit(self.error, f"Could not write the volume of timepoint {t}: {exc}")
                return
        done = time.perf_counter()
        self.records.append(
            VolumeRecord(
                t=t,
                latency_s=done - submitted,
                seconds=float(getattr(result, "seconds", done - start)),
                iterations=int(getattr(result, "iterations", 0)),
                loss=float(getattr(result, "loss", float("nan"))),
                flagged=flagged,
                message=message,
                stopped_by=str(getattr(result, "stopped_by", "")),
            )
        )
        if flagged:
            self.flagged_timepoints.append(t)
            _emit(self.flagged, t, message or f"The reconstruction of timepoint {t} was flagged.")
        _emit(self.volume_ready, t, dn, result)


def connect_reconstruction(acquisition: FDTAcquisition, worker: ReconstructionWorker) -> Callable[[], None]:
    """Feed every complete timepoint of ``acquisition`` to ``worker``; returns a disconnector."""
    acquisition.timepoint_complete.connect(worker.submit)
    return lambda: acquisition.timepoint_complete.disconnect(worker.submit)
