"""The recording's TIFF page plumbing: append-only page stacks, installing the OME-XML
description with one pointer update, and reading pages back (docs/format.md, crash safety).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from nvplive.errors import RecordingError

from .log_filter import log_filter
from .recording_format import _PLACEHOLDER, JSON_NAME


class _PageStack:
    """An append-only BigTIFF of equally shaped pages, crash-consistent page by page."""

    def __init__(self, path: Path, durable: bool) -> None:
        self.path = path
        self.durable = durable
        self.pages = 0
        self._fh: Any = None
        self._tiff: tifffile.TiffWriter | None = None

    def append(self, pages: np.ndarray) -> None:
        """Write ``pages`` [N, Y, X] and flush them to the operating system (fsync if durable)."""
        try:
            if self._tiff is None:
                self._fh = open(self.path, "x+b")
                self._tiff = tifffile.TiffWriter(self._fh, bigtiff=True, byteorder="<", ome=False)
            for page in pages:
                extra = {"description": _PLACEHOLDER} if self.pages == 0 else {}
                self._tiff.write(
                    page, photometric="minisblack", metadata=None, software=False, contiguous=False, **extra
                )
                self.pages += 1
            self._fh.flush()
            if self.durable:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot write ({exc.strerror or exc}).") from None

    def finish(self, ome_xml: bytes | None) -> None:
        """Close the file; then install ``ome_xml`` as the first page's ImageDescription."""
        if self._tiff is None:
            return
        tiff, fh = self._tiff, self._fh
        self._tiff = self._fh = None
        try:
            tiff.close()
            fh.flush()
            if self.durable:
                os.fsync(fh.fileno())
        finally:
            fh.close()
        if ome_xml is not None:
            _install_description(self.path, ome_xml, self.durable)

    def abandon(self) -> None:
        """Close the file handle without finishing (after a write error)."""
        fh = self._fh
        self._tiff = self._fh = None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass


def _install_description(path: Path, text: bytes, durable: bool) -> None:
    """Point the first page's ImageDescription at ``text``, crash-safely.

    The new value is appended and synced first; then one 16-byte write (count +
    offset of the BigTIFF tag entry) switches to it. Interrupted before that write,
    the file keeps its previous, valid description.
    """
    with tifffile.TiffFile(path, is_ome=False) as tif:
        if not tif.is_bigtiff or tif.byteorder != "<":
            raise RecordingError(f"{path}: expected a little-endian BigTIFF written by nvp-live.")
        tag = tif.pages.first.tags.get(270)
        if tag is None:
            raise RecordingError(f"{path}: the first page has no ImageDescription to hold the OME-XML.")
        entry = tag.offset
    value = text + b"\x00"
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end % 2:
            f.write(b"\x00")
            end += 1
        f.write(value)
        f.flush()
        if durable:
            os.fsync(f.fileno())
        f.seek(entry + 4)
        f.write(struct.pack("<QQ", len(value), end))
        f.flush()
        if durable:
            os.fsync(f.fileno())


def _quiet_tifffile() -> contextlib.AbstractContextManager:
    """Silence tifffile's log lines (warnings and errors) while it parses our pages: damage is
    reported as a RecordingError (or, for a damaged OME-XML tail, recovered), not as log lines
    before the one-sentence message."""
    return log_filter("tifffile", lambda record: False)


