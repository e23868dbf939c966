"""Source finding that never refuses a real bead, defective pixels, and pupil self-calibration (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvplive.errors import ReconstructionError
from nvplive.recon.calibration import (
    DEFAULT_NOLL,
    calibrate_bead_stack,
    calibrate_pupil,
    defective_pixels,
    fit_gaussian,
    initial_sources,
    light_levels,
    refine_sources,
    sharpest_peak_ratio,
)
from nvplive.recon.loop import IterationBudget
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.physics import (
    SOURCE_EDGE_WIDTH,
    ForwardModel,
    camera_intensity,
    homogeneous_spectrum,
    pupil_on_grid,
    render,
    with_source_edge,
)
from nvplive.recon.progress import CalibrationCancelled, CalibrationProgress
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.reconstructor import ReconConfig, Reconstructor
from nvplive.recon.simulate import CameraModel, PartialCoherence, Simulator, camera_noise, default_sources

# The issue's geometry: the centre bead's defocused disc (11 µm below focus) is larger than the field.
ISSUE_OPTICS = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8)
ISSUE_GEOMETRY = VolumeGeometry((32, 64, 64), (0.5, 0.16, 0.16))
COHERENT = PartialCoherence(1, 0.0, 1)


def issue_frames(sources: np.ndarray, seed: int = 0) -> np.ndarray:
    """Noisy uint16 frames (offset 100 ADU) of an empty specimen in the issue's geometry."""
    sim = Simulator(ISSUE_OPTICS, ISSUE_GEOMETRY, sources, photons=3000.0, coherence=COHERENT, seed=seed)
    return sim.frames(np.zeros(ISSUE_GEOMETRY.shape_zyx, np.float32), np.random.default_rng(seed))


def test_a_disc_larger_than_the_field_is_accepted_and_registered():
    """The bead 3 µm below the volume, 11 µm below focus: its disc (radius ≈ 8 µm) overfills
    the 10 µm field, so no blob fit can find it; the nominal position is kept and the model
    registration moves a 0.3 µm error back onto the bead, and a depth stated 0.3 µm off too."""
    true = np.array([[0.05, -0.04, -3.0]])
    frames = issue_frames(true).astype(np.float64) - 100.0
    nominal = true + np.array([[0.3, -0.2, 0.3]])
    model = ForwardModel.build(ISSUE_OPTICS, ISSUE_GEOMETRY, source_depth_um=4.0)
    y, x = ISSUE_GEOMETRY.camera_coordinates_um()
    start = initial_sources(frames, nominal, y, x)
    np.testing.assert_allclose(start, nominal)  # fallback: the nominal position
    found, brightness, _ = refine_sources(
        model, torch.as_tensor(frames, dtype=torch.float32), torch.as_tensor(start, dtype=torch.float32)
    )
    assert np.hypot(*(found[0, :2].numpy() - true[0, :2])) < 0.05
    assert abs(float(found[0, 2]) - true[0, 2]) < 0.05
    assert float(brightness[0]) > 0


def test_a_spot_at_the_fields_edge_is_not_taken_for_the_bead():
    """A bright feature running out of the field's corner (the edge of a disc or a specimen's
    fringe) on a frame of light: a Gaussian fits it there, but a centre within
    ``BORDER_PIXELS`` of the edge is not a bead's image, so the nominal position is kept; the
    same spot well inside the field is taken."""
    y, x = ISSUE_GEOMETRY.camera_coordinates_um()
    yy, xx = np.meshgrid(y, x, indexing="ij")
    nominal = np.array([[0.0, 0.0, -3.0]])

    def frame(cy: float, cx: float) -> np.ndarray:
        spot = 6000.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.5**2))
        return (1000.0 + spot + np.random.default_rng(0).normal(0.0, 30.0, yy.shape))[None]

    edge = 0.5 * len(x) * abs(x[1] - x[0]) - 0.02  # the spot's peak just beyond the field's corner (x[-1] + half a pixel)
    fit = fit_gaussian(frame(edge, edge)[0], y, x)
    assert fit.snr > 3.0 and fit.sigma_um < 1.0 and max(fit.x_um, fit.y_um) < edge  # a good fit, inside the field
    np.testing.assert_allclose(initial_sources(frame(edge, edge), nominal, y, x), nominal)
    found = initial_sources(frame(1.0, -1.5), nominal, y, x)
    np.testing.assert_allclose(found[0, :2], [-1.5, 1.0], atol=0.05)  # (x, y)


