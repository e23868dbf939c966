"""Real hardware: a Micro-Manager ``.cfg`` plus the FDT settings file (which group or
property selects each source, where the sources are), reconciled with what the instrument
reports (docs/acquisition.md).
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pymmcore_plus.experimental.unicore import UniMMCore

from nvplive.errors import AcquisitionError, GeometryError
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.simulate import CameraModel

from .demo_core import python_only_core, release_core, source_selection_sequenceable
from .engine import SOURCE_GROUP, FDTEngine
from .instrument import InstrumentState, instrument_mismatches, read_instrument
from .microscope_info import MicroscopeInfo
from .schema import HardwareSettingsFile, validate


@dataclass(frozen=True)
class HardwareSettings:
    """The JSON settings file of a real FDT microscope (see ``docs/acquisition.md``)."""

    path: Path
    group: str
    presets: tuple[str, ...] | None
    device: str | None
    property: str | None
    values: tuple[str, ...] | None
    sources_um_xyz: np.ndarray
    optics: Optics
    geometry: VolumeGeometry
    camera_model: CameraModel
    camera: str | None = None
    exposure_ms: float | None = None
    roi: tuple[int, int, int, int] | None = None
    hardware_sequencing: bool = True
    bit_depth: int | None = None
    prefer_instrument: bool = False
    bead_diameter_um: float = 0.0

    @property
    def n_views(self) -> int:
        """Views (sources) in the settings file."""
        return len(self.sources_um_xyz)


def _require_regular_file(path: Path, what: str) -> None:
    """Refuse a FIFO, a device or a folder before reading it (reading a FIFO would wait forever)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AcquisitionError(f"{what} {path} does not exist.") from None
    except OSError as exc:
        raise AcquisitionError(f"{what} {path} cannot be read ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(mode):
        raise AcquisitionError(f"{what} {path} is not a regular file (a folder, pipe or device); choose the file itself.")


def load_settings(path: str | Path) -> HardwareSettings:
    """Read and validate a hardware settings file (no hardware is touched).

    Raises:
        AcquisitionError: the file is missing, not JSON, or breaks the schema of
            :class:`.schema.HardwareSettingsFile` (the message names the file and field).
    """
    path = Path(path)
    _require_regular_file(path, "Hardware settings file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))  # NaN/Infinity parse; the schema refuses them by field
    except FileNotFoundError:
        raise AcquisitionError(f"Hardware settings file {path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise AcquisitionError(f"Hardware settings file {path} is not readable JSON: {exc}.") from None
    doc = validate(HardwareSettingsFile, data, f"Hardware settings {path}", AcquisitionError)
    selection = doc.source_selection
    camera = doc.camera_model
    return HardwareSettings(
        path=path,
        group=selection.group or SOURCE_GROUP,
        presets=None if selection.presets is None else tuple(selection.presets),
        device=selection.device,
        property=selection.property,
        values=None if selection.values is None else tuple(str(v) for v in selection.values),
        sources_um_xyz=np.asarray(doc.sources_um_xyz, dtype=np.float64),
        optics=doc.optics.optics(),
        geometry=doc.volume.geometry(),
        camera_model=CameraModel(offset=camera.offset, gain=camera.gain, read_noise=camera.read_noise,
                                 bit_depth=camera.bit_depth or CameraModel.bit_depth),
        camera=doc.camera,
        exposure_ms=doc.exposure_ms,
        roi=None if doc.roi is None else tuple(doc.roi),  # type: ignore[arg-type]
        hardware_sequencing=doc.hardware_sequencing,
        bit_depth=camera.bit_depth,
        prefer_instrument=doc.prefer_instrument,
        bead_diameter_um=doc.bead_diameter_um,
    )


def apply_settings(core: UniMMCore, settings: HardwareSettings, *, config_name: str = "") -> MicroscopeInfo:
    """Check a loaded core against the settings, define what they ask for, return the info.

    All problems found are reported together in one :class:`AcquisitionError`.
    """
    where = f"the configuration {config_name}" if config_name else "the loaded configuration"
    problems: list[str] = []
    loaded = set(core.getLoadedDevices())
    group = settings.group

    if settings.presets is not None:
        if not core.isGroupDefined(group):
            groups = ", ".join(sorted(core.getAvailableConfigGroups())) or "none"
            problems.append(f"{where} has no config group {group!r} to select the sources (groups: {groups})")
            presets: list[str] = list(settings.presets)
        else:
            available = set(core.getAvailableConfigs(group))
            presets = list(settings.presets)
            for view, preset in enumerate(presets):
                if preset not in available:
                    problems.append(
                        f"config group {group!r} has no preset {preset!r} for view {view} "
                        f"(presets: {', '.join(sorted(available)) or 'none'})"
                    )
    else:
        device, prop = settings.device or "", settings.property or ""
        presets = [f"View-{i}" for i in range(settings.n_views)]
        if device not in loaded:
            problems.append(
                f"{where} does not load the source-selection device {device!r} "
                f"(devices: {', '.join(sorted(d for d in loaded if d != 'Core')) or 'none'})"
            )
        elif not core.hasProperty(device, prop):
            problems.append(f"source-selection device {device!r} has no property {prop!r}")
        else:
            allowed = set(core.getAllowedPropertyValues(device, prop))
            for view, value in enumerate(settings.values or ()):
                if allowed and value not in allowed:
                    problems.append(
                        f"property {device}.{prop} does not allow the value {value!r} for view {view} "
                        f"(allowed: {', '.join(sorted(allowed))})"
                    )
        if core.isGroupDefined(group):
            problems.append(f"{where} already defines the config group {group!r} that the settings would create")

    camera = settings.camera or core.getCameraDevice()
    if not camera:
        problems.append(f"{where} has no camera (set 'camera' in the settings or Core-Camera in the .cfg)")
    elif camera not in loaded:
        problems.append(f"{where} does not load the camera {camera!r}")

    if problems:
        raise AcquisitionError(
            f"The microscope cannot run FDT with settings {settings.path}: " + "; ".join(problems) + "."
        )

    if settings.presets is None:
        core.defineConfigGroup(group)
        for preset, value in zip(presets, settings.values or ()):
            core.defineConfig(group, preset, settings.device, settings.property, value)
    if core.getCameraDevice() != camera:
        core.setCameraDevice(camera)
    core.setChannelGroup(group)
    try:
        if settings.roi is not None:
            core.setROI(*settings.roi)
        if settings.exposure_ms is not None:
            core.setExposure(settings.exposure_ms)
        core.updateSystemStateCache()
    except Exception as exc:
        raise AcquisitionError(f"Could not apply the camera settings of {settings.path}: {exc}") from exc
    triggered = settings.hardware_sequencing and source_selection_sequenceable(core, group, presets)
    state = read_instrument(core, hardware_triggered=triggered)
    geometry, bit_depth, exposure, overrides = _reconcile(settings, state)
    info = MicroscopeInfo(
        group=group,
        presets=presets,
        camera=camera,
        optics=settings.optics,
        geometry=geometry,
        sources_um_xyz=settings.sources_um_xyz.copy(),
        camera_model=settings.camera_model,
        exposure_ms=exposure,
        focus=core.getFocusDevice(),
        source=str(settings.path),
        extra={"simulated": False, "settings_file": str(settings.path), "config_file": config_name,
               "hardware_triggered": triggered},
        overrides=overrides,
        settings_bit_depth=bit_depth,
        settings_roi=settings.roi,
        bead_diameter_um=settings.bead_diameter_um,
    )
    info.refresh_instrument(core)
    engine = FDTEngine(core)
    engine.use_hardware_sequencing = settings.hardware_sequencing
    core.mda.set_engine(engine)
    return info


def _reconcile(settings: HardwareSettings, state: InstrumentState) -> tuple[VolumeGeometry, int | None, float, dict]:
    """Geometry, bit depth and exposure of the acquisition: the settings', checked against the instrument.

    Where they disagree the acquisition is refused, unless the settings say
    ``prefer_instrument``: then the instrument's pixel size (the volume's lateral
    voxel becomes pixel ÷ ``camera_binning``), bit depth and exposure are taken and
    listed in the returned overrides, which the recording keeps.
    """
    geometry, bit_depth = settings.geometry, settings.bit_depth
    exposure = settings.exposure_ms if settings.exposure_ms is not None else state.exposure_ms
    checks = {
        "pixel_size_um": dict(pixel_size_um=geometry.camera_pixel_um),
        "bit_depth": dict(bit_depth=bit_depth),
        "exposure_ms": dict(exposure_ms=exposure),
        "frame_shape_yx": dict(frame_shape_yx=geometry.camera_shape_yx),
    }
    where = f"the settings {settings.path}"
    problems = {name: instrument_mismatches(state, **check, where=where) for name, check in checks.items()}
    overrides: dict[str, dict] = {}
    if settings.prefer_instrument:
        if problems.pop("pixel_size_um") and state.pixel_size_um is not None:
            overrides["pixel_size_um"] = {"settings": geometry.camera_pixel_um, "instrument": state.pixel_size_um}
            dz = geometry.voxel_um_zyx[0]
            lateral = state.pixel_size_um / geometry.camera_binning
            geometry = replace(geometry, voxel_um_zyx=(dz, lateral, lateral))
            try:
                geometry.check_sampling(settings.optics)
            except GeometryError as exc:
                raise AcquisitionError(f"With the instrument's pixel size of {state.pixel_size_um:g} µm: {exc}") from None
        if problems.pop("bit_depth"):
            overrides["bit_depth"] = {"settings": bit_depth, "instrument": state.bit_depth}
            bit_depth = state.bit_depth
        if problems.pop("exposure_ms"):
            overrides["exposure_ms"] = {"settings": exposure, "instrument": state.exposure_ms}
            exposure = state.exposure_ms
    found = [p for clauses in problems.values() for p in clauses]
    if found:
        hint = " (or set 'prefer_instrument': true to take the instrument's values)" if not settings.prefer_instrument else ""
        raise AcquisitionError("The microscope disagrees with its settings: " + "; ".join(found) + hint + ".")
    return geometry, bit_depth, float(exposure), overrides


def load_hardware_core(cfg_path: str | Path, settings_path: str | Path) -> tuple[UniMMCore, MicroscopeInfo]:
    """Load a Micro-Manager ``.cfg`` and the FDT settings; check that they fit together.

    Raises:
        AcquisitionError: a file is missing or invalid, or the configuration lacks
            what the settings need (source-selection group/presets or device/property,
            camera); the message names every missing piece.
    """
    settings = load_settings(settings_path)
    cfg = Path(cfg_path)
    _require_regular_file(cfg, "Micro-Manager configuration file")
    # Python devices need no Micro-Manager installation: its search is not an error (logged red) at every start;
    # a configuration that needs C++ adapters and finds none says so when it loads.
    core = python_only_core()
    try:
        core.loadSystemConfiguration(cfg)
    except Exception as exc:
        hint = ""
        if "adapter" in str(exc).lower() or "library" in str(exc).lower():
            hint = " (C++ device adapters come with Micro-Manager: `mmcore install` installs them)"
        raise AcquisitionError(f"Could not load the Micro-Manager configuration {cfg}{hint}: {exc}") from None
    try:
        return core, apply_settings(core, settings, config_name=str(cfg))
    except BaseException:
        release_core(core)  # leave no half-configured hardware behind
        raise
