"""One writer per recording and atomic volume replacement (issue 16, findings 1-3).

Real second processes hold the recording; real kill -9 interrupts a reconstruction.
Each test asserts that nothing is lost or mislabelled and that a refusal is one
sentence naming the process that holds the recording.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import tifffile
from test_recording import OME, VIEWS, frames_of, make_meta, stamps_of, volume_of, write_recording

from nvplive.acquisition.pupil_file import PUPIL_FILE, read_pupil, read_pupil_file, write_pupil
from nvplive.acquisition.recording import (
    FRAMES_NAME,
    JOURNAL_NAME,
    JSON_NAME,
    VOLUMES_NAME,
    VOLUMES_PENDING_NAME,
    Recording,
    RecordingWriter,
    open_recording,
    recover_recording,
)
from nvplive.acquisition.recording_lock import LOCK_NAME, RecordingLock, lock_holder
from nvplive.acquisition.recording_writer import store_pupil
from nvplive.cli import main
from nvplive.errors import RecordingError, RecordingLockedError
from nvplive.recon.pupil import PupilParameters

HERE = str(Path(__file__).parent)

#: A live writer in another process: 2 timepoints, "ready", waits for a line on stdin, 3 more, closes.
LIVE_WRITER = r"""
import sys
sys.path.insert(0, sys.argv[2])
from test_recording import make_meta, frames_of, stamps_of
from nvplive.acquisition.recording import RecordingWriter

meta = make_meta()
with RecordingWriter(sys.argv[1], meta) as writer:
    for t in range(5):
        if t == 2:
            print("ready", flush=True)
            sys.stdin.readline()
        writer.write_timepoint(t, frames_of(t, meta), stamps_of(t, meta))
print("done", flush=True)
"""

#: An offline reconstruction in another process: replaces the volumes with timepoints 0..3 of "nvp, 150
#: iterations" (salt 300); "ready" after the first, then waits for a line on stdin (or is killed).
RECONSTRUCTION = r"""
import sys
sys.path.insert(0, sys.argv[2])
from test_recording import make_meta, volume_of
from nvplive.acquisition.recording import RecordingWriter

meta = make_meta()
with RecordingWriter.replace_volumes(sys.argv[1]) as writer:
    for t in range(4):
        writer.write_volume(t, volume_of(t, meta, salt=300), "nvp", {"iterations": 150})
        if t == 0:
            print("ready", flush=True)
            sys.stdin.readline()
