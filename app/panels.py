"""Control panels of the main window: acquisition, reconstruction and timeline.

The panels are views of the model (:mod:`nvplive.app.model`): ``bind(section)`` ties
each control to a field both ways (the user's choice sets the field; a changed field
shows in the control), so the window acts on the model, never on widgets. Buttons
that ask for an action are signals. Layouts are installed on their parent before
widgets are added to them (PySide6 ownership rule, see ``qt_compat``).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from nvplive.acquisition.instrument import InstrumentState
from nvplive.acquisition.live import CONTINUOUS_TIMEPOINTS
from nvplive.recon.methods import METHOD_LABELS, METHODS
from nvplive.recon.optics import full_scale

from . import style
from .model import (
    DEMO_SOURCE,
    HARDWARE_SOURCE,
    AcquisitionSettings,
    ReconstructionSettings,
    ViewState,
)
from .plots import LatencyPlot, LossPlot

ACTIVITY_LINES = 500


def bind(obj: Any, name: str, show: Callable[[Any], None], changed: QtCore.SignalInstance,
         read: Callable[..., Any] | None = None) -> None:
    """Tie field ``name`` of the evented ``obj`` to a control, both ways.

    ``show(value)`` puts the field's value in the control (now and on every change);
    the control's ``changed`` signal sets the field to ``read()`` (default: the
    signal's first argument). Equal values end the round trip.
    """
    kind = type(getattr(obj, name))

    def store(*args: Any) -> None:
        setattr(obj, name, kind(read() if read is not None else args[0]))

    show(getattr(obj, name))
    changed.connect(store)
    getattr(obj.events, name).connect(lambda value: show(value))


def bind_spin(spin: QtWidgets.QAbstractSpinBox, obj: Any, name: str) -> None:
    """A (double) spin box shows and sets ``obj.name``."""
    bind(obj, name, spin.setValue, spin.valueChanged)


def bind_combo(combo: QtWidgets.QComboBox, obj: Any, name: str) -> None:
    """A combo box whose items carry the values (``itemData``) shows and sets ``obj.name``."""

    def show(value: Any) -> None:
        index = combo.findData(value)
        if index >= 0 and index != combo.currentIndex():
            combo.setCurrentIndex(index)

    bind(obj, name, show, combo.currentIndexChanged, read=combo.currentData)


def bind_check(button: QtWidgets.QAbstractButton, obj: Any, name: str) -> None:
    """A checkable button shows and sets the boolean ``obj.name``."""
    bind(obj, name, button.setChecked, button.toggled)


def _section(title: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(title.upper())
    label.setObjectName("sectionTitle")
    return label


def _form(parent_layout: QtWidgets.QBoxLayout) -> QtWidgets.QFormLayout:
    form = QtWidgets.QFormLayout()
    parent_layout.addLayout(form)
    form.setLabelAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
    form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setHorizontalSpacing(8)
    form.setVerticalSpacing(4)
    return form


class LogAxis125(pg.AxisItem):
    """A log axis for the loss: labels 1, 2 and 5 multiples of each decade (the others crowd);
    on a range too narrow for any of pyqtgraph's log ticks, evenly spaced values instead."""

    _fallback_step: float | None = None

    def tickValues(self, minVal, maxVal, size):
        ticks = super().tickValues(minVal, maxVal, size)
        self._fallback_step = None
        if not self.logMode or any(len(values) for _, values in ticks):
            return ticks
        lo, hi = sorted((10.0 ** float(minVal), 10.0 ** float(maxVal)))
        if not hi > lo > 0:
            return ticks
        raw = (hi - lo) / 3
        step = 10.0 ** np.floor(np.log10(raw))
        step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
        values = np.arange(np.ceil(lo / step) * step, hi, step)
        self._fallback_step = float(step)
        return [(None, list(np.log10(values)))]

    def logTickStrings(self, values, scale, spacing):
        if self._fallback_step is not None:
            digits = max(0, int(-np.floor(np.log10(self._fallback_step))))
            return [f"{10.0 ** float(v) * scale:.{digits}f}" for v in values]
        strings = super().logTickStrings(values, scale, spacing)
        out = []
        for value, text in zip(values, strings):
            mantissa = round(10 ** (float(value) - np.floor(float(value))), 3)
            out.append(text if mantissa in (1.0, 2.0, 5.0, 10.0) else "")
        return out if any(out) else strings


