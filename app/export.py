"""Movies of the 3D view (MP4, animated PNG or PNG frames); Δn stacks are exported by
:func:`nvplive.acquisition.ome.export_dn_stack`.

No Qt here: the main window renders, these functions write files (and may run in
a worker thread).

Movies: ``.mp4`` needs the optional ``imageio`` + ``imageio-ffmpeg`` packages;
``.png`` writes an animated PNG (APNG, plays in web browsers and most viewers;
viewers without APNG support show its first frame) through Pillow; any other name
is a folder of numbered PNG frames (Pillow).
"""

from __future__ import annotations

import importlib.util
import queue
import threading
from pathlib import Path

import numpy as np
from PIL import Image


# ---------------------------------------------------------------------------------------
# Movies
# ---------------------------------------------------------------------------------------
def mp4_available() -> bool:
    """True when ``imageio`` with its ffmpeg plugin can write MP4 files."""
    return importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None


def _rgb(frame: np.ndarray) -> np.ndarray:
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"a movie frame must be [H, W, 3|4], got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def _fit(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop or pad (black) a frame to ``shape`` (the first frame's size)."""
    h, w = shape
    if frame.shape[:2] == (h, w):
        return frame
    out = np.zeros((h, w, frame.shape[2]), frame.dtype)
    hh, ww = min(h, frame.shape[0]), min(w, frame.shape[1])
    out[:hh, :ww] = frame[:hh, :ww]
    return out


class MovieWriter:
    """Base class: ``append(frame)`` RGB(A) uint8 frames, then ``close()``."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.frames = 0
        self._shape: tuple[int, int] | None = None

    def append(self, frame: np.ndarray) -> None:
        rgb = _rgb(frame)
        if self._shape is None:
            self._shape = rgb.shape[:2]
        self._write(_fit(rgb, self._shape))
        self.frames += 1

    def _write(self, rgb: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class APNGWriter(MovieWriter):
    """Animated PNG (RGB, loops forever) through Pillow.

    Pillow writes an APNG in one call, so the frames are kept (as RGB images, about
    2 MB per 1000 × 700 frame) until :meth:`close`; identical consecutive frames become
    one longer frame.
    """

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path, fps)
        self._images: list[Image.Image] = []

    def _write(self, rgb: np.ndarray) -> None:
        self._images.append(Image.fromarray(rgb, "RGB"))

    def close(self) -> None:
        images, self._images = self._images, []
        if not images:
            return
        duration_ms = max(1, round(1000 / max(self.fps, 1e-3)))
        images[0].save(self.path, format="PNG", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


class PNGFramesWriter(MovieWriter):
    """A folder of numbered PNG frames (``frame_00000.png`` …)."""

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path, fps)
        self.path.mkdir(parents=True, exist_ok=True)

    def _write(self, rgb: np.ndarray) -> None:
        Image.fromarray(rgb, "RGB").save(self.path / f"frame_{self.frames:05d}.png")


class MP4Writer(MovieWriter):
    """H.264 MP4 through imageio-ffmpeg (optional dependency)."""

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path, fps)
        import imageio.v2 as imageio

        self._writer = imageio.get_writer(str(self.path), fps=self.fps, codec="libx264", quality=8, macro_block_size=2)

    def _write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        self._writer.append_data(rgb[: h - h % 2, : w - w % 2])

    def close(self) -> None:
        self._writer.close()


def open_movie(path: str | Path, fps: float) -> MovieWriter:
    """A movie writer chosen by the name: ``.mp4``, ``.png`` (animated) or a folder of PNG frames."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        if not mp4_available():
            raise RuntimeError("MP4 export needs the imageio and imageio-ffmpeg packages; save as .png (animated) instead.")
        return MP4Writer(path, fps)
    if suffix in (".png", ".apng"):
        return APNGWriter(path, fps)
    return PNGFramesWriter(path, fps)


class BackgroundMovieWriter:
    """Encodes and writes movie frames in a thread so the GUI thread only renders."""

    def __init__(self, writer: MovieWriter, max_pending: int = 4) -> None:
        self.writer = writer
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="nvplive-movie", daemon=True)
        self._thread.start()

    def append(self, frame: np.ndarray, timeout: float = 30.0) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing {self.writer.path} failed: {self.error}") from self.error
        self._queue.put(np.array(frame, copy=True), timeout=timeout)

    def close(self, timeout: float = 60.0) -> Path:
        self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"writing {self.writer.path} failed: {self.error}") from self.error
        return self.writer.path

    def _run(self) -> None:
        try:
            while True:
                frame = self._queue.get()
                if frame is None:
                    break
                if self.error is None:
                    self.writer.append(frame)
        except BaseException as exc:
            self.error = exc
            while self._queue.get() is not None:  # keep accepting until the sentinel
                pass
        finally:
            try:
                self.writer.close()
            except BaseException as exc:
                self.error = self.error or exc
