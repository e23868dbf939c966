"""Camera noise beyond the optics' band, and the image terms a bead stack's point-source model leaves out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvplive.recon.calibration import camera_noise
from nvplive.recon.physics import bead_transfer


def band_limited_stack(rng: np.random.Generator, shape=(12, 64, 64), pixel_um=0.1) -> np.ndarray:
    """Expected photo-electrons ``[Z, Y, X]``: Gaussian spots σ 0.25–0.5 µm (their spectra
    negligible beyond 3 /µm), one per plane, peaks 20–3000 e⁻."""
    _, ny, nx = shape
    y, x = (np.arange(ny) - ny / 2) * pixel_um, (np.arange(nx) - nx / 2) * pixel_um
    planes = []
    for sigma, peak in zip(np.linspace(0.25, 0.5, shape[0]), np.geomspace(3000, 20, shape[0])):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        planes.append(peak * np.exp(-((y[:, None] - cy) ** 2 + (x[None, :] - cx) ** 2) / (2 * sigma**2)))
    return np.array(planes)


def test_camera_noise_finds_the_gain_read_noise_and_residual_floor_of_poisson_frames():
    rng = np.random.default_rng(0)
    gain, read_sigma, offset = 2.2, 3.5, 100.0
    expected = band_limited_stack(rng) + 4.0  # 4 e⁻ of diffuse background light
    counts = gain * rng.poisson(expected) + rng.normal(0.0, read_sigma, expected.shape) + offset
    valid = np.ones(counts.shape, bool)
    valid[2, 10, 10] = False
    counts[2, 10, 10] = 60000.0  # a hot pixel, left out

    noise = camera_noise(counts, wavelength_um=0.6, na=1.0, pixel_um=0.1, valid=valid)

    assert noise.gain == pytest.approx(gain, rel=0.08)  # ±4 % from seed to seed
    # at the frame's background: read noise and the background's shot noise
    assert noise.read_variance == pytest.approx(read_sigma**2 + gain**2 * 4.0, rel=0.1)
    truth = gain * expected + offset
    realised = np.sqrt(((counts - truth)[valid] ** 2).sum() / ((counts - np.median(counts, axis=(1, 2), keepdims=True))[valid] ** 2).sum())
    assert noise.residual_floor == pytest.approx(realised, rel=0.03)
    mean_variance = (read_sigma**2 + gain**2 * expected).mean(axis=(1, 2))
    assert noise.plane_variance.sum() == pytest.approx(mean_variance.sum(), rel=0.05)


def test_the_floor_of_a_crop_filled_by_the_signal_is_measured_against_the_given_background():
    """A crop that a wide spot fills: its median lies well above the background, so a
    floor taken against the median is off; against the true background it is the
    residual the true image leaves."""
    rng = np.random.default_rng(1)
    gain, offset = 2.0, 100.0
    noise = camera_noise(gain * rng.poisson(band_limited_stack(rng) + 4.0) + offset, wavelength_um=0.6, na=1.0, pixel_um=0.1)
    y = (np.arange(32) - 16) * 0.1
    expected = 4.0 + 400.0 * np.exp(-(y[:, None] ** 2 + y[None, :] ** 2) / (2 * 1.2**2))[None].repeat(6, axis=0)
    crop = gain * rng.poisson(expected) + offset
    truth = gain * expected + offset
    background = np.full(6, gain * 4.0 + offset)
    realised = np.sqrt(((crop - truth) ** 2).sum() / ((crop - background[:, None, None]) ** 2).sum())

    assert noise.expected_residual(crop, background=background) == pytest.approx(realised, rel=0.05)
    assert abs(noise.expected_residual(crop) - realised) > 0.25 * realised  # the median's floor


def test_camera_noise_refuses_frames_sampled_too_coarsely_for_a_band_beyond():
    with pytest.raises(ValueError, match="too coarsely"):
        camera_noise(np.ones((2, 32, 32)), wavelength_um=0.5, na=1.4, pixel_um=0.2)


def test_bead_transfer_is_the_spectrum_of_the_projected_sphere():
    n, pixel, diameter = 64, 0.05, 0.6
    transfer = bead_transfer((n, n), (pixel, pixel), diameter, dtype=torch.float64).numpy()
    # the sphere projected on the plane, 8 × 8 sub-samples per pixel
    sub = 8
    s = (np.arange(n * sub) - n * sub / 2 + 0.5) * pixel / sub
    r2 = s[:, None] ** 2 + s[None, :] ** 2
    chord = 2.0 * np.sqrt(np.clip((diameter / 2) ** 2 - r2, 0.0, None))
    projected = chord.reshape(n, sub, n, sub).mean(axis=(1, 3))
    spectrum = np.abs(np.fft.fft2(np.fft.ifftshift(projected)))
    spectrum /= spectrum[0, 0]
    # the pixel's own box (the sub-sampling integrates it) divided out, up to the first bead zero
    box = np.sinc(np.fft.fftfreq(n, pixel)[:, None] * pixel) * np.sinc(np.fft.fftfreq(n, pixel)[None, :] * pixel)
    low = np.hypot(np.fft.fftfreq(n, pixel)[:, None], np.fft.fftfreq(n, pixel)[None, :]) < 1.2  # /µm
    np.testing.assert_allclose(spectrum[low], np.abs(transfer * box)[low], atol=0.01)
    assert float(bead_transfer((8, 8), (0.1, 0.1), 0.2)[0, 0]) == 1.0


def test_a_free_form_pupil_of_zernike_maps_projects_back_to_its_coefficients_and_apodisation():
    from nvplive.recon.calibration import project_free_form
    from nvplive.recon.pupil import PupilParameters, zernike

    rng = np.random.default_rng(4)
    start = PupilParameters(tuple(np.concatenate([[0.0, 0.0, 0.0], rng.normal(0, 0.2, 18)])), ())
    extra = {5: 0.1, 11: -0.2, 30: 0.15}
    axis = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    rho, theta = torch.sqrt(xx**2 + yy**2).clamp(max=1.0), torch.atan2(yy, xx)
    phase = sum(c * zernike(j, rho, theta) for j, c in extra.items()) + 0.3 * zernike(2, rho, theta)  # + a tilt
    log_amplitude = torch.log(1.0 + 0.2 * rho**2 - 0.1 * rho**4)

    projected = project_free_form(start, log_amplitude.numpy(), phase.numpy(), noll=range(5, 38), apodisation_terms=2)

    expected = np.zeros(36)
    expected[: len(start.zernike_rad)] = start.zernike_rad
    for j, c in extra.items():
        expected[j - 2] += c
    np.testing.assert_allclose(projected.zernike_rad, expected, atol=0.01)  # tilt and defocus left to the positions
    np.testing.assert_allclose(projected.apodisation, (0.2, -0.1), atol=0.01)


def test_the_bead_size_term_recovers_the_pupil_behind_a_large_bead():
    """A 0.4 µm bead rendered as 60 incoherent point emitters through a known pupil: the
    projected-sphere transfer explains its images, the point source does not."""
    from nvplive.recon.calibration import calibrate_pupil, stack_model
    from nvplive.recon.optics import Optics
    from nvplive.recon.physics import camera_intensity, homogeneous_spectrum, pupil_on_grid
    from nvplive.recon.pupil import PupilParameters
    from nvplive.recon.simulate import bead_offsets

    model = stack_model(Optics(wavelength_um=0.6, n_medium=1.33, na=1.1), (24, 24), 0.09, 2.0, pad_yx=(24, 24))
    zernike = np.zeros(10)
    zernike[[3, 4, 9]] = (0.3, -0.2, 0.3)  # Noll 5, 6, 11
    truth = PupilParameters(tuple(zernike), (-0.2,))
    true = np.stack([np.full(7, 0.05), np.full(7, -0.03), model.geometry.focal_z_um + np.linspace(-1.2, 1.2, 7)], 1)
    with torch.no_grad():
        pupil = pupil_on_grid(model, truth)
        image = sum(
            camera_intensity(model, homogeneous_spectrum(model, torch.as_tensor(true + offset)), pupil=pupil)
            for offset in bead_offsets(0.4, 60, seed=1)
        ).numpy()
    frames = np.random.default_rng(0).poisson(image * 2000 / image.mean(axis=(1, 2), keepdims=True) + 20).astype(float)
    errors, residuals = [], []
    for diameter in (0.0, 0.4):
        bead = stack_model(model.optics, (24, 24), 0.09, 2.0, pad_yx=(24, 24), bead_diameter_um=diameter)
        cal = calibrate_pupil(bead, frames, true + [0.05, -0.05, 0.2], noll=(5, 6, 7, 8, 11), apodisation_terms=1,
                              iterations=20)
        errors.append(np.abs(np.array(cal.pupil.zernike_rad)[[3, 4, 9]] - zernike[[3, 4, 9]]).max())
        residuals.append(cal.residual)
    assert errors[1] < 0.05 and errors[1] < 0.5 * errors[0], errors
    assert residuals[1] < 0.6 * residuals[0], residuals


def test_a_free_form_pupil_takes_up_an_aberration_beyond_the_fitted_zernike_terms():
    from nvplive.recon.calibration import calibrate_pupil, stack_model
    from nvplive.recon.optics import Optics
    from nvplive.recon.physics import camera_intensity, homogeneous_spectrum, pupil_on_grid
    from nvplive.recon.pupil import PupilParameters

    model = stack_model(Optics(wavelength_um=0.6, n_medium=1.33, na=1.1), (24, 24), 0.09, 2.0, pad_yx=(24, 24))
    zernike = np.zeros(28)
    zernike[[3, 12]] = (0.2, 0.5)  # Noll 5 and 14 (quadrafoil, beyond the fitted 5–11)
    true = np.stack([np.full(7, 0.05), np.full(7, -0.03), model.geometry.focal_z_um + np.linspace(-1.2, 1.2, 7)], 1)
    with torch.no_grad():
        image = camera_intensity(model, homogeneous_spectrum(model, torch.as_tensor(true)),
                                 pupil=pupil_on_grid(model, PupilParameters(tuple(zernike)))).numpy()
    frames = np.random.default_rng(2).poisson(image * 2000 / image.mean(axis=(1, 2), keepdims=True) + 20).astype(float)
    cal = calibrate_pupil(model, frames, true, noll=range(5, 12), apodisation_terms=0, iterations=30, free_form=17)
    assert cal.free_form is not None and cal.free_form[1].shape == (17, 17)
    # the free-form pupil explains the quadrafoil; its projection on Noll 5–11 cannot
    assert cal.residual_free_form is not None and cal.residual_free_form < 0.5 * cal.residual, (cal.residual_free_form, cal.residual)


def test_a_free_form_map_too_coarse_for_its_projection_is_refused_before_any_fit():
    from nvplive.recon.calibration import calibrate_pupil, project_free_form, stack_model
    from nvplive.recon.optics import Optics
    from nvplive.recon.pupil import PupilParameters

    # 5 × 5 samples: 13 inside the pupil, fewer than Z_1 … Z_22 (the projection would be
    # an underdetermined least-squares fit with no unique answer)
    with pytest.raises(ValueError, match=r"5 × 5 samples has 13 inside the pupil, fewer than the 22 terms"):
        project_free_form(PupilParameters(), np.zeros((5, 5)), np.zeros((5, 5)), noll=range(5, 23), apodisation_terms=2)
    model = stack_model(Optics(wavelength_um=0.6, n_medium=1.33, na=1.1), (16, 16), 0.09, 2.0, pad_yx=(8, 8))
    with pytest.raises(ValueError, match="fewer than the 22 terms"):
        calibrate_pupil(model, np.ones((2, 16, 16)), np.zeros((2, 3)), free_form=5)
    # 9 × 9 is determined: the same answer on every call, to the least-squares solver's rounding
    # (threaded BLAS may differ in the last bits: 1e-15 against -0.0 in one CI run)
    nine = project_free_form(PupilParameters(), np.zeros((9, 9)), np.full((9, 9), 0.0), noll=range(5, 23), apodisation_terms=2)
    again = project_free_form(PupilParameters(), np.zeros((9, 9)), np.zeros((9, 9)), noll=range(5, 23), apodisation_terms=2)
    np.testing.assert_allclose(nine.zernike_rad, again.zernike_rad, rtol=0, atol=1e-12)
    np.testing.assert_allclose(nine.apodisation, again.apodisation, rtol=0, atol=1e-12)
    assert (nine.sine_condition, nine.source_edge_na) == (again.sine_condition, again.source_edge_na)
