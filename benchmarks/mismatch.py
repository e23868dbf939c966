"""``nvplive bench quality --mismatch``: Δn quality when the instrument is not the model (issue 13).

The frames are simulated with an :class:`~nvplive.recon.simulate.Instrument` the
reconstruction is not told (pupil apodisation, spherical aberration, source NA,
a drawn realistic objective; polychromatic light, 0.2 µm beads, two propagation
steps per voxel for the non-matched rows) and reconstructed with the default
model (hard aperture, default source NA), told only λ, NA, n, the voxel size, the
nominal bead positions and the beads' diameter (:data:`BEAD_DIAMETER_UM`: on their label, and
a recording states it). Every row carries the all-zero volume's absolute-Δn
PSNR, the floor a reconstruction must beat. Two geometries, both scaled down so
that the grid runs on two CPU cores: the standard one (beads 6 µm below a 4 µm
volume, 0.25 µm voxels, λ 0.6, n 1.33) and a thick one (12 µm volume of
0.5×0.16×0.16 µm voxels, λ 0.52, n 1.333, beads 2–4 µm below, focus in the middle).
The default runs a representative subset; ``--full`` the whole grid.

Pupil calibration runs in one of three ways per row (``calibration``): on the frames
(``True``, the default of ``reconstruct``), not at all (``False``: the hard aperture), or on a
bead z-stack through the same instrument without the specimen (``"bead stack"``: what
``nvplive calibrate STACK.tif`` and the app's "Calibrate pupil" give a user, then
``reconstruct --pupil FILE``: the calibration on the frames starts from that pupil).
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from . import publish

#: name → (geometry, views, cold iterations); small enough for 2 cores.
GEOMETRIES = {
    "standard": {"shape_zyx": (16, 40, 40), "voxel_um_zyx": (0.25, 0.25, 0.25), "thick": False},
    "thick": {"shape_zyx": (24, 40, 40), "voxel_um_zyx": (0.5, 0.16, 0.16), "thick": True},
}
VIEWS = 7
ITERATIONS = 150
FULL_ITERATIONS = 300

#: name → instrument description (see :func:`_instrument`).
INSTRUMENTS = {
    "matched": {},
    "apodisation 10 %": {"apodisation": -0.1},
    "apodisation 20 %": {"apodisation": -0.2},
    "spherical 0.5 rad": {"spherical": 0.5},
    "spherical 1 rad": {"spherical": 1.0},
    "source NA = NA": {"source_na": "na"},
    "source NA 0.98 n": {"source_na": "near_n"},
    "realistic (seed 0)": {"realistic": 0},
}
SUBSET = {
    "standard": ("matched", "apodisation 20 %", "spherical 1 rad", "source NA = NA", "realistic (seed 0)"),
    "thick": ("matched", "realistic (seed 0)"),
}
METHODS = ("nvp", "explicit", "triplane")
#: The ways a row gets its pupil (see the module docstring), in the table's order.
#: Diameter of the simulated beads (µm, two emitters each), told to the reconstruction and the
#: stack's calibration (a row's ``overrides`` may tell another, e.g. 0: point sources, as the
#: tables measured before 2026-12-01 did).
BEAD_DIAMETER_UM = 0.2
CALIBRATIONS = (True, "bead stack", False)
CALIBRATION_NAMES = {True: "frames", "bead stack": "bead z-stack", False: "none"}
#: The simulated bead z-stack: one bead from STACK_HALF_RANGE_UM above the focal plane to as far
#: below, planes STACK_STEP_UM apart, on a field of STACK_FIELD × STACK_FIELD camera pixels.
STACK_HALF_RANGE_UM = 2.0
STACK_STEP_UM = 0.5
STACK_FIELD = 64
#: The seed of the specimen, the beads, the noise and the stated bead positions.
SEED = 0
TASK_KEYS = ("geometry", "instrument", "method", "iterations", "calibration", "position_error_um")


def _instrument(spec: dict, optics):
    from nvplive.recon.pupil import PupilParameters
    from nvplive.recon.simulate import REALISTIC_SOURCE_NA_FRACTION, Instrument

    if "realistic" in spec:
        return Instrument.realistic(optics, seed=spec["realistic"])
    if not spec:
        return Instrument()
    zernike = [0.0] * 21
    if "spherical" in spec:
        zernike[11 - 2] = spec["spherical"]
    pupil = PupilParameters(zernike_rad=tuple(zernike), apodisation=(spec.get("apodisation", 0.0),))
    source_na = None
    if spec.get("source_na") == "na":
        source_na = optics.na
    elif spec.get("source_na") == "near_n":
        source_na = REALISTIC_SOURCE_NA_FRACTION * optics.n_medium
    return Instrument("custom", pupil, source_na, 2, None)


def _optics(geometry_name: str):
    """The microscope of a geometry (:data:`GEOMETRIES`): the thick one's, or the default."""
    from nvplive.recon.optics import Optics
    from nvplive.recon.simulate import THICK_OPTICS

    return THICK_OPTICS if GEOMETRIES[geometry_name]["thick"] else Optics()


