"""The pupil file (``pupil.json``): a calibrated detection pupil, stored and reused.

A calibration (``recon.calibration``) writes it into the recording it calibrated
(``NAME.fdt/pupil.json``, an optional addition to format v1) or to any path
(``nvplive calibrate -o``); ``reconstruct --pupil FILE`` and later timepoints reuse
it. The schema is :class:`acquisition.schema.PupilFile` (docs/format.md).

Inside a recording only its writer writes (:meth:`.recording_writer.RecordingWriter.write_pupil`,
:func:`.recording_writer.store_pupil`, under the recording's lock); :func:`write_pupil`
writes pupil files elsewhere and refuses a recording folder.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nvplive.errors import RecordingError
from nvplive.recon.optics import Optics
from nvplive.recon.pupil import PupilParameters

from .recording_format import SUFFIX, atomic_write_json
from .schema import PupilFile, validate

#: Name of the pupil file inside a recording folder.
PUPIL_FILE = "pupil.json"


def pupil_path(path: str | os.PathLike) -> Path:
    """``path`` itself for a file, ``path/pupil.json`` for a recording folder."""
    p = Path(path)
    return p / PUPIL_FILE if p.suffix == ".fdt" or p.is_dir() else p


def pupil_document(
    pupil: PupilParameters,
    optics: Optics,
    *,
    calibrated_from: str,
    method: str,
    fitted_noll: tuple[int, ...] = (),
    residual: float | None = None,
    residual_before: float | None = None,
    created: str | None = None,
    bead_diameter_um: float | None = None,
) -> dict:
    """The pupil file's document for ``pupil`` (validated).

    Args:
        calibrated_from: one line naming the data; method: ``bead-z-stack`` or ``frames``.
        fitted_noll: the fitted Noll indices; residual, residual_before: the fit's relative
            residual after and with the starting (hard-aperture) pupil.
        created: when it was calibrated (ISO 8601); None: now (UTC).
        bead_diameter_um: the beads' diameter the calibration's renderer imaged (µm; 0: point
            sources); the fitted apodisation depends on it (:func:`bead_mismatch`).

    Raises:
        RecordingError: when the document is invalid (e.g. a non-finite coefficient).
    """
    doc = {
        "format": "nvp-live-pupil",
        "version": 1,
        **pupil.to_dict(),
        "optics": optics.to_dict(),
        "calibrated_from": str(calibrated_from),
        "method": method,
        "created": created if created is not None else datetime.now(UTC).isoformat(timespec="seconds"),
        "fitted_noll": [int(j) for j in fitted_noll],
        "residual": None if residual is None else float(residual),
        "residual_before": None if residual_before is None else float(residual_before),
        **({} if bead_diameter_um is None else {"bead_diameter_um": float(bead_diameter_um)}),
    }
    validate(PupilFile, doc, PUPIL_FILE, RecordingError)
    return doc


def _refuse_inside_recording(target: Path) -> None:
    """Raise :class:`RecordingError` if the pupil file ``target`` is inside a recording folder: a
    recording's pupil.json is written by its writer, under its lock (:func:`.recording_writer.store_pupil`)."""
    if target.parent.suffix == SUFFIX:
        raise RecordingError(
            f"{target}: is inside the recording {target.parent}, whose files only nvplive writes (under its lock); "
            f"choose a path outside it (a recording's own pupil.json is written by calibrating its frames: nvplive "
            f"calibrate {target.parent})."
        )


def write_pupil(path: str | os.PathLike, pupil: PupilParameters, optics: Optics, **provenance: Any) -> Path:
    """Write ``pupil`` to the file ``path`` (a folder: its pupil.json), atomically and durably
    (:func:`.recording_format.atomic_write_json`); ``provenance``:
    the keyword arguments of :func:`pupil_document`.

    Raises:
        RecordingError: the document is invalid, or ``path`` is (or is in) a recording folder:
            a recording's pupil.json is written by its writer (:func:`.recording_writer.store_pupil`).
    """
    target = pupil_path(path)
    _refuse_inside_recording(target)
    doc = pupil_document(pupil, optics, **provenance)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(target, doc, durable=True)
    return target


