"""Writing a recording: :class:`RecordingWriter` (crash-safe, one writer per recording;
docs/format.md).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nvplive.errors import RecordingError
from nvplive.recon.optics import Optics
from nvplive.recon.pupil import PupilParameters

from .pupil_file import PUPIL_FILE, pupil_document
from .recording_format import (
    FRAMES_NAME,
    GROUND_TRUTH_NAME,
    JOURNAL_NAME,
    JSON_NAME,
    LOG_NAME,
    SUFFIX,
    VOLUMES_NAME,
    VOLUMES_PENDING_NAME,
    RecordingMeta,
    _document,
    _finite_float,
    _frames_ome,
    _fsync_dir,
    _is_int,
    _json_normalise,
    _load_state,
    _show,
    _sources_tuple,
    _truth_ome,
    _utc_now,
    _volumes_ome,
    atomic_write_json,
    require_recording_folder,
)
from .recording_lock import RecordingLock
from .recording_reader import Recording, _recover_locked
from .tiff_pages import _PageStack


class RecordingWriter:
    """Writes a recording folder, crash-safely, from several threads.

    Frames arrive one at a time in (timepoint, view) order, usually from the
    acquisition thread; volumes (reconstructions) and ground truth may come from
    other threads. Use as a context manager or call :meth:`close`.

    Args:
        path: the recording folder; its name must end in ``.fdt``.
        meta: optics, geometry, camera, source positions and free ``extra`` data.
        overwrite: replace an existing recording at ``path`` (refused otherwise).
        durable: fsync data and metadata (survives power loss, not only kill -9).
    """

    def __init__(self, path: str | os.PathLike, meta: RecordingMeta, *, overwrite: bool = False,
                 durable: bool = True) -> None:
        root = Path(path)
        if root.suffix != SUFFIX:
            raise RecordingError(f"{root}: a recording folder name must end in {SUFFIX}.")
        if not isinstance(meta, RecordingMeta):
            raise RecordingError(f"{root}: meta must be a RecordingMeta, got {type(meta).__name__}.")
        if root.exists() or root.is_symlink():
            if not overwrite:
                raise RecordingError(f"{root}: already exists; choose another name or remove the old recording first.")
            _remove_recording(root)
        self._setup(root, meta, durable, created=_utc_now(), frames_allowed=True)
        self._timepoints: list[dict] = []
        self._volumes: list[dict] = []
        self._ground_truth: list[dict] = []
        # The folder gets its name only once recording.json is in it: killed at any moment,
        # the writer leaves either no recording or one that opens (at worst a hidden staging folder).
        # The lock is taken in the staging folder, so the recording is never visible unlocked.
        staging = root.with_name(f".{root.name}.creating-{os.getpid()}")
        blocking = next((p for p in root.parents if p.exists() or p.is_symlink()), None)
        if blocking is not None and not blocking.is_dir():
            raise RecordingError(f"{root}: cannot be created: {blocking} is a file, not a folder; choose another place.")
        lock: RecordingLock | None = None
        try:
            staging.mkdir(parents=True)
            self._lock = lock = RecordingLock(staging).acquire()
            doc = _document(meta, created=self._created, closed=False, timepoints=[], volumes=[], ground_truth=[])
            atomic_write_json(staging / JSON_NAME, doc, durable)
            os.rename(staging, root)
            self._lock.moved(root)
        except OSError as exc:
            if lock is not None:
                lock.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise RecordingError(f"{root}: cannot create the recording folder ({exc.strerror or exc}).") from None
        if durable:
            _fsync_dir(root.parent)
        self._start()

    @classmethod
    def replace_volumes(cls, path: str | os.PathLike, *, durable: bool = True) -> RecordingWriter:
        """Reopen a finished recording to write a new set of volumes (offline reconstruction).

        Takes the recording's lock (:class:`RecordingLockedError` naming the holder if
        another process writes it) and recovers a recording whose writer died
        (:func:`recover_recording`). Every frame page is checked before anything is
        written (:meth:`Recording.verify`). The new volumes go to
        ``volumes.ome.tif.new``; :meth:`close` replaces the old volumes, their labels in
        recording.json and the refined source positions by the new ones in one commit
        (docs/format.md, "Replacing the volumes"). Leaving the ``with`` block on an
        exception, or :meth:`abandon`, keeps the old volumes. Frames and ground truth
        cannot be written through this writer.
        """
        root = Path(path)
        require_recording_folder(root)
        lock = RecordingLock(root).acquire()
        try:
            with Recording.open(root) as rec:
                repair = rec.interrupted or rec.damaged_tails
            if repair:
                _recover_locked(root, durable)
            with Recording.open(root) as rec:
                rec.verify()
            state = _load_state(root)
            (root / VOLUMES_PENDING_NAME).unlink(missing_ok=True)
        except OSError as exc:
            lock.release()
            raise RecordingError(f"{root / VOLUMES_PENDING_NAME}: cannot be removed ({exc.strerror or exc}).") from None
        except BaseException:
            lock.release()
            raise
        self = cls.__new__(cls)
        self._lock = lock
        self._setup(root, state.meta, durable, created=state.created, frames_allowed=False)
        self._timepoints = state.timepoints
        self._volumes = []
        self._ground_truth = state.ground_truth
        self._volume_stack = _PageStack(root / VOLUMES_PENDING_NAME, durable)
        self._volume_timepoints = set()
        self._truth_timepoints = {e["timepoint"] for e in self._ground_truth}
        return self

    def _setup(self, root: Path, meta: RecordingMeta, durable: bool, *, created: str, frames_allowed: bool) -> None:
        self._root = root
        self._meta = meta
        self._durable = durable
        self._created = created
        self._frames_allowed = frames_allowed
        self._frames_lock = threading.RLock()
        self._volumes_lock = threading.Lock()
        self._truth_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None
        self._pending: list[tuple[float, dict]] = []
        self._replacing = not frames_allowed
        self._frames = _PageStack(root / FRAMES_NAME, durable)
        self._volume_stack = _PageStack(root / VOLUMES_NAME, durable)
        self._truth_stack = _PageStack(root / GROUND_TRUTH_NAME, durable)
        self._journal: Any = None

    def _start(self) -> None:
        self._volume_timepoints = {e["timepoint"] for e in self._volumes}
        self._truth_timepoints = {e["timepoint"] for e in self._ground_truth}
        self._write_document(closed=False)
        try:
            self._journal = open(self._root / JOURNAL_NAME, "wb")
        except OSError as exc:
            raise RecordingError(f"{self._root / JOURNAL_NAME}: cannot be created ({exc.strerror or exc}).") from None
        if self._durable:
            _fsync_dir(self._root)

    # -- properties

    @property
    def path(self) -> Path:
        """The recording folder."""
        return self._root

    @property
    def meta(self) -> RecordingMeta:
        """The metadata, including source positions refined so far."""
        with self._state_lock:
            return self._meta

    @property
    def n_timepoints(self) -> int:
        """Number of complete timepoints written so far."""
        with self._state_lock:
            return len(self._timepoints)

    @property
    def volume_timepoints(self) -> tuple[int, ...]:
        """Timepoints with a stored volume so far, in order."""
        with self._state_lock:
            return tuple(e["timepoint"] for e in self._volumes)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has finished."""
        return self._closed

    @property
    def stale_lock(self) -> dict | None:
        """The description of a dead writer whose lock this writer took over, or None."""
        return self._lock.stale

    # -- writing

    def write_frame(self, t: int, view: int, frame: np.ndarray, timestamp_s: float,
                    metadata: dict | None = None) -> None:
        """Append one camera frame (uint16 [Y, X]) of view ``view`` at timepoint ``t``.

        Frames must come in (t, view) order; timepoint ``t`` becomes complete (and
        visible to readers, on disk) when its last view is written.
        """
        prepared = self._prepare_frame(t, view, frame, timestamp_s, metadata)
        with self._frames_lock:
            self._append_frame(t, view, *prepared)

    def write_timepoint(self, t: int, frames: np.ndarray, timestamps_s: Sequence[float],
                        metadata: Sequence[dict | None] | None = None) -> None:
        """Append all views of timepoint ``t``: ``frames`` uint16 [V, Y, X], one timestamp (s) per view.

        Everything is validated before the first frame is written.
        """
        n_views = self._meta.n_views
        if not isinstance(frames, np.ndarray) or frames.ndim != 3 or frames.shape[0] != n_views:
            got = frames.shape if isinstance(frames, np.ndarray) else type(frames).__name__
            raise RecordingError(
                f"{self._root / FRAMES_NAME}: timepoint {_show(t)} must be an array [V={n_views}, Y, X], got {got}."
            )
        try:
            stamps = [] if isinstance(timestamps_s, (str, bytes)) else list(timestamps_s)
        except TypeError:
            stamps = []
        metas = list(metadata) if metadata is not None else [None] * n_views
        if len(stamps) != n_views or len(metas) != n_views:
            raise RecordingError(
                f"{self._root}: timepoint {_show(t)} needs {n_views} timestamps and metadata entries (one per view), "
                f"got {len(stamps)} and {len(metas)}."
            )
        prepared = [self._prepare_frame(t, v, frames[v], stamps[v], metas[v]) for v in range(n_views)]
        with self._frames_lock:
            if len(self._pending) != 0:
                raise RecordingError(
                    f"{self._root / FRAMES_NAME}: timepoint {len(self._timepoints)} is partly written frame by "
                    "frame; finish it with write_frame."
                )
            for view, item in enumerate(prepared):
                self._append_frame(t, view, *item)

    def _prepare_frame(self, t: Any, view: Any, frame: Any, timestamp_s: Any,
                       metadata: Any) -> tuple[np.ndarray, float, dict]:
        expected = self._meta.frame_shape
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint16 or frame.shape != expected:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise RecordingError(
                f"{self._root / FRAMES_NAME}: frame (timepoint {_show(t)}, view {_show(view)}) must be a uint16 "
                f"array of shape {expected}, got {got}."
            )
        stamp = _finite_float(timestamp_s)
        if stamp is None:
            raise RecordingError(
                f"{self._root}: timestamp_s of timepoint {_show(t)} view {_show(view)} must be a finite number of "
                f"seconds, got {_show(timestamp_s)}."
            )
        if metadata is not None and not isinstance(metadata, dict):
            raise RecordingError(f"{self._root}: frame metadata must be a dictionary, got {_show(metadata)}.")
        info = _json_normalise(metadata or {}, f"{self._root}: metadata of timepoint {_show(t)} view {_show(view)}")
        return frame, stamp, info

    def _append_frame(self, t: Any, view: Any, frame: np.ndarray, stamp: float, info: dict) -> None:
        """Write one validated frame; caller holds the frames lock."""
        self._check_writable("frames")
        if not self._frames_allowed:
            raise RecordingError(f"{self._root}: this writer only replaces volumes; frames cannot be added.")
        want = (len(self._timepoints), len(self._pending))
        if not (_is_int(t) and _is_int(view)) or (t, view) != want:
            raise RecordingError(
                f"{self._root / FRAMES_NAME}: expected the frame of timepoint {want[0]} view {want[1]}, "
                f"got timepoint {_show(t)} view {_show(view)}; frames arrive in (timepoint, view) order."
            )
        self._guard(self._frames, lambda: self._frames.append(frame[np.newaxis]))
        self._pending.append((stamp, info))
        if len(self._pending) == self._meta.n_views:
            entry = {
                "index": int(t),
                "timestamps_s": [s for s, _ in self._pending],
                "frames": [m for _, m in self._pending],
            }
            with self._state_lock:
                self._append_journal({"op": "timepoint", "entry": entry})
                self._timepoints.append(entry)
            self._pending = []

    def write_volume(self, t: int, dn: np.ndarray, method: str, settings: dict | None = None) -> None:
        """Store the reconstructed Δn [Z, Y, X] of timepoint ``t`` with its method and settings."""
        volume = self._check_volume(dn, VOLUMES_NAME, t)
        if not isinstance(method, str) or not method:
            raise RecordingError(
                f"{self._root / VOLUMES_NAME}: method must be a non-empty string, got {_show(method)}."
            )
        if settings is not None and not isinstance(settings, dict):
            raise RecordingError(f"{self._root / VOLUMES_NAME}: settings must be a dictionary, got {_show(settings)}.")
        settings = _json_normalise(settings or {}, f"{self._root / VOLUMES_NAME}: settings")
        with self._volumes_lock:
            self._check_writable("volumes")
            self._check_stack_timepoint(t, self._volume_timepoints, VOLUMES_NAME)
            self._guard(self._volume_stack, lambda: self._volume_stack.append(volume))
            entry = {"timepoint": int(t), "method": method, "settings": settings}
            with self._state_lock:
                if not self._replacing:  # a replacement commits all its volumes at once, in close()
                    self._append_journal({"op": "volume", "index": len(self._volumes), "entry": entry})
                self._volumes.append(entry)
                self._volume_timepoints.add(int(t))

    def write_ground_truth(self, t: int, dn: np.ndarray) -> None:
        """Store the true Δn [Z, Y, X] of timepoint ``t`` (simulated recordings)."""
        volume = self._check_volume(dn, GROUND_TRUTH_NAME, t)
        with self._truth_lock:
            self._check_writable("ground truth")
            if not self._frames_allowed:
                raise RecordingError(f"{self._root}: this writer only replaces volumes; ground truth cannot be added.")
            self._check_stack_timepoint(t, self._truth_timepoints, GROUND_TRUTH_NAME)
            self._guard(self._truth_stack, lambda: self._truth_stack.append(volume))
            entry = {"timepoint": int(t)}
            with self._state_lock:
                self._append_journal({"op": "ground_truth", "index": len(self._ground_truth), "entry": entry})
                self._ground_truth.append(entry)
                self._truth_timepoints.add(int(t))

    def update_sources(self, sources_um_xyz: Sequence[Sequence[float]]) -> None:
        """Record source positions [V, 3] (µm) refined by self-calibration; the nominal ones are kept."""
        refined = _sources_tuple(
            np.asarray(sources_um_xyz).tolist() if isinstance(sources_um_xyz, np.ndarray) else sources_um_xyz,
            self._meta.n_views,
            f"{self._root}: refined sources_um_xyz",
        )
        with self._state_lock:
            self._check_writable("sources")
            if not self._replacing:
                self._append_journal({"op": "sources", "refined_source_um_xyz": [list(s) for s in refined]})
            self._meta = replace(self._meta, refined_sources_um_xyz=refined)

    def write_pupil(self, pupil: PupilParameters, optics: Optics, **provenance: Any) -> Path:
        """Write the recording's ``pupil.json`` (docs/format.md), atomically (durable like the rest):
        the detection pupil its volumes are (to be) reconstructed through; ``provenance``: the
        keyword arguments of :func:`.pupil_file.pupil_document`. Written at once, also by a
        :meth:`replace_volumes` writer (not part of its volume commit).

        Raises:
            RecordingError: the document is invalid, the writer is closed, or the file cannot be written.
        """
        doc = pupil_document(pupil, optics, **provenance)
        with self._state_lock:
            self._check_writable("the pupil")
            return _write_pupil_document(self._root, doc, self._durable)

    def close(self) -> None:
        """Finish the TIFFs (OME-XML), merge the journal into recording.json, release the lock. Idempotent.

        Frames of an incomplete last timepoint stay in the file but are not part of
        the recording. A :meth:`replace_volumes` writer commits its volumes here.
        """
        with self._frames_lock, self._volumes_lock, self._truth_lock, self._state_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._broken is None and self._replacing:
                    self._commit_replacement()
                elif self._broken is None:
                    self._finish_stacks()
                    self._write_document(closed=True)
                    self._journal.close()
                    (self._root / JOURNAL_NAME).unlink()
                    if self._durable:
                        _fsync_dir(self._root)
            except OSError as exc:
                raise RecordingError(f"{self._root}: cannot finish the recording ({exc.strerror or exc}).") from None
            finally:
                self._release()

    def abandon(self) -> None:
        """Stop without committing: a :meth:`replace_volumes` writer keeps the old volumes; a live
        writer leaves an interrupted recording (as if killed). Releases the lock. Idempotent."""
        with self._frames_lock, self._volumes_lock, self._truth_lock, self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def _release(self) -> None:
        """Drop unfinished pages, the journal handle, a pending volumes file and the lock."""
        for stack in (self._frames, self._volume_stack, self._truth_stack):
            stack.abandon()
        if self._journal is not None and not self._journal.closed:
            self._journal.close()
        if self._replacing:
            (self._root / VOLUMES_PENDING_NAME).unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and self._replacing:
            self.abandon()  # a failed or interrupted run must not replace the previous volumes
        else:
            self.close()

    def _commit_replacement(self) -> None:
        """Replace volumes, labels and refined sources together (caller holds every lock).

        1. the new volumes file is finished (OME-XML) and synced; 2. one journal line
        lists the new labels: the commit point (a reader after it sees the new volumes,
        from ``volumes.ome.tif.new`` until it is renamed); 3. rename over
        ``volumes.ome.tif``; 4. recording.json rewritten; 5. journal removed.
        """
        root = self._root
        pending, target = root / VOLUMES_PENDING_NAME, root / VOLUMES_NAME
        self._volume_stack.finish(_volumes_ome(root.stem, self._meta, self._volumes) if self._volumes else None)
        refined = self._meta.refined_sources_um_xyz
        record = {
            "op": "replace_volumes",
            "volumes": self._volumes,
            "refined_source_um_xyz": [list(s) for s in refined] if refined is not None else None,
        }
        line = json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":")) + "\n"
        with open(root / JOURNAL_NAME, "wb") as journal:
            journal.write(line.encode("utf-8"))
            journal.flush()
            if self._durable:
                os.fsync(journal.fileno())
        if self._durable:
            _fsync_dir(root)
        if self._volumes:
            os.replace(pending, target)
        else:
            target.unlink(missing_ok=True)
        if self._durable:
            _fsync_dir(root)
        self._write_document(closed=True)
        (root / JOURNAL_NAME).unlink()
        if self._durable:
            _fsync_dir(root)

    # -- internals

    def _check_writable(self, what: str) -> None:
        if self._closed:
            raise RecordingError(f"{self._root}: the writer is closed; cannot write {what}.")
        if self._broken is not None:
            raise RecordingError(f"{self._root}: the writer stopped after an earlier error ({self._broken}).")

    def _guard(self, stack: _PageStack, action: Any) -> None:
        try:
            action()
        except RecordingError as exc:
            self._broken = str(exc)
            stack.abandon()
            raise

    def _check_volume(self, dn: Any, name: str, t: Any) -> np.ndarray:
        shape = self._meta.geometry.shape_zyx
        if not isinstance(dn, np.ndarray) or dn.dtype.kind != "f" or dn.shape != shape:
            got = f"{dn.dtype} {dn.shape}" if isinstance(dn, np.ndarray) else type(dn).__name__
            raise RecordingError(
                f"{self._root / name}: Δn of timepoint {_show(t)} must be a real floating-point array of shape "
                f"{shape}, got {got}."
            )
        volume = np.ascontiguousarray(dn, dtype=np.float32)
        if not np.isfinite(volume).all():
            raise RecordingError(
                f"{self._root / name}: Δn of timepoint {_show(t)} contains NaN or infinite values (in float32)."
            )
        return volume

    def _check_stack_timepoint(self, t: Any, done: set[int], name: str) -> None:
        with self._state_lock:
            n = len(self._timepoints)
        if not _is_int(t) or not 0 <= t < n:
            raise RecordingError(
                f"{self._root / name}: timepoint {_show(t)} must be one of the {n} complete timepoints "
                "(write its frames first)."
            )
        if int(t) in done:
            raise RecordingError(f"{self._root / name}: timepoint {t} has already been written.")

    def _append_journal(self, record: dict) -> None:
        """One line, flushed and fsync'ed; caller holds the state lock."""
        line = json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            self._journal.write(line.encode("utf-8"))
            self._journal.flush()
            if self._durable:
                os.fsync(self._journal.fileno())
        except OSError as exc:
            self._broken = f"{self._root / JOURNAL_NAME}: {exc.strerror or exc}"
            raise RecordingError(f"{self._root / JOURNAL_NAME}: cannot write ({exc.strerror or exc}).") from None

    def _write_document(self, *, closed: bool) -> None:
        doc = _document(
            self._meta,
            created=self._created,
            closed=closed,
            timepoints=self._timepoints,
            volumes=self._volumes,
            ground_truth=self._ground_truth,
        )
        try:
            atomic_write_json(self._root / JSON_NAME, doc, self._durable)
        except OSError as exc:
            raise RecordingError(f"{self._root / JSON_NAME}: cannot write ({exc.strerror or exc}).") from None

    def _finish_stacks(self) -> None:
        name = self._root.stem
        self._frames.finish(_frames_ome(name, self._meta, self._timepoints) if self._timepoints else None)
        self._volume_stack.finish(_volumes_ome(name, self._meta, self._volumes) if self._volumes else None)
        self._truth_stack.finish(_truth_ome(name, self._meta, self._ground_truth) if self._ground_truth else None)


