"""Physics tests of the multi-slice FDT renderer (recon/physics.py, docs/physics.md).

The references are computed independently of the renderer's FFT code wherever the
physics allows: the homogeneous-medium image against a Hankel-transform quadrature
of the band-limited spherical wave, free-space propagation against the third-party
package ``nrefocus``, weak objects against a first-order (Born) single-scattering
sum written here with numpy. Lengths are in µm.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import simpson
from scipy.special import j0

from nvplive.errors import GeometryError
from nvplive.recon import physics
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.pupil import SOURCE_RIM_WIDTH

OPTICS = Optics(wavelength_um=0.6, n_medium=1.33, na=0.8)
#: 24 slabs × 48 × 48 voxels of 0.25 µm: a 6 × 12 × 12 µm volume, field upsampled ×2.
GEOMETRY = VolumeGeometry(shape_zyx=(24, 48, 48), voxel_um_zyx=(0.25, 0.25, 0.25))


def rel_l2(a, b) -> float:
    """‖a − b‖ / ‖b‖ for numpy arrays or tensors."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def sources(*xyz: tuple[float, float, float], dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(xyz, dtype=dtype)


def focal_field(model: physics.ForwardModel, dn: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Image-side field on the camera's field of view, ``[V, s·Ny, s·Nx]``."""
    return physics.image_field(model, physics.multislice(model, dn, src))


def analytic_focal_field(
    optics: Optics, geometry: VolumeGeometry, source_xyz, upsample: int, n_k: int = 1001
) -> np.ndarray:
    """Band-limited spherical wave through the hard pupil on the focal plane, by quadrature.

    Weyl's expansion ``exp(i·km·r)/r = (i/2π) ∫ d²k exp(i(k⊥·ρ + kz·|z|))/kz``, band
    limited by the raised-cosine edge ``A(k)`` (1 inside the pupil when the source NA
    exceeds the NA), cut by the pupil at ``k0·NA`` and integrated over angle, is radially
    symmetric about the source's lateral position:
    ``E(ρ) = i ∫_0^{k0·min(NA, NA_src)} exp(i·kz·d)/kz · A(k) · J0(k·ρ) k dk`` with
    ``d = z_f − z_s``. Evaluated on the grid ``x_j = (j − n/2)·dx/s`` of the
    (upsampled) camera field of view.
    """
    _, ny, nx = geometry.shape_zyx
    _, dy, dx = geometry.voxel_um_zyx
    xs, ys, zs = source_xyz
    k_in, k_cut = physics.source_band_limits(optics, geometry)
    k = np.linspace(0.0, min(k_cut, optics.k0 * optics.na), n_k)
    kz = np.sqrt(optics.km**2 - k**2)
    band = physics.band_edge(torch.from_numpy(k), k_cut, k_in).numpy()
    weight = np.exp(1j * kz * (geometry.focal_z_um - zs)) / kz * band * k
    s = upsample
    # Samples sit at the centres of the s × s sub-pixels of each voxel-sized pixel
    # centred on x_j = (j − N/2)·dx (docs/physics.md, Conventions).
    y = (np.arange(s * ny) - s * ny / 2) * dy / s - (s - 1) / (2 * s) * dy
    x = (np.arange(s * nx) - s * nx / 2) * dx / s - (s - 1) / (2 * s) * dx
    rho = np.hypot(y[:, None] - ys, x[None, :] - xs).ravel()
    out = np.empty(rho.size, dtype=complex)
    chunk = 2048
    for i in range(0, rho.size, chunk):
        integrand = weight[None, :] * j0(np.outer(rho[i : i + chunk], k))
        out[i : i + chunk] = 1j * simpson(integrand, x=k, axis=1)
    return out.reshape(s * ny, s * nx)


@pytest.fixture(scope="module")
def model64() -> physics.ForwardModel:
    return physics.ForwardModel.build(OPTICS, GEOMETRY, dtype=torch.float64)


# --- 1. homogeneous medium against direct analytic propagation (docs/physics.md) -----------------


@pytest.mark.parametrize(
    "source_xyz",
    [
        (0.0, 0.0, -1.0),  # on a pixel
        (0.3, -0.7, -2.0),  # sub-pixel in x and y (dx = 0.25)
        (1.13, 2.41, -3.0),  # off-centre, deeper
        (-3.37, 0.05, -0.5),  # near the edge of the field of view, shallow
    ],
)
def test_homogeneous_medium_matches_analytic_spherical_wave(model64, source_xyz):
    dn = torch.zeros(GEOMETRY.shape_zyx, dtype=torch.float64)
    field = focal_field(model64, dn, sources(source_xyz))[0]
    reference = analytic_focal_field(OPTICS, GEOMETRY, source_xyz, model64.upsample)
    assert model64.upsample == 2
    assert field.shape == reference.shape
    assert rel_l2(field, reference) < 0.01
    # The camera integrates |E|² over each voxel-sized pixel: the analytic intensity's mean
    # over 6 × 6 points per pixel (the midpoint rule, converged well below the bound here).
    ny, nx = GEOMETRY.camera_shape_yx
    fine = analytic_focal_field(OPTICS, GEOMETRY, source_xyz, 6)
    expected_image = (np.abs(fine) ** 2).reshape(ny, 6, nx, 6).mean(axis=(1, 3))
    assert rel_l2(physics.render(model64, dn, sources(source_xyz))[0], expected_image) < 0.005


#: The demo geometry and the issue-13 independent-recording geometry (both 32×64×64).
SWEEP_GEOMETRIES = {
    "demo": (Optics(wavelength_um=0.6, n_medium=1.33, na=0.8), VolumeGeometry((32, 64, 64), (0.25, 0.25, 0.25))),
    "issue13": (Optics(wavelength_um=0.52, n_medium=1.333, na=0.8), VolumeGeometry((32, 64, 64), (0.5, 0.16, 0.16))),
}


@pytest.mark.parametrize("name", sorted(SWEEP_GEOMETRIES))
@pytest.mark.parametrize("depth_um", [1.0, 4.0])
def test_wide_source_cone_through_hard_pupil_matches_analytic_anywhere(name, depth_um):
    """Default source NA (beyond the detection NA) and a hard pupil: the multi-slice image of
    Δn = 0 equals the Hankel integral for sources on axis, mid-field and at the field's
    edge (0.95·W, off both axes), shallow and deep (the model sized for that depth)."""
    optics, geometry = SWEEP_GEOMETRIES[name]
    assert physics.source_band_limits(optics, geometry)[0] >= optics.k0 * optics.na  # flat inside the pupil
    model = physics.ForwardModel.build(optics, geometry, source_depth_um=depth_um, dtype=torch.float64)
    half_width = 0.5 * geometry.shape_zyx[2] * geometry.voxel_um_zyx[2]
    dn = torch.zeros(geometry.shape_zyx, dtype=torch.float64)
    for x in (0.0, 0.6 * half_width, 0.95 * half_width):
        src = (x, 0.3 * x, -depth_um)
        field = focal_field(model, dn, sources(src))[0]
        assert rel_l2(field, analytic_focal_field(optics, geometry, src, model.upsample, n_k=2001)) < 0.01, src


@pytest.mark.parametrize("focal_z_um", [0.4, 5.5])
def test_refocus_below_and_above_the_volume_centre_matches_analytic(focal_z_um):
    """The focal plane need not be the centre: near the bottom (backward refocus) or the top."""
    geometry = VolumeGeometry((16, 48, 48), (0.25, 0.25, 0.25), focal_plane_z_um=focal_z_um)
    model = physics.ForwardModel.build(OPTICS, geometry, source_depth_um=1.5, dtype=torch.float64)
    src = (0.42, -0.18, -1.5)
    field = focal_field(model, torch.zeros(geometry.shape_zyx, dtype=torch.float64), sources(src))[0]
    assert rel_l2(field, analytic_focal_field(OPTICS, geometry, src, model.upsample)) < 0.01


def test_homogeneous_medium_matches_analytic_without_upsampling():
    """Fine voxels (dx ≤ λ/(4·NA)) use the field as is; the physics must not change."""
    geometry = VolumeGeometry((16, 64, 64), (0.15, 0.15, 0.15))
    model = physics.ForwardModel.build(OPTICS, geometry, dtype=torch.float64)
    assert model.upsample == 1
    src = (-0.61, 0.37, -1.2)
    field = focal_field(model, torch.zeros(geometry.shape_zyx, dtype=torch.float64), sources(src))[0]
    assert rel_l2(field, analytic_focal_field(OPTICS, geometry, src, 1)) < 0.01


def test_camera_pixels_integrate_the_intensity_without_upsampling():
    """With samples at the pixels' centres (dx ≤ λ/(4·NA)) each pixel still integrates |E|²
    over its square: the image equals the analytic intensity's mean over 8 × 8 points per
    pixel, also for a bright disc at the field's edge (the margin keeps the FFT's period
    from wrapping it onto the other edge), and differs from the intensity at the centres."""
    geometry = VolumeGeometry((16, 64, 64), (0.15, 0.15, 0.15))
    model = physics.ForwardModel.build(OPTICS, geometry, dtype=torch.float64)
    assert model.upsample == 1 and model.pixel_margin_yx == (physics.PIXEL_INTEGRATION_MARGIN,) * 2
    src = (4.3, -3.9, -0.4)  # near the field's corner (test_camera_pixels_are_the_exact_mean_… covers the rest)
    image = physics.render(model, torch.zeros(geometry.shape_zyx, dtype=torch.float64), sources(src))[0].numpy()
    fine = np.abs(analytic_focal_field(OPTICS, geometry, src, 8)) ** 2
    integrated = fine.reshape(64, 8, 64, 8).mean(axis=(1, 3))
    at_centres = np.abs(analytic_focal_field(OPTICS, geometry, src, 1)) ** 2
    assert rel_l2(image, integrated) < 0.005
    assert rel_l2(at_centres, integrated) > 0.02


def exact_pixel_means(model: physics.ForwardModel, spectrum: torch.Tensor) -> np.ndarray:
    """Mean of |E|² over each camera pixel in closed form, E = ifft2(spectrum) the model's own
    periodic, band-limited field on the exit grid: with ``Ê`` the spectrum's nonzero modes,
    ``∫|E|² = Σ Ê_a·Ê*_a'·G(f_a − f_a')`` per axis, ``G(d) = exp(2πi·d·c)·sinc(d·w)`` for a pixel
    of width ``w`` samples centred on sample ``c``."""
    ye, xe = model.exit_shape_yx
    _, ny, nx = model.geometry.shape_zyx
    b = model.geometry.camera_binning
    py, px = (p + e for p, e in zip(model.pad_yx, model.exit_pad_yx))
    modes = spectrum.detach().numpy().astype(np.complex128) / (ye * xe)
    iy = np.nonzero(np.abs(modes).sum((0, 2)) > 0)[0]
    ix = np.nonzero(np.abs(modes).sum((0, 1)) > 0)[0]
    fy, fx = np.fft.fftfreq(ye)[iy], np.fft.fftfreq(xe)[ix]

    def gram(f: np.ndarray, centre: float) -> np.ndarray:
        d = f[:, None] - f[None, :]
        return np.exp(2j * np.pi * d * centre) * np.sinc(d * b)

    out = np.zeros((modes.shape[0], ny // b, nx // b))
    for v in range(modes.shape[0]):
        sv = modes[v][np.ix_(iy, ix)]
        columns = [sv @ gram(fx, px + c * b + (b - 1) / 2) @ sv.conj().T for c in range(nx // b)]
        for r in range(ny // b):
            gy = gram(fy, py + r * b + (b - 1) / 2)
            for c in range(nx // b):
                out[v, r, c] = np.real(np.sum(gy * columns[c]))
    return out


@pytest.mark.parametrize(
    "voxel_um, binning, pad_yx, src",
    [
        (0.15, 1, None, (2.3, -1.7, -0.3)),  # no upsampling, a disc at the field's corner
        (0.15, 1, None, (3.2, 0.0, -0.3)),  # no upsampling, a compact spot outside the field
        (0.15, 2, None, (3.2, 0.0, -0.3)),  # camera binning
        (0.15, 1, (0, 0), (2.3, -1.7, -0.3)),  # no padding: the window is the periodic grid
        (0.25, 2, None, (4.6, 0.0, -0.3)),  # upsampled ×2 and binned
        (0.25, 1, (0, 0), (3.9, -2.9, -0.3)),
    ],
)
def test_camera_pixels_are_the_exact_mean_of_the_intensity(voxel_um, binning, pad_yx, src):
    """On a non-square field, with and without upsampling, binning and padding, every camera
    pixel equals the closed-form mean of the model's own |E|² over its square."""
    geometry = VolumeGeometry((4, 24, 32), (0.25, voxel_um, voxel_um), camera_binning=binning)
    model = physics.ForwardModel.build(OPTICS, geometry, pad_yx=pad_yx, dtype=torch.float64)
    spectrum = physics.homogeneous_spectrum(model, sources(src))
    image = physics.camera_intensity(model, spectrum).numpy()[0]
    assert image.shape == geometry.camera_shape_yx
    assert rel_l2(image, exact_pixel_means(model, spectrum)[0]) < 1e-5


def test_a_bead_images_as_the_mean_of_the_point_sources_filling_it():
    """A 0.6 µm bead: the renderer's image is the mean of the point images of emitters
    filling the sphere uniformly (on a 0.04 µm lateral grid, each weighted by the sphere's
    chord through it; the axial extent is left out, as in :func:`physics.bead_transfer`)."""
    geometry = VolumeGeometry((4, 24, 24), (0.25, 0.25, 0.25))
    radius = 0.3
    point = physics.ForwardModel.build(OPTICS, geometry, pad_yx=(16, 16), dtype=torch.float64)
    bead = physics.ForwardModel.build(OPTICS, geometry, pad_yx=(16, 16), bead_diameter_um=2 * radius, dtype=torch.float64)
    centre = sources((0.4, -0.3, -1.5))
    axis = np.arange(-radius, radius + 1e-9, 0.04)
    yy, xx = np.meshgrid(axis - axis.mean(), axis - axis.mean(), indexing="ij")
    inside = xx**2 + yy**2 < radius**2
    chord = 2.0 * np.sqrt(radius**2 - xx[inside] ** 2 - yy[inside] ** 2)
    emitters = centre.repeat(int(inside.sum()), 1)
    emitters[:, 0] += torch.from_numpy(xx[inside])
    emitters[:, 1] += torch.from_numpy(yy[inside])
    with torch.no_grad():
        each = physics.camera_intensity(point, physics.homogeneous_spectrum(point, emitters)).numpy()
        mean = (each * (chord / chord.sum())[:, None, None]).sum(axis=0)
        image = physics.camera_intensity(bead, physics.homogeneous_spectrum(bead, centre)).numpy()[0]
        as_point = physics.camera_intensity(point, physics.homogeneous_spectrum(point, centre)).numpy()[0]
    assert rel_l2(image, mean) < 2e-3  # measured 8e-4
    assert rel_l2(as_point, mean) > 0.1  # measured 0.13: the bead's size matters at this scale


def test_the_bead_transfer_is_as_exact_in_float32_as_in_float64():
    """Near zero frequency ``sin u − u·cos u`` cancels; a float32 renderer's transfer must
    still equal the float64 calibration renderer's (a 0.1 µm bead on a 640-sample grid)."""
    single = physics.bead_transfer((640, 640), (0.08, 0.08), 0.1, dtype=torch.float32)
    double = physics.bead_transfer((640, 640), (0.08, 0.08), 0.1, dtype=torch.float64)
    assert single.dtype == torch.float32
    assert float((single.double() - double).abs().max()) < 1e-7


def test_a_bead_diameter_that_is_negative_or_not_finite_is_refused():
    for diameter in (-0.1, float("nan"), float("inf")):
        with pytest.raises(GeometryError, match="bead diameter"):
            physics.ForwardModel.build(OPTICS, VolumeGeometry((2, 8, 8), (0.25, 0.25, 0.25)), bead_diameter_um=diameter)


# --- 2. energy conservation of the angular-spectrum propagator ------------------------------


def _random_field(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    real, imag = torch.randn(2, n, n, generator=gen, dtype=torch.float64)
    return torch.complex(real, imag)


def test_propagation_conserves_energy_in_the_propagating_band():
    n, dx, km = 64, 0.1, OPTICS.km  # Nyquist π/dx ≈ 31 rad/µm > km ≈ 13.9: part of the grid is evanescent
    ky, kx = physics.frequency_grid(n, n, dx, dx, dtype=torch.float64)
    kz, propagating = physics.axial_wavenumber(ky, kx, km)
    assert 0 < int(propagating.sum()) < n * n
    k_perp = torch.sqrt(kx**2 + ky**2)
    inside = (k_perp < 0.95 * km).to(torch.complex128)
    field = torch.fft.ifft2(torch.fft.fft2(_random_field(n, 0)) * inside)  # spectrum strictly propagating
    for distance in (0.37, 5.0, -2.6):
        out = physics.propagate(field, physics.propagation_kernel(kz, propagating, distance))
        assert rel_l2(out, field) > 0.1  # it did propagate
        energy_in, energy_out = float((field.abs() ** 2).sum()), float((out.abs() ** 2).sum())
        assert energy_out == pytest.approx(energy_in, rel=1e-12)
    # Propagation is a group: forward then back returns the field, d1 then d2 equals d1 + d2.
    there = physics.propagate(field, physics.propagation_kernel(kz, propagating, 3.1))
    back = physics.propagate(there, physics.propagation_kernel(kz, propagating, -3.1))
    assert rel_l2(back, field) < 1e-12
    two_steps = physics.propagate(there, physics.propagation_kernel(kz, propagating, 1.4))
    one_step = physics.propagate(field, physics.propagation_kernel(kz, propagating, 4.5))
    assert rel_l2(two_steps, one_step) < 1e-12


def test_propagation_removes_evanescent_energy():
    n, dx, km = 64, 0.1, OPTICS.km
    ky, kx = physics.frequency_grid(n, n, dx, dx, dtype=torch.float64)
    kz, propagating = physics.axial_wavenumber(ky, kx, km)
    field = _random_field(n, 1)  # white spectrum: propagating and evanescent parts
    spectrum = np.fft.fft2(field.numpy())
    k_perp = np.hypot(*np.meshgrid(2 * np.pi * np.fft.fftfreq(n, dx), 2 * np.pi * np.fft.fftfreq(n, dx), indexing="ij"))
    propagating_energy = float((np.abs(spectrum[k_perp < km]) ** 2).sum()) / (n * n)  # Parseval
    out = physics.propagate(field, physics.propagation_kernel(kz, propagating, 1.0))
    energy_out = float((out.abs() ** 2).sum())
    assert energy_out == pytest.approx(propagating_energy, rel=1e-12)
    assert energy_out < 0.9 * float((field.abs() ** 2).sum())


# --- 3. a laterally uniform layer only adds the phase k0·Δn·L ---------------------------------


def test_uniform_layer_adds_a_global_phase_on_a_periodic_grid():
    """Δn uniform over the whole (unpadded, periodic) plane commutes with propagation."""
    model = physics.ForwardModel.build(OPTICS, GEOMETRY, pad_yx=(0, 0), dtype=torch.float64)
    dz = GEOMETRY.voxel_um_zyx[0]
    dn = torch.zeros(GEOMETRY.shape_zyx, dtype=torch.float64)
    delta_n, first, last = 0.02, 3, 13  # slabs 3..12: L = 10·dz = 2.5 µm
    dn[first:last] = delta_n
    src = sources((0.3, -0.2, -1.0))
    homogeneous = focal_field(model, torch.zeros_like(dn), src)
    layered = focal_field(model, dn, src)
    expected_phase = OPTICS.k0 * delta_n * (last - first) * dz  # ≈ 0.52 rad
    assert rel_l2(layered, homogeneous * complex(math.cos(expected_phase), math.sin(expected_phase))) < 1e-10
    # The measured global phase, not just consistency: arg⟨E0, E⟩ = k0·Δn·L.
    measured = float(torch.angle((homogeneous.conj() * layered).sum()))
    assert measured == pytest.approx(expected_phase, abs=1e-9)
    # An imaginary part κ absorbs: the amplitude falls by exp(−k0·κ·L) (Beer–Lambert).
    kappa = 0.004
    absorbing = focal_field(model, torch.complex(dn, kappa * (dn != 0).to(dn.dtype)), src)
    attenuation = math.exp(-OPTICS.k0 * kappa * (last - first) * dz)
    assert rel_l2(absorbing, layered * attenuation) < 1e-10


def test_uniform_layer_over_the_field_of_view_adds_a_global_phase(model64):
    """With the default padding Δn stops at the edge of the field of view; a layer below the
    focal plane still only shifts the phase of the central image (the rays that form it
    cross the layer inside the field of view)."""
    dz = GEOMETRY.voxel_um_zyx[0]
    dn = torch.zeros(GEOMETRY.shape_zyx, dtype=torch.float64)
    delta_n, first, last = 0.01, 2, 8  # z ∈ [0.5, 2.0] µm, focal plane at 3 µm
    dn[first:last] = delta_n
    src = sources((0.2, -0.3, -1.0))
    homogeneous = focal_field(model64, torch.zeros_like(dn), src)[0]
    layered = focal_field(model64, dn, src)[0]
    phase = OPTICS.k0 * delta_n * (last - first) * dz
    n = homogeneous.shape[-1]
    centre = slice(n // 4, 3 * n // 4)
    expected = homogeneous * complex(math.cos(phase), math.sin(phase))
    assert rel_l2(layered[centre, centre], expected[centre, centre]) < 0.005
    assert rel_l2(layered[centre, centre], homogeneous[centre, centre]) > 0.1  # the phase (0.157 rad) is there


# --- 4. weak objects: first-order (Born) scattering -------------------------------------------


def born_focal_field(
    model: physics.ForwardModel, dn: np.ndarray, source_xyz, n_points: int
) -> np.ndarray:
    """First-order scattered field on the focal plane, written with numpy only.

    ``ΔE(z_f) = Σ_k ∫_slab k P_{z_f − z}{ pupil · i·k0·Δn_k · E0(z) } dz`` with the
    incident field ``E0(z)`` from its angular spectrum (Weyl expansion, docs/physics.md) and
    the integral over each slab's thickness by ``n_points``-point Gauss–Legendre
    quadrature. Returns the field on the voxel grid of the field of view.
    """
    optics, geometry = model.optics, model.geometry
    nz, ny, nx = geometry.shape_zyx
    dz, dy, dx = geometry.voxel_um_zyx
    pad_y, pad_x = model.pad_yx
    size_y, size_x = ny + 2 * pad_y, nx + 2 * pad_x
    ky = 2 * np.pi * np.fft.fftfreq(size_y, dy)[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(size_x, dx)[None, :]
    k_perp = np.hypot(kx, ky)
    kz = np.sqrt(np.maximum(optics.km**2 - k_perp**2, 0.0))
    band = physics.band_edge(torch.from_numpy(k_perp), *reversed(physics.source_band_limits(optics, geometry))).numpy()
    pupil = k_perp <= optics.k0 * optics.na
    xs, ys, zs = source_xyz
    x_first, y_first = -(size_x // 2) * dx, -(size_y // 2) * dy  # coordinate of index 0

    def incident(z: float) -> np.ndarray:
        phase = -(kx * (xs - x_first) + ky * (ys - y_first)) + kz * (z - zs)
        spectrum = 2j * np.pi / (dx * dy) * band / np.where(band > 0, kz, 1.0) * np.exp(1j * phase)
        return np.fft.ifft2(spectrum)

    nodes, weights = np.polynomial.legendre.leggauss(n_points)
    dn_padded = np.pad(dn, ((0, 0), (pad_y, pad_y), (pad_x, pad_x)))
    scattered = np.zeros((size_y, size_x), dtype=complex)
    for k in range(nz):
        if not dn_padded[k].any():
            continue
        for node, weight in zip(nodes, weights):
            z = (k + 0.5 + 0.5 * node) * dz
            source_term = 1j * optics.k0 * dn_padded[k] * incident(z)
            scattered += 0.5 * weight * dz * np.fft.fft2(source_term) * np.exp(1j * kz * (geometry.focal_z_um - z)) * pupil
    return np.fft.ifft2(scattered)[pad_y : pad_y + ny, pad_x : pad_x + nx]


def _voxel_grid_field(model: physics.ForwardModel, dn: np.ndarray, src) -> np.ndarray:
    spectrum = physics.multislice(model, torch.from_numpy(dn), sources(src))
    ny, nx = model.geometry.shape_zyx[1:]
    pad_y, pad_x = (p + e for p, e in zip(model.pad_yx, model.exit_pad_yx))
    return torch.fft.ifft2(spectrum)[0, pad_y : pad_y + ny, pad_x : pad_x + nx].numpy()


def _gaussian_blob(geometry: VolumeGeometry, centre_xyz, sigma_um: float) -> np.ndarray:
    nz, ny, nx = geometry.shape_zyx
    dz, dy, dx = geometry.voxel_um_zyx
    z = (np.arange(nz) + 0.5) * dz
    y = (np.arange(ny) - ny / 2) * dy
    x = (np.arange(nx) - nx / 2) * dx
    cx, cy, cz = centre_xyz
    r2 = (z[:, None, None] - cz) ** 2 + (y[None, :, None] - cy) ** 2 + (x[None, None, :] - cx) ** 2
    return np.exp(-r2 / (2 * sigma_um**2))


@pytest.fixture(scope="module")
def born_setup():
    geometry = VolumeGeometry((16, 48, 48), (0.25, 0.25, 0.25))
    model = physics.ForwardModel.build(OPTICS, geometry, dtype=torch.float64)
    src = (0.4, -0.6, -1.5)
    blob = _gaussian_blob(geometry, (0.3, -0.2, 2.1), 0.4)
    homogeneous = _voxel_grid_field(model, np.zeros_like(blob), src)
    return model, src, blob, homogeneous


def test_weak_phase_object_matches_first_order_born(born_setup):
    """Δn = 1e-4 blob: the change of the image-side field is the Born field of the slabs'
    physical thickness (each slab integrated over z, not lumped at one face)."""
    model, src, blob, homogeneous = born_setup
    amplitude = 1e-4
    change = _voxel_grid_field(model, amplitude * blob, src) - homogeneous
    reference = born_focal_field(model, amplitude * blob, src, n_points=3)
    assert np.linalg.norm(change) > 5e-5 * np.linalg.norm(homogeneous)  # a resolved effect
    assert rel_l2(change, reference) < 0.02


def test_born_error_scales_with_dn_squared(born_setup):
    """Against the single-scattering sum, the residual is second order in Δn: doubling Δn
    doubles the relative error (quadruples the absolute one)."""
    model, src, blob, homogeneous = born_setup
    errors = []
    for amplitude in (1e-3, 2e-3):
        change = _voxel_grid_field(model, amplitude * blob, src) - homogeneous
        reference = born_focal_field(model, amplitude * blob, src, n_points=1)
        errors.append(rel_l2(change, reference))
    assert errors[1] < 0.02
    assert errors[1] / errors[0] == pytest.approx(2.0, rel=0.1)


def test_slabs_of_two_voxels_match_first_order_born(born_setup):
    """Propagating two voxels per step (their mean Δn, one 0.5 µm step) keeps the weak object's
    field within the same bound of the single-scattering sum as one step per voxel (measured
    0.29 % against 0.17 %; four voxels per step: 3 %)."""
    model, src, blob, homogeneous = born_setup
    coarse = physics.ForwardModel.build(OPTICS, model.geometry, dtype=torch.float64, voxels_per_slab=2)
    assert coarse.slab_um == 0.5 and coarse.pad_yx == model.pad_yx
    # without Δn the steps are exact: only the margin's absorber, met at half as many planes, differs
    assert rel_l2(_voxel_grid_field(coarse, np.zeros_like(blob), src), homogeneous) < 1e-5
    change = _voxel_grid_field(coarse, 1e-4 * blob, src) - homogeneous
    reference = born_focal_field(model, 1e-4 * blob, src, n_points=3)
    assert rel_l2(change, reference) < 0.02


def test_slabs_of_several_voxels_are_the_coarser_grid_of_their_mean():
    """A model stepping k voxels at a time renders exactly what a model of k-times thicker
    voxels renders for the k-voxel means of Δn (same extent, focal plane and padding)."""
    geometry = VolumeGeometry((12, 24, 24), (0.25, 0.25, 0.25))
    thick = VolumeGeometry((4, 24, 24), (0.75, 0.25, 0.25), focal_plane_z_um=geometry.focal_z_um)
    coarse = physics.ForwardModel.build(OPTICS, geometry, dtype=torch.float64, voxels_per_slab=3, source_depth_um=2.0)
    reference = physics.ForwardModel.build(OPTICS, thick, dtype=torch.float64, pad_yx=coarse.pad_yx)
    dn = 0.03 * torch.rand(geometry.shape_zyx, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    src = sources((0.3, -0.4, -1.2), (-0.8, 0.5, -2.0))
    np.testing.assert_allclose(physics.render(coarse, dn, src).numpy(),
                               physics.render(reference, dn.reshape(4, 3, 24, 24).mean(1), src).numpy(), rtol=1e-9, atol=1e-12)


def test_slab_voxels_divide_the_volume_and_a_wrong_count_is_refused():
    assert physics.slab_voxels(VolumeGeometry((16, 24, 24), (0.25,) * 3), 0.5) == 2
    assert physics.slab_voxels(VolumeGeometry((16, 24, 24), (0.25,) * 3), 0.0) == 1
    assert physics.slab_voxels(VolumeGeometry((15, 24, 24), (0.25,) * 3), 0.5) == 1  # 2 does not divide 15
    assert physics.slab_voxels(VolumeGeometry((15, 24, 24), (0.25,) * 3), 0.8) == 3
    assert physics.slab_voxels(VolumeGeometry((16, 24, 24), (0.5, 0.16, 0.16)), 0.5) == 1
    with pytest.raises(GeometryError, match="voxels_per_slab must be a positive divisor of the volume's 15 slices, got 2"):
        physics.ForwardModel.build(OPTICS, VolumeGeometry((15, 24, 24), (0.25,) * 3), voxels_per_slab=2)


# --- 5. gradients -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> physics.ForwardModel:
    return physics.ForwardModel.build(OPTICS, VolumeGeometry((4, 12, 12), (0.25, 0.25, 0.25)), dtype=torch.float64)


def _tiny_inputs(model: physics.ForwardModel):
    gen = torch.Generator().manual_seed(3)
    dn = 0.03 * torch.rand(model.geometry.shape_zyx, generator=gen, dtype=torch.float64)
    # One source below the volume, one inside it (z = 0.4 µm: in slab 1, clear of the slab
    # bottoms that decide which slabs it sees).
    src = torch.tensor([[0.13, -0.21, -0.8], [-0.3, 0.27, 0.4]], dtype=torch.float64)
    brightness = torch.tensor([1.3, 0.7], dtype=torch.float64)
    background = torch.tensor([0.05, 0.1], dtype=torch.float64)
    return dn, src, brightness, background


def test_render_gradients_match_finite_differences(tiny_model):
    """Full Jacobian check in every voxel of Δn, source xyz, brightness and background."""
    inputs = tuple(t.clone().requires_grad_() for t in _tiny_inputs(tiny_model))

    def images(dn, src, brightness, background):
        return physics.render(tiny_model, dn, src, brightness, background)

    assert torch.autograd.gradcheck(images, inputs, eps=1e-6, atol=1e-7, rtol=1e-4)


def test_render_gradient_in_absorbing_dn(tiny_model):
    """A complex Δn (imaginary part = absorption) is differentiable too (checked along random
    directions of input and output, gradcheck's fast mode: the full Jacobian of the same
    renderer is checked in real Δn above)."""
    dn, src, brightness, background = _tiny_inputs(tiny_model)
    gen = torch.Generator().manual_seed(4)
    absorbing = torch.complex(dn, 0.01 * torch.rand(dn.shape, generator=gen, dtype=torch.float64)).requires_grad_()

    def images(dn):
        return physics.render(tiny_model, dn, src, brightness, background)

    assert torch.autograd.gradcheck(images, (absorbing,), eps=1e-6, atol=1e-7, rtol=1e-4, fast_mode=True)


def test_render_gradient_with_slabs_of_two_voxels(tiny_model):
    """Stepping two voxels at a time stays differentiable in every input (gradcheck's fast mode)."""
    coarse = physics.ForwardModel.build(OPTICS, tiny_model.geometry, dtype=torch.float64, voxels_per_slab=2)
    inputs = tuple(t.clone().requires_grad_() for t in _tiny_inputs(coarse))

    def images(dn, src, brightness, background):
        return physics.render(coarse, dn, src, brightness, background)

    assert torch.autograd.gradcheck(images, inputs, eps=1e-6, atol=1e-7, rtol=1e-4, fast_mode=True)


# --- 6. padding ------------------------------------------------------------------------------


def test_doubling_the_padding_leaves_the_image_unchanged(model64):
    doubled = physics.ForwardModel.build(
        OPTICS, GEOMETRY, pad_yx=tuple(2 * p for p in model64.pad_yx), dtype=torch.float64
    )
    dn = torch.from_numpy(0.01 * _gaussian_blob(GEOMETRY, (0.5, 0.0, 2.5), 0.8))
    src = sources((0.3, -0.7, -2.0), (-3.2, 2.9, -3.0))
    image = physics.render(model64, dn, src)
    image_doubled = physics.render(doubled, dn, src)
    for view in range(2):
        assert rel_l2(image[view], image_doubled[view]) < 0.01


# --- 7. free-space propagation against nrefocus ----------------------------------------------


def test_propagation_agrees_with_nrefocus():
    """nrefocus's Helmholtz kernel is ``exp(i·d·(kz − km))``: it drops the carrier phase
    ``exp(i·km·d)`` that ours keeps (both use ``exp(+i·kz·d)`` for propagation toward +z).
    Distances and the wavelength are given to it in pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing optional FFT back-ends
        import nrefocus

    n, dx = 64, 0.2
    y = (np.arange(n) - n / 2) * dx
    yy, xx = np.meshgrid(y, y, indexing="ij")
    # A smooth, band-limited field: a tilted Gaussian beam with a phase bump.
    field = np.exp(-(xx**2 + (yy - 0.5) ** 2) / (2 * 1.5**2)) * np.exp(1j * (3.0 * xx - 1.2 * yy + 0.8 * np.exp(-(xx**2 + yy**2))))
    ky, kx = physics.frequency_grid(n, n, dx, dx, dtype=torch.float64)
    kz, propagating = physics.axial_wavenumber(ky, kx, OPTICS.km)
    for distance in (2.5, -1.7):
        ours = physics.propagate(torch.from_numpy(field), physics.propagation_kernel(kz, propagating, distance)).numpy()
        theirs = nrefocus.refocus(
            field, distance / dx, OPTICS.n_medium, OPTICS.wavelength_um / dx, method="helmholtz", padding=False
        ) * np.exp(1j * OPTICS.km * distance)
        assert rel_l2(ours, field) > 0.1
        assert rel_l2(ours, theirs) < 1e-10


# --- 8. sampling and geometry validation (docs/physics.md) ---------------------------------------


def test_voxel_coarser_than_field_nyquist_is_refused():
    # λ/(2·NA) = 0.375 µm
    for dx in (0.4, 0.5):
        geometry = VolumeGeometry((8, 16, 16), (0.25, dx, dx))
        with pytest.raises(GeometryError, match=r"too coarse.*λ/\(2·NA\)"):
            physics.ForwardModel.build(OPTICS, geometry)


def test_sampling_selects_field_upsampling():
    # λ/(4·NA) = 0.1875 µm < dx < λ/(2·NA) = 0.375 µm → ×2; finer → ×1.
    assert physics.ForwardModel.build(OPTICS, VolumeGeometry((4, 16, 16), (0.25, 0.3, 0.3))).upsample == 2
    assert physics.ForwardModel.build(OPTICS, VolumeGeometry((4, 16, 16), (0.25, 0.2, 0.2))).upsample == 2
    assert physics.ForwardModel.build(OPTICS, VolumeGeometry((4, 16, 16), (0.25, 0.18, 0.18))).upsample == 1
    assert physics.ForwardModel.build(OPTICS, VolumeGeometry((4, 16, 16), (0.25, 0.1, 0.1))).upsample == 1
    # The coarser lateral axis decides.
    assert physics.ForwardModel.build(OPTICS, VolumeGeometry((4, 16, 16), (0.25, 0.3, 0.1))).upsample == 2
    # A wider source band (NA_src > NA) needs finer voxels.
    wide_source = Optics(wavelength_um=0.6, n_medium=1.33, na=0.8, na_source=1.0)  # λ/(2·NA_src) = 0.3
    with pytest.raises(GeometryError):
        physics.ForwardModel.build(wide_source, VolumeGeometry((4, 16, 16), (0.25, 0.33, 0.33)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Optics(wavelength_um=0.6, n_medium=1.33, na=1.4),  # NA > n
        lambda: Optics(wavelength_um=0.6, n_medium=1.33, na=1.33),  # NA = n
        lambda: Optics(wavelength_um=-0.6),
        lambda: Optics(n_medium=0.0),
        lambda: Optics(na_source=1.5),
        lambda: VolumeGeometry((8, 16, 16), (0.25, -0.25, 0.25)),
        lambda: VolumeGeometry((8, 16, 16), (0.0, 0.25, 0.25)),
        lambda: VolumeGeometry((8, -16, 16), (0.25, 0.25, 0.25)),
        lambda: VolumeGeometry((8, 16, 16), (0.25, 0.25, 0.25), camera_binning=3),
        lambda: physics.ForwardModel.build(OPTICS, VolumeGeometry((8, 16, 16), (0.25, 0.25, 0.25)), pad_yx=(-2, 4)),
    ],
)
def test_invalid_geometry_is_refused(make):
    with pytest.raises(GeometryError) as info:
        make()
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_dn_with_the_wrong_shape_is_refused(model64):
    with pytest.raises(GeometryError, match="expected"):
        physics.render(model64, torch.zeros(4, 48, 48, dtype=torch.float64), sources((0, 0, -1)))


# --- 9. a source inside the volume -----------------------------------------------------------


@pytest.mark.parametrize("z_source", [1.1, 4.2])  # below and above the focal plane (3 µm)
def test_source_inside_volume_matches_analytic(model64, z_source):
    src = (0.35, -0.45, z_source)
    field = focal_field(model64, torch.zeros(GEOMETRY.shape_zyx, dtype=torch.float64), sources(src))[0]
    reference = analytic_focal_field(OPTICS, GEOMETRY, src, model64.upsample)
    assert rel_l2(field, reference) < 0.01


def test_slabs_below_a_source_inside_the_volume_do_not_affect_its_image(model64):
    dz = GEOMETRY.voxel_um_zyx[0]
    z_source = 2.1  # inside slab 8 ([2.0, 2.25] µm)
    below = int(z_source // dz)  # slabs 0..7 lie entirely below the source
    blob = torch.from_numpy(_gaussian_blob(GEOMETRY, (0.2, 0.1, 0.0), 1.0))
    strong_below = torch.zeros(GEOMETRY.shape_zyx, dtype=torch.float64)
    strong_below[:below] = 0.1 * blob[:below]
    strong_above = torch.zeros_like(strong_below)
    strong_above[below + 2 : below + 10] = 0.1 * blob[:8]
    # The second view sits below the volume and must see the object.
    src = sources((0.3, -0.2, z_source), (0.3, -0.2, -1.0))
    empty = physics.render(model64, torch.zeros_like(strong_below), src)
    with_below = physics.render(model64, strong_below, src)
    with_above = physics.render(model64, strong_above, src)
    assert rel_l2(with_below[0], empty[0]) < 1e-12
    assert rel_l2(with_below[1], empty[1]) > 0.05
    assert rel_l2(with_above[0], empty[0]) > 0.05


# --- 10. batching and precision --------------------------------------------------------------


def test_batched_views_equal_single_views(model64):
    dn = torch.from_numpy(0.02 * _gaussian_blob(GEOMETRY, (-0.4, 0.6, 3.0), 1.0))
    src = sources((0.3, -0.7, -2.0), (-2.1, 1.4, -1.0), (0.0, 0.0, 2.6))
    brightness = torch.tensor([1.0, 2.5, 0.4], dtype=torch.float64)
    background = torch.tensor([0.0, 0.3, 1.2], dtype=torch.float64)
    batched = physics.render(model64, dn, src, brightness, background)
    assert batched.shape == (3, *GEOMETRY.camera_shape_yx)
    for view in range(3):
        single = physics.render(model64, dn, src[view : view + 1], brightness[view : view + 1], background[view : view + 1])
        assert torch.allclose(batched[view], single[0], rtol=1e-12, atol=1e-14)


def test_float32_agrees_with_float64(model64):
    model32 = physics.ForwardModel.build(OPTICS, GEOMETRY, dtype=torch.float32)
    dn = torch.from_numpy(0.02 * _gaussian_blob(GEOMETRY, (-0.4, 0.6, 3.0), 1.0))
    src = sources((0.3, -0.7, -2.0), (-2.1, 1.4, -1.0))
    image64 = physics.render(model64, dn, src)
    image32 = physics.render(model32, dn.float(), src.float())
    assert image32.dtype == torch.float32
    assert rel_l2(image32.double(), image64) < 1e-4


def test_float64_inputs_are_cast_to_a_float32_model():
    """A float32 model accepts float64 sources, Δn, brightness and background (cast to its dtype)."""
    model32 = physics.ForwardModel.build(OPTICS, GEOMETRY, dtype=torch.float32)
    dn = torch.from_numpy(0.02 * _gaussian_blob(GEOMETRY, (-0.4, 0.6, 3.0), 1.0))
    src = sources((0.3, -0.7, -2.0), (-2.1, 1.4, -1.0))
    brightness = torch.tensor([1.0, 2.0], dtype=torch.float64)
    background = torch.tensor([0.5, 0.1], dtype=torch.float64)
    mixed = physics.render(model32, dn, src, brightness, background)
    cast = physics.render(model32, dn.float(), src.float(), brightness.float(), background.float())
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, cast)
    assert physics.homogeneous_spectrum(model32, src).dtype == torch.complex64


def test_a_source_edge_reproduces_the_default_band_and_is_a_raised_cosine():
    """``with_source_edge`` at the default limits is the built model's band; a cut edge is 1
    below ``k0·NA_in``, ½ halfway, 0 beyond ``k0·NA_cut``, and differentiable in the edge."""
    geometry = VolumeGeometry((2, 16, 16), (0.25, 0.25, 0.25))
    model = physics.ForwardModel.build(OPTICS, geometry, source_depth_um=1.0, dtype=torch.float64)
    assert physics.with_source_edge(model, ()) is model
    k_in, k_cut = physics.source_band_limits(OPTICS, geometry)
    same = physics.with_source_edge(model, (k_in / OPTICS.k0, k_cut / OPTICS.k0))
    assert torch.allclose(same.source_band, model.source_band, atol=1e-12)
    assert torch.allclose(same.exit_source_band, model.exit_source_band, atol=1e-12)
    k = torch.tensor([0.5, 0.7, 0.75, 0.8, 0.9], dtype=torch.float64) * OPTICS.k0
    band = physics.source_band(k, OPTICS.k0, (0.7, 0.8))
    assert torch.allclose(band, torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    # a fit whose two values cross describes the spectrum of the sorted pair the pupil stores
    assert torch.equal(physics.source_band(k, OPTICS.k0, (0.8, 0.7)), band)
    edge = torch.tensor([0.7, 0.8], dtype=torch.float64, requires_grad=True)
    physics.with_source_edge(model, edge).exit_source_band.sum().backward()
    assert edge.grad is not None and bool(torch.all(edge.grad > 0))  # a wider/later edge passes more light
    with pytest.raises(GeometryError, match="NA_cut"):
        physics.with_source_edge(model, (0.7, 1.3))
    with pytest.raises(GeometryError, match="NA_cut"):
        physics.with_source_edge(model, (1.3, 0.7))


def test_the_light_beyond_the_na_is_scaled_and_the_light_inside_kept():
    """``beyond_na`` multiplies the source spectrum beyond ``k0·NA`` (the default band's and
    an edge's), leaves it inside the pupil's rim, blends across the rim, and is
    differentiable."""
    geometry = VolumeGeometry((2, 16, 16), (0.25, 0.25, 0.25))
    model = physics.ForwardModel.build(OPTICS, geometry, source_depth_um=1.0, dtype=torch.float64)
    k_perp = torch.sqrt(model.kx**2 + model.ky**2) / (OPTICS.k0 * OPTICS.na)
    outer, inner = k_perp >= 1.0, k_perp <= 1.0 - SOURCE_RIM_WIDTH
    assert bool(outer.any()) and bool((model.source_band[outer] > 0).any())  # the default band reaches beyond
    dim = physics.with_source_edge(model, (), 0.3)
    assert torch.equal(dim.source_band[inner], model.source_band[inner])
    assert torch.allclose(dim.source_band[outer], 0.3 * model.source_band[outer], atol=1e-15)
    rim = ~outer & ~inner
    ratio = dim.source_band[rim] / model.source_band[rim]
    assert bool(rim.any()) and bool(((ratio > 0.3) & (ratio < 1.0)).all())
    exit_outer = torch.sqrt(model.exit_kx**2 + model.exit_ky**2) >= OPTICS.k0 * OPTICS.na
    assert torch.allclose(dim.exit_source_band[exit_outer], 0.3 * model.exit_source_band[exit_outer], atol=1e-15)
    assert float(physics.with_source_edge(model, (), 0.0).source_band[outer].abs().max()) == 0.0
    beyond = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    physics.with_source_edge(model, (), beyond).source_band.sum().backward()
    expected = model.source_band[outer].sum() + (model.source_band[rim] * (1.0 - (ratio - 0.3) / 0.7)).sum()
    assert beyond.grad is not None and float(beyond.grad) == pytest.approx(float(expected))
    # the rim's width: differentiable, and a wider rim dims more of the light inside the NA
    width = torch.tensor(SOURCE_RIM_WIDTH, dtype=torch.float64, requires_grad=True)
    physics.with_source_edge(model, (), 0.3, width).source_band.sum().backward()
    assert width.grad is not None and float(width.grad) < 0.0
    wide = physics.with_source_edge(model, (), 0.3, 0.2).source_band
    assert bool((wide <= dim.source_band + 1e-15).all()) and float(wide.sum()) < float(dim.source_band.sum())
    # an edge beyond the pupil, then the light beyond the NA scaled
    k_in, k_cut = physics.source_band_limits(OPTICS, geometry)
    edged = physics.with_source_edge(model, (k_in / OPTICS.k0, k_cut / OPTICS.k0), 0.3)
    assert torch.allclose(edged.source_band, dim.source_band, atol=1e-12)
