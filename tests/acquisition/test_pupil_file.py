"""The pupil file (pupil.json): written, validated and read back (issue 13 item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvplive.acquisition.pupil_file import (
    PUPIL_FILE,
    bead_mismatch,
    calibration_start,
    frames_origin,
    pupil_document,
    read_pupil,
    read_pupil_file,
    recording_pupil,
    write_pupil,
)
from nvplive.errors import RecordingError
from nvplive.recon.optics import Optics
from nvplive.recon.pupil import SOURCE_RIM_WIDTH, PupilParameters

PUPIL = PupilParameters((0.0, 0.0, 0.0, 0.2, -0.1, 0.0, 0.0, 0.0, 0.0, 0.3), (-0.12, 0.01))


def test_a_pupil_file_round_trips(tmp_path: Path):
    written = write_pupil(tmp_path / "p.json", PUPIL, Optics(), calibrated_from="test", method="frames",
                          fitted_noll=tuple(range(5, 12)), residual=0.1, residual_before=0.3)
    assert read_pupil(written) == PUPIL
    doc = read_pupil_file(written)
    assert doc.residual == 0.1 and doc.fitted_noll == list(range(5, 12)) and doc.optics.na == Optics().na
    folder = tmp_path / "pupils"
    folder.mkdir()
    assert write_pupil(folder, PUPIL, Optics(), calibrated_from="test", method="frames") == folder / PUPIL_FILE
    assert read_pupil(folder) == PUPIL
    recording = tmp_path / "rec.fdt"
    recording.mkdir()
    assert recording_pupil(recording) is None  # an older recording has none


def test_a_pupil_file_states_its_beads_and_other_beads_are_warned_of(tmp_path: Path):
    """The beads a pupil was calibrated with are recorded; a reconstruction imaging other beads
    is warned (naming both), the same beads are not, nor is a file that does not state them."""
    written = write_pupil(tmp_path / "p.json", PUPIL, Optics(), calibrated_from="test", method="frames", bead_diameter_um=0.2)
    doc = read_pupil_file(written)
    assert doc.bead_diameter_um == 0.2
    assert bead_mismatch(doc.bead_diameter_um, 0.2, "p.json") is None
    assert bead_mismatch(doc.bead_diameter_um, 0.0, "p.json") == (
        "p.json was calibrated with beads of 0.2 µm, but the reconstruction images beads of 0 µm: its apodisation holds "
        "for the former (give the same bead diameter, or calibrate the pupil again).")
    older = read_pupil_file(write_pupil(tmp_path / "old.json", PUPIL, Optics(), calibrated_from="test", method="frames"))
    assert older.bead_diameter_um is None and bead_mismatch(older.bead_diameter_um, 0.5, "old.json") is None


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"zernike_rad": [0.1, "NaN"]}, "zernike_rad"),
        ({"colour": "blue"}, "colour"),
        ({"first_noll_index": 1}, "first_noll_index"),
        ({"version": 2}, "version"),
    ],
)
def test_an_invalid_pupil_file_is_refused_in_one_sentence(tmp_path: Path, change: dict, fragment: str):
    path = write_pupil(tmp_path / "p.json", PUPIL, Optics(), calibrated_from="test", method="frames")
    doc = json.loads(path.read_text())
    doc.update(change)
    path.write_text(json.dumps(doc).replace('"NaN"', "NaN"))
    with pytest.raises(RecordingError, match=fragment):
        read_pupil(path)
    with pytest.raises(RecordingError, match="no pupil file"):
        read_pupil(tmp_path / "missing.json")


def test_the_source_spectrum_edge_round_trips_and_an_older_file_without_it_loads(tmp_path: Path):
    with_edge = PupilParameters(PUPIL.zernike_rad, PUPIL.apodisation, source_edge_na=(0.704, 0.8))
    path = write_pupil(tmp_path / "edge.json", with_edge, Optics(), calibrated_from="test", method="frames")
    assert read_pupil(path) == with_edge
    older = write_pupil(tmp_path / "old.json", PUPIL, Optics(), calibrated_from="test", method="frames")
    assert "source_edge_na" not in json.loads(older.read_text())  # the document of a pupil without it is unchanged
    assert read_pupil(older).source_edge_na == ()  # the renderer's default source spectrum
    with pytest.raises(ValueError, match="source_edge_na"):
        PupilParameters(source_edge_na=(0.8, 0.7))
    # the light beyond the NA likewise: stored when fitted, absent (the full spectrum, 1) before
    dimmed = PupilParameters(PUPIL.zernike_rad, PUPIL.apodisation, source_beyond_na=0.45, source_rim_width=0.044)
    assert read_pupil(write_pupil(tmp_path / "dim.json", dimmed, Optics(), calibrated_from="test", method="frames")) == dimmed
    assert "source_beyond_na" not in json.loads(older.read_text()) and read_pupil(older).source_beyond_na == 1.0
    assert "source_rim_width" not in json.loads(older.read_text()) and read_pupil(older).source_rim_width == SOURCE_RIM_WIDTH
    with pytest.raises(ValueError, match="source_beyond_na"):
        PupilParameters(source_beyond_na=1.2)
    with pytest.raises(ValueError, match="source_rim_width"):
        PupilParameters(source_rim_width=0.0)
    doc = json.loads(older.read_text())
    older.write_text(json.dumps({**doc, "source_beyond_na": -0.1}))
    with pytest.raises(RecordingError, match="source_beyond_na"):
        read_pupil(older)


def test_a_frame_calibration_names_the_pupil_it_started_from(tmp_path: Path):
    """pupil.json's ``calibrated_from`` says which pupil a calibration on the frames began
    with: a given file, the recording's earlier pupil.json, or the hard aperture."""
    recording = tmp_path / "rec.fdt"
    recording.mkdir()
    assert calibration_start(recording) == (None, "the hard aperture")
    assert frames_origin(recording, 0, "the hard aperture") == "frames of rec.fdt, timepoint 0, starting from the hard aperture"
    assert calibration_start(recording, PUPIL, "scope.json (bead-z-stack, 2026-11-30)") == (PUPIL, "scope.json (bead-z-stack, 2026-11-30)")
    doc = pupil_document(PUPIL, Optics(), calibrated_from="test", method="bead-z-stack", created="2026-11-30T10:00:00+00:00")
    (recording / PUPIL_FILE).write_text(json.dumps(doc))
    assert calibration_start(recording) == (PUPIL, "the recording's earlier pupil.json (bead-z-stack, 2026-11-30T10:00:00+00:00)")


def test_write_pupil_refuses_a_path_inside_a_recording_with_the_users_words(tmp_path):
    """One check, one message, whether the command line checks before the fit or the API writes."""
    from nvplive.acquisition.pupil_file import check_pupil_output

    inside = tmp_path / "run.fdt" / "mine.json"
    inside.parent.mkdir()
    for attempt in (lambda: write_pupil(inside, PUPIL, Optics(), calibrated_from="test", method="frames"), lambda: check_pupil_output(inside)):
        with pytest.raises(RecordingError, match=r"is inside the recording .*run\.fdt.*nvplive calibrate"):
            attempt()
    assert not inside.exists()


def test_a_recordings_json_given_as_a_pupil_file_points_to_its_pupil(tmp_path):
    doc = tmp_path / "cell.fdt" / "recording.json"
    doc.parent.mkdir()
    doc.write_text(json.dumps({"format": "nvp-live-recording", "version": 1}))
    with pytest.raises(RecordingError, match=r"not a pupil file but a 'nvp-live-recording' document.*--pupil .*cell\.fdt\)"):
        read_pupil_file(doc)
