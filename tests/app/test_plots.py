"""LossPlot / LatencyPlot accept data and draw it."""

from __future__ import annotations

import numpy as np
import pytest

from nvplive.app.plots import LatencyPlot, LossPlot


@pytest.fixture
def loss(qtbot):
    w = LossPlot(max_points=100)
    qtbot.addWidget(w)
    w.resize(400, 260)
    w.show()
    qtbot.waitExposed(w)
    return w


def test_loss_append_and_log_axis(loss, qtbot, stats, to_array):
    blank = to_array(loss.grab())
    for v in np.geomspace(1.0, 1e-3, 50):
        loss.append(v)
    qtbot.wait(20)
    x, y = loss.curve.getData()
    assert len(x) == 50 and x[0] == 0 and x[-1] == 49
    assert loss.getPlotItem().ctrl.logYCheck.isChecked()
    # On the log axis the y range spans the three decades (view range in log10 units).
    (_, _), (y0, y1) = loss.getPlotItem().vb.viewRange()
    assert y0 <= -2.9 and y1 >= -0.1
    pic = to_array(loss.grab())
    assert np.abs(pic[..., :3].astype(int) - blank[..., :3].astype(int)).mean() > 0.3
    assert stats(pic)["colours"] > 10


def test_loss_set_data_bounds_and_nonpositive(loss):
    loss.set_data(np.linspace(1, 2, 250))
    x, _ = loss.curve.getData()
    assert len(x) == 100 and x[0] == 150 and x[-1] == 249
    loss.set_data([1.0, 0.0, -1.0, np.nan, 0.5])
    x, y = loss.curve.getOriginalDataset()
    np.testing.assert_array_equal(x, [0, 4])
    np.testing.assert_allclose(y, [1.0, 0.5])
    assert loss.values.size == 5
    loss.clear_data()
    assert loss.values.size == 0


def test_latency_plot(qtbot, to_array):
    w = LatencyPlot(target_s=1.0)
    qtbot.addWidget(w)
    w.resize(400, 260)
    w.show()
    qtbot.waitExposed(w)
    w.set_data([0.8, 0.7, 0.9])
    w.append(0.75)
    x, y = w.curve.getData()
    np.testing.assert_allclose(y, [0.8, 0.7, 0.9, 0.75])
    np.testing.assert_array_equal(x, [0, 1, 2, 3])
    assert w.target_line.value() == 1.0 and w.target_line.isVisible()
    w.append(0.6, x=7)  # the live loop skipped to timepoint 7: drawn at 7
    np.testing.assert_array_equal(w.curve.getData()[0], [0, 1, 2, 3, 7])
    w.set_target(None)
    assert not w.target_line.isVisible()
    # three timepoints on the axis: ticks at whole timepoints only, never 0.5
    axis = w.getPlotItem().getAxis("bottom")
    (x0, x1), _ = w.getPlotItem().vb.viewRange()
    ticks = [value for level in axis.tickValues(x0, x1, axis.width()) for value in level[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert to_array(w.grab())[..., :3].std() > 5