def test_a_dark_or_empty_view_is_still_refused_with_todays_message():
    true = np.array([[0.0, 0.0, -3.0], [3.0, 0.5, -2.0]])
    frames = issue_frames(true).astype(np.float64) - 100.0
    y, x = ISSUE_GEOMETRY.camera_coordinates_um()
    dark = frames.copy()
    dark[1] = np.random.default_rng(3).normal(0.0, 1.6, dark[1].shape) + 4.0  # read noise and a little background
    with pytest.raises(ReconstructionError, match=r"View 1: no fluorescent source is visible \(fit signal-to-noise"):
        initial_sources(dark, true, y, x)
    empty = frames.copy()
    empty[0] = 5.0
    with pytest.raises(ReconstructionError, match="View 0: no fluorescent source is visible"):
        initial_sources(empty, true, y, x)


def test_hot_dead_and_saturated_pixels_are_found_and_a_focused_bead_is_not():
    ratio = sharpest_peak_ratio(0.52, 0.8, 0.16)
    assert 1.2 < ratio < 3.0
    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8)
    geometry = VolumeGeometry((8, 32, 32), (0.5, 0.16, 0.16))
    # a bead in focus (the sharpest image there is) on 500 photo-electrons of background
    sim = Simulator(
        optics, geometry, np.array([[0.0, 0.0, 2.0]]), photons=800.0, background=np.array([500.0]), coherence=COHERENT, seed=1
    )
    frame = sim.frames(np.zeros(geometry.shape_zyx, np.float32), np.random.default_rng(1))[0].astype(np.float64)
    assert not defective_pixels(frame, peak_ratio=ratio).any()
    top = frame.max() + 1000.0
    frame[5, 7] = 0.6 * top  # hot, below saturation
    frame[20, 3] = 100.0  # dead: reads the camera offset
    frame[9, 9] = top  # saturated
    bad = defective_pixels(frame, peak_ratio=ratio, saturation=top)
    assert set(zip(*np.nonzero(bad))) == {(5, 7), (20, 3), (9, 9)}


def test_a_hot_pixel_map_comes_from_many_frames():
    """A mildly hot pixel, invisible in one frame's outlier test, stands out in most views."""
    rng = np.random.default_rng(0)
    frames = 100.0 + rng.normal(0.0, 3.0, (6, 24, 24))
    frames[:, 10, 12] += 40.0  # 13 σ above its neighbours in every frame
    frames[2, 3, 3] += 40.0  # once only: noise, not a defect
    bad = defective_pixels(frames, peak_ratio=2.0, sigmas=10.0)
    assert bad[:, 10, 12].all()
    assert bad.sum() == 6


def test_a_view_with_a_hot_pixel_is_accepted_and_the_pixel_left_out():
    """One hot pixel (65535 in a frame peaking near 5000) used to sink the blob fit's noise
    estimate and get the view refused; now it is masked in the fits and in the loss."""
    optics = Optics()
    geometry = VolumeGeometry((12, 32, 32), (0.25, 0.25, 0.25))
    sources = default_sources(geometry, 3, seed=0)
    sim = Simulator(optics, geometry, sources, coherence=COHERENT, seed=0)
    expected = sim.expected(np.zeros(geometry.shape_zyx, np.float32))
    frames = camera_noise(expected * 5000.0 / expected.max(), CameraModel(), np.random.default_rng(0))
    assert 4500 < frames.max() < 5500
    for dtype in (np.uint16, np.float32):  # saturated in uint16, merely hot as float
        hot = frames.astype(dtype)
        hot[1, 7, 25] = 65535
        rec = Reconstructor(optics, geometry, sources, camera_offset=100.0, config=ReconConfig(iterations=2), device="cpu")
        result = rec.cold_start(hot)
        assert np.hypot(*(result.sources_um_xyz[:, :2] - sources[:, :2]).T).max() < 0.1
        valid = rec._valid.numpy()
        assert valid[1, 7, 25] == 0 and (valid == 0).sum() == 1


# -- pupil self-calibration -------------------------------------------------------------

SMALL_OPTICS = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8)
SMALL_GEOMETRY = VolumeGeometry((12, 32, 32), (0.5, 0.16, 0.16))
TRUE_ZERNIKE = {5: 0.25, 6: -0.15, 7: 0.12, 8: -0.1, 11: 0.3, 12: 0.08}


def aberrated_pupil() -> PupilParameters:
    coefficients = np.zeros(21)
    for j, value in TRUE_ZERNIKE.items():
        coefficients[j - 2] = value
    return PupilParameters(tuple(coefficients), (-0.15,))


def aberrated_frames(model: ForwardModel, sources: np.ndarray, pupil: PupilParameters, dn=None, seed: int = 0) -> np.ndarray:
    """Noisy photo-electron images (mean 3000 per pixel, background 5) through ``pupil``."""
    with torch.no_grad():
        src = torch.as_tensor(sources, dtype=model.real_dtype)
        p = pupil_on_grid(model, pupil)
        if dn is None:
            image = camera_intensity(model, homogeneous_spectrum(model, src), pupil=p)
        else:
            image = render(model, torch.as_tensor(dn, dtype=model.real_dtype), src, pupil=p)
    image = image.numpy()
    expected = image * 3000.0 / image.mean(axis=(1, 2), keepdims=True) + 5.0
    return camera_noise(expected, CameraModel(offset=0.0), np.random.default_rng(seed)).astype(np.float64)


