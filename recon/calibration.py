"""Starting values for self-calibration: source positions, brightness, background.

Lateral source positions come from a 2D Gaussian fit of each view (the defocused
image of a bead is centred on it); the axial position comes from the geometry
(the nominal depth). Brightness ``b_i`` and background ``c_i`` come from a linear
least-squares fit of the unperturbed model image to the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares

from nvplive.errors import ReconstructionError


@dataclass(frozen=True)
class GaussianFit:
    """Result of fitting ``a·exp(−r²/2σ²) + c`` to one view (lengths in µm)."""

    x_um: float
    y_um: float
    sigma_um: float
    amplitude: float
    offset: float
    snr: float


def fit_gaussian(image: np.ndarray, pixel_um: float) -> GaussianFit:
    """Fit an isotropic 2D Gaussian to ``image [Y, X]``; coordinates use the FOV-centre origin."""
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    y = (np.arange(ny) - ny / 2) * pixel_um
    x = (np.arange(nx) - nx / 2) * pixel_um
    base = np.percentile(img, 5)
    w = np.clip(img - base, 0, None)
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        return GaussianFit(0.0, 0.0, 0.0, 0.0, float(base), 0.0)
    x0 = float((w.sum(0) * x).sum() / total)
    y0 = float((w.sum(1) * y).sum() / total)
    r2 = (x[None, :] - x0) ** 2 + (y[:, None] - y0) ** 2
    s0 = float(np.sqrt(max((w * r2).sum() / total / 2, pixel_um**2)))
    a0 = float(img.max() - base)
    yy, xx = np.meshgrid(y, x, indexing="ij")

    def residual(p: np.ndarray) -> np.ndarray:
        a, cx, cy, s, c = p
        return (a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) + c - img).ravel()

    extent = 0.5 * max(nx, ny) * pixel_um
    fit = least_squares(
        residual,
        [a0, x0, y0, s0, base],
        bounds=([0, -2 * extent, -2 * extent, 0.5 * pixel_um, -np.inf], [np.inf, 2 * extent, 2 * extent, 4 * extent, np.inf]),
        max_nfev=200,
    )
    a, cx, cy, s, c = fit.x
    noise = float(np.std(fit.fun)) or 1e-12
    return GaussianFit(float(cx), float(cy), float(s), float(a), float(c), float(a / noise))


def initial_sources(
    images: np.ndarray,
    nominal_um_xyz: np.ndarray,
    pixel_um: float,
    *,
    min_snr: float = 3.0,
) -> np.ndarray:
    """Source positions ``[V, 3]`` (µm): lateral from Gaussian fits, axial from the nominal geometry.

    Raises:
        ReconstructionError: when a view shows no source (fit SNR below ``min_snr``).
    """
    out = np.array(nominal_um_xyz, dtype=np.float64).reshape(-1, 3).copy()
    for v, image in enumerate(images):
        fit = fit_gaussian(image, pixel_um)
        if fit.snr < min_snr or fit.amplitude <= 0:
            raise ReconstructionError(
                f"View {v}: no fluorescent source is visible (fit signal-to-noise {fit.snr:.1f} < {min_snr}); "
                "check the source selection and exposure."
            )
        out[v, 0], out[v, 1] = fit.x_um, fit.y_um
    return out


def fit_brightness_background(model_images: torch.Tensor, measured: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view least squares ``measured ≈ b·model + c``; returns ``(b [V], c [V])`` with b > 0."""
    m = model_images.reshape(model_images.shape[0], -1)
    y = measured.reshape(measured.shape[0], -1)
    m_mean, y_mean = m.mean(1, keepdim=True), y.mean(1, keepdim=True)
    cov = ((m - m_mean) * (y - y_mean)).mean(1)
    var = ((m - m_mean) ** 2).mean(1).clamp_min(1e-20)
    b = (cov / var).clamp_min(1e-6 * (y_mean[:, 0].abs() / m_mean[:, 0].abs().clamp_min(1e-20)))
    c = y_mean[:, 0] - b * m_mean[:, 0]
    return b, c