print("done", flush=True)
"""


def start(script: str, path: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path), HERE],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        raise AssertionError(child.communicate()[1])
    return child


def finish(child: subprocess.Popen) -> None:
    out, err = child.communicate("go\n", timeout=60)
    assert child.returncode == 0 and out.strip() == "done", err


def one_sentence(text: str) -> str:
    """The error line of stderr (after the thread policy's line), checked to be one sentence."""
    text = "\n".join(line for line in text.strip().splitlines() if " CPU thread" not in line)
    assert text.count("\n") == 0 and "Traceback" not in text, text
    assert text.endswith("."), text
    return text


def assert_names_holder(message: str, child: subprocess.Popen, path: Path) -> None:
    assert f"process {child.pid} " in message
    assert "python" in message and " since " in message and "UTC" in message
    assert str(path) in message


def test_reconstruct_refuses_a_recording_being_written_and_no_frame_is_lost(tmp_path, capsys):
    """Finding 1: `reconstruct` on a live recording lost 9 of 15 timepoints."""
    path = tmp_path / "live.fdt"
    child = start(LIVE_WRITER, path)
    try:
        assert main(["reconstruct", str(path), "--iterations", "5", "--device", "cpu"]) == 2
        message = one_sentence(capsys.readouterr().err)
        assert message.startswith("nvplive: error: ") and "being written by" in message
        assert_names_holder(message, child, path)
        with pytest.raises(RecordingLockedError, match=f"process {child.pid} "):
            recover_recording(path)
        # a reader sees the complete timepoints so far, knows who writes, and changes nothing
        before = sorted(p.name for p in path.iterdir())
        with open_recording(path) as rec:
            assert rec.n_timepoints == 2 and rec.interrupted
            assert rec.writer["pid"] == child.pid
            np.testing.assert_array_equal(rec.frames(1), frames_of(1, make_meta()))
        assert sorted(p.name for p in path.iterdir()) == before
        assert (path / JOURNAL_NAME).exists()
    finally:
        finish(child)
    meta = make_meta()
    with open_recording(path) as rec:
        assert rec.n_timepoints == 5 and not rec.interrupted and rec.writer is None
        for t in range(5):
            np.testing.assert_array_equal(rec.frames(t), frames_of(t, meta))
            np.testing.assert_array_equal(rec.timestamps(t), stamps_of(t, meta))
    assert tifffile.imread(path / FRAMES_NAME).shape == (5, VIEWS, *meta.frame_shape)


def test_second_reconstruction_is_refused_and_labels_match_pixels(tmp_path, capsys):
    """Finding 2: a second `reconstruct` failed with an unclear message and mislabelled the volumes."""
    path = tmp_path / "twice.fdt"
    meta = make_meta()
    write_recording(path, meta)
    child = start(RECONSTRUCTION, path)
    try:
        assert main(["reconstruct", str(path), "--method", "explicit", "--iterations", "10", "--device", "cpu"]) == 2
        message = one_sentence(capsys.readouterr().err)
        assert_names_holder(message, child, path)
        with pytest.raises(RecordingLockedError, match="wait until it finishes"):
            RecordingWriter.replace_volumes(path)
        with open_recording(path) as rec:  # the old volumes stay readable while the new ones are written
            assert rec.volume_timepoints == (0, 2)
            np.testing.assert_array_equal(rec.volume(2), volume_of(2, meta))
    finally:
        finish(child)
    with open_recording(path) as rec:
        assert rec.volume_timepoints == (0, 1, 2, 3)
        for t in range(4):
            np.testing.assert_array_equal(rec.volume(t), volume_of(t, meta, salt=300))
            assert rec.volume_settings[t] == {"method": "nvp", "settings": {"iterations": 150}}
    with tifffile.TiffFile(path / VOLUMES_NAME) as tif:
        ome = ElementTree.fromstring(tif.pages[0].description)
    described = json.loads(ome.find(f"{OME}Image/{OME}Description").text)["volumes"]
    assert described == [{"timepoint": t, "method": "nvp", "settings": {"iterations": 150}} for t in range(4)]
    assert not (path / VOLUMES_PENDING_NAME).exists()


def test_kill_9_during_reconstruction_keeps_the_previous_volumes(tmp_path):
    """Finding 3: `reconstruct` deleted the previous volumes before it had new ones."""
    path = tmp_path / "done.fdt"
    meta = make_meta()
    write_recording(path, meta)
    child = start(RECONSTRUCTION, path)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    holder = json.loads((path / LOCK_NAME).read_text())
    assert holder["pid"] == child.pid  # the dead writer's description is still there: a stale lock
    assert lock_holder(path) is None
    with open_recording(path) as rec:
        assert not rec.interrupted and rec.writer is None
        assert rec.volume_timepoints == (0, 2)
        for t in (0, 2):
            np.testing.assert_array_equal(rec.volume(t), volume_of(t, meta))
            assert rec.volume_settings[t]["settings"]["iterations"] == 10 + t
    # the stale lock is taken over; the next run replaces the volumes
    with RecordingWriter.replace_volumes(path) as writer:
        assert writer.stale_lock["pid"] == child.pid
        assert not (path / VOLUMES_PENDING_NAME).exists()  # the dead run's partial file is gone
        writer.write_volume(1, volume_of(1, meta, salt=9), "explicit", {})
    with open_recording(path) as rec:
        assert rec.volume_timepoints == (1,) and rec.volume_settings[1]["method"] == "explicit"
        np.testing.assert_array_equal(rec.volume(1), volume_of(1, meta, salt=9))
    assert (path / LOCK_NAME).read_text() == ""  # released


def test_failed_run_keeps_the_previous_volumes(tmp_path):
    path = tmp_path / "fail.fdt"
    meta = make_meta()
    write_recording(path, meta)
    with pytest.raises(ZeroDivisionError):
        with RecordingWriter.replace_volumes(path) as writer:
            writer.write_volume(0, volume_of(0, meta, salt=1), "explicit", {})
            1 / 0
    with open_recording(path) as rec:
        assert rec.volume_timepoints == (0, 2) and rec.volume_settings[0]["method"] == "nvp"
        np.testing.assert_array_equal(rec.volume(0), volume_of(0, meta))
    assert not (path / VOLUMES_PENDING_NAME).exists() and lock_holder(path) is None


def _strip_offset_entry(path: Path, page: int) -> int:
    with tifffile.TiffFile(path) as tif:
        return tif.pages[page].tags["StripOffsets"].offset


def test_damaged_middle_page_is_reported_before_anything_is_replaced(tmp_path, capsys):
    """Finding 3: a bad strip offset was found only after new volumes were written, and the old ones were lost."""
    path = tmp_path / "damaged.fdt"
    meta = make_meta()
    write_recording(path, meta)
    entry = _strip_offset_entry(path / FRAMES_NAME, 5)
    with open(path / FRAMES_NAME, "r+b") as f:  # BigTIFF tag entry: code, type, count, then the value
        f.seek(entry + 12)
        f.write(struct.pack("<Q", 2**40))
    before = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != LOCK_NAME}
    assert main(["reconstruct", str(path), "--iterations", "2", "--device", "cpu"]) == 2
    message = one_sentence(capsys.readouterr().err)
    assert "frames.ome.tif" in message and "page 5 " in message
    after = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != LOCK_NAME}
    assert after == before


