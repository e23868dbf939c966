"""The app refuses what cannot work with one clear message and never stays "Loading the microscope…"
(issue 16 findings 4 and 7), in a real window on the simulated microscope."""

from __future__ import annotations

import logging
import os

from test_main_window import FAST, VOXEL, hardware_files, make_window, settings_file  # noqa: F401 (fixtures)

from nvplive.acquisition.live import DemoOptions


def _loaded_or_refused(window, qtbot) -> None:
    window.prepare_microscope()
    qtbot.waitUntil(lambda: not window.loading, timeout=60_000)


def test_too_large_demo_volume_is_refused_with_a_message(make_window, qtbot):
    """A 4096×64×64 volume gave a raw GL / alloc_cpu error and the app stayed "Loading the microscope…"."""
    window = make_window(demo_options=DemoOptions((4096, 64, 64), VOXEL, FAST, seed=1))
    _loaded_or_refused(window, qtbot)
    assert window.microscope is None
    assert window.acquisition_panel.state_label.text() == "Microscope not loaded"
    message = window.error_box.text()
    assert "Simulating 4096×64×64 voxels with 3 views needs about" in message and "fewer slices" in message
    assert "alloc_cpu" not in message and "Traceback" not in message


def test_settings_fifo_is_refused_and_no_red_mmcore_install_log(make_window, qtbot, hardware_files, tmp_path, caplog):
    """A settings FIFO left the app "Loading…" forever; every start logged a red "run 'mmcore install'"."""
    cfg, settings = hardware_files
    fifo = tmp_path / "settings-pipe.json"
    os.mkfifo(fifo)
    window = make_window(demo=False, mm_config=cfg, settings_file=fifo, timepoints=2, interval_s=0.2)
    _loaded_or_refused(window, qtbot)
    assert window.microscope is None
    assert f"Hardware settings file {fifo} is not a regular file" in window.error_box.text()
    window.error_box.close()

    caplog.set_level(logging.WARNING)
    window.acquisition_panel.settings_file.set_text(str(settings))
    _loaded_or_refused(window, qtbot)
    assert window.microscope is not None and not window.microscope.demo
    assert not [r for r in caplog.records if "mmcore install" in r.getMessage()]
