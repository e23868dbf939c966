"""Reading a recording: :class:`Recording`, :func:`open_recording` and crash recovery
(:func:`recover_recording`; docs/format.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nvplive.errors import RecordingError

from .recording_format import (
    FRAMES_NAME,
    GROUND_TRUTH_NAME,
    JOURNAL_NAME,
    JSON_NAME,
    VOLUMES_NAME,
    VOLUMES_PENDING_NAME,
    RecordingMeta,
    _document,
    _frames_ome,
    _fsync_dir,
    _is_int,
    _load_state,
    _show,
    _truth_ome,
    _volumes_ome,
    atomic_write_json,
    require_recording_folder,
)
from .recording_lock import RecordingLock, lock_holder
from .tiff_pages import _PageReader, _PageStack


class TimepointData(NamedTuple):
    """All views of one timepoint, as yielded by iterating a :class:`Recording`."""

    index: int
    frames: np.ndarray
    timestamps_s: np.ndarray
    metadata: list[dict]


class Recording:
    """Read-only, validated, lazy access to a recording folder.

    Opening validates recording.json (+ journal) and the TIFFs' first and last
    needed pages; pixel data are read only when asked for, one timepoint at a time.
    Use :meth:`open` / :func:`open_recording`, ideally as a context manager.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        root = Path(path)
        if root.name == JSON_NAME and root.is_file():
            root = root.parent
        require_recording_folder(root)
        self._root = root
        state = _load_state(root)
        self._state = state
        meta = state.meta
        n_views, z = meta.n_views, meta.geometry.shape_zyx[0]
        self._volume_index = {e["timepoint"]: i for i, e in enumerate(state.volumes)}
        self._truth_index = {e["timepoint"]: i for i, e in enumerate(state.ground_truth)}
        self._readers: list[_PageReader] = []
        try:
            self._frames = self._reader(
                FRAMES_NAME, len(state.timepoints) * n_views, meta.frame_shape, np.uint16,
                {"C": n_views, "T": len(state.timepoints)},
            )
            yx = meta.geometry.shape_zyx[1:]
            volumes_path = root / state.volumes_file
            self._missing_volumes: str | None = None
            if state.volumes and not volumes_path.exists():
                # derived data deleted by hand: the frames stay readable and a reconstruction rewrites it
                self._missing_volumes = (
                    f"{volumes_path}: file is missing, but {JSON_NAME} lists {len(state.volumes)} reconstructed "
                    "volume(s) in it; `nvplive reconstruct` writes them again from the frames."
                )
            stored = 0 if self._missing_volumes else len(state.volumes)
            self._volumes = self._reader(state.volumes_file, stored * z, yx, np.float32, {"Z": z, "T": stored})
            self._truth = self._reader(
                GROUND_TRUTH_NAME, len(state.ground_truth) * z, yx, np.float32, {"Z": z, "T": len(state.ground_truth)}
            )
        except BaseException:
            self.close()
            raise

    def _reader(self, name: str, n_pages: int, shape: tuple[int, int], dtype: Any,
                sizes: dict[str, int]) -> _PageReader:
        reader = _PageReader(self._root / name, n_pages, tuple(shape), np.dtype(dtype), sizes)  # type: ignore[arg-type]
        self._readers.append(reader)
        return reader

    @classmethod
    def open(cls, path: str | os.PathLike) -> Recording:
        """Open and validate the recording folder ``path`` (same as the constructor)."""
        return cls(path)

    # -- description

    @property
    def path(self) -> Path:
        """The recording folder."""
        return self._root

    @property
    def meta(self) -> RecordingMeta:
        """Its metadata (optics, camera, volume, sources …)."""
        return self._state.meta

    @property
    def created(self) -> str:
        """When the recording was created (UTC, ISO 8601)."""
        return self._state.created

    @property
    def interrupted(self) -> bool:
        """True if the writer did not close cleanly, or is still writing (see :attr:`writer`).

        An interrupted recording whose writer died is finished by :func:`recover_recording`;
        one that is still being written must be left alone.
        """
        return self._state.journal_present or not self._state.closed

    @property
    def damaged_tails(self) -> tuple[str, ...]:
        """TIFFs whose OME-XML (at the end of the file) is unreadable; their pages are intact and
        read through recording.json. :func:`recover_recording` rewrites them."""
        return tuple(r.path.name for r in self._readers if r.tail_damaged)

    @property
    def writer(self) -> dict | None:
        """The live process writing this recording now (``pid``, ``command``, ``since``), or None.

        Asked of the recording's lock at each call (docs/format.md, "One writer").
        """
        return lock_holder(self._root)

    @property
    def n_timepoints(self) -> int:
        """Number of complete timepoints."""
        return len(self._state.timepoints)

    @property
    def n_views(self) -> int:
        """Views (sources) per timepoint."""
        return self._state.meta.n_views

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Camera frame size (Y, X)."""
        return self._state.meta.frame_shape

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """Shape ``(Z, Y, X)`` of a stored volume."""
        return self._state.meta.geometry.shape_zyx

    @property
    def volume_timepoints(self) -> tuple[int, ...]:
        """Timepoints that have a reconstructed volume, in the order they were stored."""
        return tuple(e["timepoint"] for e in self._state.volumes)

    @property
    def missing_volumes(self) -> str | None:
        """Why the volumes that recording.json lists cannot be read (their file is missing), or None.

        Such a recording still opens: its frames are intact, :meth:`volume` raises
        :class:`RecordingError` with this text, and an offline reconstruction
        (:meth:`RecordingWriter.replace_volumes`) writes the volumes again.
        """
        return self._missing_volumes

    @property
    def volume_settings(self) -> dict[int, dict]:
        """For each reconstructed timepoint: ``{"method": str, "settings": dict}``."""
        return {e["timepoint"]: {"method": e["method"], "settings": e["settings"]} for e in self._state.volumes}

    @property
    def ground_truth_timepoints(self) -> tuple[int, ...]:
        """Timepoints with a ground-truth volume, in order."""
        return tuple(e["timepoint"] for e in self._state.ground_truth)

    @property
    def has_ground_truth(self) -> bool:
        """Whether any timepoint has a ground truth (a simulated recording)."""
        return bool(self._state.ground_truth)

    # -- data

    def _check_t(self, t: Any) -> int:
        n = self.n_timepoints
        if not _is_int(t) or not 0 <= t < n:
            raise RecordingError(
                f"{self._root}: timepoint {_show(t)} is out of range; the recording has {n} timepoints."
            )
        return int(t)

    def frames(self, t: int) -> np.ndarray:
        """All views of timepoint ``t``: uint16 [V, Y, X]."""
        t = self._check_t(t)
        return self._frames.read(t * self.n_views, self.n_views)

    def frame(self, t: int, view: int) -> np.ndarray:
        """One frame: uint16 [Y, X]."""
        t = self._check_t(t)
        if not _is_int(view) or not 0 <= view < self.n_views:
            raise RecordingError(
                f"{self._root}: view {_show(view)} is out of range; the recording has {self.n_views} views."
            )
        return self._frames.read(t * self.n_views + int(view), 1)[0]

    def timestamps(self, t: int) -> np.ndarray:
        """Acquisition time of each view of timepoint ``t`` (s), float64 [V]."""
        return np.asarray(self._state.timepoints[self._check_t(t)]["timestamps_s"], dtype=np.float64)

    def frame_metadata(self, t: int) -> list[dict]:
        """Per-view metadata dictionaries of timepoint ``t``."""
        return json.loads(json.dumps(self._state.timepoints[self._check_t(t)]["frames"]))

    def volume(self, t: int) -> np.ndarray | None:
        """Reconstructed Δn float32 [Z, Y, X] of timepoint ``t``, or None if it was not reconstructed.

        Raises RecordingError if it was, but its file is missing (:attr:`missing_volumes`).
        """
        index = self._volume_index.get(self._check_t(t))
        if index is None:
            return None
        if self._missing_volumes:
            raise RecordingError(self._missing_volumes)
        z = self.volume_shape[0]
        return self._volumes.read(index * z, z)

    def ground_truth(self, t: int) -> np.ndarray | None:
        """True Δn float32 [Z, Y, X] of timepoint ``t`` (simulated recordings), or None."""
        index = self._truth_index.get(self._check_t(t))
        if index is None:
            return None
        z = self.volume_shape[0]
        return self._truth.read(index * z, z)

    def __len__(self) -> int:
        return self.n_timepoints

    def __iter__(self) -> Iterator[TimepointData]:
        """Timepoints one at a time (only one is in memory)."""
        for t in range(self.n_timepoints):
            yield TimepointData(t, self.frames(t), self.timestamps(t), self.frame_metadata(t))

    def verify(self) -> None:
        """Check every page the recording lists in each TIFF (structure and extent, not pixel values).

        Raises RecordingError naming the first damaged page; opening checks only the
        first and last page of each file.
        """
        for reader in self._readers:
            reader.verify()

    def iter_volumes(self) -> Iterator[tuple[int, np.ndarray]]:
        """(timepoint, Δn) for every stored volume, one at a time."""
        for t in self.volume_timepoints:
            yield t, self.volume(t)  # type: ignore[misc]

    def close(self) -> None:
        """Close the TIFF files (idempotent)."""
        for reader in getattr(self, "_readers", []):
            reader.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Recording({str(self._root)!r}, timepoints={self.n_timepoints}, views={self.n_views}, "
            f"frame_shape={self.frame_shape}, volumes={len(self._state.volumes)}, "
            f"ground_truth={len(self._state.ground_truth)}, interrupted={self.interrupted})"
        )


def open_recording(path: str | os.PathLike) -> Recording:
    """Open and validate a recording folder (``NAME.fdt``)."""
    return Recording(path)


def recover_recording(path: str | os.PathLike, *, durable: bool = True) -> bool:
    """Finish an interrupted recording in place, or repair TIFFs whose OME-XML tail is damaged
    (:attr:`Recording.damaged_tails`); returns False if there was nothing to do.

    Each TIFF is rewritten with exactly its complete pages plus OME-XML (and
    atomically swapped in), the journal is merged into recording.json and removed.
    Safe to interrupt and repeat. Takes the recording's lock: a recording that a live
    process is writing is refused (:class:`RecordingLockedError` naming it), one whose
    writer died is taken over.
    """
    root = Path(path)
    require_recording_folder(root)
    with RecordingLock(root):
        return _recover_locked(root, durable)


def _recover_locked(root: Path, durable: bool) -> bool:
    """:func:`recover_recording` for a caller that holds the lock."""
    with Recording.open(root) as rec:
        if not (rec.interrupted or rec.damaged_tails):
            return False
        state = rec._state
        meta = state.meta
        name = root.stem
        z = meta.geometry.shape_zyx[0]
        jobs = (
            (FRAMES_NAME, rec._frames, meta.n_views, lambda: _frames_ome(name, meta, state.timepoints)),
            (VOLUMES_NAME, rec._volumes, z, lambda: _volumes_ome(name, meta, state.volumes)),
            (GROUND_TRUTH_NAME, rec._truth, z, lambda: _truth_ome(name, meta, state.ground_truth)),
        )
        for file_name, reader, chunk, make_ome in jobs:
            target = root / file_name
            if reader.n_pages == 0:
                continue
            tmp = root / (file_name + ".recover.tmp")
            tmp.unlink(missing_ok=True)
            stack = _PageStack(tmp, durable)
            try:
                for start in range(0, reader.n_pages, chunk):
                    stack.append(reader.read(start, chunk))
                stack.finish(make_ome())
            except BaseException:
                stack.abandon()
                tmp.unlink(missing_ok=True)
                raise
            reader.close()  # no open handle on the file being replaced (needed on Windows)
            os.replace(tmp, target)
    for file_name, entries in ((FRAMES_NAME, state.timepoints), (VOLUMES_NAME, state.volumes),
                               (GROUND_TRUTH_NAME, state.ground_truth)):
        if not entries:
            (root / file_name).unlink(missing_ok=True)
    (root / VOLUMES_PENDING_NAME).unlink(missing_ok=True)
    doc = _document(
        meta,
        created=state.created,
        closed=True,
        timepoints=state.timepoints,
        volumes=state.volumes,
        ground_truth=state.ground_truth,
    )
    try:
        atomic_write_json(root / JSON_NAME, doc, durable)
        (root / JOURNAL_NAME).unlink(missing_ok=True)
    except OSError as exc:
        raise RecordingError(f"{root}: cannot finish the recovery ({exc.strerror or exc}).") from None
    if durable:
        _fsync_dir(root)
    return True
