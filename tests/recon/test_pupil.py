"""Tests of the detection pupil (recon/pupil.py) and its use by the renderer.

Zernike polynomials against their closed forms (Noll 1976, table 1) and their
orthonormality on the unit disc by quadrature; the pupil against its definition;
gradients in the coefficients by finite differences (float64).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nvplive.recon import physics
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.pupil import PupilParameters, aperture, noll_to_nm, pupil_function, zernike

OPTICS = Optics(wavelength_um=0.6, n_medium=1.33, na=0.8)


def test_noll_indices_follow_nolls_table():
    expected = {
        1: (0, 0), 2: (1, 1), 3: (1, -1), 4: (2, 0), 5: (2, -2), 6: (2, 2), 7: (3, -1), 8: (3, 1),
        9: (3, -3), 10: (3, 3), 11: (4, 0), 12: (4, 2), 13: (4, -2), 14: (4, 4), 15: (4, -4),
        16: (5, 1), 17: (5, -1), 18: (5, 3), 19: (5, -3), 20: (5, 5), 21: (5, -5), 22: (6, 0),
    }
    assert {j: noll_to_nm(j) for j in expected} == expected
    with pytest.raises(ValueError):
        noll_to_nm(0)


def test_zernike_closed_forms():
    gen = torch.Generator().manual_seed(0)
    rho = torch.rand(50, generator=gen, dtype=torch.float64)
    theta = 2 * math.pi * torch.rand(50, generator=gen, dtype=torch.float64)
    closed = {
        1: torch.ones_like(rho),
        2: 2 * rho * torch.cos(theta),
        3: 2 * rho * torch.sin(theta),
        4: math.sqrt(3) * (2 * rho**2 - 1),
        5: math.sqrt(6) * rho**2 * torch.sin(2 * theta),
        6: math.sqrt(6) * rho**2 * torch.cos(2 * theta),
        7: math.sqrt(8) * (3 * rho**3 - 2 * rho) * torch.sin(theta),
        8: math.sqrt(8) * (3 * rho**3 - 2 * rho) * torch.cos(theta),
        11: math.sqrt(5) * (6 * rho**4 - 6 * rho**2 + 1),
        22: math.sqrt(7) * (20 * rho**6 - 30 * rho**4 + 12 * rho**2 - 1),
    }
    for j, value in closed.items():
        assert torch.allclose(zernike(j, rho, theta), value, atol=1e-12), j


def test_zernike_are_orthonormal_on_the_unit_disc():
    """(1/π) ∫_disc Z_i Z_j = δ_ij for Noll 1…28, by Gauss–Legendre in ρ (exact for these
    polynomial degrees) and the trapezoid rule in θ (exact for trigonometric polynomials)."""
    nodes, weights = np.polynomial.legendre.leggauss(20)
    rho = torch.from_numpy(0.5 * (nodes + 1))
    w_rho = torch.from_numpy(0.5 * weights) * rho  # ρ dρ
    n_theta = 64
    theta = torch.arange(n_theta, dtype=torch.float64) * 2 * math.pi / n_theta
    r, t = rho[:, None], theta[None, :]
    basis = torch.stack([zernike(j, r, t).expand(len(rho), n_theta) for j in range(1, 29)])  # [J, R, T]
    weight = w_rho[:, None] * (2 * math.pi / n_theta) / math.pi
    gram = torch.einsum("irt,jrt,rt->ij", basis, basis, weight.expand(len(rho), n_theta))
    assert torch.allclose(gram, torch.eye(28, dtype=torch.float64), atol=1e-10)


def test_pupil_parameters_round_trip():
    params = PupilParameters(zernike_rad=(0.1, -0.2, 0.0, 0.3), apodisation=(-0.15, 0.02), sine_condition=True)
    assert PupilParameters.from_dict(params.to_dict()) == params
    assert PupilParameters.from_dict({}) == PupilParameters()
    assert params.aberration_rms_rad == pytest.approx(math.sqrt(0.01 + 0.04 + 0.09))
    with pytest.raises(ValueError):
        PupilParameters.from_dict({"zernike_rad": [0.1], "first_noll_index": 1})
    with pytest.raises(ValueError):
        PupilParameters(zernike_rad=(float("nan"),))


def test_a_pupil_with_the_default_source_spectrum_keeps_its_pupil():
    fitted = PupilParameters(zernike_rad=(0.0, 0.0, 0.1), apodisation=(-0.2,), source_edge_na=(0.7, 0.8),
                             source_beyond_na=0.3, source_rim_width=0.06)
    plain = fitted.with_default_source_spectrum()
    assert plain.source_spectrum == PupilParameters().source_spectrum
    assert (plain.zernike_rad, plain.apodisation) == (fitted.zernike_rad, fitted.apodisation)


def test_pupil_function_against_its_definition():
    ky, kx = physics.frequency_grid(64, 64, 0.2, 0.2, dtype=torch.float64)
    k_cut = OPTICS.k0 * OPTICS.na
    hard = aperture(ky, kx, OPTICS.k0, OPTICS.na)
    plain = pupil_function(ky, kx, OPTICS.k0, OPTICS.na, OPTICS.n_medium)
    assert torch.equal(plain.real, hard) and torch.equal(plain.imag, torch.zeros_like(hard))
    c = torch.zeros(21, dtype=torch.float64)
    c[11 - 2] = 0.7  # primary spherical
    a = torch.tensor([-0.2, 0.05], dtype=torch.float64)
    p = pupil_function(ky, kx, OPTICS.k0, OPTICS.na, OPTICS.n_medium, c, a, sine_condition=True)
    rho = torch.sqrt(kx**2 + ky**2) / k_cut
    rho = rho.clamp(max=1.0)  # edge cells are partly outside the disc
    expected_amplitude = hard * (1 - 0.2 * rho**2 + 0.05 * rho**4) * (1 - (OPTICS.na * rho / OPTICS.n_medium) ** 2) ** 0.25
    expected_phase = 0.7 * math.sqrt(5) * (6 * rho**4 - 6 * rho**2 + 1)
    inside = hard > 0
    assert torch.allclose(p.abs(), expected_amplitude, atol=1e-12)
    assert 0 < float(hard.min() + (hard[(hard > 0) & (hard < 1)]).numel()) and float(hard.max()) == 1.0  # area-weighted edge
    assert torch.allclose(p[inside], torch.polar(expected_amplitude, expected_phase)[inside], atol=1e-12)
    assert p.dtype == torch.complex128


def test_an_apodisation_is_a_transmission_held_at_zero_never_a_phase_flip():
    """``A = 1 − 1.5ρ²`` turns negative beyond ρ = 0.82: the pupil is dark there, not inverted."""
    ky, kx = physics.frequency_grid(64, 64, 0.2, 0.2, dtype=torch.float64)
    a = torch.tensor([-1.5], dtype=torch.float64, requires_grad=True)
    p = pupil_function(ky, kx, OPTICS.k0, OPTICS.na, OPTICS.n_medium, None, a)
    rho = (torch.sqrt(kx**2 + ky**2) / (OPTICS.k0 * OPTICS.na)).clamp(max=1.0)
    hard = aperture(ky, kx, OPTICS.k0, OPTICS.na)
    assert torch.allclose(p.real, hard * (1 - 1.5 * rho**2).clamp_min(0.0), atol=1e-12)
    assert float(p.real.detach().min()) >= 0.0 and float(p.imag.detach().abs().max()) == 0.0
    p.real.sum().backward()  # the gradient comes from where the pupil transmits
    assert a.grad is not None and float(a.grad) == pytest.approx(float((hard * rho**2 * (rho**2 < 1 / 1.5)).sum()))


@pytest.fixture(scope="module")
def tiny_model() -> physics.ForwardModel:
    return physics.ForwardModel.build(OPTICS, VolumeGeometry((4, 12, 12), (0.25, 0.25, 0.25)), dtype=torch.float64)


def test_default_render_is_the_hard_aperture(tiny_model):
    """No pupil, or the neutral pupil, give the same image as before the pupil existed."""
    gen = torch.Generator().manual_seed(1)
    dn = 0.02 * torch.rand(tiny_model.geometry.shape_zyx, generator=gen, dtype=torch.float64)
    src = torch.tensor([[0.1, -0.2, -0.8], [0.4, 0.3, -1.1]], dtype=torch.float64)
    plain = physics.render(tiny_model, dn, src)
    neutral = physics.render(tiny_model, dn, src, pupil=physics.pupil_on_grid(tiny_model, PupilParameters()))
    assert torch.equal(plain, neutral)
    aberrated = physics.render(
        tiny_model, dn, src, pupil=physics.pupil_on_grid(tiny_model, PupilParameters(zernike_rad=(0, 0, 0.5)))
    )
    assert float((aberrated - plain).abs().max()) > 0.05 * float(plain.abs().max())


def test_render_is_differentiable_in_the_pupil_coefficients(tiny_model):
    gen = torch.Generator().manual_seed(2)
    dn = 0.02 * torch.rand(tiny_model.geometry.shape_zyx, generator=gen, dtype=torch.float64)
    src = torch.tensor([[0.13, -0.21, -0.8]], dtype=torch.float64)
    zernike_rad = (0.2 * torch.randn(10, generator=gen, dtype=torch.float64)).requires_grad_()
    apodisation = torch.tensor([-0.1, 0.03], dtype=torch.float64, requires_grad=True)

    def images(z, a):
        pupil = physics.pupil_on_grid(tiny_model, (z, a), sine_condition=True)
        return physics.render(tiny_model, dn, src, pupil=pupil)

    assert torch.autograd.gradcheck(images, (zernike_rad, apodisation), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_tilt_shifts_the_image(tiny_model):
    """Z2 = 2ρ·cos θ with coefficient c is the phase ramp exp(i·2c·kx/(k0·NA)): the image moves
    by −2c/(k0·NA) in x (spectrum convention Ê(k) = Σ E(x)·exp(−i·k·x))."""
    geometry = VolumeGeometry((4, 64, 64), (0.25, 0.15, 0.15))
    model = physics.ForwardModel.build(OPTICS, geometry, dtype=torch.float64)
    src = torch.tensor([[0.0, 0.0, -0.5]], dtype=torch.float64)
    dn = torch.zeros(geometry.shape_zyx, dtype=torch.float64)
    shift_um = 0.6
    c = -shift_um * OPTICS.k0 * OPTICS.na / 2
    moved = physics.render(model, dn, src, pupil=physics.pupil_on_grid(model, PupilParameters(zernike_rad=(c,))))[0]
    plain = physics.render(model, dn, src)[0]
    _, xs = geometry.camera_coordinates_um()
    centroid = lambda image: float((image.sum(0).numpy() * xs).sum() / image.sum().item())  # noqa: E731
    assert centroid(moved) - centroid(plain) == pytest.approx(shift_um, abs=0.02)
