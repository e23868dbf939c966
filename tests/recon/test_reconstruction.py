"""Reconstruction engine: recovery of a known phantom, self-calibration, warm start,
coherence mask, and one code path for every representation (issue 3)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from nvplive.errors import ReconstructionError
from nvplive.recon.loop import IterationBudget, settled_loss
from nvplive.recon.metrics import absolute_scores
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.reconstructor import ReconConfig, Reconstructor
from nvplive.recon.representations import REPRESENTATIONS
from nvplive.recon.simulate import CameraModel, PartialCoherence, Simulator, default_sources

OPTICS = Optics()
GEOMETRY = VolumeGeometry((12, 32, 32), (0.25, 0.25, 0.25))
COHERENT = PartialCoherence(1, 0.0, 1)
NOISELESS = CameraModel(offset=0.0, gain=1.0, read_noise=0.0)


def two_spheres(geometry: VolumeGeometry = GEOMETRY) -> tuple[np.ndarray, list[np.ndarray]]:
    """Spheres of Δn 0.02 and 0.04 (radius 1 µm), smooth edges; returns Δn and centres (voxels)."""
    nz, ny, nx = geometry.shape_zyx
    d = geometry.voxel_um_zyx[0]
    z, y, x = np.meshgrid(*(np.arange(n) for n in (nz, ny, nx)), indexing="ij")
    centres = [np.array([nz / 2 - 0.5, ny / 2 - 0.5, nx * 0.3]), np.array([nz / 2 - 0.5, ny / 2 - 0.5, nx * 0.7])]
    dn = np.zeros(geometry.shape_zyx, np.float32)
    for value, c in zip((0.02, 0.04), centres):
        r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) * d
        dn += value * np.clip(0.5 + (1.0 - r) / d, 0, 1)
    return dn, centres


def noiseless_frames(dn: np.ndarray, sources: np.ndarray, coherence: PartialCoherence = COHERENT) -> np.ndarray:
    sim = Simulator(OPTICS, GEOMETRY, sources, photons=5000.0, coherence=coherence, camera=NOISELESS, seed=0)
    return sim.expected(dn)


@pytest.fixture(scope="module")
def spheres_case():
    dn, centres = two_spheres()
    sources = default_sources(GEOMETRY, 7, seed=1)
    frames = noiseless_frames(dn, sources)
    rec = Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(iterations=150, depth_starts_um=(0.0,)), device="cpu")
    result = rec.cold_start(frames)
    return dn, centres, sources, frames, rec, result


def test_two_spheres_are_recovered(spheres_case):
    dn, centres, _, _, _, result = spheres_case
    rec = result.dn
    labels, n = ndimage.label(rec > 0.3 * rec.max())
    sizes = ndimage.sum(np.ones_like(rec), labels, range(1, n + 1))
    biggest = np.argsort(sizes)[::-1][:2] + 1
    found = [np.array(ndimage.center_of_mass(rec, labels, i)) for i in biggest]
    for c in centres:
        # lateral position within one voxel; axial within the missing-cone elongation
        best = min(found, key=lambda f: np.linalg.norm(f[1:] - c[1:]))
        assert np.linalg.norm(best[1:] - c[1:]) <= 1.0
        assert abs(best[0] - c[0]) <= 2.0
    weak = rec[tuple(np.round(centres[0]).astype(int))]
    strong = rec[tuple(np.round(centres[1]).astype(int))]
    assert strong > weak > 0.005
    assert absolute_scores(rec, dn).psnr_db > absolute_scores(np.zeros_like(dn), dn).psnr_db + 3.0


def test_loss_decreases_and_result_is_reported(spheres_case):
    *_, result = spheres_case
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.iterations == 150 and not result.flagged and not result.warm
    assert result.dn.dtype == np.float32 and result.dn.shape == GEOMETRY.shape_zyx


def test_self_calibration_recovers_displaced_sources():
    dn, _ = two_spheres()
    true_sources = default_sources(GEOMETRY, 6, seed=2)
    frames = noiseless_frames(dn, true_sources)
    rng = np.random.default_rng(0)
    displaced = true_sources.copy()
    angles = rng.uniform(0, 2 * np.pi, len(displaced))
    displaced[:, 0] += 1.3 * np.cos(angles)
    displaced[:, 1] += 1.3 * np.sin(angles)
    before = np.hypot(*(displaced[:, :2] - true_sources[:, :2]).T)
    assert before.min() > 1.0
    rec = Reconstructor(OPTICS, GEOMETRY, displaced, config=ReconConfig(iterations=60, pupil_calibration=False), device="cpu")
    result = rec.cold_start(frames)
    after = np.hypot(*(result.sources_um_xyz[:, :2] - true_sources[:, :2]).T)
    assert after.max() < 0.2
    # brightness and background are calibrated per view, not assumed equal
    assert np.ptp(result.brightness) > 0


def test_view_without_source_is_refused():
    dn, _ = two_spheres()
    sources = default_sources(GEOMETRY, 3, seed=0)
    frames = noiseless_frames(dn, sources)
    frames[1] = 5.0
    rec = Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(iterations=5), device="cpu")
    with pytest.raises(ReconstructionError, match="View 1"):
        rec.cold_start(frames)


def test_warm_start_reaches_cold_loss_in_far_fewer_iterations():
    dn, _ = two_spheres()
    sources = default_sources(GEOMETRY, 7, seed=1)
    moved = np.roll(dn, 1, axis=2)  # the specimen moved by one voxel
    frames0, frames1 = noiseless_frames(dn, sources), noiseless_frames(moved, sources)
    # the warm update runs only as long as it may take to reach the cold start's loss
    config = ReconConfig(iterations=200, warm_budget=IterationBudget(80, stop_on_plateau=False), check_every=5, pupil_calibration=False,
                         depth_starts_um=(0.0,))
    cold = Reconstructor(OPTICS, GEOMETRY, sources, config=config, device="cpu")
    cold_loss = cold.cold_start(frames1).loss
    warm = Reconstructor(OPTICS, GEOMETRY, sources, config=config, device="cpu")
    warm.cold_start(frames0)
    result = warm.warm_update(frames1)
    assert result.warm
    losses = np.array(result.losses)
    reached = np.nonzero(losses <= cold_loss)[0]
    assert reached.size > 0, "warm start never reached the cold-start loss"
    assert reached[0] + 1 <= 0.4 * config.iterations


def _broadband_case():
    """Two spheres, 6 beads 6 µm below the volume, a 150 nm wide emission band (5 wavelengths
    simulated), shot and read noise: the coherent model misses the washed-out fringes."""
    from dataclasses import replace

    optics = replace(OPTICS, emission_fwhm_um=0.15)
    dn, _ = two_spheres()
    sources = default_sources(GEOMETRY, 6, depth_um=6.0, seed=1)
    sim = Simulator(optics, GEOMETRY, sources, photons=3000.0, coherence=PartialCoherence(5, 0.0, 1), camera=CameraModel(), seed=0)
    return optics, dn, sources, sim.frames(dn, np.random.default_rng(0))


def test_coherence_mask_lowers_the_dn_error_on_polychromatic_frames():
    optics, dn, sources, frames = _broadband_case()
    rmse = {}
    for mask in (True, False):
        config = ReconConfig(iterations=150, coherence_mask=mask, pupil_calibration=False, depth_starts_um=(0.0,))
        result = Reconstructor(optics, GEOMETRY, sources, camera_offset=100.0, config=config, device="cpu").cold_start(frames)
        rmse[mask] = float(np.sqrt(np.mean((result.dn - dn) ** 2)))
    # measured 0.0026 with the mask against 0.0141 without while the source spectrum stopped
    # at the NA (a smooth pupil); with the wide source cone and hard pupil (issue 13) the
    # unmasked fit is much better and the margin smaller: 0.0035 against 0.0058
    assert rmse[True] < 0.75 * rmse[False], rmse


def test_coherence_weights_discount_where_the_band_washes_fringes_out():
    """Weights are σ²/(σ² + d²): ≈ 1 where coherent and band-summed images agree, small where
    they differ by many noise levels; no weighting for a monochromatic source."""
    from dataclasses import replace

    optics, dn, sources, frames = _broadband_case()
    rec = Reconstructor(optics, GEOMETRY, sources, camera_offset=100.0, device="cpu")
    measured, scale = rec._measured(frames)
    src = torch.as_tensor(sources, dtype=torch.float32)
    ones = torch.ones(len(sources))
    truth = torch.as_tensor(dn)
    from nvplive.recon.physics import render

    with torch.no_grad():  # brightness that puts the model images at the measured level
        b = scale / render(rec.model, truth, src).mean(dim=(1, 2))
        coherent = render(rec.model, truth, src, b)
        band = sum(a * render(m, truth, src, b) for m, a in rec._spectral())
    weights = rec._coherence_weights(truth, src, b, 0 * ones, measured, scale)
    assert weights.shape == measured.shape and float(weights.min()) >= 0 and float(weights.max()) <= 1
    # median 0.50 with the wide source cone and hard pupil (issue 13), 0.5+ before
    assert float(weights.min()) < 0.2 and float(np.median(weights.numpy())) > 0.4
    d = (coherent - band).abs()  # the weights fall where the two models disagree most
    assert float(weights[d > d.quantile(0.99)].mean()) < float(weights[d < d.quantile(0.5)].mean())
    line = Reconstructor(replace(optics, emission_fwhm_um=0.0), GEOMETRY, sources, camera_offset=100.0, device="cpu")
    assert line._coherence_weights(truth, src, ones, 0 * ones, measured, scale) is None
    off = Reconstructor(optics, GEOMETRY, sources, camera_offset=100.0, config=ReconConfig(coherence_mask=False), device="cpu")
    assert off._coherence_weights(truth, src, ones, 0 * ones, measured, scale) is None


@pytest.mark.parametrize("method", sorted(REPRESENTATIONS))
def test_every_representation_runs_the_same_loop(method):
    dn, _ = two_spheres()
    sources = default_sources(GEOMETRY, 6, seed=1)
    frames = noiseless_frames(dn, sources)
    rec = Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(method=method, iterations=30, warm_budget=IterationBudget(10), pupil_calibration=False,
                                                                          depth_starts_um=(0.0,)), device="cpu")
    first = rec.cold_start(frames)
    second = rec.warm_update(frames)
    assert second.warm and second.iterations <= 10
    assert second.losses[-1] <= first.losses[0]
    assert first.dn.shape == GEOMETRY.shape_zyx and (first.dn >= 0).all()
    state = rec.snapshot()
    other = Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(method=method), device="cpu")
    other.load_state(state)
    assert np.allclose(other.representation().detach().numpy(), rec.representation().detach().numpy())


def test_reproducible_under_a_seed():
    dn, _ = two_spheres()
    sources = default_sources(GEOMETRY, 6, seed=1)
    frames = noiseless_frames(dn, sources)
    runs = [Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(iterations=20, seed=3, pupil_calibration=False), device="cpu").cold_start(frames).dn for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


SMALL = VolumeGeometry((8, 24, 24), (0.25, 0.25, 0.25))


def _small_runs(compile_mode: str | None) -> tuple[Reconstructor, list]:
    """Cold start + one warm update on a small volume holding a box of Δn 0.03 (3 views)."""
    dn = np.zeros(SMALL.shape_zyx, np.float32)
    dn[2:6, 8:14, 6:12] = 0.03
    sources = default_sources(SMALL, 3, seed=1)
    frames = Simulator(OPTICS, SMALL, sources, photons=5000.0, coherence=COHERENT, camera=NOISELESS, seed=0).expected(dn)
    config = ReconConfig(iterations=30, warm_budget=IterationBudget(10, stop_on_plateau=False), compile_mode=compile_mode, pupil_calibration=False,
                         depth_starts_um=(0.0,))
    rec = Reconstructor(OPTICS, SMALL, sources, config=config, device="cpu")
    return rec, [rec.cold_start(frames), rec.warm_update(frames)]


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_iterations_give_the_eager_result():
    import torch._dynamo.utils

    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    rec, compiled = _small_runs("default")
    assert rec.compile_failure is None and all(r.message == "" for r in compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before  # it really compiled
    _, eager = _small_runs(None)
    for c, e in zip(compiled, eager):
        assert c.iterations == e.iterations
        np.testing.assert_allclose(c.losses, e.losses, rtol=1e-3)
        np.testing.assert_allclose(c.dn, e.dn, atol=1e-3 * float(np.abs(e.dn).max()))


def test_a_failed_compilation_falls_back_to_eager_and_says_so():
    rec, results = _small_runs("no-such-mode")
    _, eager = _small_runs(None)
    assert "no-such-mode" in rec.compile_failure
    assert all("torch.compile failed" in r.message and "runs eagerly" in r.message for r in results)
    np.testing.assert_array_equal(results[1].dn, eager[1].dn)
    rec.with_config(compile_mode=None)  # a new mode starts afresh: no stale failure
    frames = Simulator(OPTICS, SMALL, rec.nominal_sources, photons=5000.0, coherence=COHERENT, camera=NOISELESS,
                       seed=0).expected(np.zeros(SMALL.shape_zyx, np.float32))
    assert rec.warm_update(frames).message == "" and rec.compile_failure is None


@pytest.mark.parametrize("method", sorted(REPRESENTATIONS))
def test_an_iteration_stays_on_the_device_and_never_synchronises(method):
    """One iteration (loss, backward, optimiser step, projection) on PyTorch's ``meta``
    device, which has no data: a tensor created on the CPU by mistake raises a device
    mismatch, and a host synchronisation (``.item()``, ``bool()``, data-dependent Python
    branching) raises too. This is the CUDA path's iteration, checked without a GPU."""
    from nvplive.recon.losses import gaussian_window
    from nvplive.recon.physics import ForwardModel
    from nvplive.recon.reconstructor import fit_loss
    from nvplive.recon.representations import make_representation

    meta = torch.device("meta")
    model = ForwardModel.build(OPTICS, SMALL, source_depth_um=2.0, device=meta)
    rep = make_representation(method, SMALL.shape_zyx).to(meta)
    sources = torch.zeros(3, 3, device=meta, requires_grad=True)  # no values: inside or below is undecidable
    brightness = torch.ones(3, device=meta, requires_grad=True)
    background = torch.zeros(3, device=meta, requires_grad=True)
    target = torch.ones(3, *SMALL.camera_shape_yx, device=meta)
    optimizer = torch.optim.Adam(rep.parameter_groups(0.04))
    for mask in (None, torch.ones_like(target)):
        loss = fit_loss(model, rep, sources, brightness, background, target.mean(dim=(1, 2)), target, mask,
                        target.amax(), gaussian_window(device=meta), 4e-3)
        loss.backward()
        optimizer.step()
        rep.project()
        assert loss.device == meta and sources.grad.device == meta
        assert all(p.grad is not None and p.grad.device == meta for p in rep.parameters())


