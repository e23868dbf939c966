"""Image losses, total variation and the ℓ1 path prior (docs/reconstruction.md, Loss); the coherence mask weights the image loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Taps of SSIM's Gaussian window (Wang et al. 2004): frames need at least this many pixels per side.
SSIM_WINDOW = 11


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = 1.5, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1D Gaussian ``[size]`` (pixels); SSIM's 2D window is its outer product."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_blur(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Valid-region filtering of ``[N, 1, Y, X]`` by the separable window ``g ⊗ g``.

    Two 1D passes instead of one 2D convolution: the same result, ~3× faster forward
    and backward at an 11-tap window.
    """
    size = window.shape[-1]
    return F.conv2d(F.conv2d(images, window.reshape(1, 1, size, 1)), window.reshape(1, 1, 1, size))


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float | torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """Structural similarity map of images ``[N, Y, X]`` (Wang et al. 2004, Gaussian window, valid region).

    Computed in ``a``'s dtype: ``b`` and ``window`` are cast to it.
    """
    window = gaussian_window(device=a.device, dtype=a.dtype) if window is None else window.to(a.dtype)
    a4, b4 = a[:, None], b.to(a.dtype)[:, None]
    mu_a = gaussian_blur(a4, window)
    mu_b = gaussian_blur(b4, window)
    saa = gaussian_blur(a4 * a4, window) - mu_a**2
    sbb = gaussian_blur(b4 * b4, window) - mu_b**2
    sab = gaussian_blur(a4 * b4, window) - mu_a * mu_b
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
    mask, discounting what the coherent model cannot explain. Computed in
    ``predicted``'s dtype (the model's): ``measured`` and ``mask`` are cast to it.
    """
    measured = measured.to(predicted.dtype)
    mask = None if mask is None else mask.to(predicted.dtype)
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
    window = gaussian_window(device=mask.device, dtype=mask.dtype) if window is None else window.to(mask.dtype)
    smap = ssim_map(predicted, measured, data_range, window)
    cropped = gaussian_blur(mask[:, None], window)[:, 0]
    ssim = (cropped * smap).sum() / cropped.sum().clamp_min(1e-12)
    return l1 + l2 + (1.0 - ssim)


def total_variation(volume: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of ``[Z, Y, X]``: mean absolute forward difference."""
    dz = (volume[1:] - volume[:-1]).abs().mean() if volume.shape[0] > 1 else volume.new_zeros(())
    dy = (volume[:, 1:] - volume[:, :-1]).abs().mean()
    dx = (volume[:, :, 1:] - volume[:, :, :-1]).abs().mean()
    return dz + dy + dx


#: The depth (µm) of a volume whose :func:`path_sparsity` is its plain mean ``|Δn|``: the
#: mismatch and quality benchmarks' standard volume (16 slices of 0.25 µm), where the
#: prior's weight σ was tuned (BENCHMARKS.md, "The ℓ1 prior per depth of optical path").
SPARSITY_REFERENCE_DEPTH_UM = 4.0


def path_sparsity(volume: torch.Tensor, dz_um: float) -> torch.Tensor:
    """ℓ1 sparsity of Δn ``[Z, Y, X]`` along the optical path: the mean over ``(y, x)`` of
    ``Σ_z |Δn|·dz``, divided by :data:`SPARSITY_REFERENCE_DEPTH_UM` (dimensionless, like Δn).

    Each camera pixel measures the phase its column accumulates, so the prior is taken per
    column, like the image loss per pixel: a volume padded with empty medium, or resampled
    along z, keeps its value. A plain mean ``|Δn|`` over the voxels would weaken the prior in
    proportion to the empty slices a deep volume adds, where the missing cone needs it most.
    """
    return volume.abs().sum(dim=0).mean() * (dz_um / SPARSITY_REFERENCE_DEPTH_UM)
