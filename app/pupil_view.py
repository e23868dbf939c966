"""The Pupil dock: the calibrated detection pupil (amplitude and phase inside the NA
aperture, Zernike coefficients as bars by Noll index) and the calibration's fit residual.

A view of the model's :class:`~.model.PupilState`: :meth:`PupilView.show_pupil` draws
one calibration (or the hard aperture when there is none). The calibration runs in a
worker; its progress shows here (:meth:`PupilView.set_progress`).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from nvplive.acquisition.bead_stack import CalibratedPupil
from nvplive.recon.pupil import FIRST_NOLL, PupilParameters, pupil_map

from . import style

#: Pixels across the drawn aperture.
MAP_SIZE = 65
#: Bar colours: positive and negative coefficients.
POSITIVE, NEGATIVE = style.ACCENT, "#ff9f1c"


class PupilView(QtWidgets.QWidget):
    """Amplitude and phase images of the pupil, the Zernike bar chart, the residual and progress."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout()
        self.setLayout(layout)
        layout.setContentsMargins(4, 4, 4, 4)
        self.summary = QtWidgets.QLabel("")
        layout.addWidget(self.summary)
        self.summary.setObjectName("readout")
        self.summary.setWordWrap(True)
        row = QtWidgets.QHBoxLayout()
        layout.addLayout(row)
        self.progress = QtWidgets.QProgressBar()
        row.addWidget(self.progress)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.cancel_button = QtWidgets.QToolButton()
        row.addWidget(self.cancel_button)
        self.cancel_button.setText("Cancel")
        self.progress.hide()
        self.cancel_button.hide()
        self.clear_button = QtWidgets.QToolButton()
        layout.addWidget(self.clear_button, 0, QtCore.Qt.AlignmentFlag.AlignLeft)
        self.clear_button.setText("Clear")
        self.clear_button.setToolTip("Forget this pupil (also for the next session): the reconstruction uses the hard aperture")
        self.clear_button.hide()

        self.graphics = pg.GraphicsLayoutWidget()
        layout.addWidget(self.graphics, 1)
        self.graphics.setBackground(style.BACKGROUND)
        self.amplitude_plot = self._image_plot("Amplitude", 0)
        self.phase_plot = self._image_plot("Phase (rad)", 1)
        self.amplitude_image = pg.ImageItem(axisOrder="row-major")
        self.amplitude_plot.addItem(self.amplitude_image)
        self.phase_image = pg.ImageItem(axisOrder="row-major")
        self.phase_plot.addItem(self.phase_image)
        self.amplitude_image.setColorMap(pg.colormap.get("viridis"))
        self.phase_image.setColorMap(pg.colormap.get("CET-D1"))
        self.bar_plot = self.graphics.addPlot(row=1, col=0, colspan=2)
        style.style_plot_item(self.bar_plot)
        self.bar_plot.setTitle("Zernike coefficients", color=style.FOREGROUND, size="9pt")
        self.bar_plot.setLabel("bottom", "Noll index")
        self.bar_plot.setLabel("left", "rad")
        self.bar_plot.setMenuEnabled(False)
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.7)
        self.bar_plot.addItem(self.bars)
        self.bar_plot.addItem(pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen(style.MUTED, width=1)))
        #: What the bar chart shows: Noll indices and coefficients (rad).
        self.noll = np.zeros(0, int)
        self.bar_values = np.zeros(0)
        #: What the images show: ``[size, size]`` amplitude and phase (NaN outside the aperture).
        self.amplitude = np.zeros((0, 0))
        self.phase = np.zeros((0, 0))
        self.calibrated: CalibratedPupil | None = None
        self.show_pupil(None)

    def _image_plot(self, title: str, col: int) -> pg.PlotItem:
        plot = self.graphics.addPlot(row=0, col=col)
        style.style_plot_item(plot)
        plot.setTitle(title, color=style.FOREGROUND, size="9pt")
        plot.setAspectLocked(True)
        plot.hideAxis("left")
        plot.hideAxis("bottom")
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        return plot

    def show_pupil(self, calibrated: CalibratedPupil | None, origin: str = "") -> None:
        """Draw ``calibrated`` (None: the hard aperture, no calibration yet); ``origin``: where it came from."""
        self.calibrated = calibrated
        self.clear_button.setVisible(calibrated is not None)
        if calibrated is None:
            pupil, na, n_medium = PupilParameters(), 1.0, 1.33
            self.summary.setText("No calibrated pupil: the reconstruction uses the hard aperture. "
                                 "Acquisition → Calibrate pupil takes a bead z-stack and fits it.")
        else:
            pupil, na, n_medium = calibrated.pupil, calibrated.optics.na, calibrated.optics.n_medium
            self.summary.setText(self.describe(calibrated) + (f" {origin[0].upper()}{origin[1:]}." if origin else ""))
        self.amplitude, self.phase = pupil_map(pupil, na, n_medium, MAP_SIZE)
        self._draw_image(self.amplitude_image, self.amplitude, (0.0, max(1.0, float(np.nanmax(self.amplitude)))))
        limit = max(0.5, float(np.nanmax(np.abs(self.phase))))
        self._draw_image(self.phase_image, self.phase, (-limit, limit))
        values = np.asarray(pupil.zernike_rad, dtype=float)
        self.noll = np.arange(FIRST_NOLL, FIRST_NOLL + len(values))
        self.bar_values = values
        brushes = [pg.mkBrush(POSITIVE if v >= 0 else NEGATIVE) for v in values]
        self.bars.setOpts(x=self.noll, height=values, width=0.7, brushes=brushes, pen=None)
        if len(values):
            self.bar_plot.setXRange(FIRST_NOLL - 0.7, self.noll[-1] + 0.7, padding=0)
            top = max(0.1, float(np.abs(values).max()) * 1.15)
            self.bar_plot.setYRange(-top, top, padding=0)

    @staticmethod
    def _draw_image(item: pg.ImageItem, values: np.ndarray, levels: tuple[float, float]) -> None:
        # pyqtgraph draws NaN as transparent (the aperture's outside)
        item.setImage(values[::-1].astype(np.float32), levels=levels, autoLevels=False)
        item.setRect(QtCore.QRectF(-1.0, -1.0, 2.0, 2.0))

    @staticmethod
    def describe(calibrated: CalibratedPupil) -> str:
        """One paragraph: the aberration, the fit residual before/after and where the pupil comes from."""
        parts = [f"Aberration {calibrated.pupil.aberration_rms_rad:.3f} rad RMS"]
        if calibrated.pupil.apodisation:
            parts.append(f"edge transmission {1.0 + sum(calibrated.pupil.apodisation):.2f}")
        if calibrated.residual is not None:
            before = f" (hard aperture {calibrated.residual_before:.3f})" if calibrated.residual_before is not None else ""
            parts.append(f"fit residual {calibrated.residual:.3f}{before}")
        text = " · ".join(parts) + f". From the {calibrated.calibrated_from}"
        text += f", calibrated {calibrated.created.replace('T', ' ').replace('+00:00', ' UTC')}." if calibrated.created else "."
        if calibrated.ambiguous:
            text += " The images do not tell the z direction: the even aberrations' sign rests on the one chosen."
        return text

    def set_progress(self, done: int, total: int, message: str) -> None:
        """Show a calibration's progress (``total`` 0: busy, no fraction)."""
        self.progress.show()
        self.cancel_button.show()
        self.progress.setRange(0, max(total, 0))
        self.progress.setValue(min(done, total) if total > 0 else 0)
        self.progress.setFormat(message)

    def end_progress(self) -> None:
        """Hide the progress bar and the cancel button."""
        self.progress.hide()
        self.cancel_button.hide()