def ring_sources(views: int, depth_um: float, radius_um: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, views)[:-1]
    ring = np.stack([radius_um * np.cos(angles), radius_um * np.sin(angles), np.full(views - 1, -depth_um)], 1)
    out = np.concatenate([[[0.0, 0.0, -depth_um]], ring])
    out[:, 2] += rng.uniform(-0.3, 0.3, views)
    return out


def test_pupil_calibration_recovers_zernike_coefficients_and_bead_depths():
    model = ForwardModel.build(SMALL_OPTICS, SMALL_GEOMETRY, source_depth_um=3.0, dtype=torch.float64)
    true = ring_sources(5, 2.0, 1.5)
    truth = aberrated_pupil()
    frames = aberrated_frames(model, true, truth)
    rng = np.random.default_rng(1)
    nominal = true + np.concatenate([rng.normal(0, 0.1, (5, 2)), rng.normal(0, 0.3, (5, 1))], axis=1)
    cal = calibrate_pupil(model, frames, nominal, iterations=80)
    found = np.array(cal.pupil.zernike_rad)
    fitted = [j - 2 for j in DEFAULT_NOLL]
    # the issue's target: the wavefront error (RMS over the pupil, the norm of the Noll-normalised
    # coefficients' difference) ≤ 0.05 rad, here of a 0.45 rad RMS pupil
    wavefront_error = np.linalg.norm(found[fitted] - np.array(truth.zernike_rad)[fitted])
    assert truth.aberration_rms_rad > 0.4 and wavefront_error < 0.05, wavefront_error
    assert abs(cal.pupil.apodisation[0] - truth.apodisation[0]) < 0.05
    assert np.abs(cal.sources_um_xyz[:, 2] - true[:, 2]).max() < 0.2
    assert np.abs(cal.sources_um_xyz[:, :2] - true[:, :2]).max() < 0.05
    assert cal.residual < 0.5 * cal.residual_start
    assert found[:3].tolist() == [0.0, 0.0, 0.0]  # tip, tilt, defocus: carried by the positions


def test_pupil_calibration_starts_from_an_earlier_pupil():
    model = ForwardModel.build(SMALL_OPTICS, SMALL_GEOMETRY, source_depth_um=3.0, dtype=torch.float64)
    true = ring_sources(4, 2.0, 1.5, seed=2)
    truth = aberrated_pupil()
    frames = aberrated_frames(model, true, truth, seed=3)
    warm = calibrate_pupil(model, frames, true, start=truth, iterations=5)
    assert np.allclose(warm.pupil.zernike_rad, truth.zernike_rad, atol=0.03)