class PathEdit(QtWidgets.QWidget):
    """A line edit with a browse button (file or folder)."""

    changed = QtCore.Signal(str)

    def __init__(self, caption: str, file_filter: str = "", folder: bool = False, parent=None) -> None:
        super().__init__(parent)
        self._caption, self._filter, self._folder = caption, file_filter, folder
        row = QtWidgets.QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.edit = QtWidgets.QLineEdit()
        row.addWidget(self.edit, 1)
        self.edit.setPlaceholderText(caption)
        self.edit.editingFinished.connect(lambda: self.changed.emit(self.text()))
        self.button = QtWidgets.QToolButton()
        row.addWidget(self.button)
        self.button.setText("…")
        self.button.setToolTip(f"Choose {caption.lower()}")
        self.button.clicked.connect(self._browse)

    def text(self) -> str:
        return self.edit.text().strip()

    def set_text(self, text: str) -> None:
        """Show ``text``; ``changed`` is emitted when it differs from what was shown."""
        if text != self.text():
            self.edit.setText(text)
            self.changed.emit(self.text())

    def _browse(self) -> None:
        start = self.text() or str(Path.home())
        if self._folder:
            chosen = QtWidgets.QFileDialog.getExistingDirectory(self, self._caption, start)
        else:
            chosen, _ = QtWidgets.QFileDialog.getOpenFileName(self, self._caption, start, self._filter)
        if chosen:
            self.edit.setText(chosen)
            self.changed.emit(chosen)


