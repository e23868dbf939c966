"""Window actions on the detection pupil: "Calibrate pupil", "Load pupil…", "Save pupil…",
"Clear", and the model's pupil handed to the live reconstruction.

Small functions of the window (as :mod:`.acquire`). "Calibrate pupil" takes a bead
z-stack through the microscope's MDA and fits the pupil on it in a
:class:`~.workers.PupilCalibrationTask`; the result (or a loaded pupil file) becomes the
model's pupil (``model.pupil.calibrated``), which the Pupil dock draws and the live
reconstructor renders through from its next (cold) timepoint.

The pupil outlives the session: the last one calibrated or loaded is kept per instrument
(the simulated microscope; a Micro-Manager configuration with its FDT settings file) as a
pupil file beside the settings (:func:`.paths.kept_pupil_path`) and restored when the window
starts or the instrument changes; "Clear" forgets it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6 import QtWidgets

from nvplive.acquisition.bead_stack import BeadStackPlan, CalibratedPupil
from nvplive.acquisition.pupil_file import bead_mismatch, write_pupil
from nvplive.errors import NvpLiveError

from .actions import ask_save
from .model import DEMO_SOURCE
from .paths import kept_pupil_path
from .workers import PupilCalibrationTask

if TYPE_CHECKING:
    from .main_window import MainWindow

TITLE = "Calibrate pupil"


def bead_stack_plan(window: MainWindow) -> BeadStackPlan:
    """The z-stack to take: ``window.bead_stack_plan`` if set, else the default one (the
    simulated stage's z direction is known: +1; on hardware both directions are fitted)."""
    microscope = window.microscope
    if window.bead_stack_plan is not None:
        return window.bead_stack_plan
    return BeadStackPlan(z_direction=1 if microscope is not None and microscope.demo else None)


def calibrate_pupil(window: MainWindow) -> PupilCalibrationTask | None:
    """Acquire a bead z-stack and fit the pupil in a worker; progress shows in the Pupil dock."""
    if window.pupil_task is not None:
        return window.pupil_task
    microscope = window.microscope
    if microscope is None:
        window.report_error(TITLE, "Load the microscope first (Load, Live or Record).")
        return None
    if window.session is not None or window.loading:
        window.report_error(TITLE, "Stop the acquisition before calibrating the pupil.")
        return None
    plan = bead_stack_plan(window)
    task = PupilCalibrationTask(microscope.core, microscope.info, plan, iterations=window.pupil_iterations)
    view = window.pupil_view
    window.bridge.latest(task.events.progress, view.set_progress, owner=task)
    window.bridge.queued(task.events.done, lambda calibrated: _finished(window, task, calibrated), owner=task)
    window.bridge.queued(task.events.failed, lambda message: _failed(window, task, message), owner=task)
    window.bridge.queued(task.events.cancelled, lambda: _cancelled(window, task), owner=task)
    window.pupil_task = task
    view.set_progress(0, 1, "bead z-stack…")
    window.docks["pupil"].show()
    window.docks["pupil"].raise_()
    window.acquisition_panel.log(
        f"{TITLE}: bead z-stack of source {plan.view}, ±{plan.half_range_um:g} µm every {plan.step_um:g} µm")
    window.statusBar().showMessage(f"{TITLE}: acquiring a bead z-stack…")
    task.start()
    window.update_actions()
    return task


def cancel(window: MainWindow) -> None:
    """Cancel the running calibration (the z-stack ends after the plane being exposed, the
    fit at its next model evaluation)."""
    if window.pupil_task is not None:
        window.pupil_task.cancel()
        window.statusBar().showMessage(f"{TITLE}: cancelling…", 5000)


def _end(window: MainWindow, task: PupilCalibrationTask) -> None:
    window.bridge.release(task)
    if window.pupil_task is task:
        window.pupil_task = None
    window.pupil_view.end_progress()
    window.update_actions()


def _finished(window: MainWindow, task: PupilCalibrationTask, calibrated: CalibratedPupil) -> None:
    _end(window, task)
    use_pupil(window, calibrated, "calibrated in this session")
    residual = f", fit residual {calibrated.residual:.3f}" if calibrated.residual is not None else ""
    message = f"Pupil calibrated: {calibrated.pupil.aberration_rms_rad:.3f} rad RMS{residual}"
    window.acquisition_panel.log(message + " (the next timepoint starts cold with it)", "ok")
    window.statusBar().showMessage(message, 10000)


def _failed(window: MainWindow, task: PupilCalibrationTask, message: str) -> None:
    _end(window, task)
    window.report_error(TITLE, message)


def _cancelled(window: MainWindow, task: PupilCalibrationTask) -> None:
    _end(window, task)
    window.acquisition_panel.log(f"{TITLE}: cancelled; the pupil is as it was")
    window.statusBar().showMessage(f"{TITLE}: cancelled", 5000)


def instrument(window: MainWindow) -> tuple[str, str]:
    """The instrument the model names, as (a file stem, words): the simulated microscope, or a
    Micro-Manager configuration with its FDT settings file (the two paths' hash)."""
    acq = window.model.acquisition
    if acq.source == DEMO_SOURCE:
        return "demo", "the simulated microscope"
    digest = hashlib.sha1(f"{acq.mm_config}\n{acq.settings_file}".encode()).hexdigest()[:12]
    return f"hardware-{digest}", f"{Path(acq.mm_config).name} with {Path(acq.settings_file).name}"


def use_pupil(window: MainWindow, calibrated: CalibratedPupil | None, origin: str, *, keep: bool = True) -> None:
    """Make ``calibrated`` the model's pupil (None: the hard aperture); ``origin`` says where it
    came from. ``keep``: also keep it for this instrument's next session (None: forget it)."""
    key, words = instrument(window)
    window.pupil_instrument = key
    if keep:
        path = kept_pupil_path(window.settings, key)
        try:
            if calibrated is None:
                path.unlink(missing_ok=True)
            else:
                write_pupil(path, calibrated.pupil, calibrated.optics, **calibrated.provenance)
                origin += f"; kept for {words} ({path})"
        except (OSError, NvpLiveError) as exc:
            window.report_error("Pupil", f"Could not keep the pupil for the next session in {path}: {exc}", box=False)
    window.model.pupil.origin = origin
    window.model.pupil.calibrated = calibrated
    warn_of_other_beads(window)


def warn_of_other_beads(window: MainWindow) -> None:
    """Say in the activity log when the model's pupil was calibrated with other beads than the
    loaded microscope's settings state (its apodisation holds for its own beads)."""
    calibrated = window.model.pupil.calibrated
    if calibrated is None or window.microscope is None:
        return
    beads = window.microscope.info.bead_diameter_um
    problem = bead_mismatch(calibrated.bead_diameter_um, beads, "The pupil")
    if problem:
        window.acquisition_panel.log(f"{problem} The microscope's settings state {beads:g} µm.", "warning")


def restore_pupil(window: MainWindow) -> None:
    """Use the pupil kept for the model's instrument (none kept: the hard aperture)."""
    key, words = instrument(window)
    path = kept_pupil_path(window.settings, key)
    calibrated = None
    if path.is_file():
        try:
            calibrated = CalibratedPupil.read(path)
        except NvpLiveError as exc:
            window.report_error("Pupil", f"The pupil kept for {words} is not usable: {exc}", box=False)
    use_pupil(window, calibrated, f"restored from an earlier session ({path})" if calibrated else "", keep=False)


def on_instrument_changed(window: MainWindow) -> None:
    """The model names another instrument: use the pupil kept for it (not while acquiring or calibrating)."""
    if instrument(window)[0] != window.pupil_instrument and window.session is None and window.pupil_task is None:
        restore_pupil(window)


def load_pupil(window: MainWindow, path: str | Path | None = None) -> CalibratedPupil | None:
    """Make a pupil file (``pupil.json``) the model's pupil and keep it for this instrument; the pupil, or None."""
    if path is None:
        chosen, _ = QtWidgets.QFileDialog.getOpenFileName(window, "Load pupil", str(Path.home()), "Pupil file (*.json)")
        if not chosen:
            return None
        path = chosen
    try:
        calibrated = CalibratedPupil.read(path)
    except NvpLiveError as exc:
        window.report_error("Load pupil", exc)
        return None
    use_pupil(window, calibrated, f"loaded from {path}")
    window.acquisition_panel.log(f"Pupil loaded: {path} (the next timepoint starts cold with it)", "ok")
    return calibrated


def clear_pupil(window: MainWindow) -> None:
    """Forget the pupil (this session and the next): the reconstruction uses the hard aperture."""
    use_pupil(window, None, "")
    window.acquisition_panel.log("Pupil cleared: the reconstruction uses the hard aperture")


def on_pupil_changed(window: MainWindow, calibrated: CalibratedPupil | None) -> None:
    """The model's pupil changed: draw it; the live reconstructor renders through it from its next timepoint."""
    window.pupil_view.show_pupil(calibrated, window.model.pupil.origin)
    if window.reconstructor is not None:
        window.reconstructor.use_pupil(calibrated.pupil if calibrated is not None else None)
    window.update_actions()


def save_pupil(window: MainWindow, path: str | Path | None = None) -> Path | None:
    """Write the model's pupil as a pupil file (``pupil.json``, docs/format.md); the path, or None."""
    calibrated = window.model.pupil.calibrated
    if calibrated is None:
        window.report_error("Save pupil", "No calibrated pupil yet: run Acquisition → Calibrate pupil first.")
        return None
    if path is None:
        path = ask_save(window, "Save pupil", "pupil.json", "Pupil file (*.json)")
        if path is None:
            return None
    try:
        written = calibrated.write(path)
    except Exception as exc:
        window.report_error("Save pupil", exc)
        return None
    window.acquisition_panel.log(f"Pupil written: {written}", "ok")
    window.statusBar().showMessage(f"Pupil written: {written}", 10000)
    return written