def test_reconstructor_calibrates_the_pupil_and_keeps_it_for_later_timepoints():
    true = ring_sources(5, 1.5, 1.2, seed=4)
    model = ForwardModel.build(SMALL_OPTICS, SMALL_GEOMETRY, source_depth_um=3.0, dtype=torch.float64)
    dn = np.zeros(SMALL_GEOMETRY.shape_zyx, np.float32)
    dn[4:8, 12:20, 12:20] = 0.01  # a weak specimen: the frames are dominated by the homogeneous part
    truth = aberrated_pupil()
    frames = aberrated_frames(model, true, truth, dn=dn, seed=5)
    rec = Reconstructor(SMALL_OPTICS, SMALL_GEOMETRY, true, config=ReconConfig(iterations=3, warm_budget=IterationBudget(2)), device="cpu")
    reports: list[tuple[int, int, str]] = []
    first = rec.cold_start(frames, callback=lambda done, total, _loss, phase: reports.append((done, total, phase)))
    # the callback follows the calibration too: three stages (the last through the emission band),
    # the centre wavelength's pass of everything again without a source edge when one is tested,
    # the positions restarted and the passes of everything again (each skipped when not needed,
    # as here), counted with the first stage's budget of 150 × 5/4 evaluations each (a pass
    # through the band has at most BAND_ITERATIONS), then the volume's iterations
    budget = 7 * (150 * 5 // 4)
    calibrating = [done for done, total, phase in reports if phase == "calibration"]
    assert {total for _, total, phase in reports if phase == "calibration"} == {budget}
    assert calibrating and calibrating == sorted(calibrating) and calibrating[-1] > budget // 2
    assert [phase for *_, phase in reports] == ["calibration"] * len(calibrating) + ["fit"] * (len(reports) - len(calibrating))
    assert reports[-1][1:] == (3 * len(ReconConfig().depth_starts_um), "fit")  # 3 iterations from each depth start
    fitted = [j - 2 for j in DEFAULT_NOLL]
    found = np.array(first.pupil.zernike_rad)[fitted]
    assert np.linalg.norm(found - np.array(truth.zernike_rad)[fitted]) < 0.05  # wavefront error, rad RMS (0.030 measured)
    second = rec.warm_update(frames)
    assert second.pupil == first.pupil  # reused, not recalibrated
    off = Reconstructor(
        SMALL_OPTICS, SMALL_GEOMETRY, true, pupil=truth, config=ReconConfig(iterations=3, pupil_calibration=False), device="cpu"
    )
    assert off.cold_start(frames).pupil == truth  # a pupil file's pupil, used as it is


def test_a_view_of_fine_fringes_is_light_not_noise():
    """A strongly aberrated bead (1 rad spherical) fills the field with fine fringes: the
    pixel-to-pixel scatter is then signal, larger than a third of the light level, and the
    view must not be refused as dark (it was, with 'fit signal-to-noise 34.6 < 3.0')."""
    y, x = ISSUE_GEOMETRY.camera_coordinates_um()
    yy, xx = np.meshgrid(np.arange(len(y)), np.arange(len(x)), indexing="ij")
    rng = np.random.default_rng(0)
    fringes = 1800.0 * (1.0 + 0.9 * np.cos(2.1 * np.hypot(yy - 40.0, xx - 20.0)))
    frames = rng.poisson(np.stack([fringes, fringes[::-1]])).astype(np.float64)
    nominal = np.array([[0.1, 0.2, -3.0], [-0.1, 0.3, -3.0]])
    _, noise = light_levels(frames)
    assert noise[0] > np.median(frames[0]) / 3.0  # the scatter alone would call it dark
    np.testing.assert_allclose(initial_sources(frames, nominal, y, x), nominal)  # kept at the nominal positions


def test_a_source_spectrum_cut_at_the_na_is_calibrated_and_the_default_kept():
    """Frames whose source spectrum falls as a raised cosine from 0.88·NA to NA (the old
    renderer's band): the calibration finds that edge inside the pupil; frames of the
    default spectrum (which reaches beyond the pupil) through an apodised pupil keep the
    default and the pupil fitted without a source edge."""
    geometry = VolumeGeometry((4, 24, 24), (0.5, 0.16, 0.16))
    model = ForwardModel.build(SMALL_OPTICS, geometry, source_depth_um=2.5, dtype=torch.float64)
    na = SMALL_OPTICS.na
    truth = ((1.0 - SOURCE_EDGE_WIDTH) * na, na)
    true = ring_sources(3, 1.5, 1.0, seed=6)
    measured = aberrated_frames(with_source_edge(model, truth), true, PupilParameters())
    cut = calibrate_pupil(model, measured, true, source_edge=True, iterations=30)
    assert np.allclose(cut.pupil.source_edge_na, truth, atol=0.02 * na), cut.pupil.source_edge_na
    # the stored pupil, rendered as the reconstruction renders it, is the image the fit ended on
    stored = with_source_edge(model, cut.pupil.source_edge_na)
    image = camera_intensity(stored, homogeneous_spectrum(stored, torch.as_tensor(cut.sources_um_xyz)),
                             pupil=pupil_on_grid(stored, cut.pupil)).numpy()
    predicted = image * cut.brightness[:, None, None] + cut.background[:, None, None]
    signal = np.asarray(measured) - cut.background[:, None, None]
    assert np.sqrt(((predicted - measured) ** 2).sum() / (signal**2).sum()) == pytest.approx(cut.residual, rel=1e-4)
    frames = aberrated_frames(model, true, PupilParameters((), (-0.2,)), seed=7)
    default = calibrate_pupil(model, frames, true, source_edge=True, iterations=30)
    assert default.pupil.source_edge_na == ()
    # not identified: exactly the calibration without a source edge
    assert default.pupil == calibrate_pupil(model, frames, true, iterations=30).pupil


def test_the_light_beyond_the_na_is_fitted_with_the_volume():
    """Frames whose source spectrum ends at the NA over a narrow edge (3 %; another renderer's)
    and a specimen that scatters: the homogeneous image barely shows the edge, so the
    calibration keeps none, and the joint refinement lowers the light beyond the NA the
    renderer assumes (``source_beyond_na``), where only the specimen's scattering shows it,
    and the width of the rim it blends in over (``source_rim_width``) with it. The pupil
    carries both to the warm updates; without source calibration they stay as they were."""
    from dataclasses import replace

    from nvplive.recon.pupil import SOURCE_RIM_WIDTH
    from nvplive.recon.reconstructor import SOURCE_RIM_RANGE

    model = ForwardModel.build(SMALL_OPTICS, SMALL_GEOMETRY, source_depth_um=3.0, dtype=torch.float64)
    na = SMALL_OPTICS.na
    true = ring_sources(5, 1.5, 1.2, seed=4)
    dn = np.zeros(SMALL_GEOMETRY.shape_zyx, np.float32)
    dn[4:8, 10:22, 10:22] = 0.02
    dn[5:7, 14:18, 6:26] = 0.04
    frames = aberrated_frames(with_source_edge(model, (0.97 * na, na)), true, PupilParameters(), dn=dn, seed=5)
    config = ReconConfig(iterations=150, warm_budget=IterationBudget(2), depth_starts_um=(0.0,))
    rec = Reconstructor(SMALL_OPTICS, SMALL_GEOMETRY, true, config=config, device="cpu")
    first = rec.cold_start(frames)
    assert rec.calibration is not None and rec.calibration.pupil.source_edge_na == ()  # nothing identified
    assert first.pupil is not None and first.pupil.source_beyond_na < 0.6, first.pupil
    assert first.pupil.source_rim_width != SOURCE_RIM_WIDTH
    assert SOURCE_RIM_RANGE[0] <= first.pupil.source_rim_width <= SOURCE_RIM_RANGE[1]
    assert rec.warm_update(frames).pupil == first.pupil
    # without source calibration (the same calibration adopted, 20 refining iterations) it stays
    kept = Reconstructor(SMALL_OPTICS, SMALL_GEOMETRY, true, device="cpu",
                         config=replace(config, source_calibration=False, iterations=20, calibration_warmup=0))
    kept.adopt_calibration(rec.calibration)
    unchanged = kept.cold_start(frames).pupil
    assert (unchanged.source_beyond_na, unchanged.source_rim_width) == (1.0, SOURCE_RIM_WIDTH)


def test_the_reconstructor_renders_with_the_pupils_source_edge():
    """A pupil with a source edge (a pupil file, a calibration) reshapes the source spectrum of
    every renderer the reconstruction uses; without one the renderer's default stays."""
    true = ring_sources(3, 1.5, 1.0)
    edge = (0.7, 0.8)
    rec = Reconstructor(SMALL_OPTICS, SMALL_GEOMETRY, true, pupil=PupilParameters(source_edge_na=edge), device="cpu")
    plain = Reconstructor(SMALL_OPTICS, SMALL_GEOMETRY, true, device="cpu")
    assert torch.equal(rec.model.source_band, with_source_edge(plain.model, edge).source_band)
    assert all(torch.equal(m.exit_source_band, with_source_edge(p, edge).exit_source_band)
               for (m, _), (p, _) in zip(rec._spectral(), plain._spectral()))
    rec.pupil = PupilParameters()
    assert torch.equal(rec.model.source_band, plain.model.source_band)
    assert all(torch.equal(m.source_band, p.source_band) for (m, _), (p, _) in zip(rec._spectral(), plain._spectral()))
    rec.pupil = PupilParameters(source_beyond_na=0.4)  # less light beyond the NA, everywhere
    assert torch.equal(rec.model.source_band, with_source_edge(plain.model, (), 0.4).source_band)
    assert all(torch.equal(m.source_band, with_source_edge(p, (), 0.4).source_band)
               for (m, _), (p, _) in zip(rec._spectral(), plain._spectral()))


def test_a_bead_stack_calibration_reports_every_evaluation_and_stops_when_cancelled():
    """The progress callback sees each L-BFGS evaluation of the four stages (hard aperture:
    positions, all; pupil: positions, all), in order; returning False at evaluation N ends
    the fit there (CalibrationCancelled), N evaluations in all instead of the full run's."""
    from nvplive.recon.calibration import stack_model

    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8, emission_fwhm_um=0.0)
    model = stack_model(optics, (24, 24), 0.1, 2.0)
    truth = PupilParameters((0.0,) * 9 + (0.4,))
    depths = model.geometry.focal_z_um - np.arange(-2, 3) * 0.4
    sources = torch.tensor([[0.05, -0.03, z] for z in depths], dtype=torch.float64)
    with torch.no_grad():
        planes = camera_intensity(model, homogeneous_spectrum(model, sources), pupil=pupil_on_grid(model, truth)).numpy()
    stack = np.random.default_rng(0).poisson(planes / planes.max() * 2000.0 + 100.0).astype(np.uint16)

    reports: list[CalibrationProgress] = []
    calibrate_bead_stack(stack, optics, 0.1, 0.4, iterations=6, z_direction=1, progress=reports.append)
    assert [r.stage_index for r in reports] == sorted(r.stage_index for r in reports)
    assert {r.stage_index for r in reports} == {0, 1, 2, 3} and {r.stages for r in reports} == {4}
    assert reports[0].stage == "z +1, hard aperture: positions" and reports[-1].stage == "z +1, pupil: all parameters"
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] <= 1
    assert all(np.isfinite(r.loss) and 1 <= r.evaluation <= r.max_evaluations for r in reports)

    cancel_at = len(reports) // 2
    seen: list[CalibrationProgress] = []

    def cancel_after(report: CalibrationProgress) -> bool:
        seen.append(report)
        return len(seen) < cancel_at

    with pytest.raises(CalibrationCancelled):
        calibrate_bead_stack(stack, optics, 0.1, 0.4, iterations=6, z_direction=1, progress=cancel_after)
    assert len(seen) == cancel_at < len(reports)
    assert seen == reports[:cancel_at]  # the same fit up to the cancel (deterministic)


