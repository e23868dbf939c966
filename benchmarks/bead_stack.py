"""Real bead z-stack: how well the renderer explains a measured objective, before and after the pupil calibration (issue 13).

``python -m nvplive.benchmarks.bead_stack [STACK.tif] [--crop 64] [--pad 100] [--iterations 40] [--z-direction -1]
[--rows hard,zernike,...] [--json FILE] [--markdown FILE]``
fits the measured z-stack of one bead (default ``../shared/data/bead_zstack_na1.1_water.tif``
relative to the repository, parameters from the JSON beside it) and reports the relative
residual ``‖model − measured‖ / ‖measured − background‖`` over the stack, one row per model
(:data:`ROWS`), each plane's brightness, background, lateral position and depth free in
every row (:func:`recon.calibration.calibrate_pupil` on :func:`recon.calibration.bead_stack_views`):

- *hard*: the renderer's hard aperture (the issue's "before");
- *zernike*: the product's calibration, Zernike Noll 5–22 and apodisation ``1 + a₁ρ² + a₂ρ⁴``;
- *restart*: the same with the planes' positions restarted through the fitted pupil
  (``calibrate_pupil``'s ``restart_positions``, on for FDT frames, off for a stack);
- the same with one model term added: a finite bead, the emission
  band, more Zernike and apodisation terms;
- *free-form*: a pixel-wise amplitude and phase map over the pupil on top of the Zernike one,
  and its projection back to Zernike + apodisation (what ``pupil.json`` stores);
- the *noise floor*: the residual the true image would leave given the stack's pixel noise
  (:func:`recon.calibration.camera_noise`, from the spectrum beyond the optics' band). The
  first row takes each plane's median as its background (no model); every fitted row has its
  own floor, against the background that row fitted (the one its residual is measured from;
  :meth:`recon.calibration.CameraNoise.expected_residual`), and its *excess*
  ``√(residual² − floor²)``, the part of the residual the model leaves.

``--crop N`` fits the ``N × N`` pixels around the brightest pixel (the floor is that of the
crop: a smaller crop holds less background noise for the same light); ``--pad P`` pads the
renderer by P pixels per side instead of the default for the bead's depth (≈10× faster for
0.4 % image error at 3 µm defocus). Without the data file it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import publish

DEFAULT_STACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bead_zstack_na1.1_water.tif"

#: Each row: what it is, and the keywords of ``calibrate_pupil`` (``emission_fwhm_um`` picks the band,
#: ``bead_diameter_um`` the renderer's bead).
ROWS: dict[str, tuple[str, dict]] = {
    "hard": ("hard aperture", {"noll": (), "apodisation_terms": 0}),
    "zernike": ("Zernike Noll 5–22 + apodisation a₁ρ² + a₂ρ⁴ (product default)", {}),
    "restart": ("+ the planes' positions restarted through the fitted pupil", {"restart_positions": True}),
    "bead150": ("+ bead 0.15 µm", {"bead_diameter_um": 0.15}),
    "band30": ("+ emission band 30 nm FWHM (3 wavelengths)", {"emission_fwhm_um": 0.03}),
    "noll37": ("Zernike Noll 5–37 + apodisation to ρ⁸", {"noll": tuple(range(5, 38)), "apodisation_terms": 4}),
    "free33": ("free-form pupil 33 × 33 on top of the Zernike one", {"free_form": 33}),
}


def measure(path: Path, iterations: int, crop: int | None, pad: int | None, z_direction: int, rows: list[str]) -> list[dict]:
    """One row per model: residual, excess over the noise floor, the pupil, the time."""
    import tifffile
    import torch

    from nvplive.recon.calibration import bead_stack_views, calibrate_pupil
    from nvplive.recon.optics import Optics

    params = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    full = tifffile.imread(path)
    pixel, step = params["pixel_size_um"], params["z_step_um"]

    def optics(fwhm: float = 0.0) -> Optics:
        return Optics(wavelength_um=params["wavelength_um"], n_medium=params["n_medium"], na=params["na"], emission_fwhm_um=fwhm)

    pad_yx = None if pad is None else (pad, pad)
    whole = bead_stack_views(full, optics(), pixel, step, pad_yx=(0, 0))  # the camera's noise, from the whole frame
    views = bead_stack_views(full, optics(), pixel, step, pad_yx=pad_yx, crop_px=crop)
    if whole.noise is None:
        raise SystemExit(f"bead_stack: {path.name}'s pixels are too coarse for the noise estimate beyond the band.")
    floor = whole.noise.expected_residual(views.frames, views.valid)
    common = {"stack": path.name, "crop": f"{views.frames.shape[1]}×{views.frames.shape[2]}", "beads": views.describe(), "z_direction": z_direction,
              "iterations": iterations, "threads": torch.get_num_threads()}
    out = [{**common, "row": "noise", "model": "noise floor (pixel noise beyond the band, photon transfer)",
            "residual": floor, "floor": floor, "residual_whole_frame": whole.noise.residual_floor,
            "gain_counts_per_electron": whole.noise.gain, "read_variance_counts2": whole.noise.read_variance}]
    for key in rows:
        label, keywords = ROWS[key]
        keywords = dict(keywords)
        fwhm = keywords.pop("emission_fwhm_um", 0.0)
        bead = keywords.pop("bead_diameter_um", 0.0)
        keywords.setdefault("restart_positions", False)  # as calibrate_bead_stack
        problem = (
            bead_stack_views(full, optics(fwhm), pixel, step, pad_yx=pad_yx, bead_diameter_um=bead, crop_px=crop) if fwhm or bead
            else views
        )
        start = time.perf_counter()
        cal = calibrate_pupil(problem.model, problem.frames, problem.sources(z_direction), valid=problem.valid,
                              axial="view", iterations=iterations, band=problem.band, **keywords)
        residual = cal.residual if cal.residual_free_form is None else cal.residual_free_form
        own_floor = whole.noise.expected_residual(problem.frames, problem.valid, cal.background)
        out.append({
            **common, "row": key, "model": label, "residual": residual, "floor": own_floor,
            "excess": math.sqrt(max(residual**2 - own_floor**2, 0.0)),
            "residual_projected": cal.residual if cal.residual_free_form is not None else None,
            "aberration_rms_rad": cal.pupil.aberration_rms_rad, "zernike_rad": list(cal.pupil.zernike_rad),
            "apodisation": list(cal.pupil.apodisation),
            "focal_shift_per_step": float(abs(np.diff(cal.sources_um_xyz[:, 2]).mean()) / step),
            "seconds": time.perf_counter() - start,
        })
    return out


def summary(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| model | relative residual | noise floor (against the row's background) | excess over it | aberration RMS (rad) | apodisation | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["row"] == "noise":
            lines.append(
                f"| {r['model']}: gain {r['gain_counts_per_electron']:.2f} counts/e⁻, σ₀² {r['read_variance_counts2']:.1f} counts² "
                f"(whole frame: {r['residual_whole_frame']:.3f}), against each plane's median | **{r['residual']:.3f}** | "
                f"{r['floor']:.3f} | 0 | | | |"
            )
            continue
        residual = f"{r['residual']:.3f}"
        if r.get("residual_projected") is not None:
            residual += f" (projected to Zernike + apodisation: {r['residual_projected']:.3f})"
        lines.append(
            f"| {r['model']} | {residual} | {r['floor']:.3f} | {r['excess']:.3f} | {r['aberration_rms_rad']:.3f} | "
            f"{', '.join(f'{a:+.2f}' for a in r['apodisation'])} | {r['seconds']:.0f} |"
        )
    first = rows[0]
    lines.append(f"\n{first['stack']}, crop {first['crop']}, z direction {first['z_direction']:+d}, "
                 f"{first['iterations']} L-BFGS iterations per pass, {first['threads']} torch thread(s).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Fit the bead z-stack with each model and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nvplive.benchmarks.bead_stack", description=__doc__.splitlines()[0])
    parser.add_argument("stack", type=Path, nargs="?", default=DEFAULT_STACK, help="bead z-stack TIFF (JSON beside it)")
    parser.add_argument("--iterations", type=int, default=40, help="L-BFGS iterations per pass")
    parser.add_argument("--crop", type=int, default=None, help="fit the N × N pixels around the bead")
    parser.add_argument("--pad", type=int, default=None, help="renderer padding per side (pixels)")
    parser.add_argument("--z-direction", type=int, choices=(-1, 1), default=-1)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    if not args.stack.is_file() or not args.stack.with_suffix(".json").is_file():
        print(f"bead_stack: {args.stack} (or the JSON beside it) is not there; nothing to measure.")
        return 0
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    measured = measure(args.stack, args.iterations, args.crop, args.pad, args.z_direction, rows)
    publish(summary(measured), measured, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
