"""Warm-update latency of the desktop app on the simulated microscope (issue 6).

``python -m nvplive.benchmarks.app_latency [--seconds 100] [--json FILE] [--markdown FILE]``
opens the real main window (needs a display: a desktop, or ``xvfb-run``), starts the demo
live with the app's default settings (32×64×64 voxels, 7 views, 1 s latency budget), lets it
run, and reports every warm update from the reconstruction worker's records: time inside
``warm_update``, frames-complete-to-volume-written latency and iterations. This is the
headless demo's measurement with the window's rendering competing for the cores.

It also measures the GUI thread's responsiveness: the gaps between the ticks of a 10 ms
``QTimer`` over the whole run (a GUI thread that waited on the camera or the reconstruction
would show gaps of seconds). The tests check where the work runs, not how long it takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import publish

#: Interval of the probe timer whose tick gaps measure the GUI thread's responsiveness (ms).
PROBE_INTERVAL_MS = 10


def measure(seconds: float, device: str = "cpu") -> tuple[list[dict], list[float]]:
    """Run the app's demo for ``seconds``; returns one row per reconstructed timepoint and the
    gaps (s) between consecutive ticks of a :data:`PROBE_INTERVAL_MS` timer on the GUI thread."""
    import torch
    import vispy

    vispy.use("pyside6")
    from PySide6 import QtCore, QtWidgets

    from nvplive.app.main_window import MainWindow
    from nvplive.recon.reconstructor import live_cpu_threads

    torch.set_num_threads(live_cpu_threads())
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="nvplive-app-latency-") as tmp:
        settings = QtCore.QSettings(str(Path(tmp) / "settings.ini"), QtCore.QSettings.Format.IniFormat)
        window = MainWindow(demo=True, device=device, timepoints=0, qsettings=settings,
                            scratch_dir=Path(tmp) / "scratch", durable=False)
        window.resize(1280, 800)
        window.show()
        _spin(app, 1.0)
        ticks: list[float] = []
        probe = QtCore.QTimer()
        probe.setInterval(PROBE_INTERVAL_MS)
        probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
        probe.start()
        window.start_acquisition(record=False)
        records = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            _spin(app, 0.05)
            if window.session is not None:
                records = list(window.session.worker.records)
        window.stop_acquisition()
        end = time.perf_counter() + 60
        while window.session is not None and time.perf_counter() < end:
            _spin(app, 0.05)
        probe.stop()
        window.close()
        _spin(app, 0.2)
    rows = [
        {"t": r.t, "warm": i > 0, "seconds": round(r.seconds, 3), "latency_s": round(r.latency_s, 3), "iterations": r.iterations}
        for i, r in enumerate(records)
    ]
    return rows, [b - a for a, b in zip(ticks[:-1], ticks[1:])]


def _spin(app, seconds: float) -> None:
    """Process Qt events for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def responsiveness(gaps: list[float]) -> str:
    """One Markdown line on the GUI thread's timer-tick gaps (s)."""
    if not gaps:
        return "GUI thread: the probe timer never ticked twice."
    ms = sorted(1000.0 * g for g in gaps)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return (f"GUI thread: gaps between ticks of a {PROBE_INTERVAL_MS} ms timer over {len(ms)} intervals: "
            f"max {ms[-1]:.0f} ms, 99th percentile {p99:.0f} ms, median {statistics.median(ms):.0f} ms.")


def summary(rows: list[dict], seconds: float, gaps: list[float] = ()) -> str:
    """The Markdown summary of the warm updates' latencies and the GUI thread's tick gaps (BENCHMARKS.md)."""
    warm = [r for r in rows if r["warm"]]
    lines = [f"### App warm-update latency ({time.strftime('%Y-%m-%d')}, `python -m nvplive.benchmarks.app_latency`)", "",
             responsiveness(list(gaps)), ""]
    if not warm:
        return "\n".join(lines + [f"No warm update within {seconds:.0f} s (cold start only)."]) + "\n"
    inside = [r["seconds"] for r in warm]
    latency = [r["latency_s"] for r in warm]
    over = [r for r in warm if r["seconds"] > 1.0]
    lines += [
        f"{len(warm)} warm updates in {seconds:.0f} s of the live demo (cold start {rows[0]['seconds']:.1f} s, "
        f"{rows[0]['iterations']} iterations).",
        "",
        "| | median | max | min |",
        "|---|---|---|---|",
        f"| time in `warm_update` (s) | {statistics.median(inside):.2f} | {max(inside):.2f} | {min(inside):.2f} |",
        f"| frames complete → volume written (s) | {statistics.median(latency):.2f} | {max(latency):.2f} | {min(latency):.2f} |",
        f"| iterations | {statistics.median(r['iterations'] for r in warm):.1f} | {max(r['iterations'] for r in warm)} | "
        f"{min(r['iterations'] for r in warm)} |",
        "",
        f"Updates above 1 s: {len(over)} of {len(warm)}" + (f" (timepoints {[r['t'] for r in over]})." if over else "."),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the live demo in the app for ``--seconds`` and report its warm-update latency; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nvplive.benchmarks.app_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=100.0, help="how long the live demo runs (s)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    rows, gaps = measure(args.seconds, args.device)
    publish(summary(rows, args.seconds, gaps), rows, args.json, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
