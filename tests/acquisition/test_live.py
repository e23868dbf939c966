"""The live session without a display: the app's configuration end to end, events, failure policy.

Everything is real: the simulated microscope (pymmcore-plus UniMMCore with the project's
devices), the recording writer, the project's Reconstructor behind the live
reconstructor, in the session's own threads. No Qt.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from acq_helpers import FAST, SHAPE, VOXEL

from nvplive.acquisition.live import (
    CONTINUOUS_TIMEPOINTS,
    LIVE_CONFIG,
    DemoOptions,
    LiveReconstructor,
    LiveSession,
    SessionEnd,
    VolumeUpdate,
    live_reconstructor,
    load_demo_microscope,
)
from nvplive.acquisition.recording import open_recording
from nvplive.recon.loop import LATENCY_ITERATION_CAP, IterationBudget
from nvplive.recon.phantoms import Cardiomyocyte
from nvplive.recon.reconstructor import ReconConfig

VIEWS = 3



@pytest.fixture
def microscope():
    scope = load_demo_microscope(VIEWS, 2.0, DemoOptions(SHAPE, VOXEL, FAST, seed=5))
    yield scope
    scope.close()


def _record_events(session: LiveSession) -> dict[str, list]:
    """Every emission of the session's events, by name, with the emitting thread's name."""
    seen: dict[str, list] = {}
    for name in ("frames", "timepoint", "progress", "volume", "reconstructed", "skipped", "flagged",
                 "reconstruction_error", "truth_error", "acquisition_error", "acquisition_finished", "closed"):
        getattr(session.events, name).connect(
            lambda *args, name=name: seen.setdefault(name, []).append((threading.current_thread().name, args))
        )
    return seen


def test_live_session_runs_headless_with_the_app_configuration(microscope, tmp_path):
    """The app's live path without the window: LIVE_CONFIG through the live reconstructor."""
    recon = live_reconstructor(microscope.info, LIVE_CONFIG, "cpu")
    session = LiveSession(microscope, recon, tmp_path / "live.fdt", timepoints=3, interval_s=0.3, durable=False)
    seen = _record_events(session)
    session.start()
    assert session.wait_closed(240), "the session did not end"

    end = seen["closed"][0][1][0]
    assert isinstance(end, SessionEnd) and end == session.end
    assert end.summary.status == "completed" and end.summary.timepoints_complete == 3 and not end.errors
    assert [args[0] for _, args in seen["timepoint"]] == [0, 1, 2]
    assert [args[0] for _, args in seen["frames"]] == [0, 1, 2]
    assert all(args[1].shape == (VIEWS, *SHAPE[1:]) for _, args in seen["frames"])
    # Emitted from the worker threads, never from the caller's.
    main = threading.main_thread().name
    assert {thread for _, thread_args in seen.items() for thread, _ in thread_args} - {main}
    assert all(thread != main for thread, _ in seen["volume"] + seen["timepoint"])

    # The app's configuration: a full cold start, then warm updates ended by the 1 s budget.
    updates: list[VolumeUpdate] = [args[0] for _, args in seen["volume"]]
    assert updates[0].t == 0 and not updates[0].warm and updates[0].iterations == LIVE_CONFIG.iterations
    assert len(updates) + len(seen.get("skipped", [])) == 3
    for update in updates[1:]:
        assert update.warm and update.stopped_by == "time"
    assert [args[0] for _, args in seen["reconstructed"]] == [u.t for u in updates]
    assert seen["progress"] and all(args[1] == LIVE_CONFIG.iterations for _, args in seen["progress"][:5])

    # Ground truth from the frames' own sample times; the volumes carry the live settings.
    phantom = Cardiomyocyte(SHAPE, VOXEL, seed=5)
    with open_recording(session.path) as rec:
        assert rec.n_timepoints == 3 and not rec.interrupted
        assert rec.ground_truth_timepoints == (0, 1, 2)
        for t in range(3):
            times = [m["sim_sample_time_s"] for m in rec.frame_metadata(t)]
            assert times == session.sample_times[t] and len(set(times)) == 1
            np.testing.assert_allclose(rec.ground_truth(t), phantom.at(times[0]), atol=1e-7)
        stored = rec.volume_settings[updates[-1].t]["settings"]
        assert stored["warm_budget"] == {"kind": "latency", "seconds": 1.0, "check_every": 1, "max_iterations": LATENCY_ITERATION_CAP}
        assert stored["iterations"] == 120
        assert stored["device"] == "cpu" and stored["warm_start"] is True


