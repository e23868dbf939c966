"""How soon Cancel stops the app's pupil fit (issue 13, "Calibrate pupil").

``python -m nvplive.benchmarks.pupil_cancel [--delays 0.3 0.8 1.3]`` takes the app's default
bead z-stack (``BeadStackPlan``: ±2 µm every 0.25 µm, 17 planes) through the MDA of the
default simulated microscope (7 views) and runs the app's fit on it
(:func:`~nvplive.acquisition.bead_stack.calibrate_bead_stack_acquired`, 150 iterations, z
direction +1, one torch thread). After the sixth evaluation another thread sets the cancel
event ``delay`` seconds later; reported per delay: seconds per model evaluation and from the
cancel to ``CalibrationCancelled`` (at most one evaluation: the fit checks after each).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time


def measure(delays: list[float]) -> list[dict]:
    """One cancelled fit per delay; rows of seconds per evaluation and cancel latency."""
    import torch

    from nvplive.acquisition.bead_stack import BeadStackPlan, acquire_bead_stack, calibrate_bead_stack_acquired
    from nvplive.acquisition.live import load_demo_microscope
    from nvplive.recon.progress import CalibrationCancelled

    torch.set_num_threads(1)
    microscope = load_demo_microscope(7, 20.0)
    bead = acquire_bead_stack(microscope.core, microscope.info, BeadStackPlan(z_direction=1))
    rows = []
    for delay in delays:
        cancel = threading.Event()
        stamps: list[float] = []
        set_at: list[float] = []

        def fire(event: threading.Event = cancel, at: list[float] = set_at) -> None:
            at.append(time.perf_counter())
            event.set()

        def progress(done: int, total: int, message: str, stamps: list[float] = stamps, delay: float = delay,
                     fire=fire) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) == 6:
                threading.Timer(delay, fire).start()

        try:
            calibrate_bead_stack_acquired(bead, iterations=150, progress=progress, cancel=cancel)
        except CalibrationCancelled:
            end = time.perf_counter()
            rows.append({"delay_s": delay, "stack": list(bead.stack.shape), "evaluation_s": (stamps[5] - stamps[0]) / 5,
                         "cancel_to_stop_s": end - set_at[0], "evaluations": len(stamps)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print one line per delay."""
    parser = argparse.ArgumentParser(prog="python -m nvplive.benchmarks.pupil_cancel", description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.3, 0.8, 1.3])
    args = parser.parse_args(argv)
    for row in measure(args.delays):
        print(f"stack {row['stack']}: cancel {row['delay_s']:.1f} s after an evaluation → stopped after "
              f"{row['cancel_to_stop_s']:.2f} s ({row['evaluation_s']:.2f} s per evaluation, {row['evaluations']} evaluations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
