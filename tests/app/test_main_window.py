"""The main window in a real display: the demo end to end, live settings, errors, replay, exports.

Everything runs for real: the simulated microscope (pymmcore-plus + simulated
devices), the recording writer, the project's Reconstructor in its worker
thread, the vispy 3D canvas. Sizes are tiny (16×32×32 voxels, 3 views, one
wavelength, a few iterations) so the file runs in well under two minutes on two
shared cores.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageSequence
from PySide6 import QtCore

from nvplive.acquisition.bead_stack import FIT_STEPS, BeadStackPlan
from nvplive.acquisition.live import DemoOptions
from nvplive.acquisition.microscope import demo_camera
from nvplive.acquisition.offline import simulate_recording
from nvplive.acquisition.pupil_file import read_pupil, read_pupil_file, write_pupil
from nvplive.acquisition.recording import open_recording
from nvplive.app.main_window import MainWindow
from nvplive.recon.loop import IterationBudget, LatencyBudget
from nvplive.recon.optics import Optics
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.reconstructor import ReconConfig
from nvplive.recon.simulate import Instrument, PartialCoherence

SHAPE = (16, 32, 32)
VOXEL = (0.25, 0.25, 0.25)
FAST = PartialCoherence(n_wavelengths=1, n_subsources=1)
VIEWS = 3
TINY_CONFIG = ReconConfig(iterations=8, warm_budget=IterationBudget(2), check_every=2, pupil_calibration=False,
                          depth_starts_um=(0.0,))  # as live



@pytest.fixture
def settings_file(tmp_path) -> Path:
    return tmp_path / "settings.ini"


@pytest.fixture
def make_window(qtbot, tmp_path, settings_file):
    """Factory: a shown main window on the tiny simulated microscope (closed after the test)."""
    windows: list[MainWindow] = []

    def make(timepoints: int = 6, interval_s: float = 0.3, **kwargs) -> MainWindow:
        qsettings = QtCore.QSettings(str(settings_file), QtCore.QSettings.Format.IniFormat)
        options = dict(
            demo=True,
            device="cpu",
            timepoints=timepoints,
            interval_s=interval_s,
            demo_options=DemoOptions(SHAPE, VOXEL, FAST, seed=1),
            recon_config=TINY_CONFIG,
            qsettings=qsettings,
            scratch_dir=tmp_path / "scratch",
            durable=False,
        )
        options.update(kwargs)
        window = MainWindow(**options)
        window.acquisition_panel.views.setValue(VIEWS)
        window.acquisition_panel.save_dir.set_text(str(tmp_path / "recordings"))
        qtbot.addWidget(window)
        window.resize(1280, 800)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()


def _wait_closed(qtbot, window: MainWindow, timeout_ms: int = 60_000) -> None:
    qtbot.waitUntil(lambda: not window.loading and window.session is None, timeout=timeout_ms)


def _picture(window: MainWindow) -> np.ndarray:
    return window.volume_view.snapshot()[..., :3].astype(np.int32)


def test_demo_runs_end_to_end_frames_volumes_and_responsive(make_window, qtbot, stats, tmp_path):
    window = make_window(timepoints=0, interval_s=0.4)  # continuous: stopped below
    assert window.volume_view.placeholder.visible  # the 3D view says why it is empty
    blank = _picture(window)

    ticks: list[float] = []
    probe = QtCore.QTimer()
    probe.setInterval(10)
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    probe.start()

    window.start_acquisition(record=True)
    # where the camera's frames and the volumes are made: never on the GUI thread
    workers: dict[str, set[str]] = {"frames": set(), "volumes": set()}
    watched = None
    pictures: dict[int, np.ndarray] = {}
    busy: list[tuple[float, float]] = []  # the test's own snapshot renders (GUI thread)
    frames_seen: set[int] = set()
    finishing: list[str] = []  # the header after the acquisition ended, before the session closed
    deadline = time.perf_counter() + 90
    while (window.session is not None or window.loading) and time.perf_counter() < deadline:
        qtbot.wait(20)
        if window.session is not None and window.session is not watched:  # the session opens in the background
            watched = window.session
            watched.acquisition.frame_written.connect(lambda *_: workers["frames"].add(threading.current_thread().name))
            watched.worker.volume_ready.connect(lambda *_: workers["volumes"].add(threading.current_thread().name))
        if window.model.view.frames_t is not None:
            frames_seen.add(window.model.view.frames_t)
        t = window.model.view.volume_t
        if t is not None and t not in pictures:
            start = time.perf_counter()
            pictures[t] = _picture(window)
            busy.append((start, time.perf_counter()))
        if len(pictures) >= 3 and len(frames_seen) >= 4 and window.acquiring:
            window.stop_acquisition()
        if window.session is not None and window.acquisition_panel.state_label.text().startswith("Acquisition ended"):
            finishing.append(window.mode_label.text())  # ended, the last volumes still coming
    probe.stop()
    assert window.session is None, "the acquisition did not finish"
    assert not any("RECORDING" in text for text in finishing), finishing
    assert "RECORDING" not in window.mode_label.text() and "idle" in window.mode_label.text()
    summary = window.last_session_end.summary
    assert summary.status == "stopped"
    intervals = list(zip(ticks[:-1], ticks[1:]))
    app_gaps = [b - a for a, b in intervals if not any(s < b and e > a for s, e in busy)]
    all_gaps = [b - a for a, b in intervals]
    # how long the GUI thread went without events is a benchmark's figure (benchmarks/app_latency.py), printed here
    print(f"\nGUI responsiveness during the live demo: max gap between 10 ms timer ticks "
          f"{max(app_gaps) * 1000:.0f} ms (median {np.median(app_gaps) * 1000:.0f} ms, {len(app_gaps)} intervals "
          f"over {ticks[-1] - ticks[0]:.1f} s); {max(all_gaps) * 1000:.0f} ms including the test's own "
          f"{len(busy)} snapshot renders")
    assert workers["frames"] == {"nvplive-acquisition"}, workers
    assert workers["volumes"] == {"nvplive-reconstruction"}, workers
    assert len(app_gaps) > 0  # the GUI thread kept turning its event loop while both worked

    # Frames: every timepoint's frames reached the view (the live view may coalesce some).
    assert window.frames_view.n_views == VIEWS
    assert len(frames_seen) >= 4 and max(frames_seen) == summary.timepoints_complete - 1
    # Volumes: several timepoints reconstructed and drawn; pictures are real and change.
    assert len(pictures) >= 2, pictures.keys()
    assert not window.volume_view.placeholder.visible
    ts = sorted(pictures)
    empty = stats(blank[40:])  # below the placeholder's line of text
    assert empty["colours"] < 20  # nothing but the background before the first volume
    for t in ts:
        s = stats(pictures[t])
        assert s["std"] > 5 and s["colours"] > 50 and s["colours"] > 5 * empty["colours"], (t, s)
    # Pictures of the same canvas size (the layout settles when the first frames arrive) differ.
    same = [t for t in ts if pictures[t].shape == pictures[ts[-1]].shape]
    assert len(same) >= 2, {t: pictures[t].shape for t in ts}
    assert np.abs(pictures[same[0]] - pictures[same[-1]]).mean() > 0.3

    # Status bar and plots report what happened.
    labels = window.status_labels
    assert labels.latency_label.text().startswith("Latency ") and "—" not in labels.latency_label.text()
    assert labels.skipped_label.text() == f"Skipped {window.live.stats.skipped}"
    assert "CPU" in labels.device_label.text() and "MiB" in labels.device_label.text()
    assert window.recon_panel.latency_plot.values.size >= 2
    assert window.recon_panel.loss_plot.values.size >= TINY_CONFIG.iterations

    # The recording is on disk, closed, with every timepoint, ground truth and the live volumes.
    path = window.recording_path
    assert path.parent == tmp_path / "recordings" and path.suffix == ".fdt"
    with open_recording(path) as rec:
        n = summary.timepoints_complete
        assert rec.n_timepoints == n and rec.n_views == VIEWS and not rec.interrupted
        assert rec.ground_truth_timepoints == tuple(range(n))
        assert set(pictures) <= set(rec.volume_timepoints)
        assert rec.volume_settings[ts[-1]]["settings"]["device"] == "cpu"
    assert (path / "nvplive.log").read_text().count("Session started") == 1
    assert not window.errors


def test_the_loss_plot_follows_an_update_in_progress(make_window):
    """A cold start of minutes on a CPU draws its loss as it falls (finding: the plot stayed
    empty at iteration 60/120); the finished update's own losses then replace that trace."""
    window = make_window()
    live, plot = window.live, window.recon_panel.loss_plot
    live.clear_losses()
    live.show_progress(7, 10, 3.0, True, "calibration")  # the pupil's evaluations are not iterations
    assert plot.values.size == 0
    live.show_progress(5, 120, 1.0, True, "volume")
    live.show_progress(12, 120, 0.5, True, "volume")  # reports 6–11 were coalesced: drawn at the newest value
    assert plot.values.tolist() == [1.0] * 5 + [0.5] * 7
    live._on_reconstructed(0, float("nan"), [2.0] * 20, False)
    assert plot.values.tolist() == [2.0] * 20
    live.show_progress(3, 40, 0.25, False, "volume")  # the next (warm) update, after the first
    assert plot.values.tolist() == [2.0] * 20 + [0.25] * 3