def check_pupil_output(path: str | os.PathLike, *inputs: str | os.PathLike, overwrite: bool = False) -> Path:
    """The pupil file :func:`write_pupil` would write for ``path``, checked before a fit runs:
    it is none of ``inputs`` (the data being fitted and its parameter file), it is not inside a
    recording folder (a recording's pupil.json is written under its lock), it does not exist
    yet unless ``overwrite``, and its folder exists and takes a new file (a temporary one is
    created there and removed; a mistyped folder is not created).

    Raises:
        RecordingError: the output is one of the inputs, is inside a recording, exists, or cannot
            be written (naming why).
    """
    target = pupil_path(path)
    for given in inputs:
        if Path(given).exists() and target.exists() and target.resolve() == Path(given).resolve():
            raise RecordingError(f"{target}: is the data being calibrated; choose another output for the pupil file.")
    _refuse_inside_recording(target)
    if target.exists() and not overwrite:
        raise RecordingError(f"{target}: already exists; replace it with nvplive calibrate --overwrite, or choose another output.")
    if not target.parent.is_dir():
        why = "is not a folder" if target.parent.exists() else "does not exist"
        raise RecordingError(f"{target}: cannot be written: {target.parent} {why}; choose another output.")
    try:
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise RecordingError(f"{target}: cannot be written ({exc.strerror or exc}); choose another output.") from None
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
    except UnicodeDecodeError:
        raise RecordingError(
            f"{target}: not a pupil file (not text; a pupil file is the JSON that nvplive calibrate writes)."
        ) from None
    except json.JSONDecodeError as exc:
        raise RecordingError(
            f"{target}: not a pupil file (not JSON at line {exc.lineno}, column {exc.colno}; a pupil file is the JSON "
            "that nvplive calibrate writes)."
        ) from None
    except OSError as exc:
        raise RecordingError(f"{target}: cannot be read ({exc.strerror or exc}).") from None
    if not isinstance(data, dict) or "format" not in data:
        raise RecordingError(
            f"{target}: not a pupil file (JSON without the \"format\": \"nvp-live-pupil\" field; a pupil file is the "
            "JSON that nvplive calibrate writes)."
        )
    if data["format"] != "nvp-live-pupil":
        hint = f" (a recording's own is its pupil.json: --pupil {target.parent})" if target.parent.suffix == SUFFIX else ""
        raise RecordingError(
            f"{target}: not a pupil file but a {data['format']!r} document; a pupil file is the JSON that nvplive "
            f"calibrate writes{hint}."
        )
    return validate(PupilFile, data, str(target), RecordingError)


def read_pupil(path: str | os.PathLike) -> PupilParameters:
    """The pupil stored at ``path`` (see :func:`read_pupil_file`)."""
    return _parameters(read_pupil_file(path))


def _parameters(doc: PupilFile) -> PupilParameters:
    """The pupil of a validated pupil file."""
    return PupilParameters.from_dict(doc.model_dump())


def recording_pupil(recording: str | os.PathLike) -> PupilParameters | None:
    """The pupil stored in a recording folder, or None when it has none (older recordings)."""
    return read_pupil(recording) if (Path(recording) / PUPIL_FILE).is_file() else None