def _setup(geometry_name: str, instrument_name: str, seed: int = 0):
    from nvplive.recon.optics import VolumeGeometry
    from nvplive.recon.phantoms import make_phantom
    from nvplive.recon.simulate import CameraModel, PartialCoherence, Simulator, default_sources, thick_sources

    g = GEOMETRIES[geometry_name]
    optics = _optics(geometry_name)
    geometry = VolumeGeometry(g["shape_zyx"], g["voxel_um_zyx"])
    if g["thick"]:
        sources = thick_sources(geometry, VIEWS, seed=seed)
    else:
        sources = default_sources(geometry, VIEWS, depth_um=1.5 * geometry.extent_um_zyx[0], seed=seed)
    truth = make_phantom("cell", geometry.shape_zyx, geometry.voxel_um_zyx, seed=seed)
    instrument = _instrument(INSTRUMENTS[instrument_name], optics)
    sim = Simulator(optics, geometry, sources, coherence=PartialCoherence(3, BEAD_DIAMETER_UM, 2), camera=CameraModel(), seed=seed,
                    instrument=instrument)
    frames = sim.frames(truth, np.random.default_rng(seed))
    return optics, geometry, sources, truth, frames


def stack_calibration(geometry_name: str, instrument_name: str, seed: int = 0, bead_diameter_um: float = 0.0):
    """The pupil a user would calibrate on a bead z-stack through the row's instrument
    (no specimen): simulated like the frames (polychromatic, 0.2 µm bead, the instrument's
    pupil, source NA and sampling), fitted by :func:`~nvplive.recon.calibration.calibrate_bead_stack`
    with the stack's direction known, told λ, NA, n, the pixel size, the z step and
    ``bead_diameter_um`` (the reconstruction's, as a user gives both the same)."""
    from nvplive.acquisition.bead_stack import AUTO_EXPOSURE_FILL
    from nvplive.recon.calibration import calibrate_bead_stack
    from nvplive.recon.optics import VolumeGeometry, full_scale
    from nvplive.recon.simulate import CameraModel, PartialCoherence, Simulator

    g = GEOMETRIES[geometry_name]
    optics = _optics(geometry_name)
    dx = g["voxel_um_zyx"][2]
    # the focal plane below a two-slab empty volume, the bead from above it to below it
    focal = -(STACK_HALF_RANGE_UM + 0.1)
    geometry = VolumeGeometry((2, STACK_FIELD, STACK_FIELD), g["voxel_um_zyx"], focal_plane_z_um=focal)
    heights = np.arange(STACK_HALF_RANGE_UM, -STACK_HALF_RANGE_UM - STACK_STEP_UM / 2, -STACK_STEP_UM)
    bead = np.stack([np.zeros_like(heights), np.zeros_like(heights), focal + heights], 1)
    sim = Simulator(optics, geometry, bead, coherence=PartialCoherence(3, BEAD_DIAMETER_UM, 2), camera=CameraModel(), seed=seed,
                    instrument=_instrument(INSTRUMENTS[instrument_name], optics),
                    relative_brightness=np.ones(len(bead)), background=np.full(len(bead), 5.0))
    empty = np.zeros(geometry.shape_zyx, np.float32)
    # the exposure the app's automatic exposure picks: the in-focus peak at AUTO_EXPOSURE_FILL
    # of the camera's range (a saturated stack hides the peak the pupil's amplitude shapes)
    span = full_scale(sim.camera.bit_depth) - sim.camera.offset
    peak = float((sim.expected(empty) - sim.background[:, None, None]).max()) * sim.camera.gain
    sim.relative_brightness = sim.relative_brightness * AUTO_EXPOSURE_FILL * span / peak
    stack = sim.frames(empty, np.random.default_rng(seed))
    return calibrate_bead_stack(stack, optics, dx, STACK_STEP_UM, z_direction=1, bead_diameter_um=bead_diameter_um)


def _run(task: dict) -> dict:
    """One reconstruction; a refusal or failure becomes a row with its message."""
    try:
        return _reconstruct(task)
    except Exception as exc:  # reported in the table, the benchmark goes on
        return {**{k: task.get(k) for k in TASK_KEYS}, "error": f"{type(exc).__name__}: {exc}"}


