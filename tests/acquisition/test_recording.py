"""Recording format v1: round trips, OME metadata, validation, crash safety (real kill -9), threads, fuzzing."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvplive.acquisition.recording import (
    FRAMES_NAME,
    GROUND_TRUTH_NAME,
    JOURNAL_NAME,
    JSON_NAME,
    VOLUMES_NAME,
    CameraSettings,
    Recording,
    RecordingMeta,
    RecordingWriter,
    open_recording,
    recover_recording,
)
from nvplive.errors import RecordingError
from nvplive.recon.optics import Optics, VolumeGeometry

OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
ZYX = (3, 8, 12)
VIEWS = 3


def make_meta(binning: int = 1, views: int = VIEWS, shape=ZYX) -> RecordingMeta:
    geometry = VolumeGeometry(shape, (0.4, 0.1, 0.1), camera_binning=binning)
    sources = [[0.5 * v, -0.25 * v, -6.0] for v in range(views)]
    return RecordingMeta(
        optics=Optics(wavelength_um=0.58, n_medium=1.33, na=0.7),
        geometry=geometry,
        camera=CameraSettings(pixel_size_um=geometry.camera_pixel_um, offset=100, gain=2.5, read_noise=1.5),
        sources_um_xyz=sources,
        extra={"phantom": "cell", "seed": np.int64(7)},
    )


def frames_of(t: int, meta: RecordingMeta) -> np.ndarray:
    return np.random.default_rng(t).integers(0, 65536, (meta.n_views, *meta.frame_shape), dtype=np.uint16)


def volume_of(t: int, meta: RecordingMeta, salt: int = 1000) -> np.ndarray:
    return np.random.default_rng(salt + t).normal(0, 0.02, meta.geometry.shape_zyx).astype(np.float32)


def stamps_of(t: int, meta: RecordingMeta) -> list[float]:
    return [t * 0.5 + 0.01 * v for v in range(meta.n_views)]


def write_recording(path: Path, meta: RecordingMeta, n: int = 4, volumes=(0, 2), truth=True,
                    close: bool = True) -> RecordingWriter:
    writer = RecordingWriter(path, meta)
    for t in range(n):
        info = [{"t": t, "view": v} for v in range(meta.n_views)]
        writer.write_timepoint(t, frames_of(t, meta), stamps_of(t, meta), info)
        if t in volumes:
            writer.write_volume(t, volume_of(t, meta), "nvp", {"iterations": 10 + t, "tv": 1e-3})
        if truth:
            writer.write_ground_truth(t, volume_of(t, meta, salt=5000))
    if close:
        writer.close()
    return writer


@pytest.fixture
def meta() -> RecordingMeta:
    return make_meta()


@pytest.fixture
def recording(tmp_path, meta) -> Path:
    path = tmp_path / "run.fdt"
    write_recording(path, meta)
    return path


# --------------------------------------------------------------------------- round trip


def test_round_trip_frames_volumes_truth_and_metadata(recording, meta):
    with open_recording(recording) as rec:
        assert not rec.interrupted
        assert (rec.n_timepoints, rec.n_views, rec.frame_shape) == (4, VIEWS, (8, 12))
        assert rec.meta == meta
        assert rec.meta.extra == {"phantom": "cell", "seed": 7}
        for t in range(4):
            np.testing.assert_array_equal(rec.frames(t), frames_of(t, meta))
            assert rec.frames(t).dtype == np.uint16
            np.testing.assert_array_equal(rec.timestamps(t), stamps_of(t, meta))
            assert rec.frame_metadata(t) == [{"t": t, "view": v} for v in range(VIEWS)]
            np.testing.assert_array_equal(rec.ground_truth(t), volume_of(t, meta, salt=5000))
        np.testing.assert_array_equal(rec.frame(2, 1), frames_of(2, meta)[1])
        # partial volumes: only timepoints 0 and 2 were reconstructed
        assert rec.volume_timepoints == (0, 2)
        assert rec.volume(1) is None and rec.volume(3) is None
        np.testing.assert_array_equal(rec.volume(2), volume_of(2, meta))
        assert rec.volume(2).dtype == np.float32
        assert rec.volume_settings == {
            0: {"method": "nvp", "settings": {"iterations": 10, "tv": 1e-3}},
            2: {"method": "nvp", "settings": {"iterations": 12, "tv": 1e-3}},
        }
        assert rec.has_ground_truth and rec.ground_truth_timepoints == (0, 1, 2, 3)
        seen = [(item.index, item.frames.copy()) for item in rec]
        assert [t for t, _ in seen] == [0, 1, 2, 3]
        np.testing.assert_array_equal(seen[3][1], frames_of(3, meta))
        assert [t for t, _ in rec.iter_volumes()] == [0, 2]
        with pytest.raises(RecordingError, match="out of range"):
            rec.frames(4)
    assert not (recording / JOURNAL_NAME).exists()
    doc = json.loads((recording / JSON_NAME).read_text())
    assert doc["format"] == "nvp-live-recording" and doc["version"] == 1 and doc["closed"] is True
    assert doc["camera"] == {"pixel_size_um": 0.1, "offset": 100.0, "gain": 2.5, "read_noise": 1.5, "bit_depth": 16}
    assert doc["volume"]["shape_zyx"] == list(ZYX) and doc["optics"]["na"] == 0.7
    assert doc["views"][1]["source_um_xyz"] == [0.5, -0.25, -6.0]


def test_the_beads_size_is_stored_and_older_recordings_read_as_point_sources(tmp_path, meta):
    """``bead_diameter_um`` (an optional addition to format v1) round-trips; a recording that
    does not state it (written before it existed, or point sources) reads as 0; a negative one
    is refused."""
    from dataclasses import replace

    beads = replace(meta, bead_diameter_um=0.2)
    write_recording(tmp_path / "beads.fdt", beads, n=1, volumes=(), truth=False)
    assert json.loads((tmp_path / "beads.fdt" / JSON_NAME).read_text())["bead_diameter_um"] == 0.2
    with open_recording(tmp_path / "beads.fdt") as rec:
        assert rec.meta == beads and rec.meta.bead_diameter_um == 0.2
    write_recording(tmp_path / "points.fdt", meta, n=1, volumes=(), truth=False)
    assert "bead_diameter_um" not in json.loads((tmp_path / "points.fdt" / JSON_NAME).read_text())
    with open_recording(tmp_path / "points.fdt") as rec:
        assert rec.meta.bead_diameter_um == 0.0
    with pytest.raises(RecordingError, match="bead_diameter_um must be a finite number ≥ 0 µm, got -0.2"):
        replace(meta, bead_diameter_um=-0.2)


def test_refined_sources_keep_the_nominal_ones(tmp_path, meta):
    path = tmp_path / "refined.fdt"
    with RecordingWriter(path, meta) as writer:
        writer.write_timepoint(0, frames_of(0, meta), stamps_of(0, meta))
        refined = np.array(meta.sources_um_xyz) + [0.05, -0.02, 0.3]
        writer.update_sources(refined)
        assert writer.meta.refined_sources_um_xyz is not None
    with open_recording(path) as rec:
        assert rec.meta.sources_um_xyz == meta.sources_um_xyz
        np.testing.assert_allclose(rec.meta.refined_sources_um_xyz, refined)
        np.testing.assert_allclose(rec.meta.effective_sources_um_xyz, refined)
        assert not rec.has_ground_truth and rec.ground_truth(0) is None and rec.volume_timepoints == ()


def test_ome_tiff_metadata_physical_sizes_and_axes(tmp_path):
    meta = make_meta(binning=2, shape=(3, 8, 12))
    path = tmp_path / "ome.fdt"
    write_recording(path, meta, n=3, volumes=(1, 2))
    with tifffile.TiffFile(path / FRAMES_NAME) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "TCYX" and series.shape == (3, VIEWS, 4, 6) and series.dtype == np.uint16
        np.testing.assert_array_equal(series.asarray()[2], frames_of(2, meta))
        pixels = ElementTree.fromstring(tif.ome_metadata).find(f"{OME}Image/{OME}Pixels")
        assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.2)  # binning 2 × dx 0.1 µm
        assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.2)
        assert pixels.get("PhysicalSizeXUnit", "µm") == "µm"
        names = [c.get("Name") for c in pixels.findall(f"{OME}Channel")]
        assert names == [f"view {v}" for v in range(VIEWS)]
    for name, n in ((VOLUMES_NAME, 2), (GROUND_TRUTH_NAME, 3)):
        with tifffile.TiffFile(path / name) as tif:
            series = tif.series[0]
            assert tif.is_ome and series.axes == "TZYX" and series.shape == (n, 3, 8, 12)
            assert series.dtype == np.float32
            root = ElementTree.fromstring(tif.ome_metadata)
            pixels = root.find(f"{OME}Image/{OME}Pixels")
            sizes = [float(pixels.get(f"PhysicalSize{ax}")) for ax in "ZYX"]
            assert sizes == pytest.approx([0.4, 0.1, 0.1])
            if name == VOLUMES_NAME:
                description = json.loads(root.find(f"{OME}Image/{OME}Description").text)
                assert [v["timepoint"] for v in description["volumes"]] == [1, 2]
                assert description["volumes"][0]["method"] == "nvp"
                np.testing.assert_array_equal(series.asarray()[1], volume_of(2, meta))
    np.testing.assert_array_equal(tifffile.imread(path / FRAMES_NAME)[1], frames_of(1, meta))


# --------------------------------------------------------------------------- writer rules


def test_overwrite_rules(tmp_path, meta):
    path = tmp_path / "again.fdt"
    write_recording(path, meta, n=1, truth=False)
    with pytest.raises(RecordingError, match="already exists"):
        RecordingWriter(path, meta)
    with RecordingWriter(path, meta, overwrite=True) as writer:
        writer.write_timepoint(0, frames_of(5, meta), stamps_of(0, meta))
    with open_recording(path) as rec:
        np.testing.assert_array_equal(rec.frames(0), frames_of(5, meta))
        assert rec.volume_timepoints == ()
    precious = tmp_path / "precious.fdt"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(RecordingError, match="not a recording"):
        RecordingWriter(precious, meta, overwrite=True)
    assert (precious / "thesis.txt").exists()
    with pytest.raises(RecordingError, match=r"\.fdt"):
        RecordingWriter(tmp_path / "noext", meta)


def test_overwrite_never_deletes_a_users_own_files(tmp_path, meta):
    """A file the user put into a recording folder stops its replacement, naming it; the
    recording's own files (its pupil and volumes included) do not."""
    path = tmp_path / "run.fdt"
    write_recording(path, meta, n=1, truth=False)
    (path / "pupil.json").write_text("{}")
    (path / "nvplive.log").write_text("the live session's log\n")  # the app's Live/Record writes it
    (path / "frames.ome.tif.recover.tmp").write_bytes(b"")  # a recovery that was killed leaves it
    (path / "my_analysis.csv").write_text("t,dn\n")
    with pytest.raises(RecordingError, match=r"holds files nvp-live did not write \(my_analysis\.csv\).*Move them out"):
        RecordingWriter(path, meta, overwrite=True)
    assert (path / "my_analysis.csv").exists()
    with open_recording(path) as rec:
        assert rec.n_timepoints == 1
    (path / "my_analysis.csv").unlink()
    with RecordingWriter(path, meta, overwrite=True):
        pass
    assert not (path / "pupil.json").exists()


