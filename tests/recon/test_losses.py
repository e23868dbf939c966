"""Image losses against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nvplive.recon.losses import SPARSITY_REFERENCE_DEPTH_UM, gaussian_window, image_loss, path_sparsity, ssim_map


def _reference_ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """Wang et al. (2004) SSIM with scipy's Gaussian filter (σ 1.5, radius 5), valid region."""
    blur = lambda img: ndimage.gaussian_filter(img, 1.5, truncate=5 / 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    saa, sbb, sab = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    full = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return full[5:-5, 5:-5]


def test_ssim_map_matches_a_gaussian_filter_reference():
    rng = np.random.default_rng(3)
    a = ndimage.gaussian_filter(rng.random((40, 48)), 2.0)
    b = a + 0.05 * rng.standard_normal(a.shape)
    ours = ssim_map(torch.as_tensor(a)[None], torch.as_tensor(b)[None], 1.0, gaussian_window(dtype=torch.float64))[0]
    assert ours.shape == (30, 38)
    np.testing.assert_allclose(ours.numpy(), _reference_ssim_map(a, b, 1.0), rtol=1e-10, atol=1e-12)
    assert float(ours.mean()) < 0.99  # the noise is seen


def test_image_loss_is_zero_for_identical_images_and_its_gradient_points_to_the_target():
    rng = np.random.default_rng(4)
    target = torch.as_tensor(1.0 + rng.random((3, 32, 32)), dtype=torch.float64)
    assert float(image_loss(target, target)) < 1e-12
    predicted = (target + 0.1 * torch.randn(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    loss = image_loss(predicted, target, torch.ones_like(target))
    loss.backward()
    stepped = image_loss(predicted.detach() - 0.05 * predicted.grad / predicted.grad.abs().max(), target, torch.ones_like(target))
    assert float(stepped) < float(loss.detach())


def test_losses_compute_in_the_predictions_dtype_whatever_the_measurement_and_mask_dtypes():
    """Issue 14 item 5 outside physics.py: float64 measurements or masks against a float32 model."""
    rng = np.random.default_rng(5)
    predicted32 = torch.as_tensor(1.0 + rng.random((2, 24, 24)), dtype=torch.float32)
    measured64 = predicted32.double() + 0.01
    mask64 = torch.ones(2, 24, 24, dtype=torch.float64)
    same = image_loss(predicted32, measured64.float(), torch.ones(2, 24, 24))
    for loss in (image_loss(predicted32, measured64, mask64), image_loss(predicted32, measured64)):
        assert loss.dtype == torch.float32
    assert float(image_loss(predicted32, measured64, mask64)) == float(same)
    assert ssim_map(predicted32, measured64, 1.0, gaussian_window(dtype=torch.float64)).dtype == torch.float32


def test_the_path_sparsity_of_a_specimen_does_not_depend_on_the_empty_medium_around_it_nor_on_dz():
    """``path_sparsity`` is Σ_z |Δn|·dz per column over 4 µm: padding the volume with empty
    slices or sampling it twice as finely along z leaves it unchanged (a plain mean |Δn| would
    fall by the padding's factor), and a 4 µm deep volume gives its mean |Δn|."""
    rng = np.random.default_rng(0)
    dn = torch.as_tensor(rng.normal(0.0, 0.01, (8, 6, 5)))
    dz = SPARSITY_REFERENCE_DEPTH_UM / 8
    assert float(path_sparsity(dn, dz)) == pytest.approx(float(dn.abs().mean()), rel=1e-12)
    padded = torch.cat([torch.zeros(16, 6, 5, dtype=dn.dtype), dn, torch.zeros(8, 6, 5, dtype=dn.dtype)])
    assert float(path_sparsity(padded, dz)) == pytest.approx(float(path_sparsity(dn, dz)), rel=1e-12)
    assert float(padded.abs().mean()) == pytest.approx(float(dn.abs().mean()) / 4, rel=1e-12)
    finer = dn.repeat_interleave(2, dim=0)
    assert float(path_sparsity(finer, dz / 2)) == pytest.approx(float(path_sparsity(dn, dz)), rel=1e-12)