def test_controls_change_what_the_worker_uses(make_window, qtbot):
    window = make_window(timepoints=0, interval_s=0.3)  # continuous until Stop
    window.start_acquisition(record=False)
    qtbot.waitUntil(lambda: window.session is not None and len(window.session.worker.records) >= 1, timeout=60_000)
    session = window.session
    worker = session.worker
    recon = worker.reconstructor
    assert recon is window.reconstructor
    assert recon.config.method == "nvp" and recon.config.warm_budget == IterationBudget(2)
    first_inner = recon.inner

    panel = window.recon_panel
    panel.method.setCurrentIndex(panel.method.findData("explicit"))
    panel.tv_weight.setValue(0.01)
    panel.warm_iterations.setValue(3)
    panel.device.setCurrentIndex(panel.device.findData("auto"))
    changed_at = len(worker.records)

    # Applied by the reconstruction thread before its next update, never during one: the
    # update in flight finishes with the old settings, the next restarts cold (method change,
    # full cold budget), the ones after run the new warm budget.
    qtbot.waitUntil(lambda: len(worker.records) >= changed_at + 3, timeout=60_000)
    cfg = worker.reconstructor.config
    assert (cfg.method, cfg.tv_weight, cfg.warm_budget) == ("explicit", 0.01, IterationBudget(3))
    assert recon.device_name == "auto" and recon.inner is not first_inner and str(recon.device) == "cpu"
    assert worker.method == "explicit" and worker.settings["tv_weight"] == 0.01
    after = [r.iterations for r in worker.records[changed_at:]]
    cold = after.index(TINY_CONFIG.iterations)
    assert cold <= 1, after
    assert 3 in after[cold + 1:], after

    # A latency budget bounds the warm updates by time.
    panel.budget_mode.setCurrentIndex(panel.budget_mode.findData("latency"))
    panel.latency.setValue(0.25)
    n = len(worker.records)
    qtbot.waitUntil(lambda: len(worker.records) >= n + 2, timeout=60_000)
    assert worker.reconstructor.config.warm_budget == LatencyBudget(0.25)  # checks every iteration
    assert worker.records[-1].stopped_by == "time"  # its clock ended it (test_reliability times the plan)

    # A device this machine does not have is refused with a message; the worker keeps its device.
    if not torch.cuda.is_available():
        panel.device.setCurrentIndex(panel.device.findData("cuda"))
        assert window.error_box is not None and window.error_box.isVisible()
        assert "CUDA" in window.error_box.text()
        assert panel.device_name == "auto" and recon.device_name == "auto"
        window.error_box.close()

    last_t = worker.records[-1].t
    window.stop_acquisition()
    _wait_closed(qtbot, window)
    with open_recording(session.path) as rec:
        stored = rec.volume_settings[last_t]
    assert stored["method"] == "explicit"
    assert stored["settings"]["tv_weight"] == 0.01 and stored["settings"]["warm_budget"]["seconds"] == 0.25


