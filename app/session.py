"""The app's worker side: live sessions, the live reconstructor, replay loading, offline jobs.

Nothing here touches a widget. Worker threads (the acquisition's MDA thread, the
reconstruction thread, the replay loader, an offline reconstruction) hand their
results to the GUI through a :class:`Mailbox`: *newest-only slots* for data the
views draw (frames, volumes, progress; an older item still waiting is replaced)
and an *event queue* for things that must not be lost (errors, skipped timepoints,
end of a run). The main window drains it from a QTimer in the GUI thread, so the
GUI thread only draws and never waits for a worker.

Data flow of a live session (DESIGN.md §7)::

    FDTAcquisition (MDA thread) ─► RecordingWriter (disk first)
        timepoint_complete ─► ReconstructionWorker (newest-timepoint mailbox)
                                 └─► LiveReconstructor.warm_update ─► volume_ready
        everything ─► Mailbox ─► GUI timer (~25 Hz) ─► views
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nvplive.acquisition.microscope import MicroscopeInfo, build_demo_core, load_hardware_core, release_core
from nvplive.acquisition.pipeline import (
    AcquisitionSummary,
    FDTAcquisition,
    ReconstructionWorker,
    recording_meta,
)
from nvplive.acquisition.recording import Recording, RecordingWriter
from nvplive.errors import NvpLiveError, ReconstructionError
from nvplive.recon.reconstructor import ReconConfig, Reconstructor, ReconResult, select_device
from nvplive.recon.simulate import PartialCoherence

logger = logging.getLogger("nvplive.app")

#: Timepoints of a "continuous" acquisition (until Stop). useq materialises the whole time
#: axis when the run starts (pure Python, holding the GIL): 10**5 takes tens of ms, 10**6
#: stalled the GUI for most of a second. 10**5 lasts 2.7 h even at 10 timepoints/s.
CONTINUOUS_TIMEPOINTS = 100_000
#: Iteration cap of a warm update whose budget is a latency (the time budget ends it).
LATENCY_MODE_ITERATION_CAP = 100_000
#: How much lower (nice) the reconstruction thread runs than the GUI thread (Linux): the
#: GUI thread only draws but must win the CPU over a busy optimisation loop.
RECONSTRUCTION_NICENESS = 5
#: Iterations between clock checks of a warm update with a latency budget.
LATENCY_MODE_CHECK_EVERY = 1
METHODS = ("nvp", "explicit", "triplane")
METHOD_LABELS = {"nvp": "NVP (neural volumetric prior)", "explicit": "Explicit voxels", "triplane": "Triplane"}


# ---------------------------------------------------------------------------------------
# Hand-over to the GUI thread
# ---------------------------------------------------------------------------------------
class Mailbox:
    """Thread-safe hand-over from worker threads to the GUI thread.

    ``put_latest(key, value)`` keeps only the newest value per key (a live view draws
    the newest frame/volume, never a backlog); ``post(kind, *payload)`` queues an
    event that is delivered exactly once, in order.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}
        self._events: deque[tuple] = deque(maxlen=max_events)

    def put_latest(self, key: str, value: Any) -> None:
        with self._lock:
            self._latest[key] = value

    def take_latest(self, key: str) -> Any:
        """The newest value put under ``key`` since the last take, or None."""
        with self._lock:
            return self._latest.pop(key, None)

    def post(self, kind: str, *payload: Any) -> None:
        with self._lock:
            self._events.append((kind, *payload))

    def drain_events(self) -> list[tuple]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events


# ---------------------------------------------------------------------------------------
# The microscope
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoOptions:
    """The simulated microscope of the demo (beating cardiomyocyte).

    Attributes:
        shape_zyx, voxel_um_zyx: simulated and reconstructed volume (voxels, µm).
        coherence: simulator partial coherence (None: the simulator's default).
        seed: phantom, beads and noise.
        time_quantum_s: the specimen is held per timepoint at its start, rounded to this.
    """

    shape_zyx: tuple[int, int, int] = (32, 64, 64)
    voxel_um_zyx: tuple[float, float, float] = (0.25, 0.25, 0.25)
    coherence: PartialCoherence | None = None
    seed: int = 0
    time_quantum_s: float = 0.01


