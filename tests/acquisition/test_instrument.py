"""The acquisition trusts what the instrument reports (issue 14), on a real UniMMCore with the project's devices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from acq_helpers import tiny_core, tiny_scene
from pymmcore_plus.core._metadata import Metadata

from nvplive.acquisition import devices
from nvplive.acquisition.instrument import InstrumentCore
from nvplive.acquisition.microscope import apply_settings, load_settings, release_core
from nvplive.acquisition.offline import reconstructor_for
from nvplive.acquisition.pipeline import FDTAcquisition, recording_meta
from nvplive.acquisition.recording import RecordingWriter, open_recording
from nvplive.errors import AcquisitionError, ReconstructionError, RecordingError
from nvplive.recon.reconstructor import ReconConfig


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


# --------------------------------------------------------------------------- pixel size, binning
def _hardware_core(tmp_path, scene, pixel_size_um, **settings_changes):
    """A .cfg core (Python devices) with a pixel-size calibration, and its FDT settings file."""
    from test_hardware_config import WITH_SELECTOR, _cfg, _settings

    devices.set_default_scene(scene)
    core = InstrumentCore()
    core.loadSystemConfiguration(_cfg(tmp_path, WITH_SELECTOR))
    core.definePixelSizeConfig("Res")
    core.setPixelSizeUm("Res", pixel_size_um)
    core.setPixelSizeConfig("Res")
    settings = _settings(tmp_path, {"group": "Beads", "presets": ["bead-a", "bead-b", "bead-c"]}, **settings_changes)
    return core, settings


@pytest.fixture
def scene():
    s = tiny_scene(3)
    yield s
    devices.set_default_scene(None)


def test_pixel_size_calibration_that_disagrees_with_the_settings_is_refused(tmp_path, scene):
    core, settings = _hardware_core(tmp_path, scene, 0.1)  # settings: voxel 0.25 µm, binning 1
    try:
        with pytest.raises(AcquisitionError) as error:
            apply_settings(core, load_settings(settings))
        message = str(error.value)
        assert "camera pixel of 0.1 µm" in message and "0.25 µm" in message and "'Res'" in message
        assert message.count(".") >= 1 and "\n" not in message
    finally:
        release_core(core)


def test_the_instrument_pixel_size_wins_where_the_user_chose_so_and_the_recording_says_so(tmp_path, scene):
    core, settings = _hardware_core(tmp_path, scene, 0.2, prefer_instrument=True)
    try:
        info = apply_settings(core, load_settings(settings))
        assert info.geometry.voxel_um_zyx == (0.25, 0.2, 0.2)
        assert info.overrides == {"pixel_size_um": {"settings": 0.25, "instrument": 0.2}}
        rec = _record(core, info, tmp_path / "run.fdt", timepoints=1)
        assert rec.meta.camera.pixel_size_um == pytest.approx(0.2)
        assert rec.meta.geometry.voxel_um_zyx == (0.25, 0.2, 0.2)
        assert rec.meta.instrument["pixel_size_um"] == pytest.approx(0.2)
        assert rec.meta.instrument["overrides"]["pixel_size_um"] == {"settings": 0.25, "instrument": 0.2}
        rec.close()
    finally:
        release_core(core)


def test_binning_scales_the_reported_pixel_size(tmp_path, scene):
    """Calibration 0.125 µm per unbinned pixel, camera binning 2: a 0.25 µm pixel, as the settings say."""
    core, settings = _hardware_core(tmp_path, scene, 0.125)
    try:
        core.setProperty("Camera", "Binning", "2")
        # the scene's camera has 32×32 pixels of 0.25 µm; binned 2 it gives 16×16 frames
        doc = json.loads(settings.read_text())
        doc["volume"] = {"shape_zyx": [16, 32, 32], "voxel_um_zyx": [0.25, 0.125, 0.125], "camera_binning": 2}
        settings.write_text(json.dumps(doc))
        info = apply_settings(core, load_settings(settings))
        assert info.instrument.binning == 2 and info.instrument.pixel_size_um == pytest.approx(0.25)
        core.setProperty("Camera", "Binning", "1")  # now 0.125 µm pixels: the acquisition refuses to start
        summary = FDTAcquisition(core, info, _Sink(), timepoints=1).run()
        assert summary.status == "failed"
        assert "camera pixel of 0.125 µm" in summary.error and "binning 1" in summary.error
        assert "0.25 µm" in summary.error
    finally:
        release_core(core)


def test_demo_pixel_calibration_is_settable_and_checked_at_start(tmp_path):
    core, info, _ = tiny_core(views=3)
    assert info.instrument.pixel_size_um == pytest.approx(0.25) and info.instrument.pixel_size_config == "FDT-Demo"
    core.setPixelSizeUm("FDT-Demo", 0.1)
    summary = FDTAcquisition(core, info, _Sink(), timepoints=1).run()
    assert summary.status == "failed" and summary.timepoints_complete == 0
    assert "camera pixel of 0.1 µm" in summary.error and "0.25 µm" in summary.error
    with pytest.raises(AcquisitionError, match="camera pixel of 0.1 µm"):
        tiny_core(views=3, pixel_size_um=0.1)


def test_a_pixel_size_change_during_the_acquisition_ends_it(tmp_path):
    core, info, _ = tiny_core(views=3, exposure_ms=2.0, triggered=False)
    acquisition = FDTAcquisition(core, info, _Sink(), timepoints=4)

    def recalibrate(t, view, frame):
        if (t, view) == (1, 0):
            core.setPixelSizeUm("FDT-Demo", 0.3)

    acquisition.frame_written.connect(recalibrate)
    summary = acquisition.run()
    assert summary.status == "failed" and summary.timepoints_complete < 4
    assert "changed during the acquisition" in summary.error and "0.25 to 0.3" in summary.error


class _Sink:
    """Frames go nowhere (the instrument checks are under test, not the recording)."""

    def write_frame(self, *args) -> None:
        pass


# --------------------------------------------------------------------------- bit depth
def test_a_12_bit_camera_saturates_at_4095_and_the_recording_says_12_bits(tmp_path):
    core, info, scene = tiny_core(views=3, exposure_ms=150.0, bit_depth=12)
    assert core.getImageBitDepth() == 12 and info.camera_model.bit_depth == 12
    rec = _record(core, info, tmp_path / "run.fdt", timepoints=1)
    frames = rec.frames(0)
    assert frames.max() == 4095 and (frames == 4095).mean() > 0.05  # the camera's ADC clips at 2**12 − 1
    with pytest.raises(ReconstructionError, match="saturated"):  # and the reconstruction knows it
        reconstructor_for(rec.meta, ReconConfig(iterations=1, pupil_calibration=False), "cpu").cold_start(frames)
    assert rec.meta.camera.bit_depth == 12 and rec.meta.instrument["bit_depth"] == 12
    doc = json.loads((tmp_path / "run.fdt" / "recording.json").read_text())
    assert doc["camera"]["bit_depth"] == 12
    rec.close()


def test_saturation_is_judged_against_the_bit_depth(tmp_path):
    """14 % of a view's pixels at 4095 in uint16 frames: saturated for a 12-bit camera, not for a 16-bit one."""
    from nvplive.recon.reconstructor import Reconstructor

    core, info, scene = tiny_core(views=3)
    with _record(core, info, tmp_path / "run.fdt", timepoints=1) as rec:
        frames = rec.frames(0)
    release_core(core)
    assert frames.max() < 4095
    view = frames[1]
    view.reshape(-1)[np.argsort(view, axis=None)[-147:]] = 4095  # its brightest 147 of 1024 pixels, 14.4 %
    twelve = Reconstructor(info.optics, info.geometry, info.sources_um_xyz, camera_offset=100.0,
                           saturation_level=2**12 - 1, config=ReconConfig(iterations=1, pupil_calibration=False), device="cpu")
    with pytest.raises(ReconstructionError, match=r"View 1 is saturated \(14\.4 % of its pixels at 4095\)"):
        twelve.cold_start(frames)
    sixteen = Reconstructor(info.optics, info.geometry, info.sources_um_xyz, camera_offset=100.0,
                            saturation_level=2**16 - 1, config=ReconConfig(iterations=1, pupil_calibration=False), device="cpu")
    sixteen.cold_start(frames)  # 4095 is an ordinary count for a 16-bit camera