def test_commit_interrupted_after_its_commit_point_rolls_forward(tmp_path, monkeypatch):
    """Killed between the commit line and the end, a reader sees the new volumes with their labels."""
    path = tmp_path / "commit.fdt"
    meta = make_meta()
    write_recording(path, meta)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    writer = RecordingWriter.replace_volumes(path)
    writer.write_volume(3, volume_of(3, meta, salt=42), "triplane", {"iterations": 7})
    writer.update_sources(np.array(meta.sources_um_xyz) + 0.5)
    monkeypatch.setattr(os, "replace", killed)  # the process "dies" at the rename
    with pytest.raises(KeyboardInterrupt):
        writer._commit_replacement()
    monkeypatch.undo()
    writer._lock.release()
    assert (path / VOLUMES_PENDING_NAME).exists() and (path / JOURNAL_NAME).exists()
    with open_recording(path) as rec:
        assert rec.volume_timepoints == (3,) and rec.volume_settings[3]["method"] == "triplane"
        np.testing.assert_array_equal(rec.volume(3), volume_of(3, meta, salt=42))
        np.testing.assert_allclose(rec.meta.refined_sources_um_xyz, np.array(meta.sources_um_xyz) + 0.5)
    assert recover_recording(path) is True
    assert not (path / VOLUMES_PENDING_NAME).exists() and not (path / JOURNAL_NAME).exists()
    with open_recording(path) as rec:
        assert rec.volume_timepoints == (3,) and not rec.interrupted
        np.testing.assert_array_equal(rec.volume(3), volume_of(3, meta, salt=42))


def test_the_recordings_pupil_is_written_only_by_its_writer(tmp_path):
    """pupil.json is written through the writer holding the recording's lock: write_pupil refuses
    a recording folder, store_pupil (no writer open) waits for nobody and is refused while a
    writer holds the lock, a closed writer refuses; each write is whole (atomic, no temporary left)."""
    path = tmp_path / "pupil.fdt"
    meta = make_meta()
    pupil = PupilParameters((0.0, 0.0, 0.0, 0.2, -0.1), (-0.1,))
    writer = RecordingWriter(path, meta)
    with pytest.raises(RecordingError, match="is inside the recording .*whose files only nvplive writes"):
        write_pupil(path, pupil, meta.optics, calibrated_from="test", method="frames")
    with pytest.raises(RecordingLockedError, match="being written by process"):
        store_pupil(path, pupil, meta.optics, calibrated_from="test", method="frames")
    assert not (path / PUPIL_FILE).exists()
    written = writer.write_pupil(pupil, meta.optics, calibrated_from="bead z-stack", method="bead-z-stack",
                                 fitted_noll=(5, 6), residual=0.1, residual_before=0.3)
    assert written == path / PUPIL_FILE and read_pupil(path) == pupil
    assert read_pupil_file(path).residual_before == 0.3
    writer.write_timepoint(0, frames_of(0, meta), stamps_of(0, meta))
    writer.close()
    with pytest.raises(RecordingError, match="closed"):
        writer.write_pupil(pupil, meta.optics, calibrated_from="test", method="frames")
    later = PupilParameters((0.0, 0.0, 0.0, 0.3))
    assert store_pupil(path, later, meta.optics, calibrated_from="frames", method="frames") == path / PUPIL_FILE
    assert read_pupil(path) == later and lock_holder(path) is None
    assert not [p.name for p in path.iterdir() if "tmp" in p.name]
    with pytest.raises(RecordingError, match="not a recording folder"):
        store_pupil(tmp_path, later, meta.optics, calibrated_from="frames", method="frames")
    with Recording.open(path) as rec:
        assert rec.n_timepoints == 1


