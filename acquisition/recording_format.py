"""The recording format's names, metadata and ``recording.json`` document (docs/format.md).

File names and format version, :class:`CameraSettings` and :class:`RecordingMeta`, the
JSON helpers (finite numbers only, atomic writes), the parsing and validation of
``recording.json`` plus its journal into the state a writer or reader starts from, and the
OME-XML of each TIFF (:mod:`.ome`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nvplive import __version__
from nvplive.errors import GeometryError, RecordingError
from nvplive.recon.optics import Optics, VolumeGeometry, full_scale

from .ome import ome_xml
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
#: The live session's log, for people (docs/format.md, "Layout"; not read back).
LOG_NAME = "nvplive.log"

#: ImageDescription of a TIFF's first page until the OME-XML replaces it on close.
_PLACEHOLDER = b"nvp-live recording in progress or interrupted: recording.json lists the complete pages"
_REPR_LIMIT = 60


# --------------------------------------------------------------------------- helpers


def require_recording_folder(root: Path) -> None:
    """Refuse a path that is not a recording folder, in one sentence saying what it is, before
    anything (a lock file included) is written there.

    Raises:
        RecordingError: ``root`` does not exist ("no such recording folder"), is a file or
            something else, or is a folder without recording.json (a recording is a folder
            ``NAME.fdt`` holding recording.json; a new one is built elsewhere and moved in
            whole, so a folder without it is none).
    """
    if root.is_dir():
        try:
            holds_json = (root / JSON_NAME).is_file()
        except OSError as exc:
            raise RecordingError(f"{root}: cannot be read ({exc.strerror or exc}).") from None
        if not holds_json:
            raise RecordingError(f"{root / JSON_NAME}: file is missing; {root} is not an nvp-live recording.")
        return
    if root.exists():
        raise RecordingError(
            f"{root}: not a recording folder (a recording is a folder NAME{SUFFIX} holding {JSON_NAME}; "
            "a bead z-stack .tif is calibrated with nvplive calibrate)."
        )
    raise RecordingError(f"{root}: no such recording folder.")


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


def atomic_write_json(path: Path, doc: dict, durable: bool) -> None:
    """Replace ``path`` by ``doc`` so that a crash leaves either the old or the new file
    (``durable``: the file and its folder flushed to disk before it returns)."""
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
        return full_scale(self.bit_depth)

    def to_dict(self) -> dict:
        """The camera section of ``recording.json``."""
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
        bead_diameter_um: the fluorescent beads' diameter (µm) as their supplier states
            it; 0: point sources (recordings written before it existed read as 0).
            The reconstruction renders each bead as a uniform sphere of it.
    """

    optics: Optics
    geometry: VolumeGeometry
    camera: CameraSettings
    sources_um_xyz: Sequence[Sequence[float]]
    extra: dict = field(default_factory=dict)
    refined_sources_um_xyz: Sequence[Sequence[float]] | None = None
    instrument: dict | None = None
    bead_diameter_um: float = 0.0

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
        bead = _finite_float(self.bead_diameter_um)
        if bead is None or bead < 0:
            raise RecordingError(
                f"RecordingMeta: bead_diameter_um must be a finite number ≥ 0 µm, got {_show(self.bead_diameter_um)}."
            )
        object.__setattr__(self, "bead_diameter_um", bead)
        problem = _camera_mismatch(self.camera, self.geometry)
        if problem:
            raise RecordingError(f"RecordingMeta: {problem}.")

    @property
    def n_views(self) -> int:
        """Views (sources) per timepoint."""
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
        **({} if meta.bead_diameter_um == 0 else {"bead_diameter_um": meta.bead_diameter_um}),
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
        bead_diameter_um=header.bead_diameter_um,
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
        meta = replace(meta, refined_sources_um_xyz=refined)
    return _State(meta, created, closed, journal_present, timepoints, volumes, ground_truth, volumes_file)


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
