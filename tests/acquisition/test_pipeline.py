"""Live acquisition → disk → reconstruction: skipping, stop, abort, camera failure, kill -9."""

from __future__ import annotations

import logging
import textwrap
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from acq_helpers import kill_9, script_process, tiny_core

from nvplive.acquisition.microscope import demo_camera
from nvplive.acquisition.pipeline import FDTAcquisition, ReconstructionWorker, recording_meta
from nvplive.acquisition.recording import RecordingWriter, open_recording
from nvplive.errors import RecordingError
from nvplive.recon.loop import IterationBudget
from nvplive.recon.reconstructor import ReconConfig, Reconstructor


@dataclass
class Result:
    dn: np.ndarray
    iterations: int
    seconds: float
    loss: float


class MeanBackProjection:
    """A small honest reconstructor: Δn ∝ the mean background-subtracted image, smeared along z.

    ``gate``: if given, each update first waits for it (to hold the worker busy).
    """

    def __init__(self, shape_zyx, offset: float, sleep_s: float = 0.0, gate: threading.Event | None = None):
        self.shape = shape_zyx
        self.offset = offset
        self.sleep_s = sleep_s
        self.gate = gate
        self.started: list[float] = []

    @staticmethod
    def compute(frames: np.ndarray, shape_zyx, offset: float) -> np.ndarray:
        image = frames.astype(np.float64).mean(axis=0) - offset
        image = image / image.mean() - 1.0
        return np.broadcast_to(1e-3 * image, shape_zyx).astype(np.float32)

    def warm_update(self, frames: np.ndarray) -> Result:
        self.started.append(time.perf_counter())
        if self.gate is not None:
            assert self.gate.wait(30)
        start = time.perf_counter()
        time.sleep(self.sleep_s)
        dn = self.compute(frames, self.shape, self.offset)
        return Result(dn, 1, time.perf_counter() - start, float(np.abs(dn).mean()))


def _setup(tmp_path, views=3, *, exposure_ms=2.0, durable=False, **scene_options):
    core, info, scene = tiny_core(views, exposure_ms=exposure_ms, **scene_options)
    writer = RecordingWriter(tmp_path / "run.fdt", recording_meta(info), durable=durable)
    return core, info, scene, writer


def _capture(acq):
    events = {"frames": [], "complete": [], "errors": [], "finished": []}
    acq.frame_written.connect(lambda t, v, f: events["frames"].append((t, v, f.copy())))
    acq.timepoint_complete.connect(lambda t, frames: events["complete"].append(t))
    acq.error.connect(events["errors"].append)
    acq.finished.connect(events["finished"].append)
    return events


def test_mailbox_keeps_only_the_newest_pending_timepoint():
    gate = threading.Event()
    recon = MeanBackProjection((2, 4, 4), offset=0.0, gate=gate)
    worker = ReconstructionWorker(recon, method="mean", settings={})
    skipped = []
    worker.skipped_changed.connect(lambda t, total: skipped.append((t, total)))
    volumes = []
    worker.volume_ready.connect(lambda t, dn, result: volumes.append((t, dn)))
    worker.start()
    frames = {t: np.full((3, 4, 4), 10 + t, np.uint16) + np.eye(4, dtype=np.uint16) for t in range(4)}
    worker.submit(0, frames[0])
    deadline = time.time() + 10
    while not recon.started and time.time() < deadline:  # t=0 is being reconstructed
        time.sleep(0.005)
    for t in (1, 2, 3):
        worker.submit(t, frames[t])  # never blocks although the worker is busy
    assert skipped == [(1, 1), (2, 2)]
    gate.set()
    assert worker.finish(timeout=10)
    assert worker.reconstructed == [0, 3]
    assert worker.skipped == 2 and worker.skipped_timepoints == [1, 2]
    assert [t for t, _ in volumes] == [0, 3]
    np.testing.assert_allclose(volumes[1][1], MeanBackProjection.compute(frames[3], (2, 4, 4), 0.0))