def test_frames_of_wrong_shape_or_nan_are_refused():
    sources = default_sources(GEOMETRY, 3, seed=0)
    rec = Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(iterations=2), device="cpu")
    with pytest.raises(ReconstructionError, match="shape"):
        rec.cold_start(np.zeros((2, 32, 32)))
    bad = np.ones((3, 32, 32))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ReconstructionError, match="NaN"):
        rec.cold_start(bad)
    saturated = np.full((3, 32, 32), 500, dtype=np.uint16)
    saturated[2, :8] = 65535
    with pytest.raises(ReconstructionError, match="View 2 is saturated"):
        rec.cold_start(saturated)


def test_a_few_saturated_pixels_are_left_out_of_the_loss():
    """A bright bead may clip a few pixels: they carry no intensity, so they get zero weight
    in the loss instead of the timepoint being refused."""
    dn, _ = two_spheres()
    sources = default_sources(GEOMETRY, 4, seed=1)
    frames = noiseless_frames(dn, sources)
    # below the uint16 range (a cast would wrap the brightest pixels round, and those are dead-looking pixels)
    clipped = np.rint(frames * 40000.0 / frames.max()).astype(np.uint16)
    clipped[1, 14:18, 14:18] = 65535
    rec = Reconstructor(OPTICS, GEOMETRY, sources, config=ReconConfig(iterations=5, pupil_calibration=False), device="cpu")
    result = rec.cold_start(clipped)
    assert np.isfinite(result.dn).all()
    weight = rec._valid.numpy()
    assert weight[1, 14:18, 14:18].sum() == 0 and (weight == 0).sum() == 16


