"""Real bead z-stack: how well the renderer explains a measured objective, before and after the pupil calibration (issue 13).

``python -m nvplive.benchmarks.bead_stack [STACK.tif] [--iterations 150] [--json FILE] [--markdown FILE]``
fits the measured z-stack of one bead (default ``../shared/data/bead_zstack_na1.1_water.tif``
relative to the repository, parameters from the JSON beside it) and reports the relative
residual ``‖model − measured‖ / ‖measured − background‖`` over the stack:

- *hard pupil*: the renderer's hard aperture, each plane's brightness, background, lateral
  position and depth fitted freely (what the issue measured before any calibration);
- *calibrated*: the product's own calibration (:func:`recon.calibration.calibrate_bead_stack`:
  Zernike Noll 5–22 and radial apodisation shared by every plane, each plane's brightness,
  background, position and depth free as before), starting from either z direction;
- *noise*: an estimate of the residual that noise alone leaves (upper bound), the
  energy of each plane's difference from its 3×3 mean (×9/8), relative to the same norm.

Without the data file it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import publish

DEFAULT_STACK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bead_zstack_na1.1_water.tif"


def noise_residual(stack: np.ndarray) -> float:
    """Relative residual that the noise alone would leave (an upper bound: a 3×3 high-pass
    also takes the in-focus planes' sharpest detail)."""
    from scipy import ndimage

    noise = signal = 0.0
    for plane in np.asarray(stack, dtype=np.float64):
        background = float(np.median(plane))
        noise += float(((plane - ndimage.uniform_filter(plane, 3)) ** 2).sum()) * 9 / 8
        signal += float(((plane - background) ** 2).sum())
    return float(np.sqrt(noise / signal))


def measure(path: Path, iterations: int) -> list[dict]:
    """One row per z direction: residuals before/after, the pupil, the time."""
    import tifffile
    import torch

    from nvplive.recon.calibration import calibrate_bead_stack
    from nvplive.recon.optics import Optics

    params = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    stack = tifffile.imread(path)
    optics = Optics(wavelength_um=params["wavelength_um"], n_medium=params["n_medium"], na=params["na"], emission_fwhm_um=0.0)
    floor = noise_residual(stack)
    rows = []
    for direction in (1, -1):
        start = time.perf_counter()
        result = calibrate_bead_stack(stack, optics, params["pixel_size_um"], params["z_step_um"], iterations=iterations,
                                      z_direction=direction)
        pupil = result.calibration.pupil
        depths = result.calibration.sources_um_xyz[:, 2]
        rows.append({
            "stack": path.name, "z_direction": direction, "residual_hard": result.residual_hard,
            "residual_calibrated": result.residual, "noise_residual": floor,
            "aberration_rms_rad": pupil.aberration_rms_rad, "zernike_rad": list(pupil.zernike_rad),
            "apodisation": list(pupil.apodisation),
            "focal_shift_per_step": float(abs(np.diff(depths).mean()) / params["z_step_um"]),  # mean, fitted
            "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
        })
    return rows


def summary(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| stack | z direction | hard pupil (per-plane fit) | calibrated | noise alone (upper bound) | aberration RMS (rad) | apodisation | focal shift / step | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stack']} | {r['z_direction']:+d} | {r['residual_hard']:.3f} | {r['residual_calibrated']:.3f} | "
            f"{r['noise_residual']:.3f} | {r['aberration_rms_rad']:.3f} | {', '.join(f'{a:+.2f}' for a in r['apodisation'])} | "
            f"{r['focal_shift_per_step']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Fit the bead z-stack and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nvplive.benchmarks.bead_stack", description=__doc__.splitlines()[0])
    parser.add_argument("stack", type=Path, nargs="?", default=DEFAULT_STACK, help="bead z-stack TIFF (JSON beside it)")
    parser.add_argument("--iterations", type=int, default=150, help="L-BFGS iterations per pass")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    if not args.stack.is_file() or not args.stack.with_suffix(".json").is_file():
        print(f"bead_stack: {args.stack} (or the JSON beside it) is not there; nothing to measure.")
        return 0
    rows = measure(args.stack, args.iterations)
    publish(summary(rows), rows, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