def _reconstruct(task: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from nvplive.recon.metrics import absolute_scores
    from nvplive.recon.reconstructor import ReconConfig, Reconstructor
    from nvplive.recon.simulate import stated_positions

    optics, geometry, sources, truth, frames = _setup(task["geometry"], task["instrument"], SEED)
    # a task without position errors (as the one-off runs in BENCHMARKS.md were written) is told the true positions
    nominal = stated_positions(sources, tuple(task.get("position_error_um", (0.0, 0.0))), seed=SEED)
    bead = float(task.get("overrides", {}).get("bead_diameter_um", BEAD_DIAMETER_UM))
    stack = (
        stack_calibration(task["geometry"], task["instrument"], bead_diameter_um=bead) if task["calibration"] == "bead stack" else None
    )
    settings = {"method": task["method"], "iterations": task["iterations"], "pupil_calibration": task["calibration"] is not False,
                "bead_diameter_um": bead}
    config = ReconConfig(**{**settings, **task.get("overrides", {})})
    # The reconstruction is told λ, NA, n (not the simulator's source NA or pupil), the
    # voxel size, the nominal bead positions (off the true ones by the task's errors) and the beads' diameter;
    # with "bead stack", the calibration on the frames starts from the pupil fitted on the stack
    # (`reconstruct --pupil FILE`).
    rec = Reconstructor(optics, geometry, nominal, camera_offset=100.0, config=config, device="cpu",
                        pupil=None if stack is None else stack.calibration.pupil)
    start = time.perf_counter()
    result = rec.cold_start(frames)
    true_pupil = _instrument(INSTRUMENTS[task["instrument"]], optics).pupil
    row = {
        **{k: task.get(k) for k in TASK_KEYS},
        "overrides": task.get("overrides", {}),
        "psnr_db": round(float(absolute_scores(result.dn, truth).psnr_db), 3),
        "zero_psnr_db": round(float(absolute_scores(np.zeros_like(truth), truth).psnr_db), 3),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if result.message:
        row["message"] = result.message
    if stack is not None:
        row["stack_pupil_error_rad"] = round(stack.calibration.pupil.wavefront_error_rad(true_pupil, stack.calibration.noll), 4)
        row["stack_apodisation"] = [round(v, 4) for v in stack.calibration.pupil.apodisation]
    calibration = rec.calibration
    if calibration is not None:
        row["pupil_error_rad"] = round(calibration.pupil.wavefront_error_rad(true_pupil, calibration.noll), 4)
        row["pupil_residual"] = round(float(calibration.residual), 4)
        row["source_edge_na"] = [round(v, 4) for v in calibration.pupil.source_edge_na]
    if rec.pupil is not None:  # after the joint refinement
        row["source_beyond_na"] = round(rec.pupil.source_beyond_na, 3)
    return row


def run_mismatch(
    full: bool = False,
    workers: int | None = None,
    progress=print,
    subset: dict[str, tuple[str, ...]] | None = None,
    calibration: tuple[bool | str, ...] | None = None,
    overrides: dict | None = None,
    position_error_um: tuple[float, float] | None = None,
) -> list[dict]:
    """Reconstruct every (geometry, instrument, method, calibration) row in worker processes; one dict per row.

    ``subset`` (geometry → instrument names) overrides the default subset (``full``: all);
    ``calibration``: the ways the rows get their pupil (:data:`CALIBRATIONS`: on the frames,
    ``"bead stack"``, none; default: frames and none, ``full``: all three);
    ``overrides`` are :class:`~nvplive.recon.reconstructor.ReconConfig` fields for every row
    (recorded in each row as ``overrides``). The reconstructions are told bead positions off
    the true ones by normal draws of ``position_error_um`` (lateral, axial standard deviations,
    µm; :func:`~nvplive.recon.simulate.stated_positions`; default: a realistic instrument's,
    :data:`~nvplive.recon.simulate.REALISTIC_BEAD_POSITION_ERROR_UM`), as a user states them,
    in every row: the positions are what the user knows, not part of the instrument, so the
    "matched" rows get them too; ``(0, 0)`` gives the true ones, as every table before
    2026-12-02 did.
    """
    from nvplive.recon.simulate import REALISTIC_BEAD_POSITION_ERROR_UM

    if position_error_um is None:
        position_error_um = REALISTIC_BEAD_POSITION_ERROR_UM
    iterations = FULL_ITERATIONS if full else ITERATIONS
    calibration = calibration if calibration is not None else (CALIBRATIONS if full else (True, False))
    chosen = subset if subset is not None else ({g: tuple(INSTRUMENTS) for g in GEOMETRIES} if full else SUBSET)
    tasks = [
        {
            "geometry": geometry, "instrument": instrument, "method": method, "iterations": iterations,
            "calibration": calibrated, "overrides": dict(overrides or {}), "position_error_um": tuple(position_error_um),
        }
        for calibrated in calibration
        for geometry in chosen
        for instrument in chosen[geometry]
        for method in METHODS
    ]
    workers = workers or max(1, min(len(tasks), os.cpu_count() or 1))
    rows = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, row in enumerate(pool.map(_run, tasks)):
            rows.append(row)
            outcome = row.get("error") or f"{row['psnr_db']:.2f} dB (all-zero {row['zero_psnr_db']:.2f}) in {row['seconds']:.0f} s"
            how = f"pupil: {CALIBRATION_NAMES[row['calibration']]}"
            progress(f"[{i + 1}/{len(tasks)}] {row['geometry']} {row['instrument']} {row['method']} ({how}): {outcome}")
    return rows


def markdown_table(rows: list[dict], seconds: float, full: bool) -> str:
    """The rows as the BENCHMARKS.md table (margins against all-zero, Explicit and the matched
    instrument with the same calibration setting; the calibrated pupil's error and residual)."""
    lines = [
        f"### Instrument mismatch ({time.strftime('%Y-%m-%d')}, `nvplive bench quality --mismatch{' --full' if full else ''}`)",
        "",
        f"Machine: {platform.node()} {platform.machine()} CPU, {os.cpu_count()} cores, one torch thread per worker; "
        f"cell phantom, {VIEWS} views, {rows[0]['iterations']} cold iterations, beads of {BEAD_DIAMETER_UM:g} µm told to the "
        "reconstruction, bead positions told off the true ones by normal draws of "
        f"{rows[0]['position_error_um'][0]:g} µm per bead and {rows[0]['position_error_um'][1]:g} µm for the bead layer's "
        "depth (standard deviations, every row), absolute-Δn PSNR (dB); "
        f"wall time {seconds / 60:.1f} min. Pupil error: the calibrated pupil's wavefront error against the true one "
        "(rad RMS over the pupil, on the fitted Noll indices); residual: the calibration's relative image residual.",
        "",
        "| geometry | instrument | pupil calibrated on | all-zero | NVP | Explicit | Triplane | NVP − all-zero | "
        "NVP − Explicit | NVP − matched | wavefront error (rad RMS) | residual |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["geometry"], r["instrument"], r["method"], r["calibration"]): r for r in rows}
    for calibrated in CALIBRATIONS:
        for geometry in GEOMETRIES:
            matched = by_key.get((geometry, "matched", "nvp", calibrated))
            matched = matched if matched is not None and "error" not in matched else None
            for instrument in INSTRUMENTS:
                cells = {m: by_key.get((geometry, instrument, m, calibrated)) for m in METHODS}
                if cells["nvp"] is None:
                    continue
                head = f"| {geometry} | {instrument} | {CALIBRATION_NAMES[calibrated]} |"
                if any(c is not None and "error" in c for c in cells.values()):
                    errors = "; ".join(f"{m}: {c['error']}" for m, c in cells.items() if c is not None and "error" in c)
                    lines.append(f"{head} – | refused or failed: {errors} | | | | | | | |")
                    continue
                nvp = cells["nvp"]["psnr_db"]
                fmt = {m: "–" if c is None else f"{c['psnr_db']:.2f}" for m, c in cells.items()}
                vs_exp = "–" if cells["explicit"] is None else f"{nvp - cells['explicit']['psnr_db']:+.2f}"
                vs_matched = "–" if matched is None else f"{nvp - matched['psnr_db']:+.2f}"
                error = cells["nvp"].get("pupil_error_rad")
                residual = cells["nvp"].get("pupil_residual")
                lines.append(
                    f"{head} {cells['nvp']['zero_psnr_db']:.2f} | {fmt['nvp']} | {fmt['explicit']} | {fmt.get('triplane', '–')} | "
                    f"{nvp - cells['nvp']['zero_psnr_db']:+.2f} | {vs_exp} | {vs_matched} | "
                    f"{'–' if error is None else f'{error:.3f}'} | {'–' if residual is None else f'{residual:.3f}'} |"
                )
    lines.append("")
    return "\n".join(lines)


def main(json_path=None, full: bool = False, markdown=None) -> int:
    """Run the table, print it, write JSON / append Markdown if asked."""
    start = time.perf_counter()
    rows = run_mismatch(full=full)
    publish(markdown_table(rows, time.perf_counter() - start, full), rows, json_path, markdown)
    return 0
