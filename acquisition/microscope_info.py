"""What the rest of the code knows of a loaded microscope (:class:`MicroscopeInfo`) and the
names of the simulated microscope's devices and of the settings file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import useq

from nvplive.errors import AcquisitionError
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.simulate import CameraModel

from .devices import SimulatedScene
from .engine import fdt_sequence
from .instrument import InstrumentState, instrument_mismatches, read_instrument

SETTINGS_FORMAT = "nvp-live-hardware-settings"
SETTINGS_VERSION = 1

DEMO_CAMERA = "FDTCamera"
DEMO_SELECTOR = "SourceSelector"
DEMO_FOCUS = "Focus"
DEMO_PIXEL_CONFIG = "FDT-Demo"


@dataclass
class MicroscopeInfo:
    """What the acquisition and the recording need to know about a loaded microscope.

    Attributes:
        group: config group whose presets select the sources.
        presets: preset of each view, in view order.
        camera: camera device label.
        optics, geometry: the optics and the reconstructed volume (camera sampling).
        sources_um_xyz: ``[V, 3]`` nominal source positions (µm).
        camera_model: ``offset``/``gain``/``read_noise`` of the camera (ADU).
        exposure_ms: exposure per frame (ms).
        scene: the simulated scene (``None`` on real hardware).
        frame_metadata: optional callable giving the metadata of the last snapped
            frame (Micro-Manager passes a camera's per-image tags only for sequences).
        source: where the settings came from (``demo`` or the files' paths).
        instrument: what the core reported when the microscope was set up (pixel
            size, binning, bit depth, ROI, exposure, trigger mode); the acquisition
            reads it again when it starts and whenever the camera or the pixel
            calibration changes.
        overrides: values where the instrument won over the settings (the user's
            choice, ``prefer_instrument``): ``{name: {"settings": …, "instrument": …}}``.
        settings_bit_depth, settings_roi: what the settings fix (``None``: the
            instrument's value is taken).
        bead_diameter_um: the beads' diameter as the settings state it (µm; 0: point
            sources); the recording and the reconstruction take it.
    """

    group: str
    presets: list[str]
    camera: str
    optics: Optics
    geometry: VolumeGeometry
    sources_um_xyz: np.ndarray
    camera_model: CameraModel
    exposure_ms: float
    scene: SimulatedScene | None = None
    focus: str = ""
    frame_metadata: Callable[[], dict] | None = None
    source: str = "demo"
    extra: dict = field(default_factory=dict)
    instrument: InstrumentState | None = None
    overrides: dict = field(default_factory=dict)
    settings_bit_depth: int | None = None
    settings_roi: tuple[int, int, int, int] | None = None
    bead_diameter_um: float = 0.0

    @property
    def hardware_triggered(self) -> bool:
        """Whether each timepoint runs as one hardware-triggered sequence."""
        return bool(self.extra.get("hardware_triggered", False))

    def read_instrument(self, core: Any) -> InstrumentState:
        """What the core reports now (see :func:`.instrument.read_instrument`)."""
        return read_instrument(core, hardware_triggered=self.hardware_triggered)

    def instrument_problems(self, state: InstrumentState) -> list[str]:
        """Where ``state`` disagrees with this description (what its recording says)."""
        return instrument_mismatches(
            state,
            pixel_size_um=self.geometry.camera_pixel_um,
            bit_depth=self.camera_model.bit_depth,
            frame_shape_yx=self.geometry.camera_shape_yx,
            roi_xywh=self.settings_roi,
            where=f"the settings ({self.source})",
        )

    def refresh_instrument(self, core: Any) -> InstrumentState:
        """Read the instrument now and adopt what the settings leave open; call before a recording starts.

        The bit depth is the camera's unless the settings fix it; the pixel size,
        frame size and (when the settings set one) the ROI must agree with the settings.

        Raises:
            AcquisitionError: the instrument disagrees (one sentence naming both values).
        """
        state = self.read_instrument(core)
        problems = instrument_mismatches(
            state,
            pixel_size_um=self.geometry.camera_pixel_um,
            bit_depth=self.settings_bit_depth,
            frame_shape_yx=self.geometry.camera_shape_yx,
            roi_xywh=self.settings_roi,
            where=f"the settings ({self.source})",
        )
        if problems:
            raise AcquisitionError("The microscope disagrees with its settings: " + "; ".join(problems) + ".")
        self.instrument = state
        if state.bit_depth != self.camera_model.bit_depth:
            self.camera_model = replace(self.camera_model, bit_depth=state.bit_depth)
        return state

    @property
    def n_views(self) -> int:
        """Views (sources) per timepoint."""
        return len(self.presets)

    def sequence(self, timepoints: int, interval_s: float = 0.0) -> useq.MDASequence:
        """The FDT sequence for this microscope (see :func:`fdt_sequence`)."""
        return fdt_sequence(self.presets, timepoints, interval_s, group=self.group, exposure_ms=self.exposure_ms)
