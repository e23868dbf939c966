"""Pupil self-calibration on simulated FDT frames (issue 13).

Are known aberrations and bead depths recovered with a specimen in the way?

``python -m nvplive.benchmarks.pupil_calibration [--seeds 3] [--json FILE] [--markdown FILE]``
renders, in the issue's geometry (32×64×64 voxels of 0.5×0.16×0.16 µm, λ 0.52 µm, n 1.333,
NA 0.8, focus at the volume's centre, one bead 3 µm below the volume and six on a ring 2–4 µm
below), the frames of the cell phantom (``--phantom none``: an empty volume) through a pupil with
random Zernike phase on Noll 5–22, scaled to a wavefront error of ``--rms`` rad RMS over the
pupil (the norm of the Noll-normalised coefficients, :attr:`recon.pupil.PupilParameters.aberration_rms_rad`),
and apodisation ``1 − 0.15 ρ²``, with shot and read noise, and calibrates the pupil with
:func:`recon.calibration.calibrate_pupil` from nominal positions off by 0.1 µm laterally and
0.2 µm axially. Reported: the wavefront error of the calibrated pupil against the drawn one
(RMS over the pupil of the difference on Noll 5–22, rad), the largest and the median
bead-depth error (µm), the largest lateral error, the relative residual before/after and the
time; then the same for the product's cold start on the same frames (the calibration, then
the volume with the pupil and the positions refined jointly; ``--no-joint`` skips it). The
renderer is the reconstruction's own (coherent, monochromatic); the specimen is
what the calibration does not model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import publish


def _errors(pupil, sources_um_xyz: np.ndarray, truth: np.ndarray, true_sources: np.ndarray) -> dict:
    """Wavefront error (rad RMS over the pupil on the calibration's Noll terms;
    :meth:`~nvplive.recon.pupil.PupilParameters.wavefront_error_rad`), depth errors (max,
    median) and the largest lateral error (µm)."""
    from nvplive.recon.calibration import DEFAULT_NOLL
    from nvplive.recon.pupil import PupilParameters

    depth = np.abs(sources_um_xyz[:, 2] - true_sources[:, 2])
    return {
        "wavefront_error_rms_rad": pupil.wavefront_error_rad(PupilParameters(tuple(truth)), DEFAULT_NOLL),
        "apodisation_a1": pupil.apodisation[0] if pupil.apodisation else 0.0,
        "depth_error_max_um": float(depth.max()), "depth_error_median_um": float(np.median(depth)),
        "lateral_error_max_um": float(np.abs(sources_um_xyz[:, :2] - true_sources[:, :2]).max()),
    }


def issue_frames(seed: int, rms_rad: float, phantom: str = "cell"):
    """The benchmark's problem for one seed (see the module's docstring).

    Returns ``(model, frames, nominal, sources, coefficients)``: the float64 renderer, noisy
    frames ``[7, 64, 64]`` (photo-electrons), the nominal and the true source positions
    ``[7, 3]`` (µm), and the drawn Zernike coefficients ``[21]`` (Noll 2–22, rad).
    """
    import torch

    from nvplive.recon.calibration import DEFAULT_NOLL
    from nvplive.recon.optics import Optics, VolumeGeometry
    from nvplive.recon.phantoms import make_phantom
    from nvplive.recon.physics import ForwardModel, pupil_on_grid, render
    from nvplive.recon.pupil import PupilParameters
    from nvplive.recon.simulate import CameraModel, camera_noise

    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8)
    geometry = VolumeGeometry((32, 64, 64), (0.5, 0.16, 0.16))
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 7)[:-1] + rng.uniform(0, 2 * np.pi)
    ring = np.stack([3.0 * np.cos(angles), 3.0 * np.sin(angles), -rng.uniform(2.0, 4.0, 6)], axis=1)
    sources = np.concatenate([[[0.0, 0.0, -3.0]], ring])
    coefficients = np.zeros(21)
    fitted = [j - 2 for j in DEFAULT_NOLL]
    drawn = rng.normal(size=len(fitted))
    coefficients[fitted] = drawn * rms_rad / np.linalg.norm(drawn)
    truth = PupilParameters(tuple(coefficients), (-0.15,))
    model = ForwardModel.build(optics, geometry, source_depth_um=5.0, dtype=torch.float64)
    dn = np.zeros(geometry.shape_zyx) if phantom == "none" else make_phantom(phantom, geometry.shape_zyx, geometry.voxel_um_zyx, seed=seed)
    with torch.no_grad():
        image = render(model, torch.as_tensor(dn, dtype=torch.float64), torch.as_tensor(sources),
                       pupil=pupil_on_grid(model, truth)).numpy()
    expected = image * 3000.0 / image.mean(axis=(1, 2), keepdims=True) + 5.0
    frames = camera_noise(expected, CameraModel(offset=0.0), rng).astype(np.float64)
    nominal = sources + np.concatenate([rng.normal(0, 0.1, (7, 2)), rng.normal(0, 0.2, (7, 1))], axis=1)
    return model, frames, nominal, sources, coefficients


def measure(seed: int, rms_rad: float, iterations: int, phantom: str = "cell", joint: bool = True) -> dict:
    """One calibration of simulated frames through a drawn pupil; its errors and residuals as a row.

    With ``joint``, the product's cold start (:class:`recon.reconstructor.Reconstructor`, default
    settings: the calibration, then the volume fitted with the pupil and the positions refined
    jointly) is measured on the same frames too.
    """
    import torch

    from nvplive.recon.calibration import calibrate_pupil
    from nvplive.recon.reconstructor import Reconstructor

    model, frames, nominal, sources, coefficients = issue_frames(seed, rms_rad, phantom)
    start = time.perf_counter()
    cal = calibrate_pupil(model, frames, nominal, iterations=iterations)
    row = {
        "seed": seed, "phantom": phantom, "aberration_rms_rad": rms_rad,
        **_errors(cal.pupil, cal.sources_um_xyz, coefficients, sources),
        "residual_before": cal.residual_start, "residual_after": cal.residual,
        "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
    }
    if joint:
        start = time.perf_counter()
        result = Reconstructor(model.optics, model.geometry, nominal, device="cpu").cold_start(frames.astype(np.float32))
        row["joint"] = {**_errors(result.pupil, result.sources_um_xyz, coefficients, sources),
                        "seconds": time.perf_counter() - start}
    return row


def summary(rows: list[dict]) -> str:
    """The rows as a Markdown table (with the cold start's joint refinement where measured)."""
    lines = [
        "| specimen | seed | aberration RMS (rad) | stage | wavefront error RMS (rad) | a₁ (true −0.15) | depth error max / median (µm) | lateral error max (µm) | residual before → after | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stages = [("calibration", r, f"{r['residual_before']:.3f} → {r['residual_after']:.3f}")]
        if "joint" in r:
            stages.append(("+ cold start (joint)", r["joint"], ""))
        for stage, e, residual in stages:
            lines.append(
                f"| {r['phantom']} | {r['seed']} | {r['aberration_rms_rad']:.2f} | {stage} | {e['wavefront_error_rms_rad']:.4f} | "
                f"{e['apodisation_a1']:+.3f} | {e['depth_error_max_um']:.3f} / {e['depth_error_median_um']:.3f} | "
                f"{e['lateral_error_max_um']:.3f} | {residual} | {e['seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nvplive.benchmarks.pupil_calibration", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rms", type=float, default=0.5, help="wavefront error (rad RMS over the pupil) drawn on Noll 5–22")
    parser.add_argument("--phantom", default="cell", help="the specimen in the volume (a phantom name, or none)")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--no-joint", action="store_true", help="measure the calibration alone, not the cold start after it")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    rows = [measure(seed, args.rms, args.iterations, args.phantom, not args.no_joint) for seed in range(args.seeds)]
    publish(summary(rows), rows, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