def _tiny_recording(path: Path, timepoints: int = 3) -> Path:
    return simulate_recording(
        path, phantom="cell", views=VIEWS, timepoints=timepoints, shape_zyx=SHAPE, voxel_um_zyx=VOXEL,
        coherence=FAST, seed=2,
    )


def test_broken_recording_shows_an_error_and_the_app_keeps_working(make_window, qtbot, tmp_path):
    good = _tiny_recording(tmp_path / "good.fdt")
    broken = _tiny_recording(tmp_path / "broken.fdt", timepoints=1)
    (broken / "recording.json").write_text('{"format": "nvp-live-recording", "version": 1, "optics": ')
    window = make_window()

    assert window.open_recording(broken) is False
    box = window.error_box
    assert box is not None and box.isVisible() and not box.isModal()
    assert "recording.json" in box.text()
    assert window.recording_path is None
    assert any("recording.json" in e for e in window.errors)
    box.close()

    # Still working: the good recording opens and replays frames and ground truth.
    assert window.open_recording(good) is True
    qtbot.waitUntil(lambda: window.model.view.frames_t == 0, timeout=10_000)
    assert window.frames_view.n_views == VIEWS
    window.timeline.kind.setCurrentIndex(window.timeline.kind.findData("truth"))
    window.timeline.slider.setValue(2)
    qtbot.waitUntil(lambda: window.model.view.frames_t == 2 and window.model.view.volume_t == 2, timeout=10_000)
    with open_recording(good) as rec:
        np.testing.assert_array_equal(window.frames_view._frames, rec.frames(2))


