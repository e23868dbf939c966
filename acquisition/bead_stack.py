"""A bead z-stack taken through the MDA, and the detection pupil calibrated on it.

The app's "Calibrate pupil" (docs/acquisition.md, "Pupil calibration"):
:func:`acquire_bead_stack` runs a real ``useq.MDASequence`` — one channel (the preset
that excites one bead) × a z plan on the core's focus device — through the
microscope's MDA engine and returns the planes with the focus positions the core
reported for each. :func:`calibrate_stack` fits the pupil on it with the same
function as ``nvplive calibrate STACK.tif`` (:func:`~nvplive.recon.calibration.calibrate_bead_stack`)
and can write the pupil file (:mod:`.pupil_file`).

On the simulated microscope the focus stage moves the focal plane of the rendered
scene, so the stack shows the bead (and the specimen above it, a weak perturbation)
through focus, imaged through the scene's instrument (its pupil aberrations are what
a calibration should find). Nothing here knows Qt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import useq

from nvplive.errors import AcquisitionError
from nvplive.recon.calibration import StackCalibration, calibrate_bead_stack
from nvplive.recon.optics import Optics, full_scale
from nvplive.recon.progress import MAX_BEADS, STACK_ITERATIONS, CalibrationProgress
from nvplive.recon.pupil import PupilParameters

from .engine import FDT_METADATA_KEY, quiet_cancel_notice
from .microscope_info import MicroscopeInfo
from .pupil_file import read_pupil_file, write_pupil

#: ``progress(done, total, message)``.
Progress = Callable[[int, int, str], None]
#: ``total`` of the pupil fit's progress (:func:`calibrate_stack`): done/total is the fraction of its budget.
FIT_STEPS = 1000
#: Key of a bead stack's description in the sequence metadata (beside the FDT one).
BEAD_STACK_KEY = "bead_stack"
#: The fewest planes a calibration is worth running on.
MIN_PLANES = 3
#: Largest relative deviation of a reported focus step from the planned one.
STEP_TOLERANCE = 0.1
#: Automatic exposure: the bead's in-focus peak fills this fraction of the camera's range …
AUTO_EXPOSURE_FILL = 0.5
#: … found in at most this many probe frames; a probe whose peak reaches SATURATED_FRACTION
#: of full scale counts as saturated (its exposure is halved); exposures stay ≥ MIN_EXPOSURE_MS.
AUTO_EXPOSURE_PROBES = 8
SATURATED_FRACTION = 0.98
MIN_EXPOSURE_MS = 0.01


def _quiet(done: int, total: int, message: str) -> None:
    return None


@dataclass(frozen=True)
class BeadStackPlan:
    """What to acquire.

    Attributes:
        view: the source (preset of the microscope's source group) whose bead is imaged.
        half_range_um, step_um: planes at ``centre ± half_range`` every ``step`` (µm of focus travel).
        centre_um: focus offset of the middle plane from the focus position when the stack
            starts (µm); None: the bead's nominal depth below the focal plane
            (``sources_um_xyz[view].z − geometry.focal_z_um``), i.e. the stack is centred
            on the bead when the microscope is focused on the volume as for FDT.
        exposure_ms: exposure per plane (None: chosen so that the bead in focus fills about
            half the camera's range, see :func:`acquire_bead_stack`).
        z_direction: +1 when increasing focus positions move the focal plane toward the
            objective (the bead moves below focus: the simulated stage), −1 the other
            way, None when unknown (the calibration fits both and keeps the better).
    """

    view: int = 0
    half_range_um: float = 2.0
    step_um: float = 0.25
    centre_um: float | None = None
    exposure_ms: float | None = None
    z_direction: int | None = None

    @property
    def offsets_um(self) -> np.ndarray:
        """Focus offsets of the planes from the stack's centre (µm)."""
        n = int(round(self.half_range_um / self.step_um))
        return np.arange(-n, n + 1) * float(self.step_um)


@dataclass(frozen=True)
class BeadStack:
    """A bead z-stack and how it was taken.

    Attributes:
        stack: ``[Z, Y, X]`` raw camera frames (uint16).
        z_um: ``[Z]`` focus position the core reported for each plane (µm).
        z_step_um: the mean step between reported positions (µm).
        pixel_size_um: camera pixel (µm in the specimen); optics: wavelength, NA, n.
        view, preset: the excited source and its preset; z_direction: see :class:`BeadStackPlan`.
        focus_device: the core's focus device; metadata: the focus where the stack started,
            the centre's offset from it and the exposure (ms).
        bead_diameter_um: the beads' diameter as the microscope's settings state it (µm; 0:
            point sources), which the calibration's renderer images.
        bit_depth: the camera's significant bits when the stack was taken (its full scale
            is ``2**bit_depth − 1``; saturated pixels are left out of the fit).
    """

    stack: np.ndarray
    z_um: np.ndarray
    z_step_um: float
    pixel_size_um: float
    optics: Optics
    view: int
    preset: str
    z_direction: int | None
    focus_device: str
    metadata: dict = field(default_factory=dict)
    bead_diameter_um: float = 0.0
    bit_depth: int | None = None

    def describe(self) -> str:
        """One line for people and for the pupil file's ``calibrated_from``."""
        return (
            f"bead z-stack of source {self.view} ({self.preset}), {len(self.z_um)} planes, "
            f"z {self.z_um[0]:.2f}…{self.z_um[-1]:.2f} µm on {self.focus_device}"
        )


def bead_stack_sequence(
    info: MicroscopeInfo, view: int, positions_um: np.ndarray, exposure_ms: float | None = None
) -> useq.MDASequence:
    """The MDA of a bead z-stack: one channel (``info.presets[view]``) × absolute focus positions."""
    channel: dict[str, Any] = {"group": info.group, "config": info.presets[view]}
    if exposure_ms is not None:
        channel["exposure"] = float(exposure_ms)
    return useq.MDASequence(
        channels=[channel],
        z_plan={"absolute": [float(z) for z in positions_um]},
        axis_order="tpcz",
        metadata={
            # the FDT engine maps the preset to its view; the stack is one "timepoint"
            FDT_METADATA_KEY: {"group": info.group, "presets": list(info.presets), "views": info.n_views, "timepoints": 1},
            BEAD_STACK_KEY: {"view": int(view), "positions_um": [float(z) for z in positions_um]},
        },
    )


def _check_plan(core: Any, info: MicroscopeInfo, plan: BeadStackPlan) -> str:
    """The focus device, or AcquisitionError (one sentence naming the values)."""
    focus = str(core.getFocusDevice() or "")
    if not focus:
        raise AcquisitionError(
            f"A bead z-stack needs a focus device, but the microscope ({info.source}) has none (Core Focus is empty)."
        )
    if not 0 <= int(plan.view) < info.n_views:
        raise AcquisitionError(f"Source {plan.view} does not exist: the microscope has {info.n_views} sources.")
    if not (np.isfinite(plan.step_um) and plan.step_um > 0 and np.isfinite(plan.half_range_um) and plan.half_range_um > 0):
        raise AcquisitionError(
            f"A bead z-stack needs a positive step and range, got step {plan.step_um} µm and range ±{plan.half_range_um} µm."
        )
    if len(plan.offsets_um) < MIN_PLANES:
        raise AcquisitionError(
            f"A bead z-stack needs at least {MIN_PLANES} planes; range ±{plan.half_range_um} µm in steps of "
            f"{plan.step_um} µm gives {len(plan.offsets_um)}."
        )
    if core.mda.is_running():
        raise AcquisitionError("The microscope is busy: an acquisition is running; stop it before taking a bead z-stack.")
    return focus


def _run(
    core: Any, focus: str, sequence: useq.MDASequence, n: int, progress: Progress, cancel: threading.Event | None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Run ``sequence`` (``n`` planes) through the core's MDA; the planes and the reported focus positions."""
    planes: dict[int, np.ndarray] = {}
    reported: dict[int, float] = {}
    errors: list[str] = []

    def on_frame(image: np.ndarray, event: useq.MDAEvent, meta: Any = None) -> None:
        k = int(event.index.get("z", len(planes)))
        planes[k] = np.array(image, copy=True)
        position = (meta or {}).get("position") or {}
        reported[k] = float(position["z"]) if "z" in position else float(core.getPosition(focus))
        progress(len(planes), n, f"bead z-stack: plane {len(planes)}/{n} at z {reported[k]:.2f} µm")
        if cancel is not None and cancel.is_set():
            core.mda.cancel()

    def on_started(*_: Any) -> None:
        if cancel is not None and cancel.is_set():
            core.mda.cancel()

    mda = core.mda
    mda.events.frameReady.connect(on_frame)
    mda.events.eventStarted.connect(on_started)
    try:
        with quiet_cancel_notice():
            mda.run(sequence)
    except Exception as exc:
        errors.append(str(exc) if isinstance(exc, AcquisitionError) else f"The bead z-stack failed: {exc}")
    finally:
        mda.events.frameReady.disconnect(on_frame)
        mda.events.eventStarted.disconnect(on_started)
    if errors:
        raise AcquisitionError(errors[0])
    if len(planes) < n:
        why = "was cancelled" if cancel is not None and cancel.is_set() else "stopped"
        raise AcquisitionError(f"The bead z-stack {why} after {len(planes)} of {n} planes.")
    return [planes[k] for k in range(n)], np.array([reported[k] for k in range(n)])


def _auto_exposure(
    core: Any, info: MicroscopeInfo, focus: str, view: int, focus_um: float, cancel: threading.Event | None
) -> float:
    """An exposure (ms) that fills the camera to about :data:`AUTO_EXPOSURE_FILL` at the bead's
    focus: probe frames there (one-plane MDAs), halving the exposure while they saturate."""
    full = float(full_scale(info.camera_model.bit_depth))
    exposure = float(info.exposure_ms)
    offset = float(info.camera_model.offset)
    for _ in range(AUTO_EXPOSURE_PROBES):
        frames, _z = _run(core, focus, bead_stack_sequence(info, view, np.array([focus_um]), exposure), 1, _quiet, cancel)
        peak = float(frames[0].max())
        if peak < SATURATED_FRACTION * full:
            signal = max(peak - offset, 1.0)
            return float(np.clip(exposure * AUTO_EXPOSURE_FILL * (full - offset) / signal, MIN_EXPOSURE_MS, info.exposure_ms * 8))
        exposure /= 2.0
    raise AcquisitionError(
        f"The bead saturates the camera even at {exposure * 2:.3g} ms exposure ({AUTO_EXPOSURE_PROBES} probes from "
        f"{info.exposure_ms:.3g} ms); give the bead z-stack a shorter exposure."
    )


def acquire_bead_stack(
    core: Any,
    info: MicroscopeInfo,
    plan: BeadStackPlan = BeadStackPlan(),
    *,
    progress: Progress = _quiet,
    cancel: threading.Event | None = None,
) -> BeadStack:
    """Take a bead z-stack through the core's MDA (in the calling thread) and return it.

    Without ``plan.exposure_ms`` the exposure is chosen first (:func:`_auto_exposure`: a
    bead in focus is far brighter than its defocused disc in FDT frames, and saturated
    pixels carry no pupil information). The focus returns to where it was when the stack
    ends (also after a failure). ``cancel`` set from another thread ends the stack after
    the plane being exposed (AcquisitionError then says how many planes were taken).
    The camera's exposure is restored too.

    Raises:
        AcquisitionError: the microscope cannot take it (no focus device, no such source,
            a plan of fewer than :data:`MIN_PLANES` planes, an acquisition running), the
            instrument disagrees with its settings, the camera failed, a plane is
            missing, or the focus did not follow the plan — one sentence naming the values.
    """
    focus = _check_plan(core, info, plan)
    info.refresh_instrument(core)
    start_um = float(core.getPosition(focus))
    start_exposure = float(core.getExposure())
    centre = plan.centre_um
    if centre is None:
        centre = float(info.sources_um_xyz[plan.view][2] - info.geometry.focal_z_um)
    positions = start_um + centre + plan.offsets_um
    n = len(positions)
    try:
        exposure = plan.exposure_ms
        if exposure is None:
            exposure = _auto_exposure(core, info, focus, plan.view, start_um + centre, cancel)
        planes, z_um = _run(core, focus, bead_stack_sequence(info, plan.view, positions, exposure), n, progress, cancel)
    finally:
        try:
            core.setExposure(start_exposure)
            core.setPosition(focus, start_um)
            core.waitForDevice(focus)
        except Exception as exc:  # the stack's own error (if any) is the one raised
            raise AcquisitionError(f"The focus could not return to {start_um:.2f} µm after the bead z-stack: {exc}") from None
    steps = np.diff(z_um)
    if not np.all(np.abs(steps - plan.step_um) <= STEP_TOLERANCE * plan.step_um):
        raise AcquisitionError(
            f"The focus device {focus!r} did not follow the z-stack: it reported steps of {steps.min():.3f}…{steps.max():.3f} µm "
            f"for a planned step of {plan.step_um} µm."
        )
    return BeadStack(
        stack=np.stack(planes),
        z_um=z_um,
        z_step_um=float(steps.mean()),
        pixel_size_um=float(info.geometry.camera_pixel_um),
        optics=info.optics,
        bead_diameter_um=info.bead_diameter_um,
        bit_depth=int(info.camera_model.bit_depth),
        view=int(plan.view),
        preset=info.presets[plan.view],
        z_direction=plan.z_direction,
        focus_device=focus,
        metadata={"start_um": start_um, "centre_offset_um": centre, "exposure_ms": float(exposure)},
    )


@dataclass(frozen=True)
class CalibratedPupil:
    """A calibrated pupil with what the pupil file records of it (:func:`.pupil_file.write_pupil`).

    Attributes:
        pupil: the pupil; optics: the optics it was calibrated for.
        calibrated_from: one line naming the data; method: ``bead-z-stack`` or ``frames``.
        fitted_noll: the fitted Noll indices.
        residual, residual_before: relative residual after the fit and with the hard aperture.
        ambiguous: the z direction was not known and the images could not tell it.
        created: when it was calibrated (ISO 8601, UTC; None: not known).
        bead_diameter_um: the beads' diameter the calibration imaged (µm; None: not stated,
            files written before 2026-12-01).
    """

    pupil: PupilParameters
    optics: Optics
    calibrated_from: str
    method: str = "bead-z-stack"
    fitted_noll: tuple[int, ...] = ()
    residual: float | None = None
    residual_before: float | None = None
    ambiguous: bool = False
    created: str | None = None
    bead_diameter_um: float | None = None

    @classmethod
    def read(cls, path: str | Path) -> CalibratedPupil:
        """The pupil file at ``path`` (:func:`.pupil_file.read_pupil_file`).

        Raises:
            RecordingError: missing, unreadable or invalid, in one sentence naming the file.
        """
        doc = read_pupil_file(path)
        return cls(
            pupil=PupilParameters.from_dict(doc.model_dump()),
            optics=doc.optics.optics(), calibrated_from=doc.calibrated_from, method=doc.method,
            fitted_noll=tuple(doc.fitted_noll), residual=doc.residual, residual_before=doc.residual_before,
            created=doc.created, bead_diameter_um=doc.bead_diameter_um,
        )

    @property
    def provenance(self) -> dict[str, Any]:
        """What the pupil file records of it besides pupil and optics (:func:`.pupil_file.pupil_document`)."""
        return {"calibrated_from": self.calibrated_from, "method": self.method, "fitted_noll": self.fitted_noll,
                "residual": self.residual, "residual_before": self.residual_before, "created": self.created,
                "bead_diameter_um": self.bead_diameter_um}

    def write(self, path: str | Path) -> Path:
        """Write it as a pupil file (not into a recording: :meth:`.RecordingWriter.write_pupil` does that)."""
        return write_pupil(path, self.pupil, self.optics, **self.provenance)


def calibrate_stack(
    stack: np.ndarray,
    optics: Optics,
    pixel_um: float,
    z_step_um: float,
    *,
    name: str,
    iterations: int = STACK_ITERATIONS,
    z_direction: int | None = None,
    output: str | Path | None = None,
    progress: Progress = _quiet,
    cancel: threading.Event | None = None,
    bead_diameter_um: float = 0.0,
    pad_px: int | None = None,
    bit_depth: int | None = None,
    crop_px: int | None = None,
    max_beads: int = MAX_BEADS,
) -> tuple[StackCalibration, CalibratedPupil, Path | None]:
    """Calibrate the detection pupil on a bead z-stack ``[Z, Y, X]`` (raw counts) and, with
    ``output``, write the pupil file; ``name`` says what the stack is (``calibrated_from``);
    the beads are ``bead_diameter_um`` across (0: point sources); ``iterations`` per L-BFGS
    pass, the renderer's padding ``pad_px``, the camera's ``bit_depth`` (its full scale;
    None: the stack's integer type's), each bead's ``crop_px`` and the most beads fitted
    ``max_beads`` as :func:`~nvplive.recon.calibration.calibrate_bead_stack`.

    The one path of ``nvplive calibrate STACK.tif`` and the app's "Calibrate pupil"
    (:func:`~nvplive.recon.calibration.calibrate_bead_stack`). ``progress(done, total, message)``
    follows the fit's evaluations (``total`` :data:`FIT_STEPS`); ``cancel`` set from another
    thread ends the fit at its next evaluation.

    Raises:
        NoBeadError: the stack shows no bead, or none alone in its crop (before the fit).
        CalibrationCancelled: ``cancel`` was set (nothing is written).
    """

    def fit_progress(state: CalibrationProgress) -> bool:
        progress(round(FIT_STEPS * state.fraction), FIT_STEPS, f"fitting the pupil: {state.describe()}")
        return cancel is None or not cancel.is_set()

    result = calibrate_bead_stack(stack, optics, float(pixel_um), float(z_step_um), iterations=iterations,
                                  z_direction=z_direction, bead_diameter_um=bead_diameter_um, pad_px=pad_px,
                                  bit_depth=bit_depth, crop_px=crop_px, max_beads=max_beads, progress=fit_progress)
    progress(FIT_STEPS, FIT_STEPS, f"pupil fitted, residual {result.residual:.3f}")  # stages may converge before their budget
    how = f"{result.beads}, z direction {result.z_direction:+d}" + (", undetermined by the images" if result.ambiguous else "")
    if result.saturated_pixels:
        how += f"; {result.saturated_pixels} saturated pixels, amplitude unreliable"
    calibrated = CalibratedPupil(
        pupil=result.calibration.pupil,
        optics=optics,
        calibrated_from=f"{name} ({how})",
        fitted_noll=tuple(result.calibration.noll),
        residual=result.residual,
        residual_before=result.residual_hard,
        ambiguous=result.ambiguous,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        bead_diameter_um=float(bead_diameter_um),
    )
    written = calibrated.write(output) if output is not None else None
    return result, calibrated, written


def calibrate_bead_stack_acquired(
    bead: BeadStack, *, iterations: int = STACK_ITERATIONS, output: str | Path | None = None, progress: Progress = _quiet,
    cancel: threading.Event | None = None,
) -> tuple[StackCalibration, CalibratedPupil, Path | None]:
    """:func:`calibrate_stack` on an acquired :class:`BeadStack` (its optics, pixel, step, z
    direction, beads' diameter and the camera's bit depth)."""
    return calibrate_stack(
        bead.stack, bead.optics, bead.pixel_size_um, bead.z_step_um, name=bead.describe(), iterations=iterations,
        z_direction=bead.z_direction, output=output, progress=progress, cancel=cancel, bead_diameter_um=bead.bead_diameter_um,
        bit_depth=bead.bit_depth,
    )
