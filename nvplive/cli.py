"""The ``nvplive`` command line (README.md, "Command line").

User mistakes (bad arguments, missing or broken files, impossible optics) end
with one sentence on stderr and exit status 2; nothing prints a traceback unless
``NVPLIVE_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nvplive import __version__
from nvplive.errors import NvpLiveError
from nvplive.recon.methods import METHODS

#: torch.compile modes offered by `reconstruct --compile` (ReconConfig.compile_mode; "reduce-overhead" adds CUDA graphs on CUDA).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class UsageError(NvpLiveError):
    """A command-line argument that cannot be used."""


#: Columns of a progress line written to a log file (stderr not a terminal).
LOG_WIDTH = 160


#: Longest pause (s) between two plain progress lines when stderr is not a terminal.
PLAIN_LINE_S = 30.0
#: A progress bar's pace averaged over this long (s): the whole of any run (rich keeps its last
#: 1000 steps).
WHOLE_RUN_S = 1e9


class ProgressBar:
    """A progress bar on stderr drawn by rich: label, bar, percentage, the step's message,
    elapsed and remaining time. When stderr is not a terminal (a log file, CI) it prints a
    plain line every 10 % instead, and at least every :data:`PLAIN_LINE_S` seconds (a pupil
    calibration can hold one tenth for minutes). Use as a context manager so that the bar is
    closed when the command ends or fails; the instance is the ``progress(done, total,
    message)`` callback of the long-running commands.

    The remaining time is rich's: the steps still to go over the pace of the last 30 s. With
    ``whole_run_pace`` it is over the pace since the start instead, for work whose count jumps
    (a pupil calibration counts each stage's budget of evaluations and skips what a stage that
    converges early leaves unused: over the last 30 s's pace the estimate swung by 26× from one
    evaluation to the next, over the whole run's by less than 2×; tests/test_cli.py)."""

    def __init__(self, label: str, console: Console | None = None, *, note: str = "", whole_run_pace: bool = False) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self._note = note  # printed above the bar at the first step: the work has begun
        if not self.console.is_terminal:  # a log file: whole lines, not cut to 80 columns
            self.console.width = max(self.console.width, LOG_WIDTH)
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[message]}"),
            TimeElapsedColumn(), TextColumn("~"), TimeRemainingColumn(), console=self.console, auto_refresh=False,
            speed_estimate_period=WHOLE_RUN_S if whole_run_pace else 30.0,
        )
        self._task = self._progress.add_task(label, total=None, message="")
        self._shown_tenth = -1
        self._shown_at = time.monotonic()

    def __enter__(self) -> ProgressBar:
        if self.console.is_terminal:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.console.is_terminal:
            self._progress.stop()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        """Show ``done`` of ``total`` steps with an optional message."""
        if self._note:
            self.console.print(self._note, markup=False, soft_wrap=True)
            self._note = ""
        self._progress.update(self._task, completed=done, total=max(total, 1), message=message)
        if self.console.is_terminal:
            self._progress.refresh()
            return
        tenth = 10 * done // max(total, 1)
        now = time.monotonic()
        if tenth != self._shown_tenth or done >= total or now - self._shown_at >= PLAIN_LINE_S:
            self._shown_tenth, self._shown_at = tenth, now
            self.console.print(self._progress.get_renderable())


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X as three integers, got {text!r}") from None
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X as three positive integers, got {text!r}")
    return parts  # type: ignore[return-value]