def test_a_recording_under_a_file_is_refused_in_one_sentence(tmp_path, meta):
    (tmp_path / "notes.txt").write_text("not a folder")
    with pytest.raises(RecordingError, match=r"cannot be created: .*notes\.txt is a file, not a folder"):
        RecordingWriter(tmp_path / "notes.txt" / "run.fdt", meta)


@pytest.mark.parametrize(
    "action, match",
    [
        (lambda w, m: w.write_frame(0, 0, frames_of(0, m)[0].astype(np.float32), 0.0), "uint16"),
        (lambda w, m: w.write_frame(0, 0, frames_of(0, m)[0, :4], 0.0), r"shape \(8, 12\)"),
        (lambda w, m: w.write_frame(0, 1, frames_of(0, m)[1], 0.0), "expected the frame of timepoint 0 view 0"),
        (lambda w, m: w.write_frame(1, 0, frames_of(1, m)[0], 0.0), "expected the frame of timepoint 0 view 0"),
        (lambda w, m: w.write_frame(0, 0, frames_of(0, m)[0], float("nan")), "finite number of seconds"),
        (lambda w, m: w.write_frame(0, 0, frames_of(0, m)[0], 0.0, {"bad": object()}), "JSON-serialisable"),
        (lambda w, m: w.write_timepoint(0, frames_of(0, m)[:2], [0, 0]), r"\[V=3, Y, X\]"),
        (lambda w, m: w.write_timepoint(0, frames_of(0, m), [0.0]), "3 timestamps"),
        (lambda w, m: w.write_volume(0, volume_of(0, m), "nvp"), "complete timepoints"),
    ],
)
def test_writer_rejects_bad_input_before_first_timepoint(tmp_path, meta, action, match):
    with RecordingWriter(tmp_path / "bad.fdt", meta) as writer:
        with pytest.raises(RecordingError, match=match):
            action(writer, meta)
        assert writer.n_timepoints == 0