class _Mean:
    """A fast stand-in reconstructor: Δn from the mean frame (the session's contract is ``warm_update``)."""

    def __init__(self, shape):
        self.shape = shape

    def warm_update(self, frames):
        from types import SimpleNamespace

        dn = np.broadcast_to(1e-7 * frames.mean(axis=0, dtype=np.float64), self.shape).astype(np.float32)
        return SimpleNamespace(dn=dn, iterations=1, seconds=0.0, loss=0.0, losses=[0.0])


def test_a_failed_ground_truth_write_is_reported_and_the_acquisition_goes_on(microscope, tmp_path):
    """Failure policy: ground truth is secondary data; the frames and volumes keep coming."""
    def not_finite(_sample_time_s: float) -> np.ndarray:
        return np.full(SHAPE, np.nan, np.float32)  # a truth the writer refuses

    session = LiveSession(microscope, _Mean(SHAPE), tmp_path / "truthless.fdt", timepoints=3, interval_s=0.05,
                          durable=False, log_file=False, ground_truth=not_finite)
    seen = _record_events(session)
    session.start()
    assert session.wait_closed(120)
    assert session.end.summary.status == "completed" and session.end.summary.timepoints_complete == 3
    assert sorted(args[0] for _, args in seen["truth_error"]) == [0, 1, 2]
    assert all("ground truth of timepoint" in args[1] for _, args in seen["truth_error"])
    assert len(session.end.errors) == 3 and "acquisition_error" not in seen
    with open_recording(session.path) as rec:
        assert rec.n_timepoints == 3 and not rec.has_ground_truth and rec.volume_timepoints


def test_settings_requested_while_running_apply_before_the_next_update(microscope):
    recon = live_reconstructor(microscope.info, ReconConfig(iterations=4, warm_budget=IterationBudget(2), check_every=2, pupil_calibration=False,
                                                                  depth_starts_um=(0.0,)), "cpu")
    assert isinstance(recon, LiveReconstructor)
    offset = microscope.info.camera_model.offset
    frames = np.stack([offset + microscope.scene.expected_frame(v, 0.0, exposure_ms=2.0) for v in range(VIEWS)])
    first = recon.warm_update(frames)
    assert not first.warm and first.iterations == 4
    recon.request(warm_budget=IterationBudget(3), tv_weight=0.02)
    assert recon.config.warm_budget == IterationBudget(2) and recon.has_pending_changes  # not before the next update
    second = recon.warm_update(frames)
    assert second.warm and second.iterations == 3 and recon.config.tv_weight == 0.02
    recon.request(method="explicit")
    third = recon.warm_update(frames)
    assert not third.warm and recon.config.method == "explicit"  # a method change starts cold


def test_shutdown_cancels_the_update_in_progress_without_an_error(microscope, tmp_path):
    recon = live_reconstructor(microscope.info, LIVE_CONFIG, "cpu")
    session = LiveSession(microscope, recon, tmp_path / "closing.fdt", timepoints=CONTINUOUS_TIMEPOINTS, interval_s=0.2,
                          durable=False)  # runs until shut down, however slow the machine
    seen = _record_events(session)
    started = threading.Event()
    session.events.progress.connect(lambda *_: started.set())
    session.start()
    assert started.wait(120), "no reconstruction started"
    assert session.shutdown(timeout=60)
    assert session.end.summary.status == "aborted"
    assert "reconstruction_error" not in seen and not session.end.errors  # a cancelled update is not a failure
    with open_recording(session.path) as rec:
        assert rec.n_timepoints >= 1
