"""What the instrument itself reports, read from the Micro-Manager core.

The settings file says what the microscope *should* be; the core says what it
*is*: the pixel size of the active pixel-size configuration scaled by the camera
binning, the camera's bit depth, ROI and exposure. :func:`read_instrument` reads
them; :func:`instrument_mismatches` compares them with what the acquisition
expects and returns one clause per disagreement (naming both values), which the
caller turns into one :class:`~nvplive.errors.AcquisitionError`.

:class:`InstrumentCore` is the ``UniMMCore`` the project loads: a Python camera
that registers a ``BitDepth`` property reports it through ``getImageBitDepth``
(``UniMMCore`` otherwise derives it from the dtype, 16 for every uint16 camera),
so the simulated 12-bit camera takes the same path as a real one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pymmcore_plus.experimental.unicore import UniMMCore

#: Camera property of the bit depth (Python cameras; C++ adapters report it natively).
BIT_DEPTH_PROPERTY = "BitDepth"
#: Relative difference between the settings' and the instrument's pixel size (or
#: exposure) above which they disagree.
RELATIVE_TOLERANCE = 0.01


class InstrumentCore(UniMMCore):
    """``UniMMCore`` whose Python cameras may report their bit depth (``BitDepth`` property)."""

    def getImageBitDepth(self) -> int:
        """Significant bits per pixel of the current camera."""
        camera = self.getCameraDevice()
        if camera and self.isPyDevice(camera) and self.hasProperty(camera, BIT_DEPTH_PROPERTY):
            return int(self.getProperty(camera, BIT_DEPTH_PROPERTY))
        return int(super().getImageBitDepth())


@dataclass(frozen=True)
class InstrumentState:
    """The camera and pixel calibration as the core reports them.

    Attributes:
        camera: camera device label.
        pixel_size_um: camera pixel in sample space (µm): the active pixel-size
            configuration's size × binning ÷ magnification (``getPixelSizeUm``);
            ``None`` when no pixel-size configuration is active.
        pixel_size_config: name of the active pixel-size configuration (``""``: none).
        binning: the camera's binning (1 when it has no ``Binning`` property).
        bit_depth: significant bits per pixel (``getImageBitDepth``).
        roi_xywh: the camera ROI ``[x, y, width, height]`` (pixels).
        exposure_ms: the camera's exposure (ms).
        hardware_triggered: whether the views of a timepoint run as one
            hardware-triggered sequence (the engine's trigger mode).
    """

    camera: str
    pixel_size_um: float | None
    pixel_size_config: str
    binning: int
    bit_depth: int
    roi_xywh: tuple[int, int, int, int]
    exposure_ms: float
    hardware_triggered: bool

    @property
    def frame_shape_yx(self) -> tuple[int, int]:
        """Frame size (Y, X) in pixels, from the ROI."""
        return self.roi_xywh[3], self.roi_xywh[2]

    @property
    def trigger_mode(self) -> str:
        """``hardware`` (triggered sequence per timepoint) or ``software`` (switch and snap per view)."""
        return "hardware" if self.hardware_triggered else "software"

    def to_dict(self) -> dict[str, Any]:
        """The recording's ``instrument`` section (without ``overrides``)."""
        return {
            "camera": self.camera,
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_config": self.pixel_size_config,
            "binning": self.binning,
            "bit_depth": self.bit_depth,
            "roi_xywh": list(self.roi_xywh),
            "exposure_ms": self.exposure_ms,
            "trigger_mode": self.trigger_mode,
        }


def _binning(core: Any, camera: str) -> int:
    """The camera's binning; cameras spell it ``2`` or ``2x2``."""
    if not core.hasProperty(camera, "Binning"):
        return 1
    match = re.match(r"\s*(\d+)", str(core.getProperty(camera, "Binning")))
    return int(match.group(1)) if match else 1


def read_instrument(core: Any, *, hardware_triggered: bool) -> InstrumentState:
    """Read the camera and pixel calibration from the core (never from a cache)."""
    camera = str(core.getCameraDevice())
    config = str(core.getCurrentPixelSizeConfig()) if core.getAvailablePixelSizeConfigs() else ""
    pixel = float(core.getPixelSizeUm()) if config else 0.0
    return InstrumentState(
        camera=camera,
        pixel_size_um=pixel if pixel > 0 and math.isfinite(pixel) else None,
        pixel_size_config=config,
        binning=_binning(core, camera),
        bit_depth=int(core.getImageBitDepth()),
        roi_xywh=tuple(int(v) for v in core.getROI()),  # type: ignore[arg-type]
        exposure_ms=float(core.getExposure()),
        hardware_triggered=bool(hardware_triggered),
    )


def _differs(a: float, b: float) -> bool:
    return not math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE)


def instrument_mismatches(
    state: InstrumentState,
    *,
    pixel_size_um: float | None = None,
    bit_depth: int | None = None,
    exposure_ms: float | None = None,
    frame_shape_yx: tuple[int, int] | None = None,
    roi_xywh: tuple[int, int, int, int] | None = None,
    where: str = "the settings",
) -> list[str]:
    """One clause per value where the instrument disagrees with the expectation (``None``: not checked)."""
    problems = []
    if pixel_size_um is not None and state.pixel_size_um is not None and _differs(state.pixel_size_um, pixel_size_um):
        problems.append(
            f"the instrument reports a camera pixel of {state.pixel_size_um:g} µm (pixel-size configuration "
            f"{state.pixel_size_config!r}, binning {state.binning}) but {where} give {pixel_size_um:g} µm"
        )
    if bit_depth is not None and state.bit_depth != bit_depth:
        problems.append(f"camera {state.camera!r} reports {state.bit_depth}-bit pixels but {where} give {bit_depth} bits")
    if exposure_ms is not None and _differs(state.exposure_ms, exposure_ms):
        problems.append(f"camera {state.camera!r} reports an exposure of {state.exposure_ms:g} ms but {where} give "
                        f"{exposure_ms:g} ms")
    if frame_shape_yx is not None and state.frame_shape_yx != tuple(frame_shape_yx):
        problems.append(
            f"camera {state.camera!r} delivers {state.frame_shape_yx[0]}×{state.frame_shape_yx[1]} pixel frames but "
            f"{where} expect {frame_shape_yx[0]}×{frame_shape_yx[1]} (check binning and ROI)"
        )
    elif roi_xywh is not None and state.roi_xywh != tuple(roi_xywh):
        problems.append(f"camera {state.camera!r} has the ROI {list(state.roi_xywh)} but {where} give {list(roi_xywh)}")
    return problems
