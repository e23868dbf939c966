"""Shared helpers of the acquisition tests: a tiny simulated microscope."""

from __future__ import annotations

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


def tiny_core(views: int = 3, *, exposure_ms: float = 2.0, triggered: bool = True, **scene_options):
    scene = tiny_scene(views, **scene_options)
    core, info = build_demo_core(scene, exposure_ms=exposure_ms, triggered=triggered)
    return core, info, scene


def chi2_per_pixel(frame: np.ndarray, expected_e: np.ndarray, offset: float, read_noise: float) -> tuple[float, float]:
    """(mean normalised residual, mean squared normalised residual) under the camera noise model.

    For ``frame = offset + Poisson(E) + N(0, σ²)`` (gain 1, rounded) the normalised
    residual ``(frame − offset − E)/sqrt(E + σ² + 1/12)`` has mean 0 and variance 1.
    """
    r = (frame.astype(np.float64) - offset - expected_e) / np.sqrt(expected_e + read_noise**2 + 1.0 / 12.0)
    return float(r.mean()), float((r**2).mean())
