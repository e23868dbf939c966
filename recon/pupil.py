"""Detection pupil of a real objective: hard aperture, apodisation and aberration phase.

The renderer's focal-plane spectrum (the Weyl expansion of the emitted spherical
wave, propagated to the focal plane; see :mod:`.physics`) is multiplied by the
pupil ``P(k⊥) = circ(|k⊥| ≤ k0·NA) · A(ρ) · S(ρ) · exp(i·φ(ρ, θ))`` with
``ρ = |k⊥|/(k0·NA)`` the normalised pupil radius and ``θ = atan2(ky, kx)``:

- ``A(ρ) = max(0, 1 + Σ_k a_k·ρ^(2k))`` (k = 1, 2, …), a radial polynomial apodisation
  (transmission falling toward the edge of a real objective's pupil). It is an amplitude
  transmission, so it is held at 0 where the polynomial would turn negative: a sign change
  there would be a π phase step, which no objective's coating makes;
- ``S(ρ) = (1 − (NA·ρ/n_medium)²)^(1/4) = sqrt(cos ϑ)`` optionally: the
  sine-condition (aplanatic) profile. An isotropic emitter's far field has the same
  amplitude in every direction ϑ; an aplanatic objective maps it to the pupil radius
  ``n·sin ϑ``, so the amplitude per unit pupil area is ``∝ 1/sqrt(cos ϑ)``
  (energy per solid angle conserved, Richards & Wolf 1959). The Weyl spectrum already
  carries ``1/k_z ∝ 1/cos ϑ``, so the factor to apply on top of it is ``sqrt(cos ϑ)``;
- ``φ = Σ_j c_j·Z_j(ρ, θ)`` (j = 2, 3, …; radians), Zernike polynomials in Noll's
  order and normalisation (Noll 1976, J. Opt. Soc. Am. 66, 207): RMS 1 over the
  unit disc, ``Z_j = sqrt(n+1)·R_n^0`` for m = 0 and ``sqrt(2(n+1))·R_n^|m|·cos(mθ)``
  (even j) or ``·sin(|m|θ)`` (odd j) otherwise.

All functions are pure torch and differentiable in the coefficient tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

#: Lowest Noll index with an aberration coefficient (1, piston, is a global phase).
FIRST_NOLL = 2


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order ``n`` and azimuthal frequency ``m`` of Noll index ``j`` (≥ 1).

    ``m > 0`` is the cosine term, ``m < 0`` the sine term (Noll 1976, table 1):
    1 → (0, 0) piston, 2 → (1, 1) tilt x, 3 → (1, −1) tilt y, 4 → (2, 0) defocus,
    11 → (4, 0) primary spherical, 22 → (6, 0) secondary spherical.

    Raises:
        ValueError: for ``j < 1``.
    """
    if not isinstance(j, int) or j < 1:
        raise ValueError(f"Noll index must be an integer ≥ 1, got {j!r}.")
    n = 0
    while j > (n + 1) * (n + 2) // 2:
        n += 1
    k = j - n * (n + 1) // 2 - 1
    m_abs = (n % 2) + 2 * ((k + ((n + 1) % 2)) // 2)
    return n, (m_abs if j % 2 == 0 or m_abs == 0 else -m_abs)


def radial_polynomial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    """Zernike radial polynomial ``R_n^|m|(ρ)`` (Born & Wolf §9.2)."""
    m = abs(m)
    out = torch.zeros_like(rho)
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * math.factorial(n - s) / (
            math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s)
        )
        out = out + c * rho ** (n - 2 * s)
    return out