@dataclass
class Microscope:
    """A loaded microscope core (simulated or real) and what the acquisition needs to know."""

    core: Any
    info: MicroscopeInfo
    label: str
    demo: bool
    key: tuple = ()

    @property
    def scene(self):
        return self.info.scene

    def close(self) -> None:
        """Unload the devices (errors are logged: the app is shutting this microscope down)."""
        try:
            release_core(self.core)
        except Exception:
            logger.exception("Unloading the devices of %s failed", self.label)


def load_demo_microscope(views: int, exposure_ms: float, options: DemoOptions = DemoOptions()) -> Microscope:
    """The simulated microscope with ``views`` beads below a beating cardiomyocyte."""
    from nvplive.acquisition.devices import demo_scene

    scene_options: dict[str, Any] = {"time_quantum_s": options.time_quantum_s}
    if options.coherence is not None:
        scene_options["coherence"] = options.coherence
    scene = demo_scene(options.shape_zyx, options.voxel_um_zyx, int(views), seed=options.seed, **scene_options)
    core, info = build_demo_core(scene, exposure_ms=float(exposure_ms))
    label = f"Simulated microscope · beating cardiomyocyte · {views} views"
    return Microscope(core, info, label, True, key=("demo", int(views), options))


def load_hardware_microscope(cfg: Path, settings: Path) -> Microscope:
    """A real microscope from a Micro-Manager ``.cfg`` and the FDT settings file."""
    core, info = load_hardware_core(cfg, settings)
    return Microscope(core, info, f"{Path(cfg).name} · {info.n_views} views", False, key=("hw", str(cfg), str(settings)))


def suggested_demo_interval(microscope: Microscope) -> float:
    """An interval (s) the simulated acquisition keeps up with (renders two frames to time it)."""
    from nvplive.acquisition.demo import auto_interval

    return float(auto_interval(microscope.scene, microscope.info.n_views, microscope.info.exposure_ms))


# ---------------------------------------------------------------------------------------
# The reconstructor the GUI steers
# ---------------------------------------------------------------------------------------
def lower_thread_priority(niceness: int) -> bool:
    """Lower the calling thread's OS priority by ``niceness`` (Linux per-thread nice); False if not possible."""
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + niceness))
    except OSError:  # not allowed, or not per-thread on this platform: keep the priority
        return False
    return True


class UpdateCancelled(NvpLiveError):
    """A reconstruction update was cancelled (the session is closing)."""


ProgressHook = Callable[[int, int, float, bool], None]


