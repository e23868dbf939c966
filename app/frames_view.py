"""Camera frames of the current timepoint: one view large, all views as thumbnails.

Image coordinates follow docs/physics.md (Conventions): pixel ``j`` of ``N`` sits at
``x_j = (j − N/2)·dx`` µm (same for y) with ``dx`` the pixel size in the sample
plane, so the calibrated source positions (µm, same origin) can be drawn on top.
Rows are shown top-down, as on the camera.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from . import style

THUMB_PX = 84


def pixel_centres_um(n: int, pixel_size_um: float) -> np.ndarray:
    """Pixel-centre coordinates (µm) of ``n`` pixels, origin at the FOV centre."""
    return (np.arange(n, dtype=float) - n / 2) * pixel_size_um


def thumbnail_image(frame: np.ndarray, size: int = THUMB_PX) -> QtGui.QImage:
    """8-bit greyscale thumbnail (longest side ≤ ``size``), contrast 0.5–99.8 percentile."""
    step = max(1, int(np.ceil(max(frame.shape) / size)))
    small = np.asarray(frame[::step, ::step], dtype=np.float32)
    lo, hi = np.percentile(small, [0.5, 99.8])
    scaled = np.clip((small - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    data = np.ascontiguousarray((scaled * 255).astype(np.uint8))
    h, w = data.shape
    return QtGui.QImage(data.data, w, h, w, QtGui.QImage.Format.Format_Grayscale8).copy()


class FramesView(QtWidgets.QWidget):
    """The V camera frames of one timepoint with source markers and contrast control.

    Signals:
        viewSelected(int): index of the view now shown large.
    """

    viewSelected = QtCore.Signal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._frames = np.zeros((0, 1, 1), np.uint16)
        self._pixel_um = 1.0
        self._sources: np.ndarray | None = None
        self._current = -1
        self.auto_levels = True
        self._setting_levels = False
        self._geometry_text = ""
        self._image_rect = QtCore.QRectF(0.0, 0.0, 1.0, 1.0)

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(style.BACKGROUND)
        self.plot = self.graphics.addPlot()
        style.style_plot_item(self.plot)
        self.plot.showGrid(x=False, y=False)
        self.plot.setLabel("bottom", "x (µm)")
        self.plot.setLabel("left", "y (µm)")
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image_item)
        self.sources_item = pg.ScatterPlotItem(
            size=13, symbol="o", pen=pg.mkPen(style.SOURCE_COLOR, width=1.6), brush=pg.mkBrush(None),
            pxMode=True,
        )
        self.sources_item.setZValue(10)
        self.selected_item = pg.ScatterPlotItem(
            size=17, symbol="o", pen=pg.mkPen("#0b1a10", width=1.2), brush=pg.mkBrush(style.SOURCE_SELECTED_COLOR),
            pxMode=True,
        )
        self.selected_item.setZValue(11)
        self.plot.addItem(self.sources_item)
        self.plot.addItem(self.selected_item)
        self._labels: list[pg.TextItem] = []

        self.histogram = pg.HistogramLUTWidget(image=self.image_item)
        self.histogram.setBackground(style.BACKGROUND)
        self.histogram.setFixedWidth(118)
        self.histogram.item.gradient.loadPreset("grey")
        self.histogram.item.sigLevelChangeFinished.connect(self._on_user_levels)

        self.auto_button = QtWidgets.QToolButton()
        self.auto_button.setText("Auto contrast")
        self.auto_button.setCheckable(True)
        self.auto_button.setChecked(True)
        self.auto_button.toggled.connect(self._on_auto_toggled)

        self.thumbs = QtWidgets.QListWidget()
        self.thumbs.setViewMode(QtWidgets.QListView.ViewMode.IconMode)
        self.thumbs.setFlow(QtWidgets.QListView.Flow.LeftToRight)
        self.thumbs.setWrapping(False)
        self.thumbs.setMovement(QtWidgets.QListView.Movement.Static)
        self.thumbs.setIconSize(QtCore.QSize(THUMB_PX, THUMB_PX))
        self.thumbs.setSpacing(3)
        self.thumbs.setFixedHeight(THUMB_PX + 40)
        self.thumbs.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.thumbs.setVerticalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.thumbs.currentRowChanged.connect(self._on_thumb_row)

        self.readout = QtWidgets.QLabel("")
        self.readout.setObjectName("readout")
        self.cursor_readout = QtWidgets.QLabel("")
        self.cursor_readout.setObjectName("readout")
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)

        self.readout.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        self.cursor_readout.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
        # Each layout is nested before widgets go in (see VolumeView: PySide6 6.12
        # loses track of ownership for widgets added to a loose layout).
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        header = QtWidgets.QHBoxLayout()
        layout.addLayout(header)
        header.addWidget(style.panel_title("Camera frames"))
        header.addStretch(1)
        header.addWidget(self.auto_button)
        middle = QtWidgets.QHBoxLayout()
        layout.addLayout(middle, 1)
        middle.setSpacing(0)
        middle.addWidget(self.graphics, 1)
        middle.addWidget(self.histogram)
        footer = QtWidgets.QHBoxLayout()
        layout.addLayout(footer)
        footer.addWidget(self.readout, 1)
        footer.addWidget(self.cursor_readout)
        layout.addWidget(self.thumbs)

    # ---------------------------------------------------------------- public API
    def set_frames(self, frames: np.ndarray, pixel_size_um: float, sources_um_xy: np.ndarray | None = None) -> None:
        """Show the frames of one timepoint.

        Args:
            frames: camera images [V, Y, X] (uint16; any real dtype is shown as is).
            pixel_size_um: pixel size in the sample plane, µm.
            sources_um_xy: calibrated source positions [V, 2] as (x, y) µm, FOV-centre origin, or None.
        """
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3 or frames.shape[0] < 1:
            raise ValueError(f"frames must be [V, Y, X], got shape {frames.shape}")
        if not pixel_size_um > 0:
            raise ValueError(f"pixel size must be positive, got {pixel_size_um} µm")
        if sources_um_xy is not None:
            sources_um_xy = np.asarray(sources_um_xy, dtype=float).reshape(-1, 2)
            if sources_um_xy.shape[0] != frames.shape[0]:
                raise ValueError(
                    f"{sources_um_xy.shape[0]} source positions for {frames.shape[0]} views"
                )
        geometry_changed = frames.shape[1:] != self._frames.shape[1:] or pixel_size_um != self._pixel_um
        self._frames = frames
        self._pixel_um = float(pixel_size_um)
        self._sources = sources_um_xy

        _, ny, nx = frames.shape
        x0 = (-nx / 2 - 0.5) * self._pixel_um
        y0 = (-ny / 2 - 0.5) * self._pixel_um
        self._image_rect = QtCore.QRectF(x0, y0, nx * self._pixel_um, ny * self._pixel_um)
        self._update_thumbnails()
        self._update_source_items()
        current = self._current if 0 <= self._current < frames.shape[0] else 0
        changed = current != self._current
        self._show(current)
        if changed:
            self.viewSelected.emit(current)
        if geometry_changed:
            self._auto_range()

    def select_view(self, i: int) -> None:
        """Show view ``i`` large and highlight its source."""
        v = self._frames.shape[0]
        if v == 0:
            return
        i = int(i)
        if not 0 <= i < v:
            raise IndexError(f"view {i} out of range 0..{v - 1}")
        changed = i != self._current
        self._show(i)
        if changed:
            self.viewSelected.emit(i)

    @property
    def current_view(self) -> int:
        """Index of the view shown large (−1 before any frames)."""
        return self._current

    @property
    def n_views(self) -> int:
        return int(self._frames.shape[0])

    def levels(self) -> tuple[float, float]:
        """Display levels (counts) of the large image."""
        lo, hi = self.histogram.item.getLevels()
        return float(lo), float(hi)

    def set_levels(self, lo: float, hi: float) -> None:
        """Fix the display levels (switches automatic contrast off)."""
        self.auto_button.setChecked(False)
        self._setting_levels = True
        self.histogram.item.setLevels(float(lo), float(hi))
        self._setting_levels = False

    # ---------------------------------------------------------------- internals
    def _show(self, i: int) -> None:
        frame = self._frames[i]
        self.image_item.setImage(frame, autoLevels=False)
        self.image_item.setRect(self._image_rect)
        if self.auto_levels:
            sub = frame[:: max(1, frame.shape[0] // 256), :: max(1, frame.shape[1] // 256)]
            lo, hi = (float(v) for v in np.percentile(sub, [0.1, 99.9]))
            self._setting_levels = True
            self.histogram.item.setLevels(lo, hi if hi > lo else lo + 1.0)
            self._setting_levels = False
        self._current = i
        if self.thumbs.currentRow() != i:
            self.thumbs.blockSignals(True)
            self.thumbs.setCurrentRow(i)
            self.thumbs.blockSignals(False)
        self._update_selected_marker()
        self._update_readout()

    def _update_thumbnails(self) -> None:
        v = self._frames.shape[0]
        self.thumbs.blockSignals(True)
        while self.thumbs.count() > v:
            self.thumbs.takeItem(self.thumbs.count() - 1)
        while self.thumbs.count() < v:
            item = QtWidgets.QListWidgetItem(f"view {self.thumbs.count() + 1}")
            item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignHCenter)
            self.thumbs.addItem(item)
        for i in range(v):
            pix = QtGui.QPixmap.fromImage(thumbnail_image(self._frames[i]))
            self.thumbs.item(i).setIcon(QtGui.QIcon(pix))
        self.thumbs.blockSignals(False)

    def _update_source_items(self) -> None:
        for label in self._labels:
            self.plot.removeItem(label)
        self._labels = []
        if self._sources is None:
            self.sources_item.setData([], [])
            self.selected_item.setData([], [])
            return
        xs, ys = self._sources[:, 0], self._sources[:, 1]
        self.sources_item.setData(x=xs, y=ys)
        for i, (x, y) in enumerate(self._sources):
            label = pg.TextItem(str(i + 1), color=style.SOURCE_COLOR, anchor=(-0.35, 1.1))
            label.setPos(float(x), float(y))
            label.setZValue(12)
            self.plot.addItem(label)
            self._labels.append(label)

    def _update_selected_marker(self) -> None:
        if self._sources is None or self._current < 0:
            self.selected_item.setData([], [])
            return
        x, y = self._sources[self._current]
        self.selected_item.setData(x=[x], y=[y])
        for i, label in enumerate(self._labels):
            label.setColor(style.SOURCE_SELECTED_COLOR if i == self._current else style.SOURCE_COLOR)

    def _auto_range(self) -> None:
        r = self._image_rect
        x0, x1, y0, y1 = r.left(), r.right(), r.top(), r.bottom()
        if self._sources is not None and len(self._sources):
            x0, x1 = min(x0, self._sources[:, 0].min()), max(x1, self._sources[:, 0].max())
            y0, y1 = min(y0, self._sources[:, 1].min()), max(y1, self._sources[:, 1].max())
        self.plot.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0.03)

    def _update_readout(self) -> None:
        v, ny, nx = self._frames.shape
        text = f"view {self._current + 1}/{v}"
        if self._sources is not None:
            x, y = self._sources[self._current]
            text += f" · source ({x:.2f}, {y:.2f}) µm"
        self.readout.setText(text)
        self._geometry_text = f"{nx}×{ny} px · {self._pixel_um:.3g} µm/px"
        self.cursor_readout.setText(self._geometry_text)

    def _on_thumb_row(self, row: int) -> None:
        if row >= 0:
            self.select_view(row)

    def _on_user_levels(self) -> None:
        if not self._setting_levels and self.auto_levels:
            self.auto_button.setChecked(False)

    def _on_auto_toggled(self, checked: bool) -> None:
        self.auto_levels = bool(checked)
        if checked and self._current >= 0:
            self._show(self._current)

    def _on_mouse_moved(self, pos: QtCore.QPointF) -> None:
        if self._current < 0 or not self.plot.sceneBoundingRect().contains(pos):
            self.cursor_readout.setText(self._geometry_text)
            return
        p = self.plot.vb.mapSceneToView(pos)
        _, ny, nx = self._frames.shape
        j = int(round(p.x() / self._pixel_um + nx / 2))
        k = int(round(p.y() / self._pixel_um + ny / 2))
        if 0 <= j < nx and 0 <= k < ny:
            value = self._frames[self._current, k, j]
            self.cursor_readout.setText(f"({p.x():.2f}, {p.y():.2f}) µm: {value}")
        else:
            self.cursor_readout.setText(self._geometry_text)
