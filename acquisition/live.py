"""One live session: acquisition → disk first → newest timepoint → warm-started reconstruction.

The same :class:`LiveSession` runs the desktop app's Live/Record and the headless demo
(``nvplive demo --headless``, :func:`nvplive.acquisition.demo.run_headless_demo`): the
headless demo is the app's live path without the window. Nothing here knows Qt; the
session reports through :class:`LiveEvents`, a typed psygnal ``SignalGroup`` whose
signals are emitted from the worker thread that produced the data (the MDA thread or
the reconstruction thread). The app hands them to its GUI thread through a thin Qt
bridge (``nvplive.app.bridge``); a script connects plain callables.

Data flow (docs/architecture.md, "Live data flow")::

    FDTAcquisition (MDA thread) ─► RecordingWriter (every frame on disk first)
        frame_written(t, view, frame, metadata) ─► sample time of the timepoint
        timepoint_complete ─► ground truth Δn(sample time) (simulated microscope)
                           ─► ReconstructionWorker (newest-timepoint mailbox)
                                └─► LiveReconstructor.warm_update ─► writer.write_volume
        LiveEvents: frames, timepoint, progress, volume, reconstructed, skipped, …

Failure policy (one home, here):

- **Frames are the data.** A frame that cannot be written ends the acquisition
  (``FDTAcquisition``); every complete timepoint stays readable.
- **Everything derived from frames is secondary** (a timepoint's ground truth, its
  reconstructed volume): a failure is reported (``truth_error``/``reconstruction_error``)
  and the acquisition goes on. A writer that refuses further writes after an I/O error
  then fails the next frame, which ends the acquisition by the first rule.
- **A diverged update is flagged, not fatal** (``flagged``): the reconstructor rolled
  back to its last good state, which is written with the flag.
- **A cancelled update is not an error**: :meth:`LiveSession.shutdown` cancels the update
  in progress (``UpdateCancelled``); that timepoint has no volume.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from nvplive.errors import ReconstructionError
from nvplive.recon.loop import LatencyBudget
from nvplive.recon.methods import METHODS
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.reconstructor import Phase, ProgressCallback, ReconConfig, ReconResult, Reconstructor, select_device
from nvplive.recon.simulate import Instrument, PartialCoherence

from .microscope import MicroscopeInfo, build_demo_core, load_hardware_core, release_core
from .pipeline import (
    AcquisitionSummary,
    FDTAcquisition,
    ReconstructionWorker,
    UpdateCancelled,
    WarmReconstructor,
    _emit,
    recording_meta,
)
from .recording import LOG_NAME, SUFFIX, RecordingWriter

logger = logging.getLogger("nvplive.acquisition")

#: Timepoints of a "continuous" acquisition (until Stop). useq materialises the whole time
#: axis when the run starts (pure Python, holding the GIL): 10**5 takes tens of ms, 10**6
#: stalled the GUI for most of a second. 10**5 lasts 2.7 h even at 10 timepoints/s.
CONTINUOUS_TIMEPOINTS = 100_000
#: How much lower (nice) the reconstruction thread runs than the GUI thread (Linux): the
#: GUI thread only draws but must win the CPU over a busy optimisation loop.
RECONSTRUCTION_NICENESS = 5

#: The live configuration (the app's defaults and the headless demo's): a 120-iteration
#: cold start, then warm updates that run until a 1 s latency budget, checking the clock
#: every iteration, with no plateau stop (the budget ends them). Quality settings stay
#: ReconConfig's defaults, except the pupil calibration and the depth starts: on the CPU the
#: calibration holds the first live volume back by tens of seconds, so live sessions use the
#: renderer's pupil (calibrate offline with ``nvplive calibrate``; docs/reconstruction.md),
#: and the cold start fits once from the registered depths (three starts triple it; a thick
#: specimen gains from them offline). BENCHMARKS.md ("app latency") measures this configuration.
LIVE_CONFIG = replace(ReconConfig(), iterations=120, warm_budget=LatencyBudget(seconds=1.0), pupil_calibration=False,
                      depth_starts_um=(0.0,))


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
        time_quantum_s: the specimen is held per timepoint at its start, rounded to this (s).
        instrument: the simulated objective's pupil (aberrations) that the reconstruction is
            not told (None: the renderer's own); "Calibrate pupil" finds it from a bead z-stack.
    """

    shape_zyx: tuple[int, int, int] = (32, 64, 64)
    voxel_um_zyx: tuple[float, float, float] = (0.25, 0.25, 0.25)
    coherence: PartialCoherence | None = None
    seed: int = 0
    time_quantum_s: float = 0.01
    instrument: Instrument | None = None