def test_writer_rejects_bad_volumes_and_use_after_close(tmp_path, meta):
    writer = RecordingWriter(tmp_path / "vol.fdt", meta)
    writer.write_timepoint(0, frames_of(0, meta), stamps_of(0, meta))
    bad = volume_of(0, meta)
    bad[1, 2, 3] = np.nan
    with pytest.raises(RecordingError, match=r"volumes\.ome\.tif.*NaN"):
        writer.write_volume(0, bad, "nvp")
    with pytest.raises(RecordingError, match="float32|floating"):
        writer.write_volume(0, np.zeros(ZYX, np.int32), "nvp")
    with pytest.raises(RecordingError, match=r"shape \(3, 8, 12\)"):
        writer.write_volume(0, np.zeros((3, 8, 8), np.float32), "nvp")
    with pytest.raises(RecordingError, match="method"):
        writer.write_volume(0, volume_of(0, meta), "")
    writer.write_volume(0, volume_of(0, meta), "explicit", {"lr": 0.01})
    with pytest.raises(RecordingError, match="already been written"):
        writer.write_volume(0, volume_of(0, meta), "explicit")
    with pytest.raises(RecordingError, match="finite numbers"):
        writer.update_sources([[0, 0, np.inf]] * VIEWS)
    writer.close()
    writer.close()
    with pytest.raises(RecordingError, match="closed"):
        writer.write_timepoint(1, frames_of(1, meta), stamps_of(1, meta))