class LiveReconstructor:
    """A :class:`Reconstructor` whose settings the GUI changes while it runs.

    The GUI thread calls :meth:`request`; the change is applied in the
    reconstruction thread right before the next update, so it never races an
    update in progress. Settings changes keep the warm state
    (``Reconstructor.with_config``); a method change or :meth:`request` with
    ``reset=True`` starts the next timepoint cold; a device change moves the warm
    state to a new reconstructor on that device. Cold starts (first timepoint,
    or warm start off) run their full ``iterations`` without the latency budget,
    which only bounds warm updates.

    Args:
        factory: ``(config, device) -> Reconstructor``.
        config: initial settings; device: ``auto``, ``cpu``, ``cuda`` …
        warm_start: start each timepoint from the previous one.
    """

    def __init__(
        self,
        factory: Callable[[ReconConfig, str], Reconstructor],
        config: ReconConfig,
        device: str = "auto",
        *,
        warm_start: bool = True,
    ) -> None:
        self._factory = factory
        self._device_name = str(device)
        self.inner = factory(config, self._device_name)
        self._warm_start = bool(warm_start)
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._pending_device: str | None = None
        self._pending_warm: bool | None = None
        self._pending_reset = False
        self._cancelled = False
        self._worker: ReconstructionWorker | None = None
        self.progress_hook: ProgressHook | None = None
        self.last_result: ReconResult | None = None
        self.updates = 0
        self.thread_niceness = RECONSTRUCTION_NICENESS
        self._niced: set[int] = set()

    # -- what the worker and the GUI read ----------------------------------------------------
    @property
    def config(self) -> ReconConfig:
        """The settings the next update runs with (pending changes not yet included)."""
        return self.inner.config

    @property
    def device(self):
        return self.inner.device

    @property
    def device_name(self) -> str:
        """The device as requested (``auto`` stays ``auto``)."""
        return self._device_name

    @property
    def warm_start(self) -> bool:
        return self._warm_start

    @property
    def has_pending_changes(self) -> bool:
        with self._lock:
            return bool(self._pending or self._pending_device or self._pending_warm is not None or self._pending_reset)

    def settings(self) -> dict:
        """Settings stored with each volume: the config, the device and the warm-start switch."""
        return {**self.inner.config.to_dict(), "device": str(self.inner.device), "warm_start": self._warm_start}

    def attach(self, worker: ReconstructionWorker) -> None:
        """Keep ``worker.method``/``worker.settings`` (written with each volume) in step with the settings."""
        self._worker = worker
        worker.method = self.inner.config.method
        worker.settings = self.settings()

    # -- control (any thread) -------------------------------------------------------------------
    def request(
        self,
        *,
        device: str | None = None,
        warm_start: bool | None = None,
        reset: bool = False,
        **config_changes: Any,
    ) -> None:
        """Change settings before the next update (``ReconConfig`` fields as keywords).

        Raises:
            ReconstructionError: an unknown setting, an unknown method or an unavailable device.
        """
        unknown = set(config_changes) - set(ReconConfig.__dataclass_fields__)
        if unknown:
            raise ReconstructionError(f"Unknown reconstruction setting(s): {', '.join(sorted(unknown))}.")
        method = config_changes.get("method")
        if method is not None and method not in METHODS:
            raise ReconstructionError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
        if device is not None:
            select_device(device)  # raises for CUDA on a machine without it
        with self._lock:
            self._pending.update(config_changes)
            if device is not None:
                self._pending_device = str(device)
            if warm_start is not None:
                self._pending_warm = bool(warm_start)
            self._pending_reset = self._pending_reset or reset

    def cancel_all(self) -> None:
        """Make the update in progress end at its next check and refuse further updates."""
        self._cancelled = True

    def resume(self) -> None:
        """Accept updates again (a new session)."""
        self._cancelled = False

    # -- the reconstruction thread ---------------------------------------------------------------
    def _apply_pending(self) -> None:
        with self._lock:
            changes, device, warm, reset = self._pending, self._pending_device, self._pending_warm, self._pending_reset
            self._pending, self._pending_device, self._pending_warm, self._pending_reset = {}, None, None, False
        old = self.inner.config
        changes = {k: v for k, v in changes.items() if getattr(old, k) != v}
        if changes:
            self.inner.with_config(**changes)
            logger.info("Reconstruction settings changed: %s", changes)
        if warm is not None:
            self._warm_start = warm
        if device is not None and device != self._device_name:
            state = self.inner.snapshot() if self.inner.state is not None else None
            new = self._factory(self.inner.config, device)
            if state is not None and self.inner.config.method == old.method and not reset:
                new.load_state(state)
            self.inner = new
            self._device_name = device
            logger.info("Reconstruction moved to %s", new.device)
        if reset or self.inner.config.method != old.method:
            self.inner.reset()
        if self._worker is not None:
            self._worker.method = self.inner.config.method
            self._worker.settings = self.settings()

    def _callback(self, cold: bool) -> Callable[[int, int, float], None]:
        def report(it: int, total: int, loss: float) -> None:
            if self._cancelled:
                raise UpdateCancelled("the reconstruction was cancelled")
            hook = self.progress_hook
            if hook is not None:
                hook(it, total, loss, cold)

        return report

    def _lower_thread_priority(self) -> None:
        """Give the calling (reconstruction) thread a lower OS priority than the GUI thread, once."""
        tid = threading.get_native_id()
        if tid not in self._niced:
            self._niced.add(tid)
            lower_thread_priority(self.thread_niceness)

    def warm_update(self, frames: np.ndarray) -> ReconResult:
        """One timepoint: apply pending settings, then a warm update (or a cold start)."""
        if self._cancelled:
            raise UpdateCancelled("the reconstruction was cancelled")
        self._lower_thread_priority()
        self._apply_pending()
        inner = self.inner
        if not self._warm_start:
            inner.reset()
        cold = inner.state is None or inner.representation is None
        config = inner.config
        if cold and config.time_budget_s is not None:
            inner.config = replace(config, time_budget_s=None)
        try:
            result = inner.warm_update(frames, callback=self._callback(cold))
        finally:
            inner.config = config
        self.last_result = result
        self.updates += 1
        return result


