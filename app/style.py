"""Look of the nvp-live GUI: dark palette, shared colours and the refractive-index colormap.

Colormaps are defined once here (control points in [0, 1]) and turned into a
vispy ``Colormap`` for the 3D view and a pyqtgraph ``ColorMap`` for 2D images and
the colorbar, so both show the same colours for the same refractive index.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtGui, QtWidgets

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