def test_a_saturated_bead_stack_is_counted_and_the_count_reaches_the_calibration():
    """Pixels at the camera's full scale are left out of the fit and counted: the clipped peak
    is what shapes the pupil's amplitude, so the user must learn of them (the CLI warns). The
    full scale is the camera's bit depth when it is known (12 bits: 4095 in 16-bit words)."""
    from nvplive.recon.calibration import bead_stack_views, stack_model

    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8, emission_fwhm_um=0.0)
    model = stack_model(optics, (24, 24), 0.1, 2.0)
    depths = model.geometry.focal_z_um - np.arange(-2, 3) * 0.4
    sources = torch.tensor([[0.05, -0.03, z] for z in depths], dtype=torch.float64)
    with torch.no_grad():
        planes = camera_intensity(model, homogeneous_spectrum(model, sources)).numpy()
    exposed = np.random.default_rng(0).poisson(planes / planes.max() * 2000.0 + 100.0)
    assert bead_stack_views(exposed.astype(np.uint16), optics, 0.1, 0.4).saturated_pixels == 0
    over = np.minimum(exposed * 40, 65535).astype(np.uint16)  # the in-focus peak clips at 16 bits
    clipped = int((over == 65535).sum())
    assert clipped > 0
    assert bead_stack_views(over, optics, 0.1, 0.4).saturated_pixels == clipped
    assert calibrate_bead_stack(over, optics, 0.1, 0.4, iterations=2, z_direction=1).saturated_pixels == clipped
    # a 12-bit camera writes 16-bit words that clip at 4095, not at the type's 65535
    twelve = np.minimum(exposed * 3, 4095).astype(np.uint16)
    clipped = int((twelve == 4095).sum())
    assert clipped > 0
    assert bead_stack_views(twelve, optics, 0.1, 0.4).saturated_pixels == 0  # the type's full scale misses them
    views = bead_stack_views(twelve, optics, 0.1, 0.4, bit_depth=12)
    assert views.saturated_pixels == clipped and not views.valid[twelve == 4095].any()
    with pytest.raises(ValueError, match="a camera of 17 bits cannot have written uint16 frames"):
        bead_stack_views(twelve, optics, 0.1, 0.4, bit_depth=17)
    with pytest.raises(ValueError, match="counts up to 4095, above the full scale 2047 of a camera of 11 bits"):
        bead_stack_views(twelve, optics, 0.1, 0.4, bit_depth=11)