@dataclass
class Microscope:
    """A loaded microscope core (simulated or real) and what the acquisition needs to know.

    Attributes:
        core: the ``UniMMCore``; info: its :class:`MicroscopeInfo`; label: one line for people.
        demo: simulated (its scene gives the ground truth); key: what it was loaded from.
    """

    core: Any
    info: MicroscopeInfo
    label: str
    demo: bool
    key: tuple = ()

    @property
    def scene(self):
        """The simulated scene (None on real hardware)."""
        return self.info.scene

    def close(self) -> None:
        """Unload the devices (errors are logged: the microscope is being shut down)."""
        try:
            release_core(self.core)
        except Exception:
            logger.exception("Unloading the devices of %s failed", self.label)


def free_path(path: Path) -> Path:
    """``path`` if nothing (not even a dangling link) is there, else the first free
    ``STEM-2.SUFFIX``, ``STEM-3.SUFFIX`` … beside it."""
    path, n = Path(path), 1
    target = path
    while target.exists() or target.is_symlink():
        n += 1
        target = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return target


def new_recording_path(folder: Path, prefix: str) -> Path:
    """A recording name in ``folder`` that no earlier session took: ``PREFIX-YYYYmmdd-HHMMSS.fdt``
    at the local time, with ``-2``, ``-3`` … when that second's name is taken (:func:`free_path`)."""
    return free_path(Path(folder) / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}{SUFFIX}")


def load_demo_microscope(views: int, exposure_ms: float, options: DemoOptions = DemoOptions()) -> Microscope:
    """The simulated microscope with ``views`` beads below a beating cardiomyocyte."""
    from .devices import demo_scene

    scene_options: dict[str, Any] = {"time_quantum_s": options.time_quantum_s}
    if options.coherence is not None:
        scene_options["coherence"] = options.coherence
    if options.instrument is not None:
        scene_options["instrument"] = options.instrument
    scene = demo_scene(options.shape_zyx, options.voxel_um_zyx, int(views), seed=options.seed, **scene_options)
    core, info = build_demo_core(scene, exposure_ms=float(exposure_ms))
    label = f"Simulated microscope · beating cardiomyocyte · {views} views"
    return Microscope(core, info, label, True, key=("demo", int(views), options))


def load_hardware_microscope(cfg: Path, settings: Path) -> Microscope:
    """A real microscope from a Micro-Manager ``.cfg`` and the FDT settings file.

    Raises:
        AcquisitionError: the files are missing or do not fit each other (one sentence).
    """
    core, info = load_hardware_core(cfg, settings)
    return Microscope(core, info, f"{Path(cfg).name} · {info.n_views} views", False, key=("hw", str(cfg), str(settings)))


def suggested_demo_interval(microscope: Microscope) -> float:
    """An interval (s) the simulated acquisition keeps up with (renders two frames to time it)."""
    from .demo import auto_interval

    return float(auto_interval(microscope.scene, microscope.info.n_views, microscope.info.exposure_ms))


# ---------------------------------------------------------------------------------------
# The reconstructor a live session steers
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


ProgressHook = Callable[[int, int, float, bool, str], None]