# ---------------------------------------------------------------------------------------
# One live session: acquisition → disk → reconstruction
# ---------------------------------------------------------------------------------------
@dataclass
class VolumeUpdate:
    """A reconstructed timepoint on its way to the views."""

    t: int
    dn: np.ndarray
    losses: list[float]
    iterations: int
    seconds: float
    latency_s: float
    sources_um_xyz: np.ndarray
    stopped_by: str
    warm: bool
    method: str


@dataclass
class SessionEnd:
    """How a session ended (posted as ``("session_closed", SessionEnd)``)."""

    path: Path
    summary: AcquisitionSummary | None
    reconstructed: int
    skipped: int
    errors: list[str] = field(default_factory=list)


class LiveSession:
    """Acquire on a microscope, write every frame first, reconstruct the newest timepoint.

    Events posted to the mailbox: ``timepoint`` (t, completed_s, frames_written),
    ``skipped`` (t, total), ``recon_error`` (message), ``acq_error`` (message),
    ``acquisition_finished`` (summary), ``session_closed`` (:class:`SessionEnd`).
    Newest-only slots: ``frames`` (t, frames[V,Y,X]), ``volume`` (:class:`VolumeUpdate`),
    ``recon_progress`` (it, total, loss, cold).

    Args:
        microscope: the loaded microscope; reconstructor: the live reconstructor.
        path: the recording folder (``*.fdt``) to create.
        timepoints, interval_s: the time-lapse.
        mailbox: where the GUI picks things up.
        extra: more recording metadata; durable: fsync as it writes.
        log_file: also log to ``<recording>/nvplive.log`` while the session runs.
    """

    def __init__(
        self,
        microscope: Microscope,
        reconstructor: LiveReconstructor,
        path: Path,
        *,
        timepoints: int,
        interval_s: float,
        mailbox: Mailbox,
        extra: dict | None = None,
        durable: bool = True,
        log_file: bool = True,
    ) -> None:
        self.microscope = microscope
        self.reconstructor = reconstructor
        self.mailbox = mailbox
        self.path = Path(path)
        self.timepoints = int(timepoints)
        self.interval_s = float(interval_s)
        info = microscope.info
        meta_extra = {"interval_s": self.interval_s, "app": "nvp-live", **(extra or {})}
        if microscope.demo and microscope.scene is not None:
            scene = microscope.scene
            meta_extra.update(
                phantom=type(scene.phantom).__name__,
                seed=scene.seed,
                true_sources_um_xyz=scene.sources_um_xyz.tolist(),
                coherence={"n_wavelengths": scene.coherence.n_wavelengths,
                           "bead_diameter_um": scene.coherence.bead_diameter_um,
                           "n_subsources": scene.coherence.n_subsources},
            )
        self.writer = RecordingWriter(self.path, recording_meta(info, meta_extra), durable=durable)
        self._log_handler: logging.Handler | None = None
        try:
            if log_file:
                handler = logging.FileHandler(self.path / "nvplive.log", encoding="utf-8")
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                logging.getLogger("nvplive").addHandler(handler)
                self._log_handler = handler
            self.acquisition = FDTAcquisition(
                microscope.core, info, self.writer, timepoints=self.timepoints, interval_s=self.interval_s
            )
        except BaseException:
            self._remove_log_handler()
            self.writer.close()
            raise
        self.worker = ReconstructionWorker(reconstructor, self.writer)
        reconstructor.attach(self.worker)
        reconstructor.resume()
        reconstructor.progress_hook = self._on_progress
        self.errors: list[str] = []
        self._sample_times: dict[int, float] = {}
        self._acquisition_niced = False
        self._final_lock = threading.Lock()
        self._closed = threading.Event()
        self._closing = False
        self._finisher: threading.Thread | None = None
        self.started_at: float | None = None

        acq, worker = self.acquisition, self.worker
        acq.frame_written.connect(self._on_frame)
        acq.timepoint_complete.connect(self._on_timepoint)
        acq.timepoint_complete.connect(worker.submit)
        acq.error.connect(self._on_acq_error)
        acq.finished.connect(self._on_finished)
        worker.volume_ready.connect(self._on_volume)
        worker.skipped_changed.connect(self._on_skipped)
        worker.error.connect(self._on_recon_error)
        worker.flagged.connect(self._on_flagged)

    # -- control (GUI thread) -------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """The acquisition is still taking frames."""
        return self.acquisition.is_running

    @property
    def closed(self) -> bool:
        """Everything is finished and the recording is closed."""
        return self._closed.is_set()

    def start(self) -> None:
        logger.info("Session started: %s (%s timepoints, interval %.3f s)", self.path, self.timepoints, self.interval_s)
        self.started_at = time.perf_counter()
        self.worker.start()
        try:
            self.acquisition.start()
        except Exception:
            self._closing = True
            self.reconstructor.cancel_all()
            self._finalise()
            raise

    def stop(self) -> None:
        """Finish the timepoint in progress, reconstruct what is pending, close the recording."""
        if self.running:
            logger.info("Stop requested")
            self.acquisition.stop()

    def shutdown(self, timeout: float = 20.0) -> bool:
        """End now (app exit): abort the acquisition, cancel reconstruction, close the recording.

        Returns True when everything ended within ``timeout`` seconds.
        """
        self._closing = True
        self.reconstructor.cancel_all()
        deadline = time.perf_counter() + timeout
        if self.running:
            self.acquisition.abort()
            self.acquisition.wait(max(0.1, deadline - time.perf_counter()))
        finisher = self._finisher
        if finisher is not None:
            finisher.join(max(0.1, deadline - time.perf_counter()))
        else:
            self._finalise()
        return self._closed.wait(max(0.0, deadline - time.perf_counter()))

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    # -- worker-thread callbacks --------------------------------------------------------------------
    def _on_frame(self, t: int, view: int, _frame: np.ndarray) -> None:
        if self.microscope.demo and not self._acquisition_niced:
            # The simulated camera renders frames on the CPU in this thread; the GUI comes
            # first. (Real hardware keeps its thread's priority.)
            self._acquisition_niced = True
            lower_thread_priority(RECONSTRUCTION_NICENESS)
        scene = self.microscope.scene
        if self.microscope.demo and scene is not None and view == 0 and scene.last_frame is not None:
            self._sample_times[t] = scene.last_frame.sample_time_s

    def _on_timepoint(self, t: int, frames: np.ndarray) -> None:
        self.mailbox.put_latest("frames", (t, frames))
        records = self.acquisition.timepoint_records
        completed = records[-1].completed_s if records else float("nan")
        self.mailbox.post("timepoint", t, completed, self.acquisition.frames_written)
        scene = self.microscope.scene
        if self.microscope.demo and scene is not None and t in self._sample_times:
            try:
                self.writer.write_ground_truth(t, scene.dn_at(self._sample_times.pop(t)))
            except Exception as exc:  # frames are safe on disk; report and go on
                self._on_recon_error(f"The ground truth of timepoint {t} was not written: {exc}")

    def _on_progress(self, it: int, total: int, loss: float, cold: bool) -> None:
        self.mailbox.put_latest("recon_progress", (it, total, loss, cold))

    def _on_volume(self, t: int, dn: np.ndarray, result: Any) -> None:
        record = self.worker.records[-1] if self.worker.records else None
        self.mailbox.put_latest(
            "volume",
            VolumeUpdate(
                t=t,
                dn=dn,
                losses=list(getattr(result, "losses", [])),
                iterations=int(getattr(result, "iterations", 0)),
                seconds=float(getattr(result, "seconds", math.nan)),
                latency_s=record.latency_s if record is not None else math.nan,
                sources_um_xyz=np.asarray(getattr(result, "sources_um_xyz", self.microscope.info.sources_um_xyz)),
                stopped_by=str(getattr(result, "stopped_by", "")),
                warm=bool(getattr(result, "warm", True)),
                method=self.worker.method,
            ),
        )
        self.mailbox.post(
            "volume_done", t, record.latency_s if record else math.nan, list(getattr(result, "losses", [])),
            bool(getattr(result, "warm", True)),
        )

    def _on_skipped(self, t: int, total: int) -> None:
        self.mailbox.post("skipped", t, total)

    def _on_recon_error(self, message: str) -> None:
        if self._closing and "cancelled" in message:
            return
        logger.error("%s", message)
        self.errors.append(message)
        self.mailbox.post("recon_error", message)

    def _on_flagged(self, t: int, message: str) -> None:
        logger.warning("Timepoint %d flagged: %s", t, message)
        self.mailbox.post("recon_flagged", t, message)

    def _on_acq_error(self, message: str) -> None:
        logger.error("Acquisition error: %s", message)
        self.errors.append(message)
        self.mailbox.post("acq_error", message)

    def _on_finished(self, summary: AcquisitionSummary) -> None:
        logger.info(
            "Acquisition %s: %d/%d timepoints, %d frames", summary.status, summary.timepoints_complete,
            summary.timepoints_requested, summary.frames_written,
        )
        self.mailbox.post("acquisition_finished", summary)
        self._finisher = threading.Thread(target=self._finalise, name="nvplive-finish", daemon=True)
        self._finisher.start()

    def _remove_log_handler(self) -> None:
        handler, self._log_handler = self._log_handler, None
        if handler is not None:
            logging.getLogger("nvplive").removeHandler(handler)
            handler.close()

    def _finalise(self) -> None:
        """Reconstruct what is pending (unless closing), close the recording; once."""
        with self._final_lock:
            if self._closed.is_set():
                return
            try:
                if self._closing:
                    self.worker.cancel(timeout=30)
                else:
                    self.worker.finish()
            except Exception as exc:
                self.errors.append(f"Reconstruction did not finish: {exc}")
                logger.exception("Reconstruction did not finish")
            try:
                self.writer.close()
            except Exception as exc:
                message = f"The recording {self.path} could not be closed cleanly: {exc}"
                self.errors.append(message)
                logger.exception("Closing the recording failed")
                self.mailbox.post("acq_error", message)
            self.reconstructor.progress_hook = None
            self._remove_log_handler()
            end = SessionEnd(
                path=self.path,
                summary=self.acquisition.summary,
                reconstructed=len(self.worker.records),
                skipped=self.worker.skipped,
                errors=list(self.errors),
            )
            self._closed.set()
            logger.info("Session closed: %s (%d reconstructed, %d skipped)", self.path, end.reconstructed, end.skipped)
            self.mailbox.post("session_closed", end)