def test_an_instrument_that_is_not_the_model_is_calibrated_and_beats_the_all_zero_volume():
    """Frames from an objective the reconstruction is not told about (spherical aberration
    and astigmatism, 15 % apodisation, a source cone to 0.98·n, two propagation steps per
    voxel, shot noise): with pupil calibration and joint refinement the reconstruction beats
    the all-zero volume by a margin and the uncalibrated one."""
    from dataclasses import replace

    from nvplive.recon.pupil import PupilParameters
    from nvplive.recon.simulate import Instrument

    dn, _ = two_spheres()
    sources = default_sources(GEOMETRY, 5, seed=2)
    zernike = [0.0] * 21
    zernike[11 - 2], zernike[6 - 2] = 0.5, 0.3
    instrument = Instrument("aberrated", PupilParameters(tuple(zernike), (-0.15,)), 0.98 * OPTICS.n_medium, 2)
    sim = Simulator(OPTICS, GEOMETRY, sources, photons=5000.0, coherence=COHERENT, camera=CameraModel(offset=100.0),
                    seed=0, instrument=instrument)
    frames = sim.frames(dn, np.random.default_rng(0))
    config = ReconConfig(iterations=150)
    calibrated = Reconstructor(OPTICS, GEOMETRY, sources, camera_offset=100.0, config=config, device="cpu")
    plain = Reconstructor(OPTICS, GEOMETRY, sources, camera_offset=100.0, device="cpu",
                          config=replace(config, pupil_calibration=False, depth_starts_um=(0.0,)))
    zero = absolute_scores(np.zeros_like(dn), dn).psnr_db
    with_calibration = absolute_scores(calibrated.cold_start(frames).dn, dn).psnr_db
    without = absolute_scores(plain.cold_start(frames).dn, dn).psnr_db
    found = np.array(calibrated.pupil.zernike_rad)
    assert abs(found[11 - 2] - 0.5) < 0.1 and abs(found[6 - 2] - 0.3) < 0.1
    assert with_calibration > zero + 1.5, (with_calibration, without, zero)
    assert with_calibration > without + 1.0, (with_calibration, without, zero)


