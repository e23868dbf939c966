"""Multi-slice (split-step) forward model of fluorescence diffraction tomography.

Conventions (docs/physics.md): lengths in µm, arrays ``[z, y, x]``, lateral origin
at the centre of the field of view (``x_j = (j − N/2)·dx``), axial origin at the
bottom face of the volume, light travelling toward +z. A field's spectrum uses
``Ê(k) = Σ_j E(x_j)·exp(−i k·x_j)`` relative to that origin.

The core is a set of pure functions of tensors; :class:`ForwardModel` only holds
what depends on the geometry (frequency grids, propagation kernels, pupil,
absorbing window), built once and kept on the compute device. Everything is
batched over views ``V``, runs on any torch device, and is differentiable in Δn,
source positions, brightness and background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from nvplive.errors import GeometryError

from .optics import Optics, VolumeGeometry
from .pupil import SOURCE_RIM_WIDTH, PupilBasis, PupilParameters, aperture, coefficient_dtype, pupil_basis, pupil_from_basis

#: Relative width of the raised-cosine edge of the source band limit.
SOURCE_EDGE_WIDTH = 0.12

#: Smallest width of the absorbing margin beyond the live region, in wavelengths in the
#: medium: light of the wide source cone must fade over many lateral wavelengths or the
#: window's edge diffracts it back (chosen in BENCHMARKS.md "Source NA").
ABSORBER_MARGIN_WAVELENGTHS = 10.0

#: Reach of the hard pupil's side lobes beyond the geometric cone, in λ/NA: the image
#: through a hard aperture, traced back to a plane of the volume, decays slowly outside
#: the cone, and the absorber must not cut it (chosen in BENCHMARKS.md "Source NA").
PUPIL_SIDE_LOBE_REACH = 14.0

#: The last step (top slab → focal plane through the pupil) runs on a grid this many
#: times the padded one (zero-padded: the absorber leaves nothing at the edges), because
#: a hard aperture's image decays slowly and its periodic copies would reach the field
#: of view (see :func:`exit_padding`; the factor is chosen in BENCHMARKS.md).
EXIT_PERIOD_FACTOR = 1.5

#: Voxels of image kept on each side of the field of view while the camera pixel's
#: integration is applied in the frequency domain (:func:`integrate_pixels`). The window is
#: not periodic, so the circular product wraps its edges round; the box's kernel on the
#: band-limited samples falls off as 1/n², and at 32 voxels a compact spot just outside the
#: window leaves 2.5e-5 of the field's maximum in it (8 voxels: 6e-2; docs/physics.md).
PIXEL_INTEGRATION_MARGIN = 32


def complex_dtype(real_dtype: torch.dtype) -> torch.dtype:
    """The complex dtype matching a real one (float32 → complex64, float64 → complex128)."""
    return torch.complex128 if real_dtype == torch.float64 else torch.complex64


def frequency_grid(
    ny: int, nx: int, dy: float, dx: float, *, device=None, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular spatial frequencies ``ky [ny, 1]`` and ``kx [1, nx]`` (rad/µm), FFT order."""
    ky = 2.0 * math.pi * torch.fft.fftfreq(ny, d=dy, device=device, dtype=dtype)
    kx = 2.0 * math.pi * torch.fft.fftfreq(nx, d=dx, device=device, dtype=dtype)
    return ky[:, None], kx[None, :]