def test_lock_rules_in_one_process(tmp_path):
    path = tmp_path / "rules.fdt"
    meta = make_meta()
    writer = RecordingWriter(path, meta)
    assert lock_holder(path)["pid"] == os.getpid()
    with pytest.raises(RecordingLockedError, match="being written by process"):
        RecordingLock(path).acquire()
    with pytest.raises(RecordingLockedError):
        RecordingWriter(path, meta, overwrite=True)  # never deletes a recording being written
    writer.write_timepoint(0, frames_of(0, meta), stamps_of(0, meta))
    writer.close()
    assert lock_holder(path) is None
    with pytest.raises(RecordingError, match="choose another name") as info:
        RecordingWriter(path, meta)
    assert "overwrite=True" not in str(info.value)
    assert json.loads((path / JSON_NAME).read_text())["closed"] is True
    with Recording.open(path) as rec:
        assert rec.n_timepoints == 1


@pytest.mark.parametrize("name", [FRAMES_NAME, VOLUMES_NAME, "ground_truth.ome.tif"])
def test_one_byte_cut_from_the_ome_xml_tail_loses_nothing(tmp_path, name, capfd):
    """Finding 5: one byte cut from the end of frames.ome.tif (its OME-XML) made the recording unopenable."""
    path = tmp_path / "cut.fdt"
    meta = make_meta()
    write_recording(path, meta)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[:-1])
    with open_recording(path) as rec:
        assert rec.damaged_tails == (name,) and not rec.interrupted
        assert rec.n_timepoints == 4 and rec.volume_timepoints == (0, 2)
        for t in range(4):
            np.testing.assert_array_equal(rec.frames(t), frames_of(t, meta))
            np.testing.assert_array_equal(rec.ground_truth(t), volume_of(t, meta, salt=5000))
        np.testing.assert_array_equal(rec.volume(2), volume_of(2, meta))
    assert capfd.readouterr().err == ""  # no tifffile warnings around the reader
    assert recover_recording(path) is True
    with open_recording(path) as rec:
        assert rec.damaged_tails == () and rec.n_timepoints == 4
        np.testing.assert_array_equal(rec.frames(3), frames_of(3, meta))
    with tifffile.TiffFile(path / name) as tif:  # OME readers see the axes again
        assert tif.is_ome and tif.series[0].axes in ("TCYX", "TZYX")
    assert recover_recording(path) is False


