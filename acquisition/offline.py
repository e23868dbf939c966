"""Recordings without a microscope: simulate one, reconstruct one, evaluate one.

These functions join the recording format to the numerics of ``recon``; the
command line and the app's offline mode call them. Long work reports progress
through a ``progress(done, total, message)`` callback.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvplive.errors import GeometryError, NoBeadError, NvpLiveError, RecordingError
from nvplive.recon.calibration import DEFAULT_NOLL, PupilCalibration, StackCalibration, full_scale_counts
from nvplive.recon.capacity import check_memory, check_plausible
from nvplive.recon.metrics import absolute_scores, image_psnr, published_scores
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.phantoms import Cardiomyocyte, make_phantom
from nvplive.recon.physics import ForwardModel, pupil_on_grid, render, with_source_edge
from nvplive.recon.progress import MAX_BEADS, STACK_ITERATIONS
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.reconstructor import Phase, ProgressCallback, ReconConfig, Reconstructor, check_frame_size
from nvplive.recon.simulate import (
    THICK_OPTICS,
    THICK_SHAPE_ZYX,
    THICK_VOXEL_UM_ZYX,
    CameraModel,
    Instrument,
    PartialCoherence,
    Simulator,
    default_sources,
    stated_positions,
    thick_sources,
)

from .bead_stack import calibrate_stack
from .instrument import RELATIVE_TOLERANCE
from .pupil_file import (
    PUPIL_FILE,
    bead_mismatch,
    calibration_start,
    check_pupil_output,
    frames_origin,
    read_pupil_file,
    volume_pupil,
    volume_pupil_setting,
    write_pupil,
)
from .recording import JSON_NAME, SUFFIX, CameraSettings, Recording, RecordingMeta, RecordingWriter
from .recording_writer import pupil_store

Progress = Callable[[int, int, str], None]

#: Default voxel size (µm) of simulated recordings: fine enough for NA 0.8 at λ 0.6 µm.
DEFAULT_VOXEL_UM = (0.25, 0.25, 0.25)
#: Voxels ``(Z, Y, X)`` of a simulated recording unless told otherwise.
DEFAULT_SHAPE_ZYX = (32, 64, 64)
#: Time between timepoints of simulated time-lapses (s).
DEFAULT_INTERVAL_S = 0.1
#: Held-out views rendered for the image metric of ``evaluate``.
HELDOUT_VIEWS = 3


def _quiet(done: int, total: int, message: str) -> None:
    return None


def recording_meta(
    optics: Optics,
    geometry: VolumeGeometry,
    camera: CameraModel,
    sources_um_xyz: np.ndarray,
    extra: dict | None = None,
    instrument: dict | None = None,
    bead_diameter_um: float = 0.0,
) -> RecordingMeta:
    """The recording header for a simulated or real FDT acquisition.

    ``instrument``: what the microscope reported (``InstrumentState.to_dict()`` plus
    ``overrides``), ``None`` for recordings made without one; ``bead_diameter_um``: the
    beads' diameter as their supplier states it (0: point sources).
    """
    return RecordingMeta(
        optics=optics,
        geometry=geometry,
        camera=CameraSettings(
            pixel_size_um=geometry.camera_pixel_um, offset=camera.offset, gain=camera.gain, read_noise=camera.read_noise,
            bit_depth=camera.bit_depth,
        ),
        sources_um_xyz=[list(map(float, s)) for s in sources_um_xyz],
        extra=extra or {},
        instrument=instrument,
        bead_diameter_um=bead_diameter_um,
    )


def _refuse_replacing_a_measurement(path: Path) -> None:
    """Raise :class:`RecordingError` unless ``path`` holds no recording or one the simulator wrote
    (``extra.simulated`` true in its recording.json, read as plain JSON so that a damaged or newer
    recording counts too): a simulation never replaces a measurement, even with ``overwrite``."""
    doc = path / JSON_NAME
    if not doc.is_file():
        return
    try:
        extra = json.loads(doc.read_text(encoding="utf-8")).get("extra") or {}
        simulated = isinstance(extra, dict) and extra.get("simulated") is True
    except (OSError, ValueError, AttributeError):
        simulated = False  # unreadable: it may be a measurement
    if not simulated:
        raise RecordingError(
            f"{path}: is a measured recording (or one whose recording.json does not say it was simulated); a "
            "simulation never replaces a measurement, even with --overwrite. Remove it yourself if it is to go, or "
            "choose another name."
        )


def simulate_recording(
    out: str | Path,
    *,
    phantom: str,
    views: int,
    timepoints: int,
    shape_zyx: tuple[int, int, int] = DEFAULT_SHAPE_ZYX,
    voxel_um_zyx: tuple[float, float, float] = DEFAULT_VOXEL_UM,
    seed: int = 0,
    optics: Optics | None = None,
    coherence: PartialCoherence | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    overwrite: bool = False,
    progress: Progress = _quiet,
    instrument: str | Instrument = "matched",
    thick: bool = False,
) -> Path:
    """Simulate an FDT time-lapse of a phantom and write it as a recording (with ground truth).

    ``instrument`` is the simulated microscope ("matched": the reconstruction's own
    model; "realistic": a pupil with apodisation and aberrations, a wider source cone and
    finer axial steps, drawn with ``seed``; or an :class:`Instrument`); it is written to
    ``extra["simulated_instrument"]`` with the ground truth, never to the optics the reconstruction
    reads. The beads' diameter (``coherence.bead_diameter_um``) is on their label, so the
    recording states it (``RecordingMeta.bead_diameter_um``). The recording's bead positions
    (``sources_um_xyz``) are those a user would state
    (:func:`~nvplive.recon.simulate.stated_positions` with the instrument's
    ``bead_position_error_um``: the true ones for "matched"); the true ones are in
    ``extra["true_sources_um_xyz"]``. ``thick`` selects the thick-specimen geometry (its optics,
    shape, voxel and bead depths override ``optics``, ``shape_zyx`` and ``voxel_um_zyx``).
    """
    if thick:
        optics, shape_zyx, voxel_um_zyx = THICK_OPTICS, THICK_SHAPE_ZYX, THICK_VOXEL_UM_ZYX
    if overwrite:
        _refuse_replacing_a_measurement(Path(out))
    optics = optics or Optics()
    coherence = coherence or PartialCoherence()
    if views < 1 or timepoints < 1:
        raise NvpLiveError(f"Need at least one view and one timepoint, got {views} views and {timepoints} timepoints.")
    geometry = VolumeGeometry(tuple(shape_zyx), tuple(voxel_um_zyx))
    check_frame_size(geometry)  # a recording no reconstruction could use is refused before any work
    check_plausible(optics, geometry)
    geometry.camera_pixel_um  # noqa: B018 (refuses rectangular camera pixels before anything is rendered)
    sources = thick_sources(geometry, views, seed=seed) if thick else default_sources(geometry, views, seed=seed)
    check_memory(optics, geometry, views, float(max(0.0, -sources[:, 2].min())), "cpu", method=None, what="Simulating",
                 sources_um_xyz=sources)
    if isinstance(instrument, str):
        instrument = Instrument.named(instrument, optics, seed=seed)
    camera = CameraModel()
    sim = Simulator(optics, geometry, sources, coherence=coherence, camera=camera, seed=seed, instrument=instrument)
    beating = Cardiomyocyte(geometry.shape_zyx, geometry.voxel_um_zyx, seed=seed) if phantom == "cardiomyocyte" else None
    static = None if beating else make_phantom(phantom, geometry.shape_zyx, geometry.voxel_um_zyx, seed=seed)
    extra = {
        "simulated": True,
        "phantom": phantom,
        "seed": seed,
        "interval_s": interval_s,
        "true_sources_um_xyz": sources.tolist(),
        "true_brightness": sim.brightness.tolist(),
        "true_background": sim.background.tolist(),
        "coherence": {
            "n_wavelengths": coherence.n_wavelengths,
            "bead_diameter_um": coherence.bead_diameter_um,
            "n_subsources": coherence.n_subsources,
        },
        "simulated_instrument": instrument.to_dict(),
    }
    rng = np.random.default_rng(seed)
    path = Path(out)
    # the beads' size is on their label, so the recording states it (the instrument's other details it does not)
    # the bead positions the reconstruction is told are what a user would state: off by the instrument's error
    nominal = stated_positions(sources, instrument.bead_position_error_um, seed)
    meta = recording_meta(optics, geometry, camera, nominal, extra, bead_diameter_um=coherence.bead_diameter_um)
    with RecordingWriter(path, meta, overwrite=overwrite) as writer:
        for t in range(timepoints):
            t_s = t * interval_s
            dn = beating.at(t_s) if beating else static
            frames = sim.frames(dn, rng)
            writer.write_timepoint(t, frames, [t_s] * views)
            writer.write_ground_truth(t, dn.astype(np.float32))
            progress(t + 1, timepoints, f"timepoint {t + 1}/{timepoints}")
    return path


def config_for(meta: RecordingMeta, config: ReconConfig) -> ReconConfig:
    """``config`` with what it leaves to the recording filled in from ``meta``: the beads'
    diameter (``config.bead_diameter_um`` None: the recording's; a number overrides it).
    Every reconstruction of a recording, serial or distributed, resolves its settings here."""
    if config.bead_diameter_um is None:
        config = replace(config, bead_diameter_um=meta.bead_diameter_um)
    return config


def other_beads_warning(recording: str | os.PathLike, config: ReconConfig, pupil_file: str | os.PathLike | None = None) -> str | None:
    """The warning a reconstruction of ``recording`` with ``config`` owes its user when the pupil
    it starts from — ``pupil_file`` (e.g. ``reconstruct --pupil FILE``), else the recording's own
    pupil.json — was calibrated with other beads than it images (:func:`config_for`), else None
    (no such file, or the same beads, or a file that does not state its beads).

    Raises:
        RecordingError: the recording or the pupil file is unreadable or invalid.
    """
    source = Path(pupil_file) if pupil_file is not None else Path(recording) / PUPIL_FILE
    if pupil_file is None and not source.is_file():
        return None
    doc = read_pupil_file(source)
    with Recording.open(recording) as rec:
        beads = config_for(rec.meta, config).bead_diameter_um
    problem = bead_mismatch(doc.bead_diameter_um, beads, str(source))
    if problem and config.pupil_calibration:
        problem += " This run calibrates the pupil on the frames again, starting from it."
    return problem


def reconstructor_for(
    meta: RecordingMeta, config: ReconConfig, device: str = "auto", pupil: PupilParameters | None = None
) -> Reconstructor:
    """A :class:`Reconstructor` set up for a recording's optics, geometry, camera, sources and
    beads (:func:`config_for`), and a known ``pupil`` (see :mod:`acquisition.pupil_file`)."""
    config = config_for(meta, config)
    return Reconstructor(
        meta.optics,
        meta.geometry,
        np.asarray(meta.sources_um_xyz, dtype=np.float64),
        camera_offset=meta.camera.offset,
        camera_gain=meta.camera.gain,
        saturation_level=meta.camera.saturation_level,
        pupil=pupil,
        config=config,
        device=device,
    )


@dataclass
class ReconstructionSummary:
    """What :func:`reconstruct_recording` did: timepoints, wall time (s), iterations and
    final loss per timepoint, the rolled-back (flagged) timepoints, the device, and the pupil
    the run started from (:func:`~nvplive.acquisition.pupil_file.calibration_start`'s words)."""

    timepoints: int
    seconds: float
    iterations: list[int]
    losses: list[float]
    flagged: list[int]
    device: str
    pupil_start: str = "the hard aperture"
    cold_start_note: str = ""  # the first timepoint's result message (the depth start kept, a fallback)


def timepoint_progress(progress: Progress, t: int, n: int) -> ProgressCallback:
    """Timepoint ``t`` of ``n`` as the share ``[t, t + 1)`` of ``progress(done, n·1000, message)``,
    filled by the volume's iterations.

    A cold start's pupil calibration comes first; it leaves the bar where it is and says how far
    it has come in the message (its evaluations against their budget). Its length cannot be
    known in advance (a stage ends when it converges, often well inside its budget), so it
    gives the remaining-time estimate nothing to extrapolate from: that estimate then follows
    the iterations alone, and the bar never goes back.
    """

    def report(done: int, total: int, loss: float, phase: Phase) -> None:
        if phase == "calibration":
            # no loss number here: the calibration's misfit is on another scale than the fit's loss
            progress(t * 1000, n * 1000, f"timepoint {t + 1}/{n}, calibrating the pupil (evaluation {done}, at most {total})")
            return
        fraction = min(done / max(total, 1), 1.0)
        progress(t * 1000 + int(1000 * fraction), n * 1000, f"timepoint {t + 1}/{n}, loss {loss:.4f}")

    return report


def reconstruct_recording(
    path: str | Path,
    config: ReconConfig = ReconConfig(),
    *,
    device: str = "auto",
    progress: Progress = _quiet,
    pupil: PupilParameters | None = None,
    pupil_from: str | None = None,
) -> ReconstructionSummary:
    """Reconstruct every timepoint of a recording in order, warm-starting each from the previous.

    The detection pupil is ``pupil`` (``reconstruct --pupil FILE``; ``pupil_from`` names
    where it came from), else the recording's own ``pupil.json``, else the hard aperture;
    with ``config.pupil_calibration`` it is the calibration's start, and the calibrated pupil
    is written to the recording's ``pupil.json`` (:mod:`acquisition.pupil_file`), its
    ``calibrated_from`` naming that start.

    The first timepoint is a cold start; later ones are warm updates. The recording's
    lock is taken first (a recording another process writes is refused, naming it);
    the new volumes, their method and settings replace the old ones only when every
    timepoint is done (:meth:`RecordingWriter.replace_volumes`): an interrupted or
    failed run leaves the previous volumes as they were.
    """
    path = Path(path)
    with RecordingWriter.replace_volumes(path) as writer, Recording.open(path) as rec:
        meta = rec.meta
        n = rec.n_timepoints
        if n == 0:
            raise RecordingError(f"{path}: has no complete timepoint to reconstruct.")
        known, known_from = calibration_start(path, pupil, pupil_from)
        reconstructor = reconstructor_for(meta, config, device, known)
        config = reconstructor.config  # the beads' size resolved from the recording
        settings = {**config.to_dict(), "device": str(reconstructor.device),
                    "voxels_per_slab": reconstructor.model.voxels_per_slab}  # what max_slab_um gave this volume
        start = time.perf_counter()
        iterations, losses, flagged = [], [], []
        for t in range(n):
            frames = rec.frames(t)

            result = reconstructor.warm_update(frames, callback=timepoint_progress(progress, t, n))
            used = volume_pupil_setting(result.pupil)  # after the joint refinement
            said = {"message": result.message} if result.message else {}
            writer.write_volume(t, result.dn, config.method, {**settings, "iterations_run": result.iterations, "pupil": used, **said})
            if t == 0:
                note = result.message
            iterations.append(result.iterations)
            losses.append(result.loss)
            if result.flagged:
                flagged.append(t)
            progress((t + 1) * 1000, n * 1000, f"timepoint {t + 1}/{n} done")
        writer.update_sources(result.sources_um_xyz.tolist())
        calibration = reconstructor.calibration
        if calibration is not None:
            writer.write_pupil(
                calibration.pupil, meta.optics, calibrated_from=frames_origin(path, 0, known_from),
                bead_diameter_um=config.bead_diameter_um, method="frames", fitted_noll=calibration.noll,
                residual=calibration.residual, residual_before=calibration.residual_start,
            )
    return ReconstructionSummary(n, time.perf_counter() - start, iterations, losses, flagged, str(reconstructor.device),
                                 known_from, note)


def evaluate_recording(path: str | Path, *, heldout_views: int = HELDOUT_VIEWS, progress: Progress = _quiet) -> dict:
    """Δn PSNR/SSIM (absolute and published protocols) and held-out-view image PSNR; with the
    absolute PSNR the all-zero volume's (``absolute.all_zero_psnr_db``), the floor a
    reconstruction has to beat.

    Scores are averaged over the timepoints that have both a reconstruction and
    ground truth. Held-out views: beads at positions not used in the recording are
    simulated (partially coherent, noise-free) through the truth and rendered
    (coherent) through the reconstruction; their images are compared after a
    per-view gain and offset fit (``heldout_image_psnr_db``; rendered one propagation step per voxel,
    the most accurate renderer, whatever slabs the fit used), and so are the images rendered
    through the all-zero volume (``heldout_all_zero_image_psnr_db``: the homogeneous part alone,
    which dominates a weak specimen's images, scores high on its own). ``pupil`` is the detection pupil the volumes were rendered
    with (and so render the held-out views): at the first scored timepoint, its ``summary`` in
    words, its Zernike coefficients (rad, Noll 2, 3, …) and apodisation, and whether every
    scored volume used the same one (the joint refinement changes it per timepoint). For a
    recording of the simulator, ``pupil`` also holds the instrument's own pupil
    (``true_summary``, ``true_zernike_rad``, ``true_apodisation``) and the RMS wavefront error
    between the two phases (``wavefront_error_rad``, rad, over Noll 5–22,
    :data:`~nvplive.recon.calibration.DEFAULT_NOLL`: tip, tilt and defocus are the beads'
    positions, not the pupil's; the apodisation is compared by its coefficients). ``beads``
    (None where the recording does not hold the true positions) compares the bead positions
    with the simulator's true ones: the largest lateral and depth errors (µm) of the positions
    the recording states (``nominal_*``) and of those the last reconstruction refined
    (``used_*``; the nominal ones when it refined none, ``refined`` False).
    """
    with Recording.open(path) as rec:
        path = rec.path  # the folder, also when its recording.json was named
        if rec.n_timepoints == 0:
            raise RecordingError(
                f"{path}: holds no complete timepoint (its acquisition stopped before the first one was written), so "
                "there is nothing to evaluate."
            )
        if not rec.has_ground_truth:
            raise RecordingError(f"{path}: has no ground_truth.ome.tif; evaluation needs a simulated recording.")
        common = [t for t in rec.volume_timepoints if t in set(rec.ground_truth_timepoints)]
        if not common:
            raise RecordingError(f"{path}: has no reconstructed volumes; run `nvplive reconstruct` first.")
        meta = rec.meta
        extra = meta.extra
        seed = int(extra.get("seed", 0)) + 1000
        held = default_sources(meta.geometry, heldout_views, seed=seed)
        check_memory(meta.optics, meta.geometry, heldout_views, float(max(0.0, -held[:, 2].min())), "cpu", method=None,
                     what="Evaluating", sources_um_xyz=held)
        coh = extra.get("coherence", {})
        sim = Simulator(
            meta.optics,
            meta.geometry,
            held,
            coherence=PartialCoherence(
                coh.get("n_wavelengths", 5), coh.get("bead_diameter_um", 0.2), coh.get("n_subsources", 4)
            ),
            seed=seed,
            instrument=Instrument.from_dict(extra.get("simulated_instrument")),
        )
        @cache  # one renderer per bead diameter the volumes were fitted with
        def plain(bead_um: float) -> ForwardModel:
            return ForwardModel.build(meta.optics, meta.geometry, pad_yx=sim.pad_yx, bead_diameter_um=bead_um)

        @cache  # the warm timepoints share their pupil and beads: one grid for them all
        def renderer(used: PupilParameters | None, bead_um: float) -> tuple[ForwardModel, torch.Tensor | None]:
            model = plain(bead_um) if used is None else with_source_edge(plain(bead_um), *used.source_spectrum)
            return model, None if used is None else pupil_on_grid(model, used)

        settings = rec.volume_settings
        rows = []
        for i, t in enumerate(common):
            progress(i, len(common), f"timepoint {t}")
            truth, pred = rec.ground_truth(t), rec.volume(t)
            a, p = absolute_scores(pred, truth), published_scores(pred, truth)
            measured = sim.expected(truth)
            # the pupil and beads this volume was rendered with render the held-out views
            used = settings[t]["settings"]
            model, pupil = renderer(volume_pupil(used, path), float(used.get("bead_diameter_um", 0.0)))
            with torch.no_grad():
                held_t = torch.as_tensor(held, dtype=torch.float32)
                predicted = render(model, torch.as_tensor(pred), held_t, pupil=pupil).numpy()
                empty = render(model, torch.zeros(pred.shape), held_t, pupil=pupil).numpy()
            zero = absolute_scores(np.zeros_like(truth), truth)
            rows.append((a.psnr_db, a.ssim, p.psnr_db, p.ssim, image_psnr(predicted, measured), zero.psnr_db,
                         image_psnr(empty, measured)))
        progress(len(common), len(common), "")
        m = np.mean(np.array(rows), axis=0)
        method = rec.volume_settings.get(common[0], {}).get("method", "unknown")
        pupils = {t: volume_pupil(settings[t]["settings"], path) for t in common}
        first = pupils[common[0]]
        pupil = {
            "summary": (first or PupilParameters()).summary,
            "zernike_rad": [] if first is None else list(first.zernike_rad),
            "apodisation": [] if first is None else list(first.apodisation),
            "timepoint": common[0],
            "same_at_every_timepoint": all(p == first for p in pupils.values()),
        }
        if "simulated_instrument" in extra:
            true_pupil = Instrument.from_dict(extra["simulated_instrument"]).pupil
            pupil["true_summary"] = true_pupil.summary
            pupil["true_zernike_rad"] = list(true_pupil.zernike_rad)
            pupil["true_apodisation"] = list(true_pupil.apodisation)
            pupil["wavefront_error_rad"] = (first or PupilParameters()).wavefront_error_rad(true_pupil, DEFAULT_NOLL)
        beads = None
        if "true_sources_um_xyz" in extra:
            true_sources = np.asarray(extra["true_sources_um_xyz"], dtype=np.float64)
            refined = meta.refined_sources_um_xyz
            beads = {"refined": refined is not None}
            for name, positions in (("nominal", meta.sources_um_xyz), ("used", refined or meta.sources_um_xyz)):
                error = np.asarray(positions, dtype=np.float64) - true_sources
                beads[f"{name}_lateral_error_max_um"] = float(np.abs(error[:, :2]).max())
                beads[f"{name}_depth_error_max_um"] = float(np.abs(error[:, 2]).max())
    return {
        "recording": str(path),
        "method": method,
        "timepoints": len(common),
        "absolute": {"psnr_db": float(m[0]), "ssim": float(m[1]), "all_zero_psnr_db": float(m[5])},
        "published": {"psnr_db": float(m[2]), "ssim": float(m[3])},
        "pupil": pupil,
        "beads": beads,
        "heldout_image_psnr_db": float(m[4]),
        "heldout_all_zero_image_psnr_db": float(m[6]),
        "heldout_views": heldout_views,
    }


def calibrate_recording(
    path: str | Path, *, timepoint: int = 0, device: str = "auto", output: str | Path | None = None,
    progress: Progress = _quiet, source_calibration: bool = True, bead_diameter_um: float | None = None,
    overwrite: bool = False,
) -> tuple[PupilCalibration, Path]:
    """Calibrate the detection pupil on one timepoint's frames of a recording (no volume is
    fitted) and write it to ``output`` (default: the recording's own pupil.json, replaced; a
    pupil file ``output`` that exists only with ``overwrite``).

    With ``source_calibration`` (``ReconConfig.source_calibration``) the source spectrum's
    edge is calibrated too, where the frames show one inside the pupil; the beads are
    ``bead_diameter_um`` across (``ReconConfig.bead_diameter_um``; None: the recording's).

    The recording's pupil.json, when there is one, is the calibration's start.
    ``progress(done, total, message)`` follows the fit's evaluations and their budget.

    Raises:
        RecordingError: the recording cannot be read or has no such timepoint; or the output
            recording cannot be locked (RecordingLockedError: another process writes it),
            refused before the fit.
        ReconstructionError: its frames show no source.
    """
    path = Path(path)
    with Recording.open(path) as rec:
        meta = rec.meta
        if not 0 <= timepoint < rec.n_timepoints:
            n = rec.n_timepoints
            held = "none" if n == 0 else "timepoint 0" if n == 1 else f"timepoints 0 to {n - 1}"
            raise RecordingError(f"{path}: has no complete timepoint {timepoint} (it has {held}).")
        frames = rec.frames(timepoint)
    target = Path(output) if output is not None else path
    if target.suffix != SUFFIX:
        check_pupil_output(target, path, overwrite=overwrite)
    known, known_from = calibration_start(path)
    config = ReconConfig(source_calibration=source_calibration, bead_diameter_um=bead_diameter_um)
    reconstructor = reconstructor_for(meta, config, device, known)

    def report(done: int, total: int, _loss: float, _phase: Phase) -> None:
        # no loss number: each stage (positions, then the pupil; the source scan's passes) starts
        # from its own misfit, so the number jumped back up between stages
        progress(done, total, "fitting the pupil")

    # into a recording: its lock is held from before the fit until the pupil is written, so that
    # a recording another process writes is refused now, and no writer starts during the fit
    slot = pupil_store(target) if target.suffix == SUFFIX else nullcontext(partial(write_pupil, target))
    with slot as store:
        calibration = reconstructor.calibrate(frames, callback=report)
        progress(1, 1, f"pupil fitted, residual {calibration.residual:.3f}")  # its stages may converge before their budget
        written = store(
            calibration.pupil, meta.optics, calibrated_from=frames_origin(path, timepoint, known_from),
            bead_diameter_um=reconstructor.config.bead_diameter_um, method="frames", fitted_noll=calibration.noll,
            residual=calibration.residual, residual_before=calibration.residual_start,
        )
    return calibration, written


#: Keys of the JSON file beside a bead z-stack (``STACK.json``) that :func:`calibrate_stack_file` needs.
STACK_KEYS = ("wavelength_um", "na", "n_medium", "pixel_size_um", "z_step_um")


#: Lengths in OME-XML and ImageJ units, in µm (OME's ``PhysicalSizeXUnit`` and the like, µm when
#: absent; ImageJ's ``unit``/``zunit``, lower case, its escaped ``\\u00B5m`` read as µm).
_UNITS_UM = {"m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
             "nm": 1e-3, "å": 1e-4, "pm": 1e-6}


def _unit_um(unit: Any) -> float | None:
    """µm per ``unit`` (:data:`_UNITS_UM`), None for a unit that is no length (ImageJ's ``pixel``)."""
    text = str(unit).strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").replace("\u03bc", "µ").lower()
    return _UNITS_UM.get(text)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def tiff_stated(tif: Any) -> dict[str, tuple[float, str]]:
    """What an open ``tifffile.TiffFile`` states of the camera and the stage, each value with
    where it says so: ``bit_depth`` (the OME-XML ``Pixels/@SignificantBits``, else
    Micro-Manager's ``Summary/BitDepth``), ``pixel_size_um`` (OME ``PhysicalSizeX`` in its
    unit, else Micro-Manager's ``Summary/PixelSize_um``, else an ImageJ calibration in
    microns: the X resolution's pixels per micron) and ``z_step_um`` (OME ``PhysicalSizeZ``,
    Micro-Manager's ``Summary/z-step_um``, ImageJ's ``spacing``). Absent keys: not stated
    (a Micro-Manager pixel size of 0 is an uncalibrated one).

    Raises:
        RecordingError: OME metadata that states pixels of different widths in X and Y
            (the renderer's pixels are square).
    """
    from xml.etree import ElementTree

    stated: dict[str, tuple[float, str]] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ElementTree.fromstring(tif.ome_metadata)
        except ElementTree.ParseError:
            root = None
        pixels = next((e for e in (() if root is None else root.iter()) if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
        if pixels is not None:
            bits = pixels.get("SignificantBits")
            if bits is not None and bits.isdigit():
                stated["bit_depth"] = (int(bits), "its OME metadata (SignificantBits)")
            sizes = {}
            for axis in "XYZ":
                size, scale = _positive(pixels.get(f"PhysicalSize{axis}")), _unit_um(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
                if size is not None and scale is not None:
                    sizes[axis] = size * scale
            if "X" in sizes and "Y" in sizes and not math.isclose(sizes["X"], sizes["Y"], rel_tol=RELATIVE_TOLERANCE):
                raise RecordingError(f"its OME metadata states pixels of {sizes['X']:g} × {sizes['Y']:g} µm (X × Y); "
                                     "a bead z-stack's pixels must be square.")
            if "X" in sizes:
                stated["pixel_size_um"] = (sizes["X"], "its OME metadata (PhysicalSizeX)")
            if "Z" in sizes:
                stated["z_step_um"] = (sizes["Z"], "its OME metadata (PhysicalSizeZ)")
    summary = (tif.micromanager_metadata or {}).get("Summary") if tif.is_micromanager else None
    if isinstance(summary, dict):
        bits = summary.get("BitDepth")
        if "bit_depth" not in stated and (
                (isinstance(bits, int) and not isinstance(bits, bool)) or (isinstance(bits, str) and bits.isdigit())):
            stated["bit_depth"] = (int(bits), "its Micro-Manager metadata (BitDepth)")
        for key, name in (("pixel_size_um", "PixelSize_um"), ("z_step_um", "z-step_um")):
            value = _positive(summary.get(name))
            if key not in stated and value is not None:
                stated[key] = (value, f"its Micro-Manager metadata ({name})")
    imagej = tif.imagej_metadata if tif.is_imagej else None
    scale = _unit_um(imagej.get("unit", "")) if isinstance(imagej, dict) else None
    if isinstance(imagej, dict) and scale is not None:
        sizes = []
        for name in ("XResolution", "YResolution"):  # pixels per unit
            tag = tif.pages[0].tags.get(name)
            numerator, denominator = tag.value if tag is not None else (0, 0)
            per_unit = _positive(numerator / denominator) if denominator else None
            sizes.append(None if per_unit is None else scale / per_unit)
        if sizes[0] is not None and sizes[1] is not None and not math.isclose(sizes[0], sizes[1], rel_tol=RELATIVE_TOLERANCE):
            raise RecordingError(f"its ImageJ metadata states pixels of {sizes[0]:g} × {sizes[1]:g} µm (X × Y); "
                                 "a bead z-stack's pixels must be square.")
        if "pixel_size_um" not in stated and sizes[0] is not None:
            stated["pixel_size_um"] = (sizes[0], "its ImageJ metadata (XResolution)")
        z_scale = _unit_um(imagej.get("zunit", imagej["unit"]))
        spacing = _positive(imagej.get("spacing"))
        if "z_step_um" not in stated and spacing is not None and z_scale is not None:
            stated["z_step_um"] = (spacing * z_scale, "its ImageJ metadata (spacing)")
    return stated


#: The smallest crop of a bead z-stack (``calibrate --crop``): the in-focus spot and its first rings.
MIN_CROP_PX = 16


def calibrate_stack_file(
    path: str | Path, *, output: str | Path | None = None, iterations: int = STACK_ITERATIONS,
    z_direction: int | None = None, progress: Progress = _quiet, bead_diameter_um: float | None = None,
    crop_px: int | None = None, pad_px: int | None = None, overwrite: bool = False, bit_depth: int | None = None,
    max_beads: int = MAX_BEADS, **overrides: float | None,
) -> tuple[StackCalibration, Path]:
    """Calibrate the detection pupil on a bead z-stack TIFF (``[Z, Y, X]``) and write the pupil file.

    Its optics and sampling come from ``STACK.json`` beside it (keys :data:`STACK_KEYS`, and
    when present ``bead_diameter_um`` (µm, default 0: point sources), ``emission_fwhm_um``
    (µm, default 0: coherent at ``wavelength_um``) and ``bit_depth``), each overridden by a
    keyword argument that is not None. What the TIFF itself states (:func:`tiff_stated`) is
    the instrument's word: its pixel size and z step are used where neither gives them, and
    a value given that differs from the TIFF's by more than
    :data:`~.instrument.RELATIVE_TOLERANCE` is refused, both named. So is a bit depth that
    differs from the TIFF's: the camera's full scale (saturated pixels are left out of the
    fit) is the TIFF's bit depth, else ``bit_depth`` or the JSON's (neither: the integer
    type's maximum). ``output`` defaults to
    ``STACK.pupil.json`` in the current folder (the stack's own folder may be a shared,
    read-only data folder). ``z_direction``: see :func:`calibrate_bead_stack`;
    ``progress``, ``iterations``, ``pad_px`` and ``bead_diameter_um``: see
    :func:`.bead_stack.calibrate_stack` (``bead_diameter_um`` None: the optional key
    ``bead_diameter_um`` of ``STACK.json``, else 0, a point source). ``crop_px``: fit only the
    ``crop_px × crop_px`` pixels around each bead (faster, and less background noise;
    at least :data:`MIN_CROP_PX` and at most the frame); ``max_beads``: the most beads fitted
    together when the stack holds several (:func:`~nvplive.recon.calibration.bead_stack_views`).
    An ``output`` that exists is replaced only with ``overwrite``.

    Raises:
        RecordingError: the stack or its parameters cannot be read, a parameter is missing or
            not a positive number, the pixel size, z step or bit depth given disagrees with the
            TIFF's, the bit depth cannot have written its pixels, or the output is the stack (or its JSON) or cannot be
            written, or the stack shows no bead or none alone in its crop; all before the fit.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such bead z-stack file.")
    params: dict = {}
    beside = path.with_suffix(".json")
    if beside.is_file():
        try:
            params = json.loads(beside.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordingError(f"{beside}: not readable JSON ({exc}).") from None
        if not isinstance(params, dict):
            raise RecordingError(f"{beside}: must hold a JSON object of the stack's parameters ({', '.join(STACK_KEYS)}).")
    params.update({k: v for k, v in overrides.items() if v is not None})
    try:  # the stack's own word on its sampling and bit depth (the metadata only: the pixels come after the refusals)
        with tifffile.TiffFile(path) as tif:
            own = tiff_stated(tif)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise RecordingError(f"{path}: not a readable TIFF z-stack ({exc}).") from None
    except RecordingError as exc:
        raise RecordingError(f"{path}: {exc}") from None
    missing = [k for k in STACK_KEYS if k not in params and k not in own]
    if missing:
        raise RecordingError(
            f"{path}: the z-stack's {', '.join(missing)} must be given (options, or {beside.name} beside it)."
        )
    for key in (k for k in STACK_KEYS if k in params):
        value = params[key]
        given = f"--{key.replace('_', '-')}" if overrides.get(key) is not None else str(beside)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise RecordingError(f"{given}: the z-stack's {key} must be a positive number, got {json.dumps(value)}.")
        if key in own and not math.isclose(value, own[key][0], rel_tol=RELATIVE_TOLERANCE):
            raise RecordingError(
                f"{path}: the {key.removesuffix('_um').replace('_', ' ')} is {own[key][0]:g} µm in {own[key][1]}, but {given} "
                f"says {value:g} µm; the stack's own metadata is the instrument's word: correct or remove the other."
            )
    params.update({k: own[k][0] for k in ("pixel_size_um", "z_step_um") if k in own})
    if bead_diameter_um is None:
        bead_diameter_um = params.get("bead_diameter_um", 0.0)
    for key, value in (("bead_diameter_um", bead_diameter_um), ("emission_fwhm_um", params.get("emission_fwhm_um", 0.0))):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise RecordingError(f"{beside}: the z-stack's {key} must be a number ≥ 0, got {json.dumps(value)}.")
    # every bit depth stated beside the stack, the option's first (it overrides the JSON's, as for the other parameters)
    stated = [(value, where) for value, where in ((bit_depth, "--bit-depth"), (params.get("bit_depth"), str(beside)))
              if value is not None]
    for value, where in stated:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RecordingError(f"{where}: the camera's bit_depth must be a whole number ≥ 1, got {json.dumps(value)}.")
    given_bits, bits_from = stated[0] if stated else (None, "")
    target = check_pupil_output(output if output is not None else Path.cwd() / path.with_suffix(".pupil.json").name, path, beside,
                                overwrite=overwrite)
    try:
        stack = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise RecordingError(f"{path}: not a readable TIFF z-stack ({exc}).") from None
    stated_bits = own.get("bit_depth")
    for value, where in stated if stated_bits is not None else ():
        if value != stated_bits[0]:
            raise RecordingError(
                f"{path}: the camera's bit depth is {stated_bits[0]:g} in {stated_bits[1]}, but {where} says {value}; "
                "the stack's own metadata is the camera's word: correct or remove the other."
            )
    bits = int(stated_bits[0]) if stated_bits is not None else given_bits
    try:
        full_scale_counts(stack, bits)
    except ValueError as exc:
        where = stated_bits[1] if stated_bits is not None else bits_from
        raise RecordingError(f"{path}: {exc} (bit depth from {where}).") from None
    stack = np.squeeze(stack)
    if stack.ndim != 3:
        raise RecordingError(f"{path}: a bead z-stack must have 3 axes (Z, Y, X), this one has shape {stack.shape}.")
    if crop_px is not None:
        if not MIN_CROP_PX <= crop_px <= min(stack.shape[1:]):
            raise RecordingError(
                f"{path}: a crop of {crop_px}×{crop_px} pixels must be at least {MIN_CROP_PX} and at most its "
                f"{stack.shape[1]}×{stack.shape[2]} frames."
            )
    try:
        optics = Optics(wavelength_um=float(params["wavelength_um"]), n_medium=float(params["n_medium"]),
                        na=float(params["na"]), emission_fwhm_um=float(params.get("emission_fwhm_um", 0.0)))
    except GeometryError as exc:  # an NA beyond the medium's index: say where the values came from
        given = [f"--{k.replace('_', '-')}" for k in ("na", "n_medium", "wavelength_um") if overrides.get(k) is not None]
        source = " and ".join(given) if given else str(beside)
        raise RecordingError(f"{source}: the z-stack's optics are impossible: {str(exc).removeprefix('Optics: ')}") from None
    try:
        result, _, written = calibrate_stack(
            stack, optics, float(params["pixel_size_um"]), float(params["z_step_um"]), name=f"bead z-stack {path.name}",
            iterations=iterations, z_direction=z_direction, output=target, progress=progress,
            bead_diameter_um=float(bead_diameter_um), pad_px=pad_px, bit_depth=bits, crop_px=crop_px, max_beads=max_beads,
        )
    except NoBeadError as exc:
        raise RecordingError(f"{path}: {exc}") from None
    assert written is not None  # an output was given
    return result, written
