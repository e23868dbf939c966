"""Where the app keeps its files: the data folder, the rotating log and the pupils kept
between sessions (beside the settings)."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6 import QtCore


def default_data_dir() -> Path:
    """Where logs (and by default recordings) go: the platform's app data folder."""
    location = QtCore.QStandardPaths.writableLocation(QtCore.QStandardPaths.StandardLocation.AppLocalDataLocation)
    return Path(location) if location else Path.home() / ".nvp-live"


def settings_dir(settings: QtCore.QSettings) -> Path:
    """The folder of the app's settings: the settings file's folder, or the platform's app
    configuration folder where the settings are not a file (the Windows registry)."""
    name = Path(settings.fileName())
    if name.is_absolute():
        return name.parent
    location = QtCore.QStandardPaths.writableLocation(QtCore.QStandardPaths.StandardLocation.AppConfigLocation)
    return Path(location) if location else Path.home() / ".nvp-live"


def kept_pupil_path(settings: QtCore.QSettings, instrument: str) -> Path:
    """The pupil file kept for ``instrument`` between sessions: ``<settings folder>/pupils/<instrument>.json``."""
    return settings_dir(settings) / "pupils" / f"{instrument}.json"


def setup_logging(log_dir: Path | None = None) -> Path | None:
    """Log the ``nvplive`` loggers to ``<log_dir>/nvplive.log`` (rotating); returns the file."""
    from logging.handlers import RotatingFileHandler

    root = logging.getLogger("nvplive")
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        if isinstance(handler, RotatingFileHandler):
            return Path(handler.baseFilename)
    folder = Path(log_dir) if log_dir is not None else default_data_dir() / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(folder / "nvplive.log", maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return Path(handler.baseFilename)
