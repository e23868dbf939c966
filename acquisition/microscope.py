"""Setting up the microscope core (simulated or real) and the FDT acquisition sequence.

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

from __future__ import annotations

import json
import logging
import math
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.core import SequencedEvent, iter_sequenced_events
from pymmcore_plus.experimental.unicore import UniMMCore
from pymmcore_plus.mda import MDAEngine, SkipEvent

from nvplive.errors import AcquisitionError, GeometryError
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.simulate import CameraModel, PartialCoherence

from .devices import (
    REFERENCE_EXPOSURE_MS,
    Phantom,
    SimulatedFDTCamera,
    SimulatedFocusStage,
    SimulatedScene,
    SourceSelector,
    demo_scene,
    source_labels,
)
from .instrument import BIT_DEPTH_PROPERTY, InstrumentCore, InstrumentState, instrument_mismatches, read_instrument
from .schema import HardwareSettingsFile, validate

#: Default name of the config group whose presets select the excited source.
SOURCE_GROUP = "FDT-Source"
#: Key of the FDT description in the sequence's and the events' metadata.
FDT_METADATA_KEY = "nvplive"
#: Micro-Manager's per-image tag with the time since the sequence started (ms).
ELAPSED_TIME_TAG = "ElapsedTime-ms"
#: Key of a frame's metadata naming the clock of its time: ``camera`` (the camera's
#: ``ElapsedTime-ms`` tag) or ``host`` (the host's monotonic clock at frame arrival).
TIMESTAMP_SOURCE_KEY = "timestamp_source"
SETTINGS_FORMAT = "nvp-live-hardware-settings"
SETTINGS_VERSION = 1

#: The logger pymmcore-plus reports through (its stock engine logs a failed snap there).
PYMMCORE_PLUS_LOGGER = "pymmcore-plus"
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


# ---------------------------------------------------------------------------------------
# The sequence and the engine
# ---------------------------------------------------------------------------------------
def fdt_sequence(
    views: int | Sequence[str],
    timepoints: int,
    interval_s: float = 0.0,
    *,
    group: str = SOURCE_GROUP,
    exposure_ms: float | None = None,
) -> useq.MDASequence:
    """An FDT time-lapse: ``timepoints`` × (one frame per view), views innermost.

    Args:
        views: number of views (presets ``Source-0`` …) or the preset of each view.
        timepoints: number of timepoints.
        interval_s: time between timepoint starts (s); 0 = as fast as possible.
        group: config group of the presets.
        exposure_ms: exposure of every frame (``None``: keep the camera's).

    The sequence's metadata ``["nvplive"]`` lists the presets in view order; the
    :class:`FDTEngine` copies ``{"view", "timepoint", "preset"}`` into each event's
    metadata ``["nvplive"]``.
    """
    presets = source_labels(views) if isinstance(views, int) else [str(p) for p in views]
    if not presets:
        raise AcquisitionError("An FDT sequence needs at least one view.")
    if not isinstance(timepoints, int) or timepoints < 1:
        raise AcquisitionError(f"An FDT sequence needs at least one timepoint, got {timepoints!r}.")
    if not (math.isfinite(interval_s) and interval_s >= 0):
        raise AcquisitionError(f"The interval must be ≥ 0 s, got {interval_s!r}.")
    channels = []
    for preset in presets:
        channel: dict[str, Any] = {"group": group, "config": preset}
        if exposure_ms is not None:
            channel["exposure"] = float(exposure_ms)
        channels.append(channel)
    return useq.MDASequence(
        time_plan={"interval": float(interval_s), "loops": int(timepoints)},
        channels=channels,
        axis_order="tpcz",
        metadata={
            FDT_METADATA_KEY: {
                "group": group,
                "presets": presets,
                "views": len(presets),
                "timepoints": int(timepoints),
                "interval_s": float(interval_s),
            }
        },
    )


def event_view_timepoint(event: useq.MDAEvent) -> tuple[int, int]:
    """(timepoint, view) of an FDT event (from the engine's metadata, else its index).

    A hardware-sequenced event (whose own index is empty) gives its first frame's.
    """
    if isinstance(event, SequencedEvent) and event.events:
        event = event.events[0]
    fdt = event.metadata.get(FDT_METADATA_KEY) or {}
    t = fdt.get("timepoint", event.index.get("t", 0))
    v = fdt.get("view", event.index.get("c", 0))
    return int(t), int(v)


class FDTEngine(MDAEngine):
    """The pymmcore-plus engine, made strict for FDT.

    The stock engine logs a failed snap or a failed ``setConfig`` and carries on,
    which would silently drop a frame or image the wrong source. Here both raise
    :class:`AcquisitionError`, which ends the run (the runner reports it). Each
    event's metadata gets ``["nvplive"] = {"view", "timepoint", "preset"}``.

    ``skip_from_timepoint``: events of this timepoint and later are skipped (set by
    a stop request so that no frame of a timepoint after the stop is taken).

    Hardware sequencing (``use_hardware_sequencing``, on by default): when the
    property that the source presets set is sequenceable (a DMD, LED array or
    galvo controller that steps on the camera's trigger), the V views of each
    timepoint run as one triggered camera sequence. A sequence never spans two
    timepoints, so that each timepoint keeps its own start time and a stop still
    ends at a timepoint boundary. A sequence that delivers fewer frames than it
    was asked for raises :class:`AcquisitionError`.
    """

    _views: dict[str, int]
    skip_from_timepoint: int | None = None
    #: Optional: the camera's own message of the fault that cut its last sequence short.
    camera_fault: Callable[[], str | None] | None = None

    def setup_event(self, event: useq.MDAEvent) -> None:
        """Skip events from ``skip_from_timepoint`` on (a stop request), else the stock set-up."""
        limit = self.skip_from_timepoint
        if limit is not None and event_view_timepoint(event)[0] >= limit:
            raise SkipEvent(reason=f"acquisition stopped before timepoint {limit}")
        super().setup_event(event)

    def setup_sequence(self, sequence: useq.MDASequence):  # type: ignore[override]
        """Remember the sequence's presets (preset → view), clear a previous stop, then the stock set-up."""
        fdt = sequence.metadata.get(FDT_METADATA_KEY) or {}
        self._views = {str(p): i for i, p in enumerate(fdt.get("presets", []))}
        self.skip_from_timepoint = None
        return super().setup_sequence(sequence)

    def event_iterator(self, events: Iterable[useq.MDAEvent]) -> Iterator[useq.MDAEvent]:
        """Events, merged into one hardware sequence per timepoint where the devices allow."""
        if not self.use_hardware_sequencing:
            yield from events
            return
        for _, timepoint in groupby(events, key=lambda e: e.index.get("t", 0)):
            yield from iter_sequenced_events(self.mmcore, timepoint)

    def _tag(self, event: useq.MDAEvent) -> tuple[int, int, str]:
        """Write ``metadata["nvplive"]`` of one frame's event; returns (t, view, preset)."""
        t = int(event.index.get("t", 0))
        view = int(event.index.get("c", 0))
        preset = ""
        if (ch := event.channel) is not None:
            preset = ch.config
            view = getattr(self, "_views", {}).get(ch.config, view)
        event.metadata[FDT_METADATA_KEY] = {"view": view, "timepoint": t, "preset": preset}
        return t, view, preset

    def _check_selected(self, event: useq.MDAEvent) -> None:
        t, view, _preset = self._tag(event)
        if (ch := event.channel) is not None:
            current = self.mmcore.getCurrentConfigFromCache(ch.group)
            if current != ch.config:
                raise AcquisitionError(
                    f"Could not select source {view} (preset {ch.config!r} of group {ch.group!r}) at timepoint {t}: "
                    f"the group reports {current!r}."
                )

    def setup_single_event(self, event: useq.MDAEvent) -> None:
        """The stock set-up (source preset, exposure …), then check that the source was selected."""
        super().setup_single_event(event)
        self._check_selected(event)

    def setup_sequenced_event(self, event: SequencedEvent) -> None:
        """The stock set-up of a triggered sequence, then check its first source and tag every view."""
        super().setup_sequenced_event(event)
        self._check_selected(event.events[0])
        for sub in event.events[1:]:
            self._tag(sub)

    def exec_sequenced_event(self, event: SequencedEvent) -> Iterator[Any]:  # type: ignore[override]
        """The stock triggered sequence, made strict: a sequence cut short raises
        :class:`AcquisitionError`; every frame is stamped (:meth:`_stamp`)."""
        n = len(event.events)
        delivered = 0
        frames = super().exec_sequenced_event(event)
        signal = None  # "cancel" / "pause" from the runner, passed on to the stock generator
        try:
            while True:
                try:
                    payload = frames.send(signal)
                except StopIteration:
                    return
                if payload is None:
                    t, view = event_view_timepoint(event.events[delivered])
                    fault = self.camera_fault() if self.camera_fault is not None else None
                    reason = fault or "the camera's own error is in the Micro-Manager log"
                    raise AcquisitionError(
                        f"The camera failed at timepoint {t}, view {view}: its triggered sequence delivered "
                        f"{delivered} of {n} frames ({reason})."
                    )
                delivered += 1
                signal = yield self._stamp(payload, event)
        finally:
            frames.close()

    @staticmethod
    def _stamp(payload: Any, event: useq.MDAEvent) -> Any:
        """Time and trigger flag of one frame of a triggered sequence, from what the engine knows.

        The camera's ``ElapsedTime-ms`` tag gives the time when present (the stock
        engine's ``runner_time_ms``); without it (some adapters send no tags in
        sequences) the host's monotonic clock is read now, as the frame arrives,
        instead of repeating the sequence's start time for every view.
        """
        img, sub_event, meta = payload
        tags = meta.get("camera_metadata") or {}
        if ELAPSED_TIME_TAG in tags:
            meta[TIMESTAMP_SOURCE_KEY] = "camera"
        else:
            t0 = event.metadata.get("runner_t0") or sub_event.metadata.get("runner_t0")
            meta["runner_time_ms"] = (time.perf_counter() - t0) * 1000 if t0 else time.perf_counter() * 1000
            meta[TIMESTAMP_SOURCE_KEY] = "host"
        meta["hardware_triggered"] = True
        return img, sub_event, meta

    def exec_single_event(self, event: useq.MDAEvent) -> Iterator[Any]:  # type: ignore[override]
        """The stock engine's snap (SLM image, shutter and multi-camera handling included),
        made strict: a snap that fails raises :class:`AcquisitionError` with the camera's message."""
        t, view = event_view_timepoint(event)
        with _SnapFailure() as failure:
            payloads = list(super().exec_single_event(event))
        if not payloads:  # the stock engine logs a failed snap and yields nothing
            fault = self.camera_fault() if self.camera_fault is not None else None
            reason = fault or failure.message or "its error is in the Micro-Manager log"
            raise AcquisitionError(f"The camera failed at timepoint {t}, view {view}: {reason}")
        for img, sub_event, meta in payloads:
            meta["hardware_triggered"] = False
            meta[TIMESTAMP_SOURCE_KEY] = "host"
            yield img, sub_event, meta


class _SnapFailure(logging.Filter):
    """Takes the stock engine's "Failed to snap image" warning of this thread off the
    ``pymmcore-plus`` logger while active and keeps its message: the engine raises it instead."""

    PREFIX = "Failed to snap image. "

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop (and keep) this thread's snap failure; let everything else through."""
        text = record.getMessage()
        if record.thread == self._thread and text.startswith(self.PREFIX):
            self.message = text.removeprefix(self.PREFIX)
            return False
        return True

    def __enter__(self) -> _SnapFailure:
        logging.getLogger(PYMMCORE_PLUS_LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger(PYMMCORE_PLUS_LOGGER).removeFilter(self)


# ---------------------------------------------------------------------------------------
# The simulated microscope
# ---------------------------------------------------------------------------------------
def release_core(core: UniMMCore) -> None:
    """Unload the devices and detach the core's C++ callback thread from Python.

    A core left in a reference cycle keeps its C++ callback registered until garbage
    collection; if the interpreter shuts down first, that thread calls into a dying
    interpreter ("FATAL: exception not rethrown", exit 134). Detaching it here (what the
    core's ``__del__`` does) makes shutdown deterministic.
    """
    import gc

    with suppress(Exception):
        core.unloadAllDevices()
    with suppress(Exception):
        super(CMMCorePlus, core).registerCallback(None)  # pymmcore's own method, which CMMCorePlus forbids
    gc.collect()


def build_demo_core(
    scene: SimulatedScene | None = None,
    *,
    shape_zyx: tuple[int, int, int] = (32, 64, 64),
    voxel_um_zyx: tuple[float, float, float] = (0.25, 0.25, 0.25),
    views: int = 7,
    seed: int = 0,
    phantom: Phantom | None = None,
    coherence: PartialCoherence | None = None,
    exposure_ms: float = 20.0,
    time_quantum_s: float = 0.1,
    clock: Callable[[], float] | None = None,
    switch_ms: float = 0.0,
    group: str = SOURCE_GROUP,
    hold_per_timepoint: bool = True,
    triggered: bool = True,
    pixel_size_um: float | None = None,
    bit_depth: int | None = None,
) -> tuple[UniMMCore, MicroscopeInfo]:
    """A ``UniMMCore`` with the simulated camera, source selector and focus stage.

    Without ``scene`` a :func:`.devices.demo_scene` is built (beating cardiomyocyte,
    ``views`` beads below the volume). The sample clock restarts when an MDA starts.
    Devices: ``FDTCamera`` (camera), ``SourceSelector`` (state device, labels
    ``Source-i``), ``Focus`` (stage); group ``group`` has one preset per view that
    sets ``SourceSelector``'s ``Label``; auto-shutter is off (no shutter).
    With ``hold_per_timepoint`` the specimen is held still while the views of one
    timepoint are taken (see :meth:`SimulatedScene.begin_timepoint`).
    With ``triggered`` the selector's ``Label`` is sequenceable, so each timepoint
    runs as one hardware-triggered camera sequence; without it every view is a
    software switch and a snap.

    Like a real microscope the core has a pixel-size calibration (configuration
    :data:`DEMO_PIXEL_CONFIG`, ``pixel_size_um`` per unbinned camera pixel; default
    the scene's voxel dx, i.e. correct) and the camera a ``BitDepth`` (``bit_depth``;
    default the scene camera's); both stay settable on the core
    (``setPixelSizeUm``, ``setProperty``), and the acquisition checks them as it
    checks hardware.
    """
    if scene is None:
        options: dict[str, Any] = {"time_quantum_s": time_quantum_s, "clock": clock}
        if coherence is not None:
            options["coherence"] = coherence
        scene = demo_scene(shape_zyx, voxel_um_zyx, views, phantom=phantom, seed=seed, **options)
    labels = source_labels(scene.n_views)
    core = python_only_core()
    camera = SimulatedFDTCamera(scene, exposure_ms=exposure_ms)
    core.loadPyDevice(DEMO_CAMERA, camera)
    _DEMO_CAMERAS[core] = camera
    selector = SourceSelector(labels, scene=scene, switch_ms=switch_ms, max_sequence=1024 if triggered else 0)
    core.loadPyDevice(DEMO_SELECTOR, selector)
    core.loadPyDevice(DEMO_FOCUS, SimulatedFocusStage(scene))
    core.initializeAllDevices()
    core.setCameraDevice(DEMO_CAMERA)
    core.setFocusDevice(DEMO_FOCUS)
    core.defineConfigGroup(group)
    for label in labels:
        core.defineConfig(group, label, DEMO_SELECTOR, "Label", label)
    core.setChannelGroup(group)
    core.setAutoShutter(False)
    core.setExposure(exposure_ms)
    core.definePixelSizeConfig(DEMO_PIXEL_CONFIG)
    core.setPixelSizeUm(DEMO_PIXEL_CONFIG, float(scene.geometry.voxel_um_zyx[2] if pixel_size_um is None else pixel_size_um))
    core.setPixelSizeConfig(DEMO_PIXEL_CONFIG)
    if bit_depth is not None:
        core.setProperty(DEMO_CAMERA, BIT_DEPTH_PROPERTY, int(bit_depth))
    core.updateSystemStateCache()
    engine = FDTEngine(core)
    engine.camera_fault = lambda: camera.last_fault
    core.mda.set_engine(engine)
    core.mda.events.sequenceStarted.connect(scene.start_clock)
    if hold_per_timepoint:

        def hold(event: useq.MDAEvent) -> None:
            if event_view_timepoint(event)[1] == 0:
                scene.begin_timepoint()

        core.mda.events.eventStarted.connect(hold)
        core.mda.events.sequenceFinished.connect(scene.release)
    info = MicroscopeInfo(
        group=group,
        presets=labels,
        camera=DEMO_CAMERA,
        optics=scene.optics,
        geometry=scene.geometry,
        sources_um_xyz=scene.sources_um_xyz.copy(),
        camera_model=scene.camera,
        exposure_ms=float(exposure_ms),
        scene=scene,
        focus=DEMO_FOCUS,
        frame_metadata=scene.frame_metadata,
        source="demo",
        extra={"simulated": True, "hardware_triggered": triggered, "time_quantum_s": scene.time_quantum_s,
               "photons": scene.photons,
               "reference_exposure_ms": REFERENCE_EXPOSURE_MS, "specimen_held_per_timepoint": hold_per_timepoint},
    )
    try:
        info.refresh_instrument(core)
    except BaseException:
        release_core(core)
        raise
    return core, info


def python_only_core() -> UniMMCore:
    """An :class:`~.instrument.InstrumentCore` that does not log a missing Micro-Manager as an error.

    pymmcore-plus logs an error when it finds no Micro-Manager installation (C++
    device adapters); Python devices (the simulated microscope, a Python-only
    configuration) need none, so that log is silenced. An installed Micro-Manager is
    still found; a configuration that needs adapters and finds none fails to load.
    """
    logger = logging.getLogger("pymmcore-plus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return InstrumentCore()
    finally:
        logger.setLevel(level)


def source_selection_sequenceable(core: Any, group: str, presets: Sequence[str]) -> bool:
    """Whether every property that differs between the source presets is sequenceable.

    Then (with hardware sequencing on) each timepoint runs as one triggered sequence:
    the selector must step on the camera's trigger output, which is how the
    instrument has to be wired for a property that reports itself sequenceable.
    """
    settings = [
        {(dev, prop): str(val) for dev, prop, val in core.getConfigData(group, p)} for p in presets
    ]
    keys = set().union(*settings) if settings else set()
    varying = {k for k in keys if len({s.get(k) for s in settings}) > 1}
    return all(core.isPropertySequenceable(dev, prop) for dev, prop in varying)


def demo_camera(core: UniMMCore) -> SimulatedFDTCamera:
    """The simulated camera object of a demo core (for fault injection in tests)."""
    return _DEMO_CAMERAS[core]


#: The simulated camera of each demo core (pymmcore-plus keeps its Python devices to itself).
_DEMO_CAMERAS: weakref.WeakKeyDictionary[UniMMCore, SimulatedFDTCamera] = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------
# Real hardware
# ---------------------------------------------------------------------------------------
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