class AcquisitionPanel(QtWidgets.QWidget):
    """Microscope configuration and the time-lapse: source, exposure, views, interval, timepoints.

    Signals:
        loadRequested(): the user asked to load the hardware configuration now.
    """

    loadRequested = QtCore.Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(6)

        layout.addWidget(_section("Microscope"))
        form = _form(layout)
        self.source_combo = QtWidgets.QComboBox()
        form.addRow("Source", self.source_combo)
        self.source_combo.addItem("Simulated (demo)", DEMO_SOURCE)
        self.source_combo.addItem("Micro-Manager", HARDWARE_SOURCE)
        self.source_combo.setToolTip("Simulated FDT microscope (beating cardiomyocyte) or a real one")
        self.mm_config = PathEdit("Micro-Manager configuration", "Micro-Manager configuration (*.cfg);;All files (*)")
        form.addRow("Config", self.mm_config)
        self.settings_file = PathEdit("FDT settings file", "FDT settings (*.json);;All files (*)")
        form.addRow("Settings", self.settings_file)
        self.load_button = QtWidgets.QPushButton("Load configuration")
        form.addRow("", self.load_button)
        self.load_button.clicked.connect(self.loadRequested)
        self.microscope_label = QtWidgets.QLabel("not loaded")
        form.addRow("Loaded", self.microscope_label)
        self.microscope_label.setObjectName("readout")
        self.microscope_label.setWordWrap(True)
        # what the instrument itself reports (read from the core, not from the settings)
        self.pixel_label = QtWidgets.QLabel("–")
        form.addRow("Pixel size", self.pixel_label)
        self.pixel_label.setToolTip("Camera pixel in the sample, from Micro-Manager's pixel-size calibration × binning")
        self.bit_depth_label = QtWidgets.QLabel("–")
        form.addRow("Bit depth", self.bit_depth_label)
        self.bit_depth_label.setToolTip("Bits per pixel the camera reports; counts at 2^bits − 1 are saturated")
        self.trigger_label = QtWidgets.QLabel("–")
        form.addRow("Trigger", self.trigger_label)
        self.trigger_label.setToolTip("hardware: each timepoint is one camera-triggered sequence; "
                                      "software: a source switch and a snap per view")
        for label in (self.pixel_label, self.bit_depth_label, self.trigger_label):
            label.setObjectName("readout")
            label.setWordWrap(True)  # a long readout wraps instead of widening the dock past the window

        layout.addWidget(_section("Time-lapse"))
        form = _form(layout)
        self.exposure = QtWidgets.QDoubleSpinBox()
        form.addRow("Exposure", self.exposure)
        self.exposure.setRange(0.1, 10_000.0)
        self.exposure.setDecimals(1)
        self.exposure.setSuffix(" ms")
        self.exposure.setValue(20.0)
        self.views = QtWidgets.QSpinBox()
        form.addRow("Views", self.views)
        self.views.setRange(1, 64)
        self.views.setValue(7)
        self.views.setToolTip("Point sources (beads) per timepoint; set by the settings file on hardware")
        self.interval = QtWidgets.QDoubleSpinBox()
        form.addRow("Interval", self.interval)
        self.interval.setRange(0.0, 3600.0)
        self.interval.setDecimals(2)
        self.interval.setSingleStep(0.1)
        self.interval.setSuffix(" s")
        self.interval.setSpecialValueText("fastest")
        self.interval.setToolTip("Time between timepoint starts (0: as fast as the camera goes)")
        self.timepoints = QtWidgets.QSpinBox()
        form.addRow("Timepoints", self.timepoints)
        self.timepoints.setRange(0, CONTINUOUS_TIMEPOINTS)
        self.timepoints.setSpecialValueText("continuous")
        self.timepoints.setToolTip("Number of timepoints (0: until Stop)")
        self.save_dir = PathEdit("Folder for recordings", folder=True)
        form.addRow("Save to", self.save_dir)

        layout.addWidget(_section("Views"))
        self.sources_table = QtWidgets.QTreeWidget()
        layout.addWidget(self.sources_table)
        self.sources_table.setColumnCount(5)
        self.sources_table.setHeaderLabels(["View", "Preset", "x µm", "y µm", "z µm"])
        self.sources_table.setRootIsDecorated(False)
        self.sources_table.setAlternatingRowColors(True)
        self.sources_table.setUniformRowHeights(True)
        self.sources_table.setMinimumHeight(90)
        self.sources_table.setMaximumHeight(170)
        header = self.sources_table.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QtWidgets.QHeaderView.ResizeMode.Stretch)

        self.button_row = QtWidgets.QHBoxLayout()
        layout.addLayout(self.button_row)
        self.button_row.setSpacing(4)
        self.live_button = QtWidgets.QToolButton()
        self.record_button = QtWidgets.QToolButton()
        self.stop_button = QtWidgets.QToolButton()
        for button, name in ((self.live_button, "liveButton"), (self.record_button, "recordButton"),
                             (self.stop_button, "stopButton")):
            self.button_row.addWidget(button, 1)
            button.setObjectName(name)
            button.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            button.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
            button.setMinimumHeight(28)
        self.state_label = QtWidgets.QLabel("Idle")
        layout.addWidget(self.state_label)
        self.state_label.setObjectName("stateLabel")
        self.state_label.setWordWrap(True)
        layout.addWidget(_section("Activity"))
        self.activity = QtWidgets.QPlainTextEdit()
        layout.addWidget(self.activity, 1)
        self.activity.setObjectName("activity")
        self.activity.setReadOnly(True)
        self.activity.setMinimumHeight(60)
        self.activity.setMaximumBlockCount(ACTIVITY_LINES)
        self.activity.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.WidgetWidth)

        self.source_combo.currentIndexChanged.connect(lambda _i: self._update_enabled())
        self._update_enabled()

    def bind(self, settings: AcquisitionSettings) -> None:
        """Show and set ``settings`` (the model's acquisition section)."""
        bind_combo(self.source_combo, settings, "source")
        bind(settings, "mm_config", self.mm_config.set_text, self.mm_config.changed)
        bind(settings, "settings_file", self.settings_file.set_text, self.settings_file.changed)
        bind_spin(self.exposure, settings, "exposure_ms")
        bind_spin(self.views, settings, "views")
        bind_spin(self.interval, settings, "interval_s")
        bind_spin(self.timepoints, settings, "timepoints")
        bind(settings, "save_dir", self.save_dir.set_text, self.save_dir.changed)

    # -- values -------------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.source_combo.currentData()

    def set_sources(self, presets: list[str], sources_um_xyz: np.ndarray) -> None:
        """Fill the views table with each view's preset and nominal source position (µm)."""
        self.sources_table.clear()
        for i, (preset, pos) in enumerate(zip(presets, np.asarray(sources_um_xyz, float))):
            item = QtWidgets.QTreeWidgetItem([str(i + 1), preset, *(f"{v:.2f}" for v in pos)])
            for col in (0, 2, 3, 4):
                item.setTextAlignment(col, QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
            self.sources_table.addTopLevelItem(item)

    def set_instrument(self, state: InstrumentState | None, settings_pixel_um: float | None = None) -> None:
        """Show what the instrument reports (``None``: no microscope loaded)."""
        if state is None:
            for label in (self.pixel_label, self.bit_depth_label, self.trigger_label):
                label.setText("–")
            return
        if state.pixel_size_um is None:
            pixel = "not calibrated in Micro-Manager"
            if settings_pixel_um is not None:
                pixel += f" (settings: {settings_pixel_um:.4g} µm)"
        else:
            pixel = f"{state.pixel_size_um:.4g} µm ({state.pixel_size_config}, binning {state.binning})"
        self.pixel_label.setText(pixel)
        self.bit_depth_label.setText(f"{state.bit_depth} bit (saturates at {full_scale(state.bit_depth)})")
        self.trigger_label.setText("hardware (one triggered sequence per timepoint)" if state.hardware_triggered
                                   else "software (switch and snap per view)")

    def log(self, text: str, level: str = "info") -> None:
        """Add a time-stamped line to the activity list (newest at the bottom, bounded)."""
        stamp = QtCore.QTime.currentTime().toString("HH:mm:ss")
        colors = {"error": "#ff6b6b", "warning": "#ffb347", "ok": "#7ee2a8"}
        color = colors.get(level, style.FOREGROUND)
        self.activity.appendHtml(
            f'<span style="color:{style.MUTED}">{stamp}</span>&nbsp; '
            f'<span style="color:{color}">{html.escape(text)}</span>'
        )
        self.activity.verticalScrollBar().setValue(self.activity.verticalScrollBar().maximum())

    def activity_text(self) -> str:
        """The activity log as plain text."""
        return self.activity.toPlainText()

    def set_running(self, running: bool) -> None:
        """Lock the configuration while an acquisition runs."""
        for w in (self.source_combo, self.mm_config, self.settings_file, self.load_button, self.exposure,
                  self.views, self.interval, self.timepoints, self.save_dir):
            w.setEnabled(not running)
        if not running:
            self._update_enabled()

    def _update_enabled(self) -> None:
        hardware = self.source == HARDWARE_SOURCE
        for w in (self.mm_config, self.settings_file, self.load_button):
            w.setEnabled(hardware)
        self.views.setEnabled(not hardware)


class ReconstructionPanel(QtWidgets.QWidget):
    """Reconstruction settings (applied between timepoints) and the live loss/latency traces.

    Signals:
        resetRequested(): start the next timepoint from scratch.
    """

    resetRequested = QtCore.Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer = QtWidgets.QHBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        outer.addWidget(self.splitter)
        self.splitter.setChildrenCollapsible(False)
        settings = QtWidgets.QWidget()
        self.splitter.addWidget(settings)
        layout = QtWidgets.QVBoxLayout(settings)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(4)
        form = _form(layout)
        self.method = QtWidgets.QComboBox()
        form.addRow("Method", self.method)
        for m in METHODS:
            self.method.addItem(METHOD_LABELS[m], m)
        budget_row = QtWidgets.QWidget()
        form.addRow("Budget", budget_row)
        budget_layout = QtWidgets.QHBoxLayout(budget_row)
        budget_layout.setContentsMargins(0, 0, 0, 0)
        budget_layout.setSpacing(4)
        self.budget_mode = QtWidgets.QComboBox()
        budget_layout.addWidget(self.budget_mode, 1)
        self.budget_mode.addItem("Iterations", "iterations")
        self.budget_mode.addItem("Latency", "latency")
        self.budget_mode.setToolTip("Per timepoint: a fixed number of warm-update iterations, or a time budget")
        self.budget_stack = QtWidgets.QStackedWidget()
        budget_layout.addWidget(self.budget_stack, 1)
        self.warm_iterations = QtWidgets.QSpinBox()
        self.budget_stack.addWidget(self.warm_iterations)
        self.warm_iterations.setRange(1, 100_000)
        self.warm_iterations.setSuffix(" it")
        self.warm_iterations.setToolTip("Warm-update iterations per timepoint")
        self.latency = QtWidgets.QDoubleSpinBox()
        self.budget_stack.addWidget(self.latency)
        self.latency.setRange(0.05, 600.0)
        self.latency.setDecimals(2)
        self.latency.setSingleStep(0.1)
        self.latency.setSuffix(" s")
        self.latency.setToolTip("Time budget of each warm update")
        self.budget_stack.setSizePolicy(QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Fixed)
        self.cold_iterations = QtWidgets.QSpinBox()
        form.addRow("Cold start", self.cold_iterations)
        self.cold_iterations.setRange(1, 1_000_000)
        self.cold_iterations.setSuffix(" it")
        self.cold_iterations.setToolTip("Iterations of the first timepoint (and of every one with warm start off)")
        self.tv_weight = QtWidgets.QDoubleSpinBox()
        form.addRow("τ (TV)", self.tv_weight)
        self.tv_weight.setDecimals(5)
        self.tv_weight.setRange(0.0, 1.0)
        self.tv_weight.setSingleStep(0.0005)
        self.tv_weight.setToolTip("Weight τ of the total variation of Δn")
        self.device = QtWidgets.QComboBox()
        form.addRow("Device", self.device)
        self._fill_devices()
        warm_row = QtWidgets.QWidget()
        form.addRow("", warm_row)
        warm_layout = QtWidgets.QHBoxLayout(warm_row)
        warm_layout.setContentsMargins(0, 0, 0, 0)
        warm_layout.setSpacing(6)
        self.warm_start = QtWidgets.QCheckBox("Warm start")
        warm_layout.addWidget(self.warm_start)
        self.warm_start.setToolTip("Start each timepoint from the previous one's state")
        warm_layout.addStretch(1)
        self.reset_button = QtWidgets.QPushButton("Restart")
        warm_layout.addWidget(self.reset_button)
        self.reset_button.setToolTip("Forget the warm state: the next timepoint is a cold start")
        self.reset_button.clicked.connect(self.resetRequested)
        self.progress_label = QtWidgets.QLabel("")
        layout.addWidget(self.progress_label)
        self.progress_label.setObjectName("readout")
        self.progress_label.setWordWrap(True)
        layout.addStretch(1)
        settings.setMinimumWidth(240)
        settings.setMaximumWidth(340)
        self.loss_plot = LossPlot()
        self.splitter.addWidget(self.loss_plot)
        item = self.loss_plot.getPlotItem()
        loss_axis = LogAxis125("left")
        item.setAxisItems({"left": loss_axis})
        loss_axis.setLogMode(y=True)
        loss_axis.enableAutoSIPrefix(False)
        style.style_plot_item(item)
        item.setLabel("left", "loss")
        self.latency_plot = LatencyPlot()
        self.splitter.addWidget(self.latency_plot)
        for name in ("left", "bottom"):
            self.latency_plot.getPlotItem().getAxis(name).enableAutoSIPrefix(False)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setStretchFactor(2, 2)

        for w in (self.warm_iterations, self.latency, self.cold_iterations, self.tv_weight):
            w.setKeyboardTracking(False)

    def bind(self, settings: ReconstructionSettings) -> None:
        """Show and set ``settings`` (the model's reconstruction section)."""
        bind_combo(self.method, settings, "method")
        bind_combo(self.budget_mode, settings, "budget_mode")
        self._show_budget(settings.budget_mode)
        settings.events.budget_mode.connect(self._show_budget)
        bind_spin(self.warm_iterations, settings, "warm_iterations")
        bind_spin(self.latency, settings, "latency_s")
        bind_spin(self.cold_iterations, settings, "cold_iterations")
        bind_spin(self.tv_weight, settings, "tv_weight")
        bind(settings, "device", self.set_device, self.device.currentIndexChanged, read=self.device.currentData)
        bind_check(self.warm_start, settings, "warm_start")

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        """Settings and plots side by side in a wide dock, stacked in a tall one."""
        super().resizeEvent(event)
        size = event.size()
        wanted = (QtCore.Qt.Orientation.Horizontal if size.width() >= 1.2 * size.height()
                  else QtCore.Qt.Orientation.Vertical)
        if self.splitter.orientation() != wanted:
            self.splitter.setOrientation(wanted)

    def _fill_devices(self) -> None:
        import torch

        self.device.addItem("Auto", "auto")
        self.device.addItem("CPU", "cpu")
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                self.device.addItem(f"CUDA {i}: {torch.cuda.get_device_name(i)}", f"cuda:{i}" if i else "cuda")
        else:
            self.device.addItem("CUDA (not available)", "cuda")
            model = self.device.model()
            item = model.item(self.device.count() - 1) if isinstance(model, QtGui.QStandardItemModel) else None
            if item is not None:
                item.setEnabled(False)

    # -- values --------------------------------------------------------------------------------
    def _show_budget(self, mode: str) -> None:
        self.budget_stack.setCurrentIndex(int(mode == "latency"))

    def set_device(self, device: str) -> None:
        index = self.device.findData(device)
        if index < 0 and device.startswith("cuda"):
            index = self.device.findData("cuda")
        self.device.setCurrentIndex(max(0, index))

    @property
    def device_name(self) -> str:
        return self.device.currentData()


class TimelinePanel(QtWidgets.QWidget):
    """Scrub and replay the timepoints of the current or an opened recording; offline reconstruction.

    Signals:
        timepointChanged(int): the user picked a timepoint (slider, spin box, playback).
        openRequested(), reconstructRequested(), cancelRequested(): buttons.
    """

    timepointChanged = QtCore.Signal(int)
    openRequested = QtCore.Signal()
    reconstructRequested = QtCore.Signal()
    cancelRequested = QtCore.Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        row = QtWidgets.QHBoxLayout(self)
        row.setContentsMargins(8, 4, 8, 4)
        row.setSpacing(6)
        self.open_button = QtWidgets.QToolButton()
        row.addWidget(self.open_button)
        self.open_button.setText("Open…")
        self.open_button.setToolTip("Open a recording (NAME.fdt folder)")
        self.open_button.setIcon(self.style().standardIcon(QtWidgets.QStyle.StandardPixmap.SP_DirOpenIcon))
        self.open_button.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.open_button.clicked.connect(self.openRequested)
        self.play_button = QtWidgets.QToolButton()
        row.addWidget(self.play_button)
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Replay the recorded timepoints")
        self._play_icon = self.style().standardIcon(QtWidgets.QStyle.StandardPixmap.SP_MediaPlay)
        self._pause_icon = self.style().standardIcon(QtWidgets.QStyle.StandardPixmap.SP_MediaPause)
        self.play_button.setIcon(self._play_icon)
        self.play_button.toggled.connect(self._on_play)
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        row.addWidget(self.slider, 1)
        self.slider.setRange(0, 0)
        self.slider.setTracking(True)
        self.slider.setPageStep(10)
        self.spin = QtWidgets.QSpinBox()
        row.addWidget(self.spin)
        self.spin.setRange(0, 0)
        self.spin.setPrefix("t ")
        self.spin.setMinimumWidth(self.spin.fontMetrics().horizontalAdvance("t 0000000") + 30)
        self.count_label = QtWidgets.QLabel("/ 0")
        row.addWidget(self.count_label)
        self.count_label.setObjectName("readout")
        self.count_label.setMinimumWidth(self.count_label.fontMetrics().horizontalAdvance("/ 0000000") + 12)
        self.fps = QtWidgets.QSpinBox()
        row.addWidget(self.fps)
        self.fps.setRange(1, 60)
        self.fps.setValue(5)
        self.fps.setSuffix(" fps")
        self.fps.setToolTip("Replay speed")
        self.kind = QtWidgets.QComboBox()
        row.addWidget(self.kind)
        self.kind.addItem("Reconstruction", "volume")
        self.kind.addItem("Ground truth", "truth")
        self.kind.setToolTip("Δn shown in the 3D view when replaying (ground truth: simulated recordings)")
        self.follow = QtWidgets.QToolButton()
        row.addWidget(self.follow)
        self.follow.setText("Follow live")
        self.follow.setCheckable(True)
        self.follow.setChecked(True)
        self.follow.setToolTip("Show the newest frames and volume while acquiring")

        self.reconstruct_button = QtWidgets.QPushButton("Reconstruct…")
        row.addWidget(self.reconstruct_button)
        self.reconstruct_button.setToolTip(
            "Reconstruct every timepoint of the shown recording offline with the current settings "
            "(replaces its stored volumes)"
        )
        self.progress = QtWidgets.QProgressBar()
        row.addWidget(self.progress)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFixedWidth(220)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.cancel_button = QtWidgets.QToolButton()
        row.addWidget(self.cancel_button)
        self.cancel_button.setText("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress.hide()
        self.cancel_button.hide()
        self.recording_text = "No recording"

        self._timer = QtCore.QTimer(self)
        self._timer.timeout.connect(self._advance)
        self.slider.valueChanged.connect(self._on_slider)
        self.spin.valueChanged.connect(self._on_spin)
        self.reconstruct_button.clicked.connect(self.reconstructRequested)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.fps.valueChanged.connect(lambda v: self._timer.setInterval(int(1000 / v)))
        self._quiet = False
        self._count = 0

    @property
    def current(self) -> int:
        return self.slider.value()

    @property
    def count(self) -> int:
        """Number of timepoints the slider covers."""
        return self._count

    def set_count(self, n: int) -> None:
        """Number of timepoints available (keeps the current position)."""
        self._count = int(n)
        self._quiet = True
        try:
            top = max(0, self._count - 1)
            self.slider.setRange(0, top)
            self.spin.setRange(0, top)
        finally:
            self._quiet = False
        self.count_label.setText(f"/ {max(0, self._count - 1)}")

    def show_timepoint(self, t: int) -> None:
        """Move the slider to ``t`` without emitting ``timepointChanged``."""
        self._quiet = True
        try:
            self.slider.setValue(int(t))
            self.spin.setValue(int(t))
        finally:
            self._quiet = False

    def bind(self, view: ViewState) -> None:
        """Show and set ``view`` (the model's view state: replay speed and kind, following)."""
        bind_spin(self.fps, view, "fps")
        bind_combo(self.kind, view, "replay_kind")
        bind_check(self.follow, view, "following")

    def stop_playing(self) -> None:
        self.play_button.setChecked(False)

    def set_offline_running(self, running: bool) -> None:
        """Show the progress bar and Cancel while an offline reconstruction runs."""
        self.reconstruct_button.setEnabled(not running)
        self.open_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.cancel_button.setVisible(running)
        if running:
            self.progress.setValue(0)
            self.progress.setFormat("starting…")
            self.progress.show()

    def _on_slider(self, value: int) -> None:
        if self.spin.value() != value:
            self.spin.blockSignals(True)
            self.spin.setValue(value)
            self.spin.blockSignals(False)
        if not self._quiet:
            self.timepointChanged.emit(value)

    def _on_spin(self, value: int) -> None:
        if self.slider.value() != value:
            self.slider.setValue(value)

    def _on_play(self, playing: bool) -> None:
        self.play_button.setIcon(self._pause_icon if playing else self._play_icon)
        if playing:
            if self.slider.value() >= self.slider.maximum():
                self.slider.setValue(0)
            self._timer.start(int(1000 / self.fps.value()))
        else:
            self._timer.stop()

    def _advance(self) -> None:
        if self._count <= 1:
            self.stop_playing()
            return
        nxt = self.slider.value() + 1
        self.slider.setValue(0 if nxt > self.slider.maximum() else nxt)
