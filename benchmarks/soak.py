"""Soak test (issue 7): a long headless demo at small size with host memory sampled over time.

``python -m nvplive.benchmarks.soak --timepoints 1000`` runs the simulated microscope with
live warm-started reconstruction and the durable recording writer, samples the process's
resident memory (psutil's RSS) at every complete timepoint, and
prints the series' summary: RSS at the end of the warm-up, maximum and end (MB), the
slope (MB per 100 timepoints, least squares after the warm-up) and whether memory is
flat: max RSS after the warm-up − RSS at the end of the warm-up below the bound (MB).
It also reports the acquisition's time per timepoint early and late in the run, since
anything that grows with the recording's length shows there first.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import psutil

SHAPE = (8, 24, 24)
VIEWS = 3
BOUND_MB = 50.0


def rss_mb() -> float:
    """Resident memory of this process (MiB, psutil)."""
    return psutil.Process().memory_info().rss / 2**20


@dataclass
class SoakReport:
    """Memory series of a soak run.

    Attributes:
        timepoints: complete timepoints acquired; reconstructed, skipped, flagged: counts.
        samples: ``(t, seconds since start, RSS MB)`` at each complete timepoint.
        warmup: timepoints before the reference sample; bound_mb: the flatness bound.
        seconds: wall time of the run (s); status: the acquisition's status.
        seconds_per_timepoint_early, seconds_per_timepoint_late: mean acquisition time of
            a timepoint over the first and the last tenth of the run after the warm-up (s).
    """

    timepoints: int
    reconstructed: int
    skipped: int
    flagged: int
    samples: list[tuple[int, float, float]]
    warmup: int
    bound_mb: float
    seconds: float
    status: str
    seconds_per_timepoint_early: float
    seconds_per_timepoint_late: float
    errors: list[str] = field(default_factory=list)

    def _after_warmup(self) -> list[tuple[int, float, float]]:
        return [s for s in self.samples if s[0] >= self.warmup] or self.samples

    @property
    def start_mb(self) -> float:
        """RSS at the end of the warm-up (MB)."""
        return self._after_warmup()[0][2]

    @property
    def max_mb(self) -> float:
        """Largest resident memory after the warm-up (MB)."""
        return max(s[2] for s in self._after_warmup())

    @property
    def end_mb(self) -> float:
        """Resident memory at the end (MB)."""
        return self.samples[-1][2]

    @property
    def growth_mb(self) -> float:
        """Max RSS after the warm-up − RSS at the end of the warm-up (MB)."""
        return self.max_mb - self.start_mb

    @property
    def slope_mb_per_100(self) -> float:
        """Least-squares slope of RSS against the timepoint after the warm-up (MB per 100 timepoints)."""
        tail = self._after_warmup()
        if len(tail) < 2:
            return 0.0
        t = np.array([s[0] for s in tail], dtype=np.float64)
        m = np.array([s[2] for s in tail], dtype=np.float64)
        return float(np.polyfit(t, m, 1)[0] * 100.0)

    @property
    def flat(self) -> bool:
        """Whether the memory grew less than the bound after the warm-up."""
        return self.growth_mb < self.bound_mb

    def summary(self) -> str:
        """The soak run as Markdown lines (BENCHMARKS.md)."""
        verdict = "flat" if self.flat else "NOT flat"
        return "\n".join(
            [
                f"Soak: {self.timepoints} timepoints ({self.status}) in {self.seconds:.1f} s; reconstructed "
                f"{self.reconstructed}, skipped {self.skipped}, flagged {self.flagged}, errors {len(self.errors)}",
                f"Host memory (RSS, MB): after warm-up ({self.warmup} timepoints) {self.start_mb:.1f}, "
                f"max {self.max_mb:.1f}, end {self.end_mb:.1f}; slope {self.slope_mb_per_100:+.2f} MB per 100 timepoints",
                f"Memory is {verdict}: growth after warm-up {self.growth_mb:.1f} MB (bound {self.bound_mb:.0f} MB)",
                f"Acquisition time per timepoint: early {1000 * self.seconds_per_timepoint_early:.1f} ms, "
                f"late {1000 * self.seconds_per_timepoint_late:.1f} ms",
            ]
        )


def run_soak(
    timepoints: int = 1000,
    *,
    out: Path | None = None,
    shape: tuple[int, int, int] = SHAPE,
    views: int = VIEWS,
    warmup: int = 20,
    bound_mb: float = BOUND_MB,
    interval_s: float = 0.1,
    durable: bool = True,
    progress=None,
) -> SoakReport:
    """Run a headless demo of ``timepoints`` and sample RSS at every complete timepoint.

    ``interval_s`` between timepoints leaves the live reconstruction time to update
    most timepoints (a soak of the whole data path, not only of the writer).
    The recording goes to ``out`` (a ``.fdt`` folder or a directory), or to a temporary
    directory deleted afterwards.
    """
    from nvplive.acquisition.demo import default_reconstructor_factory, run_headless_demo
    from nvplive.acquisition.live import LIVE_CONFIG
    from nvplive.recon.loop import IterationBudget
    from nvplive.recon.simulate import PartialCoherence

    samples: list[tuple[int, float, float]] = []
    begin = time.perf_counter()
    acquired = re.compile(r"^t=(\d+) acquired")

    def on_line(line: str) -> None:
        match = acquired.match(line)
        if match:
            t = int(match.group(1))
            samples.append((t, time.perf_counter() - begin, rss_mb()))
            if progress is not None and (t + 1) % 100 == 0:
                progress(f"t={t}: RSS {samples[-1][2]:.1f} MB, {samples[-1][1]:.1f} s")

    config = replace(LIVE_CONFIG, iterations=10, warm_budget=IterationBudget(4), check_every=2)
    factory = default_reconstructor_factory("cpu", config)

    def run(target: Path):
        return run_headless_demo(
            target, timepoints, views=views, shape=shape, interval_s=interval_s, exposure_ms=1.0,
            coherence=PartialCoherence(1, 0.0, 1), reconstructor_factory=factory, progress=on_line,
            durable=durable,
        )

    if out is None:
        with tempfile.TemporaryDirectory(prefix="nvplive-soak-") as tmp:
            result = run(Path(tmp))
    else:
        result = run(Path(out))
    if not samples:
        raise RuntimeError("The soak run completed no timepoint.")
    warmup = min(warmup, max(0, len(samples) - 2))
    records = result.acquisition.timepoints[warmup:]
    tenth = max(1, len(records) // 10)
    early = float(np.mean([r.seconds for r in records[:tenth]])) if records else float("nan")
    late = float(np.mean([r.seconds for r in records[-tenth:]])) if records else float("nan")
    return SoakReport(
        timepoints=result.acquisition.timepoints_complete,
        reconstructed=len(result.reconstructed),
        skipped=result.skipped,
        flagged=len(result.flagged),
        samples=samples,
        warmup=warmup,
        bound_mb=bound_mb,
        seconds=time.perf_counter() - begin,
        status=result.acquisition.status,
        seconds_per_timepoint_early=early,
        seconds_per_timepoint_late=late,
        errors=list(result.reconstruction_errors),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the headless demo for ``--timepoints`` and check that its memory stays flat; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nvplive.benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--timepoints", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20, help="timepoints before the reference sample")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between timepoints")
    parser.add_argument("--bound-mb", type=float, default=BOUND_MB, help="allowed RSS growth after the warm-up (MB)")
    parser.add_argument("--out", type=Path, default=None, help="keep the recording here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.timepoints < 2:
        print("--timepoints must be at least 2.", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, args.threads))
    report = run_soak(args.timepoints, out=args.out, warmup=args.warmup, bound_mb=args.bound_mb, interval_s=args.interval,
                      progress=lambda line: print(line, flush=True))
    print(report.summary())
    return 0 if report.flat else 1


if __name__ == "__main__":
    sys.exit(main())