class LiveReconstructor:
    """A :class:`Reconstructor` whose settings change while it runs.

    Any thread calls :meth:`request`; the change is applied in the reconstruction
    thread right before the next update, so it never races an update in progress.
    Settings changes keep the warm state (``Reconstructor.with_config``); a method
    change or :meth:`request` with ``reset=True`` starts the next timepoint cold; a
    device change moves the warm state to a new reconstructor on that device. Cold
    starts (first timepoint, or warm start off) run their full ``iterations`` without
    the latency budget, which only bounds warm updates.

    A detection pupil (:meth:`use_pupil`, e.g. the app's "Calibrate pupil") is rendered
    through from the next timepoint on, which starts cold with it.

    Args:
        factory: ``(config, device) -> Reconstructor``.
        config: initial settings; device: ``auto``, ``cpu``, ``cuda`` …
        warm_start: start each timepoint from the previous one.
        pupil: a known detection pupil (None: the renderer's hard aperture).
    """

    def __init__(
        self,
        factory: Callable[[ReconConfig, str], Reconstructor],
        config: ReconConfig,
        device: str = "auto",
        *,
        warm_start: bool = True,
        pupil: PupilParameters | None = None,
    ) -> None:
        self._factory = factory
        self._device_name = str(device)
        self._pupil = pupil
        self.inner = self._build(config, self._device_name)
        self._warm_start = bool(warm_start)
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._pending_device: str | None = None
        self._pending_warm: bool | None = None
        self._pending_reset = False
        self._pending_pupil: tuple[PupilParameters | None] | None = None
        self._cancelled = False
        self._worker: ReconstructionWorker | None = None
        self.progress_hook: ProgressHook | None = None
        self.last_result: ReconResult | None = None
        self.updates = 0
        self.thread_niceness = RECONSTRUCTION_NICENESS
        self._niced: set[int] = set()

    def _build(self, config: ReconConfig, device: str) -> Reconstructor:
        inner = self._factory(config, device)
        if self._pupil is not None:
            inner.pupil = self._pupil
        return inner

    # -- what the worker and the GUI read ----------------------------------------------------
    @property
    def pupil(self) -> PupilParameters | None:
        """The detection pupil the updates render through (pending changes not yet included)."""
        return self._pupil

    @property
    def config(self) -> ReconConfig:
        """The settings the next update runs with (pending changes not yet included)."""
        return self.inner.config

    @property
    def device(self):
        """The torch device of the current reconstructor."""
        return self.inner.device

    @property
    def device_name(self) -> str:
        """The device as requested (``auto`` stays ``auto``)."""
        return self._device_name

    @property
    def warm_start(self) -> bool:
        """Each timepoint starts from the previous one's state."""
        return self._warm_start

    @property
    def has_pending_changes(self) -> bool:
        """Settings were requested that the next update applies."""
        with self._lock:
            return bool(self._pending or self._pending_device or self._pending_warm is not None or self._pending_reset
                        or self._pending_pupil is not None)

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

    def use_pupil(self, pupil: PupilParameters | None) -> None:
        """Render through ``pupil`` (None: the hard aperture) from the next update on, which
        starts cold (the warm state was fitted through the previous pupil)."""
        with self._lock:
            self._pending_pupil = (pupil,)

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
            pupil, self._pending_pupil = self._pending_pupil, None
        old = self.inner.config
        changes = {k: v for k, v in changes.items() if getattr(old, k) != v}
        if changes:
            self.inner.with_config(**changes)
            logger.info("Reconstruction settings changed: %s", changes)
        if warm is not None:
            self._warm_start = warm
        if device is not None and device != self._device_name:
            state = self.inner.snapshot() if self.inner.state is not None else None
            new = self._build(self.inner.config, device)
            if state is not None and self.inner.config.method == old.method and not reset:
                new.load_state(state)
            self.inner = new
            self._device_name = device
            logger.info("Reconstruction moved to %s", new.device)
        if pupil is not None and pupil[0] != self._pupil:
            self._pupil = self.inner.pupil = pupil[0]
            reset = True
            logger.info("Detection pupil changed (%s); the next timepoint starts cold",
                        "hard aperture" if pupil[0] is None else f"{pupil[0].aberration_rms_rad:.3f} rad RMS")
        if reset or self.inner.config.method != old.method:
            self.inner.reset()
        if self._worker is not None:
            self._worker.method = self.inner.config.method
            self._worker.settings = self.settings()

    def _callback(self, cold: bool) -> ProgressCallback:
        def report(it: int, total: int, loss: float, phase: Phase) -> None:
            if self._cancelled:
                raise UpdateCancelled("the reconstruction was cancelled")
            hook = self.progress_hook
            if hook is not None:
                hook(it, total, loss, cold, phase)

        return report

    def _lower_thread_priority(self) -> None:
        """Give the calling (reconstruction) thread a lower OS priority than the GUI thread, once."""
        tid = threading.get_native_id()
        if tid not in self._niced:
            self._niced.add(tid)
            lower_thread_priority(self.thread_niceness)

    def warm_update(self, frames: np.ndarray) -> ReconResult:
        """One timepoint ``frames [V, Y, X]``: apply pending settings, then a warm update (or a cold start).

        Raises:
            UpdateCancelled: the session is closing.
        """
        if self._cancelled:
            raise UpdateCancelled("the reconstruction was cancelled")
        self._lower_thread_priority()
        self._apply_pending()
        inner = self.inner
        if not self._warm_start:
            inner.reset()
        cold = inner.state is None or inner.representation is None  # a cold start ignores the warm budget
        result = inner.warm_update(frames, callback=self._callback(cold))
        self.last_result = result
        self.updates += 1
        return result