def test_meta_validation():
    base = make_meta()
    with pytest.raises(RecordingError, match="pixel_size_um"):
        RecordingMeta(base.optics, base.geometry, CameraSettings(0.3), base.sources_um_xyz)
    with pytest.raises(RecordingError, match="sources_um_xyz"):
        RecordingMeta(base.optics, base.geometry, base.camera, [[0, 0]])
    with pytest.raises(RecordingError, match="gain"):
        CameraSettings(0.1, gain=0)
    assert CameraSettings.from_dict(base.camera.to_dict()) == base.camera


# --------------------------------------------------------------------------- reader validation


def _edit_json(path: Path, edit) -> None:
    doc = json.loads((path / JSON_NAME).read_text())
    edit(doc)
    (path / JSON_NAME).write_text(json.dumps(doc))


def _truncate(file: Path, keep: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def _replace_text(file: Path, old: str, new: str) -> None:
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new))


def _add_view(doc: dict) -> None:
    """A consistent recording.json that claims one more view than frames.ome.tif holds."""
    doc["views"].append(doc["views"][0])
    for entry in doc["timepoints"]:
        entry["timestamps_s"].append(9.0)
        entry["frames"].append({})


def _set_ome(file: Path, old: str, new: str) -> None:
    with tifffile.TiffFile(file) as tif:
        xml = tif.ome_metadata
    assert old in xml
    tifffile.tiffcomment(file, comment=xml.replace(old, new))