def test_old_recordings_without_a_bit_depth_read_as_16_bits(tmp_path):
    core, info, _ = tiny_core(views=3)
    path = tmp_path / "old.fdt"
    rec = _record(core, info, path, timepoints=1)
    rec.close()
    doc = json.loads((path / "recording.json").read_text())
    del doc["camera"]["bit_depth"], doc["instrument"]
    (path / "recording.json").write_text(json.dumps(doc))
    with open_recording(path) as old:
        assert old.meta.camera.bit_depth == 16 and old.meta.instrument is None


# --------------------------------------------------------------------------- one schema
@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["camera"].update(gian=1.0), 'field "camera.gian" is not part of the format'),
        (lambda d: d.update(comment="x"), 'field "comment" is not part of the format'),
        (lambda d: d["instrument"].update(bit_depth="12"), 'field "instrument.bit_depth": Input should be a valid integer'),
        (lambda d: d["instrument"].update(trigger_mode="maybe"), 'field "instrument.trigger_mode"'),
        (lambda d: d["volume"].update(voxel_um_zyx=[0.25, 0.2, 0.25]), "camera pixels are square"),
    ],
)
def test_recording_json_is_checked_by_the_schema_naming_file_and_field(tmp_path, edit, needle):
    core, info, _ = tiny_core(views=3)
    path = tmp_path / "run.fdt"
    _record(core, info, path, timepoints=1).close()
    doc = json.loads((path / "recording.json").read_text())
    edit(doc)
    (path / "recording.json").write_text(json.dumps(doc))
    with pytest.raises(RecordingError) as error:
        open_recording(path)
    assert str(error.value).startswith(str(path / "recording.json")) and needle in str(error.value)