class _PageReader:
    """Random access to the first ``n_pages`` pages of one of the recording's TIFFs."""

    def __init__(self, path: Path, n_pages: int, page_shape: tuple[int, int], dtype: np.dtype,
                 ome_sizes: dict[str, int] | None) -> None:
        self.path = path
        self.n_pages = n_pages
        self.page_shape = page_shape
        self.dtype = np.dtype(dtype)
        self._lock = threading.Lock()
        self._tif: tifffile.TiffFile | None = None
        #: The OME-XML at the file's end (pointed to by the first page) is unreadable: damaged tail.
        self.tail_damaged = False
        if n_pages == 0:
            return
        if not path.is_file():
            raise RecordingError(f"{path}: file is missing, but {JSON_NAME} lists {n_pages} pages in it.")
        try:
            with _quiet_tifffile():
                self._tif = tifffile.TiffFile(path, is_ome=False)
                self._tif.pages.cache = False
                self._size = path.stat().st_size
                first = self._page(0)
                self._check_page(first, 0)
                self._check_page(self._page(n_pages - 1), n_pages - 1)
                # recording.json, not the OME-XML, says what the pages are: a description that cannot be
                # read (its bytes cut from the end of the file) loses only metadata; recover_recording rewrites it.
                description = first.description if first.tags.get(270) is not None else None
        except RecordingError:
            self.close()
            raise
        except Exception as exc:  # tifffile raises many types on corrupted files
            self.close()
            raise RecordingError(f"{path}: is not a readable TIFF ({type(exc).__name__}: {exc}).") from None
        if description is None:
            self.tail_damaged = True
        elif ome_sizes is not None and description.lstrip().startswith("<"):
            try:
                self._check_ome(description, ome_sizes)
            except RecordingError:
                self.close()
                raise

    def _page(self, index: int) -> Any:
        assert self._tif is not None
        try:
            return self._tif.pages[index]
        except IndexError:
            pages = len(self._tif.pages)
            raise RecordingError(
                f"{self.path}: holds only {pages} readable pages, but {JSON_NAME} needs {self.n_pages} "
                "(truncated or damaged file)."
            ) from None

    def _check_page(self, page: Any, index: int) -> None:
        if not isinstance(page, tifffile.TiffPage):
            raise RecordingError(f"{self.path}: page {index} is not a regular TIFF page.")
        dtype = page.dtype
        if tuple(page.shape) != self.page_shape or dtype is None or np.dtype(dtype).str[1:] != self.dtype.str[1:]:
            raise RecordingError(
                f"{self.path}: page {index} is {dtype} {tuple(page.shape)}, but {JSON_NAME} expects "
                f"{self.dtype} {self.page_shape}."
            )
        offsets, counts = page.dataoffsets, page.databytecounts
        end = max((o + c for o, c in zip(offsets, counts)), default=0)
        if not offsets or end > self._size or sum(counts) < 1:
            raise RecordingError(
                f"{self.path}: the pixels of page {index} extend beyond the end of the file (truncated file)."
            )

    def _check_ome(self, text: str, sizes: dict[str, int]) -> None:
        """The OME-XML, when present, must describe the pages recording.json lists."""
        from ome_types import from_xml  # imports in ~1 s: only when a recording is opened

        try:
            with warnings.catch_warnings():  # ome_types warns about values it repairs; a bad one raises
                warnings.simplefilter("ignore")
                images = from_xml(text).images
            if not images:
                raise ValueError("no Image element")
            pixels = images[0].pixels
            order = pixels.dimension_order.value
            found = {ax: int(getattr(pixels, f"size_{ax.lower()}")) for ax in "XYZCT"}
            pixel_type = pixels.type.value
        except (ValueError, SyntaxError):  # not OME-XML (ElementTree's ParseError is a SyntaxError)
            self.tail_damaged = True
            return
        expected = {"X": self.page_shape[1], "Y": self.page_shape[0], "Z": 1, "C": 1, "T": 1, **sizes}
        stacked = [ax for ax in order if ax in "ZCT" and expected[ax] > 1]
        wanted = [ax for ax in "ZCT" if expected[ax] > 1]
        if (
            found != expected
            or sorted(order) != sorted("XYZCT")
            or stacked != wanted
            or pixel_type != {"uint16": "uint16", "float32": "float"}[self.dtype.name]
        ):
            shown = ", ".join(f"Size{ax}={found[ax]}" for ax in "TCZYX")
            want = ", ".join(f"Size{ax}={expected[ax]}" for ax in "TCZYX")
            raise RecordingError(
                f"{self.path}: OME metadata ({order} {pixel_type}, {shown}) does not match {JSON_NAME} "
                f"(pages in order {''.join(wanted[::-1]) or '-'}, {want})."
            )

    def verify(self) -> None:
        """Check every page's IFD, shape, dtype and pixel extent (no pixels read)."""
        with self._lock, _quiet_tifffile():
            for index in range(self.n_pages):
                if self._tif is None:
                    raise RecordingError(f"{self.path}: the recording is closed.")
                try:
                    self._check_page(self._page(index), index)
                except RecordingError:
                    raise
                except Exception as exc:
                    raise RecordingError(
                        f"{self.path}: page {index} cannot be read ({type(exc).__name__}: {exc})."
                    ) from None

    def read(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, *self.page_shape), self.dtype)
        with self._lock, _quiet_tifffile():
            if self._tif is None:
                raise RecordingError(f"{self.path}: the recording is closed.")
            for j in range(count):
                index = start + j
                try:
                    page = self._page(index)
                    self._check_page(page, index)
                    out[j] = page.asarray()
                except RecordingError:
                    raise
                except Exception as exc:
                    raise RecordingError(
                        f"{self.path}: page {index} cannot be read ({type(exc).__name__}: {exc})."
                    ) from None
        return out

    def close(self) -> None:
        if self._tif is not None:
            try:
                self._tif.close()
            finally:
                self._tif = None
