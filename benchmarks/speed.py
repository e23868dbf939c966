"""``nvplive bench speed``: renderer and reconstruction speed (results: BENCHMARKS.md).

For each volume size (7 views) and device: forward-render time, iterations per
second (forward + backward + optimiser step, NVP), warm-update latency per
timepoint (``warm_update_s``: the time a warm update needs to reach the Δn quality
of a 300-iteration cold start of the same timepoint, its iterations × the measured
rate, hence warm-started volumes per second; and a fixed 40-iteration update), cold-start time, peak memory (host RSS of a fresh worker process;
device allocator peak on CUDA), and the forward renderer against the
straightforward reference in :mod:`.reference_renderer` (one view at a time,
kernels rebuilt every call) and, when an interpreter with diffractio is named by
``NVPLIVE_DIFFRACTIO_PYTHON``, against diffractio's BPM on the same volume.
Ratios (reference time / our time) are reported because these machines are noisy.
Each size runs in its own process so the memory peak belongs to it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import publish

SHAPES = [(32, 64, 64), (64, 128, 128), (128, 256, 256)]
VIEWS = 7
VOXEL_UM = 0.25
#: Iterations of the warm updates that compare eager and compiled iterations.
COMPILED_WARM_ITERATIONS = 20


def _timeit(fn, repeats: int, sync) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def _measure(shape: tuple[int, int, int], device: str, full: bool, queue, threads: int = 1) -> None:
    try:
        queue.put(_measure_inner(shape, device, full, threads))
    except KeyboardInterrupt:  # Ctrl+C reaches the worker too: the parent says it, once
        return
    except Exception as exc:  # reported as a row, the benchmark goes on
        queue.put({"shape_zyx": list(shape), "views": VIEWS, "device": device, "error": f"{type(exc).__name__}: {exc}"})


def _measure_inner(shape, device: str, full: bool, threads: int = 1) -> dict:
    import numpy as np
    import torch

    from nvplive.recon.loop import IterationBudget
    from nvplive.recon.optics import Optics, VolumeGeometry
    from nvplive.recon.phantoms import Cardiomyocyte
    from nvplive.recon.physics import ForwardModel, render
    from nvplive.recon.reconstructor import ReconConfig, Reconstructor
    from nvplive.recon.simulate import PartialCoherence, Simulator, default_sources

    from .quality import warm_iterations_to_cold_quality
    from .reference_renderer import render_reference

    if device == "cpu":
        # The CPU thread policy (cpu_threads: all cores but one unless --threads says otherwise),
        # as the live app and reconstruct use it; BENCHMARKS.md gives figures for one thread and for every core.
        torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    voxels = shape[0] * shape[1] * shape[2]
    small = voxels <= 32 * 64 * 64
    optics = Optics()
    geometry = VolumeGeometry(tuple(shape), (VOXEL_UM,) * 3)
    sources = default_sources(geometry, VIEWS, seed=0)
    phantom = Cardiomyocyte(geometry.shape_zyx, geometry.voxel_um_zyx, seed=0)
    truth0 = phantom.at(0.0)
    model = ForwardModel.build(optics, geometry, source_depth_um=float(-sources[:, 2].min()) + 1.0, device=dev)
    dn = torch.as_tensor(truth0, device=dev)
    src = torch.as_tensor(sources, dtype=torch.float32, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    with torch.no_grad():
        ours = render(model, dn, src)
        reference = render_reference(optics, geometry, model.pad_yx, dn, src)
        agreement = float((ours - reference).norm() / ours.norm())
        repeats = 5 if small else 2
        forward_s = _timeit(lambda: render(model, dn, src), repeats, sync)
        reference_s = _timeit(lambda: render_reference(optics, geometry, model.pad_yx, dn, src), 1 if not small else 3, sync)

    row = {
        "shape_zyx": list(shape),
        "views": VIEWS,
        "device": device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "padded_yx": list(model.padded_shape_yx),
        "forward_ms": round(1000 * forward_s, 2),
        "reference_ms": round(1000 * reference_s, 2),
        "reference_ratio": round(reference_s / forward_s, 2),
        "reference_agreement": agreement,
        "diffractio_ratio": None,
        "iters_per_s": None,
        "warm_update_s": None,
        "cold_start_s": None,
        "peak_mem_mb": None,
        "torch_threads": torch.get_num_threads(),
    }
    heavy_ok = dev.type == "cuda" or small or full
    sim = Simulator(optics, geometry, sources, coherence=PartialCoherence(1, 0.0, 1), device=dev, seed=0)
    rng = np.random.default_rng(0)
    frames0 = sim.frames(truth0, rng)
    frames1 = sim.frames(phantom.at(0.1), rng)
    config = ReconConfig(iterations=300 if heavy_ok else 3, warm_budget=IterationBudget(40))
    rec = Reconstructor(optics, geometry, sources, camera_offset=sim.camera.offset, config=config, device=dev)
    if heavy_ok:
        start = time.perf_counter()
        rec.cold_start(frames0)
        sync()
        row["cold_start_s"] = round(time.perf_counter() - start, 2)
        state0 = rec.snapshot()
        result = rec.warm_update(frames1)
        sync()
        row["fixed_warm_update_s"] = round(result.seconds, 3)
        row["fixed_warm_iterations"] = result.iterations
        row["iters_per_s"] = round(result.iterations / result.seconds, 2)
    elif voxels > 64 * 128 * 128:
        row["note"] = "CPU: forward only at this size (use --full to time iterations)"
    else:
        rec.cold_start(frames0)
        rec.with_config(warm_budget=IterationBudget(2, stop_on_plateau=False))
        result = rec.warm_update(frames1)
        row["iters_per_s"] = round(result.iterations / result.seconds, 3)
    if heavy_ok:
        row.update(_compiled_rates(rec, state0, frames1, small, dev.type))
        # The warm-update latency: to the warm-start quality target, i.e. the Δn PSNR
        # a 300-iteration cold start reaches on the same timepoint (iterations × the rate).
        to_target = warm_iterations_to_cold_quality(
            optics, geometry, sources, frames0, frames1, phantom.at(0.1), config,
            camera_offset=sim.camera.offset, device=dev, state=state0,
        )
        needed = to_target["warm_iterations_to_cold_quality"]
        row["warm_iterations_to_target"] = needed
        if needed is not None:
            row["warm_update_s"] = round(needed / row["iters_per_s"], 3)
            row["volumes_per_s"] = round(row["iters_per_s"] / needed, 2)
    if dev.type == "cuda":
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        row["peak_mem_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["diffractio_ratio"] = _diffractio_ratio(geometry, optics, truth0, sources, forward_s)
    return row


def _compiled_rates(rec, state, frames, small: bool, device_type: str) -> dict:
    """Iterations per second of warm updates eager and through torch.compile, from the warm
    state ``state`` of ``rec`` (``COMPILED_WARM_ITERATIONS`` iterations, timed on the second update so that
    compiling is left out; the first update's extra time is ``compile_s``). CUDA: modes
    ``default`` and ``reduce-overhead`` (CUDA graphs); CPU: ``default`` at the small size."""
    from nvplive.recon.loop import IterationBudget
    from nvplive.recon.reconstructor import Reconstructor

    modes = ["default", "reduce-overhead"] if device_type == "cuda" else (["default"] if small else [])
    if not modes:
        return {}
    rates: dict[str, float | str] = {}
    compile_s: dict[str, float] = {}
    for mode in [None, *modes]:
        config = replace(rec.config, compile_mode=mode, warm_budget=IterationBudget(COMPILED_WARM_ITERATIONS, stop_on_plateau=False))
        other = Reconstructor(rec.optics, rec.geometry, rec.nominal_sources, camera_offset=rec.camera_offset,
                              camera_gain=rec.camera_gain, config=config, device=rec.device)
        other.load_state(state)
        first = other.warm_update(frames)
        other.load_state(state)
        second = other.warm_update(frames)
        key = mode or "eager"
        rates[key] = round(second.iterations / second.seconds, 2)
        if mode is not None:
            compile_s[key] = round(first.seconds - second.seconds, 1)
            if other.compile_failure:
                rates[key] = f"failed: {other.compile_failure}"
    return {"compiled_iters_per_s": rates, "compile_s": compile_s}


def _diffractio_ratio(geometry, optics, dn, sources, forward_s: float) -> float | None:
    """Time diffractio's BPM over the same volume (7 views, one at a time) in its own interpreter."""
    python = os.environ.get("NVPLIVE_DIFFRACTIO_PYTHON")
    if not python:
        return None
    import numpy as np

    script = Path(__file__).with_name("diffractio_bpm.py")
    with _TempArray(dn) as path:
        out = subprocess.run(
            [python, str(script), path, json.dumps({"voxel_um": list(geometry.voxel_um_zyx), "wavelength_um": optics.wavelength_um,
                                                     "n_medium": optics.n_medium, "views": len(sources)})],
            capture_output=True, text=True, timeout=1800,
        )
    if out.returncode != 0:
        return None
    seconds = float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    return round(seconds / forward_s, 2) if np.isfinite(seconds) else None


class _TempArray:
    def __init__(self, array) -> None:
        self.array = array

    def __enter__(self) -> str:
        import tempfile

        import numpy as np

        fd, self.path = tempfile.mkstemp(suffix=".npy")
        os.close(fd)
        np.save(self.path, self.array)
        return self.path

    def __exit__(self, *exc) -> None:
        os.unlink(self.path)


def run_speed(full: bool = False, progress=print, device: str | None = None, threads: int | None = None) -> list[dict]:
    """Rows for every size on ``device`` (default: the CPU, and CUDA when present).

    ``threads``: torch CPU threads of the CPU rows (default: the CPU thread policy, cpu_threads).
    """
    import torch

    from nvplive.recon.reconstructor import cpu_threads

    threads = cpu_threads(threads)[0]

    if device is not None:
        from nvplive.recon.reconstructor import select_device

        select_device(device)  # refuses CUDA where there is none
    devices = [device] if device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ctx = mp.get_context("spawn")
    rows = []
    for device in devices:
        for shape in SHAPES:
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(shape, device, full, queue, threads))
            print(f"bench speed: measuring {'×'.join(map(str, shape))} on {device} (minutes per size)…", file=sys.stderr,
                  flush=True)
            proc.start()
            try:
                row = queue.get()
            except KeyboardInterrupt:
                proc.terminate()
                proc.join()
                raise
            proc.join()
            rows.append(row)
            progress(json.dumps(row))
    return rows


