"""The status bar: acquisition rate, reconstruction latency, skipped timepoints, device and memory.

:class:`LiveStats` collects what a live session reported (GUI thread, no Qt);
:class:`StatusLabels` shows it in the window's status bar.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from PySide6 import QtWidgets

from nvplive.recon.reconstructor import select_device

from .workers import device_status


@dataclass
class LiveStats:
    """What the current live session reported so far.

    Attributes:
        completed_s: completion times (s) of the last few timepoints (for the rate).
        latency_s: latency of the newest volume (s); skipped: timepoints skipped so far;
        frames_written: frames on disk.
    """

    completed_s: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    latency_s: float | None = None
    skipped: int = 0
    frames_written: int = 0

    def reset(self) -> None:
        """Forget the previous session."""
        self.completed_s.clear()
        self.latency_s = None
        self.skipped = 0
        self.frames_written = 0

    def timepoint(self, completed_s: float, frames_written: int) -> None:
        """A timepoint completed at ``completed_s`` with ``frames_written`` frames on disk so far."""
        self.completed_s.append(completed_s)
        self.frames_written = frames_written

    def volume(self, latency_s: float) -> None:
        """A volume was written ``latency_s`` after its frames were complete."""
        self.latency_s = latency_s if math.isfinite(latency_s) else self.latency_s

    def rate(self) -> float | None:
        """Timepoints per second over the last few timepoints (None before two)."""
        times = list(self.completed_s)
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


class StatusLabels:
    """The permanent labels of the status bar."""

    def __init__(self, bar: QtWidgets.QStatusBar) -> None:
        bar.setSizeGripEnabled(False)
        self.acq_rate_label = QtWidgets.QLabel("Acquisition —")
        self.latency_label = QtWidgets.QLabel("Latency —")
        self.skipped_label = QtWidgets.QLabel("Skipped 0")
        self.device_label = QtWidgets.QLabel("Device —")
        for label, tip in (
            (self.acq_rate_label, "Acquisition rate over the last timepoints"),
            (self.latency_label, "Reconstruction latency: from a timepoint's last frame to its volume"),
            (self.skipped_label, "Timepoints the reconstruction skipped because a newer one was waiting"),
            (self.device_label, "Reconstruction device and its memory"),
        ):
            label.setToolTip(tip)
            bar.addPermanentWidget(label)

    def show(self, stats: LiveStats, *, acquiring: bool, session: bool, views: int, device) -> None:
        """Show ``stats``; ``device``: the reconstructor's torch device, or the device name chosen."""
        rate = stats.rate()
        if rate is not None and acquiring:
            self.acq_rate_label.setText(f"Acquisition {rate:.2f} tp/s · {rate * views:.1f} frames/s")
        elif not session:
            self.acq_rate_label.setText("Acquisition idle")
        self.latency_label.setText("Latency —" if stats.latency_s is None else f"Latency {stats.latency_s:.2f} s")
        self.skipped_label.setText(f"Skipped {stats.skipped}")
        try:
            self.device_label.setText(device_status(select_device(device) if isinstance(device, str) else device))
        except Exception as exc:  # e.g. CUDA chosen on a machine without it
            self.device_label.setText(f"Device: {exc}")