def test_a_recording_whose_volumes_file_was_deleted_opens_and_replays_its_frames(make_window, qtbot, tmp_path):
    from nvplive.acquisition.recording_writer import RecordingWriter

    path = _tiny_recording(tmp_path / "pruned.fdt")
    with RecordingWriter.replace_volumes(path) as writer:
        for t in range(3):
            writer.write_volume(t, np.zeros(SHAPE, np.float32), "nvp", {})
    (path / "volumes.ome.tif").unlink()
    window = make_window()
    assert window.open_recording(path) is True
    assert "volumes missing (Reconstruct… writes them again)" in window.acquisition_panel.activity_text()
    window.timeline.slider.setValue(1)
    qtbot.waitUntil(lambda: window.model.view.frames_t == 1, timeout=10_000)
    with open_recording(path) as rec:
        np.testing.assert_array_equal(window.frames_view._frames, rec.frames(1))
    assert not window.errors


def test_offline_reconstruction_exports_and_replay(make_window, qtbot, tmp_path, stats):
    from nvplive.acquisition.recording_writer import store_pupil
    from nvplive.recon.pupil import PupilParameters

    path = _tiny_recording(tmp_path / "offline.fdt", timepoints=3)
    with open_recording(path) as rec:
        optics, beads = rec.meta.optics, rec.meta.bead_diameter_um
    # the recording's own pupil.json, which the run starts from, was calibrated with other beads: said
    store_pupil(path, PupilParameters(), optics, calibrated_from="other beads", method="frames", bead_diameter_um=0.5)
    window = make_window()
    assert window.open_recording(path)
    progress: list[int] = []
    window.timeline.progress.valueChanged.connect(progress.append)
    assert window.reconstruct_recording() is True
    assert f"pupil.json was calibrated with beads of 0.5 µm, but the reconstruction images beads of {beads:g} µm" in \
        window.acquisition_panel.activity_text()
    assert window.timeline.progress.isVisible() and window.timeline.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: window.offline is not None and not window.offline.running
                    and not window.timeline.cancel_button.isEnabled(), timeout=90_000)
    assert progress and max(progress) == 1000 and len(set(progress)) >= 2
    assert not window.errors
    with open_recording(path) as rec:
        assert rec.volume_timepoints == (0, 1, 2)
        assert rec.volume_settings[2]["method"] == "nvp"
    # Replay shows the new volumes.
    window.timeline.slider.setValue(1)
    qtbot.waitUntil(lambda: window.model.view.volume_t == 1, timeout=10_000)
    picture = window.volume_view.snapshot()
    assert stats(picture)["std"] > 5

    # Δn stack: OME-TIFF, TZYX, physical sizes in µm.
    stack = tmp_path / "dn.ome.tif"
    window.export_dn_stack(stack)
    qtbot.waitUntil(lambda: stack.exists() and any("Δn stack written" in line for line in
                                                   window.acquisition_panel.activity_text().splitlines()),
                    timeout=20_000)
    with tifffile.TiffFile(stack) as tif:
        series = tif.series[0]
        assert series.axes == "TZYX" and series.shape == (3, *SHAPE)
        ome = tif.ome_metadata
        assert 'PhysicalSizeX="0.25"' in ome and 'PhysicalSizeZ="0.25"' in ome and "µm" in ome
        with open_recording(path) as rec:
            np.testing.assert_array_equal(series.asarray()[1], rec.volume(1))

    # PNG snapshot of the 3D view.
    png = window.save_snapshot(tmp_path / "view.png")
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")

    # Movie: an animated PNG with one frame per stored volume.
    movie_path = tmp_path / "movie.png"
    movie = window.export_movie(movie_path, fps=4)
    assert movie is not None
    qtbot.waitUntil(lambda: window.movie is None, timeout=30_000)
    with Image.open(movie_path) as apng:
        assert apng.format == "PNG" and apng.is_animated and apng.n_frames == 3
        assert apng.size == picture.shape[1::-1] and apng.mode == "RGB"
        shown = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(apng)]
    assert all(stats(frame)["std"] > 5 for frame in shown)  # three rendered volumes, not blank frames
    assert not window.errors