#: ``store(pupil, optics, **provenance) -> Path``: writes a pupil file (:func:`pupil_store`).
PupilStore = Callable[..., Path]


@contextmanager
def pupil_store(path: str | os.PathLike, *, durable: bool = True) -> Iterator[PupilStore]:
    """Hold the lock of a recording no writer has open for as long as the block runs, and
    give the function that writes its ``pupil.json`` (as :meth:`RecordingWriter.write_pupil`
    does; ``provenance``: the keyword arguments of :func:`.pupil_file.pupil_document`).
    ``nvplive calibrate REC.fdt`` fits inside the block, so that no other process starts to
    write the recording before the fitted pupil is stored.

    Raises:
        RecordingError: ``path`` is not a recording, or the document is invalid or cannot be written.
        RecordingLockedError: another process writes the recording (the message names it), on entry.
    """
    root = Path(path)
    if root.suffix != SUFFIX or not (root / JSON_NAME).is_file():
        raise RecordingError(f"{root}: not a recording folder (NAME{SUFFIX} with {JSON_NAME}).")

    def store(pupil: PupilParameters, optics: Optics, **provenance: Any) -> Path:
        return _write_pupil_document(root, pupil_document(pupil, optics, **provenance), durable)

    with RecordingLock(root):
        yield store