# ---------------------------------------------------------------------------------------
# Replay of a recording (the timeline)
# ---------------------------------------------------------------------------------------
@dataclass
class ReplayItem:
    """One stored timepoint read from a recording."""

    path: Path
    t: int
    n_timepoints: int
    frames: np.ndarray
    dn: np.ndarray | None
    dn_kind: str
    sources_um_xyz: np.ndarray
    timestamp_s: float


class RecordingLoader:
    """Reads stored timepoints in its own thread (newest request wins).

    A recording still being written is reopened when a request goes past what
    the open reader knows (its journal grows as timepoints complete). Results go
    to the mailbox slot ``replay`` (:class:`ReplayItem`); failures to the event
    ``replay_error`` (message).
    """

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self._cond = threading.Condition()
        self._path: Path | None = None
        self._request: tuple[Path, int, str] | None = None
        self._release = False
        self._stop = False
        self._rec: Recording | None = None
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvplive-replay", daemon=True)
        self._thread.start()

    @property
    def path(self) -> Path | None:
        return self._path

    def set_path(self, path: Path | None) -> None:
        with self._cond:
            self._path = Path(path) if path is not None else None
            self._request = None
            self._release = True
            self._cond.notify()

    def request(self, t: int, kind: str = "volume") -> None:
        """Load timepoint ``t`` (``kind``: ``volume`` or ``truth``) of the current recording."""
        with self._cond:
            if self._path is None:
                return
            self._request = (self._path, int(t), kind)
            self._cond.notify()

    def release(self, timeout: float = 10.0) -> bool:
        """Close the open files (before another writer replaces them); True once they are closed."""
        with self._cond:
            self._release = True
            self._request = None
            self._released.clear()
            self._cond.notify()
        return self._released.wait(timeout)

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._request is None and not self._release and not self._stop:
                    self._cond.wait()
                if self._stop:
                    self._close_rec()
                    return
                release, self._release = self._release, False
                request, self._request = self._request, None
            if release:
                self._close_rec()
                self._released.set()
            if request is not None:
                self._load(*request)

    def _close_rec(self) -> None:
        if self._rec is not None:
            try:
                self._rec.close()
            except Exception:
                logger.exception("Closing a recording reader failed")
            self._rec = None

    def _load(self, path: Path, t: int, kind: str) -> None:
        try:
            rec = self._rec
            if rec is None or rec.path != path or t >= rec.n_timepoints or (
                rec.interrupted and kind == "volume" and t not in rec.volume_timepoints
            ):
                self._close_rec()
                rec = self._rec = Recording.open(path)
            if rec.n_timepoints == 0:
                return
            t = min(max(t, 0), rec.n_timepoints - 1)
            frames = rec.frames(t)
            dn = rec.ground_truth(t) if kind == "truth" else rec.volume(t)
            stamps = rec.timestamps(t)
            item = ReplayItem(
                path=path,
                t=t,
                n_timepoints=rec.n_timepoints,
                frames=frames,
                dn=dn,
                dn_kind=kind,
                sources_um_xyz=np.asarray(rec.meta.effective_sources_um_xyz, dtype=float),
                timestamp_s=float(stamps[0]) if len(stamps) else math.nan,
            )
            self.mailbox.put_latest("replay", item)
        except Exception as exc:
            self._close_rec()
            logger.exception("Reading timepoint %s of %s failed", t, path)
            self.mailbox.post("replay_error", f"Could not read timepoint {t} of {path}: {exc}")


