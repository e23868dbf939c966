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
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from nvplive.errors import GeometryError

from .optics import Optics, VolumeGeometry
from .pupil import PupilParameters, aperture, pupil_function

#: Relative width of the raised-cosine edge of the source band limit.
SOURCE_EDGE_WIDTH = 0.12


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


def band_edge(k_perp: torch.Tensor, k_cut: float, width: float = SOURCE_EDGE_WIDTH) -> torch.Tensor:
    """Smooth band limit: 1 below ``(1−width)·k_cut``, raised cosine to 0 at ``k_cut``."""
    k_in = (1.0 - width) * k_cut
    t = torch.clamp((k_perp - k_in) / (k_cut - k_in), 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


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


def _cone_tan(optics: Optics) -> float:
    """Tan of the widest angle in the field: the source band or the pupil, whichever is wider."""
    na = max(optics.source_na, optics.na)
    return na / math.sqrt(optics.n_medium**2 - na**2)


def live_half_width_um(optics: Optics, geometry: VolumeGeometry) -> tuple[float, float]:
    """Half-widths (y, x, µm) of the region whose light can still reach the camera.

    A ray that reaches the field of view (half-width W) at the focal plane travels at
    most at the cone angle θ, so on any plane of the volume it lies within
    ``W + H·tan θ`` of the centre, H being the largest distance from the focal plane to
    a plane of the volume. Light outside that region is absorbed without changing the
    image.
    """
    nz, ny, nx = geometry.shape_zyx
    dz, dy, dx = geometry.voxel_um_zyx
    height = max(geometry.focal_z_um, nz * dz - geometry.focal_z_um, 0.0)
    # Beyond the geometric cone, the band-limited field keeps diffraction side lobes
    # over a few λ/NA.
    reach = height * _cone_tan(optics) + 2.0 * optics.wavelength_um / optics.na
    return 0.5 * ny * dy + reach, 0.5 * nx * dx + reach


def default_padding(optics: Optics, geometry: VolumeGeometry, source_depth_um: float) -> tuple[int, int]:
    """Lateral padding (pixels per side, y and x) so that nothing wraps into the image.

    Two conditions on the padded period P: (i) the live region (see
    :func:`live_half_width_um`) plus an absorbing margin fits in P; (ii) the periodic
    copies of the sampled source spectrum, P away from a source anywhere in the field
    of view, cannot reach the field of view at the focal plane:
    ``P ≥ 2W + (z_f − z_s)·tan θ`` for the deepest source ``z_s = −source_depth_um``.
    """
    _nz, ny, nx = geometry.shape_zyx
    _dz, dy, dx = geometry.voxel_um_zyx
    tan_theta = _cone_tan(optics)
    lives = live_half_width_um(optics, geometry)
    pads = []
    for n, d, live in ((ny, dy, lives[0]), (nx, dx, lives[1])):
        margin = max(8 * d, 0.15 * live)
        copies = n * d + (geometry.focal_z_um + max(source_depth_um, 0.0)) * tan_theta
        period = max(copies, 2.0 * (live + margin))
        total = _nice_fft_size(max(n + 2, int(math.ceil(period / d))))
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

    Build it with :meth:`build`; move it with :meth:`to`. All frequency-domain
    tensors are ``[Yp, Xp]`` on the padded grid, in FFT order.
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

    @classmethod
    def build(
        cls,
        optics: Optics,
        geometry: VolumeGeometry,
        *,
        source_depth_um: float | None = None,
        pad_yx: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ForwardModel:
        """Precompute kernels for ``optics`` and ``geometry``.

        Args:
            source_depth_um: deepest source distance below the bottom face (µm),
                used to size the padding (default: half the volume depth).
            pad_yx: explicit lateral padding per side (pixels), overriding the default.
        """
        upsample = geometry.check_sampling(optics)
        nz, ny, nx = geometry.shape_zyx
        dz, dy, dx = geometry.voxel_um_zyx
        if source_depth_um is None:
            source_depth_um = 0.5 * nz * dz
        if pad_yx is None:
            pad_yx = default_padding(optics, geometry, source_depth_um)
        pad_y, pad_x = (int(p) for p in pad_yx)
        if pad_y < 0 or pad_x < 0:
            raise GeometryError(f"Padding must be non-negative, got {pad_yx}.")
        yp, xp = ny + 2 * pad_y, nx + 2 * pad_x
        ky, kx = frequency_grid(yp, xp, dy, dx, device=device, dtype=dtype)
        kz, propagating = axial_wavenumber(ky, kx, optics.km)
        k_perp = torch.sqrt(kx**2 + ky**2)
        source_band = band_edge(k_perp, optics.k0 * optics.source_na) * propagating.to(dtype)
        slab_kernel = propagation_kernel(kz, propagating, dz)
        # Each slab acts at its centre plane (k + ½)·dz (symmetric split step), so the
        # last one is followed by the distance from the top slab's centre to z_f.
        exit_distance = geometry.focal_z_um - (nz - 0.5) * dz
        # The pupil's edge is decided in float64 so that float32 and float64 models agree.
        ky64, kx64 = frequency_grid(yp, xp, dy, dx, dtype=torch.float64)
        hard_aperture = aperture(ky64, kx64, optics.k0, optics.na).to(device=device, dtype=dtype)
        exit_kernel = propagation_kernel(kz, propagating, exit_distance) * hard_aperture
        # Upsampled samples sit at the centres of the s × s sub-pixels of each voxel
        # (offsets (i + ½)/s − ½ voxels), so that binning them integrates the pixel
        # centred on x_j = (j − N/2)·dx.
        shift = -(upsample - 1) / (2 * upsample)
        sample_shift = torch.polar(torch.ones_like(kz), (kx * dx + ky * dy) * shift)
        live_y, live_x = live_half_width_um(optics, geometry)
        wy = absorbing_window(yp, live_y / dy, device=device, dtype=dtype) if pad_y else torch.ones(yp, device=device, dtype=dtype)
        wx = absorbing_window(xp, live_x / dx, device=device, dtype=dtype) if pad_x else torch.ones(xp, device=device, dtype=dtype)
        absorber = wy[:, None] * wx[None, :]
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
    def padded_shape_yx(self) -> tuple[int, int]:
        """Padded lateral grid ``(Yp, Xp)`` of the propagation (pixels)."""
        return tuple(self.kz.shape)  # type: ignore[return-value]


def source_field(model: ForwardModel, sources_xyz: torch.Tensor) -> torch.Tensor:
    """Field ``[V, Yp, Xp]`` of each view's source on the centre plane ``z = dz/2`` of slab 0."""
    dz, dy, dx = model.geometry.voxel_um_zyx
    spectrum = point_source_spectrum(
        model.ky, model.kx, model.kz, model.source_band, _as_real(model, sources_xyz), 0.5 * dz, dy, dx
    )
    return torch.fft.ifft2(spectrum)


def homogeneous_spectrum(model: ForwardModel, sources_xyz: torch.Tensor) -> torch.Tensor:
    """Focal-plane spectrum ``[V, Yp, Xp]`` for Δn = 0, by direct propagation (no slabs).

    Equal to :func:`multislice` with an empty volume; cheap enough for calibrating
    sources against the unperturbed image.
    """
    nz = model.geometry.shape_zyx[0]
    dz, dy, dx = model.geometry.voxel_um_zyx
    top = (nz - 0.5) * dz
    spectrum = point_source_spectrum(model.ky, model.kx, model.kz, model.source_band, _as_real(model, sources_xyz), top, dy, dx)
    return spectrum * model.exit_kernel


def multislice(model: ForwardModel, dn: torch.Tensor, sources_xyz: torch.Tensor) -> torch.Tensor:
    """Propagate each source's field through Δn; return the pupil-filtered spectrum at the focal plane.

    Args:
        dn: ``[Nz, Ny, Nx]`` refractive-index contrast (real, or complex for absorption).
        sources_xyz: ``[V, 3]`` source positions (µm).

    Returns:
        ``[V, Yp, Xp]`` complex spectrum of the image-side field at the focal plane.
    """
    nz, ny, nx = model.geometry.shape_zyx
    if tuple(dn.shape) != (nz, ny, nx):
        raise GeometryError(f"Δn has shape {tuple(dn.shape)}, expected {(nz, ny, nx)}.")
    dz = model.geometry.voxel_um_zyx[0]
    pad_y, pad_x = model.pad_yx
    sources_xyz = _as_real(model, sources_xyz)
    if dn.is_complex():
        dn = dn.to(complex_dtype(model.real_dtype))
    else:
        dn = _as_real(model, dn)
    dn_pad = F.pad(dn, (pad_x, pad_x, pad_y, pad_y)) if (pad_x or pad_y) else dn
    slabs = transmission(dn_pad, model.optics.k0, dz) * model.absorber
    absorber = model.absorber.to(slabs.dtype)
    # A source inside the volume only sees the slabs above it (docs/physics.md, Steps).
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
        t = slab if all_above else torch.where(inside[:, k], slab, absorber)
        field = field * t
        if k < nz - 1:
            field = propagate(field, model.slab_kernel)
    return torch.fft.fft2(field) * model.exit_kernel


def image_field(model: ForwardModel, spectrum: torch.Tensor) -> torch.Tensor:
    """Field on the camera's field of view at ``upsample`` × the voxel sampling."""
    ny, nx = model.geometry.shape_zyx[1:]
    pad_y, pad_x = model.pad_yx
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
    """The complex pupil ``[Yp, Xp]`` on the model's padded frequency grid (see :mod:`.pupil`).

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
    optics = model.optics
    return pupil_function(
        model.ky,
        model.kx,
        optics.k0,
        optics.na,
        optics.n_medium,
        zernike_rad,
        apodisation,
        sine,
        hard_aperture=model.aperture,
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
        pupil: complex ``[Yp, Xp]`` pupil (:func:`pupil_on_grid`) multiplied onto the
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
    """Pixel-integrated intensity ``[V, Yc, Xc]`` on the camera from the focal-plane spectrum ``[V, Yp, Xp]``.

    ``pupil`` (complex ``[Yp, Xp]``, see :func:`pupil_on_grid`) multiplies the spectrum
    first; None leaves the hard aperture already in it.
    """
    if pupil is not None:
        spectrum = spectrum * pupil
    field = image_field(model, spectrum)
    intensity = field.real**2 + field.imag**2
    intensity = bin_intensity(intensity, model.upsample * model.geometry.camera_binning)
    if brightness is not None:
        intensity = intensity * _as_real(model, brightness)[:, None, None]
    if background is not None:
        intensity = intensity + _as_real(model, background)[:, None, None]
    return intensity


def _as_real(model: ForwardModel, values: torch.Tensor) -> torch.Tensor:
    """``values`` in the model's real dtype (float64 inputs to a float32 model are cast)."""
    return values if values.dtype == model.real_dtype else values.to(model.real_dtype)