def test_acquisition_error_stops_cleanly_with_the_data_saved(make_window, qtbot):
    window = make_window(timepoints=20, interval_s=0.2)
    window.prepare_microscope()
    qtbot.waitUntil(lambda: window.microscope is not None and not window.loading, timeout=30_000)
    demo_camera(window.microscope.core).fail_after(2 * VIEWS + 1, "Simulated camera failure (test).")
    window.start_acquisition(record=True)
    _wait_closed(qtbot, window)
    box = window.error_box
    assert box is not None and box.isVisible()
    assert "Simulated camera failure (test)" in box.text() and "are saved in" in box.text()
    with open_recording(window.recording_path) as rec:
        assert rec.n_timepoints == 2 and not rec.interrupted
    box.close()
    # The window is still usable: the recorded timepoints replay.
    window.timeline.slider.setValue(1)
    qtbot.waitUntil(lambda: window.model.view.frames_t == 1, timeout=10_000)


HARDWARE_CFG = """# pure-Python devices only: camera, LED source selector, source group
Property,Core,Initialize,0
#py pyDevice,Camera,nvplive.acquisition.devices,SimulatedFDTCamera
#py pyDevice,LEDs,nvplive.acquisition.devices,SourceSelector
Property,Core,Initialize,1
#py Property,Core,Camera,Camera
#py Property,Core,AutoShutter,0
#py ConfigGroup,Beads,bead-a,LEDs,Label,Source-0
#py ConfigGroup,Beads,bead-b,LEDs,Label,Source-1
#py ConfigGroup,Beads,bead-c,LEDs,Label,Source-2
"""


@pytest.fixture
def hardware_files(tmp_path):
    """A Micro-Manager .cfg of simulated devices (they share a tiny default scene) and its FDT settings."""
    from nvplive.acquisition import devices

    scene = devices.demo_scene(SHAPE, VOXEL, VIEWS, seed=4, coherence=FAST)
    devices.set_default_scene(scene)
    cfg = tmp_path / "scope.cfg"
    cfg.write_text(HARDWARE_CFG)
    settings = tmp_path / "fdt.json"
    settings.write_text(json.dumps({
        "format": "nvp-live-hardware-settings",
        "version": 1,
        "source_selection": {"group": "Beads", "presets": ["bead-a", "bead-b", "bead-c"]},
        "sources_um_xyz": scene.sources_um_xyz.tolist(),
        "optics": {"wavelength_um": 0.6, "n_medium": 1.33, "na": 0.8},
        "volume": {"shape_zyx": list(SHAPE), "voxel_um_zyx": list(VOXEL)},
        "camera_model": {"offset": 100, "gain": 1.0, "read_noise": 1.6},
        "exposure_ms": 3.0,
    }))
    yield cfg, settings
    devices.set_default_scene(None)


