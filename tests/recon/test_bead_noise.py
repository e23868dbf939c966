"""Camera noise beyond the optics' band, and the image terms a bead stack's point-source model leaves out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nvplive.recon.calibration import camera_noise, image_transfer


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


def test_camera_noise_refuses_frames_sampled_too_coarsely_for_a_band_beyond():
    with pytest.raises(ValueError, match="too coarsely"):
        camera_noise(np.ones((2, 32, 32)), wavelength_um=0.5, na=1.4, pixel_um=0.2)


def test_bead_transfer_is_the_spectrum_of_the_projected_sphere_and_pixels_a_sinc():
    n, pixel, diameter = 64, 0.05, 0.6
    transfer = image_transfer((n, n), pixel, bead_diameter_um=diameter).numpy()
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
    pixels = image_transfer((n, n), pixel, pixel_integration=True)
    assert torch.allclose(pixels, torch.as_tensor(box), atol=1e-12)
    assert float(image_transfer((8, 8), 0.1)[0, 0]) == 1.0
