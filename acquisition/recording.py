"""Recording format, version 1 (docs/format.md): writer, reader and crash recovery.

A recording is a folder ``NAME.fdt/``::

    recording.json        optics, camera, volume, views, per-timepoint timestamps and
                          frame metadata, which stored volume belongs to which timepoint
    frames.ome.tif        uint16 camera frames, axes TVYX (OME: T, C = view, Y, X)
    volumes.ome.tif       float32 Δn, axes TZYX, one Z-stack per reconstructed timepoint
    ground_truth.ome.tif  float32 Δn, axes TZYX, simulated recordings only
    journal.jsonl         only while writing / after an interruption (see below)

Crash safety. The TIFFs are append-only BigTIFFs written one page per frame (or per
z-slice); every page is complete (IFD and pixels) when its ``write`` returns.
After the last view of a timepoint (or after a volume) the TIFF is flushed and
fsync'ed, and only then is one line appended (and fsync'ed) to ``journal.jsonl``.
``recording.json`` is written atomically (temporary file, fsync, ``os.replace``) when
the writer starts and when it closes; on a clean close the journal is merged into it
and deleted, and the OME-XML (axes, physical sizes) is installed in each TIFF with a
single 16-byte pointer update after the XML itself is on disk. A reader therefore
sees, at any moment, ``recording.json`` + the journal's complete lines, and every
page they mention is on disk. Pages beyond that (an interrupted timepoint) and an
incomplete last journal line are ignored. :func:`recover_recording` turns an
interrupted recording into a cleanly closed one.

One writer. Every writer holds the recording's lock (``.lock``, see
:mod:`.recording_lock`) while it writes; readers never lock and never change a
recording. An offline reconstruction writes its volumes to ``volumes.ome.tif.new``
and replaces the old volumes and their labels in one commit when the run completes
(:meth:`RecordingWriter.replace_volumes`; docs/format.md, "Replacing the volumes").
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import shutil
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tifffile

from nvplive import __version__
from nvplive.errors import GeometryError, RecordingError
from nvplive.recon.optics import Optics, VolumeGeometry

from .ome import ome_xml
from .recording_lock import RecordingLock, lock_holder
from .schema import CameraSection, GroundTruthEntry, InstrumentSection, RecordingHeader, TimepointEntry, VolumeEntry, validate

FORMAT_NAME = "nvp-live-recording"
FORMAT_VERSION = 1
SUFFIX = ".fdt"
JSON_NAME = "recording.json"
JOURNAL_NAME = "journal.jsonl"
FRAMES_NAME = "frames.ome.tif"
VOLUMES_NAME = "volumes.ome.tif"
GROUND_TRUTH_NAME = "ground_truth.ome.tif"
#: New volumes of an offline reconstruction until the run completes (docs/format.md, "Replacing the volumes").
VOLUMES_PENDING_NAME = "volumes.ome.tif.new"

#: ImageDescription of a TIFF's first page until the OME-XML replaces it on close.
_PLACEHOLDER = b"nvp-live recording in progress or interrupted: recording.json lists the complete pages"
_REPR_LIMIT = 60


# --------------------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    """Short repr of a (possibly huge) value for error messages."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _finite_float(value: Any) -> float | None:
    """``float(value)`` if value is a finite real number (not bool), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def _json_normalise(value: Any, what: str) -> Any:
    """The JSON round trip of ``value`` (numpy scalars/arrays allowed); RecordingError if impossible."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise RecordingError(f"{what} must be JSON-serialisable with finite numbers ({exc}).") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _loads(text: str) -> Any:
    """Strict JSON: NaN/Infinity tokens are refused."""
    return json.loads(text, parse_constant=_reject_constant)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, doc: dict, durable: bool) -> None:
    """Replace ``path`` by ``doc`` so that a crash leaves either the old or the new file."""
    text = _format_document(doc)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def _format_document(doc: dict) -> str:
    """JSON with one line per top-level field and per list item (readable, compact)."""

    def dumps(value: Any) -> str:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)

    lines = []
    for key, value in doc.items():
        if isinstance(value, list) and value:
            items = ",\n".join(f"  {dumps(item)}" for item in value)
            lines.append(f" {dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {dumps(key)}: {dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _sources_tuple(value: Any, n_views: int | None, what: str) -> tuple[tuple[float, float, float], ...]:
    """Validate a list of [x, y, z] source positions (µm)."""
    try:
        rows = [list(row) for row in value]
    except TypeError:
        raise RecordingError(f"{what} must be a list of [x, y, z] positions in µm, got {_show(value)}.") from None
    if not rows or (n_views is not None and len(rows) != n_views):
        expected = "at least one view" if n_views is None else f"{n_views} views"
        raise RecordingError(f"{what} must hold {expected}, got {len(rows)}.")
    out = []
    for i, row in enumerate(rows):
        xyz = [_finite_float(c) for c in row]
        if len(xyz) != 3 or any(c is None for c in xyz):
            raise RecordingError(f"{what}[{i}] must be three finite numbers [x, y, z] in µm, got {_show(row)}.")
        out.append((xyz[0], xyz[1], xyz[2]))
    return tuple(out)  # type: ignore[return-value]


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class CameraSettings:
    """Camera as seen from the sample.

    Attributes:
        pixel_size_um: camera pixel size in sample space (µm); equals
            ``camera_binning × dx`` of the volume geometry.
        offset: dark level added to every pixel (counts).
        gain: counts per detected photon.
        read_noise: standard deviation of the read noise (counts).
        bit_depth: significant bits per pixel as the camera reported them; counts
            reach at most ``2**bit_depth − 1`` (saturation). Recordings written
            before it existed read as 16.
    """

    pixel_size_um: float
    offset: float = 100.0
    gain: float = 1.0
    read_noise: float = 2.0
    bit_depth: int = 16

    def __post_init__(self) -> None:
        values = {k: int(v) if _is_int(v) else v for k, v in asdict(self).items()}
        checked = validate(CameraSection, values, "CameraSettings", RecordingError)
        for name, value in checked.model_dump().items():
            object.__setattr__(self, name, value)

    @property
    def saturation_level(self) -> int:
        """The largest count the camera can report (``2**bit_depth − 1``)."""
        return 2**self.bit_depth - 1

    def to_dict(self) -> dict:
        return {
            "pixel_size_um": self.pixel_size_um,
            "offset": self.offset,
            "gain": self.gain,
            "read_noise": self.read_noise,
            "bit_depth": self.bit_depth,
        }

    @classmethod
    def from_dict(cls, values: dict) -> CameraSettings:
        """Build from a ``to_dict()`` dictionary; RecordingError on missing/unknown fields."""
        return cls(**validate(CameraSection, values, "CameraSettings", RecordingError).model_dump())


@dataclass(frozen=True)
class RecordingMeta:
    """Everything about a recording that is fixed when acquisition starts.

    Attributes:
        optics: microscope optics.
        geometry: reconstructed volume and camera sampling; frames are
            ``geometry.camera_shape_yx`` pixels.
        camera: camera settings (``pixel_size_um`` must equal ``geometry.camera_pixel_um``).
        sources_um_xyz: nominal point-source position [x, y, z] (µm) of each view;
            the number of views is its length.
        extra: free JSON-serialisable information (phantom name, seed, ...).
        refined_sources_um_xyz: source positions refined by self-calibration, or None.
        instrument: what the microscope reported when the acquisition started
            (pixel size, binning, bit depth, ROI, exposure, trigger mode and the
            values where the instrument won over the settings), or None.
    """

    optics: Optics
    geometry: VolumeGeometry
    camera: CameraSettings
    sources_um_xyz: Sequence[Sequence[float]]
    extra: dict = field(default_factory=dict)
    refined_sources_um_xyz: Sequence[Sequence[float]] | None = None
    instrument: dict | None = None

    def __post_init__(self) -> None:
        for name, cls in (("optics", Optics), ("geometry", VolumeGeometry), ("camera", CameraSettings)):
            if not isinstance(getattr(self, name), cls):
                raise RecordingError(
                    f"RecordingMeta: {name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}."
                )
        if self.geometry.focal_plane_z_um is None:  # stored resolved, as VolumeGeometry.to_dict writes it
            object.__setattr__(self, "geometry", replace(self.geometry, focal_plane_z_um=self.geometry.focal_z_um))
        sources = _sources_tuple(self.sources_um_xyz, None, "RecordingMeta: sources_um_xyz")
        object.__setattr__(self, "sources_um_xyz", sources)
        if self.refined_sources_um_xyz is not None:
            refined = _sources_tuple(
                self.refined_sources_um_xyz, len(sources), "RecordingMeta: refined_sources_um_xyz"
            )
            object.__setattr__(self, "refined_sources_um_xyz", refined)
        if not isinstance(self.extra, dict):
            raise RecordingError(f"RecordingMeta: extra must be a dictionary, got {_show(self.extra)}.")
        object.__setattr__(self, "extra", _json_normalise(self.extra, "RecordingMeta: extra"))
        if self.instrument is not None:  # written as the reader will check it
            instrument = _json_normalise(self.instrument, "RecordingMeta: instrument")
            checked = validate(InstrumentSection, instrument, "RecordingMeta", RecordingError, prefix="instrument")
            object.__setattr__(self, "instrument", checked.model_dump())
        problem = _camera_mismatch(self.camera, self.geometry)
        if problem:
            raise RecordingError(f"RecordingMeta: {problem}.")

    @property
    def n_views(self) -> int:
        return len(self.sources_um_xyz)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Camera frame size (Y, X) in pixels."""
        return self.geometry.camera_shape_yx

    @property
    def effective_sources_um_xyz(self) -> tuple[tuple[float, float, float], ...]:
        """Refined source positions when available, else the nominal ones (µm)."""
        return self.refined_sources_um_xyz or self.sources_um_xyz  # type: ignore[return-value]


def _camera_mismatch(camera: CameraSettings, geometry: VolumeGeometry) -> str | None:
    try:
        expected = geometry.camera_pixel_um
    except GeometryError as exc:
        return str(exc).rstrip(".")
    if not math.isclose(camera.pixel_size_um, expected, rel_tol=1e-6):
        return (
            f"camera pixel_size_um {camera.pixel_size_um} µm must equal camera_binning × dx = {expected} µm "
            "of the volume geometry"
        )
    return None


# --------------------------------------------------------------------------- TIFF stacks


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


def _ome_xml(*, description: dict, **image: Any) -> bytes:
    """OME-XML of one of the recording's TIFFs (:func:`~nvplive.acquisition.ome.ome_xml`; the description is JSON)."""
    return ome_xml(description=json.dumps(description, allow_nan=False), **image)


# --------------------------------------------------------------------------- document


def _document(
    meta: RecordingMeta,
    *,
    created: str,
    closed: bool,
    timepoints: list[dict],
    volumes: list[dict],
    ground_truth: list[dict],
) -> dict:
    views = []
    for i, source in enumerate(meta.sources_um_xyz):
        view: dict[str, Any] = {"source_um_xyz": list(source)}
        if meta.refined_sources_um_xyz is not None:
            view["refined_source_um_xyz"] = list(meta.refined_sources_um_xyz[i])
        views.append(view)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "software": f"nvp-live {__version__}",
        "created": created,
        "closed": closed,
        "optics": meta.optics.to_dict(),
        "camera": meta.camera.to_dict(),
        "volume": meta.geometry.to_dict(),
        "views": views,
        "timepoints": timepoints,
        "volumes": volumes,
        "ground_truth": ground_truth,
        "extra": meta.extra,
        **({} if meta.instrument is None else {"instrument": meta.instrument}),
    }