def several_beads_stack() -> tuple[np.ndarray, Optics, np.ndarray]:
    """A z-stack ``[7, 80, 80]`` (0.1 µm pixels, 0.4 µm steps, NA 0.8) of four beads through an
    aberrated pupil (Noll 5, 6, 11: 0.2, −0.15, 0.3 rad): one at pixel (18, 20), one 0.7 as bright
    and 0.2 µm deeper at (60, 58), and a pair 12 pixels apart at (20, 58) and (20, 70)."""
    from nvplive.recon.calibration import stack_model

    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8, emission_fwhm_um=0.0)
    model = stack_model(optics, (80, 80), 0.1, 2.0)
    zernike = np.zeros(21)
    zernike[[3, 4, 9]] = (0.2, -0.15, 0.3)
    steps = np.arange(-3, 4) * 0.4
    image = np.zeros((7, 80, 80))
    with torch.no_grad():
        pupil = pupil_on_grid(model, PupilParameters(tuple(zernike)))
        for (y, x), brightness, deeper in (((18, 20), 1.0, 0.0), ((60, 58), 0.7, 0.2), ((20, 58), 0.6, 0.0), ((20, 70), 0.6, 0.0)):
            sources = torch.tensor([[(x - 40) * 0.1, (y - 40) * 0.1, model.geometry.focal_z_um - s - deeper] for s in steps],
                                   dtype=torch.float64)
            planes = camera_intensity(model, homogeneous_spectrum(model, sources), pupil=pupil).numpy()
            image += brightness * planes / planes.max()
    stack = np.random.default_rng(3).poisson(image * 3000.0 + 100.0).astype(np.uint16)
    return stack, optics, zernike


