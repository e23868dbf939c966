"""The pupil file (``pupil.json``): a calibrated detection pupil, stored and reused.

A calibration (``recon.calibration``) writes it into the recording it calibrated
(``NAME.fdt/pupil.json``, an optional addition to format v1) or to any path
(``nvplive calibrate -o``); ``reconstruct --pupil FILE`` and later timepoints reuse
it. The schema is :class:`acquisition.schema.PupilFile` (docs/format.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from nvplive.errors import RecordingError
from nvplive.recon.optics import Optics
from nvplive.recon.pupil import PupilParameters

from .schema import PupilFile, validate

#: Name of the pupil file inside a recording folder.
PUPIL_FILE = "pupil.json"


def pupil_path(path: str | os.PathLike) -> Path:
    """``path`` itself for a file, ``path/pupil.json`` for a recording folder."""
    p = Path(path)
    return p / PUPIL_FILE if p.suffix == ".fdt" or p.is_dir() else p


def write_pupil(
    path: str | os.PathLike,
    pupil: PupilParameters,
    optics: Optics,
    *,
    calibrated_from: str,
    method: str,
    fitted_noll: tuple[int, ...] = (),
    residual: float | None = None,
    residual_before: float | None = None,
) -> Path:
    """Write ``pupil`` (validated) to ``path`` (a file, or a recording folder's pupil.json), atomically.

    Raises:
        RecordingError: when the document is invalid (e.g. a non-finite coefficient).
    """
    target = pupil_path(path)
    doc = {
        "format": "nvp-live-pupil",
        "version": 1,
        **pupil.to_dict(),
        "optics": optics.to_dict(),
        "calibrated_from": str(calibrated_from),
        "method": method,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fitted_noll": [int(j) for j in fitted_noll],
        "residual": None if residual is None else float(residual),
        "residual_before": None if residual_before is None else float(residual_before),
    }
    validate(PupilFile, doc, target.name, RecordingError)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pupil-", suffix=".json", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_pupil_file(path: str | os.PathLike) -> PupilFile:
    """The validated pupil file at ``path`` (a file or a recording folder).

    Raises:
        RecordingError: missing, unreadable or invalid, in one sentence naming the file.
    """
    target = pupil_path(path)
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordingError(f"{target}: no pupil file there.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordingError(f"{target}: not a readable pupil file ({exc}).") from None
    return validate(PupilFile, data, str(target), RecordingError)


def read_pupil(path: str | os.PathLike) -> PupilParameters:
    """The pupil stored at ``path`` (see :func:`read_pupil_file`)."""
    doc = read_pupil_file(path)
    return PupilParameters(tuple(doc.zernike_rad), tuple(doc.apodisation), doc.sine_condition, tuple(doc.source_edge_na))


def recording_pupil(recording: str | os.PathLike) -> PupilParameters | None:
    """The pupil stored in a recording folder, or None when it has none (older recordings)."""
    return read_pupil(recording) if (Path(recording) / PUPIL_FILE).is_file() else None