def test_kill_9_of_the_reconstruct_command_keeps_the_previous_volumes(tmp_path):
    """Finding 3 as reported: `nvplive reconstruct done.fdt & sleep 3; kill -9 $!` lost the earlier volumes."""
    import time

    from nvplive.acquisition.offline import simulate_recording

    path = simulate_recording(tmp_path / "done.fdt", phantom="cell", views=3, timepoints=3, shape_zyx=(8, 24, 24))
    with RecordingWriter.replace_volumes(path) as writer:  # "the finished reconstruction of the earlier run"
        for t in range(3):
            writer.write_volume(t, np.full((8, 24, 24), 0.01 * (t + 1), np.float32), "explicit", {"run": "earlier"})
    child = subprocess.Popen(
        [sys.executable, "-m", "nvplive", "reconstruct", str(path), "--iterations", "10", "--warm-iterations", "2000",
         "--no-pupil-calibration", "--device", "cpu", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (path / VOLUMES_PENDING_NAME).exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the new run has begun writing its volumes
        assert child.poll() is None, child.communicate()[1].decode()
        assert lock_holder(path)["pid"] == child.pid
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    with open_recording(path) as rec:
        assert rec.volume_timepoints == (0, 1, 2) and not rec.interrupted and rec.writer is None
        for t in range(3):
            np.testing.assert_array_equal(rec.volume(t), np.full((8, 24, 24), 0.01 * (t + 1), np.float32))
            assert rec.volume_settings[t] == {"method": "explicit", "settings": {"run": "earlier"}}


FALLBACK_HOLDER = r"""
import sys
import nvplive.acquisition.recording_lock as recording_lock
recording_lock.fcntl = None  # as on a system without fcntl.flock: the filelock library's lock
lock = recording_lock.RecordingLock(sys.argv[1]).acquire()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_filelock_fallback_refuses_a_second_writer_and_frees_on_kill(tmp_path, monkeypatch):
    """The documented fallback where fcntl.flock is missing: filelock's OS lock on .lock.os."""
    import nvplive.acquisition.recording_lock as recording_lock

    path = tmp_path / "fallback.fdt"
    write_recording(path, make_meta())
    monkeypatch.setattr(recording_lock, "fcntl", None)
    child = start(FALLBACK_HOLDER, path)
    try:
        with pytest.raises(RecordingLockedError, match=f"process {child.pid} "):
            RecordingLock(path).acquire()
        assert lock_holder(path)["pid"] == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    with RecordingLock(path) as lock:  # the dead holder's lock is taken over
        assert lock.stale["pid"] == child.pid
    assert (path / (LOCK_NAME + ".os")).exists()


def test_calibrating_into_a_recording_being_written_is_refused_before_the_fit(tmp_path):
    """``nvplive calibrate REC.fdt`` writes REC's pupil.json: while another writer holds the
    recording, it is refused before the fit (it used to fit for minutes, then be refused)."""
    from nvplive.acquisition.offline import calibrate_recording

    path = tmp_path / "busy.fdt"
    meta = make_meta()
    writer = RecordingWriter(path, meta)
    writer.write_timepoint(0, frames_of(0, meta), stamps_of(0, meta))
    reported = []
    with pytest.raises(RecordingLockedError, match="being written by process"):
        calibrate_recording(path, device="cpu", progress=lambda *update: reported.append(update))
    assert reported == [] and not (path / PUPIL_FILE).exists()
    writer.close()


def test_calibrating_a_recording_holds_its_lock_through_the_fit(tmp_path):
    """While ``calibrate REC.fdt`` fits, REC is locked: a writer that starts then is refused
    (not the calibration's write at the end). The calibration is cancelled there (its
    callback raises): nothing is written and the lock is free again."""
    from nvplive.acquisition.offline import calibrate_recording

    path = tmp_path / "calibrated.fdt"
    meta = make_meta()
    with RecordingWriter(path, meta) as writer:
        writer.write_timepoint(0, frames_of(0, meta), stamps_of(0, meta))
    refusals: list[str] = []

    def try_to_write(*_update) -> None:
        with pytest.raises(RecordingLockedError) as refused:
            RecordingLock(path).__enter__()
        refusals.append(str(refused.value))
        raise KeyboardInterrupt  # cancel: the user stops the fit

    with pytest.raises(KeyboardInterrupt):
        calibrate_recording(path, device="cpu", progress=try_to_write)
    assert len(refusals) == 1 and "being written by process" in refusals[0]
    assert not (path / PUPIL_FILE).exists()
    with RecordingLock(path):
        pass


def test_a_folder_that_is_not_a_recording_is_refused_and_left_as_it_was(tmp_path, capsys):
    """reconstruct, and the recovery, on a plain folder (no recording.json) refuse in one
    sentence and write nothing there: no lock file is left behind in someone's data folder."""
    from nvplive.cli import main

    plain = tmp_path / "data"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    assert main(["reconstruct", str(plain), "--device", "cpu"]) == 2
    assert f"{plain / 'recording.json'}: file is missing; {plain} is not an nvp-live recording." in capsys.readouterr().err
    with pytest.raises(RecordingError, match="is not an nvp-live recording"):
        recover_recording(plain)
    assert sorted(p.name for p in plain.iterdir()) == ["notes.txt"]
