"""FramesView in a real window: frames, thumbnails, contrast and source markers in µm."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui
from pytestqt.qtbot import QtBot

from nvplive.app import style
from nvplive.app.frames_view import FramesView, pixel_centres_um

PIXEL_UM = 0.2


@pytest.fixture
def view(qtbot: QtBot):
    w = FramesView()
    qtbot.addWidget(w)
    w.resize(700, 640)
    w.show()
    qtbot.waitExposed(w)
    return w


def _settle(qtbot: QtBot) -> None:
    qtbot.wait(30)


def test_shows_frames_and_selected_view(view, camera_frames, qtbot, stats, to_array):
    frames, sources = camera_frames()
    view.set_frames(frames, PIXEL_UM, sources)
    _settle(qtbot)
    assert view.n_views == 5 and view.current_view == 0
    np.testing.assert_array_equal(view.image_item.image, frames[0])
    s = stats(to_array(view.graphics.grab()))
    assert s["std"] > 10 and s["colours"] > 50 and s["foreground"] > 0.02
    with qtbot.waitSignal(view.viewSelected, timeout=1000) as blocker:
        view.select_view(3)
    assert blocker.args == [3] and view.current_view == 3
    np.testing.assert_array_equal(view.image_item.image, frames[3])
    assert view.thumbs.currentRow() == 3
    with pytest.raises(IndexError):
        view.select_view(5)


def test_image_sits_on_design_coordinates(view, camera_frames):
    frames, sources = camera_frames(n=96)
    view.set_frames(frames, PIXEL_UM, sources)
    r = view.image_item.mapRectToView(view.image_item.boundingRect())
    # Pixel j at x_j = (j − N/2)·dx: the outer pixel edges are at (−N/2 − ½)·dx and (N/2 − ½)·dx.
    assert (r.left(), r.right()) == pytest.approx(((-48 - 0.5) * PIXEL_UM, (48 - 0.5) * PIXEL_UM))
    assert (r.top(), r.bottom()) == pytest.approx(((-48 - 0.5) * PIXEL_UM, (48 - 0.5) * PIXEL_UM))
    np.testing.assert_allclose(pixel_centres_um(4, 0.5), [-1.0, -0.5, 0.0, 0.5])


def test_markers_are_drawn_at_source_positions(view, camera_frames, qtbot, to_array):
    frames, sources = camera_frames()
    view.set_frames(frames, PIXEL_UM, sources)
    view.select_view(2)
    _settle(qtbot)
    xs, ys = view.sources_item.getData()
    np.testing.assert_allclose(np.column_stack([xs, ys]), sources)
    sx, sy = view.selected_item.getData()
    np.testing.assert_allclose([sx[0], sy[0]], sources[2])
    # The selected marker (filled, SOURCE_SELECTED_COLOR) is on screen where its µm position maps to.
    pic = to_array(view.graphics.grab())
    scene_pt = view.plot.vb.mapViewToScene(QtCore.QPointF(*sources[2]))
    px = view.graphics.mapFromScene(scene_pt)
    ratio = pic.shape[1] / view.graphics.width()
    cx, cy = int(px.x() * ratio), int(px.y() * ratio)
    patch = pic[cy - 2 : cy + 3, cx - 2 : cx + 3, :3].reshape(-1, 3).astype(int)
    want = QtGui.QColor(style.SOURCE_SELECTED_COLOR)
    dist = np.abs(patch - [want.red(), want.green(), want.blue()]).sum(axis=1)
    assert dist.min() < 40, patch
    # An unselected source is not drawn in the selected colour.
    scene_pt = view.plot.vb.mapViewToScene(QtCore.QPointF(*sources[0]))
    px = view.graphics.mapFromScene(scene_pt)
    cx, cy = int(px.x() * ratio), int(px.y() * ratio)
    patch = pic[cy - 1 : cy + 2, cx - 1 : cx + 2, :3].reshape(-1, 3).astype(int)
    assert np.abs(patch - [want.red(), want.green(), want.blue()]).sum(axis=1).min() > 60


def test_different_frame_sets_give_different_pictures(view, camera_frames, qtbot, stats, to_array):
    frames_a, sources = camera_frames(seed=1)
    view.set_frames(frames_a, PIXEL_UM, sources)
    _settle(qtbot)
    pic_a = to_array(view.grab())
    frames_b = np.ascontiguousarray(frames_a[:, ::-1, :])  # spots mirrored top-bottom
    view.set_frames(frames_b, PIXEL_UM, None)
    _settle(qtbot)
    pic_b = to_array(view.grab())
    assert stats(pic_a)["colours"] > 50 and stats(pic_b)["colours"] > 50
    assert np.abs(pic_a[..., :3].astype(int) - pic_b[..., :3].astype(int)).mean() > 1.0
    x, _ = view.sources_item.getData()
    assert len(x) == 0 and len(view.selected_item.getData()[0]) == 0


def test_thumbnail_click_selects_view(view, camera_frames, qtbot):
    frames, sources = camera_frames()
    view.set_frames(frames, PIXEL_UM, sources)
    _settle(qtbot)
    assert view.thumbs.count() == 5
    assert not view.thumbs.item(4).icon().isNull()
    rect = view.thumbs.visualItemRect(view.thumbs.item(4))
    with qtbot.waitSignal(view.viewSelected, timeout=2000) as blocker:
        qtbot.mouseClick(view.thumbs.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=rect.center())
    assert blocker.args == [4] and view.current_view == 4


def test_contrast_auto_and_manual(view, camera_frames):
    frames, sources = camera_frames(brightness=2000.0)
    view.set_frames(frames, PIXEL_UM, sources)
    lo, hi = view.levels()
    assert 300 < lo < 700 and hi > 1500
    view.set_levels(100, 60000)
    assert view.levels() == pytest.approx((100, 60000))
    assert not view.auto_levels
    view.set_frames(frames // 2, PIXEL_UM, sources)
    assert view.levels() == pytest.approx((100, 60000))  # manual levels persist
    view.auto_button.setChecked(True)
    assert view.levels()[1] < 2000


def test_rejects_inconsistent_input(view, camera_frames):
    frames, sources = camera_frames()
    with pytest.raises(ValueError):
        view.set_frames(frames, PIXEL_UM, sources[:3])
    with pytest.raises(ValueError):
        view.set_frames(frames, 0.0, sources)
    with pytest.raises(ValueError):
        view.set_frames(np.zeros((2, 3, 4, 5), np.uint16), PIXEL_UM)