def store_pupil(path: str | os.PathLike, pupil: PupilParameters, optics: Optics, *, durable: bool = True,
                **provenance: Any) -> Path:
    """Write the ``pupil.json`` of a recording no writer has open under the recording's lock
    (:func:`pupil_store`, taken for this one write).

    Raises:
        RecordingError: ``path`` is not a recording, or the document is invalid or cannot be written.
        RecordingLockedError: another process writes the recording (the message names it).
    """
    pupil_document(pupil, optics, **provenance)  # an invalid document is refused before the lock is taken
    with pupil_store(path, durable=durable) as store:
        return store(pupil, optics, **provenance)


def _write_pupil_document(root: Path, doc: dict, durable: bool) -> Path:
    target = root / PUPIL_FILE
    try:
        atomic_write_json(target, doc, durable)
    except OSError as exc:
        raise RecordingError(f"{target}: cannot be written ({exc.strerror or exc}).") from None
    return target


#: The files a recording folder holds that nvp-live writes (docs/format.md, "Layout"; with their
#: ``.tmp`` and ``.recover.tmp`` siblings while one is replaced or recovered); hidden names are its
#: own too (the lock, staging files).
_OWN_FILES = frozenset({JSON_NAME, JOURNAL_NAME, FRAMES_NAME, VOLUMES_NAME, VOLUMES_PENDING_NAME, GROUND_TRUTH_NAME, PUPIL_FILE,
                        LOG_NAME})