def _voxel(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DZ,DY,DX in µm, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected DZ,DY,DX as positive sizes in µm, got {text!r}")
    return parts  # type: ignore[return-value]


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _pupil_output(text: str) -> Path:
    """``-o``: a pupil file, or a folder; a path ending in a separator must be a folder that exists
    (``Path`` drops the separator, and the pupil would be written as a file of that name)."""
    if text.endswith(("/", os.sep)) and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder (create it first, or drop the trailing / to name a file)")
    return Path(text)


def _non_negative_int(text: str) -> int:
    return _integer(text, 0, "an integer ≥ 0")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _depth_starts(text: str) -> tuple[float, ...]:
    """``0,0.06,0.12`` → the cold start's depth starts, checked where the setting is (:class:`ReconConfig`)."""
    from nvplive.recon.reconstructor import MAX_DEPTH_START_UM, ReconConfig

    try:
        starts = tuple(float(part) for part in text.split(","))
        ReconConfig(depth_starts_um=starts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected distinct depth shifts within ±{MAX_DEPTH_START_UM:g} µm, got {text!r}") from None
    return starts


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2
        if message.endswith("expected one argument"):  # e.g. --shape -8,16,16: argparse takes "-8,…" for an option
            option = message.split()[1].rstrip(":")
            message += f" (a value that starts with '-' is given as {option}=VALUE)"
        raise UsageError(f"{self.prog}: {message}.")


def _command(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A sub-command whose one-line summary heads both ``nvplive --help`` and its own ``--help``."""
    return sub.add_parser(name, help=summary, description=summary)


def build_parser() -> argparse.ArgumentParser:
    """The ``nvplive`` argument parser with its sub-commands."""
    from nvplive.recon.phantoms import PHANTOMS  # numpy only
    from nvplive.recon.progress import BEAD_CROP_PX, MAX_BEADS, STACK_ITERATIONS  # torch-free

    parser = _Parser(prog="nvplive", description="Live 3D refractive index by fluorescence diffraction tomography.")
    parser.add_argument("--version", action="version", version=f"nvp-live {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = _command(sub, "demo", "the app on a simulated microscope (beating cardiomyocyte)")
    demo.add_argument("--headless", action="store_true", help="no window: acquire + reconstruct live and write the recording")
    demo.add_argument(
        "--timepoints", type=_positive_int, default=None, help="number of timepoints (default: 20 headless, endless in the app)"
    )
    demo.add_argument("--out", type=Path, default=None,
                      help="with --headless: a folder for a new demo-DATE-TIME.fdt recording (default: ./nvplive-demo), "
                           "or the recording's own NAME.fdt")
    demo.add_argument("--interval", type=_non_negative, default=None, metavar="S",
                      help="with --headless: seconds between timepoints (default: what the simulated camera keeps up "
                           "with on this machine; the app has its own field)")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                      help="where the reconstruction runs: auto (the GPU when there is one, else the CPU), cpu or cuda (default auto)")
    _threads_option(demo)

    app = _command(sub, "app", "the app on real hardware")
    app.add_argument("--mm-config", type=Path, default=None, help="Micro-Manager configuration file (.cfg)")
    app.add_argument("--settings", type=Path, default=None, help="FDT settings file (source selection, nominal positions)")

    sim = _command(sub, "simulate", "simulate an FDT recording of a phantom")
    sim.add_argument("--phantom", choices=tuple(PHANTOMS), required=True,
                     help="the specimen: a round cell, a slab of tissue, or a beating cardiomyocyte (changes over time)")
    sim.add_argument("--views", type=_positive_int, default=7, help="beads excited one at a time, one frame each (default 7)")
    sim.add_argument("--timepoints", type=_positive_int, default=1, help="timepoints, 0.1 s apart (default 1)")
    sim.add_argument("--shape", type=_shape, default=None, help="Z,Y,X voxels (default 32,64,64)")
    sim.add_argument("--voxel-um", type=_voxel, default=None, help="DZ,DY,DX voxel size in µm (default 0.25)")
    sim.add_argument("--seed", type=int, default=0,
                     help="random seed of the phantom, the beads, the noise and the realistic instrument's draw (default 0)")
    sim.add_argument("--instrument", choices=("realistic", "matched"), default="realistic",
                     help="the simulated microscope: realistic (default: pupil apodisation and aberrations, wider "
                          "source cone, finer axial steps, the bead positions stated with a user's errors; recorded "
                          "with the ground truth) or matched (the reconstruction's own model, the true positions)")
    sim.add_argument("--thick", action="store_true",
                     help="thick-specimen geometry: 32×64×64 voxels of 0.5×0.16×0.16 µm, λ 0.52, n 1.333, NA 0.8, "
                          "beads 2–4 µm below (overrides --shape/--voxel-um)")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing recording")
    _threads_option(sim)
    sim.add_argument("out", type=Path, metavar="OUT.fdt", help="the recording folder to write (a name ending in .fdt)")

    rec = _command(sub, "reconstruct", "reconstruct every timepoint of a recording")
    rec.add_argument("recording", type=Path, metavar="IN.fdt", help="the recording folder; its volumes are replaced at the end")
    rec.add_argument("--method", choices=METHODS, default="nvp",
                     help="nvp (neural volumetric prior, default), explicit (one value per voxel) or triplane")
    rec.add_argument("--iterations", type=_positive_int, default=None,
                     help="iterations of the first timepoint's volume, fitted from scratch (default 300); the pupil "
                          "calibration before it has its own budget (--no-pupil-calibration or --pupil FILE to skip or "
                          "shorten it)")
    rec.add_argument("--warm-iterations", type=_positive_int, default=None,
                     help="at most this many iterations per later timepoint, each started from the one before and "
                          "ended early when its loss stops improving (default 40)")
    rec.add_argument("--tv", type=_non_negative, default=None,
                     help="weight τ of the total-variation prior (smooth Δn with sharp edges; default 0.004, 0 turns it off)")
    rec.add_argument("--sparsity", type=_non_negative, default=None,
                     help="weight σ of the ℓ1 sparsity prior on Δn along the optical path (Σ|Δn|·dz per column over "
                          "4 µm; default 0.016, 0 turns it off; "
                          "measured: 0.016–0.064 with --lr 0.01; a quarter of it where the pupil's source "
                          "spectrum, calibrated or from --pupil, ends inside the pupil)")
    rec.add_argument("--lr", type=_positive, default=None, help="cold-start learning rate of the representation (default 0.01; "
                          "warm updates step at 2× it)")
    _bead_diameter_option(rec)
    rec.add_argument("--slab-um", type=_non_negative, default=None, metavar="UM",
                     help="thickest slab of the volume that light crosses in one propagation step, in µm: whole voxels "
                          "that divide its depth, Δn averaged over them (default 0.5: two 0.25 µm voxels, 1.5× as fast as "
                          "one step per voxel, the same NVP quality measured; 0: one step per voxel; at most 1; "
                          "docs/physics.md)")
    rec.add_argument("--depth-starts", type=_depth_starts, default=None, metavar="UM,UM,…",
                     help="fit the first timepoint's volume once from each of these common shifts of the registered bead "
                          "depths (µm, positive: shallower) and keep the fit with the lowest final loss; each costs a whole "
                          "fit (default 0,0.06,0.12: three fits; 0: one fit, a third of the time; under a thick specimen the "
                          "registration puts the beads 0.03–0.14 µm too deep, and a shallower start finds them: "
                          "docs/reconstruction.md)")
    rec.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="where the reconstruction runs: auto (the GPU when there is one, else the CPU), cpu or cuda (default auto)")
    _threads_option(rec)
    rec.add_argument("--compile", default=None, choices=COMPILE_MODES, metavar="MODE",
                     help=f"run iterations through torch.compile in this mode ({', '.join(COMPILE_MODES)}); "
                          "compiling takes tens of seconds; BENCHMARKS.md says where it pays")
    rec.add_argument("--pupil", type=Path, default=None, metavar="FILE",
                     help="detection pupil file (nvplive calibrate; default: the recording's own pupil.json, if any); "
                          "the pupil calibration starts from it")
    rec.add_argument("--no-pupil-calibration", action="store_true",
                     help="use the pupil as it is (the file's, or the hard aperture) instead of calibrating it on the frames")
    rec.add_argument("--no-pupil-refinement", action="store_true",
                     help="keep the calibrated pupil fixed while the volume is fitted "
                          "(default: its coefficients are refined jointly with the cold start)")
    rec.add_argument("--no-source-calibration", action="store_true",
                     help="with the pupil calibration: keep the renderer's source spectrum instead of calibrating its "
                          "edge and fitting the light beyond the NA with the volume (by default an edge is kept only "
                          "where the frames show one inside the pupil; docs/reconstruction.md)")
    # the default since 2026-11-30; still accepted so that older scripts run
    rec.add_argument("--source-calibration", action="store_true", help=argparse.SUPPRESS)
    rec.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                     help="reconstruct on Dask: 'local' starts a LocalCluster, an address (tcp://host:8786) uses a running scheduler")
    rec.add_argument("--workers", type=_positive_int, default=None,
                     help="with --scheduler local: worker processes (default one per GPU, else one single-threaded "
                          "worker per --threads thread: all cores but one); "
                          "with an address: workers to wait for")
    rec.add_argument("--chunk-size", type=_positive_int, default=None,
                     help="with --scheduler: timepoints per task, each chunk's first one cold-started (default: spread over the workers)")

    cal = _command(sub, "calibrate", "calibrate the detection pupil on a recording's frames or a bead z-stack")
    cal.add_argument("input", type=Path, metavar="REC.fdt|STACK.tif",
                     help="a recording (its frames of one timepoint) or a bead z-stack (a TIFF, parameters in STACK.json beside it)")
    cal.add_argument("-o", "--output", type=_pupil_output, default=None, metavar="pupil.json",
                     help="where to write the pupil: a file, or a folder to hold pupil.json (default: REC.fdt/pupil.json, "
                          "or STACK.pupil.json in the current folder)")
    cal.add_argument("--z-direction", type=int, choices=(1, -1), default=None,
                     help="z-stack: +1 if later planes have the bead farther from the objective, -1 the other way "
                          "(default: fit both; the sign of even aberrations then rests on the better fit)")
    cal.add_argument("--iterations", type=_positive_int, default=None,
                     help=f"z-stack: L-BFGS iterations per pass (default {STACK_ITERATIONS})")
    cal.add_argument("--crop", type=_positive_int, default=None, metavar="N",
                     help="z-stack: fit the N×N pixels around each bead (default: the whole frame for a bead alone in it, "
                          f"{BEAD_CROP_PX} for several beads; 64 on a 128×128 stack of one bead is ≈1.7× faster and leaves "
                          "less background noise)")
    cal.add_argument("--beads", type=_positive_int, default=None, metavar="N",
                     help=f"z-stack of several beads: fit the N brightest beads that lie alone in their crops together "
                          f"(default {MAX_BEADS}; each adds the stack's planes to the fit's views)")
    cal.add_argument("--pad", type=_non_negative_int, default=None, metavar="PIXELS",
                     help="z-stack: the renderer's padding per side (default: the bead's defocused disc at the "
                          "farthest plane; BENCHMARKS.md measures what less costs)")
    cal.add_argument("--timepoint", type=int, default=None, help="recording: the timepoint whose frames are fitted (default 0)")
    cal.add_argument("--overwrite", action="store_true",
                     help="replace an existing pupil file given by -o or the stack's default one (a recording's own "
                          "pupil.json is replaced without it, as reconstruct does)")
    cal.add_argument("--no-source-calibration", action="store_true",
                     help="recording: keep the renderer's source spectrum instead of calibrating its edge with the pupil")
    cal.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="recording: where the calibration runs (a z-stack is fitted on the CPU)")
    _bead_diameter_option(cal)
    for name, what in (("wavelength-um", "emission wavelength λ (µm)"), ("na", "numerical aperture"),
                       ("n-medium", "medium refractive index"), ("pixel-size-um", "pixel size in the sample (µm)"),
                       ("z-step-um", "step between planes (µm)")):
        cal.add_argument(f"--{name}", type=_positive, default=None, help=f"z-stack: {what} (default: STACK.json beside the stack)")
    cal.add_argument("--bit-depth", type=_positive_int, default=None, metavar="BITS",
                     help="z-stack: the camera's significant bits, whose full scale marks saturated pixels (default: "
                          "what the TIFF's metadata states, else STACK.json's bit_depth, else the pixels' type; "
                          "a value that disagrees with the TIFF's, or that counts in the stack exceed, is refused)")
    _threads_option(cal)

    ev = _command(sub, "evaluate", "score a reconstruction against ground truth")
    ev.add_argument("recording", type=Path, metavar="IN.fdt", help="a simulated recording (with ground truth) that has volumes")
    ev.add_argument("--json", action="store_true", help="print the scores as JSON")
    _threads_option(ev)

    bench = _command(sub, "bench", "quality and speed benchmarks (results and targets: BENCHMARKS.md)")
    bench.add_argument("kind", choices=("quality", "speed"),
                       help="quality (Δn PSNR per method and specimen) or speed (iterations per second)")
    bench.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the result rows as JSON")
    bench.add_argument("--full", action="store_true", help="the full (GPU) size")
    bench.add_argument("--mismatch", action="store_true",
                       help="quality: the instrument-mismatch table instead (simulated instrument ≠ model; "
                            "--full for the whole grid)")
    bench.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="append the table to this Markdown file")
    bench.add_argument("--device", default=None, choices=("cpu", "cuda"),
                       help="speed: measure on this device only (default: the CPU, and CUDA when present)")
    _threads_option(bench)
    return parser


def _bead_diameter_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bead-diameter", type=_non_negative, default=None, metavar="UM",
                        help="the fluorescent beads' diameter in µm, as their supplier states it (default: the "
                             "recording's bead_diameter_um, or STACK.json's; 0 where it states none: point sources); "
                             "the renderer images each bead as a uniform sphere of it")


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="torch CPU threads (default: $NVPLIVE_THREADS, else all cores but one, as the live app)")


def _use_threads(args: argparse.Namespace) -> str:
    """Apply the CPU thread policy (recon.reconstructor.cpu_threads); returns the line that says
    what it chose, for the command to print when its work starts (a :class:`ProgressBar`'s
    ``note``), so that a refusal before it is one line."""
    from nvplive.recon.reconstructor import use_cpu_threads

    return f"nvplive: {use_cpu_threads(args.threads)}"


def _recording_state(path: Path) -> tuple[int, dict | None, bool, str] | None:
    """``(complete timepoints, the live writer or None, interrupted, created)`` of the recording at
    ``path``; None when there is no readable recording."""
    from nvplive.acquisition.recording import Recording

    try:
        with Recording.open(path) as rec:
            return rec.n_timepoints, rec.writer, rec.interrupted, rec.created
    except (NvpLiveError, OSError, ValueError):
        return None


def _what_is_there(path: Path) -> str:
    """`` (a recording of 2 complete timepoints, interrupted …)`` for a recording at ``path``, so that
    a user who stopped a run sees why the name is taken; empty for anything else."""
    state = _recording_state(path)
    if state is None:
        return ""
    n, writer, interrupted, _ = state
    what = f"a recording of {n} complete timepoint{'' if n == 1 else 's'}"
    if writer is not None:
        return f" ({what}, being written now by process {writer.get('pid')})"
    return f" ({what}, interrupted: its writer did not finish)" if interrupted else f" ({what})"


def _cmd_simulate(args: argparse.Namespace) -> int:
    from nvplive.acquisition.offline import DEFAULT_SHAPE_ZYX, DEFAULT_VOXEL_UM, simulate_recording
    from nvplive.errors import GeometryError
    from nvplive.recon.optics import VolumeGeometry
    from nvplive.recon.reconstructor import check_frame_size

    if args.out.suffix != ".fdt":
        raise UsageError(f"The output {args.out} must be a folder name ending in .fdt.")
    if args.thick and (args.shape is not None or args.voxel_um is not None):
        print("nvplive: --thick sets the geometry (32×64×64 voxels of 0.5×0.16×0.16 µm); --shape and --voxel-um are not used.",
              file=sys.stderr)
    if not args.out.absolute().parent.is_dir():
        raise UsageError(f"{args.out}: the folder {args.out.parent} does not exist (or is not a folder); create it first, "
                         "or choose another place.")
    if (args.out.exists() or args.out.is_symlink()) and not args.overwrite:
        raise UsageError(f"{args.out} already exists{_what_is_there(args.out)}; pass --overwrite to replace it, or choose "
                         "another name.")
    if args.shape is not None and not args.thick:
        try:  # the check simulate_recording makes, named by the option that set the size
            check_frame_size(VolumeGeometry(args.shape, args.voxel_um or DEFAULT_VOXEL_UM))
        except GeometryError as exc:
            raise UsageError(f"--shape {','.join(map(str, args.shape))}: {exc}") from None
    threads = _use_threads(args)
    before = _recording_state(args.out)  # with --overwrite: the recording being replaced
    try:
        with ProgressBar("simulate", note=threads) as progress:
            path = simulate_recording(
                args.out,
                phantom=args.phantom,
                views=args.views,
                timepoints=args.timepoints,
                shape_zyx=args.shape or DEFAULT_SHAPE_ZYX,
                voxel_um_zyx=args.voxel_um or DEFAULT_VOXEL_UM,
                seed=args.seed,
                overwrite=args.overwrite,
                progress=progress,
                instrument=args.instrument,
                thick=args.thick,
            )
    except KeyboardInterrupt:
        after = _recording_state(args.out)
        kept = _what_is_there(args.out) if after is not None and (before is None or after[3] != before[3]) else ""
        if kept:  # the writer closed the new recording with the timepoints done so far
            print(f"nvplive: {args.out} kept{kept}, of the {args.timepoints} asked for; simulate it again with "
                  "--overwrite for all of them.", file=sys.stderr)
        raise
    print(f"wrote {path}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from nvplive.acquisition.offline import reconstruct_recording
    from nvplive.acquisition.pupil_file import pupil_path
    from nvplive.recon.loop import IterationBudget
    from nvplive.recon.reconstructor import ReconConfig

    config = ReconConfig(method=args.method)
    options = (
        ("iterations", args.iterations), ("tv_weight", args.tv), ("sparsity_weight", args.sparsity), ("lr", args.lr),
        ("compile_mode", args.compile), ("max_slab_um", args.slab_um), ("depth_starts_um", args.depth_starts),
    )
    changes: dict[str, Any] = {k: v for k, v in options if v is not None}
    changes["bead_diameter_um"] = args.bead_diameter  # None: the recording's
    if args.warm_iterations is not None:
        changes["warm_budget"] = IterationBudget(args.warm_iterations)
    if args.no_pupil_calibration:
        changes["pupil_calibration"] = False
    if args.no_source_calibration:
        changes["source_calibration"] = False
    if args.no_pupil_refinement:
        changes["pupil_refinement"] = False
    config = replace(config, **changes)
    if args.scheduler is None and (args.workers is not None or args.chunk_size is not None):
        raise UsageError("--workers and --chunk-size need --scheduler (local or the address of a Dask scheduler).")
    moot = [flag for flag, given in (("--no-source-calibration", args.no_source_calibration),
                                     ("--no-pupil-refinement", args.no_pupil_refinement)) if given]
    if args.no_pupil_calibration and moot:
        print(f"nvplive: {' and '.join(moot)} {'have' if len(moot) > 1 else 'has'} no effect with --no-pupil-calibration: "
              "the pupil (the file's, or the hard aperture) is used as it is, its source spectrum included.", file=sys.stderr)
    pupil, pupil_from = _given_pupil(args.recording, args.pupil, config)
    threads = _use_threads(args)
    state = _recording_state(args.recording)
    if state is not None and state[2] and state[1] is None:
        print(f"nvplive: note: {args.recording} was interrupted (its writer did not finish); it is closed with its "
              f"{state[0]} complete timepoint(s) before the reconstruction starts.", file=sys.stderr)
    try:
        if args.scheduler is None:
            with ProgressBar("reconstruct", note=threads) as progress:
                summary = reconstruct_recording(
                    args.recording, config, device=args.device, progress=progress, pupil=pupil, pupil_from=pupil_from
                )
            where = summary.device
        else:
            from nvplive.acquisition.batch import reconstruct_distributed

            with ProgressBar("reconstruct", note=threads) as progress:
                summary = reconstruct_distributed(
                    args.recording, config, scheduler=args.scheduler, workers=args.workers, chunk_size=args.chunk_size,
                    device=args.device, progress=progress, pupil=pupil, pupil_from=pupil_from, threads=args.threads,
                )
            where = (f"{summary.workers} Dask worker(s) ({summary.device}, {len(summary.chunks)} chunk(s), "
                     f"scheduler {summary.scheduler})")
    except KeyboardInterrupt:
        print(f"nvplive: {args.recording}'s previous volumes (if any) are kept as they were.", file=sys.stderr)
        raise
    took = f"{summary.seconds:.1f} s"
    if args.scheduler is not None:
        took += f" ({summary.startup_seconds:.1f} s of it reaching the workers)"
    print(
        f"reconstructed {summary.timepoints} timepoint(s) with {args.method} on {where} in {took}"
        f"; final loss {summary.losses[-1]:.4f}"
    )
    if config.self_calibration and config.pupil_calibration:
        print(f"the detection pupil: calibrated on timepoint 0's frames, starting from {summary.pupil_start}; "
              f"written to {pupil_path(args.recording)}")
    else:
        print(f"the detection pupil: {summary.pupil_start}, as it is")
    if summary.cold_start_note:
        print(f"timepoint 1: {summary.cold_start_note}")
    if summary.flagged:
        print(f"warning: timepoints {summary.flagged} diverged and were rolled back", file=sys.stderr)
    print(f"the volumes: {args.recording / 'volumes.ome.tif'}; score them against ground truth with nvplive evaluate "
          f"{shlex.quote(str(args.recording))} (simulated recordings)")
    return 0


def _given_pupil(recording: Path, pupil_file: Path | None, config: Any) -> tuple[Any, str | None]:
    """``reconstruct``'s pupil: ``--pupil FILE``'s (checked against the recording's optics), else
    None (the recording's own pupil.json, else the hard aperture), and where it came from; warns
    when that pupil was calibrated with other beads than the reconstruction (``config``) images."""
    from nvplive.acquisition.offline import other_beads_warning
    from nvplive.acquisition.pupil_file import pupil_for, read_pupil_file
    from nvplive.acquisition.recording import Recording

    pupil = origin = None
    if pupil_file is not None:
        doc = read_pupil_file(pupil_file)
        with Recording.open(recording) as rec:
            pupil = pupil_for(doc, pupil_file, rec.meta.optics, recording.name)  # other optics: refused
        origin = f"{pupil_file} ({doc.method}, {doc.created})"
    warning = other_beads_warning(recording, config, pupil_file)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return pupil, origin


def _refuse_options(flags: list[str], what: str) -> None:
    """Refuse options given for the other kind of input, naming them."""
    if flags:
        raise UsageError(f"{' and '.join(flags)} {'apply' if len(flags) > 1 else 'applies'} to {what}.")


#: A calibration that lowers the relative residual by less than this is said to have gained nothing.
NO_GAIN_RESIDUAL = 0.001


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from nvplive.acquisition.offline import STACK_KEYS, calibrate_recording, calibrate_stack_file
    from nvplive.acquisition.pupil_file import calibration_start
    from nvplive.recon.progress import MAX_BEADS, STACK_ITERATIONS

    stack_only = [f"--{name.replace('_', '-')}" for name in (*STACK_KEYS, "iterations", "crop", "beads", "pad", "z_direction", "bit_depth")
                  if getattr(args, name) is not None]
    recording_only = [flag for flag, given in (("--timepoint", args.timepoint is not None),
                                               ("--no-source-calibration", args.no_source_calibration)) if given]
    if args.input.suffix == ".fdt":
        _refuse_options(stack_only, "a bead z-stack (.tif), not to a recording's frames")
        threads = _use_threads(args)
        known, start = calibration_start(args.input) if args.input.is_dir() else (None, "the hard aperture")
        no_gain = (("note", "the pupil it started from was already calibrated, so there was little left to gain") if known is not None
                   else ("warning", "the pupil written is no better than the hard aperture; check that the frames show the beads"))
        with ProgressBar("calibrate", note=threads, whole_run_pace=True) as progress:
            calibration, written = calibrate_recording(args.input, timepoint=args.timepoint or 0, device=args.device,
                                                       output=args.output, progress=progress,
                                                       source_calibration=not args.no_source_calibration,
                                                       bead_diameter_um=args.bead_diameter, overwrite=args.overwrite)
        before, after = calibration.residual_start, calibration.residual
        how = f"{len(calibration.sources_um_xyz)} views, starting from {start}"
        residuals = f"relative residual {before:.3f} with the pupil it started from, {after:.3f} calibrated"
    elif args.input.suffix.lower() in (".tif", ".tiff"):
        if args.device == "cuda":
            raise UsageError("A bead z-stack is fitted on the CPU (a float64 fit); --device applies to a recording's frames.")
        _refuse_options(recording_only, "a recording's frames (REC.fdt), not to a bead z-stack")
        threads = _use_threads(args)
        with ProgressBar("calibrate", note=threads, whole_run_pace=True) as progress:
            result, written = calibrate_stack_file(
                args.input, output=args.output, wavelength_um=args.wavelength_um, na=args.na, n_medium=args.n_medium,
                pixel_size_um=args.pixel_size_um, z_step_um=args.z_step_um, z_direction=args.z_direction, progress=progress,
                bead_diameter_um=args.bead_diameter, crop_px=args.crop, pad_px=args.pad, overwrite=args.overwrite,
                iterations=args.iterations or STACK_ITERATIONS, bit_depth=args.bit_depth, max_beads=args.beads or MAX_BEADS,
            )
        calibration, before, after = result.calibration, result.residual_hard, result.residual
        no_gain = ("warning", "the pupil written is no better than the hard aperture; give it more --iterations, or check that "
                   "the stack shows a bead")
        how = f"{result.beads}, z direction {result.z_direction:+d}"
        if result.ambiguous:
            how += " (both directions fit alike: the even aberrations' sign follows this choice)"
        residuals = (f"relative residual {before:.3f} with the hard aperture (the planes' positions fitted as long), "
                     f"{after:.3f} calibrated")
        if result.noise is not None:
            residuals += f" (the stack's noise alone would leave {result.noise.residual_floor:.3f})"
        if result.saturated_pixels:
            print(f"warning: {result.saturated_pixels} pixels of {args.input.name} are at the camera's full scale; "
                  "they are left out, but the clipped peak is what shapes the pupil's amplitude, so the fitted "
                  "apodisation (and the even aberrations' sign) is unreliable: take the stack again with a shorter exposure.",
                  file=sys.stderr)
    else:
        raise UsageError(f"{args.input} must be a recording (NAME.fdt) or a bead z-stack (.tif).")
    print(
        f"calibrated the pupil on {args.input.name} ({how}): {calibration.pupil.summary}"
        f"{' (the amplitude 1 + a₁ρ² + a₂ρ⁴ … over the aperture radius ρ)' if calibration.pupil.apodisation else ''}; "
        f"{residuals}; wrote {written}"
    )
    if after > before - NO_GAIN_RESIDUAL:
        level, why = no_gain
        print(f"{level}: the calibration did not lower the residual ({before:.3f} → {after:.3f}): {why}.", file=sys.stderr)
    return 0


#: ``evaluate`` says a reconstruction recovers little of the specimen when its absolute Δn PSNR is
#: less than this above the all-zero volume's (the issue-13 target for a good one is 6 dB).
LITTLE_GAIN_DB = 3.0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nvplive.acquisition.offline import evaluate_recording

    threads = _use_threads(args)
    with ProgressBar("evaluate", note=threads) as progress:
        scores = evaluate_recording(args.recording, progress=progress)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        a, p = scores["absolute"], scores["published"]
        print(f"{scores['recording']}: {scores['method']}, {scores['timepoints']} timepoint(s)")
        print(f"  Δn absolute:  PSNR {a['psnr_db']:.2f} dB  SSIM {a['ssim']:.3f}  (the all-zero volume: {a['all_zero_psnr_db']:.2f} dB)")
        gain = a["psnr_db"] - a["all_zero_psnr_db"]
        if gain < LITTLE_GAIN_DB:
            print(f"  note: {gain:+.2f} dB over the all-zero volume: the volumes recover little of the specimen "
                  f"(under {LITTLE_GAIN_DB:g} dB; docs/reconstruction.md, \"Reading the scores\")")
        print(f"  Δn published: PSNR {p['psnr_db']:.2f} dB  SSIM {p['ssim']:.3f}")
        pupil = scores["pupil"]
        changes = "" if pupil["same_at_every_timepoint"] else \
            f" at timepoint {pupil['timepoint']}; later volumes refined it (each volume's own is in its settings)"
        print(f"  the volumes were rendered with the detection pupil: {pupil['summary']}{changes}")
        if "true_summary" in pupil:
            print(f"  the simulated instrument's pupil: {pupil['true_summary']}; wavefront error "
                  f"{pupil['wavefront_error_rad']:.3f} rad RMS between the two phases (Noll 5–22: tip, tilt and defocus "
                  "are the beads' positions; the apodisation not included)")
        beads = scores["beads"]
        if beads is not None:
            used = "as refined by the reconstruction" if beads["refined"] else "as stated in the recording"
            print(f"  bead positions {used}: off the true ones by up to {beads['used_lateral_error_max_um']:.3f} µm laterally "
                  f"and {beads['used_depth_error_max_um']:.3f} µm in depth (as stated: "
                  f"{beads['nominal_lateral_error_max_um']:.3f} and {beads['nominal_depth_error_max_um']:.3f} µm)")
        print(f"  held-out views ({scores['heldout_views']} beads the recording did not use, imaged through the truth "
              f"and through the volume): image PSNR {scores['heldout_image_psnr_db']:.2f} dB (through the all-zero "
              f"volume: {scores['heldout_all_zero_image_psnr_db']:.2f} dB)")
        print("  (higher is better; absolute: Δn against the truth, peak = the truth's Δn range; published: each volume "
              "scaled to [0, 1] first, as the FDT papers score)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.interval is not None and not args.headless:
        raise UsageError("--interval is for --headless; in the app, set the interval in the acquisition panel.")
    if args.headless:
        from nvplive.acquisition.demo import recording_path, run_headless_demo

        path = recording_path(args.out or Path("nvplive-demo"))
        _refuse_existing(path)
        print(_use_threads(args), file=sys.stderr, flush=True)
        result = run_headless_demo(
            path, timepoints=args.timepoints or 20, device=args.device, interval_s=args.interval,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        print(result.report())  # the summary to stdout (the events went to stderr as they happened)
        return 0 if result.acquisition.status == "completed" else 1
    from nvplive.app.main import run_app

    if args.threads is not None:
        from nvplive.recon.reconstructor import THREADS_ENV

        os.environ[THREADS_ENV] = str(args.threads)  # the app applies the policy itself (live_cpu_threads)
    return run_app(demo=True, timepoints=args.timepoints, out=args.out, device=args.device)


def _refuse_existing(path: Path) -> None:
    """The demo never replaces an earlier recording ``path`` (a ``--out NAME.fdt`` given twice):
    say so, and name a free ``--out``, before starting."""
    from nvplive.acquisition.live import free_path

    if (free := free_path(path)) == path:
        return
    raise UsageError(
        f"{path} already exists from an earlier run; pass --out {shlex.quote(str(free))} or remove the old recording first."
    )


def _cmd_app(args: argparse.Namespace) -> int:
    from nvplive.app.main import run_app

    if args.mm_config is not None and not args.mm_config.is_file():
        raise UsageError(f"The Micro-Manager configuration {args.mm_config} does not exist.")
    return run_app(demo=False, mm_config=args.mm_config, settings=args.settings)


def _cmd_bench(args: argparse.Namespace) -> int:
    from nvplive.recon.reconstructor import cpu_threads

    if args.kind == "quality":
        if args.device is not None:
            raise UsageError("--device applies to the speed benchmark; the quality benchmark runs on the CPU.")
        if args.mismatch:
            from nvplive.benchmarks.mismatch import main as mismatch_main

            return mismatch_main(json_path=args.json, full=args.full, markdown=args.markdown)
        from nvplive.benchmarks.quality import main as quality_main

        print(f"nvplive: {cpu_threads(args.threads)[0]} single-threaded worker processes (the CPU thread policy; "
              "--threads to change)", file=sys.stderr, flush=True)
        return quality_main(json_path=args.json, full=args.full, markdown=args.markdown, threads=args.threads)
    if args.mismatch:
        raise UsageError("--mismatch applies to the quality benchmark.")
    from nvplive.benchmarks.speed import main as speed_main

    if args.device != "cuda":
        print(f"nvplive: CPU rows with {cpu_threads(args.threads)[0]} torch threads (the CPU thread policy; "
              "--threads to change)", file=sys.stderr, flush=True)
    return speed_main(json_path=args.json, full=args.full, markdown=args.markdown, device=args.device, threads=args.threads)


COMMANDS = {
    "simulate": _cmd_simulate,
    "reconstruct": _cmd_reconstruct,
    "calibrate": _cmd_calibrate,
    "evaluate": _cmd_evaluate,
    "demo": _cmd_demo,
    "app": _cmd_app,
    "bench": _cmd_bench,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler), handled as Ctrl-C is: the command
    unwinds, so that its recording's lock is released and a half-done result is dropped."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nvplive``; returns the exit status (SIGINT 130, SIGTERM 143)."""
    debug = os.environ.get("NVPLIVE_DEBUG") == "1"
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except NvpLiveError as exc:
        if debug:
            raise
        print(f"nvplive: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("nvplive: terminated.", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("nvplive: interrupted.", file=sys.stderr)
        return 130
    except (OSError, ValueError) as exc:
        if debug:
            raise
        print(f"nvplive: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError, OverflowError) as exc:  # from the numerics (torch, numpy)
        if debug:
            raise
        print(f"nvplive: error: {numerics_failure(exc)}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:  # None: a handler installed outside Python, which cannot be put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def numerics_failure(exc: BaseException) -> str:
    """One sentence for a RuntimeError/MemoryError/OverflowError that escaped the numerics."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    brief = text if len(text) <= 160 else text[:157] + "..."
    if isinstance(exc, MemoryError) or any(s in text.lower() for s in ("out of memory", "can't allocate", "cannot allocate")):
        return (f"The computation ran out of memory ({brief}); use a smaller volume or fewer views, or close other "
                "programs.")
    if isinstance(exc, OverflowError):
        return f"A number overflowed in the computation ({brief}); check the optics and geometry for absurd values."
    return f"The computation failed ({type(exc).__name__}: {brief}); NVPLIVE_DEBUG=1 shows where."