CORRUPTIONS = {
    "wrong version": (lambda p: _edit_json(p, lambda d: d.update(version=2)), JSON_NAME, "version 2"),
    "wrong format": (lambda p: _edit_json(p, lambda d: d.update(format="other")), JSON_NAME, "format"),
    "missing field": (lambda p: _edit_json(p, lambda d: d["optics"].pop("na")), JSON_NAME, "optics.na"),
    "wrong type": (lambda p: _edit_json(p, lambda d: d["camera"].update(gain="high")), JSON_NAME, "camera.gain"),
    "timestamps": (lambda p: _edit_json(p, lambda d: d["timepoints"][1].update(timestamps_s=[0.0])), JSON_NAME,
                   "timepoints.1..timestamps_s"),
    "volume beyond": (lambda p: _edit_json(p, lambda d: d["volumes"][1].update(timepoint=9)), JSON_NAME, "timepoint"),
    "corrupted json": (lambda p: (p / JSON_NAME).write_text('{"format": "nvp-live-recording", "vers'), JSON_NAME,
                       "not valid JSON"),
    "nan in json": (lambda p: _replace_text(p / JSON_NAME, '"gain": 2.5', '"gain": NaN'), JSON_NAME, "not valid JSON"),
    "missing json": (lambda p: (p / JSON_NAME).unlink(), JSON_NAME, "missing"),
    "shape mismatch": (lambda p: _edit_json(p, lambda d: d["volume"].update(shape_zyx=[3, 8, 16])),
                       FRAMES_NAME, r"expects uint16 \(8, 16\)"),
    "more views than pages": (lambda p: _edit_json(p, _add_view), FRAMES_NAME, "holds only 12 readable pages"),
    "truncated frames": (lambda p: _truncate(p / FRAMES_NAME, 0.6), FRAMES_NAME, "truncated|readable"),
    # cut into the pixels (a cut into the OME-XML tail alone is recovered: test_one_writer.py)
    "truncated volumes": (lambda p: _truncate(p / VOLUMES_NAME, 0.4), VOLUMES_NAME, "truncated|readable"),
    "missing truth": (lambda p: (p / GROUND_TRUTH_NAME).unlink(), GROUND_TRUTH_NAME, "missing"),
    "not a tiff": (lambda p: (p / FRAMES_NAME).write_bytes(b"hello world" * 10), FRAMES_NAME, "not a readable TIFF"),
    "wrong ome axes": (lambda p: _set_ome(p / FRAMES_NAME, 'DimensionOrder="XYZCT"', 'DimensionOrder="XYZTC"'),
                       FRAMES_NAME, "OME metadata"),
    "wrong ome size": (lambda p: _set_ome(p / VOLUMES_NAME, 'SizeT="2"', 'SizeT="3"'), VOLUMES_NAME, "OME metadata"),
    "bad journal line": (lambda p: (p / JOURNAL_NAME).write_bytes(b'{"op": "timepoint", "entry": 3}\n'),
                         JOURNAL_NAME, "entry"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_reader_rejects_damage_with_a_message_naming_the_file(recording, name, caplog):
    """One sentence naming the file, and nothing from tifffile around it (its warnings and
    errors while it parses a damaged file are dropped)."""
    damage, file_name, match = CORRUPTIONS[name]
    damage(recording)
    caplog.set_level(logging.DEBUG, logger="tifffile")
    with pytest.raises(RecordingError, match=match) as info:
        with open_recording(recording) as rec:
            for t in range(rec.n_timepoints):
                rec.frames(t), rec.volume(t), rec.ground_truth(t)
    message = str(info.value)
    assert file_name in message and str(recording) in message
    assert "\n" not in message
    assert not [r for r in caplog.records if r.name == "tifffile"]


# --------------------------------------------------------------------------- crash safety


def test_snapshot_of_an_unclosed_writer_opens_with_its_complete_timepoints(tmp_path, meta):
    path = tmp_path / "live.fdt"
    writer = write_recording(path, meta, n=3, volumes=(1,), truth=False, close=False)
    writer.write_frame(3, 0, frames_of(3, meta)[0], 9.0)  # timepoint 3 is incomplete
    snapshot = tmp_path / "snapshot.fdt"
    shutil.copytree(path, snapshot)
    writer.close()
    with open(snapshot / JOURNAL_NAME, "ab") as journal:
        journal.write(b'{"op": "timepoint", "entry": {"index": 3, "timest')  # torn last line
    with open_recording(snapshot) as rec:
        assert rec.interrupted and rec.n_timepoints == 3 and rec.volume_timepoints == (1,)
        np.testing.assert_array_equal(rec.frames(2), frames_of(2, meta))
        np.testing.assert_array_equal(rec.volume(1), volume_of(1, meta))
    with tifffile.TiffFile(snapshot / FRAMES_NAME) as tif:
        assert not tif.is_ome  # the OME-XML is only installed on close
    assert recover_recording(snapshot) is True
    assert recover_recording(snapshot) is False
    with open_recording(snapshot) as rec:
        assert not rec.interrupted and rec.n_timepoints == 3
        np.testing.assert_array_equal(rec.frames(1), frames_of(1, meta))
    with tifffile.TiffFile(snapshot / FRAMES_NAME) as tif:
        assert tif.is_ome and tif.series[0].shape == (3, VIEWS, 8, 12) and len(tif.pages) == 3 * VIEWS


def test_cut_anywhere_after_the_complete_timepoints_still_opens(tmp_path, meta):
    """A crash leaves the TIFF cut somewhere in the pages of the timepoint being written."""
    path = tmp_path / "cut.fdt"
    writer = write_recording(path, meta, n=3, volumes=(), truth=False, close=False)
    snapshot = tmp_path / "journal-before-t3"
    shutil.copy(path / JOURNAL_NAME, snapshot)
    writer.write_timepoint(3, frames_of(3, meta), stamps_of(3, meta))  # on disk, but the journal is rolled back
    writer.write_frame(4, 0, frames_of(4, meta)[0], 0.0)
    full = (path / FRAMES_NAME).read_bytes()
    with tifffile.TiffFile(path / FRAMES_NAME) as tif:
        last = tif.pages[3 * VIEWS - 1]
        complete_end = max(o + c for o, c in zip(last.dataoffsets, last.databytecounts))
    cut_dir = tmp_path / "cut-copy.fdt"
    shutil.copytree(path, cut_dir)
    shutil.copy(snapshot, cut_dir / JOURNAL_NAME)
    for cut in np.linspace(complete_end, len(full), 25).astype(int):
        (cut_dir / FRAMES_NAME).write_bytes(full[:cut])
        with open_recording(cut_dir) as rec:
            assert rec.n_timepoints == 3
            np.testing.assert_array_equal(rec.frames(2), frames_of(2, meta))
    writer.close()


CHILD = r"""
import sys, threading, time
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_recording import make_meta, frames_of, volume_of, stamps_of
from nvplive.acquisition.recording import RecordingWriter

meta = make_meta(shape=(2, 64, 64))
writer = RecordingWriter(sys.argv[1], meta)

first = threading.Event()  # the first volume is written before timepoint 1 (the kill comes after >= 2)

def reconstruct():
    done = -1
    while True:
        latest = writer.n_timepoints - 1
        if latest > done:
            done = latest
            writer.write_volume(done, volume_of(done, meta), "nvp", {"t": done})
            first.set()
        else:
            time.sleep(0.002)

threading.Thread(target=reconstruct, daemon=True).start()
t = 0
while True:
    info = [{"t": t, "view": v} for v in range(meta.n_views)]
    writer.write_timepoint(t, frames_of(t, meta), stamps_of(t, meta), info)
    print(t, flush=True)
    if t == 0:
        first.wait(30)
    t += 1
"""


def test_kill_9_leaves_every_complete_timepoint(tmp_path):
    meta = make_meta(shape=(2, 64, 64))
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    for attempt in range(5):
        path = tmp_path / f"killed{attempt}.fdt"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(Path(__file__).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            wanted = rng.randint(2, 6)
            printed = []
            for line in child.stdout:
                printed.append(int(line))
                if len(printed) >= wanted:
                    break
            assert printed, child.stderr.read().decode()
            time.sleep(rng.uniform(0.0, 0.03))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            rest, errors = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, errors.decode()
        printed += [int(x) for x in rest.split()]
        last = printed[-1]
        with open_recording(path) as rec:
            # every timepoint reported done is there; at most one more completed before the kill
            assert rec.n_timepoints in (last + 1, last + 2)
            for t in range(rec.n_timepoints):
                np.testing.assert_array_equal(rec.frames(t), frames_of(t, meta))
                np.testing.assert_array_equal(rec.timestamps(t), stamps_of(t, meta))
                assert rec.frame_metadata(t)[1] == {"t": t, "view": 1}
            assert rec.volume_timepoints, "the reconstruction thread wrote nothing"
            for t in rec.volume_timepoints:
                np.testing.assert_array_equal(rec.volume(t), volume_of(t, meta))
                assert rec.volume_settings[t] == {"method": "nvp", "settings": {"t": t}}
            n = rec.n_timepoints
        if attempt == 0:
            recover_recording(path)
            with open_recording(path) as rec:
                assert rec.n_timepoints == n and not rec.interrupted
            assert tifffile.imread(path / FRAMES_NAME).shape == (n, VIEWS, 64, 64)


# --------------------------------------------------------------------------- threads, offline volumes


def test_frames_and_volumes_from_two_threads(tmp_path, meta):
    path = tmp_path / "threads.fdt"
    n = 25
    errors: list[BaseException] = []
    with RecordingWriter(path, meta) as writer:
        finished = threading.Event()

        def reconstruct():
            try:
                done = -1
                while not (finished.is_set() and done == writer.n_timepoints - 1):
                    latest = writer.n_timepoints - 1
                    if latest > done:
                        done = latest  # keeps only the newest timepoint, like the live queue
                        writer.write_volume(done, volume_of(done, meta), "nvp", {"t": done})
                        writer.update_sources(np.array(meta.sources_um_xyz) + 0.001 * done)
                    else:
                        time.sleep(0.0005)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        worker = threading.Thread(target=reconstruct)
        worker.start()
        for t in range(n):
            writer.write_timepoint(t, frames_of(t, meta), stamps_of(t, meta))
        finished.set()
        worker.join(timeout=30)
    assert not errors
    with open_recording(path) as rec:
        assert rec.n_timepoints == n and rec.volume_timepoints[-1] == n - 1
        assert list(rec.volume_timepoints) == sorted(set(rec.volume_timepoints))
        for t in range(n):
            np.testing.assert_array_equal(rec.frames(t), frames_of(t, meta))
        for t in rec.volume_timepoints:
            np.testing.assert_array_equal(rec.volume(t), volume_of(t, meta))
        np.testing.assert_allclose(rec.meta.refined_sources_um_xyz, np.array(meta.sources_um_xyz) + 0.001 * (n - 1))


def test_replace_volumes_for_offline_reconstruction(recording, meta):
    with RecordingWriter.replace_volumes(recording) as writer:
        with pytest.raises(RecordingError, match="only replaces volumes"):
            writer.write_timepoint(4, frames_of(4, meta), stamps_of(4, meta))
        for t in (3, 1):
            writer.write_volume(t, volume_of(t, meta, salt=77), "explicit", {"iterations": 200})
    with open_recording(recording) as rec:
        assert rec.volume_timepoints == (3, 1)
        assert rec.volume_settings[1]["method"] == "explicit"
        np.testing.assert_array_equal(rec.volume(1), volume_of(1, meta, salt=77))
        np.testing.assert_array_equal(rec.frames(3), frames_of(3, meta))
        np.testing.assert_array_equal(rec.ground_truth(2), volume_of(2, meta, salt=5000))


def test_a_volumes_file_deleted_by_hand_leaves_the_frames_readable_and_is_written_again(recording, meta):
    (recording / VOLUMES_NAME).unlink()
    with open_recording(recording) as rec:
        assert "volumes.ome.tif: file is missing" in rec.missing_volumes
        assert "nvplive reconstruct" in rec.missing_volumes
        np.testing.assert_array_equal(rec.frames(2), frames_of(2, meta))
        np.testing.assert_array_equal(rec.ground_truth(2), volume_of(2, meta, salt=5000))
        assert rec.volume(1) is None  # never reconstructed
        with pytest.raises(RecordingError, match="file is missing"):
            rec.volume(2)
    with RecordingWriter.replace_volumes(recording) as writer:
        writer.write_volume(1, volume_of(1, meta, salt=3), "nvp", {})
    with open_recording(recording) as rec:
        assert rec.missing_volumes is None and rec.volume_timepoints == (1,)
        np.testing.assert_array_equal(rec.volume(1), volume_of(1, meta, salt=3))


# --------------------------------------------------------------------------- fuzzing


def _json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_paths(item, prefix + (i,))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
TIFFS = [FRAMES_NAME, VOLUMES_NAME, GROUND_TRUTH_NAME]
MUTATIONS = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), JSON_VALUES),
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("truncate"), st.sampled_from(TIFFS + [JSON_NAME]), st.floats(0, 1)),
    st.tuples(st.just("scribble"), st.sampled_from(TIFFS), st.floats(0, 1), st.binary(min_size=1, max_size=24)),
    st.tuples(st.just("axes"), st.sampled_from(TIFFS), st.sampled_from(["XYZCT", "XYCZT", "XYZTC", "XYTCZ"]),
              st.sampled_from(["SizeT", "SizeC", "SizeZ"]), st.integers(0, 5)),
    st.tuples(st.just("journal"), st.sampled_from(["timepoint", "volume", "ground_truth", "sources", "x"]),
              st.integers(-1, 6), JSON_VALUES, st.booleans()),
)