def test_hardware_configuration_loads_and_acquires(make_window, qtbot, hardware_files, tmp_path):
    cfg, settings = hardware_files
    bad = tmp_path / "bad.json"
    bad.write_text(settings.read_text().replace('"bead-b"', '"bead-x"'))
    window = make_window(demo=False, mm_config=cfg, settings_file=bad, timepoints=3, interval_s=0.2)
    assert window.acquisition_panel.source == "hardware" and not window.acquisition_panel.views.isEnabled()

    # A settings file that does not fit the configuration: one clear message, nothing loaded.
    window.prepare_microscope()
    qtbot.waitUntil(lambda: not window.loading, timeout=30_000)
    assert window.microscope is None
    assert window.error_box is not None and "no preset 'bead-x' for view 1" in window.error_box.text()
    window.error_box.close()

    window.acquisition_panel.settings_file.set_text(str(settings))
    window.start_acquisition(record=False)
    _wait_closed(qtbot, window)
    assert window.microscope is not None and not window.microscope.demo
    assert window.acquisition_panel.views.value() == VIEWS
    assert window.acquisition_panel.sources_table.topLevelItemCount() == VIEWS
    assert window.acquisition_panel.sources_table.topLevelItem(1).text(1) == "bead-b"
    # the .cfg defines no pixel-size calibration: the panel says so (issue 14)
    assert window.acquisition_panel.pixel_label.text() == "not calibrated in Micro-Manager (settings: 0.25 µm)"
    assert window.frames_view.n_views == VIEWS
    with open_recording(window.recording_path) as rec:
        assert rec.n_timepoints == 3 and not rec.has_ground_truth
        assert rec.meta.extra["simulated"] is False and rec.volume_timepoints
    assert window.last_session_end.summary.status == "completed"


def test_acquisition_panel_shows_what_the_instrument_reports(make_window, qtbot):
    """Pixel size, bit depth and trigger mode come from the core, and follow its changes (issue 14)."""
    window = make_window()
    window.prepare_microscope()
    qtbot.waitUntil(lambda: not window.loading and window.microscope is not None, timeout=30_000)
    panel = window.acquisition_panel
    assert panel.pixel_label.text() == "0.25 µm (FDT-Demo, binning 1)"
    assert panel.bit_depth_label.text() == "16 bit (saturates at 65535)"
    assert panel.trigger_label.text() == "hardware (one triggered sequence per timepoint)"
    # the readouts wrap: at 1280×800 the panel still fits its dock (a new user saw "Load configurati…" cut off)
    scroller = window.docks["acquisition"].widget()
    qtbot.waitUntil(lambda: panel.minimumSizeHint().width() <= scroller.viewport().width(), timeout=5_000)
    core = window.microscope.core
    core.setPixelSizeUm("FDT-Demo", 0.125)
    core.setProperty("FDTCamera", "BitDepth", 12)
    qtbot.waitUntil(lambda: panel.pixel_label.text() == "0.125 µm (FDT-Demo, binning 1)", timeout=10_000)
    qtbot.waitUntil(lambda: panel.bit_depth_label.text() == "12 bit (saturates at 4095)", timeout=10_000)


def test_settings_persist(make_window, settings_file, qtbot):
    window = make_window()
    panel = window.recon_panel
    panel.method.setCurrentIndex(panel.method.findData("triplane"))
    panel.tv_weight.setValue(0.0042)
    panel.budget_mode.setCurrentIndex(panel.budget_mode.findData("latency"))
    panel.latency.setValue(0.7)
    window.acquisition_panel.exposure.setValue(12.5)
    window.volume_view.set_mode("translucent")
    window.close()
    stored = QtCore.QSettings(str(settings_file), QtCore.QSettings.Format.IniFormat)
    assert stored.value("reconstruction/method") == "triplane"

    again = make_window(recon_config=None, timepoints=None, interval_s=None)
    p = again.recon_panel
    assert p.method.currentData() == "triplane"
    assert p.tv_weight.value() == pytest.approx(0.0042)
    assert p.budget_mode.currentData() == "latency" and p.latency.value() == pytest.approx(0.7)
    assert again.acquisition_panel.exposure.value() == pytest.approx(12.5)
    assert again.volume_view.mode == "translucent"
    config = again.model.reconstruction.config()
    assert config.method == "triplane" and config.warm_budget.target_latency_s == pytest.approx(0.7)