def test_acquisition_faster_than_reconstruction_loses_nothing_on_disk(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=3)
    gate = threading.Event()  # holds the first reconstruction until the acquisition has ended
    recon = MeanBackProjection(info.geometry.shape_zyx, scene.camera.offset, gate=gate)
    acq = FDTAcquisition(core, info, writer, timepoints=8, interval_s=0.0)
    worker = ReconstructionWorker(recon, writer)
    acq.timepoint_complete.connect(worker.submit)

    def taken(t, frames) -> None:  # the worker has taken t=0 before t=1 is acquired
        deadline = time.monotonic() + 10
        while t == 0 and not recon.started and time.monotonic() < deadline:
            time.sleep(0.005)

    acq.timepoint_complete.connect(taken)
    events = _capture(acq)
    worker.start()
    summary = acq.run()  # returns while the worker is still held on its first update: it never waited
    assert len(recon.started) == 1
    gate.set()
    assert worker.finish(timeout=30)
    writer.close()

    assert summary.status == "completed" and summary.error is None
    assert summary.timepoints_complete == 8 and summary.frames_written == 24
    assert events["complete"] == list(range(8))
    # the reconstruction was slower than the acquisition: it skipped to the newest timepoint
    assert worker.skipped >= 1
    assert len(worker.reconstructed) + worker.skipped == 8 and not worker.failed
    assert worker.reconstructed[-1] == 7 and 0 in worker.reconstructed
    assert sorted(set(worker.reconstructed) | set(worker.skipped_timepoints)) == list(range(8))
    assert not set(worker.reconstructed) & set(worker.skipped_timepoints)
    assert worker.reconstructed == sorted(worker.reconstructed)
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 8 and not rec.interrupted
        for t, v, frame in events["frames"]:
            np.testing.assert_array_equal(rec.frame(t, v), frame)
        assert rec.volume_timepoints == tuple(worker.reconstructed)
        for t in worker.reconstructed:
            expected = MeanBackProjection.compute(rec.frames(t), info.geometry.shape_zyx, scene.camera.offset)
            np.testing.assert_allclose(rec.volume(t), expected, rtol=1e-6)
        assert rec.frame_metadata(3)[1]["sim_view"] == 1
        assert rec.frame_metadata(3)[1]["preset"] == "Source-1"


def test_live_reconstruction_with_the_real_reconstructor(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=3)
    recon = Reconstructor(
        info.optics, info.geometry, info.sources_um_xyz, camera_offset=scene.camera.offset,
        config=ReconConfig(iterations=8, warm_budget=IterationBudget(2), check_every=2, pupil_calibration=False,
                           depth_starts_um=(0.0,)), device="cpu",
    )
    acq = FDTAcquisition(core, info, writer, timepoints=5, interval_s=0.0)
    worker = ReconstructionWorker(recon, writer)
    acq.timepoint_complete.connect(worker.submit)
    worker.start()
    summary = acq.run()
    assert worker.finish(timeout=120)
    writer.close()
    assert summary.status == "completed"
    assert len(worker.reconstructed) + worker.skipped == 5 and not worker.failed
    assert worker.reconstructed[0] == 0 and worker.reconstructed[-1] == 4
    with open_recording(writer.path) as rec:
        assert rec.volume_timepoints == tuple(worker.reconstructed)
        assert rec.volume_settings[4]["method"] == "nvp"
        assert np.isfinite(rec.volume(4)).all() and np.abs(rec.volume(4)).max() > 0


def test_stop_mid_timepoint_finishes_that_timepoint(tmp_path, caplog):
    """...and the stop is ours to report: pymmcore-plus's "MDA Canceled: <the whole sequence>"
    warning is not logged."""
    core, info, scene, writer = _setup(tmp_path, views=3)
    acq = FDTAcquisition(core, info, writer, timepoints=20, interval_s=0.0)
    events = _capture(acq)
    acq.frame_written.connect(lambda t, v, f: acq.stop() if (t, v) == (2, 0) else None)
    caplog.set_level(logging.DEBUG, logger="pymmcore-plus")
    summary = acq.run()
    assert summary.status == "stopped" and summary.error is None
    assert not [r for r in caplog.records if "Canceled" in r.getMessage()]
    assert summary.timepoints_complete == 3 and summary.frames_written == 9
    assert [(t, v) for t, v, _ in events["frames"]][-3:] == [(2, 0), (2, 1), (2, 2)]
    with open_recording(writer.path) as rec:  # still open for writing: read as a crash would leave it
        assert rec.n_timepoints == 3
    writer.close()
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 3 and not rec.interrupted


def test_stop_while_waiting_between_timepoints_ends_promptly(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=2)
    acq = FDTAcquisition(core, info, writer, timepoints=10, interval_s=60.0)
    stopped_at = []

    def stop_soon(t, frames):
        if t == 0:
            stopped_at.append(time.perf_counter())
            threading.Timer(0.2, acq.stop).start()  # from another thread, during the wait

    acq.timepoint_complete.connect(stop_soon)
    acq.start()
    summary = acq.wait(30)
    assert summary is not None and summary.status == "stopped"
    assert time.perf_counter() - stopped_at[0] < 30.0  # did not wait out the 60 s interval
    assert summary.timepoints_complete == 1 and summary.frames_written == 2
    writer.close()
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 1


def test_stop_right_after_start_takes_no_frame(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=2)
    acq = FDTAcquisition(core, info, writer, timepoints=5, interval_s=0.0)
    acq.start()
    acq.stop()
    summary = acq.wait(30)
    assert summary is not None and summary.status == "stopped"
    assert summary.frames_written <= 2 and summary.frames_written % 2 == 0  # never a partial timepoint
    writer.close()