def live_reconstructor(
    info: MicroscopeInfo, config: ReconConfig = LIVE_CONFIG, device: str = "auto", *, warm_start: bool = True,
    pupil: PupilParameters | None = None,
) -> LiveReconstructor:
    """The live reconstructor of a microscope: the project's Reconstructor, built as a
    recording of this microscope would be reconstructed (:func:`reconstructor_for`), through
    ``pupil`` when one is known (a calibrated pupil, :mod:`.bead_stack`)."""
    from .offline import reconstructor_for

    return LiveReconstructor(
        lambda cfg, dev: reconstructor_for(recording_meta(info), cfg, dev), config, device, warm_start=warm_start,
        pupil=pupil,
    )


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------
@dataclass
class VolumeUpdate:
    """A reconstructed timepoint on its way to the views.

    Attributes:
        t: timepoint; dn: Δn ``[Z, Y, X]`` (float32, as written).
        losses: loss per checked iteration; iterations; seconds: inside ``warm_update`` (s).
        latency_s: from the timepoint's frames being complete to its volume on disk (s).
        sources_um_xyz: ``[V, 3]`` source positions the reconstructor used (µm).
        stopped_by: what ended the update; warm: a warm update (else a cold start).
        method: the reconstruction method.
    """

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
    """How a session ended (:attr:`LiveEvents.closed`).

    Attributes:
        path: the recording; summary: the acquisition's summary (None if it never ran).
        reconstructed, skipped: counts of timepoints; errors: every error message.
    """

    path: Path
    summary: AcquisitionSummary | None
    reconstructed: int
    skipped: int
    errors: list[str] = field(default_factory=list)


class LiveEvents(SignalGroup):
    """What a :class:`LiveSession` reports, emitted from worker threads.

    Where a GUI would pile up work, only the newest emission matters (the app delivers
    ``frames``, ``progress`` and ``volume`` newest-only); every other signal is an
    event that must not be lost.
    """

    #: A timepoint is complete: ``(t, frames [V, Y, X])`` (newest-only for views).
    frames = Signal(int, object)
    #: A timepoint is complete: ``(t, completed_s since the start, frames written so far)``.
    timepoint = Signal(int, float, int)
    #: Reconstruction progress: ``(done, total, loss, cold start, phase)`` (newest-only for
    #: views); the phase (``"calibration"`` or ``"fit"``) says whether ``done`` counts the
    #: pupil calibration's evaluations or the volume's iterations (:data:`.reconstructor.Phase`).
    progress = Signal(int, int, float, bool, str)
    #: A volume was written: :class:`VolumeUpdate` (newest-only for views).
    volume = Signal(object)
    #: A volume was written: ``(t, latency_s, losses, warm)`` (every one, for traces).
    reconstructed = Signal(int, float, list, bool)
    #: The reconstruction skipped timepoint ``t`` (a newer one was waiting): ``(t, total skipped)``.
    skipped = Signal(int, int)
    #: An update diverged and was rolled back: ``(t, message)``.
    flagged = Signal(int, str)
    #: A reconstruction failed or its volume was not written: ``(message)``.
    reconstruction_error = Signal(str)
    #: The ground truth of a timepoint was not written: ``(t, message)``.
    truth_error = Signal(int, str)
    #: The acquisition failed: ``(message)`` (before ``acquisition_finished``).
    acquisition_error = Signal(str)
    #: The acquisition ended: :class:`AcquisitionSummary` (the reconstruction may still run).
    acquisition_finished = Signal(object)
    #: Everything ended and the recording is closed: :class:`SessionEnd`.
    closed = Signal(object)


# ---------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------
def _demo_extra(scene: Any) -> dict:
    """Recording metadata of the simulated specimen (what the ground truth is of)."""
    return {
        "phantom": type(scene.phantom).__name__,
        "seed": scene.seed,
        "true_sources_um_xyz": scene.sources_um_xyz.tolist(),
        "photons_at_reference_exposure": scene.photons,
        "coherence": {"n_wavelengths": scene.coherence.n_wavelengths,
                      "bead_diameter_um": scene.coherence.bead_diameter_um,
                      "n_subsources": scene.coherence.n_subsources},
        "simulated_instrument": scene.instrument.to_dict(),
    }