def zernike(j: int, rho: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Noll-normalised Zernike polynomial ``Z_j(ρ, θ)`` (RMS 1 on the unit disc).

    Args:
        j: Noll index (≥ 1).
        rho, theta: broadcastable tensors of normalised radius and azimuth (rad).

    Returns:
        The polynomial, not masked outside ``ρ ≤ 1``.
    """
    n, m = noll_to_nm(j)
    radial = radial_polynomial(n, m, rho)
    if m == 0:
        return math.sqrt(n + 1) * radial
    angular = torch.cos(m * theta) if m > 0 else torch.sin(-m * theta)
    return math.sqrt(2 * (n + 1)) * radial * angular


#: Relative width of the pupil's rim over which the light beyond the NA
#: (:attr:`PupilParameters.source_beyond_na`) blends into the spectrum inside, where a
#: refinement starts: the last 3 % of the NA (BENCHMARKS.md, "Light beyond the NA").
SOURCE_RIM_WIDTH = 0.03


@dataclass(frozen=True)
class PupilParameters:
    """A pupil in a few numbers (what a calibration estimates and a pupil file stores).

    Attributes:
        zernike_rad: aberration phase coefficients (radians) of Noll 2, 3, 4, …
        apodisation: ``a_1, a_2, …`` of ``A(ρ) = max(0, 1 + Σ_k a_k·ρ^(2k))``.
        sine_condition: also apply the aplanatic ``sqrt(cos ϑ)`` profile.
        source_edge_na: ``(NA_in, NA_cut)`` of the source's angular spectrum, which
            falls as a raised cosine from 1 at ``k0·NA_in`` to 0 at ``k0·NA_cut``
            (:func:`nvplive.recon.physics.source_band`); ``()`` = the renderer's default
            (:func:`nvplive.recon.physics.source_band_limits`). Not part of the pupil
            function: the renderer applies it to the emitted field. It is stored with the
            pupil because a calibration finds it from the same images (docs/physics.md,
            "Source spectrum").
        source_beyond_na: amplitude of the source's angular spectrum beyond the detection
            NA (``|k⊥| > k0·NA``) relative to a point source's, in [0, 1]: 1 (the default) is
            the full spectrum, 0 the spectrum cut at the NA. Only the specimen's scattering
            shows that light, so the reconstruction fits it with the volume
            (docs/reconstruction.md, "Light beyond the NA"); like ``source_edge_na`` it is
            the renderer's, stored with the pupil.
        source_rim_width: the width of the pupil's outer rim, relative to the NA, over which
            the light beyond the NA blends into the spectrum inside (in (0, 0.5]); fitted
            with ``source_beyond_na``.
    """

    zernike_rad: tuple[float, ...] = ()
    apodisation: tuple[float, ...] = ()
    sine_condition: bool = False
    source_edge_na: tuple[float, ...] = ()
    source_beyond_na: float = 1.0
    source_rim_width: float = SOURCE_RIM_WIDTH

    def __post_init__(self) -> None:
        object.__setattr__(self, "zernike_rad", tuple(float(c) for c in self.zernike_rad))
        object.__setattr__(self, "apodisation", tuple(float(a) for a in self.apodisation))
        object.__setattr__(self, "sine_condition", bool(self.sine_condition))
        object.__setattr__(self, "source_edge_na", tuple(float(a) for a in self.source_edge_na))
        object.__setattr__(self, "source_beyond_na", float(self.source_beyond_na))
        if not 0.0 <= self.source_beyond_na <= 1.0:
            raise ValueError(f"Pupil: source_beyond_na must be in [0, 1], got {self.source_beyond_na!r}.")
        object.__setattr__(self, "source_rim_width", float(self.source_rim_width))
        if not 0.0 < self.source_rim_width <= 0.5:
            raise ValueError(f"Pupil: source_rim_width must be in (0, 0.5], got {self.source_rim_width!r}.")
        for name in ("zernike_rad", "apodisation", "source_edge_na"):
            if not all(math.isfinite(v) for v in getattr(self, name)):
                raise ValueError(f"Pupil: {name} must be finite numbers, got {getattr(self, name)!r}.")
        edge = self.source_edge_na
        if edge and not (len(edge) == 2 and 0.0 <= edge[0] < edge[1]):
            raise ValueError(f"Pupil: source_edge_na must be () or (NA_in, NA_cut) with 0 ≤ NA_in < NA_cut, got {edge!r}.")

    @property
    def aberration_rms_rad(self) -> float:
        """RMS wavefront error over the pupil (rad): the norm of the Zernike coefficients."""
        return math.sqrt(sum(c * c for c in self.zernike_rad))

    def wavefront_error_rad(self, truth: PupilParameters, noll: Sequence[int]) -> float:
        """The RMS wavefront error over the pupil (rad) of this pupil against ``truth`` on the
        Noll indices ``noll``: the norm of the coefficients' difference (Noll's normalisation
        makes each term's RMS over the unit disc 1, so the norm is the RMS of the phase
        difference they span). A term a pupil does not carry counts as 0.
        """

        def coefficient(p: PupilParameters, j: int) -> float:
            k = j - FIRST_NOLL
            return p.zernike_rad[k] if 0 <= k < len(p.zernike_rad) else 0.0

        return math.sqrt(sum((coefficient(self, j) - coefficient(truth, j)) ** 2 for j in noll))

    @property
    def summary(self) -> str:
        """One line for people: the RMS aberration (all Zernike terms) and the apodisation
        coefficients, named as in the amplitude ``1 + a₁ρ² + a₂ρ⁴ …``; "the hard aperture" for
        a pupil without either."""
        if not any(self.zernike_rad) and not any(self.apodisation) and not self.sine_condition:
            return "the hard aperture (no aberration, no apodisation)"
        digits = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
        apodisation = ", ".join(f"a{str(i).translate(digits)} {a:+.3f}" for i, a in enumerate(self.apodisation, 1)) or "none"
        return f"aberration {self.aberration_rms_rad:.3f} rad RMS, apodisation {apodisation}"

    @property
    def source_spectrum(self) -> tuple[tuple[float, ...], float, float]:
        """``(source_edge_na, source_beyond_na, source_rim_width)``: the renderer's source
        spectrum this pupil carries, the arguments of :func:`nvplive.recon.physics.with_source_edge`
        after the model."""
        return self.source_edge_na, self.source_beyond_na, self.source_rim_width

    def with_default_source_spectrum(self) -> PupilParameters:
        """This pupil carrying the renderer's default source spectrum (the fields' defaults:
        no edge of its own, a point source's whole spectrum beyond the NA)."""
        default = PupilParameters()
        return replace(self, source_edge_na=default.source_edge_na, source_beyond_na=default.source_beyond_na,
                       source_rim_width=default.source_rim_width)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict (``pupil.json``); :meth:`from_dict` reads it back.

        ``source_edge_na``, ``source_beyond_na`` and ``source_rim_width`` are written only when
        set (not their defaults), so that a pupil without them is the same document as before
        they existed.
        """
        data: dict[str, Any] = {
            "zernike_rad": list(self.zernike_rad),
            "first_noll_index": FIRST_NOLL,
            "apodisation": list(self.apodisation),
            "sine_condition": self.sine_condition,
        }
        if self.source_edge_na:
            data["source_edge_na"] = list(self.source_edge_na)
        if self.source_beyond_na != 1.0:
            data["source_beyond_na"] = self.source_beyond_na
        if self.source_rim_width != SOURCE_RIM_WIDTH:
            data["source_rim_width"] = self.source_rim_width
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PupilParameters:
        """Inverse of :meth:`to_dict` (``first_noll_index`` must be 2 when present)."""
        first = int(data.get("first_noll_index", FIRST_NOLL))
        if first != FIRST_NOLL:
            raise ValueError(f"Pupil: Zernike coefficients must start at Noll index {FIRST_NOLL}, got {first}.")
        return cls(
            zernike_rad=tuple(data.get("zernike_rad", ())),
            apodisation=tuple(data.get("apodisation", ())),
            sine_condition=bool(data.get("sine_condition", False)),
            source_edge_na=tuple(data.get("source_edge_na", ())),
            source_beyond_na=float(data.get("source_beyond_na", 1.0)),
            source_rim_width=float(data.get("source_rim_width", SOURCE_RIM_WIDTH)),
        )

    def tensors(self, *, device=None, dtype=torch.float64) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(zernike_rad, apodisation)`` as 1D tensors, ``None`` where empty."""
        z = torch.tensor(self.zernike_rad, device=device, dtype=dtype) if self.zernike_rad else None
        a = torch.tensor(self.apodisation, device=device, dtype=dtype) if self.apodisation else None
        return z, a