def test_the_sparsity_prior_is_weaker_where_the_source_spectrum_ends_inside_the_pupil():
    """σ is ``sparsity_source_edge_factor`` × itself for a pupil that carries a source edge (a
    spectrum cut at the NA lights the specimen through the pupil's cone only), else unchanged."""
    from nvplive.recon.pupil import PupilParameters

    config = ReconConfig()
    assert config.sparsity_for(None) == config.sparsity_for(PupilParameters((0.1,), (-0.1,))) == config.sparsity_weight
    edge = PupilParameters(source_edge_na=(0.7, 0.8))
    assert config.sparsity_for(edge) == pytest.approx(config.sparsity_weight * config.sparsity_source_edge_factor)
    assert ReconConfig(sparsity_source_edge_factor=1.0).sparsity_for(edge) == config.sparsity_weight


def test_the_sparsity_prior_keeps_dn_out_of_the_medium_around_a_thin_specimen():
    """A thin layer (2 of 8 slices) in a volume of medium: the ℓ1 prior (``sparsity_weight``)
    leaves less Δn in the slices the specimen does not fill."""
    dn = np.zeros(SMALL.shape_zyx, np.float32)
    dn[3:5, 8:16, 8:16] = 0.03
    sources = default_sources(SMALL, 4, seed=1)
    frames = Simulator(OPTICS, SMALL, sources, photons=5000.0, coherence=COHERENT, camera=NOISELESS, seed=0).expected(dn)
    medium = np.ones(SMALL.shape_zyx, bool)
    medium[3:5] = False
    outside = {}
    for weight in (0.0, 0.05):
        config = ReconConfig(iterations=40, lr=0.01, sparsity_weight=weight, pupil_calibration=False)
        result = Reconstructor(OPTICS, SMALL, sources, config=config, device="cpu").cold_start(frames)
        outside[weight] = float(np.abs(result.dn[medium]).mean())
    assert outside[0.05] < 0.7 * outside[0.0], outside


