"""GUI test setup: a real window under a real (or virtual) X display.

The GUI tests need a display with OpenGL (vispy's 3D canvas); CI runs them under
``xvfb-run -a -s "-screen 0 1280x800x24"``. Without a display they are skipped
with a reason instead of aborting in Qt's platform plugin. Tests that need no
display (the PySide6 reference-count probe) are marked ``nodisplay`` here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import vispy

vispy.use("pyside6")

import nvplive.app  # noqa: E402,F401  (applies the PySide6 reference-count guard first)

_HERE = Path(__file__).parent


def _no_display_reason() -> str | None:
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return "QT_QPA_PLATFORM=offscreen has no OpenGL context for vispy; run under xvfb-run instead"
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return 'no DISPLAY: run GUI tests under xvfb-run -a -s "-screen 0 1280x800x24"'
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nodisplay: app test that runs without a display")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _no_display_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if _HERE in Path(str(item.fspath)).parents and "nodisplay" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def spheres():
    """Factory: Δn volume [Z, Y, X] with a few spheres (µm geometry of docs/physics.md)."""

    def make(shape=(24, 48, 48), voxel_um=(0.4, 0.2, 0.2), shift_um=0.0, scale=1.0) -> np.ndarray:
        nz, ny, nx = shape
        dz, dy, dx = voxel_um
        z = (np.arange(nz) + 0.5) * dz
        y = (np.arange(ny) - ny / 2) * dy
        x = (np.arange(nx) - nx / 2) * dx
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        zc = nz * dz / 2
        dn = np.zeros(shape, np.float32)
        for cx, cy, cz, r, amp in (
            (-1.5 + shift_um, -1.0, zc, 1.8, 0.02),
            (1.8, 1.2, zc + 1.0, 1.3, 0.035),
            (0.3, 2.0 - shift_um, zc - 1.5, 0.9, 0.05),
        ):
            dn += amp * (((xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2) < r**2)
        return dn * np.float32(scale)

    return make


@pytest.fixture
def camera_frames():
    """Factory: (frames [V, Y, X] uint16, sources_um_xy [V, 2]) with one bright spot per source."""

    def make(views=5, n=96, pixel_um=0.2, seed=0, brightness=2000.0):
        rng = np.random.default_rng(seed)
        ang = np.arange(views) * 2 * np.pi / views
        sources = np.column_stack([3.0 * np.cos(ang), 3.0 * np.sin(ang)])
        c = (np.arange(n) - n / 2) * pixel_um
        xx, yy = np.meshgrid(c, c)
        frames = np.empty((views, n, n), np.uint16)
        for i, (sx, sy) in enumerate(sources):
            r = np.hypot(xx - sx, yy - sy)
            img = 500 + brightness * np.exp(-(r**2) / 2.0) * (1 + 0.5 * np.cos(2 * np.pi * r / 1.0))
            frames[i] = np.clip(img + rng.normal(0, 20, img.shape), 0, 65535).astype(np.uint16)
        return frames, sources

    return make


def picture_stats(rgba: np.ndarray) -> dict[str, float]:
    """Content measures of an RGBA/RGB uint8 picture."""
    rgb = np.asarray(rgba)[..., :3]
    flat = rgb.reshape(-1, 3).astype(np.int32)
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    background = np.median(flat, axis=0)
    differs = np.abs(flat - background).sum(axis=1) > 30
    return {
        "std": float(rgb.std()),
        "colours": float(len(np.unique(packed))),
        "foreground": float(differs.mean()),
    }


def qimage_to_array(image) -> np.ndarray:
    """RGBA uint8 array [H, W, 4] of a QImage / QPixmap."""
    from PySide6 import QtGui

    if isinstance(image, QtGui.QPixmap):
        image = image.toImage()
    image = image.convertToFormat(QtGui.QImage.Format.Format_RGBA8888)
    h, w = image.height(), image.width()
    buf = np.frombuffer(image.constBits(), np.uint8, count=image.sizeInBytes())
    return buf.reshape(h, image.bytesPerLine())[:, : w * 4].reshape(h, w, 4).copy()


@pytest.fixture
def stats():
    return picture_stats


@pytest.fixture
def to_array():
    return qimage_to_array
