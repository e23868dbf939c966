"""The app's model without a display: evented fields, the reconstruction config it stands for, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6 import QtCore

from nvplive.acquisition.live import LIVE_CONFIG
from nvplive.app.model import SETTINGS_VERSION, AppModel
from nvplive.recon.loop import LATENCY_ITERATION_CAP, IterationBudget, LatencyBudget
from nvplive.recon.reconstructor import ReconConfig

pytestmark = pytest.mark.nodisplay


def _store(path: Path) -> QtCore.QSettings:
    return QtCore.QSettings(str(path), QtCore.QSettings.Format.IniFormat)


def test_fields_are_evented_and_the_defaults_are_the_live_configuration():
    model = AppModel()
    seen: list[tuple] = []
    model.reconstruction.events.tv_weight.connect(lambda new, old: seen.append((new, old)))
    model.reconstruction.tv_weight = 0.01
    model.reconstruction.tv_weight = 0.01  # unchanged: no event
    assert seen == [(0.01, LIVE_CONFIG.tv_weight)]
    assert AppModel().reconstruction.config() == LIVE_CONFIG


def test_budget_modes_give_the_config_the_reconstructor_runs():
    rec = AppModel().reconstruction
    rec.use_config(ReconConfig(iterations=8, warm_budget=IterationBudget(2), check_every=2, pupil_calibration=False,
                                   depth_starts_um=(0.0,)))
    assert rec.budget_mode == "iterations" and rec.cold_iterations == 8
    config = rec.config()
    assert (config.warm_budget, config.check_every) == (IterationBudget(2, stop_on_plateau=True), 2)
    rec.budget_mode, rec.latency_s = "latency", 0.25
    config = rec.config()
    # a latency budget runs until its time (no plateau stop), checking every iteration
    assert config.warm_budget == LatencyBudget(seconds=0.25, check_every=1, max_iterations=LATENCY_ITERATION_CAP)
    assert config.iterations == 8  # the base's cold start stays


def test_persistence_is_one_call_each_way_with_a_version_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = AppModel()
    model.acquisition.mm_config = "scope.cfg"  # relative, as typed on a command line
    model.acquisition.exposure_ms = 12.5
    model.reconstruction.method = "triplane"
    model.reconstruction.warm_start = False
    model.view.render_mode = "translucent"
    model.view.fps = 9
    store = _store(tmp_path / "settings.ini")
    model.save(store)
    store.sync()

    again = AppModel()
    assert again.load(_store(tmp_path / "settings.ini")) == []
    assert again.acquisition.mm_config == str(tmp_path / "scope.cfg")
    assert again.acquisition.exposure_ms == 12.5 and again.reconstruction.method == "triplane"
    assert again.reconstruction.warm_start is False
    assert (again.view.render_mode, again.view.fps) == ("translucent", 9)
    assert _store(tmp_path / "settings.ini").value("settings/version", type=int) == SETTINGS_VERSION


def test_older_layouts_migrate_and_bad_values_are_ignored(tmp_path):
    store = _store(tmp_path / "old.ini")
    store.setValue("timeline/fps", 12)  # layout 0 (no version): the replay speed lived under "timeline"
    store.setValue("reconstruction/method", "magic")
    store.setValue("acquisition/views", "many")
    store.sync()
    model = AppModel()
    ignored = model.load(_store(tmp_path / "old.ini"))
    assert model.view.fps == 12
    assert model.reconstruction.method == LIVE_CONFIG.method and model.acquisition.views == 7
    assert set(ignored) == {"reconstruction/method", "acquisition/views"}
