"""Representation building blocks against PyTorch's reference operations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nvplive.recon.representations import resample_linear


@pytest.mark.parametrize(
    "shape, size, mode",
    [
        ((8, 10, 32, 32), (32, 64, 64), "trilinear"),  # NVP's grid to the voxel grid (upsampling)
        ((3, 7, 12, 5), (4, 12, 9), "trilinear"),  # down in z, equal in y, up in x
        ((8, 48, 48), (64, 64), "bilinear"),  # a feature plane
        ((2, 9, 6), (9, 2), "bilinear"),
    ],
)
def test_resample_linear_equals_interpolate_values_and_gradients(shape, size, mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(shape[0], *size, generator=gen, dtype=torch.float64)
    ours = resample_linear(x, size)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    reference = F.interpolate(x[None], size=size, mode=mode, align_corners=False)[0]
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), x)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-12, atol=1e-12)