def test_the_reconstruction_settings_refuse_what_no_fit_can_run_with():
    with pytest.raises(ValueError, match="sparsity_weight must be a finite number ≥ 0, got -1"):
        ReconConfig(sparsity_weight=-1.0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0"):
        ReconConfig(lr=0.0)
    with pytest.raises(ValueError, match="tv_weight must be a finite number ≥ 0, got nan"):
        ReconConfig(tv_weight=float("nan"))
    with pytest.raises(ValueError, match=r"lr_final_fraction must lie in \(0, 1\]"):
        ReconConfig(lr_final_fraction=0.0)
    with pytest.raises(ValueError, match="Unknown method 'voxels'"):
        ReconConfig(method="voxels")
    with pytest.raises(ValueError, match="bead_diameter_um must be a finite number ≥ 0, got -0.2"):
        ReconConfig(bead_diameter_um=-0.2)
    assert ReconConfig(sparsity_weight=0.0, tv_weight=0.0).sparsity_weight == 0.0
    for starts in ((), (0.0, 0.0), (0.0, float("nan")), (0.0, 1.5), [0.0]):
        with pytest.raises(ValueError, match="depth_starts_um must be a tuple of distinct depth shifts within ±1 µm"):
            ReconConfig(depth_starts_um=starts)
    config = ReconConfig(depth_starts_um=(0.0, 0.06))
    assert ReconConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_cold_start_from_several_depth_starts_keeps_the_lowest_loss_and_goes_on_from_it():
    """The beads stated at their true depths and registered: of the starts 0 and +0.4 µm, the fit
    from 0 ends lower and is kept — the first of two, so its state must be put back after the
    second fit — with its sources and calibration state (a warm update goes on from it exactly as
    from a single fit); the message names both starts; the progress counts both fits as one run."""
    dn = np.zeros(SMALL.shape_zyx, np.float32)
    dn[2:6, 8:14, 6:12] = 0.03
    sources = default_sources(SMALL, 3, seed=1)
    frames = Simulator(OPTICS, SMALL, sources, photons=5000.0, coherence=COHERENT, camera=NOISELESS, seed=0).expected(dn)
    config = ReconConfig(iterations=30, warm_budget=IterationBudget(10, stop_on_plateau=False), pupil_calibration=False,
                         calibration_warmup=10)
    runs = {}
    for starts in ((0.0, 0.4), (0.0,), (0.4,)):
        rec = Reconstructor(OPTICS, SMALL, sources, config=replace(config, depth_starts_um=starts), device="cpu")
        seen: list[tuple[int, int]] = []
        cold = rec.cold_start(frames, callback=lambda done, total, loss, phase, seen=seen: seen.append((done, total)))
        runs[starts] = (cold, rec.warm_update(frames), seen)
    both, single, shallow = runs[(0.0, 0.4)], runs[(0.0,)], runs[(0.4,)]
    assert settled_loss(single[0].losses) < settled_loss(shallow[0].losses)
    assert np.array_equal(both[0].dn, single[0].dn) and both[0].loss == single[0].loss
    assert np.array_equal(both[0].sources_um_xyz, single[0].sources_um_xyz)
    assert not np.allclose(single[0].sources_um_xyz, shallow[0].sources_um_xyz, atol=0.05)  # the start mattered
    for field in ("dn", "sources_um_xyz", "brightness", "background"):
        assert np.array_equal(getattr(both[1], field), getattr(single[1], field)), f"the warm update's {field}"
    assert "2 bead depth starts (+0, +0.4 µm); kept +0 µm" in both[0].message and single[0].message == ""
    done = [d for d, _ in both[2]]
    assert done == sorted(done) and {t for _, t in both[2]} == {60} and done[-1] == 60


def test_the_beads_size_is_built_into_every_renderer_and_cannot_change_under_it():
    """The reconstructor's renderers (the fit's, the float64 calibration's and the band's) all
    image beads of the configured diameter; a change between timepoints is refused, naming both."""
    from nvplive.recon.reconstructor import _in_float64

    config = ReconConfig(iterations=5, bead_diameter_um=0.2)
    rec = Reconstructor(OPTICS, SMALL, default_sources(SMALL, 4, seed=1), config=config, device="cpu")
    models = [rec.model, _in_float64(rec.model), *(m for m, _ in rec._band())]
    assert all(m.bead_diameter_um == 0.2 for m in models)
    plain = Reconstructor(OPTICS, SMALL, default_sources(SMALL, 4, seed=1), config=ReconConfig(iterations=5), device="cpu")
    assert float((rec.model.image_transfer - plain.model.image_transfer).abs().max()) > 0.05
    with pytest.raises(ValueError, match=r"fixed for a reconstructor \(0.2 µm; asked for 0.3 µm\)"):
        rec.with_config(bead_diameter_um=0.3)
    rec.with_config(bead_diameter_um=0.2, lr=0.02)  # unchanged: accepted
    rec.with_config(bead_diameter_um=None)  # None: as it is
    assert rec.config.lr == 0.02 and rec.config.bead_diameter_um == 0.2
    assert ReconConfig().bead_diameter_um is None and plain.config.bead_diameter_um == 0.0  # nothing states it: points
