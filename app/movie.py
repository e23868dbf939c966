"""Movie export: every stored volume of a recording rendered in the 3D view, written as a movie.

A thread reads the volumes ahead (bounded queue); a GUI timer renders one per tick in
the :class:`~nvplive.app.volume_view.VolumeView` and hands the picture to a
:class:`~nvplive.app.export.BackgroundMovieWriter` (MP4, animated PNG or PNG frames), so
the window stays responsive.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from PySide6 import QtCore

from nvplive.acquisition.recording import Recording
from nvplive.errors import NvpLiveError

from .export import BackgroundMovieWriter, open_movie
from .volume_view import VolumeView


class MovieExport(QtCore.QObject):
    """Renders every stored volume of a recording in the 3D view and writes a movie.

    A thread reads the volumes ahead (bounded queue); a GUI timer renders one per
    tick and hands the picture to a :class:`BackgroundMovieWriter`, so the window
    stays responsive.
    """

    #: ``(path or None, message, failed)``: written, cancelled (no path, not failed) or failed (message).
    finished = QtCore.Signal(object, str, bool)

    def __init__(self, view: VolumeView, recording: Path, path: Path, fps: float, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self.view = view
        self.recording = Path(recording)
        self.path = Path(path)
        self.fps = float(fps)
        self.done = 0
        self.total = 0
        self._queue: queue.Queue = queue.Queue(maxsize=3)
        self._cancel = threading.Event()
        self._writer: BackgroundMovieWriter | None = None
        self._meta = None
        with Recording.open(self.recording) as rec:
            self.timepoints = list(rec.volume_timepoints)
            self._meta = rec.meta
        if not self.timepoints:
            raise NvpLiveError(f"{self.recording} has no reconstructed volumes to make a movie of.")
        self.total = len(self.timepoints)
        self._writer = BackgroundMovieWriter(open_movie(self.path, self.fps))
        self._reader = threading.Thread(target=self._read, name="nvplive-movie-read", daemon=True)
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(5)
        self._timer.timeout.connect(self._step)

    def start(self) -> None:
        """Start reading and rendering (``finished`` tells when it ends)."""
        self._reader.start()
        self._timer.start()

    def cancel(self) -> None:
        """End at the next tick (``finished`` with no path, not failed)."""
        self._cancel.set()

    def _read(self) -> None:
        try:
            with Recording.open(self.recording) as rec:
                for t in self.timepoints:
                    if self._cancel.is_set():
                        break
                    self._put((t, rec.volume(t)))
        except Exception as exc:
            self._put(("error", str(exc)))
        self._put(None)

    def _put(self, item) -> None:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _step(self) -> None:
        if self._cancel.is_set():
            self._end(None, "Movie export cancelled.", failed=False)
            return
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return
        if item is None:
            self._end(self.path, "", failed=False)
            return
        t, dn = item
        if t == "error":
            self._end(None, f"Reading {self.recording} failed: {dn}")
            return
        view = self.view
        meta = self._meta
        view.set_volume(dn, meta.geometry.voxel_um_zyx, meta.optics.n_medium)
        if self.done == 0:
            view.set_clim(*view.clim)  # one colour scale for the whole movie
        try:
            self._writer.append(view.snapshot())
        except Exception as exc:
            self._end(None, f"Writing {self.path} failed: {exc}")
            return
        self.done += 1

    def _end(self, path: Path | None, message: str, *, failed: bool = True) -> None:
        self._timer.stop()
        self._cancel.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as exc:
                path, message, failed = None, f"Writing {self.path} failed: {exc}", True
        self.view.set_auto_clim(True)
        self.finished.emit(path, message, failed)