def test_a_stack_of_several_beads_fits_one_pupil_to_each_bead_alone_in_its_crop():
    """The issue's "z-stack of one or more beads": the beads are found in the maximum
    projection, the pair whose crops hold each other is left out, and the two beads alone in
    their crops share one pupil (their planes are the views) that recovers the aberration. A
    bead alone in a larger frame is fitted on the square that holds its light. A crop too wide
    for any bead to lie alone in it, and a stack without a bead, are refused."""
    from nvplive.errors import NoBeadError
    from nvplive.recon.calibration import bead_stack_views

    stack, optics, zernike = several_beads_stack()
    views = bead_stack_views(stack, optics, 0.1, 0.4, crop_px=24)
    assert [(b.y_px, b.x_px) for b in views.beads] == [(18, 20), (60, 58)]  # brightest first, the pair left out
    assert views.frames.shape == (14, 24, 24) and views.describe().startswith("7 planes of 2 beads at pixels (y, x) (18, 20), (60, 58)")
    np.testing.assert_allclose(views.centres_um_xy[[0, 7]], 0.0, atol=0.1)  # each bead at its crop's centre
    result = calibrate_bead_stack(stack, optics, 0.1, 0.4, crop_px=24, z_direction=1, iterations=20)
    fitted = np.array(result.calibration.pupil.zernike_rad)
    assert np.abs(fitted[[3, 4, 9]] - zernike[[3, 4, 9]]).max() < 0.05, fitted[[3, 4, 9]]
    assert "2 beads" in result.beads
    with pytest.raises(NoBeadError, match=r"no bead of the stack lies alone in a 64×64 crop \(the default crop of 64\): "
                                          r"\(18, 20\) has a bead at \(\d+, \d+\) in its crop"):
        bead_stack_views(stack, optics, 0.1, 0.4)  # several beads: the default crop of 64 holds them all
    # clipped cores (left out of the fit) still mark the beads: read as the plane's median they moved the peaks off them
    clipped = np.minimum(stack.astype(np.float64) * (65535 / (0.3 * stack.max())), 65535).astype(np.uint16)  # 177 pixels
    views = bead_stack_views(clipped, optics, 0.1, 0.4, crop_px=24)
    assert views.saturated_pixels > 0 and {(b.y_px, b.x_px) for b in views.beads} == {(18, 20), (60, 58)}
    # a bead alone in a larger frame: the square that holds its light (its disc at 1.2–1.6 µm and the spot round it)
    lone = np.random.default_rng(1).poisson(100.0, (7, 120, 120)).astype(np.uint16)
    lone[:, :40, :40] = stack[:, :40, :40]
    views = bead_stack_views(lone, optics, 0.1, 0.4)
    assert len(views.beads) == 1 and views.crop_px is not None and 40 <= views.crop_px <= 64, views.describe()
    with pytest.raises(NoBeadError, match="no bead stands out of the noise"):
        bead_stack_views(np.random.default_rng(0).poisson(100.0, (5, 40, 40)).astype(np.uint16), optics, 0.1, 0.4)


def spot_stack(shape_yx: tuple[int, int], beads: list[tuple[int, int, float, int]], planes: int = 7) -> np.ndarray:
    """Counts ``[planes, Y, X]`` of Gaussian spots that widen away from focus (for bead finding,
    not fitting): each bead ``(y, x, peak counts, focus plane)``, 0.1 µm pixels, 0.4 µm steps."""
    yy, xx = np.mgrid[: shape_yx[0], : shape_yx[1]].astype(float)
    image = np.zeros((planes, *shape_yx))
    for y, x, peak, focus in beads:
        for z in range(planes):
            w = 1.5 + 3.0 * abs(z - focus)  # pixels: the in-focus spot, then a disc widening 0.3 µm per 0.4 µm step
            image[z] += peak * (1.5 / w) ** 2 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * w**2))
    return np.random.default_rng(0).poisson(image + 100.0).astype(np.uint16)


