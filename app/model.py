"""The app's model: acquisition settings, reconstruction settings and view state (evented).

The window is a view of this model. Each section is a psygnal evented dataclass:
assigning a field emits ``section.events.<field>(new, old)``; panels bind their
widgets to fields (``nvplive.app.panels``), the window reacts to the changes it acts
on (``nvplive.app.main_window``). Nothing here knows Qt, so the model is tested
without a display.

Persistence is one call each way: :meth:`AppModel.save` writes every persisted field
to a key/value store (the app's ``QSettings``; keys ``section/field``) with
:data:`SETTINGS_VERSION`; :meth:`AppModel.load` reads them back, migrating older
layouts. Paths to files (the Micro-Manager configuration, the FDT settings file, the
folder for recordings) are stored absolute, so a relative ``--mm-config`` given on
the command line still names the same file next time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from psygnal import evented

from nvplive.acquisition.bead_stack import CalibratedPupil
from nvplive.acquisition.live import CONTINUOUS_TIMEPOINTS, LIVE_CONFIG
from nvplive.recon.loop import IterationBudget, LatencyBudget
from nvplive.recon.methods import METHODS
from nvplive.recon.reconstructor import ReconConfig

#: Version of the stored settings layout (1: this one; 0: keys of the app before the model).
SETTINGS_VERSION = 1
DEMO_SOURCE = "demo"
HARDWARE_SOURCE = "hardware"
BUDGET_MODES = ("iterations", "latency")
RENDER_MODES = ("mip", "translucent", "iso")
REPLAY_KINDS = ("volume", "truth")


class SettingsStore(Protocol):
    """What persistence needs of a store (``QSettings`` has it)."""

    def value(self, key: str, defaultValue: Any = None, type: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...

    def contains(self, key: str) -> bool: ...


def absolute_path(text: str) -> str:
    """``text`` as an absolute path (``~`` expanded); empty stays empty."""
    text = str(text).strip()
    return str(Path(text).expanduser().absolute()) if text else ""


@evented
@dataclass
class AcquisitionSettings:
    """The microscope and the time-lapse.

    Attributes:
        source: ``demo`` (simulated) or ``hardware`` (Micro-Manager).
        mm_config, settings_file: Micro-Manager ``.cfg`` and FDT settings ``.json`` (hardware).
        exposure_ms: exposure per frame (ms); views: sources per timepoint (demo; hardware: from its settings).
        interval_s: between timepoint starts (s; 0: as fast as the camera goes).
        timepoints: per acquisition (0: continuous, until Stop).
        save_dir: folder for recordings (Record).
    """

    source: str = DEMO_SOURCE
    mm_config: str = ""
    settings_file: str = ""
    exposure_ms: float = 20.0
    views: int = 7
    interval_s: float = 0.0
    timepoints: int = 0
    save_dir: str = field(default_factory=lambda: str(Path.home() / "nvp-live-recordings"))

    @property
    def timepoint_count(self) -> int:
        """Timepoints to acquire (:data:`CONTINUOUS_TIMEPOINTS` for continuous)."""
        return self.timepoints if self.timepoints > 0 else CONTINUOUS_TIMEPOINTS


@evented
@dataclass
class ReconstructionSettings:
    """What the user steers of the reconstruction (applied between timepoints).

    Attributes:
        method: one of :data:`~nvplive.recon.methods.METHODS`.
        budget_mode: ``iterations`` (``warm_iterations`` per warm update) or ``latency``
            (each warm update runs until ``latency_s``): the warm budget's type
            (:class:`~nvplive.recon.loop.IterationBudget`, :class:`~nvplive.recon.loop.LatencyBudget`).
        warm_iterations, latency_s: the two budgets (the one not in use keeps its value).
        cold_iterations: iterations of a cold start; tv_weight: τ of the TV of Δn.
        device: ``auto``, ``cpu``, ``cuda`` …; warm_start: start each timepoint from the previous one.
        base: every other ReconConfig field (quality settings); not persisted.
    """

    method: str = LIVE_CONFIG.method
    budget_mode: str = "latency"
    warm_iterations: int = IterationBudget().iterations
    latency_s: float = LatencyBudget().seconds
    cold_iterations: int = LIVE_CONFIG.iterations
    tv_weight: float = LIVE_CONFIG.tv_weight
    device: str = "auto"
    warm_start: bool = True
    base: ReconConfig = field(default=LIVE_CONFIG, compare=False)

    def use_config(self, config: ReconConfig) -> None:
        """Take ``config`` as the base and show its method, budget, cold start and τ."""
        self.base = config
        self.method = config.method
        self.cold_iterations = int(config.iterations)
        self.tv_weight = float(config.tv_weight)
        budget = config.warm_budget
        if isinstance(budget, LatencyBudget):
            self.budget_mode = "latency"
            self.latency_s = float(budget.seconds)
        else:
            self.budget_mode = "iterations"
            self.warm_iterations = int(budget.iterations)

    def config_changes(self) -> dict[str, Any]:
        """The ReconConfig fields these settings control."""
        changes: dict[str, Any] = {
            "method": self.method,
            "iterations": int(self.cold_iterations),
            "tv_weight": float(self.tv_weight),
        }
        base = self.base.warm_budget
        if self.budget_mode == "latency":
            latency = base if isinstance(base, LatencyBudget) else LatencyBudget()
            changes["warm_budget"] = replace(latency, seconds=float(self.latency_s))
        else:
            iterations = base if isinstance(base, IterationBudget) else IterationBudget()
            changes["warm_budget"] = replace(iterations, iterations=int(self.warm_iterations))
        return changes

    def config(self) -> ReconConfig:
        """The full configuration: the base with these settings."""
        return replace(self.base, **self.config_changes())


@evented
@dataclass
class ViewState:
    """What the views show.

    Attributes:
        render_mode: 3D rendering (``mip``, ``translucent``, ``iso``); fps: replay speed.
        replay_kind: Δn replayed: ``volume`` (reconstruction) or ``truth`` (ground truth).
        following: the views follow the live acquisition (else they replay the timeline).
        frames_t, volume_t: the timepoints whose frames and Δn the views show (None: none yet).
    """

    render_mode: str = "mip"
    fps: int = 5
    replay_kind: str = "volume"
    following: bool = True
    frames_t: int | None = None
    volume_t: int | None = None


@evented
@dataclass
class PupilState:
    """The detection pupil the live reconstruction renders through (not among the settings:
    the window keeps it as a pupil file per instrument, :mod:`nvplive.app.pupil`).

    Attributes:
        calibrated: the last calibration ("Calibrate pupil": pupil, optics, residuals,
            what it was calibrated from) or pupil file loaded, or None (the renderer's hard aperture).
        origin: where it came from in this session, in words (calibrated, loaded, restored).
    """

    calibrated: CalibratedPupil | None = None
    origin: str = ""


#: Fields that are not stored (run-time state).
_NOT_PERSISTED = {("reconstruction", "base"), ("view", "replay_kind"), ("view", "following"), ("view", "frames_t"),
                  ("view", "volume_t")}
#: Fields that hold paths (stored absolute).
_PATHS = {("acquisition", "mm_config"), ("acquisition", "settings_file"), ("acquisition", "save_dir")}
#: Keys of settings layout 0 that differ from ``section/field``.
_LEGACY_KEYS = {("view", "fps"): "timeline/fps"}
_ALLOWED = {
    ("acquisition", "source"): (DEMO_SOURCE, HARDWARE_SOURCE),
    ("reconstruction", "method"): METHODS,
    ("reconstruction", "budget_mode"): BUDGET_MODES,
    ("view", "render_mode"): RENDER_MODES,
}


def _convert(raw: Any, kind: type) -> Any:
    """A stored value (typed, or text in an INI file) as ``kind``; ValueError if it is not one."""
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    text = str(raw).strip()
    if kind is bool:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if kind is str:
        return text
    return kind(text)


@dataclass
class AppModel:
    """The whole model: :class:`AcquisitionSettings`, :class:`ReconstructionSettings`, :class:`ViewState`
    (persisted) and :class:`PupilState` (run-time)."""

    acquisition: AcquisitionSettings = field(default_factory=AcquisitionSettings)
    reconstruction: ReconstructionSettings = field(default_factory=ReconstructionSettings)
    view: ViewState = field(default_factory=ViewState)
    pupil: PupilState = field(default_factory=PupilState)

    def _persisted(self):
        for section in ("acquisition", "reconstruction", "view"):
            obj = getattr(self, section)
            for f in fields(obj):
                if (section, f.name) not in _NOT_PERSISTED:
                    yield section, obj, f.name

    def save(self, store: SettingsStore) -> None:
        """Write every persisted field to ``store`` (keys ``section/field``) and the layout version."""
        store.setValue("settings/version", SETTINGS_VERSION)
        for section, obj, name in self._persisted():
            value = getattr(obj, name)
            if (section, name) in _PATHS:
                value = absolute_path(value)
            store.setValue(f"{section}/{name}", value)

    def load(self, store: SettingsStore) -> list[str]:
        """Set the fields ``store`` has (any known layout version); returns the keys it could not use.

        A value of the wrong type or outside the allowed choices keeps the field's current value.
        """
        version = int(store.value("settings/version", 0, type=int)) if store.contains("settings/version") else 0
        ignored: list[str] = []
        for section, obj, name in self._persisted():
            key = f"{section}/{name}"
            if version == 0 and (section, name) in _LEGACY_KEYS:
                key = _LEGACY_KEYS[(section, name)]
            if not store.contains(key):
                continue
            try:
                value = _convert(store.value(key), type(getattr(obj, name)))
            except (TypeError, ValueError):
                ignored.append(key)
                continue
            if value not in _ALLOWED.get((section, name), (value,)):
                ignored.append(key)
                continue
            setattr(obj, name, value)
        return ignored
