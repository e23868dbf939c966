"""Image losses and total variation (DESIGN.md §3–4); the coherence mask weights the image loss."""

from __future__ import annotations

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
