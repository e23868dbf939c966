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

from .physics import ForwardModel, camera_intensity, homogeneous_spectrum


@dataclass(frozen=True)
class GaussianFit:
    """Result of fitting ``a·exp(−r²/2σ²) + c`` to one view (lengths in µm)."""

    x_um: float
    y_um: float
    sigma_um: float
    amplitude: float
    offset: float
    snr: float


def fit_gaussian(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> GaussianFit:
    """Fit an isotropic 2D Gaussian to ``image [Y, X]`` sampled at pixel centres ``y``, ``x`` (µm)."""
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    pixel_um = float(abs(x[1] - x[0])) if nx > 1 else 1.0
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
    y: np.ndarray,
    x: np.ndarray,
    *,
    min_snr: float = 3.0,
) -> np.ndarray:
    """Source positions ``[V, 3]`` (µm): lateral from Gaussian fits, axial from the nominal geometry.

    Raises:
        ReconstructionError: when a view shows no source (fit SNR below ``min_snr``).
    """
    out = np.array(nominal_um_xyz, dtype=np.float64).reshape(-1, 3).copy()
    for v, image in enumerate(images):
        fit = fit_gaussian(image, y, x)
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


def refine_sources(
    model: ForwardModel,
    measured: torch.Tensor,
    sources_um_xyz: torch.Tensor,
    *,
    iterations: int = 100,
    lr_um: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sub-pixel registration of each view's source against the unperturbed model image.

    Lateral positions, brightness and background are fitted (least squares on the
    normalised images) with the homogeneous renderer; the axial position is kept.
    The specimen's weak modulation barely moves this optimum, while the disk edge of
    a defocused bead pins the position to a small fraction of a pixel.

    Returns:
        ``(sources [V, 3], brightness [V], background [V])``.
    """
    scale = measured.mean(dim=(-2, -1)).clamp_min(1e-12)
    target = measured / scale[:, None, None]
    shift = torch.zeros_like(sources_um_xyz[:, :2], requires_grad=True)
    with torch.no_grad():
        b0, c0 = fit_brightness_background(camera_intensity(model, homogeneous_spectrum(model, sources_um_xyz)), measured)
    log_b = torch.zeros_like(b0, requires_grad=True)
    c = (c0 / scale).clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [shift], "lr": lr_um}, {"params": [log_b, c], "lr": 0.01}])
    for _ in range(iterations):
        opt.zero_grad(set_to_none=True)
        src = torch.cat([sources_um_xyz[:, :2] + shift, sources_um_xyz[:, 2:]], dim=1)
        image = camera_intensity(model, homogeneous_spectrum(model, src))
        predicted = image * (b0 * torch.exp(log_b) / scale)[:, None, None] + c[:, None, None]
        loss = ((predicted - target) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        src = torch.cat([sources_um_xyz[:, :2] + shift, sources_um_xyz[:, 2:]], dim=1)
        return src.detach(), (b0 * torch.exp(log_b)).detach(), (c * scale).detach()