def axial_wavenumber(ky: torch.Tensor, kx: torch.Tensor, km: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``kz = sqrt(km² − kx² − ky²)`` and the mask of propagating (non-evanescent) waves."""
    kz2 = km**2 - kx**2 - ky**2
    propagating = kz2 > 0
    kz = torch.sqrt(torch.clamp(kz2, min=0.0))
    return kz, propagating


def propagation_kernel(kz: torch.Tensor, propagating: torch.Tensor, distance_um: float) -> torch.Tensor:
    """Angular-spectrum transfer function ``exp(i·kz·d)``; evanescent waves are dropped."""
    phase = kz * distance_um
    kernel = torch.polar(torch.ones_like(phase), phase)
    return kernel * propagating.to(kernel.real.dtype)


def propagate(field: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Propagate a field ``[..., Y, X]`` by the transfer function ``kernel [Y, X]``."""
    return torch.fft.ifft2(torch.fft.fft2(field) * kernel)


def band_edge(k_perp: torch.Tensor, k_cut: float, k_in: float | None = None) -> torch.Tensor:
    """Smooth band limit: 1 below ``k_in`` (default ``(1 − SOURCE_EDGE_WIDTH)·k_cut``), raised cosine to 0 at ``k_cut``."""
    if k_in is None:
        k_in = (1.0 - SOURCE_EDGE_WIDTH) * k_cut
    t = torch.clamp((k_perp - k_in) / (k_cut - k_in), 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def source_band_limits(optics: Optics, geometry: VolumeGeometry) -> tuple[float, float]:
    """Where the source spectrum's smooth edge starts and ends, ``(k_in, k_cut)`` in rad/µm.

    The edge ends at ``k0·NA_src`` (:attr:`Optics.source_na`; the default is lowered to
    what the voxel grid carries, :meth:`VolumeGeometry.max_field_na`). When that lies
    beyond the detection NA the edge starts no lower than ``k0·NA``, so that inside the
    pupil the spectrum is the exact Weyl expansion and the hard aperture alone shapes
    the image; otherwise (an explicit ``na_source ≤ na``) it is the
    ``SOURCE_EDGE_WIDTH`` raised cosine below ``k0·NA_src``.
    """
    na_src = optics.source_na
    if optics.na_source is None:
        na_src = min(na_src, geometry.max_field_na(optics))
    k_cut = optics.k0 * na_src
    k_pupil = optics.k0 * optics.na
    k_in = (1.0 - SOURCE_EDGE_WIDTH) * k_cut
    if k_cut > k_pupil:
        k_in = max(k_in, k_pupil)
    return k_in, k_cut


def source_band(k_perp: torch.Tensor, k0: float, edge_na: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """The source's angular spectrum (before ``1/k_z``) for ``edge_na = (NA_in, NA_cut)``.

    :func:`band_edge` with ``k_in = k0·NA_in`` and ``k_cut = k0·NA_cut``: 1 below the
    first, a raised cosine to 0 at the second. Differentiable in a tensor ``edge_na``
    (``[2]``) where ``k_perp`` falls inside the edge; the width is kept ≥ 10⁻⁶·k0.
    The pair is read in either order (the edge runs from the smaller to the larger), so
    that a fit whose two values cross describes the spectrum its sorted pair does
    (:attr:`.pupil.PupilParameters.source_edge_na` stores it sorted).
    ``(NA_in, NA_cut)`` from :func:`source_band_limits` ``/ k0`` is the renderer's
    default; ``(0.88·NA, NA)`` the spectrum cut at the detection NA.
    """
    edge = torch.as_tensor(edge_na, dtype=k_perp.dtype, device=k_perp.device)
    k_in = k0 * torch.minimum(edge[0], edge[1])
    width = torch.clamp(k0 * (edge[1] - edge[0]).abs(), min=1e-6 * k0)
    t = torch.clamp((k_perp - k_in) / width, 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def with_source_edge(
    model: ForwardModel, edge_na: torch.Tensor | Sequence[float] | None, beyond_na: float | torch.Tensor = 1.0,
    rim_width: float | torch.Tensor = SOURCE_RIM_WIDTH,
) -> ForwardModel:
    """``model`` with the source spectrum of :func:`source_band` for ``edge_na = (NA_in, NA_cut)``,
    its part beyond the detection NA multiplied by ``beyond_na``.

    ``S(k⊥) = band(k⊥)·(1 − (1 − beyond_na)·(1 − R(k⊥)))`` with ``R`` the raised cosine from 1
    at ``(1 − rim_width)·k0·NA`` to 0 at ``k0·NA`` (default :data:`.pupil.SOURCE_RIM_WIDTH`):
    unchanged inside the pupil's rim, ``beyond_na × band`` beyond the NA, a smooth blend
    across the rim.
    ``beyond_na`` 0 is a spectrum that ends at the NA over a narrow edge (what another renderer,
    or a source model cut at the objective's NA, makes); 1 a point source's whole spectrum.

    ``None`` or empty ``edge_na`` keeps ``model``'s band (the default of
    :func:`source_band_limits`); with ``beyond_na`` 1 too, ``model`` itself is returned.
    Tensors ``edge_na``, ``beyond_na`` and ``rim_width`` (scalars) keep the returned model's
    ``source_band`` and ``exit_source_band`` differentiable in them; like :func:`source_band`
    it reads the pair in either order. The padding stays the
    one ``model`` was built with: it is sized for the default band, so an edge up to
    the default's ``NA_cut`` stays safe. ``beyond_na`` is
    :attr:`.pupil.PupilParameters.source_beyond_na`: light the pupil never passes in a
    homogeneous medium, which only the specimen's scattering brings into it.

    Raises:
        GeometryError: when ``NA_cut`` exceeds what the voxel grid carries
            (:meth:`VolumeGeometry.max_field_na`).
    """
    plain_beyond = not isinstance(beyond_na, torch.Tensor) and float(beyond_na) == 1.0
    if edge_na is None or len(edge_na) == 0:
        if plain_beyond:
            return model
        band, exit_band = model.source_band, model.exit_source_band
    else:
        band, exit_band = _edge_bands(model, edge_na)
    if not plain_beyond:
        beyond = torch.as_tensor(beyond_na, dtype=model.real_dtype, device=band.device)
        width = torch.as_tensor(rim_width, dtype=model.real_dtype, device=band.device)
        rim = torch.stack([(1.0 - width) * model.optics.na, torch.full_like(width, model.optics.na)])
        k0 = model.optics.k0
        outer = 1.0 - source_band(torch.sqrt(model.kx**2 + model.ky**2), k0, rim)
        exit_outer = 1.0 - source_band(torch.sqrt(model.exit_kx**2 + model.exit_ky**2), k0, rim)
        band = band * (1.0 + (beyond - 1.0) * outer)
        exit_band = exit_band * (1.0 + (beyond - 1.0) * exit_outer)
    return replace(model, source_band=band, exit_source_band=exit_band)


def _edge_bands(model: ForwardModel, edge_na: torch.Tensor | Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`source_band` of ``edge_na`` on ``model``'s volume grid and exit grid (see :func:`with_source_edge`)."""
    limit = model.geometry.max_field_na(model.optics)
    na_cut = float(torch.as_tensor(edge_na).detach().max())
    if na_cut > limit * (1.0 + 1e-6):  # an edge stored in float32 at the limit rounds above it
        raise GeometryError(f"Source spectrum: NA_cut {na_cut:.4g} exceeds what the voxel grid carries ({limit:.4g}).")
    k0 = model.optics.k0
    propagating = (model.kz > 0).to(model.real_dtype)
    exit_propagating = (model.exit_kz > 0).to(model.real_dtype)
    band = source_band(torch.sqrt(model.kx**2 + model.ky**2), k0, edge_na) * propagating
    exit_band = source_band(torch.sqrt(model.exit_kx**2 + model.exit_ky**2), k0, edge_na) * exit_propagating
    return band, exit_band


def point_source_spectrum(
    ky: torch.Tensor,
    kx: torch.Tensor,
    kz: torch.Tensor,
    band: torch.Tensor,
    sources_xyz: torch.Tensor,
    z_um: float,
    dy: float,
    dx: float,
) -> torch.Tensor:
    """Spectrum on the plane ``z`` of the field of point sources (Weyl expansion).

    ``Ê = (2πi / (dx·dy)) · exp(−i(kx·xs + ky·ys)) · exp(i·kz·(z − zs)) / kz · band``,
    normalised so that ``ifft2(Ê)`` approximates the band-limited spherical wave
    ``exp(i·km·r)/r`` (1/µm) sampled at ``x_j = (j − N/2)·dx``. Sub-pixel positions
    enter only through the phase ramp, so the result is differentiable in them.

    Args:
        ky, kx, kz: frequency grids (``[Y,1]``, ``[1,X]``, ``[Y,X]``, rad/µm).
        band: smooth band limit ``[Y, X]`` (zero where ``kz`` is not safely > 0).
        sources_xyz: ``[V, 3]`` source positions (µm).
        z_um: height of the plane (µm); may lie below a source (back-propagation).
        dy, dx: grid spacing (µm).

    Returns:
        ``[V, Y, X]`` complex spectrum.
    """
    ny, nx = kz.shape
    xs = sources_xyz[:, 0, None, None] + 0.5 * nx * dx
    ys = sources_xyz[:, 1, None, None] + 0.5 * ny * dy
    zs = sources_xyz[:, 2, None, None]
    phase = -(kx * xs + ky * ys) + kz * (z_um - zs)
    safe_kz = torch.where(band > 0, kz, torch.ones_like(kz))
    amplitude = band * (2.0 * math.pi / (dx * dy)) / safe_kz
    return 1j * torch.polar(amplitude.expand_as(phase), phase)


def transmission(dn_slab: torch.Tensor, k0: float, dz: float) -> torch.Tensor:
    """Thin-slab transmission ``exp(i·k0·Δn·dz)``; a complex Δn adds absorption."""
    if dn_slab.is_complex():
        return torch.exp(1j * k0 * dz * dn_slab)
    return torch.polar(torch.ones_like(dn_slab), k0 * dz * dn_slab)


def bin_intensity(intensity: torch.Tensor, factor: int) -> torch.Tensor:
    """Integrate ``[..., Y, X]`` intensity over ``factor × factor`` pixels (mean)."""
    if factor == 1:
        return intensity
    lead = intensity.shape[:-2]
    flat = intensity.reshape(-1, 1, *intensity.shape[-2:])
    return F.avg_pool2d(flat, factor).reshape(*lead, intensity.shape[-2] // factor, intensity.shape[-1] // factor)


def _nice_fft_size(n: int) -> int:
    """Smallest even integer ≥ n whose only prime factors are 2, 3 and 5."""
    m = max(2, n + (n % 2))
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 2


def cone_tan(n_medium: float, na: float) -> float:
    """Tan of the half-angle of the cone of numerical aperture ``na`` in a medium ``n_medium``."""
    return na / math.sqrt(n_medium**2 - na**2)


def live_half_width_um(optics: Optics, geometry: VolumeGeometry) -> tuple[float, float]:
    """Half-widths (y, x, µm) of the region whose light can still reach the camera.

    Light reaches the camera only through the pupil, so its last leg, from the last
    point where Δn scattered it (inside the volume's footprint, half-width W) or from
    the source, runs at most at the pupil's angle θ_NA: on any plane of the volume it
    lies within ``W + H·tan θ_NA`` of the centre, H being the largest distance from the
    focal plane to a plane of the volume. Light farther out either travels outward at
    a wider angle (it never comes back: Δn is zero outside the footprint) or never
    enters the pupil, so it is absorbed without changing the image — however wide the
    source's cone.
    """
    nz, ny, nx = geometry.shape_zyx
    dz, dy, dx = geometry.voxel_um_zyx
    height = max(geometry.focal_z_um, nz * dz - geometry.focal_z_um, 0.0)
    # Beyond the geometric cone, the hard pupil's image keeps side lobes over several λ/NA.
    reach = height * cone_tan(optics.n_medium, optics.na) + PUPIL_SIDE_LOBE_REACH * optics.wavelength_um / optics.na
    return 0.5 * ny * dy + reach, 0.5 * nx * dx + reach


def slab_voxels(geometry: VolumeGeometry, max_slab_um: float) -> int:
    """Voxels per propagation step for slabs at most ``max_slab_um`` thick: the largest divisor
    of Nz whose slab fits (1 where a voxel is already thicker, or ``max_slab_um`` is 0)."""
    nz, dz = geometry.shape_zyx[0], geometry.voxel_um_zyx[0]
    fits = max(1, int(max_slab_um / dz + 1e-9))
    return max(k for k in range(1, min(fits, nz) + 1) if nz % k == 0)


def default_padding(
    optics: Optics,
    geometry: VolumeGeometry,
    source_depth_um: float,
    margin_wavelengths: float = ABSORBER_MARGIN_WAVELENGTHS,
    voxels_per_slab: int = 1,
) -> tuple[int, int]:
    """Lateral padding (pixels per side, y and x) so that nothing wraps into the image.

    Three conditions on the padded period P, for sources anywhere in the field of view
    (half-width W) down to ``z_s = −source_depth_um``:

    (i) the live region L (see :func:`live_half_width_um`) plus an absorbing margin of
        at least ``margin_wavelengths·λ/n_medium`` (and 15 % of L, 8 pixels) fits in P;
    (ii) the periodic copies of the pupil-filtered source field, P away, cannot reach
        the field of view at the focal plane: ``P ≥ 2W + (z_f − z_s)·tan θ_NA``;
    (iii) the source field is synthesised in one step on the first slab's centre plane
        ``z_0 = slab/2`` (a slab of ``voxels_per_slab`` voxels), without absorption on the way up; the copies' light, which
        travels at up to the source band's angle θ_src, must land beyond the middle of
        the absorbing margin there (where the window is ≤ ½ and light travels inward):
        ``P ≥ 2·(W + (z_0 − z_s)·tan θ_src + 2π/Δk_edge)``, the last term the spatial
        reach of the band edge's ringing.
    """
    _nz, ny, nx = geometry.shape_zyx
    dz, dy, dx = geometry.voxel_um_zyx
    tan_pupil = cone_tan(optics.n_medium, optics.na)
    k_in, k_cut = source_band_limits(optics, geometry)
    tan_source = cone_tan(optics.n_medium, k_cut / optics.k0)
    edge_reach = 2.0 * math.pi / max(k_cut - k_in, 1e-6)
    depth = max(source_depth_um, 0.0)
    lives = live_half_width_um(optics, geometry)
    pads = []
    for n, d, live in ((ny, dy, lives[0]), (nx, dx, lives[1])):
        half_fov = 0.5 * n * d
        margin = max(8 * d, 0.15 * live, margin_wavelengths * optics.wavelength_um / optics.n_medium)
        copies = 2.0 * half_fov + (geometry.focal_z_um + depth) * tan_pupil
        synthesis = 2.0 * (half_fov + (0.5 * voxels_per_slab * dz + depth) * tan_source + edge_reach)
        period = max(copies, synthesis, 2.0 * (live + margin))
        total = _nice_fft_size(max(n + 2, int(math.ceil(period / d))))
        if (total - n) % 2:
            total += 1
        pads.append((total - n) // 2)
    return pads[0], pads[1]


def exit_padding(padded_yx: tuple[int, int], factor: float = EXIT_PERIOD_FACTOR) -> tuple[int, int]:
    """Extra pixels per side (y, x) that grow the padded grid ``padded_yx`` to the exit grid."""
    pads = []
    for n in padded_yx:
        total = _nice_fft_size(max(n, int(math.ceil(factor * n))))
        if (total - n) % 2:
            total += 1
        pads.append((total - n) // 2)
    return pads[0], pads[1]


def absorbing_window(total: int, live_half_px: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """1D window over ``total`` samples: 1 within ``live_half_px`` of the centre, raised cosine to 0 at the edges."""
    idx = torch.arange(total, device=device, dtype=dtype)
    from_centre = (idx - total / 2).abs()
    edge = total / 2
    live = min(float(live_half_px), edge - 2.0)
    t = torch.clamp((from_centre - live) / max(edge - live, 1e-6), 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


@dataclass(frozen=True)
class ForwardModel:
    """Geometry-dependent tensors of the multi-slice renderer, built once per geometry.

    Build it with :meth:`build`; move it with :meth:`to`. Frequency-domain tensors
    are in FFT order, ``[Yp, Xp]`` on the padded grid of the slabs (``ky, kx, kz,
    source_band, slab_kernel``, and ``absorber`` in space) or ``[Ye, Xe]`` on the exit
    grid, the padded grid zero-padded by ``exit_pad_yx`` per side (``exit_ky,
    exit_kx, exit_kz, exit_source_band, exit_kernel, aperture, sample_shift``): the
    focal-plane spectrum and the pupil live there. ``image_transfer`` ``[Yi, Xi]`` is what the
    intensity's spectrum is multiplied by on the image grid (the field of view plus
    ``pixel_margin_yx`` voxels per side, at ``upsample`` × the voxel sampling;
    :func:`integrate_pixels`): the camera pixel's integration
    (:func:`pixel_integration_transfer`) times, for beads of ``bead_diameter_um`` > 0, the
    bead's projection (:func:`bead_transfer`). Light crosses the volume in slabs of
    ``voxels_per_slab`` voxels (:attr:`slab_um` thick): one phase screen of their mean Δn and
    one propagation step each (:func:`multislice`).
    """

    optics: Optics
    geometry: VolumeGeometry
    pad_yx: tuple[int, int]
    upsample: int
    ky: torch.Tensor
    kx: torch.Tensor
    kz: torch.Tensor
    source_band: torch.Tensor
    slab_kernel: torch.Tensor
    exit_kernel: torch.Tensor
    absorber: torch.Tensor
    sample_shift: torch.Tensor
    aperture: torch.Tensor
    exit_pad_yx: tuple[int, int]
    exit_ky: torch.Tensor
    exit_kx: torch.Tensor
    exit_kz: torch.Tensor
    exit_source_band: torch.Tensor
    pixel_margin_yx: tuple[int, int]
    image_transfer: torch.Tensor
    bead_diameter_um: float = 0.0
    voxels_per_slab: int = 1

    @classmethod
    def build(
        cls,
        optics: Optics,
        geometry: VolumeGeometry,
        *,
        source_depth_um: float | None = None,
        pad_yx: tuple[int, int] | None = None,
        bead_diameter_um: float = 0.0,
        voxels_per_slab: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ForwardModel:
        """Precompute kernels for ``optics`` and ``geometry``.

        Args:
            source_depth_um: deepest source distance below the bottom face (µm),
                used to size the padding (default: half the volume depth).
            pad_yx: explicit lateral padding per side (pixels), overriding the default.
            bead_diameter_um: the fluorescent beads' diameter (µm); 0 renders point sources,
                more the point source's image convolved with the bead's projection
                (:func:`bead_transfer`).
            voxels_per_slab: voxels along z that one propagation step crosses (a divisor of Nz;
                :func:`slab_voxels` chooses it for a slab thickness).

        Raises:
            GeometryError: a grid too coarse for the optics (:meth:`VolumeGeometry.check_sampling`),
                a negative padding, a bead diameter that is negative or not finite, or a
                ``voxels_per_slab`` that does not divide Nz.
        """
        if not (math.isfinite(bead_diameter_um) and bead_diameter_um >= 0):
            raise GeometryError(f"The bead diameter must be a finite number ≥ 0 µm, got {bead_diameter_um}.")
        upsample = geometry.check_sampling(optics)
        nz, ny, nx = geometry.shape_zyx
        if not (isinstance(voxels_per_slab, int) and voxels_per_slab >= 1 and nz % voxels_per_slab == 0):
            raise GeometryError(f"voxels_per_slab must be a positive divisor of the volume's {nz} slices, got {voxels_per_slab!r}.")
        dz, dy, dx = geometry.voxel_um_zyx
        if source_depth_um is None:
            source_depth_um = 0.5 * nz * dz
        if pad_yx is None:
            pad_yx = default_padding(optics, geometry, source_depth_um, voxels_per_slab=voxels_per_slab)
        pad_y, pad_x = (int(p) for p in pad_yx)
        if pad_y < 0 or pad_x < 0:
            raise GeometryError(f"Padding must be non-negative, got {pad_yx}.")
        yp, xp = ny + 2 * pad_y, nx + 2 * pad_x
        ky, kx = frequency_grid(yp, xp, dy, dx, device=device, dtype=dtype)
        kz, propagating = axial_wavenumber(ky, kx, optics.km)
        k_perp = torch.sqrt(kx**2 + ky**2)
        k_in, k_cut = source_band_limits(optics, geometry)
        source_band = band_edge(k_perp, k_cut, k_in) * propagating.to(dtype)
        slab_um = voxels_per_slab * dz
        slab_kernel = propagation_kernel(kz, propagating, slab_um)
        exit_pad = exit_padding((yp, xp)) if (pad_y or pad_x) else (0, 0)
        ye, xe = yp + 2 * exit_pad[0], xp + 2 * exit_pad[1]
        exit_ky, exit_kx = frequency_grid(ye, xe, dy, dx, device=device, dtype=dtype)
        exit_kz, exit_propagating = axial_wavenumber(exit_ky, exit_kx, optics.km)
        exit_source_band = band_edge(torch.sqrt(exit_kx**2 + exit_ky**2), k_cut, k_in) * exit_propagating.to(dtype)
        # Each slab acts at its centre plane (k + ½)·slab (symmetric split step), so the
        # last one is followed by the distance from the top slab's centre to z_f.
        exit_distance = geometry.focal_z_um - nz * dz + 0.5 * slab_um
        # The pupil's edge is decided in float64 so that float32 and float64 models agree.
        ky64, kx64 = frequency_grid(ye, xe, dy, dx, dtype=torch.float64)
        hard_aperture = aperture(ky64, kx64, optics.k0, optics.na).to(device=device, dtype=dtype)
        exit_kernel = propagation_kernel(exit_kz, exit_propagating, exit_distance) * hard_aperture
        # Upsampled samples sit at the centres of the s × s sub-pixels of each voxel
        # (offsets (i + ½)/s − ½ voxels), so that binning them integrates the pixel
        # centred on x_j = (j − N/2)·dx.
        shift = -(upsample - 1) / (2 * upsample)
        sample_shift = torch.polar(torch.ones_like(exit_kz), (exit_kx * dx + exit_ky * dy) * shift)
        live_y, live_x = live_half_width_um(optics, geometry)
        wy = absorbing_window(yp, live_y / dy, device=device, dtype=dtype) if pad_y else torch.ones(yp, device=device, dtype=dtype)
        wx = absorbing_window(xp, live_x / dx, device=device, dtype=dtype) if pad_x else torch.ones(xp, device=device, dtype=dtype)
        absorber = wy[:, None] * wx[None, :]
        margin = (min(PIXEL_INTEGRATION_MARGIN, pad_y + exit_pad[0]), min(PIXEL_INTEGRATION_MARGIN, pad_x + exit_pad[1]))
        image_shape = (upsample * (ny + 2 * margin[0]), upsample * (nx + 2 * margin[1]))
        pitch = (dy / upsample, dx / upsample)
        image_transfer = pixel_integration_transfer(image_shape, pitch, device=device, dtype=dtype)
        if bead_diameter_um > 0:
            image_transfer = image_transfer * bead_transfer(image_shape, pitch, bead_diameter_um, device=device, dtype=dtype)
        return cls(
            optics,
            geometry,
            (pad_y, pad_x),
            upsample,
            ky,
            kx,
            kz,
            source_band,
            slab_kernel,
            exit_kernel,
            absorber,
            sample_shift,
            hard_aperture,
            exit_pad,
            exit_ky,
            exit_kx,
            exit_kz,
            exit_source_band,
            margin,
            image_transfer,
            float(bead_diameter_um),
            voxels_per_slab,
        )

    def to(self, device: torch.device | str) -> ForwardModel:
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    @property
    def device(self) -> torch.device:
        """Device of the precomputed kernels."""
        return self.kz.device

    @property
    def real_dtype(self) -> torch.dtype:
        """Real dtype of the precomputed kernels (float32 or float64)."""
        return self.kz.dtype

    @property
    def slab_um(self) -> float:
        """Thickness of one propagation step (µm): ``voxels_per_slab`` voxels."""
        return self.voxels_per_slab * self.geometry.voxel_um_zyx[0]

    @property
    def padded_shape_yx(self) -> tuple[int, int]:
        """``(Yp, Xp)``: the slabs' grid."""
        return tuple(self.kz.shape)  # type: ignore[return-value]

    @property
    def exit_shape_yx(self) -> tuple[int, int]:
        """``(Ye, Xe)``: the grid of the focal-plane spectrum and the pupil."""
        return tuple(self.exit_kz.shape)  # type: ignore[return-value]


def source_field(model: ForwardModel, sources_xyz: torch.Tensor) -> torch.Tensor:
    """Field ``[V, Yp, Xp]`` of each view's source on the centre plane ``z = slab/2`` of slab 0."""
    _, dy, dx = model.geometry.voxel_um_zyx
    spectrum = point_source_spectrum(
        model.ky, model.kx, model.kz, model.source_band, _as_real(model, sources_xyz), 0.5 * model.slab_um, dy, dx
    )
    return torch.fft.ifft2(spectrum)


def homogeneous_spectrum(model: ForwardModel, sources_xyz: torch.Tensor) -> torch.Tensor:
    """Focal-plane spectrum ``[V, Ye, Xe]`` for Δn = 0, by direct propagation (no slabs).

    Equal to :func:`multislice` with an empty volume; cheap enough for calibrating
    sources against the unperturbed image.
    """
    nz = model.geometry.shape_zyx[0]
    dz, dy, dx = model.geometry.voxel_um_zyx
    top = nz * dz - 0.5 * model.slab_um
    spectrum = point_source_spectrum(
        model.exit_ky, model.exit_kx, model.exit_kz, model.exit_source_band, _as_real(model, sources_xyz), top, dy, dx
    )
    return spectrum * model.exit_kernel


def multislice(model: ForwardModel, dn: torch.Tensor, sources_xyz: torch.Tensor) -> torch.Tensor:
    """Propagate each source's field through Δn; return the pupil-filtered spectrum at the focal plane.

    Split-step (thin-slab) propagation: each slab of ``model.voxels_per_slab`` voxels is one
    phase screen ``exp(i·k0·⟨Δn⟩·slab)`` of its voxels' mean Δn followed by one angular-spectrum
    step of the slab's thickness (Goodman, *Introduction to Fourier Optics*, §3.10; the
    symmetric split of each slab puts its screen at its centre plane).

    Args:
        dn: ``[Nz, Ny, Nx]`` refractive-index contrast (real, or complex for absorption).
        sources_xyz: ``[V, 3]`` source positions (µm).

    Returns:
        ``[V, Ye, Xe]`` complex spectrum of the image-side field at the focal plane (exit grid).
    """
    nz, ny, nx = model.geometry.shape_zyx
    if tuple(dn.shape) != (nz, ny, nx):
        raise GeometryError(f"Δn has shape {tuple(dn.shape)}, expected {(nz, ny, nx)}.")
    per_slab, dz = model.voxels_per_slab, model.slab_um
    nz //= per_slab
    pad_y, pad_x = model.pad_yx
    sources_xyz = _as_real(model, sources_xyz)
    if dn.is_complex():
        dn = dn.to(complex_dtype(model.real_dtype))
    else:
        dn = _as_real(model, dn)
    if per_slab > 1:
        dn = dn.reshape(nz, per_slab, ny, nx).mean(1)
    dn_pad = F.pad(dn, (pad_x, pad_x, pad_y, pad_y)) if (pad_x or pad_y) else dn
    slabs = transmission(dn_pad, model.optics.k0, dz) * model.absorber
    # A source inside the volume only sees the slabs above it (docs/physics.md, Steps); below it
    # the field (synthesised on slab 0's plane, converging onto the source) travels
    # unabsorbed, so that the source's whole cone is there when it reaches it.
    slab_bottoms = torch.arange(nz, device=dn.device, dtype=sources_xyz.dtype) * dz
    inside = (slab_bottoms[None, :] >= sources_xyz[:, 2:3].detach())[:, :, None, None]
    # Sources all below the volume see every slab: skip the per-slab select where that is
    # cheap to know (on the CPU; elsewhere, or traced by torch.compile, it would synchronise).
    all_above = (
        sources_xyz.device.type == "cpu" and not torch.compiler.is_compiling() and bool(torch.all(sources_xyz[:, 2] <= 0))
    )
    field = source_field(model, sources_xyz)
    # unbind, not slabs[k]: indexing would make the backward pass build a full-volume
    # gradient per slab (quadratic in Nz); unbind's backward stacks them once.
    for k, slab in enumerate(slabs.unbind(0)):
        t = slab if all_above else torch.where(inside[:, k], slab, torch.ones_like(slab))
        field = field * t
        if k < nz - 1:
            field = propagate(field, model.slab_kernel)
    exit_y, exit_x = model.exit_pad_yx
    if exit_y or exit_x:
        field = F.pad(field, (exit_x, exit_x, exit_y, exit_y))
    return torch.fft.fft2(field) * model.exit_kernel


def image_field(model: ForwardModel, spectrum: torch.Tensor, margin_yx: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Field ``[V, s·(Ny + 2·my), s·(Nx + 2·mx)]`` on the camera's field of view and ``margin_yx``
    voxels around it, at ``s = upsample`` × the voxel sampling (samples at the sub-pixels' centres).

    Raises:
        GeometryError: a margin wider than the exit grid's padding.
    """
    my, mx = margin_yx
    if my > model.pad_yx[0] + model.exit_pad_yx[0] or mx > model.pad_yx[1] + model.exit_pad_yx[1]:
        raise GeometryError(f"An image margin of {margin_yx} voxels is wider than the padding of the exit grid.")
    ny, nx = model.geometry.shape_zyx[1] + 2 * my, model.geometry.shape_zyx[2] + 2 * mx
    pad_y, pad_x = (p + e - m for p, e, m in zip(model.pad_yx, model.exit_pad_yx, margin_yx))
    s = model.upsample
    if s == 1:
        field = torch.fft.ifft2(spectrum)
        return field[..., pad_y : pad_y + ny, pad_x : pad_x + nx]
    yp, xp = spectrum.shape[-2:]
    shifted = torch.fft.fftshift(spectrum * model.sample_shift, dim=(-2, -1))
    extra_y, extra_x = (s - 1) * yp, (s - 1) * xp
    padded = F.pad(shifted, (extra_x // 2, extra_x - extra_x // 2, extra_y // 2, extra_y - extra_y // 2))
    field = torch.fft.ifft2(torch.fft.ifftshift(padded, dim=(-2, -1))) * (s * s)
    return field[..., s * pad_y : s * (pad_y + ny), s * pad_x : s * (pad_x + nx)]


def pupil_on_grid(
    model: ForwardModel,
    params_or_tensors: PupilParameters | tuple[torch.Tensor | None, torch.Tensor | None],
    *,
    sine_condition: bool | None = None,
) -> torch.Tensor:
    """The complex pupil ``[Ye, Xe]`` on the model's exit grid (see :mod:`.pupil`).

    Args:
        params_or_tensors: :class:`PupilParameters`, or ``(zernike_rad, apodisation)``
            tensors (either may be None) to stay differentiable in them.
        sine_condition: overrides ``PupilParameters.sine_condition`` (default False for tensors).

    Returns:
        Complex tensor in the model's complex dtype, on its device (or wider when the
        coefficient tensors are float64); pass it as ``pupil=`` to :func:`render` or
        :func:`camera_intensity`.
    """
    if isinstance(params_or_tensors, PupilParameters):
        zernike_rad, apodisation = params_or_tensors.tensors(device=model.device, dtype=model.real_dtype)
        sine = params_or_tensors.sine_condition if sine_condition is None else sine_condition
    else:
        zernike_rad, apodisation = params_or_tensors
        sine = bool(sine_condition)
    basis = pupil_basis_on_grid(
        model, 0 if zernike_rad is None else zernike_rad.numel(), 0 if apodisation is None else apodisation.numel(), sine,
        dtype=coefficient_dtype(model.real_dtype, zernike_rad, apodisation),
    )
    return pupil_from_basis(basis, zernike_rad, apodisation)


def pupil_basis_on_grid(
    model: ForwardModel, zernike_terms: int, apodisation_terms: int, sine_condition: bool, *, dtype: torch.dtype | None = None
) -> PupilBasis:
    """The coefficient-free parts of the pupil on the model's exit grid (:func:`.pupil.pupil_basis`):
    built once, :func:`.pupil.pupil_from_basis` gives the pupil ``[Ye, Xe]`` for any coefficients.

    Args:
        zernike_terms, apodisation_terms: coefficients the basis serves (Noll 2 … J+1; a_1 … a_K).
        dtype: real dtype (default: the model's; the wider of the two when given).
    """
    optics = model.optics
    return pupil_basis(
        model.exit_ky,
        model.exit_kx,
        optics.k0,
        optics.na,
        optics.n_medium,
        zernike_terms,
        apodisation_terms,
        sine_condition,
        # The exit kernel already weights the edge cells by their coverage; the pupil
        # only needs to be zero outside them.
        hard_aperture=(model.aperture > 0).to(model.real_dtype),
        dtype=dtype,
    )


def render(
    model: ForwardModel,
    dn: torch.Tensor,
    sources_xyz: torch.Tensor,
    brightness: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    pupil: torch.Tensor | None = None,
) -> torch.Tensor:
    """Camera images ``I_i = b_i·|E_img|² + c_i`` of every view, ``[V, Yc, Xc]``.

    Args:
        dn: ``[Nz, Ny, Nx]`` Δn.
        sources_xyz: ``[V, 3]`` source positions (µm).
        brightness, background: ``[V]`` per-view ``b_i`` and ``c_i`` (default 1 and 0).
        pupil: complex ``[Ye, Xe]`` pupil (:func:`pupil_on_grid`) multiplied onto the
            focal-plane spectrum; None = the hard aperture alone.
    Inputs of another floating dtype than the model's are cast to it.
    """
    spectrum = multislice(model, dn, sources_xyz)
    return camera_intensity(model, spectrum, brightness, background, pupil)


def camera_intensity(
    model: ForwardModel,
    spectrum: torch.Tensor,
    brightness: torch.Tensor | None = None,
    background: torch.Tensor | None = None,
    pupil: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-integrated intensity ``[V, Yc, Xc]`` on the camera from the focal-plane spectrum ``[V, Ye, Xe]``.

    ``pupil`` (complex ``[Ye, Xe]``, see :func:`pupil_on_grid`) multiplies the spectrum
    first; None leaves the hard aperture already in it. Each camera pixel integrates the
    intensity over its square (:func:`integrate_pixels`, then the mean over the
    ``upsample·camera_binning`` samples per axis it holds); for beads of
    ``model.bead_diameter_um`` the intensity is first convolved with the bead's projection
    (:func:`bead_transfer`, in the same product).
    """
    if pupil is not None:
        spectrum = spectrum * pupil
    field = image_field(model, spectrum, model.pixel_margin_yx)
    intensity = integrate_pixels(field.real**2 + field.imag**2, model.image_transfer, model.upsample, model.pixel_margin_yx)
    intensity = bin_intensity(intensity, model.upsample * model.geometry.camera_binning)
    if brightness is not None:
        intensity = intensity * _as_real(model, brightness)[:, None, None]
    if background is not None:
        intensity = intensity + _as_real(model, background)[:, None, None]
    return intensity


def pixel_integration_transfer(
    shape_yx: tuple[int, int], pitch_um_yx: tuple[float, float], *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Transfer ``sinc(f_y·Δy)·sinc(f_x·Δx)`` ``[Y, X]`` (FFT order, ``f`` in cycles/µm) of the
    mean (integral ÷ area) of an intensity over ``Δy × Δx`` rectangles centred on its samples of
    pitch ``Δ``.

    Averaging over a square pixel of side Δ convolves the intensity with a box of width Δ,
    whose Fourier transform is ``sinc(f·Δ) = sin(πfΔ)/(πfΔ)`` per axis. On samples of a
    band-limited intensity (the image of a pupil of numerical aperture NA holds frequencies up
    to 2·NA/λ, at most the samples' Nyquist frequency 1/(2Δ) by :meth:`VolumeGeometry.check_sampling`)
    the product with this transfer on a periodic grid is the exact mean.
    """
    fy = torch.fft.fftfreq(int(shape_yx[0]), d=pitch_um_yx[0], device=device, dtype=dtype)
    fx = torch.fft.fftfreq(int(shape_yx[1]), d=pitch_um_yx[1], device=device, dtype=dtype)
    return torch.sinc(fy * pitch_um_yx[0])[:, None] * torch.sinc(fx * pitch_um_yx[1])[None, :]


def bead_transfer(
    shape_yx: tuple[int, int], pitch_um_yx: tuple[float, float], diameter_um: float, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Transfer ``[Y, X]`` (FFT order, samples of pitch ``pitch_um_yx`` µm) of a uniform
    fluorescent sphere of ``diameter_um`` against a point source.

    The sphere's emitters are mutually incoherent, so its image is the point source's image
    averaged over their positions. Laterally that is a convolution with the sphere's
    projection on the image plane, whose 2D Fourier transform is the sphere's 3D one on
    ``k_z = 0`` (projection-slice theorem): ``3(sin u − u·cos u)/u³`` with ``u = 2π|f|·a``,
    ``a`` the radius (Born & Wolf, *Principles of Optics*, §8.5 for the sphere's transform).
    The axial spread (±a) is left out: it is small against the depth of field
    ``λ/(n − √(n² − NA²))``. Shift-invariance through the specimen (the bead's image moves
    with its emitter over ±a) is assumed, as for the bead's position.
    """
    # in float64 whatever ``dtype``: ``sin u − u·cos u ≈ u³/3`` cancels, and in float32 it is
    # off by 4e-2 at u = 1e-3, so float32 and float64 renderers of one fit would disagree
    fy = torch.fft.fftfreq(int(shape_yx[0]), d=pitch_um_yx[0], dtype=torch.float64)
    fx = torch.fft.fftfreq(int(shape_yx[1]), d=pitch_um_yx[1], dtype=torch.float64)
    u = 2.0 * math.pi * torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) * (0.5 * diameter_um)
    safe = torch.where(u > 1e-3, u, torch.ones_like(u))
    sphere = torch.where(u > 1e-3, 3.0 * (torch.sin(safe) - safe * torch.cos(safe)) / safe**3, 1.0 - u**2 / 10.0)
    return sphere.to(device=device, dtype=dtype)


def integrate_pixels(intensity: torch.Tensor, transfer: torch.Tensor, upsample: int, margin_yx: tuple[int, int]) -> torch.Tensor:
    """Each sample of ``intensity`` ``[..., Yi, Xi]`` multiplied in frequency by ``transfer``
    (``ForwardModel.image_transfer``: integrated over its own square,
    :func:`pixel_integration_transfer`, and a bead's extent), then the ``margin_yx`` voxels
    (``upsample`` samples each) around the field of view cropped off: ``[..., Yi − 2·s·my, Xi − 2·s·mx]``."""
    integrated = torch.fft.ifft2(torch.fft.fft2(intensity) * transfer).real
    my, mx = upsample * margin_yx[0], upsample * margin_yx[1]
    return integrated[..., my : integrated.shape[-2] - my, mx : integrated.shape[-1] - mx]


def _as_real(model: ForwardModel, values: torch.Tensor) -> torch.Tensor:
    """``values`` in the model's real dtype (float64 inputs to a float32 model are cast)."""
    return values if values.dtype == model.real_dtype else values.to(model.real_dtype)
