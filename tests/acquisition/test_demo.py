"""The headless demo end to end: simulated microscope, real Reconstructor, a readable result."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from acq_helpers import FAST, SHAPE, VOXEL

from nvplive.acquisition.demo import STOP_WORDS, default_reconstructor_factory, recording_path, run_headless_demo
from nvplive.acquisition.microscope import build_demo_core
from nvplive.acquisition.recording import open_recording
from nvplive.errors import RecordingError
from nvplive.recon.loop import IterationBudget
from nvplive.recon.phantoms import Cardiomyocyte
from nvplive.recon.reconstructor import ReconConfig, Reconstructor


def small_reconstructor(info):
    return Reconstructor(
        info.optics, info.geometry, info.sources_um_xyz,
        camera_offset=info.camera_model.offset, camera_gain=info.camera_model.gain,
        config=ReconConfig(iterations=8, warm_budget=IterationBudget(2), check_every=2, pupil_calibration=False,
                            depth_starts_um=(0.0,)),  # as live (LIVE_CONFIG)
        device="cpu",
    )


def test_headless_demo_writes_frames_truth_and_live_volumes(tmp_path):
    lines: list[str] = []
    result = run_headless_demo(
        tmp_path, 4, views=3, shape=SHAPE, voxel_um=VOXEL, interval_s=0.15, exposure_ms=2.0, seed=3,
        coherence=FAST, reconstructor_factory=small_reconstructor, progress=lines.append, durable=False,
    )
    assert result.path.parent == tmp_path and re.fullmatch(r"demo-\d{8}-\d{6}\.fdt", result.path.name), result.path
    assert result.acquisition.status == "completed" and result.acquisition.timepoints_complete == 4
    assert [tp.t for tp in result.timepoints] == [0, 1, 2, 3]
    assert result.reconstructed[0] == 0 and result.reconstructed[-1] == 3
    assert len(result.reconstructed) + result.skipped == 4 and not result.reconstruction_errors
    for tp in result.timepoints:
        assert tp.acquisition_s > 0
        assert (tp.latency_s is not None) == tp.reconstructed
    # each timepoint shows the cell when its first view was taken (held for all views)
    sample_times = [tp.sample_time_s for tp in result.timepoints]
    assert all(t * 0.15 - 0.011 <= st for t, st in enumerate(sample_times))  # not before its start time
    assert sample_times == sorted(set(sample_times))
    assert any("t=3 reconstructed" in line for line in lines)
    assert "Reconstructed" in result.report() and "skipped" in result.report()
    # each update says what ended it; an acquisition slower than its interval is said
    assert all(tp.stopped_by in STOP_WORDS for tp in result.timepoints if tp.reconstructed)
    assert "stopped by" in result.report()
    assert "Acquisition took longer than the 0.000 s interval at 4 of 4 timepoints" in replace(result, interval_s=1e-9).report()

    phantom = Cardiomyocyte(SHAPE, VOXEL, seed=3)
    with open_recording(result.path) as rec:
        assert rec.n_timepoints == 4 and rec.n_views == 3 and not rec.interrupted
        assert rec.ground_truth_timepoints == (0, 1, 2, 3)
        firsts = [rec.frame_metadata(tp.t)[0]["sim_clock_time_s"] for tp in result.timepoints]
        for i, tp in enumerate(result.timepoints):
            np.testing.assert_allclose(rec.ground_truth(tp.t), phantom.at(tp.sample_time_s), atol=1e-7)
            assert [m["sim_sample_time_s"] for m in rec.frame_metadata(tp.t)] == [tp.sample_time_s] * 3
            # held when its first view started: not after that view, and before the next timepoint's sample
            assert tp.sample_time_s <= firsts[i]
            if i + 1 < len(result.timepoints):
                assert firsts[i] < result.timepoints[i + 1].sample_time_s
        assert rec.volume_timepoints == tuple(result.reconstructed)
        assert rec.volume_settings[3]["settings"]["warm_budget"]["iterations"] == 2
        assert rec.meta.extra["simulated"] is True and rec.meta.extra["phantom"] == "Cardiomyocyte"
        stamps = np.concatenate([rec.timestamps(t) for t in range(4)])
        assert np.all(np.diff(stamps) > 0)
        assert rec.timestamps(3)[0] >= 0.45  # the interval was respected
        # the cell beat (systole in the first 0.4 s): the truth is not one frozen volume
        assert max(np.abs(rec.ground_truth(t) - rec.ground_truth(0)).max() for t in (1, 2)) > 1e-3


def test_demo_refuses_to_overwrite_an_existing_result(tmp_path):
    (tmp_path / "demo.fdt").mkdir()
    with pytest.raises(RecordingError, match="already exists"):
        run_headless_demo(tmp_path / "demo.fdt", 1, views=3, shape=SHAPE, voxel_um=VOXEL, interval_s=0.0, coherence=FAST,
                          reconstructor_factory=small_reconstructor)


def test_a_demo_folder_gets_a_new_recording_name_each_time(tmp_path):
    first = recording_path(tmp_path)
    first.mkdir()
    second = recording_path(tmp_path)
    assert second != first and second.parent == tmp_path and not second.exists()
    assert recording_path(tmp_path / "mine.fdt") == tmp_path / "mine.fdt"  # a name given is used as it is


def test_default_reconstructor_matches_the_microscope():
    core, info = build_demo_core(shape_zyx=SHAPE, voxel_um_zyx=VOXEL, views=3, coherence=FAST)
    recon = default_reconstructor_factory("cpu")(info).inner  # the live reconstructor's Reconstructor
    assert isinstance(recon, Reconstructor) and recon.n_views == 3
    assert recon.camera_offset == info.camera_model.offset and recon.optics == info.optics
    # the same volume (built through the recording's metadata, which states the focal plane)
    g, h = recon.geometry, info.geometry
    assert (g.shape_zyx, g.voxel_um_zyx, g.focal_z_um, g.camera_binning) == (h.shape_zyx, h.voxel_um_zyx, h.focal_z_um, h.camera_binning)
    np.testing.assert_allclose(recon.nominal_sources, info.sources_um_xyz)
    core.unloadAllDevices()
