"""Shared helpers of the acquisition tests: a tiny simulated microscope."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nvplive.acquisition.devices import SimulatedScene
from nvplive.acquisition.microscope import build_demo_core
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.phantoms import Cardiomyocyte
from nvplive.recon.simulate import PartialCoherence, default_sources

SHAPE = (16, 32, 32)
VOXEL = (0.25, 0.25, 0.25)
FAST = PartialCoherence(n_wavelengths=1, n_subsources=1)


def tiny_scene(views: int = 3, *, seed: int = 0, **options) -> SimulatedScene:
    """A 16×32×32 voxel (0.25 µm) scene with the beating cardiomyocyte and fast coherence."""
    geometry = VolumeGeometry(SHAPE, VOXEL)
    options.setdefault("coherence", FAST)
    return SimulatedScene(
        Optics(),
        geometry,
        default_sources(geometry, views, seed=seed),
        Cardiomyocyte(SHAPE, VOXEL, seed=seed),
        seed=seed,
        **options,
    )


def tiny_core(views: int = 3, *, exposure_ms: float = 2.0, triggered: bool = True, pixel_size_um: float | None = None,
              bit_depth: int | None = None, **scene_options):
    scene = tiny_scene(views, **scene_options)
    core, info = build_demo_core(scene, exposure_ms=exposure_ms, triggered=triggered, pixel_size_um=pixel_size_um,
                                 bit_depth=bit_depth)
    return core, info, scene


def chi2_per_pixel(frame: np.ndarray, expected_e: np.ndarray, offset: float, read_noise: float) -> tuple[float, float]:
    """(mean normalised residual, mean squared normalised residual) under the camera noise model.

    For ``frame = offset + Poisson(E) + N(0, σ²)`` (gain 1, rounded) the normalised
    residual ``(frame − offset − E)/sqrt(E + σ² + 1/12)`` has mean 0 and variance 1.
    """
    r = (frame.astype(np.float64) - offset - expected_e) / np.sqrt(expected_e + read_noise**2 + 1.0 / 12.0)
    return float(r.mean()), float((r**2).mean())


REPO = Path(__file__).resolve().parents[2]


@contextmanager
def script_process(script: Path, *args: str) -> Iterator[subprocess.Popen]:
    """Run ``python script args…`` from the repository (stdout+stderr piped, text); killed on exit."""
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def kill_9(proc: subprocess.Popen) -> None:
    """``kill -9`` a process that must still be running (else its output is the failure message)."""
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
