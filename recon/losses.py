"""Image losses, total variation and the coherence mask (DESIGN.md §3–4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 2D Gaussian window ``[1, 1, size, size]`` used by SSIM."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float | torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """Structural similarity map of images ``[N, Y, X]`` (Wang et al. 2004, Gaussian window, valid region)."""
    if window is None:
        window = gaussian_window(device=a.device, dtype=a.dtype)
    a4, b4 = a[:, None], b[:, None]
    mu_a = F.conv2d(a4, window)
    mu_b = F.conv2d(b4, window)
    saa = F.conv2d(a4 * a4, window) - mu_a**2
    sbb = F.conv2d(b4 * b4, window) - mu_b**2
    sab = F.conv2d(a4 * b4, window) - mu_a * mu_b
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return (num / den)[:, 0]


def image_loss(
    predicted: torch.Tensor,
    measured: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    data_range: float | torch.Tensor | None = None,
    window: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L1 + L2 + (1 − SSIM)`` between background-normalised images ``[V, Y, X]``.

    ``mask`` (``[V, Y, X]``, 0…1) weights every term per pixel: it is the coherence
    mask, discounting what the coherent model cannot explain.
    """
    if data_range is None:
        data_range = measured.detach().amax()
    diff = predicted - measured
    if mask is None:
        l1 = diff.abs().mean()
        l2 = (diff**2).mean()
        ssim = ssim_map(predicted, measured, data_range, window).mean()
        return l1 + l2 + (1.0 - ssim)
    weight_sum = mask.sum().clamp_min(1e-12)
    l1 = (mask * diff.abs()).sum() / weight_sum
    l2 = (mask * diff**2).sum() / weight_sum
    window = window if window is not None else gaussian_window(device=mask.device, dtype=mask.dtype)
    smap = ssim_map(predicted, measured, data_range, window)
    cropped = F.conv2d(mask[:, None], window)[:, 0]
    ssim = (cropped * smap).sum() / cropped.sum().clamp_min(1e-12)
    return l1 + l2 + (1.0 - ssim)


def total_variation(volume: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of ``[Z, Y, X]``: mean absolute forward difference."""
    dz = (volume[1:] - volume[:-1]).abs().mean() if volume.shape[0] > 1 else volume.new_zeros(())
    dy = (volume[:, 1:] - volume[:, :-1]).abs().mean()
    dx = (volume[:, :, 1:] - volume[:, :, :-1]).abs().mean()
    return dz + dy + dx


def coherence_radius_um(
    wavelength_um: float, emission_fwhm_um: float, n_medium: float, na: float, path_um: float
) -> float:
    """Radius (µm, at the focal plane) within which a source's image stays coherent.

    Rays leaving the source at angle θ and travelling ``path_um`` axially gain the
    optical path difference ``n·L·(1/cos θ − 1)`` against the axial ray. Interference
    between them survives while that difference is below half the coherence length
    ``λ²/Δλ``; beyond, partial coherence washes out what the coherent model predicts.
    Returns ``math.inf`` when that angle lies outside the pupil's cone (``asin(NA/n)``):
    then every ray the objective collects is coherent with the axial one and the
    coherent model holds over the whole image.
    """
    if emission_fwhm_um <= 0:
        return math.inf
    sin_na = na / n_medium
    tan_na = sin_na / math.sqrt(1 - sin_na**2)
    coherence_length = wavelength_um**2 / emission_fwhm_um
    cos_c = 1.0 / (1.0 + 0.5 * coherence_length / (n_medium * max(path_um, 1e-6)))
    tan_c = math.sqrt(max(1 - cos_c**2, 0.0)) / cos_c
    return math.inf if tan_c >= tan_na else path_um * tan_c


def coherence_mask(
    sources_xy_um: torch.Tensor,
    radii_um: torch.Tensor,
    y_um: torch.Tensor,
    x_um: torch.Tensor,
    *,
    edge_fraction: float = 0.25,
    floor: float = 0.05,
) -> torch.Tensor:
    """Per-view weights ``[V, Y, X]``: 1 over each source's coherent disk, tapering outside it.

    Args:
        sources_xy_um: ``[V, 2]`` lateral source positions (µm, FOV-centre origin).
        radii_um: ``[V]`` coherent radius at the focal plane (µm), see
            :func:`coherence_radius_um`; ``inf`` gives weight 1 everywhere.
        y_um, x_um: camera pixel centres (µm).
        edge_fraction: width of the raised-cosine taper beyond the radius, relative to it.
        floor: weight kept far outside (the scattered light there still carries signal).
    """
    rho = torch.sqrt(
        (x_um[None, None, :] - sources_xy_um[:, 0, None, None]) ** 2
        + (y_um[None, :, None] - sources_xy_um[:, 1, None, None]) ** 2
    )
    finite = torch.isfinite(radii_um)
    radius = torch.where(finite, radii_um, torch.ones_like(radii_um))[:, None, None]
    t = torch.clamp((rho - radius) / (radius * edge_fraction), 0.0, 1.0)
    weights = floor + (1 - floor) * 0.5 * (1 + torch.cos(math.pi * t))
    return torch.where(finite[:, None, None], weights, torch.ones_like(weights))
