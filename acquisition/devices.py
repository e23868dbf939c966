"""The simulated FDT microscope as pure-Python Micro-Manager devices (pymmcore-plus unicore).

Three devices share one :class:`SimulatedScene` (the specimen, its fluorescent
beads and the simulator):

- :class:`SimulatedFDTCamera` renders, through :class:`nvplive.recon.simulate.Simulator`,
  the phantom at the current sample time for the source that is currently excited,
  with the camera noise model, exposure (photons ∝ exposure), binning and software ROI;
- :class:`SourceSelector` is the state device that chooses which bead is excited
  (labels ``Source-0`` … ``Source-{V-1}``). Its ``Label`` property is sequenceable:
  a loaded and started sequence of labels is stepped through by the camera's
  exposure trigger, one source per frame, as a DMD or LED array wired to the
  camera's trigger output does (hardware-sequenced acquisition);
- :class:`SimulatedFocusStage` moves the focal plane (µm, relative to the nominal one).

Devices built without arguments (as Micro-Manager's ``#py pyDevice`` configuration
lines do) share the process-wide :func:`default_scene`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, StageDevice, StateDevice

from nvplive.errors import AcquisitionError
from nvplive.recon.capacity import check_memory
from nvplive.recon.optics import Optics, VolumeGeometry, full_scale
from nvplive.recon.simulate import CameraModel, Instrument, PartialCoherence, Simulator, camera_noise, default_sources

from .instrument import BIT_DEPTH_PROPERTY

logger = logging.getLogger("nvplive.acquisition")

#: Exposure (ms) at which a frame holds ``photons`` photo-electrons per pixel on average.
REFERENCE_EXPOSURE_MS = 10.0


class Phantom(Protocol):
    """A time-dependent specimen: ``at(t_s)`` returns Δn ``[Z, Y, X]`` (float32)."""

    def at(self, t_s: float) -> np.ndarray: ...


class CameraFault(RuntimeError):
    """Raised by the simulated camera when it has been told to fail."""


@dataclass(frozen=True)
class RenderedFrame:
    """What the scene rendered for one camera frame.

    Attributes:
        index: running frame number since the scene was created.
        view: the excited source.
        sample_time_s: time of the specimen state that was imaged (after quantisation).
        clock_time_s: the sample clock when the frame was taken.
        focus_um: focal-plane offset from the nominal focal plane (µm).
        exposure_ms, binning: camera settings of the frame.
    """

    index: int
    view: int
    sample_time_s: float
    clock_time_s: float
    focus_um: float
    exposure_ms: float
    binning: int

    def to_dict(self) -> dict:
        return {
            "sim_frame_index": self.index,
            "sim_view": self.view,
            "sim_sample_time_s": self.sample_time_s,
            "sim_clock_time_s": self.clock_time_s,
            "sim_focus_um": self.focus_um,
            "sim_exposure_ms": self.exposure_ms,
            "sim_binning": self.binning,
        }


class SimulatedScene:
    """The specimen and its fluorescent beads, shared by the simulated devices.

    The sample clock runs from :meth:`start_clock` (the demo core starts it when an
    acquisition starts) unless a ``clock`` returning the sample time in seconds is
    injected. Time is quantised: a frame taken at clock time ``c`` images Δn at
    ``floor(c/q)·q`` (``q = 0``: at ``c`` exactly), and Δn is rendered once per
    quantum (a small cache keeps the last few), so the V views of one timepoint do
    not re-render the phantom.

    :meth:`begin_timepoint` (the demo core calls it when the first view of a
    timepoint starts) holds the specimen at the current quantised time until the
    next call or :meth:`release`: all views of a timepoint then image the same Δn
    (the quasi-static assumption of FDT), which is what the demo stores as ground
    truth. Without a hold, the specimen moves between views.

    Args:
        optics, geometry: the microscope and the simulated volume.
        sources_um_xyz: ``[V, 3]`` true bead positions (µm).
        phantom: the specimen (``at(t_s) -> Δn``).
        photons: mean photo-electrons per pixel of an unperturbed image at
            :data:`REFERENCE_EXPOSURE_MS`.
        coherence, camera: partial coherence and camera noise model of the simulator.
        time_quantum_s: q (s), see above.
        clock: optional sample clock (s); replaces the wall clock.
        seed: seeds the bead photometry and the camera noise.
        device: torch device the simulator renders on.
        instrument: the simulated objective (pupil aberrations, apodisation …) that the
            reconstruction is not told (default: the renderer's own, "matched").
        focus_cache_size: simulators kept for focal-plane offsets besides the nominal one
            (a z-stack visits many; the oldest is dropped).
    """

    def __init__(
        self,
        optics: Optics,
        geometry: VolumeGeometry,
        sources_um_xyz: np.ndarray,
        phantom: Phantom,
        *,
        photons: float = 400.0,
        coherence: PartialCoherence | None = None,
        camera: CameraModel | None = None,
        time_quantum_s: float = 0.1,
        clock: Callable[[], float] | None = None,
        seed: int = 0,
        device: str = "cpu",
        relative_brightness: np.ndarray | None = None,
        background: np.ndarray | None = None,
        dn_cache_size: int = 4,
        instrument: Instrument | None = None,
        focus_cache_size: int = 4,
    ) -> None:
        if not (math.isfinite(time_quantum_s) and time_quantum_s >= 0):
            raise AcquisitionError(f"Simulated scene: time_quantum_s must be ≥ 0, got {time_quantum_s!r}.")
        self.optics = optics
        self.geometry = geometry
        self.sources_um_xyz = np.asarray(sources_um_xyz, dtype=np.float64).reshape(-1, 3)
        self.phantom = phantom
        self.photons = float(photons)
        self.coherence = coherence if coherence is not None else PartialCoherence()
        self.camera = camera if camera is not None else CameraModel()
        self.time_quantum_s = float(time_quantum_s)
        self.clock = clock
        self.seed = int(seed)
        self.device = device
        self.instrument = instrument if instrument is not None else Instrument()
        self._relative_brightness = relative_brightness
        self._background = background
        self._lock = threading.RLock()
        self._t0 = time.perf_counter()
        self._source = 0
        self._focus_um = 0.0
        self._simulators: OrderedDict[float, Simulator] = OrderedDict()
        self._focus_cache_size = max(1, int(focus_cache_size))
        self._dn_cache: OrderedDict[float, np.ndarray] = OrderedDict()
        self._dn_cache_size = max(1, int(dn_cache_size))
        self._rng = np.random.default_rng(self.seed + 1)
        self._frames = 0
        self._held_s: float | None = None
        self._triggered: list[int] | None = None
        self._trigger_count = 0
        self.phantom_renders = 0
        self.last_frame: RenderedFrame | None = None

    # -- state set by the devices -------------------------------------------------
    @property
    def n_views(self) -> int:
        return len(self.sources_um_xyz)

    @property
    def source(self) -> int:
        """The excited source (view index)."""
        return self._source

    def select_source(self, view: int) -> None:
        if not 0 <= int(view) < self.n_views:
            raise AcquisitionError(f"Simulated scene: source {view} does not exist (the scene has {self.n_views}).")
        self._source = int(view)

    def arm_source_sequence(self, views: Sequence[int]) -> None:
        """Step through ``views`` (cyclically), one per camera exposure, from the next frame on."""
        views = [int(v) for v in views]
        if not views:
            raise AcquisitionError("Simulated scene: a source sequence needs at least one source.")
        for v in views:
            if not 0 <= v < self.n_views:
                raise AcquisitionError(f"Simulated scene: source {v} does not exist (the scene has {self.n_views}).")
        with self._lock:
            self._triggered = views
            self._trigger_count = 0

    def disarm_source_sequence(self) -> None:
        """Stop stepping the source on exposures; the last source stays excited."""
        with self._lock:
            self._triggered = None

    @property
    def source_sequence_armed(self) -> bool:
        return self._triggered is not None

    @property
    def focus_um(self) -> float:
        """Focal-plane offset from the nominal focal plane (µm, +z toward the objective)."""
        return self._focus_um

    def set_focus(self, focus_um: float) -> None:
        if not math.isfinite(focus_um):
            raise AcquisitionError(f"Simulated focus: position must be finite, got {focus_um!r}.")
        self._focus_um = float(focus_um)

    # -- time -----------------------------------------------------------------------
    def start_clock(self, *_: object) -> None:
        """Set the sample clock to zero now (ignored when a clock is injected)."""
        self._t0 = time.perf_counter()

    def begin_timepoint(self, *_: object) -> float:
        """Hold the specimen at the current (quantised) sample time; returns that time (s)."""
        with self._lock:
            self._held_s = self.sample_time(self.now_s())
            return self._held_s

    def release(self, *_: object) -> None:
        """Let the specimen move again (frames image Δn at their own clock time)."""
        with self._lock:
            self._held_s = None

    @property
    def held_time_s(self) -> float | None:
        """The sample time the specimen is held at, or ``None``."""
        return self._held_s

    def now_s(self) -> float:
        """The sample clock (s)."""
        if self.clock is not None:
            return float(self.clock())
        return time.perf_counter() - self._t0

    def sample_time(self, clock_s: float) -> float:
        """The specimen time imaged at clock time ``clock_s`` (quantised, s)."""
        q = self.time_quantum_s
        if q == 0:
            return float(clock_s)
        return math.floor(clock_s / q + 1e-9) * q

    def dn_at(self, sample_time_s: float) -> np.ndarray:
        """Δn ``[Z, Y, X]`` of the specimen at a sample time (cached; do not modify)."""
        key = round(float(sample_time_s), 9)
        with self._lock:
            if key in self._dn_cache:
                self._dn_cache.move_to_end(key)
                return self._dn_cache[key]
            dn = np.ascontiguousarray(self.phantom.at(key), dtype=np.float32)
            if dn.shape != self.geometry.shape_zyx:
                raise AcquisitionError(
                    f"Simulated scene: the phantom returned Δn of shape {dn.shape}, expected {self.geometry.shape_zyx}."
                )
            self.phantom_renders += 1
            self._dn_cache[key] = dn
            while len(self._dn_cache) > self._dn_cache_size:
                self._dn_cache.popitem(last=False)
            return dn

    # -- rendering ------------------------------------------------------------------
    def simulator(self, focus_um: float | None = None) -> Simulator:
        """The simulator for a focal-plane offset (built once per offset; the nominal one
        and the last ``focus_cache_size`` others are kept).

        All offsets share the beads' brightness ``b_i`` and background ``c_i`` of the
        nominal focus, so refocusing changes the image (a bead z-stack shows the bead
        through focus), not the photometry.
        """
        focus = self._focus_um if focus_um is None else float(focus_um)
        key = round(focus, 6)
        with self._lock:
            if key in self._simulators:
                self._simulators.move_to_end(key)
                return self._simulators[key]
            nominal = self._simulators.get(0.0)
            if nominal is None:
                nominal = Simulator(
                    self.optics,
                    self.geometry,
                    self.sources_um_xyz,
                    photons=self.photons,
                    relative_brightness=self._relative_brightness,
                    background=self._background,
                    coherence=self.coherence,
                    camera=self.camera,
                    device=self.device,
                    seed=self.seed,
                    instrument=self.instrument,
                )
                self._simulators[0.0] = nominal
                if key == 0.0:
                    return nominal
            g = self.geometry
            shifted = VolumeGeometry(g.shape_zyx, g.voxel_um_zyx, g.focal_z_um + key, g.camera_binning)
            sim = Simulator(
                self.optics,
                shifted,
                self.sources_um_xyz,
                photons=self.photons,
                relative_brightness=nominal.relative_brightness.copy(),
                background=nominal.background.copy(),
                coherence=self.coherence,
                camera=self.camera,
                device=self.device,
                seed=self.seed,
                instrument=self.instrument,
            )
            scale = sim.brightness / sim.relative_brightness
            sim.relative_brightness = nominal.brightness / scale
            self._simulators[key] = sim
            others = [k for k in self._simulators if k != 0.0]
            for old in others[: max(0, len(others) - self._focus_cache_size)]:
                del self._simulators[old]
            return sim

    def expected_frame(
        self, view: int, sample_time_s: float, *, exposure_ms: float = REFERENCE_EXPOSURE_MS, binning: int = 1,
        focus_um: float | None = None,
    ) -> np.ndarray:
        """Noise-free expected photo-electrons ``[Y/binning, X/binning]`` of one frame."""
        sim = self.simulator(focus_um)
        image = sim.expected(self.dn_at(sample_time_s), np.array([int(view)]))[0]
        image = image * (float(exposure_ms) / REFERENCE_EXPOSURE_MS)
        return bin_sum(image, binning)

    def render(self, *, exposure_ms: float, binning: int = 1) -> tuple[np.ndarray, RenderedFrame]:
        """A noisy uint16 frame of the excited source at the current sample time."""
        with self._lock:
            if self._triggered is not None:
                self._source = self._triggered[self._trigger_count % len(self._triggered)]
                self._trigger_count += 1
            clock_s = self.now_s()
            t = self.sample_time(clock_s) if self._held_s is None else self._held_s
            view = self._source
            focus = self._focus_um
            expected = self.expected_frame(view, t, exposure_ms=exposure_ms, binning=binning, focus_um=focus)
            frame = camera_noise(expected, self.camera, self._rng)
            info = RenderedFrame(self._frames, view, t, clock_s, focus, float(exposure_ms), int(binning))
            self._frames += 1
            self.last_frame = info
        return frame, info

    def frame_metadata(self) -> dict:
        """Metadata of the last rendered frame (for frames taken by single snaps)."""
        last = self.last_frame
        return {} if last is None else last.to_dict()



def bin_sum(image: np.ndarray, binning: int) -> np.ndarray:
    """Sum ``binning × binning`` blocks (camera binning adds the charge of the pixels)."""
    b = int(binning)
    if b == 1:
        return image
    ny, nx = image.shape[-2:]
    if ny % b or nx % b:
        raise AcquisitionError(f"Binning {b} does not divide the frame size {ny}×{nx}.")
    return image.reshape(*image.shape[:-2], ny // b, b, nx // b, b).sum(axis=(-3, -1))


def demo_scene(
    shape_zyx: tuple[int, int, int] = (32, 64, 64),
    voxel_um_zyx: tuple[float, float, float] = (0.25, 0.25, 0.25),
    views: int = 7,
    *,
    optics: Optics | None = None,
    phantom: Phantom | None = None,
    seed: int = 0,
    **scene_options: object,
) -> SimulatedScene:
    """A scene with the beating cardiomyocyte phantom and beads below the volume."""
    optics = optics if optics is not None else Optics()
    geometry = VolumeGeometry(tuple(int(n) for n in shape_zyx), tuple(float(d) for d in voxel_um_zyx))
    sources = default_sources(geometry, views, seed=seed)
    # implausible or too large for memory: refused before the phantom and the renderer exist
    check_memory(optics, geometry, views, float(max(0.0, -sources[:, 2].min())), "cpu", method=None,
                 what="Simulating", sources_um_xyz=sources)
    if phantom is None:
        from nvplive.recon.phantoms import Cardiomyocyte

        phantom = Cardiomyocyte(geometry.shape_zyx, geometry.voxel_um_zyx, seed=seed)
    return SimulatedScene(optics, geometry, sources, phantom, seed=seed, **scene_options)  # type: ignore[arg-type]


_DEFAULT_SCENE: SimulatedScene | None = None
_DEFAULT_LOCK = threading.Lock()


def default_scene() -> SimulatedScene:
    """The process-wide scene of devices built without one (e.g. from a ``.cfg`` file)."""
    global _DEFAULT_SCENE
    with _DEFAULT_LOCK:
        if _DEFAULT_SCENE is None:
            _DEFAULT_SCENE = demo_scene()
        return _DEFAULT_SCENE


def set_default_scene(scene: SimulatedScene | None) -> None:
    """Replace (or with ``None`` forget) the process-wide default scene."""
    global _DEFAULT_SCENE
    with _DEFAULT_LOCK:
        _DEFAULT_SCENE = scene


#: Bit depths the simulated camera offers (uint16 frames; values up to 2**bits − 1).
CAMERA_BIT_DEPTHS = (10, 12, 14, 16)


class SimulatedFDTCamera(SimpleCameraDevice):
    """A camera (uint16 frames) that images the simulated scene for the excited source.

    Exposure (ms) scales the collected photons; ``Binning`` (1, 2, 4 … dividing the
    frame) sums charge over blocks; ``BitDepth`` (10, 12, 14 or 16; default the
    scene's camera model) clips counts at ``2**bits − 1`` as the camera's ADC does
    and is what the core reports as the image bit depth (see
    :class:`~nvplive.acquisition.instrument.InstrumentCore`); the software ROI of
    ``SimpleCameraDevice`` applies. A snap takes at least the exposure time: after rendering it sleeps
    the rest. :meth:`fail_after` / :meth:`fail_now` make snaps raise
    :class:`CameraFault` (reliability tests); :meth:`recover` clears that. A fault
    inside a triggered sequence ends it early; ``last_fault`` keeps its message.
    """

    def __init__(self, scene: SimulatedScene | None = None, *, exposure_ms: float = REFERENCE_EXPOSURE_MS) -> None:
        super().__init__()
        self._scene_ref = scene
        self._exposure_ms = float(exposure_ms)
        self._binning = 1
        self._fail_countdown: int | None = None
        self._fail_message = "Simulated camera failure."
        self.frames_snapped = 0
        self.last_fault: str | None = None
        self._bit_depth: int | None = None
        self.set_property_limits("Exposure", (0.01, 60_000.0))
        cls = type(self)
        self.register_property(
            BIT_DEPTH_PROPERTY, default_value=16, allowed_values=list(CAMERA_BIT_DEPTHS),
            getter=cls.get_bit_depth, setter=cls.set_bit_depth,
        )

    @property
    def scene(self) -> SimulatedScene:
        if self._scene_ref is None:
            self._scene_ref = default_scene()
        return self._scene_ref

    def allowed_binnings(self) -> list[int]:
        ny, nx = self.scene.geometry.camera_shape_yx
        return [b for b in (1, 2, 4, 8) if ny % b == 0 and nx % b == 0]

    # -- camera API -----------------------------------------------------------------
    def sensor_shape(self) -> tuple[int, int]:
        ny, nx = self.scene.geometry.camera_shape_yx
        return ny // self._binning, nx // self._binning

    def dtype(self) -> str:
        return "uint16"

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        exposure = float(exposure)
        if not (math.isfinite(exposure) and exposure > 0):
            raise ValueError(f"Exposure must be a positive number of ms, got {exposure!r}.")
        self._exposure_ms = exposure

    def get_binning(self) -> int:
        return self._binning

    def set_binning(self, value: int | str) -> None:
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"Binning must be an integer, got {value!r}.") from None
        if value not in self.allowed_binnings():
            raise ValueError(f"Binning {value} is not supported; allowed: {self.allowed_binnings()}.")
        if value != self._binning:
            self._binning = value
            self.clear_roi()

    def get_bit_depth(self) -> int:
        """Significant bits per pixel (default: the scene's camera model)."""
        return self.scene.camera.bit_depth if self._bit_depth is None else self._bit_depth

    def set_bit_depth(self, value: int | str) -> None:
        bits = int(value)
        if bits not in CAMERA_BIT_DEPTHS:
            raise ValueError(f"Bit depth {bits} is not supported; allowed: {list(CAMERA_BIT_DEPTHS)}.")
        self._bit_depth = bits

    def snap(self, buffer: np.ndarray) -> Mapping:
        start = time.perf_counter()
        if self._fail_countdown is not None:
            if self._fail_countdown <= 0:
                raise CameraFault(self._fail_message)
            self._fail_countdown -= 1
        frame, info = self.scene.render(exposure_ms=self._exposure_ms, binning=self._binning)
        np.minimum(frame, full_scale(self.get_bit_depth()), out=buffer)
        self.frames_snapped += 1
        remaining = self._exposure_ms / 1000.0 - (time.perf_counter() - start)
        if remaining > 0:
            time.sleep(remaining)
        return {k: str(v) for k, v in info.to_dict().items()}

    def start_sequence(self, n: int | None, get_buffer: Callable) -> Iterator[Mapping]:
        """Frames of a sequence; a fault ends a sequence early and is logged.

        ``UniMMCore`` snaps through a one-image sequence: there the fault is raised
        to the caller (``snapImage``), as a failed snap is.
        """
        self.last_fault = None
        try:
            yield from super().start_sequence(n, get_buffer)
        except CameraFault as exc:
            if n == 1:
                raise
            self.last_fault = str(exc)
            logger.error("Camera %s stopped its sequence: %s", self.get_label() or "FDTCamera", exc)

    # -- fault injection --------------------------------------------------------------
    def fail_after(self, frames: int, message: str = "Simulated camera failure.") -> None:
        """Deliver ``frames`` more frames, then raise on every snap until :meth:`recover`."""
        if frames < 0:
            raise ValueError("fail_after needs a number of frames ≥ 0.")
        self._fail_countdown = int(frames)
        self._fail_message = message

    def fail_now(self, message: str = "Simulated camera failure.") -> None:
        """Raise on every snap from now on, until :meth:`recover`."""
        self.fail_after(0, message)

    def recover(self) -> None:
        self._fail_countdown = None


def source_labels(views: int) -> list[str]:
    """Default state labels of the source selector: ``Source-0`` … ``Source-{V-1}``."""
    return [f"Source-{i}" for i in range(int(views))]


class SourceSelector(StateDevice):
    """Chooses which fluorescent source (bead) is excited; state ``i`` = view ``i``.

    Args:
        labels: state labels (or a count; default: one per source of the scene).
        scene: the scene whose excited source this device sets.
        switch_ms: time a software switch takes (the device sleeps that long);
            triggered switches happen within the camera's exposure trigger.
        max_sequence: longest label sequence the device stores (0: not
            sequenceable, every view is a software switch).
    """

    def __init__(
        self,
        labels: Sequence[str] | int | None = None,
        *,
        scene: SimulatedScene | None = None,
        switch_ms: float = 0.0,
        max_sequence: int = 1024,
    ) -> None:
        self._scene_ref = scene
        if labels is None:
            labels = self.scene.n_views
        if isinstance(labels, int):
            labels = source_labels(labels)
        labels = [str(lbl) for lbl in labels]
        if len(set(labels)) != len(labels) or not labels:
            raise AcquisitionError(f"Source selector: labels must be unique and non-empty, got {labels!r}.")
        if max_sequence < 0:
            raise AcquisitionError(f"Source selector: max_sequence must be ≥ 0, got {max_sequence!r}.")
        self.max_sequence = int(max_sequence)
        self._loaded: list[int] = []
        super().__init__(dict(enumerate(labels)))
        self.switch_ms = float(switch_ms)

    def register_standard_properties(self) -> None:
        """``State`` and ``Label``, with ``Label`` sequenceable (trigger-stepped)."""
        super().register_standard_properties()
        label = self.get_property_info("Label")
        cls = type(self)
        self.register_property(
            "Label",
            default_value=label.default_value,
            allowed_values=label.allowed_values,
            getter=cls._get_current_label,
            setter=cls._set_current_label,
            sequence_max_length=self.max_sequence,
            sequence_loader=cls._load_label_sequence,
            sequence_starter=cls._start_label_sequence,
            sequence_stopper=cls._stop_label_sequence,
        )

    def _load_label_sequence(self, labels: Sequence[str]) -> None:
        self._loaded = [self.get_position_for_label(str(lbl)) for lbl in labels]

    def _start_label_sequence(self) -> None:
        self.scene.arm_source_sequence(self._loaded)

    def _stop_label_sequence(self) -> None:
        self.scene.disarm_source_sequence()

    @property
    def scene(self) -> SimulatedScene:
        if self._scene_ref is None:
            self._scene_ref = default_scene()
        return self._scene_ref

    def get_state(self) -> int:
        return self.scene.source

    def set_state(self, position: int) -> None:
        self.scene.select_source(int(position))
        if self.switch_ms > 0:
            time.sleep(self.switch_ms / 1000.0)


class SimulatedFocusStage(StageDevice):
    """Objective focus (µm): position 0 is the nominal focal plane of the geometry."""

    def __init__(self, scene: SimulatedScene | None = None) -> None:
        super().__init__()
        self._scene_ref = scene
        self._origin_um = 0.0

    @property
    def scene(self) -> SimulatedScene:
        if self._scene_ref is None:
            self._scene_ref = default_scene()
        return self._scene_ref

    def set_position_um(self, val: float) -> None:
        self.scene.set_focus(self._origin_um + float(val))

    def get_position_um(self) -> float:
        return self.scene.focus_um - self._origin_um

    def home(self) -> None:
        self._origin_um = 0.0
        self.scene.set_focus(0.0)

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""

    def set_origin(self) -> None:
        self._origin_um = self.scene.focus_um