class LiveSession:
    """Acquire on a microscope, write every frame first, reconstruct the newest timepoint.

    On a simulated microscope the session also writes each timepoint's ground truth:
    the specimen's Δn at the *sample time* the frames themselves report
    (``sim_sample_time_s`` in their metadata, view 0's). Failures follow the policy in
    the module docstring. Events: :attr:`events` (:class:`LiveEvents`).

    Args:
        microscope: the loaded microscope.
        reconstructor: a :class:`LiveReconstructor` (settings change between updates;
            progress reported), or any object with ``warm_update(frames) -> result``.
        path: the recording folder (``*.fdt``) to create.
        timepoints, interval_s: the time-lapse (``CONTINUOUS_TIMEPOINTS``: until Stop).
        extra: more recording metadata; durable: fsync as it writes;
        overwrite: replace an existing recording at ``path``;
        log_file: also log to ``<recording>/nvplive.log`` while the session runs;
        ground_truth: ``sample_time_s -> Δn [Z, Y, X]`` written as each timepoint's ground
            truth (default: the simulated specimen's ``dn_at``; None on real hardware).

    Raises:
        RecordingError: the recording cannot be created.
        AcquisitionError: the instrument disagrees with the microscope's settings
            (see :meth:`MicroscopeInfo.refresh_instrument`).
    """

    def __init__(
        self,
        microscope: Microscope,
        reconstructor: LiveReconstructor | WarmReconstructor,
        path: Path,
        *,
        timepoints: int,
        interval_s: float,
        extra: Mapping | None = None,
        durable: bool = True,
        overwrite: bool = False,
        log_file: bool = True,
        ground_truth: Callable[[float], np.ndarray] | None = None,
    ) -> None:
        self.microscope = microscope
        self.reconstructor = reconstructor
        self.events = LiveEvents()
        self.path = Path(path)
        self.timepoints = int(timepoints)
        self.interval_s = float(interval_s)
        info = microscope.info
        scene = microscope.scene if microscope.demo else None
        if ground_truth is None and scene is not None:
            ground_truth = scene.dn_at
        self._truth = ground_truth
        meta_extra = {"interval_s": self.interval_s, **(_demo_extra(scene) if scene is not None else {}), **(extra or {})}
        info.refresh_instrument(microscope.core)  # the recording describes the instrument as it is now
        self.writer = RecordingWriter(self.path, recording_meta(info, meta_extra), overwrite=overwrite, durable=durable)
        self._log_handler: logging.Handler | None = None
        try:
            if log_file:
                handler = logging.FileHandler(self.path / LOG_NAME, encoding="utf-8")
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
        if isinstance(reconstructor, LiveReconstructor):
            reconstructor.attach(self.worker)
            reconstructor.resume()
            reconstructor.progress_hook = self._on_progress
        self.errors: list[str] = []
        #: Sample time (s) of each timepoint's frames, from their metadata (simulated microscope).
        self.sample_times: dict[int, list[float]] = {}
        self.end: SessionEnd | None = None
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
        acq.error.connect(self._on_acquisition_error)
        acq.finished.connect(self._on_finished)
        worker.volume_ready.connect(self._on_volume)
        worker.skipped_changed.connect(self.events.skipped.emit)
        worker.error.connect(self._on_reconstruction_error)
        worker.flagged.connect(self._on_flagged)

    # -- control ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """The acquisition is still taking frames."""
        return self.acquisition.is_running

    @property
    def closed(self) -> bool:
        """Everything is finished and the recording is closed."""
        return self._closed.is_set()

    def start(self) -> None:
        """Start the reconstruction thread and the acquisition (returns at once).

        Raises:
            AcquisitionError: the microscope is busy; the recording is then closed.
        """
        logger.info("Session started: %s (%s timepoints, interval %.3f s)", self.path, self.timepoints, self.interval_s)
        self.started_at = time.perf_counter()
        self.worker.start()
        try:
            self.acquisition.start()
        except Exception:
            self._closing = True
            self._cancel_reconstruction()
            self._finalise()
            raise

    def stop(self) -> None:
        """Finish the timepoint in progress, reconstruct what is pending, close the recording."""
        if self.running:
            logger.info("Stop requested")
            self.acquisition.stop()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the session has closed its recording; False on timeout."""
        return self._closed.wait(timeout)

    def shutdown(self, timeout: float = 20.0) -> bool:
        """End now: abort the acquisition, cancel the reconstruction, close the recording.

        Returns True when everything ended within ``timeout`` seconds.
        """
        self._closing = True
        self._cancel_reconstruction()
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

    def _cancel_reconstruction(self) -> None:
        if isinstance(self.reconstructor, LiveReconstructor):
            self.reconstructor.cancel_all()

    # -- worker-thread callbacks --------------------------------------------------------------------
    def _on_frame(self, t: int, view: int, _frame: np.ndarray, metadata: Mapping | None = None) -> None:
        if self.microscope.demo and not self._acquisition_niced:
            # The simulated camera renders frames on the CPU in this thread; the GUI comes
            # first. (Real hardware keeps its thread's priority.)
            self._acquisition_niced = True
            lower_thread_priority(RECONSTRUCTION_NICENESS)
        sample_time = (metadata or {}).get("sim_sample_time_s")
        if isinstance(sample_time, (int, float)):
            self.sample_times.setdefault(t, []).append(float(sample_time))

    def _on_timepoint(self, t: int, frames: np.ndarray) -> None:
        records = self.acquisition.timepoint_records
        completed = records[-1].completed_s if records else math.nan
        _emit(self.events.frames, t, frames)
        _emit(self.events.timepoint, t, completed, self.acquisition.frames_written)
        if self._truth is None:
            return
        times = self.sample_times.get(t)
        try:
            if not times:
                raise ValueError("its frames report no sample time")
            self.writer.write_ground_truth(t, self._truth(times[0]))
        except Exception as exc:  # secondary data: report, the acquisition goes on
            message = f"The ground truth of timepoint {t} was not written: {exc}"
            logger.error("%s", message)
            self.errors.append(message)
            _emit(self.events.truth_error, t, message)

    def _on_progress(self, it: int, total: int, loss: float, cold: bool, phase: str) -> None:
        _emit(self.events.progress, it, total, loss, cold, phase)

    def _on_volume(self, t: int, dn: np.ndarray, result: Any) -> None:
        record = self.worker.records[-1] if self.worker.records else None
        latency = record.latency_s if record is not None else math.nan
        losses = [float(v) for v in getattr(result, "losses", [])]
        warm = bool(getattr(result, "warm", True))
        _emit(self.events.volume,
            VolumeUpdate(
                t=t,
                dn=dn,
                losses=losses,
                iterations=int(getattr(result, "iterations", 0)),
                seconds=float(getattr(result, "seconds", math.nan)),
                latency_s=latency,
                sources_um_xyz=np.asarray(getattr(result, "sources_um_xyz", self.microscope.info.sources_um_xyz)),
                stopped_by=str(getattr(result, "stopped_by", "")),
                warm=warm,
                method=self.worker.method,
            )
        )
        _emit(self.events.reconstructed, t, latency, losses, warm)

    def _on_reconstruction_error(self, message: str) -> None:
        logger.error("%s", message)
        self.errors.append(message)
        _emit(self.events.reconstruction_error, message)

    def _on_flagged(self, t: int, message: str) -> None:
        logger.warning("Timepoint %d flagged: %s", t, message)
        _emit(self.events.flagged, t, message)

    def _on_acquisition_error(self, message: str) -> None:
        logger.error("Acquisition error: %s", message)
        self.errors.append(message)
        _emit(self.events.acquisition_error, message)

    def _on_finished(self, summary: AcquisitionSummary) -> None:
        logger.info(
            "Acquisition %s: %d/%d timepoints, %d frames", summary.status, summary.timepoints_complete,
            summary.timepoints_requested, summary.frames_written,
        )
        _emit(self.events.acquisition_finished, summary)
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
                _emit(self.events.acquisition_error, message)
            if isinstance(self.reconstructor, LiveReconstructor):
                self.reconstructor.progress_hook = None
            self._remove_log_handler()
            end = SessionEnd(
                path=self.path,
                summary=self.acquisition.summary,
                reconstructed=len(self.worker.records),
                skipped=self.worker.skipped,
                errors=list(self.errors),
            )
            self.end = end
            logger.info("Session closed: %s (%d reconstructed, %d skipped)", self.path, end.reconstructed, end.skipped)
            _emit(self.events.closed, end)  # before waiters wake: a script sees every event once wait_closed returns
            self._closed.set()
