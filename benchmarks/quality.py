"""``nvplive bench quality``: Δn quality of NVP against the baselines (results: BENCHMARKS.md).

Synthetic data: phantoms ``cell`` and ``tissue`` simulated with partial coherence
and camera noise, 6, 7 and 20 views; methods NVP, Explicit, Triplane; ablations of
NVP at 6 views (no self-calibration, no coherence mask, no coarse-to-fine, no feature
planes, no TV, and a broad emission band with and without the coherence mask);
and the warm-start target (iterations a warm update needs to reach the cold-start
quality of a timepoint of the beating cardiomyocyte). Runs are spread over worker
processes (one torch thread each).
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import publish

PAPER_6_VIEWS = {"explicit": 28.62, "triplane": 28.73, "nvp": 30.73}
#: Diameter of the simulated beads (µm, two emitters each); the reconstruction is told it, as
#: a user reads it from the beads' label and a recording states it (``ReconConfig.bead_diameter_um``).
BEAD_DIAMETER_UM = 0.2


@dataclass(frozen=True)
class QualitySize:
    """Problem size of the quality benchmark: grid, voxel (µm), iteration budgets."""
    shape_zyx: tuple[int, int, int]
    voxel_um: float
    iterations: int
    warm_iterations: int
    source_depth_fraction: float = 1.5


#: Beads lie ``source_depth_fraction`` × the volume thickness below it (6 µm for the
#: default 4 µm volume). The source's light fills a cone of half-angle asin(NA/n)
#: ≈ 37°: with beads 1 µm below, most voxels of the lower half are lit by one view
#: only (no angular diversity, no axial localisation, 40 % of the cell's voxels lit
#: by ≥ 2 of 6 views); at 6 µm every voxel is lit by ≥ 3 of 6 views from directions
#: up to ~25° apart, and the longer path also shrinks the bead's angular size.
DEFAULT_SIZE = QualitySize((16, 40, 40), 0.25, 300, 60)
FULL_SIZE = QualitySize((48, 128, 128), 0.2, 1500, 300)


def _sources(geometry, views: int, size: QualitySize, seed: int = 0):
    from nvplive.recon.simulate import default_sources

    depth = size.source_depth_fraction * geometry.shape_zyx[0] * geometry.voxel_um_zyx[0]
    return default_sources(geometry, views, depth_um=depth, seed=seed)

ABLATIONS = {
    "no self-calibration": {"self_calibration": False},
    "no coherence mask": {"coherence_mask": False},
    "no coarse-to-fine": {"coarse_to_fine": False},
    "no feature planes": {"feature_planes": False},
    "no TV": {"tv_weight": 0.0},
}


#: NVP at 6 views on frames of a broad emission band (Δλ = 150 nm instead of 30 nm, 5
#: wavelengths simulated), where partial coherence washes out much of what the coherent
#: model predicts: with and without the coherence mask.
BROADBAND_FWHM_UM = 0.15
BROADBAND = {
    "broad band (Δλ 150 nm)": {},
    "broad band, no coherence mask": {"coherence_mask": False},
}


def _setup(phantom: str, views: int, size: QualitySize, seed: int = 0, broadband: bool = False):
    from nvplive.recon.optics import Optics, VolumeGeometry
    from nvplive.recon.phantoms import make_phantom
    from nvplive.recon.simulate import CameraModel, PartialCoherence, Simulator

    optics = Optics(emission_fwhm_um=BROADBAND_FWHM_UM) if broadband else Optics()
    coherence = PartialCoherence(5 if broadband else 3, BEAD_DIAMETER_UM, 2)
    geometry = VolumeGeometry(size.shape_zyx, (size.voxel_um,) * 3)
    sources = _sources(geometry, views, size, seed=seed)
    truth = make_phantom(phantom, geometry.shape_zyx, geometry.voxel_um_zyx, seed=seed)
    sim = Simulator(optics, geometry, sources, coherence=coherence, camera=CameraModel(), seed=seed)
    frames = sim.frames(truth, np.random.default_rng(seed))
    return optics, geometry, sources, truth, frames


def _run(task: dict) -> list[dict]:
    """One reconstruction; returns rows for both metric protocols."""
    import torch

    torch.set_num_threads(1)
    from nvplive.recon.metrics import absolute_scores, published_scores
    from nvplive.recon.reconstructor import ReconConfig, Reconstructor

    size = QualitySize(**task["size"])
    optics, geometry, sources, truth, frames = _setup(task["phantom"], task["views"], size, broadband=task.get("broadband", False))
    config = replace(ReconConfig(method=task["method"], iterations=size.iterations, bead_diameter_um=BEAD_DIAMETER_UM),
                     **task["options"])
    rec = Reconstructor(optics, geometry, sources, camera_offset=100.0, config=config, device="cpu")
    start = time.perf_counter()
    result = rec.cold_start(frames)
    seconds = time.perf_counter() - start
    rows = []
    for protocol, scores in (("absolute", absolute_scores(result.dn, truth)), ("published", published_scores(result.dn, truth))):
        rows.append(
            {
                "phantom": task["phantom"],
                "views": task["views"],
                "method": task["method"],
                "variant": task["variant"],
                "protocol": protocol,
                "psnr_db": round(float(scores.psnr_db), 3),
                "ssim": round(float(scores.ssim), 4),
                "iterations": result.iterations,
                "seconds": round(seconds, 2),
                "device": "cpu",
            }
        )
    return rows


def _warm_start(size_dict: dict) -> dict:
    """Iterations a warm update needs to reach the cold-start quality of the next timepoint."""
    import torch

    torch.set_num_threads(1)
    from nvplive.recon.optics import Optics, VolumeGeometry
    from nvplive.recon.phantoms import Cardiomyocyte
    from nvplive.recon.reconstructor import ReconConfig
    from nvplive.recon.simulate import PartialCoherence, Simulator

    size = QualitySize(**size_dict)
    optics = Optics()
    geometry = VolumeGeometry(size.shape_zyx, (size.voxel_um,) * 3)
    sources = _sources(geometry, 7, size, seed=0)
    phantom = Cardiomyocyte(geometry.shape_zyx, geometry.voxel_um_zyx, seed=0)
    sim = Simulator(optics, geometry, sources, coherence=PartialCoherence(3, BEAD_DIAMETER_UM, 2), seed=0)
    rng = np.random.default_rng(0)
    t0, t1 = 0.0, 0.1
    frames0, frames1 = sim.frames(phantom.at(t0), rng), sim.frames(phantom.at(t1), rng)
    truth1 = phantom.at(t1)
    cfg = ReconConfig(iterations=size.iterations, bead_diameter_um=BEAD_DIAMETER_UM)
    return warm_iterations_to_cold_quality(optics, geometry, sources, frames0, frames1, truth1, cfg, camera_offset=100.0)


def warm_iterations_to_cold_quality(
    optics, geometry, sources, frames0, frames1, truth1, config, *, camera_offset: float, device: str = "cpu", state=None
) -> dict:
    """Iterations a warm update from timepoint 0 needs to reach the Δn PSNR (absolute) that a
    cold start of ``config.iterations`` reaches on timepoint 1 (checked every 1/50 of them).

    ``state``: the warm-start state after a cold start on ``frames0`` when the caller has it.
    """
    from dataclasses import replace

    from nvplive.recon.loop import IterationBudget
    from nvplive.recon.metrics import absolute_scores
    from nvplive.recon.reconstructor import Reconstructor

    cfg = replace(config, warm_budget=IterationBudget(config.iterations, stop_on_plateau=False))
    cold = Reconstructor(optics, geometry, sources, camera_offset=camera_offset, config=cfg, device=device)
    target = absolute_scores(cold.cold_start(frames1).dn, truth1).psnr_db
    warm = Reconstructor(optics, geometry, sources, camera_offset=camera_offset, config=cfg, device=device)
    if state is None:
        warm.cold_start(frames0)
        state = warm.snapshot()
    step = max(1, cfg.iterations // 50)
    needed = None
    done = 0
    warm.load_state(state)
    warm.with_config(warm_budget=IterationBudget(step, stop_on_plateau=False))
    while done < cfg.iterations:
        result = warm.warm_update(frames1)
        done += result.iterations
        if absolute_scores(result.dn, truth1).psnr_db >= target:
            needed = done
            break
    return {
        "cold_iterations": cfg.iterations,
        "cold_psnr_db": round(float(target), 3),
        "warm_iterations_to_cold_quality": needed,
        "fraction": None if needed is None else round(needed / cfg.iterations, 3),
    }


def run_quality(full: bool = False, workers: int | None = None, progress=print) -> tuple[list[dict], dict]:
    """Reconstruct the cell and tissue phantoms with every method; returns the rows and the warm-start row."""
    size = FULL_SIZE if full else DEFAULT_SIZE
    size_dict = asdict(size)
    tasks = []
    for phantom in ("cell", "tissue"):
        for views in (6, 7, 20):
            for method in ("nvp", "explicit", "triplane"):
                tasks.append({"phantom": phantom, "views": views, "method": method, "variant": "full", "options": {}, "size": size_dict})
        for variant, options in ABLATIONS.items():
            tasks.append({"phantom": phantom, "views": 6, "method": "nvp", "variant": variant, "options": options, "size": size_dict})
        for variant, options in BROADBAND.items():
            tasks.append({"phantom": phantom, "views": 6, "method": "nvp", "variant": variant, "options": options,
                          "size": size_dict, "broadband": True})
    if workers is None:  # one single-threaded process per thread of the CPU thread policy
        from nvplive.recon.reconstructor import cpu_threads

        workers = cpu_threads()[0]
    workers = max(1, min(len(tasks), workers))
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        warm_future = pool.submit(_warm_start, size_dict)
        futures = [pool.submit(_run, task) for task in tasks]
        for i, fut in enumerate(futures):
            rows.extend(fut.result())
            t = tasks[i]
            progress(f"[{i + 1}/{len(tasks)}] {t['phantom']} {t['views']} views {t['method']} {t['variant']}: "
                     f"{rows[-1]['psnr_db']:.2f} dB published, {rows[-2]['psnr_db']:.2f} dB absolute")
        warm = warm_future.result()
    return rows, warm


def _lookup(rows, phantom, views, method, variant, protocol):
    for r in rows:
        if (r["phantom"], r["views"], r["method"], r["variant"], r["protocol"]) == (phantom, views, method, variant, protocol):
            return r
    return None


def markdown_table(rows: list[dict], warm: dict, seconds: float, full: bool) -> str:
    """The Markdown table of :func:`run_quality`'s rows (BENCHMARKS.md)."""
    size = FULL_SIZE if full else DEFAULT_SIZE
    lines = [
        f"### Quality ({time.strftime('%Y-%m-%d')}, `nvplive bench quality{' --full' if full else ''}`)",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch threads 1 per worker; "
        f"volume {size.shape_zyx[0]}×{size.shape_zyx[1]}×{size.shape_zyx[2]} voxels of {size.voxel_um} µm, "
        f"beads of {BEAD_DIAMETER_UM} µm (told to the reconstruction) {size.source_depth_fraction}× the volume depth below it, "
        f"{size.iterations} cold iterations, `reconstruct`'s defaults otherwise (pupil and source calibration on); "
        f"wall time {seconds / 60:.1f} min.",
        "",
        "| phantom | views | protocol | NVP PSNR / SSIM | Explicit | Triplane | NVP − best baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    targets = []
    for phantom in ("cell", "tissue"):
        for views in (6, 7, 20):
            for protocol in ("published", "absolute"):
                cells = {m: _lookup(rows, phantom, views, m, "full", protocol) for m in ("nvp", "explicit", "triplane")}
                fmt = {m: f"{c['psnr_db']:.2f} / {c['ssim']:.3f}" for m, c in cells.items()}
                margin = cells["nvp"]["psnr_db"] - max(cells["explicit"]["psnr_db"], cells["triplane"]["psnr_db"])
                lines.append(f"| {phantom} | {views} | {protocol} | {fmt['nvp']} | {fmt['explicit']} | {fmt['triplane']} | {margin:+.2f} dB |")
        for protocol in ("published",):
            nvp6 = _lookup(rows, phantom, 6, "nvp", "full", protocol)["psnr_db"]
            exp6 = _lookup(rows, phantom, 6, "explicit", "full", protocol)["psnr_db"]
            exp20 = _lookup(rows, phantom, 20, "explicit", "full", protocol)["psnr_db"]
            beats = all(
                _lookup(rows, phantom, v, "nvp", "full", protocol)["psnr_db"]
                > max(_lookup(rows, phantom, v, m, "full", protocol)["psnr_db"] for m in ("explicit", "triplane"))
                for v in (6, 7, 20)
            )
            targets.append(f"- {phantom}: NVP beats both baselines at every view count: {'met' if beats else 'MISSED'}; "
                           f"NVP − Explicit at 6 views {nvp6 - exp6:+.2f} dB (target ≥ +1.5: {'met' if nvp6 - exp6 >= 1.5 else 'MISSED'}); "
                           f"NVP@6 {nvp6:.2f} vs Explicit@20 {exp20:.2f} dB ({'met' if nvp6 >= exp20 else 'MISSED'}).")
    lines += ["", "Ablations of NVP at 6 views (published protocol PSNR / SSIM; absolute PSNR):", "",
              "| phantom | variant | PSNR | SSIM | absolute PSNR |", "|---|---|---|---|---|"]
    for phantom in ("cell", "tissue"):
        for variant in ["full", *ABLATIONS, *BROADBAND]:
            r = _lookup(rows, phantom, 6, "nvp", variant, "published")
            a = _lookup(rows, phantom, 6, "nvp", variant, "absolute")
            lines.append(f"| {phantom} | {variant} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {a['psnr_db']:.2f} |")
    frac = warm["fraction"]
    lines += [
        "",
        f"Paper (6 views, published protocol, their data): Explicit {PAPER_6_VIEWS['explicit']}, Triplane {PAPER_6_VIEWS['triplane']}, NVP {PAPER_6_VIEWS['nvp']} dB.",
        "",
        "Targets (published protocol):",
        *targets,
        f"- Warm start (cardiomyocyte, 7 views, next timepoint 0.1 s later): cold start reaches {warm['cold_psnr_db']} dB (absolute) "
        f"in {warm['cold_iterations']} iterations; warm start reaches it in "
        f"{warm['warm_iterations_to_cold_quality']} iterations ({'n/a' if frac is None else f'{100 * frac:.0f} %'}; target ≤ 20 %: "
        f"{'met' if frac is not None and frac <= 0.2 else 'MISSED'}).",
        "",
    ]
    return "\n".join(lines)


def main(json_path: Path | None = None, full: bool = False, markdown: Path | None = None, threads: int | None = None) -> int:
    """``nvplive bench quality``; returns the exit status. ``threads``: worker processes of one torch thread each
    (default: the CPU thread policy, cpu_threads)."""
    start = time.perf_counter()
    rows, warm = run_quality(full=full, workers=threads)
    seconds = time.perf_counter() - start
    publish(markdown_table(rows, warm, seconds, full), rows, json_path, markdown)
    return 0
