"""The renderer and the reconstruction on a CUDA device give what they give on the CPU.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``pytest tests/recon/test_cuda.py`` (BENCHMARKS.md records the runs). The CPU results are
the ones the physics tests check against analytic solutions, so agreement with them is
what a CUDA run has to show: cuFFT and the CPU's FFT differ only by rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvplive.recon import physics
from nvplive.recon.metrics import absolute_scores
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.reconstructor import ReconConfig, Reconstructor
from nvplive.recon.simulate import CameraModel, Instrument, PartialCoherence, Simulator, default_sources

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

OPTICS = Optics()
GEOMETRY = VolumeGeometry((12, 32, 32), (0.25, 0.25, 0.25))
#: A pupil unlike the renderer's default: aberrated, apodised, light beyond the NA dimmed.
PUPIL = PupilParameters(zernike_rad=(0.0, 0.0, 0.1, 0.05, -0.05, 0.0, 0.0, 0.0, 0.0, 0.2), apodisation=(-0.15,),
                        source_beyond_na=0.5, source_rim_width=0.05)


def phantom(geometry: VolumeGeometry = GEOMETRY) -> np.ndarray:
    """A sphere of Δn 0.03 (radius 1 µm) off the axis, smooth edge."""
    nz, ny, nx = geometry.shape_zyx
    d = geometry.voxel_um_zyx[0]
    z, y, x = np.meshgrid(*(np.arange(n) for n in (nz, ny, nx)), indexing="ij")
    r = np.sqrt((z - nz / 2) ** 2 + (y - ny * 0.4) ** 2 + (x - nx * 0.6) ** 2) * d
    return (0.03 * np.clip(0.5 + (1.0 - r) / d, 0, 1)).astype(np.float32)


def rendered(device: str, dtype: torch.dtype, requires_grad: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The images of :func:`phantom` through :data:`PUPIL` on ``device`` and the leaves they depend on."""
    sources = default_sources(GEOMETRY, 5, seed=2)
    model = physics.ForwardModel.build(OPTICS, GEOMETRY, source_depth_um=float(-sources[:, 2].min()) + 1.0, device=device, dtype=dtype)
    dn = torch.tensor(phantom(), dtype=dtype, device=device, requires_grad=requires_grad)
    src = torch.tensor(sources, dtype=dtype, device=device, requires_grad=requires_grad)
    zernike = torch.tensor(PUPIL.zernike_rad, dtype=dtype, device=device, requires_grad=requires_grad)
    apodisation = torch.tensor(PUPIL.apodisation, dtype=dtype, device=device, requires_grad=requires_grad)
    beyond = torch.tensor(PUPIL.source_beyond_na, dtype=dtype, device=device, requires_grad=requires_grad)
    model = physics.with_source_edge(model, None, beyond, PUPIL.source_rim_width)
    pupil = physics.pupil_on_grid(model, (zernike, apodisation))
    return physics.render(model, dn, src, pupil=pupil), [dn, src, zernike, apodisation, beyond]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_the_images_on_cuda_are_the_cpus(dtype, tolerance):
    with torch.no_grad():
        cpu, _ = rendered("cpu", dtype)
        gpu, _ = rendered("cuda", dtype)
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < tolerance


def test_the_gradients_on_cuda_are_the_cpus():
    """Gradients in Δn, the source positions, the pupil's coefficients and the light beyond the NA."""
    grads = {}
    for device in ("cpu", "cuda"):
        images, leaves = rendered(device, torch.float64, requires_grad=True)
        weights = torch.linspace(0.5, 1.5, images.numel(), dtype=torch.float64, device=device).reshape(images.shape)
        (images * weights).sum().backward()
        grads[device] = [leaf.grad.cpu() for leaf in leaves]
    for cpu, gpu in zip(grads["cpu"], grads["cuda"], strict=True):
        assert float(cpu.norm()) > 0
        assert float((gpu - cpu).norm() / cpu.norm()) < 1e-8


def test_a_cold_start_on_cuda_reconstructs_what_the_cpu_does():
    """One recording from an instrument unlike the renderer (apodised, aberrated, a source cone
    to 0.98·n, two propagation steps per voxel, shot noise), reconstructed with self-calibration on both devices: both beat the
    all-zero volume by a margin and land within 0.5 dB of each other (float32 rounding in
    150 Adam steps takes them apart a little, not far)."""
    dn = phantom()
    sources = default_sources(GEOMETRY, 7, seed=1)
    instrument = Instrument("test", PUPIL, 0.98 * OPTICS.n_medium, 2)
    simulator = Simulator(OPTICS, GEOMETRY, sources, photons=5000.0, coherence=PartialCoherence(1, 0.0, 1),
                          camera=CameraModel(offset=100.0), seed=0, instrument=instrument)
    frames = simulator.frames(dn, np.random.default_rng(0))
    zero = absolute_scores(np.zeros_like(dn), dn).psnr_db
    scores = {}
    for device in ("cpu", "cuda"):
        rec = Reconstructor(OPTICS, GEOMETRY, sources, camera_offset=100.0, config=ReconConfig(iterations=150, seed=0),
                            device=device)
        result = rec.cold_start(frames)
        assert result.dn.dtype == np.float32 and result.dn.shape == GEOMETRY.shape_zyx
        scores[device] = absolute_scores(result.dn, dn).psnr_db
    assert scores["cuda"] > zero + 3.0
    assert abs(scores["cuda"] - scores["cpu"]) < 0.5


def test_a_warm_update_on_cuda_continues_from_the_cold_start():
    sources = default_sources(GEOMETRY, 7, seed=1)
    simulator = Simulator(OPTICS, GEOMETRY, sources, photons=5000.0, coherence=PartialCoherence(1, 0.0, 1),
                          camera=CameraModel(offset=0.0, gain=1.0, read_noise=0.0), seed=0)
    dn = phantom()
    rec = Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(iterations=150, seed=0), device="cuda")
    cold = rec.cold_start(simulator.expected(dn))
    warm = rec.warm_update(simulator.expected(np.roll(dn, 1, axis=2)))
    assert warm.warm and warm.iterations > 0
    assert warm.losses[0] < cold.losses[0]