def calibration_start(
    recording: str | os.PathLike, given: PupilParameters | None = None, given_from: str | None = None
) -> tuple[PupilParameters | None, str]:
    """The pupil a calibration on ``recording``'s frames starts from, and what it is (for the
    new pupil file's ``calibrated_from``, :func:`frames_origin`): ``given`` (read from
    ``given_from``, e.g. ``reconstruct --pupil FILE``), else the recording's own pupil.json,
    else the hard aperture (None).

    Raises:
        RecordingError: the recording's pupil.json is unreadable or invalid.
    """
    if given is not None:
        return given, given_from or "a given pupil"
    target = Path(recording) / PUPIL_FILE
    if not target.is_file():
        return None, "the hard aperture"
    doc = read_pupil_file(target)
    return _parameters(doc), f"the recording's earlier pupil.json ({doc.method}, {doc.created})"


def frames_origin(recording: str | os.PathLike, timepoint: int, start: str) -> str:
    """The ``calibrated_from`` of a pupil calibrated on a recording's frames: the recording,
    the timepoint and the pupil it started from (:func:`calibration_start`)."""
    return f"frames of {Path(recording).name}, timepoint {timepoint}, starting from {start}"


def bead_mismatch(calibrated_um: float | None, imaged_um: float, what: str) -> str | None:
    """A warning when the pupil ``what`` (e.g. a file's path) was calibrated with beads of
    ``calibrated_um`` (µm; None: not stated, files written before 2026-12-01) and a
    reconstruction images beads of another diameter ``imaged_um``, else None.

    A bead's extent lowers its image's contrast at the band's edge, and a calibration that
    assumes smaller beads takes part of that loss up as apodisation, so the pupil's
    apodisation holds for its own beads.
    """
    if calibrated_um is None or math.isclose(calibrated_um, imaged_um, abs_tol=1e-6):
        return None
    return (
        f"{what} was calibrated with beads of {calibrated_um:g} µm, but the reconstruction images beads of "
        f"{imaged_um:g} µm: its apodisation holds for the former (give the same bead diameter, or calibrate the pupil again)."
    )


def volume_pupil_setting(pupil: PupilParameters | None) -> dict | None:
    """A volume's ``settings.pupil``: the pupil it was rendered with (docs/format.md, volumes;
    None: the hard aperture); :func:`volume_pupil` reads it back."""
    return None if pupil is None else pupil.to_dict()


def volume_pupil(settings: dict, recording: str | os.PathLike) -> PupilParameters | None:
    """The pupil a volume was rendered with, from its stored ``settings`` (None: the hard
    aperture); volumes written before the settings carried it: the recording's pupil.json."""
    if "pupil" not in settings:
        return recording_pupil(recording)
    stored = settings["pupil"]
    return None if stored is None else PupilParameters.from_dict(stored)


#: Relative difference in λ, NA or n beyond which a pupil file belongs to other optics.
OPTICS_TOLERANCE = 1e-3


def pupil_for(doc: PupilFile, path: str | os.PathLike, optics: Optics, where: str) -> PupilParameters:
    """The pupil of ``doc`` (read from ``path``, :func:`read_pupil_file`), for use with
    ``optics`` (those of ``where``, a recording).

    Its Zernike radians hold for the wavelength it was calibrated at, and its pupil
    coordinate ρ is normalised by that NA, so a file calibrated for another λ, NA or
    medium index is refused.

    Raises:
        RecordingError: its optics differ from ``optics`` by more than
            :data:`OPTICS_TOLERANCE` (relative), naming both values of every one that differs.
    """
    calibrated, recorded = [], []
    for name, label, unit in (("wavelength_um", "λ", " µm"), ("na", "NA", ""), ("n_medium", "n", "")):
        a, b = float(getattr(doc.optics, name)), float(getattr(optics, name))
        if not math.isclose(a, b, rel_tol=OPTICS_TOLERANCE):
            calibrated.append(f"{label} {a:g}{unit}")
            recorded.append(f"{label} {b:g}{unit}")
    if calibrated:
        raise RecordingError(
            f"{pupil_path(path)}: was calibrated for {', '.join(calibrated)}, but {where} was recorded at "
            f"{', '.join(recorded)}; calibrate the pupil for these optics (nvplive calibrate)."
        )
    return _parameters(doc)