def _mutate(path: Path, mutation) -> None:
    kind = mutation[0]
    if kind in ("set", "delete"):
        try:
            doc = json.loads((path / JSON_NAME).read_text())
        except (OSError, ValueError):
            return  # an earlier mutation already destroyed the document
        paths = [p for p in _json_paths(doc) if p]
        if not paths:
            return
        target = paths[mutation[1] % len(paths)]
        parent = doc
        for key in target[:-1]:
            parent = parent[key]
        if kind == "set":
            parent[target[-1]] = mutation[2]
        else:
            del parent[target[-1]]
        (path / JSON_NAME).write_text(json.dumps(doc))
    elif kind == "truncate":
        file = path / mutation[1]
        if file.exists():
            _truncate(file, mutation[2])
    elif kind == "scribble":
        file = path / mutation[1]
        data = bytearray(file.read_bytes())
        if not data:
            return
        at = int(mutation[2] * (len(data) - 1))
        data[at : at + len(mutation[3])] = mutation[3]
        file.write_bytes(bytes(data))
    elif kind == "axes":
        file = path / mutation[1]
        try:
            with tifffile.TiffFile(file) as tif:
                root = ElementTree.fromstring(tif.ome_metadata)
            pixels = root.find(f"{OME}Image/{OME}Pixels")
            pixels.set("DimensionOrder", mutation[2])
            pixels.set(mutation[3], str(mutation[4]))
            tifffile.tiffcomment(file, comment=ElementTree.tostring(root, encoding="unicode"))
        except Exception:
            return  # missing, damaged or not OME after an earlier mutation
    else:
        _, op, index, entry, torn = mutation
        line = json.dumps({"op": op, "index": index, "entry": entry, "refined_source_um_xyz": entry}).encode()
        with open(path / JOURNAL_NAME, "ab") as journal:
            journal.write(line[: len(line) // 2] if torn else line + b"\n")


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    meta = make_meta(views=2)
    closed = root / "closed.fdt"
    write_recording(closed, meta, n=3, volumes=(0, 2))
    live = write_recording(root / "live.fdt", meta, n=3, volumes=(1,), close=False)
    interrupted = root / "interrupted.fdt"
    shutil.copytree(live.path, interrupted)
    live.close()
    return closed, interrupted


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base_index=st.integers(0, 1), mutations=st.lists(MUTATIONS, min_size=1, max_size=2))
def test_fuzzed_recordings_raise_only_recording_error(fuzz_bases, base_index, mutations):
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "fuzz.fdt"
        shutil.copytree(fuzz_bases[base_index], path)
        for mutation in mutations:
            _mutate(path, mutation)
        try:
            with Recording.open(path) as rec:
                for item in rec:
                    assert item.frames.shape == (rec.n_views, *rec.frame_shape)
                    rec.volume(item.index), rec.ground_truth(item.index)
        except RecordingError as exc:
            assert "\n" not in str(exc) and scratch in str(exc)


def test_a_simulation_never_replaces_a_measured_recording(tmp_path, meta):
    """``simulate --overwrite`` on a measured recording (no ``simulated`` mark) is refused
    before anything is rendered; the measurement stays as it was."""
    from nvplive.acquisition.offline import simulate_recording

    path = tmp_path / "real.fdt"
    write_recording(path, meta, n=1, truth=False)
    with pytest.raises(RecordingError, match=r"is a measured recording \(or one whose recording.json does not say it was simulated\).*even with --overwrite"):
        simulate_recording(path, phantom="cell", views=3, timepoints=1, shape_zyx=(4, 12, 12), overwrite=True)
    with open_recording(path) as rec:
        np.testing.assert_array_equal(rec.frames(0), frames_of(0, meta))