def test_abort_mid_timepoint_keeps_the_complete_timepoints(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=3)
    acq = FDTAcquisition(core, info, writer, timepoints=20, interval_s=0.0)
    events = _capture(acq)
    acq.frame_written.connect(lambda t, v, f: acq.abort() if (t, v) == (1, 1) else None)
    summary = acq.run()
    assert summary.status == "aborted" and summary.error is None
    assert summary.timepoints_complete == 1 and summary.frames_written == 5
    assert events["finished"] == [summary]
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 1 and rec.interrupted
        np.testing.assert_array_equal(rec.frames(0), np.stack([f for t, v, f in events["frames"][:3]]))
    writer.close()
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 1
        with pytest.raises(RecordingError, match="out of range"):
            rec.frames(1)


def test_camera_failure_stops_cleanly_with_an_error(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=3)
    demo_camera(core).fail_after(2 * 3 + 1, "USB link lost")
    acq = FDTAcquisition(core, info, writer, timepoints=10, interval_s=0.0)
    recon = MeanBackProjection(info.geometry.shape_zyx, scene.camera.offset)
    worker = ReconstructionWorker(recon, writer)
    acq.timepoint_complete.connect(worker.submit)
    events = _capture(acq)
    worker.start()
    acq.start()
    summary = acq.wait(30)
    assert worker.finish(timeout=30)
    assert summary is not None and summary.status == "failed" and not summary.ok
    assert events["errors"] == [summary.error]
    assert "camera failed at timepoint 2, view 1" in summary.error and "USB link lost" in summary.error
    assert summary.timepoints_complete == 2 and summary.frames_written == 7
    assert not core.mda.is_running()
    writer.close()
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 2
        assert rec.volume_timepoints[-1] == 1  # the reconstruction finished what was complete
        assert rec.frames(1).shape == (3, 32, 32)


def test_disk_write_failure_stops_the_acquisition(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=2)
    writer.close()  # a closed writer refuses frames, like a full or vanished disk
    acq = FDTAcquisition(core, info, writer, timepoints=5, interval_s=0.0)
    events = _capture(acq)
    summary = acq.run()
    assert summary.status == "failed" and summary.frames_written == 0
    assert "Could not write frame (timepoint 0, view 0)" in summary.error
    assert events["errors"] == [summary.error] and events["frames"] == []


def test_camera_frame_size_mismatch_is_refused(tmp_path):
    core, info, scene, writer = _setup(tmp_path, views=2)
    core.setProperty("FDTCamera", "Binning", "2")
    summary = FDTAcquisition(core, info, writer, timepoints=2).run()
    assert summary.status == "failed" and "16×16" in summary.error
    writer.close()


KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from dataclasses import dataclass
    import numpy as np, torch
    torch.set_num_threads(1)
    from nvplive.acquisition.demo import run_headless_demo
    from nvplive.recon.simulate import PartialCoherence

    @dataclass
    class Result:
        dn: np.ndarray
        iterations: int
        seconds: float
        loss: float

    class Mean:
        def __init__(self, info):
            self.shape = info.geometry.shape_zyx
        def warm_update(self, frames):
            time.sleep(0.05)
            image = frames.astype(np.float64).mean(axis=0)
            dn = np.broadcast_to(1e-6 * image, self.shape).astype(np.float32)
            return Result(dn, 1, 0.05, 0.0)

    run_headless_demo(sys.argv[1], 100000, views=3, shape=(16, 32, 32), interval_s=0.0, exposure_ms=2.0,
                      coherence=PartialCoherence(n_wavelengths=1, n_subsources=1), reconstructor_factory=Mean,
                      progress=lambda line: print(line, flush=True))
    """
)


def test_kill_9_of_a_headless_demo_keeps_every_complete_timepoint(tmp_path):
    script = tmp_path / "demo_script.py"
    script.write_text(KILLED_SCRIPT)
    path = tmp_path / "killed.fdt"
    with script_process(script, str(path)) as proc:
        deadline = time.time() + 60
        seen = 0
        while time.time() < deadline and proc.poll() is None:
            try:
                with open_recording(path) as rec:
                    seen = rec.n_timepoints
            except RecordingError:
                seen = 0
            if seen >= 4:
                break
            time.sleep(0.1)
        kill_9(proc)
        assert seen >= 4
    with open_recording(path) as rec:
        assert rec.interrupted and rec.n_timepoints >= seen
        n = rec.n_timepoints
        for t in range(n):
            frames = rec.frames(t)
            assert frames.shape == (3, 32, 32)
            assert frames.mean() > 100.0  # offset + photons: real frames, not zeros
            assert [m["sim_view"] for m in rec.frame_metadata(t)] == [0, 1, 2]
        assert set(rec.ground_truth_timepoints) <= set(range(n))
        assert len(rec.ground_truth_timepoints) >= n - 1
        truth = rec.ground_truth(rec.ground_truth_timepoints[0])
        assert truth.shape == (16, 32, 32) and truth.max() > 0.01
        assert set(rec.volume_timepoints) <= set(range(n))
