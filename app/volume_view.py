"""3D view of the reconstructed refractive-index contrast Δn.

``VolumeView`` holds a vispy canvas (volume rendering, box axes in µm, slice-plane
outlines), a pyqtgraph colorbar in refractive-index units (n_medium + Δn) and a
panel of three orthogonal slices. Coordinates follow docs/physics.md (Conventions): lateral origin at
the field-of-view centre (voxel ``j`` at ``x = (j − Nx/2)·dx``), axial origin at
the bottom face of the volume (slab ``k`` spans ``[k·dz, (k+1)·dz]``), all in µm.

All methods must be called from the GUI thread. Repeated ``set_volume`` calls
update the existing visuals (texture upload only); nothing is re-created.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
import vispy
from PySide6 import QtCore, QtWidgets

from . import style
from .model import RENDER_MODES as MODES

vispy.use("pyside6")

from vispy import scene  # noqa: E402  (needs the backend chosen first)
from vispy.io import write_png  # noqa: E402
from vispy.visuals.transforms import STTransform  # noqa: E402

_MODE_LABELS = {"mip": "MIP", "translucent": "Translucent", "iso": "Isosurface"}
_MODE_ALIASES = {"isosurface": "iso", "maximum": "mip", "max": "mip"}


#: The colour limits' upper Δn before any volume is shown (a living cell's range; RI n_medium … +0.05).
EMPTY_CLIM_DN = 0.05


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of a Δn volume: shape (Nz, Ny, Nx) and voxel size (dz, dy, dx) in µm."""

    shape: tuple[int, int, int]
    voxel_um: tuple[float, float, float]

    def voxel_centres_um(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates (µm) along axis 0 (z), 1 (y) or 2 (x)."""
        n, d = self.shape[axis], self.voxel_um[axis]
        j = np.arange(n, dtype=float)
        return (j + 0.5) * d if axis == 0 else (j - n / 2) * d

    def bounds_um(self, axis: int) -> tuple[float, float]:
        """Outer faces (µm) of the voxel grid along one axis."""
        n, d = self.shape[axis], self.voxel_um[axis]
        if axis == 0:
            return 0.0, n * d
        return (-n / 2 - 0.5) * d, (n / 2 - 0.5) * d


def nice_step(span: float, target_ticks: int = 5) -> float:
    """A 1-2-5 tick step giving about ``target_ticks`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / target_ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _ticks(lo: float, hi: float) -> np.ndarray:
    step = nice_step(hi - lo)
    first = math.ceil(lo / step - 1e-9) * step
    return np.arange(first, hi + 1e-9 * step, step)


#: The 3D view's note before its first volume.
NO_VOLUME_YET = "No volume yet (a cold start takes a while: see the Reconstruction panel)"

class VolumeView(QtWidgets.QWidget):
    """Live Δn volume: 3D rendering, RI colorbar and three orthogonal slices.

    Signals:
        slicesChanged(int, int, int): slice indices (z, y, x) after any change.
        modeChanged(str): the render mode changed (its combo box or :meth:`set_mode`).
    """

    slicesChanged = QtCore.Signal(int, int, int)
    modeChanged = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._dn = np.zeros((2, 2, 2), np.float32)
        self._geom = VolumeGeometry((2, 2, 2), (1.0, 1.0, 1.0))
        self._n_medium = 1.333
        # before any volume: a cell's range of Δn, so the empty view's colour bar and iso value are plausible
        self._clim = (0.0, EMPTY_CLIM_DN)
        self._auto_clim = True
        self._threshold: float | None = None
        self._mode = "mip"
        self._slices = (0, 0, 0)
        self._has_data = False

        # Layouts are installed on their widget before anything is added to them:
        # PySide6 6.12 does not hand ownership of widgets in a loose layout to the
        # parent when that layout is nested later (addLayout), and those widgets
        # were then deleted twice at exit ("shared QObject was deleted directly").
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        controls = QtWidgets.QHBoxLayout()
        layout.addLayout(controls)
        top = QtWidgets.QHBoxLayout()
        layout.addLayout(top, 3)
        top.setContentsMargins(0, 0, 0, 0)
        top.setSpacing(0)
        cbar_column = QtWidgets.QVBoxLayout()

        # 3D canvas: the Δn volume, its bounding box with µm ticks, the slice outlines
        self.canvas = scene.SceneCanvas(keys=None, bgcolor=style.BACKGROUND, show=False, parent=self)
        self.canvas.native.setMinimumSize(320, 240)
        self._view = self.canvas.central_widget.add_view()
        self._view.camera = scene.TurntableCamera(fov=35.0, elevation=22.0, azimuth=40.0, up="+z")
        self._cmap_opaque = style.ri_colormap_vispy(alpha_ramp=False)
        self._cmap_translucent = style.ri_colormap_vispy(alpha_ramp=True)
        self.volume = scene.visuals.Volume(
            self._dn,
            clim=(0.0, 1.0),
            method="mip",
            threshold=0.5,
            cmap=self._cmap_opaque,
            interpolation="linear",
            texture_format="auto",
            relative_step_size=0.8,
            parent=self._view.scene,
        )
        self.volume.transform = STTransform()
        self._box = scene.visuals.Line(
            pos=np.zeros((2, 3), np.float32), color=style.MUTED, connect="segments", width=1.0,
            parent=self._view.scene,
        )
        self._tick_text = scene.visuals.Text(
            text=[""], pos=np.zeros((1, 3)), color=style.FOREGROUND, font_size=7.0,
            anchor_x="center", anchor_y="center", parent=self._view.scene,
        )
        self._tick_text.set_gl_state("translucent", depth_test=False)
        self._plane_lines = {
            ax: scene.visuals.Line(
                pos=np.zeros((2, 3), np.float32), color=style.SLICE_COLORS[ax], connect="segments",
                width=1.5, parent=self._view.scene,
            )
            for ax in "zyx"
        }
        for line in self._plane_lines.values():
            # Slice outlines stay visible through the rendered volume in every mode.
            line.set_gl_state("translucent", depth_test=False)
        #: Said on the canvas until the first volume arrives (a cold start takes minutes on a CPU).
        self.placeholder = scene.visuals.Text(
            text=NO_VOLUME_YET, pos=(12, 16), color=style.MUTED, font_size=9.0,
            anchor_x="left", anchor_y="center", parent=self.canvas.scene,
        )
        top.addWidget(self.canvas.native, 1)
        top.addLayout(cbar_column)
        cbar_column.setSpacing(0)

        # RI colour bar and the value readout under it
        self._cbar_widget = pg.GraphicsLayoutWidget()
        self._cbar_widget.setBackground(style.BACKGROUND)
        self._cbar_widget.setFixedWidth(92)
        self.colorbar = pg.ColorBarItem(
            values=(self._n_medium, self._n_medium + EMPTY_CLIM_DN),
            colorMap=style.ri_colormap_pg(),
            label="RI",
            interactive=False,
            width=14,
            colorMapMenu=False,
        )
        for name in ("left", "right", "top", "bottom"):
            axis = self.colorbar.getAxis(name)
            axis.setPen(pg.mkPen(style.MUTED))
            axis.setTextPen(pg.mkPen(style.FOREGROUND))
        self.colorbar.axis.setWidth(52)
        self._cbar_widget.addItem(self.colorbar)
        cbar_column.addWidget(self._cbar_widget, 1)
        self.readout = QtWidgets.QLabel("")
        cbar_column.addWidget(self.readout)
        self.readout.setObjectName("readout")
        self.readout.setFixedWidth(self._cbar_widget.width())
        self.readout.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.readout.setStyleSheet(f"background: {style.BACKGROUND}; padding: 2px 0;")

        # three orthogonal slices
        self._slice_widget = pg.GraphicsLayoutWidget()
        self._slice_widget.setBackground(style.BACKGROUND)
        self._slice_widget.setMinimumHeight(160)
        self.slice_items: dict[str, pg.ImageItem] = {}
        self.slice_plots: dict[str, pg.PlotItem] = {}
        self._cross: dict[str, tuple[pg.InfiniteLine, pg.InfiniteLine]] = {}
        self._slice_rects: dict[str, QtCore.QRectF] = {ax: QtCore.QRectF(0, 0, 1, 1) for ax in "zyx"}
        # plane -> (horizontal axis, vertical axis) of the panel
        self._panel_axes = {"z": ("x", "y"), "y": ("x", "z"), "x": ("y", "z")}
        for ax in "zyx":
            h, v = self._panel_axes[ax]
            plot = self._slice_widget.addPlot()
            style.style_plot_item(plot)
            plot.showGrid(x=False, y=False)
            plot.setTitle(f"{h}{v} slice", color=style.SLICE_COLORS[ax], size="8pt")
            plot.setLabel("bottom", f"{h} (µm)")
            plot.setLabel("left", f"{v} (µm)")
            plot.setAspectLocked(True)
            plot.setMenuEnabled(False)
            if ax == "z":
                plot.invertY(True)
            item = pg.ImageItem(axisOrder="row-major")
            plot.addItem(item)
            lh = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(style.SLICE_COLORS[h], width=1))
            lv = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(style.SLICE_COLORS[v], width=1))
            plot.addItem(lh)
            plot.addItem(lv)
            self.slice_items[ax] = item
            self.slice_plots[ax] = plot
            self._cross[ax] = (lh, lv)
        self.colorbar.setImageItem(list(self.slice_items.values()))
        self._slice_widget.scene().sigMouseClicked.connect(self._on_slice_click)
        layout.addWidget(self._slice_widget, 2)

        # controls: render mode, iso level, slice indices
        controls.setSpacing(6)
        controls.addWidget(style.panel_title("Refractive index"))
        self.mode_combo = QtWidgets.QComboBox()
        for m in MODES:
            self.mode_combo.addItem(_MODE_LABELS[m], m)
        self.mode_combo.currentIndexChanged.connect(
            lambda i: self.set_mode(self.mode_combo.itemData(i))
        )
        controls.addWidget(self.mode_combo)
        self.iso_spin = QtWidgets.QDoubleSpinBox()
        self.iso_spin.setDecimals(4)
        self.iso_spin.setSingleStep(0.001)
        self.iso_spin.setRange(0.0, 3.0)
        self.iso_spin.setPrefix("iso RI ")
        self.iso_spin.setEnabled(False)
        self.iso_spin.valueChanged.connect(lambda v: self.set_threshold(v - self._n_medium))
        controls.addWidget(self.iso_spin)
        self.slice_spins: dict[str, QtWidgets.QSpinBox] = {}
        for ax in "zyx":
            spin = QtWidgets.QSpinBox()
            spin.setPrefix(f"{ax} ")
            spin.setRange(0, 1)
            spin.setStyleSheet(f"color: {style.SLICE_COLORS[ax]};")
            spin.valueChanged.connect(self._on_slice_spin)
            self.slice_spins[ax] = spin
            controls.addWidget(spin)
        controls.addStretch(1)
        self._apply_clim()

    # ---------------------------------------------------------------- public API
    def set_volume(self, dn: np.ndarray, voxel_um_zyx, n_medium: float) -> None:
        """Show a new Δn volume.

        Args:
            dn: real Δn, float32-convertible array [Z, Y, X].
            voxel_um_zyx: voxel size (dz, dy, dx) in µm; a scalar means isotropic.
            n_medium: refractive index of the medium (RI = n_medium + Δn).
        """
        dn = np.asarray(dn)
        if dn.ndim != 3 or min(dn.shape) < 1:
            raise ValueError(f"dn must be a 3D array [Z, Y, X], got shape {dn.shape}")
        if np.iscomplexobj(dn):
            dn = dn.real
        voxel = np.broadcast_to(np.asarray(voxel_um_zyx, float), (3,))
        if not np.all(voxel > 0):
            raise ValueError(f"voxel size must be positive, got {tuple(voxel)} µm")
        # Own copy: the caller may reuse its buffer while the GPU upload is pending.
        self._dn = np.array(dn, dtype=np.float32, copy=True, order="C")
        np.nan_to_num(self._dn, copy=False)
        geom = VolumeGeometry(tuple(int(s) for s in dn.shape), tuple(float(v) for v in voxel))
        geometry_changed = geom != self._geom or not self._has_data
        self._geom = geom
        self._n_medium = float(n_medium)
        if self._auto_clim:
            self._clim = self._auto_limits(self._dn)
        self._upload()
        if geometry_changed:
            self._update_geometry()
            z, y, x = (s // 2 for s in geom.shape)
            self._slices = (-1, -1, -1)
            self.set_slices(z, y, x)
        else:
            self._update_slice_images()
        self._has_data = True
        self.placeholder.visible = False
        self._apply_clim()
        self.canvas.update()

    def set_mode(self, mode: str) -> None:
        """Render mode: 'mip', 'translucent' or 'iso' (isosurface at the threshold)."""
        key = _MODE_ALIASES.get(str(mode).lower(), str(mode).lower())
        if key not in MODES:
            raise ValueError(f"unknown render mode {mode!r}; use one of {', '.join(MODES)}")
        changed = key != self._mode
        self._mode = key
        self.volume.method = key
        self.volume.cmap = self._cmap_translucent if key == "translucent" else self._cmap_opaque
        self.iso_spin.setEnabled(key == "iso")
        idx = MODES.index(key)
        if self.mode_combo.currentIndex() != idx:
            self.mode_combo.blockSignals(True)
            self.mode_combo.setCurrentIndex(idx)
            self.mode_combo.blockSignals(False)
        self.canvas.update()
        if changed:
            self.modeChanged.emit(key)

    @property
    def mode(self) -> str:
        """Current render mode ('mip', 'translucent' or 'iso')."""
        return self._mode

    def set_clim(self, lo: float, hi: float) -> None:
        """Colour limits in Δn (RI − n_medium); pins them for later volumes."""
        lo, hi = float(lo), float(hi)
        if not hi > lo:
            raise ValueError(f"clim needs hi > lo, got ({lo}, {hi})")
        self._clim = (lo, hi)
        self._auto_clim = False
        self._upload()
        self._apply_clim()
        self.canvas.update()

    def set_auto_clim(self, enabled: bool = True) -> None:
        """Let every new volume set the colour limits (0.1–99.9 percentile, including 0)."""
        self._auto_clim = bool(enabled)
        if enabled and self._has_data:
            self._clim = self._auto_limits(self._dn)
            self._upload()
            self._apply_clim()
            self.canvas.update()

    @property
    def clim(self) -> tuple[float, float]:
        """Colour limits in Δn."""
        return self._clim

    def ri_range(self) -> tuple[float, float]:
        """Colour limits in refractive-index units (n_medium + Δn)."""
        return self._n_medium + self._clim[0], self._n_medium + self._clim[1]

    def colorbar_text(self) -> str:
        """Colorbar summary, e.g. ``"RI 1.3330 … 1.3700"`` (enough decimals for the span)."""
        lo, hi = self.ri_range()
        digits = max(3, int(math.ceil(-math.log10(max(hi - lo, 1e-9)))) + 2)
        return f"RI {lo:.{digits}f} … {hi:.{digits}f}"

    def set_threshold(self, dn_value: float) -> None:
        """Isosurface level in Δn (used in 'iso' mode)."""
        self._threshold = float(dn_value)
        self._apply_threshold()
        self._sync_iso_spin()
        self.canvas.update()

    @property
    def threshold(self) -> float:
        """Isosurface level in Δn (the middle of the colour limits unless set)."""
        if self._threshold is None:
            return 0.5 * (self._clim[0] + self._clim[1])
        return self._threshold

    def set_slices(self, z: int, y: int, x: int) -> None:
        """Indices of the three orthogonal slice planes (clipped to the volume)."""
        nz, ny, nx = self._geom.shape
        new = (int(np.clip(z, 0, nz - 1)), int(np.clip(y, 0, ny - 1)), int(np.clip(x, 0, nx - 1)))
        if new == self._slices:
            return
        self._slices = new
        for ax, val in zip("zyx", new):
            spin = self.slice_spins[ax]
            spin.blockSignals(True)
            spin.setValue(val)
            spin.blockSignals(False)
        self._update_slice_images()
        self._update_plane_outlines()
        self.canvas.update()
        self.slicesChanged.emit(*new)

    @property
    def slices(self) -> tuple[int, int, int]:
        """Current slice indices (z, y, x)."""
        return self._slices

    def show_slice_planes(self, visible: bool) -> None:
        """Show or hide the slice-plane outlines in the 3D view."""
        for line in self._plane_lines.values():
            line.visible = bool(visible)
        self.canvas.update()

    def reset_camera(self) -> None:
        """Frame the whole volume from the default viewing direction."""
        cam = self._view.camera
        (z0, z1), (y0, y1), (x0, x1) = (self._geom.bounds_um(a) for a in range(3))
        cam.elevation, cam.azimuth = 22.0, 40.0
        cam.set_range(x=(x0, x1), y=(y0, y1), z=(z0, z1), margin=0.22)

    def snapshot(self) -> np.ndarray:
        """RGBA uint8 picture [H, W, 4] of the 3D canvas."""
        return np.asarray(self.canvas.render())

    def save_png(self, path) -> None:
        """Write the 3D canvas to a PNG file."""
        write_png(str(path), self.snapshot())

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _auto_limits(dn: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(dn, [0.1, 99.9])
        lo = min(0.0, float(lo))
        hi = max(float(hi), lo + 1e-4)
        return lo, hi

    def _upload(self) -> None:
        # The texture holds Δn rescaled so that the colour limits map to [0, 1]:
        # vispy's isosurface search assumes values of order 1 (it refines every
        # step within 0.2 of the level, i.e. always for raw Δn ~ 0.01, ten times
        # slower), and a threshold in the same units keeps both consistent.
        lo, hi = self._clim
        norm = (self._dn - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        self.volume.set_data(norm, clim=(0.0, 1.0), copy=False)
        self._apply_threshold()

    def _apply_threshold(self) -> None:
        lo, hi = self._clim
        self.volume.threshold = (self.threshold - lo) / (hi - lo)

    def _apply_clim(self) -> None:
        lo, hi = self.ri_range()
        self.colorbar.setLevels((lo, hi))
        self.readout.setText(f"n_medium\n{self._n_medium:.4f}")
        self.readout.setToolTip(self.colorbar_text())
        self._cbar_widget.setToolTip(self.colorbar_text())
        spin_lo, spin_hi = lo - abs(hi - lo), hi + abs(hi - lo)
        self.iso_spin.blockSignals(True)
        self.iso_spin.setRange(spin_lo, spin_hi)
        self.iso_spin.setSingleStep(max((hi - lo) / 50, 1e-4))
        self.iso_spin.blockSignals(False)
        self._sync_iso_spin()

    def _sync_iso_spin(self) -> None:
        self.iso_spin.blockSignals(True)
        self.iso_spin.setValue(self._n_medium + self.threshold)
        self.iso_spin.blockSignals(False)

    def _update_geometry(self) -> None:
        g = self._geom
        _nz, ny, nx = g.shape
        dz, dy, dx = g.voxel_um
        self.volume.transform.scale = (dx, dy, dz)
        self.volume.transform.translate = (-nx / 2 * dx, -ny / 2 * dy, 0.5 * dz)
        for ax, n in zip("zyx", g.shape):
            self.slice_spins[ax].setRange(0, n - 1)
        for ax in self.slice_items:
            h, v = self._panel_axes[ax]
            (h0, h1), (v0, v1) = self._bounds(h), self._bounds(v)
            self._slice_rects[ax] = QtCore.QRectF(h0, v0, h1 - h0, v1 - v0)
            self.slice_plots[ax].setRange(xRange=(h0, h1), yRange=(v0, v1), padding=0.02)
        self._update_box_and_ticks()
        self.reset_camera()

    def _bounds(self, axis_name: str) -> tuple[float, float]:
        return self._geom.bounds_um("zyx".index(axis_name))

    def _update_box_and_ticks(self) -> None:
        (z0, z1), (y0, y1), (x0, x1) = (self._geom.bounds_um(a) for a in range(3))
        corners = np.array([[x, y, z] for z in (z0, z1) for y in (y0, y1) for x in (x0, x1)], float)
        edges = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7)]
        segs = [corners[[a, b]] for a, b in edges]
        size = max(x1 - x0, y1 - y0, z1 - z0)
        tick = 0.025 * size
        texts: list[str] = []
        tpos: list[tuple[float, float, float]] = []
        # x ticks on the front-bottom edge (y = y0, z = z0), pointing to −y.
        for v in _ticks(x0, x1):
            segs.append(np.array([[v, y0, z0], [v, y0 - tick, z0]]))
            texts.append(f"{v:g}")
            tpos.append((v, y0 - 3.5 * tick, z0))
        # y ticks on the right-bottom edge (x = x1, z = z0), pointing to +x.
        for v in _ticks(y0, y1):
            segs.append(np.array([[x1, v, z0], [x1 + tick, v, z0]]))
            texts.append(f"{v:g}")
            tpos.append((x1 + 3.5 * tick, v, z0))
        # z ticks on the front-left vertical edge (x = x0, y = y0), pointing to −x.
        for v in _ticks(z0, z1):
            segs.append(np.array([[x0, y0, v], [x0 - tick, y0, v]]))
            texts.append(f"{v:g}")
            tpos.append((x0 - 3.5 * tick, y0, v))
        texts += ["x (µm)", "y (µm)", "z (µm)"]
        tpos += [
            (0.5 * (x0 + x1), y0 - 8 * tick, z0),
            (x1 + 8 * tick, 0.5 * (y0 + y1), z0),
            (x0 - 7 * tick, y0, z1 + 2 * tick),
        ]
        self._box.set_data(pos=np.concatenate(segs).astype(np.float32), connect="segments")
        self._tick_text.text = texts
        self._tick_text.pos = np.array(tpos, np.float32)

    def _update_plane_outlines(self) -> None:
        g = self._geom
        (z0, z1), (y0, y1), (x0, x1) = (g.bounds_um(a) for a in range(3))
        zc, yc, xc = (g.voxel_centres_um(a)[i] for a, i in enumerate(self._slices))

        def rect(p: np.ndarray) -> np.ndarray:
            return np.array([p[0], p[1], p[1], p[2], p[2], p[3], p[3], p[0]], np.float32)

        self._plane_lines["z"].set_data(
            pos=rect(np.array([[x0, y0, zc], [x1, y0, zc], [x1, y1, zc], [x0, y1, zc]])), connect="segments"
        )
        self._plane_lines["y"].set_data(
            pos=rect(np.array([[x0, yc, z0], [x1, yc, z0], [x1, yc, z1], [x0, yc, z1]])), connect="segments"
        )
        self._plane_lines["x"].set_data(
            pos=rect(np.array([[xc, y0, z0], [xc, y1, z0], [xc, y1, z1], [xc, y0, z1]])), connect="segments"
        )
        for ax in "zyx":
            h, v = self._panel_axes[ax]
            lh, lv = self._cross[ax]
            lh.setValue(g.voxel_centres_um("zyx".index(h))[self._slices["zyx".index(h)]])
            lv.setValue(g.voxel_centres_um("zyx".index(v))[self._slices["zyx".index(v)]])

    def _update_slice_images(self) -> None:
        z, y, x = self._slices
        planes = {"z": self._dn[z], "y": self._dn[:, y, :], "x": self._dn[:, :, x]}
        lo, hi = self.ri_range()
        for ax, img in planes.items():
            item = self.slice_items[ax]
            item.setImage(img + np.float32(self._n_medium), autoLevels=False, levels=(lo, hi))
            # The rect maps the current image's pixels, so it is set after every image change.
            item.setRect(self._slice_rects[ax])

    def _on_slice_spin(self) -> None:
        self.set_slices(*(self.slice_spins[a].value() for a in "zyx"))

    def _on_slice_click(self, event) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        for ax, plot in self.slice_plots.items():
            if not plot.sceneBoundingRect().contains(event.scenePos()):
                continue
            p = plot.vb.mapSceneToView(event.scenePos())
            h, v = self._panel_axes[ax]
            idx = list(self._slices)
            for name, val in ((h, p.x()), (v, p.y())):
                a = "zyx".index(name)
                centres = self._geom.voxel_centres_um(a)
                idx[a] = int(np.argmin(np.abs(centres - val)))
            self.set_slices(*idx)
            return
