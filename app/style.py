"""Look of the nvp-live GUI: dark palette, shared colours and the refractive-index colormap.

Colormaps are defined once here (control points in [0, 1]) and turned into a
vispy ``Colormap`` for the 3D view and a pyqtgraph ``ColorMap`` for 2D images and
the colorbar, so both show the same colours for the same refractive index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

RESOURCES = Path(__file__).resolve().parent.parent / "resources"

BACKGROUND = "#111418"
PANEL = "#1a1f26"
FOREGROUND = "#c8d0da"
MUTED = "#7d8793"
ACCENT = "#3fa7ff"
GRID_ALPHA = 0.15

# Slice-plane colours, also used for the matching 2D panel frames: z, y, x.
SLICE_COLORS = {"z": "#35d0ff", "y": "#ff5fd2", "x": "#ffd23f"}

# Source markers in the frames view.
SOURCE_COLOR = "#ff9f1c"
SOURCE_SELECTED_COLOR = "#3cff8f"

# Refractive-index colormap: dark blue-black (medium) through teal and amber to white
# (densest). Monotonic in lightness so the scale reads without a legend.
_RI_STOPS = np.array([0.0, 0.18, 0.40, 0.62, 0.82, 1.0])
_RI_RGB = np.array(
    [
        [0.03, 0.04, 0.08],
        [0.10, 0.16, 0.42],
        [0.05, 0.52, 0.62],
        [0.45, 0.80, 0.40],
        [0.98, 0.78, 0.22],
        [1.00, 0.98, 0.92],
    ]
)


# Opacity per ray sample for translucent rendering: the medium and faint noise stay
# clear, dense structures build up opacity over a few voxels.
_RI_ALPHA = np.array([0.0, 0.02, 0.10, 0.30, 0.60, 0.90])


def ri_colors_rgba(alpha_ramp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Control points and RGBA colours (floats in [0, 1]) of the RI colormap.

    With ``alpha_ramp`` the opacity rises from 0 at the bottom of the range to 0.9
    at the top (for translucent volume rendering).
    """
    alpha = _RI_ALPHA.copy() if alpha_ramp else np.ones_like(_RI_STOPS)
    return _RI_STOPS.copy(), np.column_stack([_RI_RGB, alpha])


def ri_colormap_pg() -> pg.ColorMap:
    """The RI colormap for pyqtgraph images and colorbars."""
    stops, rgba = ri_colors_rgba()
    return pg.ColorMap(stops, (rgba * 255).astype(np.ubyte), name="nvp-ri")


def ri_colormap_vispy(alpha_ramp: bool = False):
    """The RI colormap for vispy visuals (opaque, or with an opacity ramp)."""
    from vispy.color import Colormap

    stops, rgba = ri_colors_rgba(alpha_ramp)
    return Colormap(rgba, controls=stops, interpolation="linear")


def dark_palette() -> QtGui.QPalette:
    """A neutral dark Qt palette for instrument use at a dim microscope."""
    pal = QtGui.QPalette()
    role = QtGui.QPalette.ColorRole
    colors = {
        role.Window: PANEL,
        role.WindowText: FOREGROUND,
        role.Base: BACKGROUND,
        role.AlternateBase: PANEL,
        role.ToolTipBase: PANEL,
        role.ToolTipText: FOREGROUND,
        role.Text: FOREGROUND,
        role.Button: "#232a33",
        role.ButtonText: FOREGROUND,
        role.BrightText: "#ffffff",
        role.Highlight: ACCENT,
        role.HighlightedText: "#000000",
        role.PlaceholderText: MUTED,
    }
    for r, c in colors.items():
        pal.setColor(r, QtGui.QColor(c))
    disabled = QtGui.QPalette.ColorGroup.Disabled
    for r in (role.Text, role.ButtonText, role.WindowText):
        pal.setColor(disabled, r, QtGui.QColor(MUTED))
    return pal


STYLESHEET = f"""
QWidget {{ font-size: 9pt; }}
QLabel#panelTitle {{ color: {FOREGROUND}; font-weight: 600; padding: 2px 4px; }}
QLabel#readout {{ color: {MUTED}; padding: 0 6px; }}
QListWidget {{ background: {BACKGROUND}; border: 1px solid #2a313b; }}
QListWidget::item {{ color: {MUTED}; border-radius: 3px; }}
QListWidget::item:selected {{ background: #22384f; color: {FOREGROUND}; }}
QComboBox, QSpinBox, QDoubleSpinBox, QToolButton {{
    background: #232a33; border: 1px solid #323b47; border-radius: 3px; padding: 1px 4px;
}}
"""


