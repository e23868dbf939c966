"""Panels are views of the model: a control sets its field, a changed field shows in its control."""

from __future__ import annotations

import pytest

from nvplive.app.model import AppModel
from nvplive.app.panels import AcquisitionPanel, ReconstructionPanel, TimelinePanel


@pytest.fixture
def model() -> AppModel:
    return AppModel()


def test_reconstruction_panel_and_model_follow_each_other(qtbot, model):
    panel = ReconstructionPanel()
    qtbot.addWidget(panel)
    panel.bind(model.reconstruction)
    rec = model.reconstruction
    assert panel.method.currentData() == rec.method and panel.budget_mode.currentData() == "latency"
    assert panel.budget_stack.currentIndex() == 1 and panel.latency.value() == pytest.approx(rec.latency_s)

    panel.method.setCurrentIndex(panel.method.findData("explicit"))  # the user picks …
    panel.tv_weight.setValue(0.004)
    panel.warm_start.setChecked(False)
    assert (rec.method, rec.tv_weight, rec.warm_start) == ("explicit", pytest.approx(0.004), False)

    rec.budget_mode = "iterations"  # … the model changes (a restored setting, a correction)
    rec.warm_iterations = 17
    rec.device = "cpu"
    assert panel.budget_mode.currentData() == "iterations" and panel.budget_stack.currentIndex() == 0
    assert panel.warm_iterations.value() == 17 and panel.device_name == "cpu"


def test_acquisition_and_timeline_panels_follow_the_model(qtbot, model, tmp_path):
    acquisition, timeline = AcquisitionPanel(), TimelinePanel()
    qtbot.addWidget(acquisition)
    qtbot.addWidget(timeline)
    acquisition.bind(model.acquisition)
    timeline.bind(model.view)

    acquisition.exposure.setValue(12.5)
    acquisition.save_dir.set_text(str(tmp_path))
    acquisition.source_combo.setCurrentIndex(acquisition.source_combo.findData("hardware"))
    acq = model.acquisition
    assert (acq.exposure_ms, acq.save_dir, acq.source) == (12.5, str(tmp_path), "hardware")
    assert not acquisition.views.isEnabled() and acquisition.mm_config.isEnabled()
    acq.settings_file = "/data/fdt.json"
    acq.timepoints = 0
    assert acquisition.settings_file.text() == "/data/fdt.json" and acquisition.timepoints.text() == "continuous"

    timeline.kind.setCurrentIndex(timeline.kind.findData("truth"))
    timeline.fps.setValue(12)
    assert (model.view.replay_kind, model.view.fps) == ("truth", 12)
    model.view.following = False
    assert not timeline.follow.isChecked()
