"""The app's workers besides the live session: replay loading, offline reconstruction, pupil
calibration, device status.

Nothing here touches a widget. The live session itself is Qt-free and shared with the
headless demo (:mod:`nvplive.acquisition.live`). Each worker here reports through a
typed psygnal ``SignalGroup`` emitted from its own thread; the window receives them in
the GUI thread through :class:`~nvplive.app.bridge.GuiBridge` (newest-only for data a
view draws, queued for events that must not be lost).
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from psygnal import Signal, SignalGroup

from nvplive.acquisition.recording import Recording
from nvplive.recon.reconstructor import ReconConfig

logger = logging.getLogger("nvplive.app")


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


class ReplayEvents(SignalGroup):
    """What a :class:`RecordingLoader` reports (from its thread)."""

    #: A timepoint was read: :class:`ReplayItem` (newest-only for views).
    item = Signal(object)
    #: A timepoint could not be read: ``(message)``.
    error = Signal(str)


class RecordingLoader:
    """Reads stored timepoints in its own thread (newest request wins).

    A recording still being written is reopened when a request goes past what
    the open reader knows (its journal grows as timepoints complete). Results and
    failures are emitted as :attr:`events` (:class:`ReplayEvents`).
    """

    def __init__(self) -> None:
        self.events = ReplayEvents()
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
            if kind == "truth":
                dn = rec.ground_truth(t)
            else:  # volumes whose file was deleted: the frames are still shown
                dn = None if rec.missing_volumes else rec.volume(t)
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
            self.events.item.emit(item)
        except Exception as exc:
            self._close_rec()
            logger.exception("Reading timepoint %s of %s failed", t, path)
            self.events.error.emit(f"Could not read timepoint {t} of {path}: {exc}")


# ---------------------------------------------------------------------------------------
# Offline reconstruction of a recording
# ---------------------------------------------------------------------------------------
class _Cancelled(Exception):
    pass


class OfflineEvents(SignalGroup):
    """What an :class:`OfflineReconstruction` reports (from its thread)."""

    #: ``(done, total, message)`` (newest-only for views).
    progress = Signal(int, int, str)
    #: Finished: the ``reconstruct_recording`` summary.
    done = Signal(object)
    #: Cancelled: ``(path)``.
    cancelled = Signal(object)
    #: Failed: ``(message)``.
    failed = Signal(str)


class _ThreadTask:
    """A task run once in a daemon thread (``_run``), with a cancel flag it checks itself."""

    def __init__(self, name: str) -> None:
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

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


class OfflineReconstruction(_ThreadTask):
    """``reconstruct_recording`` in a thread, with progress and cancel (:attr:`events`)."""

    def __init__(self, path: Path, config: ReconConfig, device: str) -> None:
        super().__init__("nvplive-offline")
        self.path = Path(path)
        self.config = config
        self.device = device
        self.events = OfflineEvents()


    def _progress(self, done: int, total: int, message: str) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        self.events.progress.emit(done, total, message)

    def _run(self) -> None:
        from nvplive.acquisition.offline import reconstruct_recording

        logger.info("Offline reconstruction of %s (%s on %s)", self.path, self.config.method, self.device)
        try:
            summary = reconstruct_recording(self.path, self.config, device=self.device, progress=self._progress)
        except _Cancelled:
            logger.info("Offline reconstruction of %s cancelled", self.path)
            self.events.cancelled.emit(self.path)
        except Exception as exc:
            logger.exception("Offline reconstruction of %s failed", self.path)
            self.events.failed.emit(f"Reconstruction of {self.path} failed: {exc}")
        else:
            logger.info("Offline reconstruction of %s done in %.1f s", self.path, summary.seconds)
            self.events.done.emit(summary)


# ---------------------------------------------------------------------------------------
# Pupil calibration on a bead z-stack ("Calibrate pupil")
# ---------------------------------------------------------------------------------------
class PupilCalibrationEvents(SignalGroup):
    """What a :class:`PupilCalibrationTask` reports (from its thread)."""

    #: ``(done, total, message)``: the z-stack's planes, then the fit's share of its evaluation budget (total 0: starting).
    progress = Signal(int, int, str)
    #: Finished: the :class:`~nvplive.acquisition.bead_stack.CalibratedPupil`.
    done = Signal(object)
    #: Failed: ``(message)``.
    failed = Signal(str)
    #: Cancelled (:meth:`PupilCalibrationTask.cancel`), during the z-stack or the fit.
    cancelled = Signal()


class PupilCalibrationTask(_ThreadTask):
    """Acquire a bead z-stack through the microscope's MDA and calibrate the pupil on it, in a thread.

    The acquisition is :func:`~nvplive.acquisition.bead_stack.acquire_bead_stack`, the fit
    :func:`~nvplive.acquisition.bead_stack.calibrate_bead_stack_acquired` (``nvplive calibrate``'s
    path); both report progress. :meth:`cancel` ends the acquisition after the plane being
    exposed, or the fit at its next model evaluation (``cancelled``).
    """

    def __init__(self, core, info, plan, *, iterations: int = 150) -> None:
        super().__init__("nvplive-pupil-calibration")
        self.core, self.info, self.plan, self.iterations = core, info, plan, int(iterations)
        self.events = PupilCalibrationEvents()

    def _run(self) -> None:
        from nvplive.acquisition.bead_stack import acquire_bead_stack, calibrate_bead_stack_acquired

        try:
            bead = acquire_bead_stack(self.core, self.info, self.plan, progress=self.events.progress.emit, cancel=self._cancel)
            logger.info("Bead z-stack: %s", bead.describe())
            self.events.progress.emit(0, 0, f"fitting the pupil to {len(bead.z_um)} planes…")
            _, calibrated, _ = calibrate_bead_stack_acquired(bead, iterations=self.iterations,
                                                             progress=self.events.progress.emit, cancel=self._cancel)
        except Exception as exc:
            if self._cancel.is_set():  # the z-stack's AcquisitionError or the fit's CalibrationCancelled
                logger.info("Pupil calibration cancelled: %s", exc)
                self.events.cancelled.emit()
                return
            logger.exception("Pupil calibration failed")
            self.events.failed.emit(f"Pupil calibration failed: {exc}")
            return
        if self._cancel.is_set():
            self.events.cancelled.emit()
            return
        logger.info("Pupil calibrated: %.3f rad RMS, residual %.3f (hard aperture %.3f)",
                    calibrated.pupil.aberration_rms_rad, calibrated.residual or float("nan"),
                    calibrated.residual_before or float("nan"))
        self.events.done.emit(calibrated)


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
    """Resident memory of this process (MiB)."""
    return psutil.Process().memory_info().rss / 2**20


def remove_scratch_recording(path: Path) -> None:
    """Delete a scratch (Live) recording folder; only folders that look like recordings."""
    path = Path(path)
    if path.suffix == ".fdt" and path.is_dir() and (path / "recording.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