def _own_file(name: str) -> bool:
    """Whether nvp-live writes a file of this name in a recording folder (:data:`_OWN_FILES`)."""
    return name.startswith(".") or name.removesuffix(".tmp").removesuffix(".recover") in _OWN_FILES


def _remove_recording(root: Path) -> None:
    """Delete an existing recording (never anything that does not look like one, never one that a
    live process writes, and never a file nvp-live did not write: a user's own files in the folder
    stop the removal)."""
    if not root.is_dir() or root.is_symlink():
        raise RecordingError(f"{root}: exists and is not a recording folder; refusing to replace it.")
    if any(root.iterdir()) and not (root / JSON_NAME).is_file():
        raise RecordingError(
            f"{root}: exists and holds no {JSON_NAME}; refusing to delete a folder that is not a recording."
        )
    with RecordingLock(root):  # never delete a recording that a live process is writing
        foreign = sorted(p.name for p in root.iterdir() if not _own_file(p.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise RecordingError(
                f"{root}: holds files nvp-live did not write ({shown}); refusing to delete them with the recording. "
                "Move them out first, or choose another name."
            )
        try:
            shutil.rmtree(root)
        except OSError as exc:
            raise RecordingError(f"{root}: cannot remove the old recording ({exc.strerror or exc}).") from None