def apply_dark_theme(app: QtWidgets.QApplication) -> None:
    """Fusion style with the dark palette and stylesheet."""
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    app.setStyleSheet(STYLESHEET)


def style_plot_item(item: pg.PlotItem) -> None:
    """Axis colours and grid of a pyqtgraph PlotItem in the dark theme."""
    for name in ("left", "bottom", "right", "top"):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen(MUTED))
        axis.setTextPen(pg.mkPen(FOREGROUND))
    item.showGrid(x=True, y=True, alpha=GRID_ALPHA)


def panel_title(text: str) -> QtWidgets.QLabel:
    """A small bold caption for a panel."""
    label = QtWidgets.QLabel(text)
    label.setObjectName("panelTitle")
    return label


#: The main window's stylesheet (docks, panels, the Live/Record/Stop buttons, the status bar).
WINDOW_STYLESHEET = f"""
QMainWindow::separator {{ background: #0d1014; width: 3px; height: 3px; }}
QDockWidget {{ color: {FOREGROUND}; font-weight: 600; }}
QDockWidget::title {{ background: #20262e; padding: 4px 8px; border-bottom: 1px solid #2c343f; }}
QLabel#sectionTitle {{ color: {ACCENT}; font-size: 8pt; font-weight: 700; letter-spacing: 1px;
    padding: 4px 0 0 0; border-bottom: 1px solid #2c343f; }}
QLabel#stateLabel {{ color: {FOREGROUND}; background: #141920; border: 1px solid #2a313b;
    border-radius: 3px; padding: 4px 6px; }}
QToolButton#liveButton, QToolButton#recordButton, QToolButton#stopButton {{
    font-weight: 600; padding: 4px 8px; border-radius: 4px; border: 1px solid #323b47; background: #232a33; }}
QToolButton#liveButton:checked {{ background: #1f5f3a; border-color: #3cff8f; }}
QToolButton#recordButton:checked {{ background: #6a1f25; border-color: #ff4d5e; }}
QToolButton:disabled {{ color: {MUTED}; }}
QPlainTextEdit#activity {{ background: {BACKGROUND}; border: 1px solid #2a313b; font-size: 8pt; }}
QLineEdit, QTreeWidget {{ background: {BACKGROUND}; border: 1px solid #323b47; border-radius: 3px; }}
QTreeWidget {{ alternate-background-color: #161b22; }}
QHeaderView::section {{ background: #20262e; color: {MUTED}; border: none; padding: 2px 4px; }}
QPushButton {{ background: #232a33; border: 1px solid #323b47; border-radius: 3px; padding: 3px 10px; }}
QPushButton:hover, QToolButton:hover {{ border-color: {ACCENT}; }}
QProgressBar {{ background: {BACKGROUND}; border: 1px solid #323b47; border-radius: 3px; text-align: center;
    color: {FOREGROUND}; }}
QProgressBar::chunk {{ background: #245a86; }}
QStatusBar {{ background: #161b21; border-top: 1px solid #2c343f; }}
QStatusBar QLabel {{ color: {FOREGROUND}; padding: 0 8px; border-left: 1px solid #2c343f; }}
QToolBar {{ background: #1d232b; border-bottom: 1px solid #2c343f; spacing: 4px; padding: 2px; }}
QSlider::groove:horizontal {{ height: 4px; background: #2c343f; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {ACCENT}; width: 12px; margin: -5px 0; border-radius: 6px; }}
QSlider::sub-page:horizontal {{ background: #245a86; border-radius: 2px; }}
"""


def app_icon() -> QtGui.QIcon:
    """The application icon (resources/nvplive.svg)."""
    return QtGui.QIcon(str(RESOURCES / "nvplive.svg"))


def dot_icon(color: str, size: int = 16) -> QtGui.QIcon:
    """A filled circle of ``color`` (the Record action's icon)."""
    pix = QtGui.QPixmap(size, size)
    pix.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pix)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setBrush(QtGui.QColor(color))
    painter.setPen(QtCore.Qt.PenStyle.NoPen)
    painter.drawEllipse(QtCore.QRectF(2.5, 2.5, size - 5, size - 5))
    painter.end()
    return QtGui.QIcon(pix)
