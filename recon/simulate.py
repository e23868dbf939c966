"""Synthetic FDT data: partially coherent images of point sources through a phantom.

The simulator deliberately uses richer physics than the reconstruction
(docs/physics.md, Partial coherence): an incoherent sum of the coherent renderer over wavelengths of the emission
spectrum and over sub-sources filling each bead, followed by the camera's noise
model. Intensities are in photo-electrons.

It also has its own :class:`Instrument`, which the reconstruction is not told: a
detection pupil with apodisation and Zernike aberrations, a source spectrum reaching
closer to n_medium than the renderer's default, and several propagation steps per
voxel. A recording stores it with the ground truth (``extra["simulated_instrument"]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from nvplive.errors import GeometryError

from .optics import Optics, VolumeGeometry, full_scale
from .physics import ForwardModel, camera_intensity, multislice, pupil_on_grid
from .pupil import PupilParameters, noll_to_nm

#: Source NA of a realistic instrument, as a fraction of n_medium (lowered to what the
#: voxel grid carries): beyond the renderer's default, so the two never coincide.
REALISTIC_SOURCE_NA_FRACTION = 0.98

#: Standard deviations (per bead, common to the bead layer in z; µm) of the error in the bead
#: positions a user states to a realistic instrument's reconstruction (:func:`stated_positions`).
REALISTIC_BEAD_POSITION_ERROR_UM = (0.1, 0.3)

#: Second element of the seed of the nominal positions' draw, so that it is independent of
#: the other draws made with the recording's seed.
NOMINAL_SOURCES_STREAM = 7211


@dataclass(frozen=True)
class Instrument:
    """What the simulated microscope does that the reconstruction is not told.

    Attributes:
        name: "matched" (the reconstruction's own model) or "realistic".
        pupil: detection pupil (apodisation, Zernike phase in radians at the centre
            wavelength; the same radians at every wavelength of the band).
        source_na: band limit of the emitted spectrum (None: the renderer's default).
        steps_per_voxel: propagation steps per voxel along z (Δn piecewise constant).
        seed: the draw that made a realistic instrument (None for explicit ones).
        bead_position_error_um: standard deviations (per bead, common to the bead layer in
            z; µm) of the error of the bead positions the user states (:func:`stated_positions`):
            beads are found in a widefield image (to about a tenth of a micrometre each) and
            their layer's depth from the focus drive's reading (to a few tenths).
    """

    name: str = "matched"
    pupil: PupilParameters = field(default_factory=PupilParameters)
    source_na: float | None = None
    steps_per_voxel: int = 1
    seed: int | None = None
    bead_position_error_um: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not isinstance(self.steps_per_voxel, int) or self.steps_per_voxel < 1:
            raise GeometryError(f"Instrument: steps_per_voxel must be a positive integer, got {self.steps_per_voxel!r}.")
        error = tuple(float(e) for e in self.bead_position_error_um)
        if len(error) != 2 or not all(math.isfinite(e) and e >= 0.0 for e in error):
            raise GeometryError(
                f"Instrument: bead_position_error_um must be two standard deviations ≥ 0 (per bead, bead layer; µm), got {error!r}."
            )
        object.__setattr__(self, "bead_position_error_um", error)

    @classmethod
    def realistic(cls, optics: Optics, *, seed: int = 0, max_rms_rad: float = 0.5) -> Instrument:
        """A plausible objective: edge transmission 80–100 % (radial apodisation), Zernike
        phase Noll 4–22 with a primary-spherical bias and a 1/n fall-off, scaled to an RMS
        drawn in [0.4, 1]·``max_rms_rad``; the source spectrum to 0.98·n_medium; two
        propagation steps per voxel; bead positions stated to 0.1 µm each and their layer's depth
        to 0.3 µm (standard deviations, :data:`REALISTIC_BEAD_POSITION_ERROR_UM`)."""
        rng = np.random.default_rng(seed)
        zernike = np.zeros(21)  # Noll 2..22
        for j in range(4, 23):
            n, _ = noll_to_nm(j)
            zernike[j - 2] = rng.normal() / n
        zernike[11 - 2] += 1.5 * abs(rng.normal())  # primary spherical dominates (index mismatch)
        rms = rng.uniform(0.4, 1.0) * max_rms_rad
        zernike *= rms / np.linalg.norm(zernike)
        edge_loss = rng.uniform(0.0, 0.2)
        pupil = PupilParameters(zernike_rad=tuple(zernike.tolist()), apodisation=(-edge_loss,))
        return cls("realistic", pupil, REALISTIC_SOURCE_NA_FRACTION * optics.n_medium, 2, seed,
                   REALISTIC_BEAD_POSITION_ERROR_UM)

    @classmethod
    def named(cls, name: str, optics: Optics, *, seed: int = 0) -> Instrument:
        """``"matched"`` or ``"realistic"`` (drawn with ``seed``)."""
        if name == "matched":
            return cls()
        if name == "realistic":
            return cls.realistic(optics, seed=seed)
        raise GeometryError(f"Instrument: unknown instrument {name!r}; choose matched or realistic.")

    def to_dict(self) -> dict:
        """JSON-serialisable form (the recording's ``extra["simulated_instrument"]``)."""
        return {
            "name": self.name,
            "pupil": self.pupil.to_dict(),
            "source_na": self.source_na,
            "steps_per_voxel": self.steps_per_voxel,
            "seed": self.seed,
            "bead_position_error_um": list(self.bead_position_error_um),
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> Instrument:
        """Inverse of :meth:`to_dict`; None or {} (recordings made before instruments) is "matched"."""
        if not data:
            return cls()
        return cls(
            name=str(data.get("name", "matched")),
            pupil=PupilParameters.from_dict(data.get("pupil", {})),
            source_na=data.get("source_na"),
            steps_per_voxel=int(data.get("steps_per_voxel", 1)),
            seed=data.get("seed"),
            bead_position_error_um=tuple(data.get("bead_position_error_um", (0.0, 0.0))),
        )

    def render_optics(self, optics: Optics, geometry: VolumeGeometry) -> Optics:
        """``optics`` with this instrument's source NA (lowered to what the grid carries)."""
        if self.source_na is None:
            return optics
        values = optics.to_dict()
        values["na_source"] = min(self.source_na, geometry.max_field_na(optics))
        return Optics(**values)

    def render_geometry(self, geometry: VolumeGeometry) -> VolumeGeometry:
        """``geometry`` with ``steps_per_voxel`` slabs per voxel (same extent and focal plane)."""
        s = self.steps_per_voxel
        if s == 1:
            return geometry
        nz, ny, nx = geometry.shape_zyx
        dz, dy, dx = geometry.voxel_um_zyx
        return VolumeGeometry((nz * s, ny, nx), (dz / s, dy, dx), geometry.focal_z_um, geometry.camera_binning)


def stated_positions(sources_um_xyz: np.ndarray, error_um: tuple[float, float], seed: int) -> np.ndarray:
    """The bead positions ``[V, 3]`` (µm) a user would state for the true ``sources_um_xyz``
    ``[V, 3]``, with ``error_um = (per_bead, layer)`` standard deviations: each bead off by its
    own normal draw of ``per_bead`` in x, y and z (where a widefield image puts it), and every
    bead off by one common draw of ``layer`` in z (the focus drive's reading of the bead
    layer). A bead below the volume (z ≤ 0) is never stated inside it: its stated z is at most
    0. Drawn with ``seed`` (a stream of its own); the true positions themselves when both are 0.
    """
    per_bead, layer = error_um
    sources = np.asarray(sources_um_xyz, dtype=np.float64)
    if per_bead == 0.0 and layer == 0.0:
        return sources.copy()
    rng = np.random.default_rng([seed, NOMINAL_SOURCES_STREAM])
    stated = sources + rng.normal(size=sources.shape) * per_bead
    stated[:, 2] += rng.normal() * layer
    below = sources[:, 2] <= 0.0
    stated[below, 2] = np.minimum(stated[below, 2], 0.0)
    return stated


@dataclass(frozen=True)
class CameraModel:
    """Camera noise model: ``offset + Poisson(gain·I) + N(0, read_noise²)`` in ADU (uint16)."""

    offset: float = 100.0
    gain: float = 1.0
    read_noise: float = 1.6
    bit_depth: int = 16

    def to_dict(self) -> dict:
        """The camera as a JSON-ready dict (offset, gain, read noise)."""
        return {"offset": self.offset, "gain": self.gain, "read_noise": self.read_noise}


@dataclass(frozen=True)
class PartialCoherence:
    """How the simulator sums incoherent contributions.

    Attributes:
        n_wavelengths: Gauss–Hermite nodes over the Gaussian emission spectrum
            (1 = coherent at the centre wavelength).
        bead_diameter_um: diameter of each fluorescent bead (µm).
        n_subsources: incoherent point emitters spread over each bead (1 = a point).
    """

    n_wavelengths: int = 5
    bead_diameter_um: float = 0.2
    n_subsources: int = 4


def emission_wavelengths(optics: Optics, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Wavelengths (µm) and weights (summing to 1) sampling a Gaussian emission spectrum."""
    if n <= 1 or optics.emission_fwhm_um == 0:
        return np.array([optics.wavelength_um]), np.array([1.0])
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    sigma = optics.emission_fwhm_um / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return optics.wavelength_um + sigma * nodes, weights / weights.sum()


def band_renderers(
    optics: Optics,
    geometry: VolumeGeometry,
    samples: int,
    *,
    pad_yx: tuple[int, int],
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    optics_at: Callable[[Optics], Optics] | None = None,
    bead_diameter_um: float = 0.0,
    voxels_per_slab: int = 1,
) -> list[tuple[ForwardModel, float]]:
    """Renderers at wavelengths sampling the emission band, with their weights.

    The band is ``optics``' Gaussian emission spectrum (``emission_fwhm_um``) sampled at
    ``samples`` Gauss–Hermite nodes (:func:`emission_wavelengths`); an incoherent image is
    the weighted sum of the renderers' intensities (partial coherence).

    Args:
        optics: the microscope at the band's centre wavelength (µm).
        geometry: the volume every renderer shares.
        samples: wavelengths (1, or a line source: the centre wavelength alone, weight 1).
        pad_yx: lateral padding per side (pixels), the same for every wavelength so that
            the renderers' images add pixel by pixel.
        device, dtype: where and in which real precision the kernels are built.
        optics_at: maps the optics at each wavelength to the renderer's (e.g. an
            instrument's source NA, :meth:`Instrument.render_optics`); default: as they are.
        bead_diameter_um, voxels_per_slab: the beads' diameter and the voxels per propagation
            step in every renderer (:meth:`.physics.ForwardModel.build`).

    Returns:
        ``[(ForwardModel, weight)]`` in order of wavelength, the weights summing to 1.

    Raises:
        GeometryError: as :meth:`.physics.ForwardModel.build` (a grid too coarse for a wavelength).
    """
    wavelengths, weights = emission_wavelengths(optics, samples)
    at = optics_at or (lambda o: o)
    return [
        (
            ForwardModel.build(at(optics.with_wavelength(float(w))), geometry, pad_yx=pad_yx, bead_diameter_um=bead_diameter_um,
                               voxels_per_slab=voxels_per_slab, device=device, dtype=dtype),
            float(a),
        )
        for w, a in zip(wavelengths, weights)
    ]


def bead_offsets(diameter_um: float, n: int, seed: int = 0) -> np.ndarray:
    """``[n, 3]`` offsets (µm) of sub-emitters spread uniformly through a bead (mean zero)."""
    if n <= 1 or diameter_um <= 0:
        return np.zeros((1, 3))
    rng = np.random.default_rng(seed)
    points: list[np.ndarray] = []
    while len(points) < n:
        p = rng.uniform(-1, 1, 3)
        if p @ p <= 1:
            points.append(p)
    offsets = np.array(points) * 0.5 * diameter_um
    return offsets - offsets.mean(axis=0)


def default_sources(
    geometry: VolumeGeometry, views: int, *, depth_um: float | None = None, seed: int = 0
) -> np.ndarray:
    """Nominal source positions ``[V, 3]`` (µm): beads on a plane below the volume.

    One source under the centre and the others on a ring (or, for many views, a
    sunflower pattern) within the field of view, with a small random jitter, as
    beads on a coverslip under the specimen.
    """
    if views < 1:
        raise GeometryError(f"Sources: need at least one view, got {views}.")
    nz, ny, nx = geometry.shape_zyx
    dz, dy, dx = geometry.voxel_um_zyx
    if depth_um is None:
        depth_um = 0.25 * nz * dz
    rng = np.random.default_rng(seed)
    radius = 0.32 * min(ny * dy, nx * dx)
    if views <= 8:
        angles = 2 * math.pi * np.arange(views - 1) / max(views - 1, 1) + rng.uniform(0, 2 * math.pi)
        xy = np.concatenate([[[0.0, 0.0]], radius * np.stack([np.cos(angles), np.sin(angles)], 1)])
    else:
        golden = math.pi * (3 - math.sqrt(5))
        i = np.arange(views)
        r = radius * np.sqrt((i + 0.5) / views) * 1.15
        xy = np.stack([r * np.cos(i * golden), r * np.sin(i * golden)], 1)
    jitter = rng.normal(scale=0.15 * min(dx, dy) * 4, size=(views, 2))
    z = -depth_um + rng.normal(scale=0.05, size=(views, 1))
    return np.concatenate([xy + jitter, z], axis=1)


#: The thick-specimen geometry (issue 13's independent-recording geometry): a 16 µm thick
#: volume of 32×64×64 voxels of 0.5×0.16×0.16 µm, λ 0.52 µm, n 1.333, NA 0.8, focus at
#: the centre, one bead 3 µm below the volume and the others on a ring 2–4 µm below.
THICK_OPTICS = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8)
THICK_SHAPE_ZYX = (32, 64, 64)
THICK_VOXEL_UM_ZYX = (0.5, 0.16, 0.16)


def thick_sources(geometry: VolumeGeometry, views: int, *, seed: int = 0) -> np.ndarray:
    """Sources ``[V, 3]`` (µm) of the thick geometry: one 3 µm below the centre, the others
    on a ring (radius 0.32 of the field of view) at depths drawn in 2–4 µm."""
    sources = default_sources(geometry, views, depth_um=3.0, seed=seed)
    rng = np.random.default_rng(seed + 11)
    sources[0, 2] = -3.0
    sources[1:, 2] = -rng.uniform(2.0, 4.0, views - 1)
    return sources


@dataclass
class Simulator:
    """Renders noisy camera frames of a Δn volume for a fixed set of sources.

    Attributes:
        optics, geometry: the microscope and the volume.
        sources_um_xyz: ``[V, 3]`` true source positions (µm).
        photons: mean expected photo-electrons per pixel of an unperturbed image.
        relative_brightness: ``[V]`` per-bead brightness factors (real beads differ).
        background: ``[V]`` background photo-electrons per pixel.
        coherence: partial-coherence sampling.
        camera: the noise model.
        instrument: pupil, source NA and axial sampling of the simulated microscope.
    """

    optics: Optics
    geometry: VolumeGeometry
    sources_um_xyz: np.ndarray
    photons: float = 3000.0
    relative_brightness: np.ndarray | None = None
    background: np.ndarray | None = None
    coherence: PartialCoherence = field(default_factory=PartialCoherence)
    camera: CameraModel = field(default_factory=CameraModel)
    device: str | torch.device = "cpu"
    seed: int = 0
    instrument: Instrument = field(default_factory=Instrument)

    def __post_init__(self) -> None:
        self.sources_um_xyz = np.asarray(self.sources_um_xyz, dtype=np.float64).reshape(-1, 3)
        v = len(self.sources_um_xyz)
        rng = np.random.default_rng(self.seed + 7)
        if self.relative_brightness is None:
            self.relative_brightness = rng.uniform(0.75, 1.25, v)
        if self.background is None:
            self.background = rng.uniform(2.0, 8.0, v)
        self.relative_brightness = np.asarray(self.relative_brightness, dtype=np.float64)
        self.background = np.asarray(self.background, dtype=np.float64)
        depth = float(max(0.0, -self.sources_um_xyz[:, 2].min()))
        optics = self.instrument.render_optics(self.optics, self.geometry)
        geometry = self.instrument.render_geometry(self.geometry)
        reference = ForwardModel.build(optics, geometry, source_depth_um=depth)
        band = band_renderers(
            self.optics, geometry, self.coherence.n_wavelengths, pad_yx=reference.pad_yx, device=self.device,
            optics_at=lambda o: self.instrument.render_optics(o, self.geometry),
        )
        self._models = [m for m, _ in band]
        neutral = self.instrument.pupil == PupilParameters()
        self._pupils = [None if neutral else pupil_on_grid(model, self.instrument.pupil) for model in self._models]
        self._weights = [a for _, a in band]
        self._offsets = bead_offsets(self.coherence.bead_diameter_um, self.coherence.n_subsources, self.seed)
        empty = np.zeros(self.geometry.shape_zyx, dtype=np.float32)
        unperturbed = self._partially_coherent(empty)
        self._scale = self.photons / unperturbed.mean(axis=(1, 2))

    @property
    def n_views(self) -> int:
        """Views (sources) per timepoint."""
        return len(self.sources_um_xyz)

    @property
    def pad_yx(self) -> tuple[int, int]:
        """Lateral padding (pixels per side) of the renderer, shared by all wavelengths."""
        return self._models[0].pad_yx

    @property
    def brightness(self) -> np.ndarray:
        """``[V]`` factor b_i mapping the renderer's |E|² to photo-electrons."""
        return self._scale * self.relative_brightness

    def _partially_coherent(self, dn: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """Incoherent sum over wavelengths and bead sub-sources of |E|², ``[V, Yc, Xc]``."""
        idx = np.arange(self.n_views) if views is None else np.asarray(views)
        sources = self.sources_um_xyz[idx]
        sub = (sources[:, None, :] + self._offsets[None, :, :]).reshape(-1, 3)
        dn_t = torch.as_tensor(dn, dtype=torch.float32, device=self.device)
        if self.instrument.steps_per_voxel > 1:
            dn_t = dn_t.repeat_interleave(self.instrument.steps_per_voxel, dim=0)
        src_t = torch.as_tensor(sub, dtype=torch.float32, device=self.device)
        total: torch.Tensor | None = None
        with torch.no_grad():
            for model, weight, pupil in zip(self._models, self._weights, self._pupils):
                image = camera_intensity(model, multislice(model, dn_t, src_t), pupil=pupil) * float(weight)
                total = image if total is None else total + image
        assert total is not None  # at least one wavelength
        total = total.reshape(len(idx), len(self._offsets), *total.shape[-2:]).mean(dim=1)
        return total.cpu().numpy().astype(np.float64)

    def expected(self, dn: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """Noise-free expected photo-electrons ``[V, Yc, Xc]`` (float64)."""
        idx = np.arange(self.n_views) if views is None else np.asarray(views)
        image = self._partially_coherent(dn, idx)
        assert self.brightness is not None and self.background is not None  # set in __post_init__
        return image * self.brightness[idx, None, None] + self.background[idx, None, None]

    def frames(self, dn: np.ndarray, rng: np.random.Generator, views: np.ndarray | None = None) -> np.ndarray:
        """Noisy uint16 camera frames ``[V, Yc, Xc]``."""
        return camera_noise(self.expected(dn, views), self.camera, rng)


def camera_noise(expected: np.ndarray, camera: CameraModel, rng: np.random.Generator) -> np.ndarray:
    """``offset + Poisson(gain·I) + N(0, read_noise²)``, clipped and quantised to uint16."""
    signal = rng.poisson(np.clip(camera.gain * expected, 0, None)).astype(np.float64)
    noisy = camera.offset + signal + rng.normal(0.0, camera.read_noise, size=expected.shape)
    return np.clip(np.rint(noisy), 0, full_scale(camera.bit_depth)).astype(np.uint16)