# ---------------------------------------------------------------------------------------
# Offline reconstruction of a recording
# ---------------------------------------------------------------------------------------
class _Cancelled(Exception):
    pass


class OfflineReconstruction:
    """``reconstruct_recording`` in a thread, with progress and cancel.

    Events: ``offline_done`` (summary), ``offline_cancelled`` (path),
    ``offline_error`` (message); newest-only slot ``offline_progress``
    (done, total, message).
    """

    def __init__(self, path: Path, config: ReconConfig, device: str, mailbox: Mailbox) -> None:
        self.path = Path(path)
        self.config = config
        self.device = device
        self.mailbox = mailbox
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvplive-offline", daemon=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _progress(self, done: int, total: int, message: str) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        self.mailbox.put_latest("offline_progress", (done, total, message))

    def _run(self) -> None:
        from nvplive.acquisition.offline import reconstruct_recording

        logger.info("Offline reconstruction of %s (%s on %s)", self.path, self.config.method, self.device)
        try:
            summary = reconstruct_recording(self.path, self.config, device=self.device, progress=self._progress)
        except _Cancelled:
            logger.info("Offline reconstruction of %s cancelled", self.path)
            self.mailbox.post("offline_cancelled", self.path)
        except Exception as exc:
            logger.exception("Offline reconstruction of %s failed", self.path)
            self.mailbox.post("offline_error", f"Reconstruction of {self.path} failed: {exc}")
        else:
            logger.info("Offline reconstruction of %s done in %.1f s", self.path, summary.seconds)
            self.mailbox.post("offline_done", summary)


# ---------------------------------------------------------------------------------------
# Device status and scratch space
# ---------------------------------------------------------------------------------------
def device_status(device) -> str:
    """One line: the device name and its memory (CUDA: allocated/total; CPU: process memory)."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        used = torch.cuda.memory_allocated(index) / 2**30
        total = torch.cuda.get_device_properties(index).total_memory / 2**30
        return f"{name} · {used:.2f}/{total:.0f} GiB"
    threads = torch.get_num_threads()
    return f"CPU · {threads} thread{'s' if threads != 1 else ''} · {process_memory_mib():.0f} MiB"


def process_memory_mib() -> float:
    """Resident memory of this process (MiB); peak resident memory where that is not available."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def remove_scratch_recording(path: Path) -> None:
    """Delete a scratch (Live) recording folder; only folders that look like recordings."""
    path = Path(path)
    if path.suffix == ".fdt" and path.is_dir() and (path / "recording.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