def test_a_loaded_pupil_is_kept_for_the_next_session_until_cleared(make_window, qtbot, tmp_path, settings_file):
    """Issue 13: the pupil calibrated or loaded in the app outlives the window: kept per
    instrument beside the settings, restored (and rendered through) by the next window, with
    where it came from and when it was calibrated in the Pupil dock; Clear forgets it."""
    truth = PupilParameters((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3), (-0.1,))
    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8)
    source = write_pupil(tmp_path / "scope.json", truth, optics, calibrated_from="bead z-stack of scope A",
                         method="bead-z-stack", residual=0.05, residual_before=0.2, bead_diameter_um=0.5)
    created = read_pupil_file(source).created
    window = make_window(timepoints=2, interval_s=0.0)
    assert window.model.pupil.calibrated is None and not window.pupil_view.clear_button.isVisible()
    loaded = window.load_pupil(source)
    assert loaded is not None and window.model.pupil.calibrated == loaded and loaded.pupil == truth
    kept = settings_file.parent / "pupils" / "demo.json"
    assert read_pupil_file(kept).created == created  # when it was calibrated, not when it was kept
    summary = window.pupil_view.summary.text()
    assert "bead z-stack of scope A" in summary and f"Loaded from {source}" in summary and "kept for the simulated microscope" in summary
    assert created.replace("T", " ").replace("+00:00", " UTC") in summary
    window.save_settings()
    window.close()

    again = make_window(timepoints=2, interval_s=0.0)
    assert again.model.pupil.calibrated == loaded  # pupil, optics, provenance and date
    assert f"Restored from an earlier session ({kept})" in again.pupil_view.summary.text()
    np.testing.assert_array_equal(again.pupil_view.bar_values, truth.zernike_rad)
    again.prepare_microscope()
    qtbot.waitUntil(lambda: not again.loading and again.reconstructor is not None, timeout=30_000)
    assert again.reconstructor.pupil == truth  # in use by the live reconstruction
    beads = again.microscope.info.bead_diameter_um  # the demo's; the pupil was calibrated with other beads: said
    assert f"The pupil was calibrated with beads of 0.5 µm, but the reconstruction images beads of {beads:g} µm" in \
        again.acquisition_panel.activity.toPlainText()
    again.acquisition_panel.source_combo.setCurrentIndex(again.acquisition_panel.source_combo.findData("hardware"))
    assert again.model.acquisition.source == "hardware" and again.model.pupil.calibrated is None  # another instrument
    again.acquisition_panel.source_combo.setCurrentIndex(again.acquisition_panel.source_combo.findData("demo"))
    assert again.model.pupil.calibrated == loaded
    qtbot.mouseClick(again.pupil_view.clear_button, QtCore.Qt.MouseButton.LeftButton)
    assert again.model.pupil.calibrated is None and not kept.exists()
    assert "No calibrated pupil" in again.pupil_view.summary.text() and not again.pupil_view.clear_button.isVisible()
    again.close()

    third = make_window(timepoints=2, interval_s=0.0)
    assert third.model.pupil.calibrated is None and again.errors == [] and third.errors == []


def test_cancel_in_the_pupil_dock_stops_a_running_pupil_fit(make_window, qtbot):
    """Cancel while the pupil is being fitted ends the fit at its next model evaluation (it
    used to run to its end): the worker thread ends with the fit's progress far from done,
    at most the evaluation in flight reported after the click, and the pupil is unchanged."""
    window = make_window(timepoints=2, interval_s=0.0, recon_config=replace(TINY_CONFIG, pupil_calibration=False))
    window.prepare_microscope()
    qtbot.waitUntil(lambda: not window.loading and window.microscope is not None, timeout=30_000)
    window.bead_stack_plan = BeadStackPlan(half_range_um=1.5, step_um=0.5, z_direction=1)
    window.pupil_iterations = 150  # a full fit: minutes on one core
    reports: list[tuple[int, int, str]] = []
    task = window.calibrate_pupil()
    assert task is not None
    task.events.progress.connect(lambda done, total, message: reports.append((done, total, message)))
    # the fit's reports have total FIT_STEPS (the z-stack's, its planes)
    qtbot.waitUntil(lambda: sum(r[1] == FIT_STEPS for r in reports) >= 3 or window.pupil_task is None, timeout=120_000)
    assert window.pupil_task is task, window.errors
    view = window.pupil_view
    assert view.cancel_button.isVisible() and "fitting the pupil: z +1, hard aperture: positions" in view.progress.format()
    qtbot.mouseClick(view.cancel_button, QtCore.Qt.MouseButton.LeftButton)
    at_click = len(reports)
    qtbot.waitUntil(lambda: window.pupil_task is None, timeout=60_000)
    task.join(5)
    assert not task.running
    fitting = [r for r in reports if r[1] == FIT_STEPS]
    assert len(reports) - at_click <= 1  # the evaluation in flight, then none
    assert fitting[-1][0] < FIT_STEPS / 4  # still in the first of the four stages
    assert window.model.pupil.calibrated is None and window.errors == []
    assert not view.cancel_button.isVisible() and window.actions_by_key["calibrate_pupil"].isEnabled()