def aperture(ky: torch.Tensor, kx: torch.Tensor, k0: float, na: float, subsamples: int = 16) -> torch.Tensor:
    """Hard aperture ``circ(|k⊥| ≤ k0·NA)`` on a frequency grid, area-weighted at the edge.

    Each sample holds the fraction of its frequency cell (``Δky × Δkx`` around it) that
    lies inside the circle, estimated on ``subsamples²`` points: the sum over the grid
    then integrates the disc's area exactly to O(Δk²), which a 0/1 staircase does only
    to O(Δk) — the image of a point through a hard aperture, a slowly decaying Airy-like
    pattern, converges about three times faster in the padding (measured in
    tests/recon/test_physics.py). Evaluate it on float64 grids so that float32 and
    float64 models agree.

    Returns:
        ``[Y, X]`` real tensor in ``[0, 1]`` (dtype of the grid).
    """
    k_cut2 = (k0 * na) ** 2
    dky = float(ky.flatten()[1] - ky.flatten()[0]) if ky.numel() > 1 else 0.0
    dkx = float(kx.flatten()[1] - kx.flatten()[0]) if kx.numel() > 1 else 0.0
    ky_full, kx_full = torch.broadcast_tensors(ky, kx)
    k_perp = torch.sqrt(ky_full**2 + kx_full**2)
    half_diagonal = 0.5 * math.hypot(dky, dkx)
    coverage = (k_perp <= math.sqrt(k_cut2)).to(kx.dtype)
    edge = (k_perp - math.sqrt(k_cut2)).abs() <= half_diagonal  # cells the circle crosses
    offsets = torch.arange(subsamples, dtype=kx.dtype, device=kx.device)
    offsets = (offsets + 0.5) / subsamples - 0.5
    sub_y = ky_full[edge][:, None, None] + offsets[None, :, None] * dky
    sub_x = kx_full[edge][:, None, None] + offsets[None, None, :] * dkx
    coverage[edge] = ((sub_y**2 + sub_x**2) <= k_cut2).to(kx.dtype).mean(dim=(1, 2))
    return coverage


