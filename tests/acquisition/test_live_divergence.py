"""Reliability of the live pipeline (issue 7): a divergent reconstruction is rolled back,
flagged and reported, and the acquisition is unaffected."""

from __future__ import annotations

import threading

import numpy as np
from acq_helpers import tiny_core

from nvplive.acquisition.pipeline import FDTAcquisition, ReconstructionWorker, recording_meta
from nvplive.acquisition.recording import RecordingWriter, open_recording
from nvplive.recon.loop import IterationBudget
from nvplive.recon.reconstructor import ReconConfig, Reconstructor

CONFIG = ReconConfig(iterations=8, warm_budget=IterationBudget(4, stop_on_plateau=False), check_every=2, pupil_calibration=False,
                     depth_starts_um=(0.0,))  # live: no pupil calibration, one depth start (LIVE_CONFIG)


class SabotagedOnce(Reconstructor):
    """The project's reconstructor whose second update runs with an absurd learning rate
    (as a user could set from the GUI between timepoints); the others are sane."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def warm_update(self, frames, state=None, callback=None):
        self.calls += 1
        self.with_config(lr=1e30 if self.calls == 2 else CONFIG.lr)
        return super().warm_update(frames, state, callback)


def test_divergent_timepoint_is_flagged_and_acquisition_completes(tmp_path):
    """Each timepoint is handed over once the previous update is done, so that every one is
    reconstructed however slow the machine (the live path may skip; this test must not)."""
    core, info, scene = tiny_core(3)
    writer = RecordingWriter(tmp_path / "run.fdt", recording_meta(info))
    recon = SabotagedOnce(info.optics, info.geometry, info.sources_um_xyz, camera_offset=scene.camera.offset,
                          config=CONFIG, device="cpu")
    acq = FDTAcquisition(core, info, writer, timepoints=6, interval_s=0.4)
    worker = ReconstructionWorker(recon, writer)
    flagged_signals: list[tuple[int, str]] = []
    volumes: dict[int, np.ndarray] = {}
    done = threading.Semaphore(0)

    def ready(t: int, dn: np.ndarray, result: object) -> None:
        volumes[t] = dn
        done.release()

    def submit_after_the_previous(t: int, frames: np.ndarray) -> None:
        worker.submit(t, frames)
        done.acquire(timeout=120)  # a missing volume fails the assertions below

    worker.flagged.connect(lambda t, message: flagged_signals.append((t, message)))
    worker.volume_ready.connect(ready)
    acq.timepoint_complete.connect(submit_after_the_previous)
    worker.start()
    summary = acq.run()
    assert worker.finish(timeout=120)
    writer.close()

    assert summary.status == "completed" and summary.timepoints_complete == 6, summary.error
    assert recon.calls == 6 and worker.skipped == 0
    assert not worker.failed
    assert len(worker.flagged_timepoints) == 1
    bad = worker.flagged_timepoints[0]
    assert flagged_signals and flagged_signals[0][0] == bad and "rolled back" in flagged_signals[0][1]
    order = worker.reconstructed
    previous = order[order.index(bad) - 1]
    np.testing.assert_array_equal(volumes[bad], volumes[previous])  # the last good state
    records = {r.t: r for r in worker.records}
    assert records[bad].flagged and all(not records[t].flagged for t in order if t != bad)
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 6
        assert rec.volume_timepoints == tuple(order)
        assert rec.volume_settings[bad]["settings"]["flagged"] is True
        assert "rolled back" in rec.volume_settings[bad]["settings"]["message"]
        assert "flagged" not in rec.volume_settings[order[-1]]["settings"]
        last = rec.volume(order[-1])
        assert np.isfinite(last).all() and 0 < np.abs(last).max() < 1.0
