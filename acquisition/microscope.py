"""Setting up the microscope core (simulated or real) and the FDT acquisition sequence.

The public names in one place; they live in :mod:`.microscope_info` (:class:`MicroscopeInfo`,
device and settings names), :mod:`.engine` (sequence and engine), :mod:`.demo_core` (the
simulated microscope) and :mod:`.hardware_settings` (a real microscope and its settings file).

- :func:`build_demo_core` loads the simulated devices of :mod:`.devices` into a
  ``UniMMCore`` and defines the channel group ``FDT-Source`` whose presets excite
  each source.
- :func:`load_hardware_core` loads a real Micro-Manager ``.cfg`` plus a small JSON
  settings file (format in ``docs/acquisition.md``) that says which config group —
  or which device property — selects the source of each view, and where the
  sources are (calibration). Missing pieces raise one :class:`AcquisitionError`
  that names them.
- :func:`fdt_sequence` is the ``useq.MDASequence`` of an FDT time-lapse: a time
  plan × one channel per view.
- :class:`FDTEngine` is the pymmcore-plus ``MDAEngine`` that refuses to lose a
  frame silently: a failing snap or a source that was not selected raises. Where
  the source selection is sequenceable, each timepoint's views run as one
  hardware-triggered sequence.
"""

from .demo_core import build_demo_core, demo_camera, python_only_core, release_core, source_selection_sequenceable
from .engine import (
    ELAPSED_TIME_TAG,
    FDT_METADATA_KEY,
    PYMMCORE_PLUS_LOGGER,
    SOURCE_GROUP,
    TIMESTAMP_SOURCE_KEY,
    FDTEngine,
    event_view_timepoint,
    fdt_sequence,
)
from .hardware_settings import HardwareSettings, apply_settings, load_hardware_core, load_settings
from .microscope_info import DEMO_CAMERA, DEMO_FOCUS, DEMO_PIXEL_CONFIG, DEMO_SELECTOR, SETTINGS_FORMAT, SETTINGS_VERSION, MicroscopeInfo

__all__ = [
    "DEMO_CAMERA",
    "DEMO_FOCUS",
    "DEMO_PIXEL_CONFIG",
    "DEMO_SELECTOR",
    "ELAPSED_TIME_TAG",
    "FDT_METADATA_KEY",
    "PYMMCORE_PLUS_LOGGER",
    "SETTINGS_FORMAT",
    "SETTINGS_VERSION",
    "SOURCE_GROUP",
    "TIMESTAMP_SOURCE_KEY",
    "FDTEngine",
    "HardwareSettings",
    "MicroscopeInfo",
    "apply_settings",
    "build_demo_core",
    "demo_camera",
    "event_view_timepoint",
    "fdt_sequence",
    "load_hardware_core",
    "load_settings",
    "python_only_core",
    "release_core",
    "source_selection_sequenceable",
]