@dataclass(frozen=True)
class PupilBasis:
    """The parts of a pupil on a fixed frequency grid that do not depend on its
    coefficients (:func:`pupil_basis`), so that a fit re-evaluating the pupil builds them once.

    Attributes:
        inside: ``[Y, X]`` hard aperture ``circ`` (real, area-weighted at the edge when given so).
        powers: ``[Y, X, K]`` apodisation powers ``ρ^(2k)``, k = 1 … K.
        sine_profile: ``[Y, X]`` aplanatic profile ``S(ρ)``, or None without the sine condition.
        zernike: ``[Y, X, J]`` Zernike polynomials ``Z_j(ρ, θ)`` of Noll 2 … J+1 (ρ clamped to 1).
    """

    inside: torch.Tensor
    powers: torch.Tensor
    sine_profile: torch.Tensor | None
    zernike: torch.Tensor


def pupil_basis(
    ky: torch.Tensor,
    kx: torch.Tensor,
    k0: float,
    na: float,
    n_medium: float,
    zernike_terms: int = 0,
    apodisation_terms: int = 0,
    sine_condition: bool = False,
    *,
    hard_aperture: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> PupilBasis:
    """The coefficient-free parts of the pupil ``[Y, X]`` on the frequency grid ``ky [Y, 1]``,
    ``kx [1, X]`` (rad/µm): ``circ``, ``ρ^(2k)``, ``S(ρ)`` and ``Z_j`` (module docstring).

    Args:
        k0: vacuum wavenumber 2π/λ (rad/µm); na: detection NA; n_medium: medium index.
        zernike_terms, apodisation_terms: how many coefficients ``J`` and ``K`` the basis serves.
        sine_condition: include the aplanatic profile ``(1 − (NA·ρ/n)²)^(1/4)``.
        hard_aperture: precomputed ``circ`` mask (default: :func:`aperture` on this grid).
        dtype: real dtype of the basis (default: the grid's; wider of the two when given).
    """
    mask = aperture(ky, kx, k0, na) if hard_aperture is None else hard_aperture
    real_dtype = kx.dtype if dtype is None else torch.promote_types(kx.dtype, dtype)
    k_cut = k0 * na
    rho = (torch.sqrt(kx**2 + ky**2) / k_cut).to(real_dtype)
    rho_in = torch.clamp(rho, max=1.0)  # polynomials are bounded on the disc; outside is masked
    empty = rho_in.new_zeros(*rho_in.shape, 0)
    powers = torch.stack([rho_in ** (2 * (k + 1)) for k in range(apodisation_terms)], dim=-1) if apodisation_terms else empty
    sine = (1.0 - (na * rho_in / n_medium) ** 2) ** 0.25 if sine_condition else None
    basis = empty
    if zernike_terms:
        theta = torch.atan2(ky, kx).to(real_dtype).expand_as(rho)
        basis = torch.stack([zernike(j, rho_in, theta) for j in range(FIRST_NOLL, FIRST_NOLL + zernike_terms)], dim=-1)
    return PupilBasis(mask.to(real_dtype), powers, sine, basis)


def pupil_from_basis(
    basis: PupilBasis, zernike_rad: torch.Tensor | None = None, apodisation: torch.Tensor | None = None
) -> torch.Tensor:
    """The complex pupil ``circ · A · S · exp(i·Σ c_j Z_j)`` ``[Y, X]`` from its basis and coefficients.

    Args:
        zernike_rad: ``[J]`` coefficients (rad) of Noll 2 … J+1, or None.
        apodisation: ``[K]`` coefficients ``a_1 … a_K`` of ``A(ρ) = max(0, 1 + Σ a_k ρ^(2k))``, or None.

    Returns:
        Complex tensor in the basis's complex dtype; differentiable in the coefficients
        (not where ``A`` is held at 0).

    Raises:
        ValueError: when the coefficients outnumber the basis's terms.
    """
    real_dtype = basis.inside.dtype
    amplitude = basis.inside
    if apodisation is not None and apodisation.numel():
        if apodisation.numel() != basis.powers.shape[-1]:
            raise ValueError(f"{apodisation.numel()} apodisation coefficients for a basis of {basis.powers.shape[-1]}.")
        transmission = 1.0 + basis.powers @ apodisation.to(device=amplitude.device, dtype=real_dtype)
        amplitude = amplitude * transmission.clamp_min(0.0)
    if basis.sine_profile is not None:
        amplitude = amplitude * basis.sine_profile
    if zernike_rad is None or not zernike_rad.numel():
        return torch.complex(amplitude, torch.zeros_like(amplitude))
    if zernike_rad.numel() != basis.zernike.shape[-1]:
        raise ValueError(f"{zernike_rad.numel()} Zernike coefficients for a basis of {basis.zernike.shape[-1]}.")
    return torch.polar(amplitude, basis.zernike @ zernike_rad.to(device=amplitude.device, dtype=real_dtype))


def pupil_function(
    ky: torch.Tensor,
    kx: torch.Tensor,
    k0: float,
    na: float,
    n_medium: float,
    zernike_rad: torch.Tensor | None = None,
    apodisation: torch.Tensor | None = None,
    sine_condition: bool = False,
    *,
    hard_aperture: torch.Tensor | None = None,
) -> torch.Tensor:
    """Complex pupil ``[Y, X]`` on the frequency grid ``ky [Y, 1]``, ``kx [1, X]`` (rad/µm):
    :func:`pupil_from_basis` of :func:`pupil_basis`.

    Args:
        k0: vacuum wavenumber 2π/λ (rad/µm); na: detection NA; n_medium: medium index.
        zernike_rad: ``[J]`` coefficients (rad) of Noll 2 … J+1, or None.
        apodisation: ``[K]`` coefficients ``a_1 … a_K`` of ``A(ρ) = 1 + Σ a_k ρ^(2k)``, or None.
        sine_condition: multiply by the aplanatic profile ``(1 − (NA·ρ/n)²)^(1/4)``.
        hard_aperture: precomputed ``circ`` mask (default: :func:`aperture` on this grid).

    Returns:
        ``circ · A · S · exp(i·Σ c_j Z_j)`` in the complex dtype of the grid (or of the
        coefficients, when they are wider); differentiable in the coefficients.
    """
    basis = pupil_basis(
        ky, kx, k0, na, n_medium, 0 if zernike_rad is None else zernike_rad.numel(),
        0 if apodisation is None else apodisation.numel(), sine_condition,
        hard_aperture=hard_aperture, dtype=coefficient_dtype(kx.dtype, zernike_rad, apodisation),
    )
    return pupil_from_basis(basis, zernike_rad, apodisation)


def coefficient_dtype(grid_dtype: torch.dtype, *coefficients: torch.Tensor | None) -> torch.dtype:
    """The real dtype a pupil is computed in: the grid's, or the coefficients' when wider."""
    real_dtype = grid_dtype
    for c in coefficients:
        if c is not None:
            real_dtype = torch.promote_types(real_dtype, c.dtype)
    return real_dtype


def pupil_map(
    pupil: PupilParameters, na: float, n_medium: float, size: int = 65
) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and phase (rad) of ``pupil`` on a ``size × size`` grid spanning the
    aperture (``k⊥`` from −k0·NA to k0·NA on both axes, row 0 at −ky), NaN outside it:
    what the app's Pupil dock draws.

    The phase is the aberration ``Σ c_j Z_j`` (the pupil's argument, not wrapped);
    the amplitude is ``A(ρ)·S(ρ)`` without the edge cells' area weighting.
    """
    axis = torch.linspace(-1.0, 1.0, int(size), dtype=torch.float64)
    ky, kx = axis[:, None], axis[None, :]
    rho = torch.sqrt(ky**2 + kx**2)
    inside = (rho <= 1.0).to(torch.float64)
    z, a = pupil.tensors()
    field = pupil_function(ky, kx, 1.0, 1.0, n_medium / na, zernike_rad=None, apodisation=a,
                           sine_condition=pupil.sine_condition, hard_aperture=inside)
    amplitude = field.real.numpy()
    phase = np.zeros_like(amplitude)
    if z is not None:
        theta = torch.atan2(ky, kx).expand_as(rho)
        basis = torch.stack([zernike(j, rho.clamp(max=1.0), theta) for j in range(FIRST_NOLL, FIRST_NOLL + z.numel())], -1)
        phase = (basis @ z).numpy()
    outside = inside.numpy() == 0
    amplitude[outside] = np.nan
    phase[outside] = np.nan
    return amplitude, phase
