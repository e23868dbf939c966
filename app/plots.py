"""Live traces: reconstruction loss per iteration and warm-update latency per timepoint."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore

from . import style


class CountAxis(pg.AxisItem):
    """An axis of counts (iterations, timepoints): ticks only at whole numbers."""

    def tickSpacing(self, minVal: float, maxVal: float, size: float):
        levels = [(spacing, offset) for spacing, offset in super().tickSpacing(minVal, maxVal, size) if spacing >= 1]
        return levels or [(1.0, 0.0)]


class _TracePlot(pg.PlotWidget):
    """A PlotWidget holding one growing trace (bounded to ``max_points``)."""

    def __init__(self, title: str, x_label: str, y_label: str, color: str, max_points: int, parent=None) -> None:
        super().__init__(parent=parent, background=style.BACKGROUND, axisItems={"bottom": CountAxis("bottom")})
        self.max_points = int(max_points)
        self._values = np.zeros(0, dtype=float)
        self._xs = np.zeros(0, dtype=float)
        item = self.getPlotItem()
        style.style_plot_item(item)
        item.setTitle(title, color=style.FOREGROUND, size="9pt")
        item.setLabel("bottom", x_label)
        item.setLabel("left", y_label)
        item.setMenuEnabled(False)
        self.curve = item.plot(pen=pg.mkPen(color, width=1.6))
        self.setMinimumHeight(120)

    def append(self, value: float, x: float | None = None) -> None:
        """Add one value at the end of the trace, at ``x`` (default: one after the last)."""
        if x is None:
            x = self._xs[-1] + 1 if self._xs.size else 0
        self._values = np.append(self._values, float(value))
        self._xs = np.append(self._xs, float(x))
        self._trim()
        self._redraw()

    def set_data(self, values, x=None) -> None:
        """Replace the whole trace (``x``: where each value is; default 0, 1, 2, …)."""
        self._values = np.asarray(values, dtype=float).ravel().copy()
        self._xs = np.arange(self._values.size, dtype=float) if x is None else np.asarray(x, dtype=float).ravel().copy()
        if self._xs.shape != self._values.shape:
            raise ValueError(f"{self._xs.size} x positions for {self._values.size} values")
        self._trim()
        self._redraw()

    def clear_data(self) -> None:
        """Remove all values."""
        self.set_data([])

    @property
    def values(self) -> np.ndarray:
        """The values currently shown (oldest first)."""
        return self._values.copy()

    def _x(self) -> np.ndarray:
        return self._xs

    def _trim(self) -> None:
        extra = self._values.size - self.max_points
        if extra > 0:
            self._values = self._values[extra:]
            self._xs = self._xs[extra:]

    def _redraw(self) -> None:
        self.curve.setData(self._x(), self._values)


class LossPlot(_TracePlot):
    """Reconstruction loss per iteration, logarithmic y axis.

    Values ≤ 0 and non-finite values have no place on a log axis: they are kept
    in ``values`` but not drawn.
    """

    def __init__(self, parent=None, max_points: int = 20000) -> None:
        super().__init__("Loss", "iteration", "loss", style.ACCENT, max_points, parent)
        self.getPlotItem().setLogMode(x=False, y=True)

    def _redraw(self) -> None:
        v = self._values
        keep = np.isfinite(v) & (v > 0)
        self.curve.setData(self._x()[keep], v[keep])


class LatencyPlot(_TracePlot):
    """Warm-update latency per timepoint (s) with an optional target line."""

    def __init__(self, parent=None, max_points: int = 5000, target_s: float | None = 1.0) -> None:
        super().__init__("Update latency", "timepoint", "latency (s)", "#ffb347", max_points, parent)
        self.curve.setSymbol("o")
        self.curve.setSymbolSize(4)
        self.curve.setSymbolBrush(pg.mkBrush("#ffb347"))
        self.curve.setSymbolPen(None)
        self.target_line = pg.InfiniteLine(
            angle=0, movable=False, pen=pg.mkPen(style.MUTED, width=1, style=QtCore.Qt.PenStyle.DashLine),
            label="target", labelOpts={"color": style.MUTED, "position": 0.9, "anchors": [(1, 1), (1, 1)]},
        )
        self.addItem(self.target_line)
        self.set_target(target_s)

    def set_target(self, target_s: float | None) -> None:
        """Show a dashed line at the latency target (None hides it)."""
        if target_s is None:
            self.target_line.hide()
        else:
            self.target_line.setValue(float(target_s))
            self.target_line.show()
