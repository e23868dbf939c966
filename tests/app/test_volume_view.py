"""VolumeView in a real window: rendering modes, colorbar in RI units, slices, geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtGui

from nvplive.app.volume_view import MODES, VolumeView, nice_step

N_MEDIUM = 1.333
VOXEL = (0.4, 0.2, 0.2)


@pytest.fixture
def view(qtbot):
    w = VolumeView()
    qtbot.addWidget(w)
    w.resize(760, 640)
    w.show()
    qtbot.waitExposed(w)
    return w


def test_every_mode_renders_the_phantom(view, spheres, stats):
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    pictures = {}
    for mode in MODES:
        view.set_mode(mode)
        pic = view.snapshot()
        s = stats(pic)
        assert pic.dtype == np.uint8 and pic.shape[2] == 4
        assert s["std"] > 8, (mode, s)
        assert s["colours"] > 50, (mode, s)
        assert s["foreground"] > 0.03, (mode, s)
        pictures[mode] = pic[..., :3].astype(int)
    # The three modes draw differently.
    assert np.abs(pictures["mip"] - pictures["iso"]).mean() > 1.0
    assert np.abs(pictures["mip"] - pictures["translucent"]).mean() > 1.0


def test_empty_volume_draws_no_objects_and_phantom_does(view, spheres):
    view.set_volume(np.zeros((24, 48, 48), np.float32), VOXEL, N_MEDIUM)
    view.set_clim(0.0, 0.05)
    blank = view.snapshot()[..., :3].astype(int)
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    full = view.snapshot()[..., :3].astype(int)
    # Spheres at Δn 0.02–0.05 light up the upper part of the colormap.
    bright_blank = (blank.sum(axis=2) > 300).mean()
    bright_full = (full.sum(axis=2) > 300).mean()
    assert bright_full > bright_blank + 0.01


def test_picture_changes_with_new_volume_of_same_shape(view, spheres):
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    visual, texture = view.volume, view.volume._texture
    first = view.snapshot()[..., :3].astype(int)
    view.set_volume(spheres(shift_um=1.5, scale=0.6), VOXEL, N_MEDIUM)
    second = view.snapshot()[..., :3].astype(int)
    assert np.abs(first - second).mean() > 1.0
    # Cheap update: same visual, same texture object.
    assert view.volume is visual and view.volume._texture is texture


def test_new_shape_and_anisotropic_voxels_follow_design_coordinates(view, spheres):
    vol = spheres(shape=(16, 40, 56), voxel_um=(0.5, 0.25, 0.1))
    view.set_volume(vol, (0.5, 0.25, 0.1), N_MEDIUM)
    tr = view.volume.transform
    # Voxel (k, j, i) = (3, 7, 11): x = (11 − 56/2)·0.1, y = (7 − 40/2)·0.25, z = (3 + 0.5)·0.5.
    mapped = tr.map(np.array([[11.0, 7.0, 3.0]]))[0, :3]
    np.testing.assert_allclose(mapped, [(11 - 28) * 0.1, (7 - 20) * 0.25, 3.5 * 0.5], atol=1e-6)
    assert view.slices == (8, 20, 28)
    assert view.snapshot()[..., :3].std() > 8


def test_colorbar_is_in_refractive_index_units(view, spheres):
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    view.set_clim(0.0, 0.037)
    assert view.ri_range() == pytest.approx((1.333, 1.370))
    assert view.colorbar_text() == "RI 1.3330 … 1.3700"
    assert view.colorbar.levels() == pytest.approx((1.333, 1.370))
    axis = view.colorbar.axis
    assert axis.range == pytest.approx([1.333, 1.370])
    assert "RI" in view.colorbar.getAxis("left").labelText
    ticks = [v for level in axis.tickValues(1.333, 1.370, 300) for v in level[1]]
    labels = axis.tickStrings(ticks, 1.0, 0.005)
    values = [float(s) for s in labels]
    assert values and all(1.333 - 1e-9 <= v <= 1.370 + 1e-9 for v in values)
    # A different medium shifts the bar, not the Δn limits.
    view.set_volume(spheres(), VOXEL, 1.518)
    assert view.clim == pytest.approx((0.0, 0.037))
    assert view.colorbar_text() == "RI 1.5180 … 1.5550"


def test_auto_clim_spans_zero_to_maximum(view, spheres):
    vol = spheres()
    view.set_volume(vol, VOXEL, N_MEDIUM)
    lo, hi = view.clim
    assert lo == 0.0 and 0.03 < hi <= vol.max() + 1e-6


def test_iso_threshold_changes_surface(view, spheres):
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    view.set_mode("isosurface")
    assert view.mode == "iso"
    view.set_threshold(0.01)
    low = view.snapshot()[..., :3]
    view.set_threshold(0.04)
    high = view.snapshot()[..., :3]
    assert view.threshold == pytest.approx(0.04)
    assert view.iso_spin.value() == pytest.approx(N_MEDIUM + 0.04, abs=1e-4)
    covered = lambda pic: (np.abs(pic.astype(int) - pic[0, 0].astype(int)).sum(axis=2) > 30).mean()  # noqa: E731
    # Only the densest sphere survives the higher level: less surface on screen.
    assert covered(low) > covered(high) + 0.01


def test_slices_show_the_volume_planes(view, spheres, stats, to_array):
    vol = spheres()
    view.set_volume(vol, VOXEL, N_MEDIUM)
    view.set_slices(12, 30, 20)
    assert view.slices == (12, 30, 20)
    np.testing.assert_allclose(view.slice_items["z"].image, vol[12] + np.float32(N_MEDIUM))
    np.testing.assert_allclose(view.slice_items["y"].image, vol[:, 30, :] + np.float32(N_MEDIUM))
    np.testing.assert_allclose(view.slice_items["x"].image, vol[:, :, 20] + np.float32(N_MEDIUM))
    # Each slice image covers its physical extent (µm), not its pixel count.
    r = view.slice_items["y"].mapRectToView(view.slice_items["y"].boundingRect())
    assert (r.left(), r.width(), r.top(), r.height()) == pytest.approx((-4.9, 9.6, 0.0, 9.6))
    before = to_array(view._slice_widget.grab())
    assert stats(before)["colours"] > 20
    view.set_slices(2, 2, 2)
    after = to_array(view._slice_widget.grab())
    assert np.abs(before[..., :3].astype(int) - after[..., :3].astype(int)).mean() > 0.5
    view.set_slices(-5, 999, 10)
    assert view.slices == (0, 47, 10)
    assert [view.slice_spins[a].value() for a in "zyx"] == [0, 47, 10]


def test_slice_spinboxes_drive_slices(view, spheres, qtbot):
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    with qtbot.waitSignal(view.slicesChanged, timeout=1000) as blocker:
        view.slice_spins["x"].setValue(5)
    assert blocker.args[2] == 5 and view.slices[2] == 5


def test_mode_combo_and_errors(view, spheres):
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    view.mode_combo.setCurrentIndex(MODES.index("translucent"))
    assert view.mode == "translucent" and view.volume.method == "translucent"
    with pytest.raises(ValueError):
        view.set_mode("xray")
    with pytest.raises(ValueError):
        view.set_volume(np.zeros((4, 4)), VOXEL, N_MEDIUM)
    with pytest.raises(ValueError):
        view.set_volume(np.zeros((4, 4, 4)), (0.0, 1, 1), N_MEDIUM)
    with pytest.raises(ValueError):
        view.set_clim(0.1, 0.0)


def test_save_png_writes_the_snapshot(view, spheres, tmp_path):
    view.set_volume(spheres(), VOXEL, N_MEDIUM)
    path = tmp_path / "volume.png"
    view.save_png(path)
    img = QtGui.QImage(str(path))
    snap = view.snapshot()
    assert not img.isNull()
    assert (img.height(), img.width()) == snap.shape[:2]


@pytest.mark.nodisplay
def test_nice_step():
    assert nice_step(9.6) == 2.0
    assert nice_step(0.37) == pytest.approx(0.1)
    assert nice_step(130) == 50


def test_an_empty_view_shows_a_cells_range_of_refractive_index(view):
    """Before any volume the colour bar spans the medium to +0.05 (a living cell's Δn), and the
    iso value lies inside it (it showed 1.333–2.333 and an iso RI of 1.833 to a first user)."""
    lo, hi = view.ri_range()
    assert (lo, hi) == pytest.approx((1.333, 1.383))
    assert lo <= view.iso_spin.value() <= hi
