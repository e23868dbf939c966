"""The simulated microscope on pymmcore-plus: real MDA runs on the pure-Python devices."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest
from acq_helpers import chi2_per_pixel, tiny_core, tiny_scene

from nvplive.acquisition.devices import REFERENCE_EXPOSURE_MS, CameraFault, bin_sum
from nvplive.acquisition.microscope import DEMO_CAMERA, DEMO_SELECTOR, demo_camera, fdt_sequence
from nvplive.acquisition.pipeline import camera_metadata
from nvplive.errors import AcquisitionError

N_PIXELS = 32 * 32
# |mean residual| and |mean squared residual − 1| of 1024 unit-variance residuals
# stay far inside these bounds (5 standard errors).
MEAN_BOUND = 5.0 / np.sqrt(N_PIXELS)
CHI2_BOUND = 5.0 * np.sqrt(2.0 / N_PIXELS)


def _collect(core, scene):
    """Connect a frameReady listener; it records frame, event, metadata and what the camera rendered.

    In a triggered sequence the rendered frame's description comes from the camera's own
    per-image tags (``sim_*``), which stay right when the camera runs ahead of the listener.
    """
    got = []

    def on_frame(img, event, meta):
        if "camera_metadata" in meta:  # a triggered sequence: the camera's own tags of this image
            tags = camera_metadata(meta["camera_metadata"])
            rendered = SimpleNamespace(**{k.removeprefix("sim_"): v for k, v in tags.items() if k.startswith("sim_")})
        else:  # a snap: synchronous, so the scene's last frame is this one
            rendered = scene.last_frame
        got.append((np.array(img, copy=True), event, dict(meta), rendered))

    core.mda.events.frameReady.connect(on_frame)
    return got


@pytest.mark.parametrize("triggered", [True, False], ids=["hardware-triggered", "software-switched"])
def test_mda_delivers_every_view_in_order_and_matches_the_simulator(triggered):
    core, info, scene = tiny_core(views=3, exposure_ms=4.0, time_quantum_s=0.05, triggered=triggered)
    got = _collect(core, scene)
    core.mda.run(fdt_sequence(3, 3, 0.0, exposure_ms=4.0))
    assert {m.get("hardware_triggered", False) for *_, m, _ in got} == {triggered}

    assert [(e.index["t"], e.index["c"]) for _, e, _, _ in got] == [(t, v) for t in range(3) for v in range(3)]
    offset, read_noise = scene.camera.offset, scene.camera.read_noise
    for frame, event, meta, rendered in got:
        t, v = event.index["t"], event.index["c"]
        assert event.metadata["nvplive"] == {"view": v, "timepoint": t, "preset": f"Source-{v}"}
        assert meta["mda_event"].channel.config == f"Source-{v}"
        assert frame.dtype == np.uint16 and frame.shape == (32, 32)
        # the camera imaged the selected source, at the quantised sample time it reports
        assert rendered.view == v
        assert rendered.exposure_ms == pytest.approx(4.0)
        # the specimen is held, for all views, at a quantised time when the timepoint started
        first = next(r for _, e, _, r in got if e.index == {"t": t, "c": 0})
        assert rendered.sample_time_s == first.sample_time_s <= first.clock_time_s
        assert rendered.sample_time_s / 0.05 == pytest.approx(round(rendered.sample_time_s / 0.05))
        expected = scene.expected_frame(v, rendered.sample_time_s, exposure_ms=4.0)
        mean_r, chi2 = chi2_per_pixel(frame, expected, offset, read_noise)
        assert abs(mean_r) < MEAN_BOUND, (t, v, mean_r)
        assert abs(chi2 - 1.0) < CHI2_BOUND, (t, v, chi2)
        # …and not another source: that explanation is off by many standard deviations
        other = scene.expected_frame((v + 1) % 3, rendered.sample_time_s, exposure_ms=4.0)
        assert chi2_per_pixel(frame, other, offset, read_noise)[1] > 3.0
    # timestamps grow; the specimen was rendered once per quantum, not once per frame
    clocks = [r.clock_time_s for *_, r in got]
    assert clocks == sorted(clocks)
    assert scene.phantom_renders == len({r.sample_time_s for *_, r in got})
    assert scene.held_time_s is None  # released when the sequence finished


def test_without_hold_the_specimen_moves_between_views():
    clock = {"t": 0.0}
    core, info, scene = tiny_core(views=3, time_quantum_s=0.0, clock=lambda: clock["t"], triggered=False)
    core.mda.events.frameReady.connect(lambda *a: clock.update(t=clock["t"] + 0.1))
    core.mda.events.eventStarted.disconnect()  # no hold per timepoint
    got = _collect(core, scene)
    core.mda.run(fdt_sequence(3, 1))
    assert [r.sample_time_s for *_, r in got] == pytest.approx([0.0, 0.1, 0.2])
    assert scene.phantom_renders == 3


def test_specimen_is_rendered_once_per_time_quantum_for_all_views():
    clock = {"t": 0.37}
    core, info, scene = tiny_core(views=4, time_quantum_s=0.25, clock=lambda: clock["t"])
    got = _collect(core, scene)
    core.mda.run(fdt_sequence(4, 1))
    assert [r.sample_time_s for *_, r in got] == [0.25] * 4
    assert scene.phantom_renders == 1
    clock["t"] = 0.51
    core.mda.run(fdt_sequence(4, 1))
    assert got[-1][3].sample_time_s == pytest.approx(0.5)
    assert scene.phantom_renders == 2
    # the beating cell really changed between the two quanta
    assert np.abs(scene.dn_at(0.5) - scene.dn_at(0.25)).max() > 1e-3


def test_exposure_scales_photons_and_sets_the_frame_time():
    core, info, scene = tiny_core(views=2, clock=lambda: 0.0)
    core.setConfig(info.group, "Source-1")
    frames = {}
    for exposure in (5.0, 40.0):
        core.setExposure(exposure)
        start = time.perf_counter()
        core.snapImage()
        frames[exposure] = (core.getImage().copy(), time.perf_counter() - start)
    assert frames[40.0][1] >= 0.040  # a snap lasts at least the exposure
    signal = {e: f.astype(float).mean() - scene.camera.offset for e, (f, _) in frames.items()}
    assert signal[40.0] / signal[5.0] == pytest.approx(8.0, rel=0.03)
    expected = scene.expected_frame(1, 0.0, exposure_ms=40.0)
    np.testing.assert_allclose(expected, scene.expected_frame(1, 0.0) * 40.0 / REFERENCE_EXPOSURE_MS)
    mean_r, chi2 = chi2_per_pixel(frames[40.0][0], expected, scene.camera.offset, scene.camera.read_noise)
    assert abs(mean_r) < MEAN_BOUND and abs(chi2 - 1) < CHI2_BOUND


def test_binning_and_roi():
    core, info, scene = tiny_core(views=2, clock=lambda: 0.0, exposure_ms=2.0)
    core.setConfig(info.group, "Source-0")
    core.setProperty(DEMO_CAMERA, "Binning", "2")
    assert (core.getImageHeight(), core.getImageWidth()) == (16, 16)
    core.snapImage()
    binned = core.getImage()
    assert binned.shape == (16, 16)
    expected = scene.expected_frame(0, 0.0, exposure_ms=2.0, binning=2)
    np.testing.assert_allclose(expected.sum(), scene.expected_frame(0, 0.0, exposure_ms=2.0).sum())
    r = (binned - scene.camera.offset - expected) / np.sqrt(expected + scene.camera.read_noise**2)
    assert abs(r.mean()) < 5 / 16 and abs((r**2).mean() - 1) < 5 * np.sqrt(2 / 256)
    with pytest.raises(ValueError, match="Binning 3"):
        core.setProperty(DEMO_CAMERA, "Binning", "3")

    core.setProperty(DEMO_CAMERA, "Binning", 1)
    core.setROI(4, 2, 16, 8)
    core.snapImage()
    crop = core.getImage()
    assert crop.shape == (8, 16)
    full = scene.expected_frame(0, 0.0, exposure_ms=2.0)[2:10, 4:20]
    r = (crop - scene.camera.offset - full) / np.sqrt(full + scene.camera.read_noise**2)
    assert abs((r**2).mean() - 1) < 5 * np.sqrt(2 / 128)


def test_focus_stage_moves_the_focal_plane():
    core, info, scene = tiny_core(views=2, clock=lambda: 0.0)
    assert core.getFocusDevice() == info.focus
    core.setConfig(info.group, "Source-0")
    core.setPosition(1.5)
    assert core.getPosition() == pytest.approx(1.5) and scene.focus_um == pytest.approx(1.5)
    core.snapImage()
    frame = core.getImage().copy()
    in_focus = scene.expected_frame(0, 0.0, exposure_ms=2.0, focus_um=0.0)
    defocused = scene.expected_frame(0, 0.0, exposure_ms=2.0, focus_um=1.5)
    # the beads' photometry is kept, the image changes
    assert defocused.sum() == pytest.approx(in_focus.sum(), rel=0.1)
    assert np.abs(defocused - in_focus).max() > 10 * np.sqrt(in_focus.mean())
    offset, rn = scene.camera.offset, scene.camera.read_noise
    assert abs(chi2_per_pixel(frame, defocused, offset, rn)[1] - 1) < CHI2_BOUND
    assert chi2_per_pixel(frame, in_focus, offset, rn)[1] > 2.0


def test_source_selector_state_device():
    core, info, scene = tiny_core(views=3)
    assert core.getStateLabels(DEMO_SELECTOR) == ("Source-0", "Source-1", "Source-2")
    core.setState(DEMO_SELECTOR, 2)
    assert scene.source == 2 and core.getStateLabel(DEMO_SELECTOR) == "Source-2"
    core.setConfig(info.group, "Source-1")
    assert scene.source == 1 and core.getState(DEMO_SELECTOR) == 1


@pytest.mark.parametrize(
    ("triggered", "message"),
    [
        (False, "timepoint 1, view 1: sensor overheated"),
        (True, r"timepoint 1, view 1: its triggered sequence delivered 1 of 3 frames \(sensor overheated\)"),
    ],
    ids=["software-switched", "hardware-triggered"],
)
def test_camera_fault_stops_the_mda_with_an_acquisition_error(triggered, message, caplog):
    core, info, scene = tiny_core(views=3, triggered=triggered)
    got = _collect(core, scene)
    camera = demo_camera(core)
    camera.fail_after(4, "sensor overheated")
    with caplog.at_level(logging.ERROR, logger="nvplive.acquisition"):
        with pytest.raises(AcquisitionError, match=message):
            core.mda.run(fdt_sequence(3, 3))
    assert len(got) == 4
    if triggered:  # the camera's own error reaches the log
        assert "sensor overheated" in caplog.text
    with pytest.raises(CameraFault):
        camera.snap(np.empty((32, 32), np.uint16))
    camera.recover()
    got.clear()
    core.mda.run(fdt_sequence(3, 1))
    assert len(got) == 3


def test_each_timepoint_is_one_hardware_sequence_when_the_selector_is_sequenceable():
    started = {}
    for triggered in (True, False):
        core, info, scene = tiny_core(views=3, triggered=triggered)
        assert core.isPropertySequenceable(DEMO_SELECTOR, "Label") is triggered
        events = started[triggered] = []
        core.mda.events.eventStarted.connect(events.append)
        got = _collect(core, scene)
        core.mda.run(fdt_sequence(3, 2, 0.0))
        # every frame shows the source its event asked for, in either mode
        assert [r.view for *_, r in got] == [0, 1, 2, 0, 1, 2]
        assert [e.metadata["nvplive"]["view"] for _, e, _, _ in got] == [0, 1, 2, 0, 1, 2]
        assert not scene.source_sequence_armed  # the engine stopped the sequence
    # triggered: one camera sequence per timepoint (never spanning two); software: one snap per view
    assert [type(e).__name__ for e in started[True]] == ["SequencedEvent"] * 2
    assert [[sub.index["t"] for sub in e.events] for e in started[True]] == [[0, 0, 0], [1, 1, 1]]
    assert len(started[False]) == 6


def test_selector_sequence_steps_on_camera_exposures():
    core, info, scene = tiny_core(views=4, clock=lambda: 0.0)
    core.loadPropertySequence(DEMO_SELECTOR, "Label", ["Source-3", "Source-1"])
    core.startPropertySequence(DEMO_SELECTOR, "Label")
    views = []
    for _ in range(3):
        core.snapImage()
        views.append(scene.last_frame.view)
    core.stopPropertySequence(DEMO_SELECTOR, "Label")
    core.snapImage()
    assert views + [scene.last_frame.view] == [3, 1, 3, 3]  # cyclic; stopped: stays
    with pytest.raises(Exception, match="Source-9"):
        core.loadPropertySequence(DEMO_SELECTOR, "Label", ["Source-9"])


def test_bin_sum_adds_blocks():
    a = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(bin_sum(a, 2), [[10, 18], [42, 50]])
    with pytest.raises(AcquisitionError):
        bin_sum(np.ones((3, 4)), 2)


def test_sequence_shape_and_validation():
    seq = fdt_sequence(["A", "B"], 3, 0.5, group="G", exposure_ms=7.0)
    events = list(seq)
    assert [(e.index["t"], e.index["c"]) for e in events] == [(t, c) for t in range(3) for c in range(2)]
    assert [e.channel.config for e in events[:2]] == ["A", "B"]
    assert all(e.exposure == 7.0 and e.channel.group == "G" for e in events)
    assert [e.min_start_time for e in events[::2]] == [0.0, 0.5, 1.0]
    assert seq.metadata["nvplive"]["presets"] == ["A", "B"]
    with pytest.raises(AcquisitionError):
        fdt_sequence(3, 0)
    with pytest.raises(AcquisitionError):
        fdt_sequence(3, 2, -1.0)


def test_scene_quantum_validation():
    with pytest.raises(AcquisitionError):
        tiny_scene(time_quantum_s=-1.0)
