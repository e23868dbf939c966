"""The simulated microscope as a pymmcore-plus ``UniMMCore`` (:func:`build_demo_core`) and
the handling of cores (:func:`python_only_core`, :func:`release_core`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.experimental.unicore import UniMMCore

from nvplive.recon.simulate import PartialCoherence

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
from .engine import SOURCE_GROUP, FDTEngine, event_view_timepoint
from .instrument import BIT_DEPTH_PROPERTY, InstrumentCore
from .microscope_info import DEMO_CAMERA, DEMO_FOCUS, DEMO_PIXEL_CONFIG, DEMO_SELECTOR, MicroscopeInfo


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
        bead_diameter_um=scene.coherence.bead_diameter_um,
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