class _Checker:
    """Validation of one JSON source (recording.json or a journal line) with clear messages."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field_name: str, expected: str, got: Any = ..., *, missing: bool = False) -> RecordingError:
        if missing:
            return RecordingError(f"{self.where}: field \"{field_name}\" is missing; expected {expected}.")
        return RecordingError(f"{self.where}: field \"{field_name}\" must be {expected}, got {_show(got)}.")

    def section(self, doc: dict, key: str, prefix: str = "") -> Any:
        name = prefix + key
        if key not in doc:
            raise self.fail(name, "to be present", missing=True)
        return doc[key]

    def list_(self, doc: dict, key: str, prefix: str = "") -> list:
        value = self.section(doc, key, prefix)
        if not isinstance(value, list):
            raise self.fail(prefix + key, "a list", value)
        return value


def _parse_meta(doc: dict, check: _Checker) -> tuple[RecordingMeta, str, bool]:
    """Validate the fixed sections of recording.json (schema: :class:`.schema.RecordingHeader`)."""
    fmt = check.section(doc, "format")
    if fmt != FORMAT_NAME:
        raise check.fail("format", f"\"{FORMAT_NAME}\"", fmt)
    version = check.section(doc, "version")
    if not _is_int(version):
        raise check.fail("version", f"the integer {FORMAT_VERSION}", version)
    if version != FORMAT_VERSION:
        newer = " (written by a newer nvp-live; please update)" if version > FORMAT_VERSION else ""
        raise RecordingError(
            f"{check.where}: format version {version} is not supported, this nvp-live reads version "
            f"{FORMAT_VERSION}{newer}."
        )
    header = validate(RecordingHeader, doc, check.where, RecordingError)
    geometry, camera = header.volume.geometry(), CameraSettings(**header.camera.model_dump())
    problem = _camera_mismatch(camera, geometry)
    if problem:
        raise RecordingError(f"{check.where}: field \"camera.pixel_size_um\" is inconsistent: {problem}.")
    refined = [v.refined_source_um_xyz for v in header.views if v.refined_source_um_xyz is not None]
    meta = RecordingMeta(
        optics=header.optics.optics(),
        geometry=geometry,
        camera=camera,
        sources_um_xyz=[v.source_um_xyz for v in header.views],
        extra=header.extra,
        refined_sources_um_xyz=refined or None,
        instrument=None if header.instrument is None else header.instrument.model_dump(),
    )
    return meta, header.created, header.closed


def _parse_timepoint(entry: Any, expected_index: int, n_views: int, check: _Checker, name: str) -> dict:
    parsed = validate(TimepointEntry, entry, check.where, RecordingError, prefix=name)
    if parsed.index != expected_index:
        raise check.fail(f"{name}.index", f"{expected_index} (timepoints are consecutive from 0)", parsed.index)
    if len(parsed.timestamps_s) != n_views:
        raise check.fail(f"{name}.timestamps_s", f"a list of {n_views} finite times in s (one per view)",
                         parsed.timestamps_s)
    if len(parsed.frames) != n_views:
        raise check.fail(f"{name}.frames", f"a list of {n_views} metadata objects (one per view)", parsed.frames)
    return {"index": parsed.index, "timestamps_s": parsed.timestamps_s, "frames": entry["frames"]}


def _parse_volume(entry: Any, check: _Checker, name: str, with_method: bool) -> dict:
    model = VolumeEntry if with_method else GroundTruthEntry
    return validate(model, entry, check.where, RecordingError, prefix=name).model_dump()


@dataclass
class _State:
    """The validated content of recording.json plus the journal."""

    meta: RecordingMeta
    created: str
    closed: bool
    journal_present: bool
    timepoints: list[dict]
    volumes: list[dict]
    ground_truth: list[dict]
    #: the file holding ``volumes``: VOLUMES_NAME, or VOLUMES_PENDING_NAME after a replacement's commit point
    volumes_file: str = VOLUMES_NAME


def _load_state(root: Path) -> _State:
    json_path = root / JSON_NAME
    check = _Checker(str(json_path))
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordingError(f"{json_path}: file is missing; {root} is not an nvp-live recording.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{json_path}: cannot be read ({exc}).") from None
    try:
        doc = _loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecordingError(f"{json_path}: is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise RecordingError(f"{json_path}: expected a JSON object at the top level, got {type(doc).__name__}.")
    meta, created, closed = _parse_meta(doc, check)
    n_views = meta.n_views

    timepoints = [
        _parse_timepoint(e, i, n_views, check, f"timepoints[{i}]") for i, e in enumerate(check.list_(doc, "timepoints"))
    ]
    volumes = [_parse_volume(e, check, f"volumes[{i}]", True) for i, e in enumerate(check.list_(doc, "volumes"))]
    ground_truth = [
        _parse_volume(e, check, f"ground_truth[{i}]", False) for i, e in enumerate(check.list_(doc, "ground_truth"))
    ]
    origins = {"volumes": [str(json_path)] * len(volumes), "ground_truth": [str(json_path)] * len(ground_truth)}
    refined = meta.refined_sources_um_xyz

    journal_path = root / JOURNAL_NAME
    journal_present = journal_path.exists()
    volumes_file = VOLUMES_NAME
    if journal_present:
        try:
            raw = journal_path.read_bytes()
        except OSError as exc:
            raise RecordingError(f"{journal_path}: cannot be read ({exc}).") from None
        lines = raw.split(b"\n")[:-1]  # the part after the last newline is an interrupted write
        for number, line in enumerate(lines, start=1):
            where = f"{journal_path} line {number}"
            jcheck = _Checker(where)
            try:
                record = _loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                raise RecordingError(f"{where}: is not valid JSON ({exc}).") from None
            if not isinstance(record, dict):
                raise RecordingError(f"{where}: expected a JSON object, got {type(record).__name__}.")
            op = record.get("op")
            if op == "timepoint":
                entry = jcheck.section(record, "entry")
                index = entry.get("index") if isinstance(entry, dict) else None
                if _is_int(index) and index < len(timepoints):
                    continue  # already merged into recording.json
                timepoints.append(_parse_timepoint(entry, len(timepoints), n_views, jcheck, "entry"))
            elif op in ("volume", "ground_truth"):
                target = volumes if op == "volume" else ground_truth
                index = record.get("index")
                if not _is_int(index) or index > len(target):
                    raise jcheck.fail("index", f"an integer ≤ {len(target)} (stored {op} count)", index)
                if index < len(target):
                    continue
                target.append(_parse_volume(jcheck.section(record, "entry"), jcheck, "entry", op == "volume"))
                origins["volumes" if op == "volume" else "ground_truth"].append(where)
            elif op == "sources":
                refined = _sources_tuple(
                    jcheck.section(record, "refined_source_um_xyz"),
                    n_views,
                    f"{where}: field \"refined_source_um_xyz\"",
                )
            elif op == "replace_volumes":  # a committed replacement (RecordingWriter.replace_volumes)
                entries = jcheck.list_(record, "volumes")
                volumes = [_parse_volume(e, jcheck, f"volumes[{i}]", True) for i, e in enumerate(entries)]
                origins["volumes"] = [where] * len(volumes)
                new_refined = jcheck.section(record, "refined_source_um_xyz")
                if new_refined is not None:
                    refined = _sources_tuple(new_refined, n_views, f"{where}: field \"refined_source_um_xyz\"")
                if (root / VOLUMES_PENDING_NAME).exists():
                    volumes_file = VOLUMES_PENDING_NAME
            else:
                raise jcheck.fail("op", "one of timepoint, volume, ground_truth, sources, replace_volumes", op)

    for key, entries in (("volumes", volumes), ("ground_truth", ground_truth)):
        seen: set[int] = set()
        for i, entry in enumerate(entries):
            t = entry["timepoint"]
            if t >= len(timepoints) or t in seen:
                why = "a duplicate" if t in seen else f"beyond the {len(timepoints)} complete timepoints"
                raise RecordingError(
                    f"{origins[key][i]}: field \"{key}[{i}].timepoint\" = {t} is {why}."
                )
            seen.add(t)

    if refined != meta.refined_sources_um_xyz:
        meta = RecordingMeta(
            optics=meta.optics,
            geometry=meta.geometry,
            camera=meta.camera,
            sources_um_xyz=meta.sources_um_xyz,
            extra=meta.extra,
            refined_sources_um_xyz=refined,
            instrument=meta.instrument,
        )
    return _State(meta, created, closed, journal_present, timepoints, volumes, ground_truth, volumes_file)


# --------------------------------------------------------------------------- writer


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
        try:
            staging.mkdir(parents=True)
            self._lock = RecordingLock(staging).acquire()
            doc = _document(meta, created=self._created, closed=False, timepoints=[], volumes=[], ground_truth=[])
            _atomic_write_json(staging / JSON_NAME, doc, durable)
            os.rename(staging, root)
            self._lock.moved(root)
        except OSError as exc:
            self._lock.release()
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
        if not root.is_dir():
            raise RecordingError(f"{root}: no such recording folder.")
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
        with self._state_lock:
            return tuple(e["timepoint"] for e in self._volumes)

    @property
    def closed(self) -> bool:
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
                for stack in (self._frames, self._volume_stack, self._truth_stack):
                    stack.abandon()
                if self._journal is not None and not self._journal.closed:
                    self._journal.close()
                if self._replacing:
                    (self._root / VOLUMES_PENDING_NAME).unlink(missing_ok=True)
                self._lock.release()

    def abandon(self) -> None:
        """Stop without committing: a :meth:`replace_volumes` writer keeps the old volumes; a live
        writer leaves an interrupted recording (as if killed). Releases the lock. Idempotent."""
        with self._frames_lock, self._volumes_lock, self._truth_lock, self._state_lock:
            if self._closed:
                return
            self._closed = True
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
            _atomic_write_json(self._root / JSON_NAME, doc, self._durable)
        except OSError as exc:
            raise RecordingError(f"{self._root / JSON_NAME}: cannot write ({exc.strerror or exc}).") from None

    def _finish_stacks(self) -> None:
        name = self._root.stem
        self._frames.finish(_frames_ome(name, self._meta, self._timepoints) if self._timepoints else None)
        self._volume_stack.finish(_volumes_ome(name, self._meta, self._volumes) if self._volumes else None)
        self._truth_stack.finish(_truth_ome(name, self._meta, self._ground_truth) if self._ground_truth else None)


def _remove_recording(root: Path) -> None:
    """Delete an existing recording (never anything that does not look like one)."""
    if not root.is_dir() or root.is_symlink():
        raise RecordingError(f"{root}: exists and is not a recording folder; refusing to replace it.")
    if any(root.iterdir()) and not (root / JSON_NAME).is_file():
        raise RecordingError(
            f"{root}: exists and holds no {JSON_NAME}; refusing to delete a folder that is not a recording."
        )
    with RecordingLock(root):  # never delete a recording that a live process is writing
        try:
            shutil.rmtree(root)
        except OSError as exc:
            raise RecordingError(f"{root}: cannot remove the old recording ({exc.strerror or exc}).") from None


def _frames_ome(name: str, meta: RecordingMeta, timepoints: list[dict]) -> bytes:
    n = len(timepoints)
    y, x = meta.frame_shape
    increment = None
    if n > 1:
        span = timepoints[-1]["timestamps_s"][0] - timepoints[0]["timestamps_s"][0]
        increment = span / (n - 1) if span > 0 else None
    pixel = meta.camera.pixel_size_um
    return _ome_xml(
        name=f"{name} frames",
        dtype="uint16",
        shape=(n, meta.n_views, y, x),
        axes="TCYX",
        pixel_um_zyx=(pixel, pixel),
        description={"content": "camera frames", "axes": "TVYX", "note": "OME channel C = view; see recording.json"},
        channel_names=[f"view {v}" for v in range(meta.n_views)],
        time_increment_s=increment,
    )


def _volumes_ome(name: str, meta: RecordingMeta, volumes: list[dict]) -> bytes:
    return _ome_xml(
        name=f"{name} delta_n",
        dtype="float32",
        shape=(len(volumes), *meta.geometry.shape_zyx),
        axes="TZYX",
        pixel_um_zyx=meta.geometry.voxel_um_zyx,
        description={"content": "reconstructed delta_n", "n_medium": meta.optics.n_medium, "volumes": volumes},
    )


def _truth_ome(name: str, meta: RecordingMeta, truth: list[dict]) -> bytes:
    return _ome_xml(
        name=f"{name} ground truth delta_n",
        dtype="float32",
        shape=(len(truth), *meta.geometry.shape_zyx),
        axes="TZYX",
        pixel_um_zyx=meta.geometry.voxel_um_zyx,
        description={
            "content": "ground truth delta_n",
            "n_medium": meta.optics.n_medium,
            "timepoints": [e["timepoint"] for e in truth],
        },
    )


# --------------------------------------------------------------------------- reader


class _DropWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's warnings while it parses our pages: damage is reported as a RecordingError
    (or, for a damaged OME-XML tail, recovered), not as log lines around the one-sentence message."""
    log = logging.getLogger("tifffile")
    drop = _DropWarnings()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


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
        if not root.is_dir():
            raise RecordingError(f"{root}: no such recording folder.")
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
            self._volumes = self._reader(
                state.volumes_file, len(state.volumes) * z, yx, np.float32, {"Z": z, "T": len(state.volumes)}
            )
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
        return cls(path)

    # -- description

    @property
    def path(self) -> Path:
        return self._root

    @property
    def meta(self) -> RecordingMeta:
        return self._state.meta

    @property
    def created(self) -> str:
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
        return self._state.meta.n_views

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Camera frame size (Y, X)."""
        return self._state.meta.frame_shape

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return self._state.meta.geometry.shape_zyx

    @property
    def volume_timepoints(self) -> tuple[int, ...]:
        """Timepoints that have a reconstructed volume, in the order they were stored."""
        return tuple(e["timepoint"] for e in self._state.volumes)

    @property
    def volume_settings(self) -> dict[int, dict]:
        """For each reconstructed timepoint: ``{"method": str, "settings": dict}``."""
        return {e["timepoint"]: {"method": e["method"], "settings": e["settings"]} for e in self._state.volumes}

    @property
    def ground_truth_timepoints(self) -> tuple[int, ...]:
        return tuple(e["timepoint"] for e in self._state.ground_truth)

    @property
    def has_ground_truth(self) -> bool:
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
        """Reconstructed Δn float32 [Z, Y, X] of timepoint ``t``, or None if it was not reconstructed."""
        index = self._volume_index.get(self._check_t(t))
        if index is None:
            return None
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
    if not root.is_dir():
        raise RecordingError(f"{root}: no such recording folder.")
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
        _atomic_write_json(root / JSON_NAME, doc, durable)
        (root / JOURNAL_NAME).unlink(missing_ok=True)
    except OSError as exc:
        raise RecordingError(f"{root}: cannot finish the recovery ({exc.strerror or exc}).") from None
    if durable:
        _fsync_dir(root)
    return True