def markdown_table(rows: list[dict], seconds: float) -> str:
    """The Markdown table of :func:`run_speed`'s rows (BENCHMARKS.md)."""
    lines = [
        f"### Speed ({time.strftime('%Y-%m-%d')}, `nvplive bench speed`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; wall time {seconds / 60:.1f} min. "
        "7 views, voxels of 0.25 µm, NVP; CPU rows use the torch threads of column `torch_threads` in the JSON "
        "(the CPU thread policy: all cores but one unless `--threads`).",
        "",
        "| shape Z×Y×X | device | padded grid | forward ms | reference ms (ratio) | iters/s | warm update to cold quality s (iters; volumes/s) | 40-iteration warm update s | cold start s | peak MB | warm iters/s eager / compiled (compile s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "—" if v is None else str(v)  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {'×'.join(map(str, r['shape_zyx']))} | {r['device']} | failed: {r['error']} | | | | | | | | |")
            continue
        lines.append(
            f"| {'×'.join(map(str, r['shape_zyx']))} | {r['device']} | {'×'.join(map(str, r['padded_yx']))} | {r['forward_ms']} | "
            f"{r['reference_ms']} ({r['reference_ratio']}×) | {fmt(r['iters_per_s'])} | {_to_target_cell(r)} | "
            f"{fmt(r.get('fixed_warm_update_s'))} | "
            f"{fmt(r['cold_start_s'])} | {fmt(r['peak_mem_mb'])} | {_compiled_cell(r)} |"
        )
    return "\n".join(lines) + "\n"


def _to_target_cell(row: dict) -> str:
    if "warm_iterations_to_target" not in row:
        return "—"
    if row["warm_iterations_to_target"] is None:
        return "not reached in 300 iterations"
    return f"{row['warm_update_s']} ({row['warm_iterations_to_target']}; {row['volumes_per_s']})"


def _compiled_cell(row: dict) -> str:
    rates = row.get("compiled_iters_per_s")
    if not rates:
        return "—"
    compile_s = row.get("compile_s", {})
    return " / ".join(
        f"{mode} {rate}" + (f" ({compile_s[mode]} s)" if mode in compile_s else "") for mode, rate in rates.items()
    )


def main(json_path: Path | None = None, full: bool = False, markdown: Path | None = None, device: str | None = None,
         threads: int | None = None) -> int:
    """``nvplive bench speed``; returns the exit status."""
    start = time.perf_counter()
    rows = run_speed(full=full, progress=lambda s: print(s, file=sys.stderr), device=device, threads=threads)
    publish(markdown_table(rows, time.perf_counter() - start), rows, json_path, markdown)
    return 0
