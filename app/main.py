"""Start the nvp-live desktop app (``nvplive demo`` / ``nvplive app``)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import nvplive.app  # noqa: F401  (first: applies the PySide6 reference-count guard, see qt_compat)

logger = logging.getLogger("nvplive.app")

#: GIL switch interval of the app (s); Python's default is 0.005.
GIL_SWITCH_INTERVAL_S = 0.001


def run_app(
    demo: bool,
    timepoints: int | None = None,
    out: Path | None = None,
    device: str = "auto",
    mm_config: Path | None = None,
    settings: Path | None = None,
) -> int:
    """Open the main window and run the Qt event loop; returns the exit status.

    Args:
        demo: the simulated microscope (beating cardiomyocyte), started live at once;
            otherwise the Micro-Manager configuration ``mm_config`` with the FDT
            ``settings`` file (loaded at start when both are given).
        timepoints: timepoints per acquisition (None: continuous for the demo).
        out: with the demo, record into this folder (or ``NAME.fdt``) instead of Live.
        device: reconstruction device (``cpu``, ``cuda``); ``auto`` keeps the device chosen
            in the window last time (``auto`` on first use).
    """
    import torch
    import vispy

    from nvplive.recon.reconstructor import live_cpu_threads, tune_allocator

    vispy.use("pyside6")
    from PySide6 import QtCore, QtWidgets

    from . import style
    from .main_window import APPLICATION, ORGANISATION, MainWindow
    from .paths import setup_logging

    QtCore.QCoreApplication.setOrganizationName(ORGANISATION)
    QtCore.QCoreApplication.setApplicationName(APPLICATION)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationDisplayName("nvp-live")
    app.setDesktopFileName("nvplive")
    app.setWindowIcon(style.app_icon())
    style.apply_dark_theme(app)
    log_file = setup_logging()
    logger.info("nvp-live starting (demo=%s, device=%s, log=%s)", demo, device, log_file)
    torch.set_num_threads(live_cpu_threads())
    tune_allocator()
    # The GUI thread makes many short GIL-releasing calls (OpenGL through ctypes); with the
    # default 5 ms switch interval each one can wait 5 ms behind a Python-heavy worker thread.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    window = MainWindow(
        demo=demo,
        device=None if device == "auto" else device,
        timepoints=timepoints if timepoints is not None else (0 if demo else None),
        out=out,
        mm_config=mm_config,
        settings_file=settings,
    )

    previous_hook = sys.excepthook

    def excepthook(kind, value, tb) -> None:
        # An exception escaping a slot: log it and show it instead of losing it on stderr.
        logger.error("Unexpected error", exc_info=(kind, value, tb))
        try:
            window.report_error("Unexpected error", value)
        except Exception:
            previous_hook(kind, value, tb)

    sys.excepthook = excepthook
    # Ctrl+C in the terminal or a polite kill closes the window like its close button:
    # the acquisition stops and the recording is closed. A timer lets Python see the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: QtCore.QTimer.singleShot(0, window, window.close))
    wakeup = QtCore.QTimer(window)
    wakeup.start(200)
    wakeup.timeout.connect(lambda: None)
    window.show()
    if demo:
        record = out is not None
        QtCore.QTimer.singleShot(0, lambda: window.start_acquisition(record=record))
    elif mm_config is not None and settings is not None:
        QtCore.QTimer.singleShot(0, window.prepare_microscope)
    try:
        return int(app.exec())
    finally:
        sys.excepthook = previous_hook
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        window.shutdown()