def test_calibrate_pupil_acquires_a_bead_stack_and_the_pupil_dock_shows_it(make_window, qtbot, tmp_path, settings_file, stats,
                                                                          to_array):
    """Issue 13: "Calibrate pupil" takes a bead z-stack through the MDA of the simulated
    microscope (an aberrated objective), fits it in a worker, and the Pupil dock shows the
    model's pupil; the live reconstruction and the next recording use it."""
    truth = np.zeros(21)
    truth[11 - 2], truth[6 - 2] = 0.4, 0.25  # primary spherical, astigmatism (rad)
    instrument = Instrument("aberrated", PupilParameters(tuple(truth)))
    window = make_window(timepoints=2, interval_s=0.0, demo_options=DemoOptions(SHAPE, VOXEL, FAST, seed=1, instrument=instrument),
                         recon_config=replace(TINY_CONFIG, pupil_calibration=False))  # as LIVE_CONFIG
    action = window.actions_by_key["calibrate_pupil"]
    assert not action.isEnabled()  # no microscope loaded yet
    assert window.pupil_view.bar_values.size == 0 and "No calibrated pupil" in window.pupil_view.summary.text()
    window.prepare_microscope()
    qtbot.waitUntil(lambda: not window.loading and window.microscope is not None, timeout=30_000)
    assert action.isEnabled()
    window.bead_stack_plan = BeadStackPlan(half_range_um=1.5, step_um=0.5, z_direction=1)  # 7 planes
    window.pupil_iterations = 20

    action.trigger()
    assert window.pupil_task is not None
    assert not action.isEnabled() and not window.actions_by_key["live"].isEnabled()
    dock = window.docks["pupil"]
    qtbot.waitUntil(lambda: window.model.pupil.calibrated is not None or window.pupil_task is None, timeout=120_000)
    calibrated = window.model.pupil.calibrated
    assert calibrated is not None, window.errors
    view = window.pupil_view
    qtbot.waitUntil(lambda: view.calibrated is calibrated and window.pupil_task is None, timeout=5_000)
    assert dock.isVisible() and not view.visibleRegion().isEmpty()  # raised over the Frames tab
    coefficients = np.asarray(calibrated.pupil.zernike_rad)
    np.testing.assert_array_equal(view.bar_values, coefficients)
    np.testing.assert_array_equal(view.bars.opts["height"], coefficients)  # what the bar chart draws
    np.testing.assert_array_equal(view.bars.opts["x"], np.arange(2, 2 + len(coefficients)))
    assert coefficients[11 - 2] == pytest.approx(0.4, abs=0.1)
    assert f"fit residual {calibrated.residual:.3f}" in view.summary.text()
    assert np.isnan(view.phase[0, 0]) and np.isfinite(view.phase[32, 32])  # inside the NA aperture only
    assert stats(to_array(view.grab()))["colours"] > 50  # images and bars are drawn
    assert action.isEnabled() and window.actions_by_key["save_pupil"].isEnabled()

    saved = window.save_pupil(tmp_path / "pupil.json")
    assert saved is not None and read_pupil(saved) == calibrated.pupil
    kept = read_pupil_file(settings_file.parent / "pupils" / "demo.json")  # for the next session
    assert kept.created == calibrated.created and kept.calibrated_from == calibrated.calibrated_from
    assert "Calibrated in this session; kept for the simulated microscope" in view.summary.text()

    window.start_acquisition(record=False)  # the live reconstruction renders through it, cold
    _wait_closed(qtbot, window)
    assert window.reconstructor.inner.pupil == calibrated.pupil
    assert read_pupil(window.recording_path) == calibrated.pupil  # stored with the recording