def test_no_other_beads_light_enters_a_beads_crop_and_spots_that_do_not_focus_are_no_beads():
    """A crop clipped at the frame's edge is checked for other beads where it lies, not where a
    centred one would; another bead's defocused disc is left out of a crop; a pair of hot
    pixels (the same in every plane) is no bead, and a stack of nothing else is refused; a bead
    alone in the frame but near its edge is fitted (on the whole frame)."""
    from nvplive.errors import NoBeadError
    from nvplive.recon.calibration import bead_stack_views

    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8, emission_fwhm_um=0.0)
    stack = spot_stack((80, 160), [(40, 10, 3000.0, 3), (40, 55, 2700.0, 3)])
    views = bead_stack_views(stack, optics, 0.1, 0.4, crop_px=64)
    # the crop of the bead at x = 10 is clipped to columns 0–63 and holds the other one: only (40, 55) is fitted
    assert [(b.y_px, b.x_px) for b in views.beads] == [(40, 55)]
    x0 = 55 - 32  # its crop's first column; the bead at x = 10 lies 13 columns left of it
    left = views.valid[:, :, : 10 - x0 + 20]  # the columns the other bead's disc reaches into
    assert left[3].all() or left[3].mean() > 0.9  # at focus its spot stays outside the crop
    assert left[0].mean() < left[3].mean() and not views.valid[0, 40 - 8, 0]  # 1.2 µm out of focus its disc is left out

    hot = spot_stack((64, 64), [(30, 30, 3000.0, 3)])
    hot[:, 10, 50:52] = 20000  # a pair of hot pixels: each is the other's brightest neighbour
    views = bead_stack_views(hot, optics, 0.1, 0.4)
    assert [(b.y_px, b.x_px) for b in views.beads] == [(30, 30)]
    only_hot = spot_stack((64, 64), [])
    only_hot[:, 20:22, 40:42] = 20000
    with pytest.raises(NoBeadError, match=r"no bead in the stack: its brightest spots, at pixels \(y, x\) \(2[01], 4[01]\), are as bright "
                                          r"in every plane"):
        bead_stack_views(only_hot, optics, 0.1, 0.4)

    edge = spot_stack((64, 64), [(4, 30, 3000.0, 3)])  # within an Airy diameter of the frame's edge
    views = bead_stack_views(edge, optics, 0.1, 0.4)
    assert [(b.y_px, b.x_px) for b in views.beads] == [(4, 30)]
    with pytest.raises(NoBeadError, match=r"\(4, 30\) lies at the frame's edge"):
        bead_stack_views(edge, optics, 0.1, 0.4, crop_px=32)


def test_a_bead_the_specimen_pulled_off_is_restarted_through_the_fitted_pupil():
    """The issue's geometry with a cell in the way, 0.5 rad RMS of aberration (the benchmark's
    seed 2): without the restart one bead ends 1.6 µm too deep and 0.6 µm aside and holds the
    pupil 0.06 rad off; restarted through the fitted pupil it finds its place (BENCHMARKS.md)."""
    from nvplive.benchmarks.pupil_calibration import issue_frames

    model, frames, nominal, true, coefficients = issue_frames(2, 0.5)
    cal = calibrate_pupil(model, frames, nominal, iterations=60)
    fitted = [j - 2 for j in DEFAULT_NOLL]
    wavefront_error = np.linalg.norm(np.array(cal.pupil.zernike_rad)[fitted] - coefficients[fitted])
    # measured with 60 iterations: 0.027 rad, 0.014 µm, 0.20 µm (the cell's common shift);
    # without the restart 0.104 rad, 0.65 µm, 1.65 µm
    assert wavefront_error < 0.04, wavefront_error
    assert np.abs(cal.sources_um_xyz[:, :2] - true[:, :2]).max() < 0.05
    assert np.abs(cal.sources_um_xyz[:, 2] - true[:, 2]).max() < 0.3


def test_a_bead_stack_renderer_padded_by_the_defocused_disc_matches_the_full_padding():
    """``stack_padding`` (the disc's radius at the farthest plane, 66 pixels on the measured
    stack's optics) renders what the reconstruction's full padding (206 pixels) does, to < 1 %
    relative L2 at 1–3 µm defocus, on and off axis."""
    from nvplive.recon.calibration import point_source_images, prepare_renderer, stack_model, stack_padding
    from nvplive.recon.physics import default_padding

    optics = Optics(wavelength_um=0.605, n_medium=1.33, na=1.1, emission_fwhm_um=0.0)
    pad = stack_padding(optics, 0.0905, 4.0)
    assert pad == 66
    full_pad = default_padding(optics, stack_model(optics, (128, 128), 0.0905, 4.0).geometry, 4.0)[0]
    images = []
    for padding in ((pad, pad), (full_pad, full_pad)):
        model = stack_model(optics, (128, 128), 0.0905, 4.0, pad_yx=padding)
        focal = model.geometry.focal_z_um
        sources = torch.tensor([[x, x, focal - d] for x in (0.0, 2.0) for d in (-3.0, -1.0, 1.0, 3.0)], dtype=torch.float64)
        with torch.no_grad():
            images.append(point_source_images([prepare_renderer(model, 1.0, 0, 0, False, torch.float64)], sources, None, None))
    ours, full = images
    error = torch.linalg.vector_norm(ours - full, dim=(1, 2)) / torch.linalg.vector_norm(full, dim=(1, 2))
    assert full_pad > 3 * pad and float(error.max()) < 0.01, error
