"""The acquisition trusts what the instrument reports (issue 14), on a real UniMMCore with the project's devices."""

from __future__ import annotations

import numpy as np
import pytest
from acq_helpers import tiny_core
from nvplive.acquisition.pipeline import FDTAcquisition, recording_meta
from nvplive.acquisition.recording import RecordingWriter, open_recording
from pymmcore_plus.core._metadata import Metadata


def _record(core, info, path, timepoints=2):
    with RecordingWriter(path, recording_meta(info), durable=False) as writer:
        summary = FDTAcquisition(core, info, writer, timepoints=timepoints).run()
    assert summary.ok, summary.error
    return open_recording(path)


@pytest.mark.parametrize("tags", [True, False], ids=["camera-tags", "no-camera-tags"])
def test_triggered_views_get_their_own_time_and_the_trigger_flag(tmp_path, monkeypatch, tags):
    """A sequence whose frames come without camera tags (as some adapters send them) still gets
    one increasing time per view (host clock at arrival) and ``hardware_triggered`` true."""
    core, info, _ = tiny_core(views=3, exposure_ms=50.0, triggered=True)
    if not tags:
        real_pop = core.popNextImageAndMD

        def pop_without_tags(*args):
            img, _ = real_pop(*args)
            return img, Metadata()

        monkeypatch.setattr(core, "popNextImageAndMD", pop_without_tags)
    rec = _record(core, info, tmp_path / "run.fdt")
    for t in range(2):
        stamps = rec.timestamps(t)
        meta = rec.frame_metadata(t)
        assert [m["hardware_triggered"] for m in meta] == [True] * 3
        assert [m["timestamp_source"] for m in meta] == ["camera" if tags else "host"] * 3
        assert np.all(np.diff(stamps) > 0), stamps  # never a copy of another view's time
        if tags:  # the camera's own times: frames at least one exposure apart
            assert np.all(np.diff(stamps) >= 0.05 - 1e-3), stamps
    rec.close()


def test_software_switched_views_say_they_were_not_triggered(tmp_path):
    core, info, _ = tiny_core(views=3, exposure_ms=5.0, triggered=False)
    rec = _record(core, info, tmp_path / "run.fdt", timepoints=1)
    meta = rec.frame_metadata(0)
    assert [m["hardware_triggered"] for m in meta] == [False] * 3
    assert [m["timestamp_source"] for m in meta] == ["host"] * 3
    assert np.all(np.diff(rec.timestamps(0)) > 0)
    rec.close()


@pytest.mark.parametrize("triggered", [True, False], ids=["hardware-triggered", "software-switched"])
def test_live_mode_is_stopped_before_the_acquisition_and_no_live_frame_gets_in(tmp_path, triggered):
    core, info, scene = tiny_core(views=3, exposure_ms=3.0, triggered=triggered)
    core.startContinuousSequenceAcquisition(0)
    assert core.isSequenceRunning()
    rec = _record(core, info, tmp_path / "run.fdt", timepoints=3)
    assert not core.isSequenceRunning()
    assert rec.n_timepoints == 3
    for t in range(3):  # every stored frame is the view it claims: the camera rendered that source
        assert [m["sim_view"] for m in rec.frame_metadata(t)] == [0, 1, 2]
    rec.close()
