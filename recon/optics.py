"""Optical and sampling parameters of an FDT experiment (all lengths in µm).

These small frozen dataclasses are the single description of the geometry that
the renderer, the simulator, the recording format and the reconstruction share.
They validate themselves and refuse, with one sentence, geometry the forward
model cannot represent (docs/physics.md, sampling).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from nvplive.errors import GeometryError

#: Default source NA as a fraction of n_medium: the emitted spherical wave's angular
#: spectrum is kept up to this NA (where ``1/k_z`` is still tame) — a numerical band
#: edge, not the objective (the detection pupil is the hard aperture at ``na``).
#: Chosen from the accuracy-versus-cost table in BENCHMARKS.md ("Source NA").
DEFAULT_SOURCE_NA_FRACTION = 0.95

#: Largest |k⊥| of the field, as a fraction of the lateral Nyquist frequency π/dx,
#: that the renderer accepts before upsampling the field for |E|².
_FIELD_NYQUIST_MARGIN = 0.98


def full_scale(bit_depth: int) -> int:
    """The largest count a camera of ``bit_depth`` significant bits reports, ``2**bit_depth − 1``
    (a 12-bit camera stores at most 4095, also in 16-bit words): where its pixels saturate."""
    return 2 ** int(bit_depth) - 1


@dataclass(frozen=True)
class Optics:
    """Microscope optics.

    Attributes:
        wavelength_um: vacuum emission wavelength λ (µm), centre of the emission band.
        n_medium: refractive index of the immersion/embedding medium.
        na: numerical aperture of the detection objective.
        na_source: band limit of the point-source angular spectrum; None (default) means
            ``DEFAULT_SOURCE_NA_FRACTION·n_medium``, lowered where the voxel grid cannot
            carry it (see :func:`nvplive.recon.physics.source_band_limits`).
        emission_fwhm_um: full width at half maximum of the emission spectrum (µm);
            used by the polychromatic simulator (partial coherence).
    """

    wavelength_um: float = 0.6
    n_medium: float = 1.33
    na: float = 0.8
    na_source: float | None = None
    emission_fwhm_um: float = 0.03

    def __post_init__(self) -> None:
        for name in ("wavelength_um", "n_medium", "na"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise GeometryError(f"Optics: {name} must be a positive number, got {value!r}.")
        if self.na >= self.n_medium:
            raise GeometryError(
                f"Optics: NA {self.na} must be smaller than the medium index {self.n_medium}."
            )
        if self.na_source is not None and not (0 < self.na_source < self.n_medium):
            raise GeometryError(
                f"Optics: source NA {self.na_source} must lie in (0, n_medium={self.n_medium})."
            )
        if not (math.isfinite(self.emission_fwhm_um) and self.emission_fwhm_um >= 0):
            raise GeometryError(
                f"Optics: emission_fwhm_um must be ≥ 0, got {self.emission_fwhm_um!r}."
            )
        if self.emission_fwhm_um >= 0.5 * self.wavelength_um:
            # the band's samples reach ±1.4 FWHM at 5 nodes: a band this wide has wavelengths ≤ 0
            raise GeometryError(
                f"Optics: emission_fwhm_um {self.emission_fwhm_um:g} must be below half the wavelength "
                f"{self.wavelength_um:g} µm (an emission band is a few tens of nm wide)."
            )

    @property
    def k0(self) -> float:
        """Vacuum wavenumber 2π/λ (rad/µm)."""
        return 2.0 * math.pi / self.wavelength_um

    @property
    def km(self) -> float:
        """Wavenumber in the medium k0·n_medium (rad/µm)."""
        return self.k0 * self.n_medium

    @property
    def source_na(self) -> float:
        """Requested band limit of the source spectrum (explicit, or the default fraction of n_medium)."""
        return DEFAULT_SOURCE_NA_FRACTION * self.n_medium if self.na_source is None else self.na_source

    def with_wavelength(self, wavelength_um: float) -> Optics:
        """The same optics at another wavelength (for polychromatic sums)."""
        values = asdict(self)
        values["wavelength_um"] = wavelength_um
        return Optics(**values)

    def to_dict(self) -> dict:
        """The optics as a JSON-ready dict (the recording's ``optics`` section)."""
        return asdict(self)


@dataclass(frozen=True)
class VolumeGeometry:
    """The reconstructed volume and how the camera samples it.

    Attributes:
        shape_zyx: voxels (Nz, Ny, Nx).
        voxel_um_zyx: voxel size (dz, dy, dx) in µm.
        focal_plane_z_um: height of the focal plane above the volume's bottom face
            (µm); ``None`` means the centre of the volume.
        camera_binning: integer camera pixels per voxel laterally; the camera pixel in
            sample space is ``camera_binning × (dy, dx)``.
    """

    shape_zyx: tuple[int, int, int]
    voxel_um_zyx: tuple[float, float, float]
    focal_plane_z_um: float | None = None
    camera_binning: int = 1

    def __post_init__(self) -> None:
        shape = tuple(self.shape_zyx)
        voxel = tuple(self.voxel_um_zyx)
        if len(shape) != 3 or any((not isinstance(n, int)) or n <= 0 for n in shape):
            raise GeometryError(f"Volume: shape_zyx must be three positive integers, got {shape!r}.")
        if len(voxel) != 3 or any(not (math.isfinite(d) and d > 0) for d in voxel):
            raise GeometryError(f"Volume: voxel_um_zyx must be three positive sizes, got {voxel!r}.")
        if not isinstance(self.camera_binning, int) or self.camera_binning < 1:
            raise GeometryError(f"Volume: camera_binning must be a positive integer, got {self.camera_binning!r}.")
        if shape[1] % self.camera_binning or shape[2] % self.camera_binning:
            raise GeometryError(
                f"Volume: lateral size {shape[1]}×{shape[2]} is not divisible by the camera binning {self.camera_binning}."
            )
        if self.focal_plane_z_um is not None and not math.isfinite(self.focal_plane_z_um):
            raise GeometryError("Volume: focal_plane_z_um must be a finite number.")
        object.__setattr__(self, "shape_zyx", tuple(int(n) for n in shape))
        object.__setattr__(self, "voxel_um_zyx", tuple(float(d) for d in voxel))

    @property
    def extent_um_zyx(self) -> tuple[float, float, float]:
        """Physical size of the volume (µm)."""
        return tuple(n * d for n, d in zip(self.shape_zyx, self.voxel_um_zyx))  # type: ignore[return-value]

    @property
    def focal_z_um(self) -> float:
        """Focal plane height above the bottom face (µm)."""
        if self.focal_plane_z_um is None:
            return 0.5 * self.extent_um_zyx[0]
        return float(self.focal_plane_z_um)

    @property
    def camera_shape_yx(self) -> tuple[int, int]:
        """Frame size in camera pixels."""
        _, ny, nx = self.shape_zyx
        return ny // self.camera_binning, nx // self.camera_binning

    @property
    def camera_pixel_um(self) -> float:
        """Camera pixel size in sample space (µm), ``camera_binning × dx``.

        Raises:
            GeometryError: dy ≠ dx; camera pixels are square (Micro-Manager's pixel
                size, the recording and its OME metadata have one lateral size).
        """
        _, dy, dx = self.voxel_um_zyx
        if not math.isclose(dy, dx, rel_tol=1e-9):
            raise GeometryError(f"Volume: camera pixels are square, so the lateral voxel sizes must be equal (dy {dy:g} µm, dx {dx:g} µm).")
        return self.camera_binning * dx

    def camera_coordinates_um(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres (µm) of the camera pixels along y and x, FOV-centre origin.

        A camera pixel integrates ``camera_binning`` voxels per axis; its centre is
        the mean of their centres ``x_j = (j − N/2)·dx``.
        """
        b = self.camera_binning
        _, ny, nx = self.shape_zyx
        _, dy, dx = self.voxel_um_zyx
        ys = ((np.arange(ny // b) * b - ny / 2) + (b - 1) / 2) * dy
        xs = ((np.arange(nx // b) * b - nx / 2) + (b - 1) / 2) * dx
        return ys, xs

    def check_sampling(self, optics: Optics) -> int:
        """Check the sampling rule (docs/physics.md) and return the field upsampling factor for |E|².

        The field inside the pupil has bandwidth NA/λ: it must be representable on
        the voxel grid (``dx < λ/(2·NA)``). Its intensity has twice that bandwidth;
        when ``dx > λ/(4·NA)`` the field is upsampled ×2 before squaring and the
        intensity integrated back onto the voxel grid. An explicit ``na_source`` must
        fit the grid too; the default source NA is lowered to what the grid carries.
        """
        na = optics.na if optics.na_source is None else max(optics.na, optics.na_source)
        _, dy, dx = self.voxel_um_zyx
        d = max(dx, dy)
        field_limit = _FIELD_NYQUIST_MARGIN * optics.wavelength_um / (2.0 * na)
        if d > field_limit:
            raise GeometryError(
                f"Sampling: lateral voxel {d:.4g} µm is too coarse for NA {na} at λ {optics.wavelength_um} µm; "
                f"it must be below λ/(2·NA) = {optics.wavelength_um / (2 * na):.4g} µm."
            )
        return 1 if d <= optics.wavelength_um / (4.0 * optics.na) else 2

    def max_field_na(self, optics: Optics) -> float:
        """Largest NA whose angular spectrum the lateral voxel grid carries (just below Nyquist)."""
        return _FIELD_NYQUIST_MARGIN * optics.wavelength_um / (2.0 * max(self.voxel_um_zyx[1:]))

    def to_dict(self) -> dict:
        """The geometry as a JSON-ready dict (the recording's ``geometry`` section)."""
        return {
            "shape_zyx": list(self.shape_zyx),
            "voxel_um_zyx": list(self.voxel_um_zyx),
            "focal_plane_z_um": self.focal_z_um,
            "camera_binning": self.camera_binning,
        }
