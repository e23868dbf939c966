"""Source finding, defective pixels and self-calibration of the sources.

Source finding (:func:`initial_sources`): the lateral position of each view's source
comes from a 2D Gaussian fit (the defocused image of a bead is centred on it); the
axial position from the nominal geometry. A view that shows light but no compact spot
(a defocused disc larger than the field of view) keeps its nominal lateral position and
is registered against the model image (:func:`refine_sources`, :func:`calibrate_pupil`).
Only a frame that shows no light (dark or empty) is refused.

Defective pixels (hot, dead, saturated) are found with robust statistics
(:func:`defective_pixels`, median and MAD) and get zero weight in every fit and in the
reconstruction's image loss. Brightness ``b_i`` and background ``c_i`` come from a
linear least-squares fit of the unperturbed model image to the measurement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage, special
from scipy.optimize import least_squares
from torch.nn import functional as F

from nvplive.errors import NoBeadError, ReconstructionError

from .optics import Optics, VolumeGeometry, full_scale
from .physics import (
    SOURCE_EDGE_WIDTH,
    ForwardModel,
    camera_intensity,
    cone_tan,
    homogeneous_spectrum,
    pupil_basis_on_grid,
    with_source_edge,
)
from .progress import BEAD_CROP_PX, MAX_BEADS, STACK_ITERATIONS, CalibrationCallback, CalibrationProgress, report, substages
from .pupil import FIRST_NOLL, SOURCE_RIM_WIDTH, PupilBasis, PupilParameters, pupil_from_basis, zernike
from .simulate import band_renderers

#: Robust signal-to-noise ratio beyond which a pixel's step from its neighbourhood is an outlier.
OUTLIER_SIGMAS = 10.0
#: A view is dark when its light level is below this fraction of the brightest view's.
DARK_FRACTION = 0.05
#: A Gaussian fit centred within this many camera pixels of the field's edge is not a bead's
#: image but the edge of something larger (a disc or a specimen's fringe running out of the
#: field): on the thick realistic mismatch row such a fit put the centre bead 3.2 µm off, in
#: the field's corner, and the reconstruction fell 7.6 dB below the all-zero volume.
BORDER_PIXELS = 3
#: MAD → standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation estimated from the median absolute deviation (normal noise)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return float(_MAD_TO_SIGMA * np.median(np.abs(v - np.median(v))))


def sharpest_peak_ratio(wavelength_um: float, na: float, pixel_um: float, *, oversample: int = 8) -> float:
    """Peak over brightest-neighbour ratio of the sharpest image the optics can form.

    The in-focus Airy pattern ``(2·J1(v)/v)²``, ``v = 2π·NA·r/λ``, integrated over square
    camera pixels of ``pixel_um`` and centred on one: no image of a real object has a pixel
    standing higher above all eight of its neighbours (Born & Wolf §8.5.2).
    """
    step = pixel_um / oversample
    offsets = (np.arange(3 * oversample) - 1.5 * oversample + 0.5) * step
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    v = 2.0 * math.pi * na * np.hypot(yy, xx) / wavelength_um
    airy = np.where(v > 1e-9, (2.0 * special.j1(np.maximum(v, 1e-9)) / np.maximum(v, 1e-9)) ** 2, 1.0)
    pixels = airy.reshape(3, oversample, 3, oversample).sum(axis=(1, 3))
    return float(pixels[1, 1] / np.max(np.delete(pixels.ravel(), 4)))


def defective_pixels(
    frames: np.ndarray,
    *,
    peak_ratio: float,
    saturation: float | None = None,
    sigmas: float = OUTLIER_SIGMAS,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean map ``[N, Y, X]`` of pixels that carry no image: hot, dead or saturated.

    A pixel is *hot* when it stands more than ``sigmas`` robust standard deviations
    above the median of its 3×3 neighbourhood **and** more than twice
    ``peak_ratio`` (:func:`sharpest_peak_ratio`) times higher above the neighbourhood's
    floor than its brightest neighbour — brighter than any optical image can make a
    single pixel. It is *dead* when it lies that far below its darkest neighbour and
    reads the frame's dark level (within ``sigmas`` robust standard deviations).
    *Saturated* pixels are at or above ``saturation``.
    With three frames or more (views, timepoints) a pixel is flagged in all of them (a
    hot-pixel map) when it is flagged in at least half, or when it stands above its
    brightest neighbour by more than ``sigmas / 2`` robust standard deviations in the
    median frame (a mildly hot pixel, a local maximum in every view whatever the
    image); ``known``
    ``[Y, X]`` adds a map estimated earlier.
    The noise is the median absolute deviation of each frame from its 3×3 median.

    Args:
        frames: ``[N, Y, X]`` or ``[Y, X]`` raw or offset-corrected frames.
    """
    arr = np.asarray(frames, dtype=np.float64)
    single = arr.ndim == 2
    stack = arr[None] if single else arr
    footprint = np.ones((1, 3, 3), bool)
    ring = footprint.copy()
    ring[0, 1, 1] = False
    median = ndimage.median_filter(stack, footprint=footprint, mode="nearest")
    high = ndimage.maximum_filter(stack, footprint=ring, mode="nearest")
    low = ndimage.minimum_filter(stack, footprint=ring, mode="nearest")
    step = stack - median
    sigma = np.array([max(robust_sigma(s), 1e-12) for s in step])[:, None, None]
    ratio = 2.0 * peak_ratio
    hot = (step > sigmas * sigma) & (stack - low > ratio * np.maximum(high - low, 0.0) + sigmas * sigma)
    dark_level = median.reshape(len(stack), -1).min(axis=1)[:, None, None]
    # A coherent image can have a dark null between bright neighbours (a phase vortex);
    # a dead pixel also reads the frame's dark level, within the noise.
    dead = (low - stack > sigmas * sigma) & (stack - dark_level < np.minimum((low - dark_level) / ratio, sigmas * sigma))
    bad = hot | dead
    if saturation is not None:
        bad |= stack >= saturation
    if len(stack) >= 3:
        persistent = (bad.mean(axis=0) >= 0.5) | (np.median((stack - high) / sigma, axis=0) > 0.5 * sigmas)
        bad |= persistent[None]
    if known is not None:
        bad |= np.asarray(known, bool)[None]
    return bad[0] if single else bad


@dataclass(frozen=True)
class GaussianFit:
    """Result of fitting ``a·exp(−r²/2σ²) + c`` to one view (lengths in µm)."""

    x_um: float
    y_um: float
    sigma_um: float
    amplitude: float
    offset: float
    snr: float


def fit_gaussian(image: np.ndarray, y: np.ndarray, x: np.ndarray, valid: np.ndarray | None = None) -> GaussianFit:
    """Fit an isotropic 2D Gaussian to ``image [Y, X]`` sampled at pixel centres ``y``, ``x`` (µm).

    Pixels where ``valid`` (``[Y, X]`` bool) is False are left out. The signal-to-noise
    ratio is the amplitude over the standard deviation of the residual.
    """
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    ok = np.ones_like(img, bool) if valid is None else np.asarray(valid, bool)
    if not ok.any():
        return GaussianFit(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    pixel_um = float(abs(x[1] - x[0])) if nx > 1 else 1.0
    base = np.percentile(img[ok], 5)
    w = np.where(ok, np.clip(img - base, 0, None), 0.0)
    total = w.sum()
    if not np.isfinite(total) or total <= 0:
        return GaussianFit(0.0, 0.0, 0.0, 0.0, float(base), 0.0)
    x0 = float((w.sum(0) * x).sum() / total)
    y0 = float((w.sum(1) * y).sum() / total)
    r2 = (x[None, :] - x0) ** 2 + (y[:, None] - y0) ** 2
    s0 = float(np.sqrt(max((w * r2).sum() / total / 2, pixel_um**2)))
    a0 = float(img[ok].max() - base)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    xs, ys, values = xx[ok], yy[ok], img[ok]

    def residual(p: np.ndarray) -> np.ndarray:
        a, cx, cy, s, c = p
        return a * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s)) + c - values

    extent = 0.5 * max(nx, ny) * pixel_um
    fit = least_squares(
        residual,
        [a0, x0, y0, s0, base],
        bounds=([0, -2 * extent, -2 * extent, 0.5 * pixel_um, -np.inf], [np.inf, 2 * extent, 2 * extent, 4 * extent, np.inf]),
        max_nfev=200,
    )
    a, cx, cy, s, c = fit.x
    noise = float(np.std(fit.fun)) or 1e-12
    return GaussianFit(float(cx), float(cy), float(s), float(a), float(c), float(a / noise))


def _centre_range(centres: np.ndarray, border_pixels: int) -> tuple[float, float]:
    """Where a trusted spot's centre may lie along one axis of pixel ``centres`` (µm): the
    field (half a pixel beyond the outer centres) less ``border_pixels`` at each edge."""
    step = abs(float(centres[1] - centres[0])) if len(centres) > 1 else 0.0
    low, high = float(np.min(centres)) - 0.5 * step, float(np.max(centres)) + 0.5 * step
    return low + border_pixels * step, high - border_pixels * step


def _localised(fit: GaussianFit, min_snr: float, half_extent_um: float, y_range: tuple[float, float],
               x_range: tuple[float, float]) -> bool:
    """A compact spot narrower than the field, its centre within ``y_range`` and ``x_range``
    (:func:`_centre_range`): the Gaussian fit can be trusted for the position."""
    inside = y_range[0] <= fit.y_um <= y_range[1] and x_range[0] <= fit.x_um <= x_range[1]
    return fit.snr >= min_snr and fit.amplitude > 0 and inside and fit.sigma_um < half_extent_um


def light_levels(images: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-view light level (median over valid pixels) and pixel noise (MAD of the
    pixel-to-pixel steps / √2) of ``images [V, Y, X]`` in photo-electrons above the offset."""
    levels, noise = [], []
    for v, img in enumerate(np.asarray(images, dtype=np.float64)):
        ok = np.ones_like(img, bool) if valid is None else np.asarray(valid[v], bool)
        levels.append(float(np.median(img[ok])) if ok.any() else 0.0)
        steps = np.diff(img, axis=1)[ok[:, 1:] & ok[:, :-1]]
        noise.append(robust_sigma(steps) / math.sqrt(2.0) if steps.size else 0.0)
    return np.array(levels), np.array(noise)


def initial_sources(
    images: np.ndarray,
    nominal_um_xyz: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    *,
    min_snr: float = 3.0,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Source positions ``[V, 3]`` (µm): lateral from Gaussian fits, axial from the nominal geometry.

    A Gaussian fit is trusted when its signal-to-noise ratio is at least ``min_snr`` and
    it finds a spot narrower than the field with its centre inside, at least
    :data:`BORDER_PIXELS` pixels from each edge of the field. A view where it does
    not (a defocused disc larger than the field of view, an aberrated image) keeps its
    nominal lateral position when the frame shows light: its light level is at least
    ``DARK_FRACTION`` of the brightest view's and ``min_snr`` times its pixel noise (the
    smaller of the pixel-to-pixel scatter and the shot noise of the level), and the frame
    is not constant.

    Args:
        images: ``[V, Y, X]`` frames in photo-electrons above the camera offset.
        valid: ``[V, Y, X]`` bool, False at defective pixels.

    Raises:
        ReconstructionError: when a view shows no source (a failed fit and a dark or empty frame).
    """
    out = np.array(nominal_um_xyz, dtype=np.float64).reshape(-1, 3).copy()
    images = np.asarray(images, dtype=np.float64)
    half = 0.5 * max(len(y) * abs(y[1] - y[0]) if len(y) > 1 else 0.0, len(x) * abs(x[1] - x[0]) if len(x) > 1 else 0.0)
    y_range, x_range = _centre_range(np.asarray(y), BORDER_PIXELS), _centre_range(np.asarray(x), BORDER_PIXELS)
    levels, noise = light_levels(images, valid)
    brightest = float(levels.max()) if len(levels) else 0.0
    for v, image in enumerate(images):
        ok = None if valid is None else valid[v]
        fit = fit_gaussian(image, y, x, ok)
        if _localised(fit, min_snr, half, y_range, x_range):
            out[v, 0], out[v, 1] = fit.x_um, fit.y_um
            continue
        # The pixel-to-pixel noise estimate also takes up fine fringes (a strongly aberrated
        # image); pixel noise in photo-electrons is at least the shot noise, so the smaller
        # of the two judges whether the level stands out.
        pixel_noise = min(noise[v], math.sqrt(max(levels[v], 0.0)))
        shows_light = (
            levels[v] >= DARK_FRACTION * brightest
            and levels[v] > min_snr * pixel_noise
            and np.ptp(image if ok is None else image[ok]) > 1e-9 * max(abs(levels[v]), 1.0)
        )
        if not shows_light:
            why = (
                f"fit signal-to-noise {fit.snr:.1f} < {min_snr}" if fit.snr < min_snr
                else f"light level {levels[v]:.1f} e⁻, pixel noise {pixel_noise:.1f} e⁻, brightest view {brightest:.1f} e⁻"
            )
            raise ReconstructionError(
                f"View {v}: no fluorescent source is visible ({why}); check the source selection and exposure."
            )
    return out


def fit_brightness_background(
    model_images: torch.Tensor, measured: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view (weighted) least squares ``measured ≈ b·model + c``; returns ``(b [V], c [V])`` with b > 0.

    ``weight`` (``[V, Y, X]``, ≥ 0) weights each pixel (zero at defective pixels).
    """
    m = model_images.reshape(model_images.shape[0], -1)
    y = measured.reshape(measured.shape[0], -1)
    w = torch.ones_like(y) if weight is None else weight.reshape(y.shape).to(y.dtype)
    total = w.sum(1, keepdim=True).clamp_min(1e-20)
    m_mean, y_mean = (w * m).sum(1, keepdim=True) / total, (w * y).sum(1, keepdim=True) / total
    cov = (w * (m - m_mean) * (y - y_mean)).sum(1) / total[:, 0]
    var = ((w * (m - m_mean) ** 2).sum(1) / total[:, 0]).clamp_min(1e-20)
    b = (cov / var).clamp_min(1e-6 * (y_mean[:, 0].abs() / m_mean[:, 0].abs().clamp_min(1e-20)))
    c = y_mean[:, 0] - b * m_mean[:, 0]
    return b, c


def refine_sources(
    model: ForwardModel,
    measured: torch.Tensor,
    sources_um_xyz: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    pupil: torch.Tensor | None = None,
    iterations: int = 200,
    lr_um: float = 0.02,
    tolerance_um: float = 0.005,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sub-pixel registration of each view's source against the unperturbed model image.

    Positions (lateral and axial), brightness and background are fitted (least squares on
    the normalised images, defective pixels — ``valid [V, Y, X]`` zero — left out) with the
    homogeneous renderer through ``pupil`` (complex ``[Yp, Xp]``, None = hard aperture).
    The specimen's weak modulation barely moves this optimum, while the disk edge of a
    defocused bead pins the lateral position to a small fraction of a pixel and the disc's
    size and fringes its depth. A user states the beads' depths from the focus drive, off
    by a few tenths of a µm; kept as stated, such errors cost the standard mismatch rows up to
    6.5 dB, 4.9 on the matched instrument (BENCHMARKS.md, "Bead depths in the registration").

    The fit runs at most ``iterations`` Adam steps (``lr_um`` per step for the positions)
    and stops early once no coordinate moved more than ``tolerance_um`` over the last ten steps.

    Returns:
        ``(sources [V, 3], brightness [V], background [V])``.
    """
    weight = torch.ones_like(measured) if valid is None else valid.to(measured.dtype)
    count = weight.sum(dim=(-2, -1)).clamp_min(1.0)
    scale = ((measured * weight).sum(dim=(-2, -1)) / count).clamp_min(1e-12)
    target = measured / scale[:, None, None]
    shift = torch.zeros_like(sources_um_xyz, requires_grad=True)
    with torch.no_grad():
        b0, c0 = fit_brightness_background(
            camera_intensity(model, homogeneous_spectrum(model, sources_um_xyz), pupil=pupil), measured, weight
        )
    log_b = torch.zeros_like(b0, requires_grad=True)
    c = (c0 / scale).clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [shift], "lr": lr_um}, {"params": [log_b, c], "lr": 0.01}])
    checkpoint = shift.detach().clone()
    for step in range(1, iterations + 1):
        opt.zero_grad(set_to_none=True)
        image = camera_intensity(model, homogeneous_spectrum(model, sources_um_xyz + shift), pupil=pupil)
        predicted = image * (b0 * torch.exp(log_b) / scale)[:, None, None] + c[:, None, None]
        loss = (weight * (predicted - target) ** 2).sum() / count.sum()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            moved = float((shift.detach() - checkpoint).abs().max())
            if moved < tolerance_um:
                break
            checkpoint = shift.detach().clone()
    with torch.no_grad():
        return (sources_um_xyz + shift).detach(), (b0 * torch.exp(log_b)).detach(), (c * scale).detach()


# -- pupil self-calibration ------------------------------------------------------------

#: Zernike terms (Noll indices) a calibration fits by default: astigmatism to secondary
#: spherical. Piston (1) is a global phase nothing can see; tip/tilt (2, 3) shift every
#: image alike, which the fitted lateral source positions already do; defocus (4) is
#: (up to the difference between the paraxial ρ² and the exact axial phase) a common
#: axial shift, which the fitted source depths already do. Fitting them would leave the
#: optimum undetermined along those directions, so they are held at zero and the
#: positions carry them.
DEFAULT_NOLL: tuple[int, ...] = tuple(range(5, 23))
#: Radial apodisation terms ``a_1 ρ² + a_2 ρ⁴`` a calibration fits by default.
DEFAULT_APODISATION_TERMS = 2
#: Side (pixels) of the tiles whose noise power :func:`camera_noise` fits.
NOISE_TILE = 8
#: Wavelengths sampling the emission band in a bead-stack calibration.
EMISSION_SAMPLES = 3
#: Weight of a free-form pupil's smoothness penalty, relative to the images' mean square.
FREE_FORM_SMOOTHNESS = 1e-3
#: Where a source-spectrum calibration tries the spectrum's cut, in units of the
#: detection NA (each with the renderer's relative edge width ``SOURCE_EDGE_WIDTH``),
#: before it fits the edge continuously: the default spectrum reaches beyond the pupil,
#: where the homogeneous image has no gradient, so the fit needs a start inside it.
SOURCE_EDGE_SCAN: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1)
#: A source edge found inside the pupil is kept only when it lowers the calibration's loss
#: (the squared residual) by more than this fraction against the same fit without it.
#: Inside the pupil the homogeneous image sees the product of the source spectrum and the
#: apodisation, so an edge that only trades places with the apodisation fits as well as the
#: default spectrum; an edge the frames do show (a spectrum cut at the NA) lowers it by 60 %
#: (BENCHMARKS.md, "Source spectrum calibration on by default").
SOURCE_EDGE_GAIN = 0.1


@dataclass(frozen=True)
class PupilCalibration:
    """What a pupil calibration found.

    Attributes:
        pupil: the calibrated pupil (Noll 2 … max of the fitted indices; the unfitted ones 0).
        sources_um_xyz: ``[V, 3]`` fitted source positions (µm).
        brightness, background: ``[V]`` per-view ``b_i`` and ``c_i`` (photo-electrons).
        residual: relative residual ``‖model − measured‖ / ‖measured − background‖`` over the
            valid pixels of every view, after the fit.
        residual_start: the same with the starting pupil, positions refined (what the fit improved on).
        noll: the fitted Noll indices.
        free_form: with a free-form fit, the log-amplitude and phase maps ``(A, Φ)``
            ``[S, S]`` (:func:`free_form_on_grid`) on top of the Zernike pupil it started
            from; ``pupil`` is then their projection (:func:`project_free_form`) and
            ``residual`` its residual, positions refitted.
        residual_free_form: the residual with the free-form pupil itself.
    """

    pupil: PupilParameters
    sources_um_xyz: np.ndarray
    brightness: np.ndarray
    background: np.ndarray
    residual: float
    residual_start: float
    noll: tuple[int, ...] = field(default=DEFAULT_NOLL)
    free_form: tuple[np.ndarray, np.ndarray] | None = None
    residual_free_form: float | None = None


#: L-BFGS stops when the loss (the images normalised by their mean, ×1e3) or every parameter
#: (µm, rad) changes by less than this in a step: ~1e-10 of the loss, far below the noise's
#: share of it; 1e-14 (each pass to machine precision) cost 30 s against 20 s on the batch
#: test's recording, with the same residual to 1e-9
STOP_CHANGE = 1e-9


#: L-BFGS iterations, at most, of a pass through the emission band (it starts from the centre
#: wavelength's optimum): each of its evaluations renders every wavelength of the band (3× the
#: centre pass's cost), and on a strong specimen at NA 1.1 it ran its whole 150-iteration budget
#: (167 evaluations, 11 of a cold start's 25 minutes; BENCHMARKS.md, "Independent recordings
#: through a high-NA water objective").
BAND_ITERATIONS = 40


#: A restarted view keeps its new position when its squared residual is lower by more than this
#: fraction (a bead pulled into a wrong minimum fits far worse; the same minimum found again
#: differs in the last digits and must not cost another pass of everything).
RESTART_GAIN = 0.01


def _relative_residual(predicted: torch.Tensor, measured: torch.Tensor, background: torch.Tensor, weight: torch.Tensor) -> float:
    num = (weight * (predicted - measured) ** 2).sum()
    den = (weight * (measured - background[:, None, None]) ** 2).sum().clamp_min(1e-30)
    return float(torch.sqrt(num / den))


def free_form_grid(model: ForwardModel) -> torch.Tensor:
    """``[1, Ye, Xe, 2]`` normalised pupil coordinates ``(k_x, k_y)/(k0·NA)`` of ``model``'s
    exit grid, where :func:`free_form_on_grid` samples the free-form maps."""
    k_cut = model.optics.k0 * model.optics.na
    return torch.stack(torch.broadcast_tensors(model.exit_kx / k_cut, model.exit_ky / k_cut), dim=-1)[None]


def free_form_on_grid(grid: torch.Tensor, log_amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """The free-form pupil factor ``exp(A + i·Φ)`` ``[Ye, Xe]`` on an exit grid (:func:`free_form_grid`).

    ``A`` and ``Φ`` are ``[S, S]`` maps over the normalised pupil ``(ρ_x, ρ_y) ∈ [−1, 1]²``
    (row 0 at ``ρ_y = −1``), sampled bilinearly at ``k⊥/(k0·NA)``: the same map serves
    renderers at every wavelength of the band.
    """
    maps = torch.stack([log_amplitude, phase])[None]
    sampled = F.grid_sample(maps, grid.to(log_amplitude.dtype), mode="bilinear", padding_mode="border", align_corners=True)[0]
    return torch.polar(torch.exp(sampled[0]), sampled[1])


def _disc(size: int, dtype: torch.dtype, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ρ, θ, inside)`` on a ``size × size`` grid over ``[−1, 1]²`` (align-corners sampling)."""
    axis = torch.linspace(-1.0, 1.0, size, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    rho = torch.sqrt(xx**2 + yy**2)
    return rho, torch.atan2(yy, xx), rho <= 1.0


def _smoothness(maps: Sequence[torch.Tensor], neighbours: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared finite-difference gradient of ``maps`` ``[S, S]`` between the ``neighbours``
    (masks ``[S−1, S]`` and ``[S, S−1]`` of pairs both inside the disc, along y and x)."""
    both_y, both_x = neighbours
    total = maps[0].new_zeros(())
    for m in maps:
        total = total + (torch.diff(m, dim=0)[both_y] ** 2).mean() + (torch.diff(m, dim=1)[both_x] ** 2).mean()
    return total


@dataclass(frozen=True)
class PreparedRenderer:
    """One renderer of the band, with what :func:`point_source_images` reuses at every evaluation.

    Attributes:
        model: the renderer; weight: its share of the band's image.
        pupil: the coefficient-free parts of the pupil on its exit grid (:func:`.physics.pupil_basis_on_grid`).
        free_form_grid: ``[1, Ye, Xe, 2]`` (:func:`free_form_grid`).
    """

    model: ForwardModel
    weight: float
    pupil: PupilBasis
    free_form_grid: torch.Tensor


def prepare_renderer(
    model: ForwardModel, weight: float, zernike_terms: int, apodisation_terms: int, sine_condition: bool, dtype: torch.dtype
) -> PreparedRenderer:
    """``model`` prepared for :func:`point_source_images` with pupils of ``zernike_terms`` and
    ``apodisation_terms`` coefficients of real ``dtype`` (the pupil in the wider of it and the model's)."""
    basis = pupil_basis_on_grid(model, zernike_terms, apodisation_terms, sine_condition, dtype=dtype)
    return PreparedRenderer(model, weight, basis, free_form_grid(model))


def point_source_images(
    renderers: Sequence[PreparedRenderer],
    sources_um_xyz: torch.Tensor,
    zernike_rad: torch.Tensor | None,
    apodisation: torch.Tensor | None,
    *,
    source_edge_na: torch.Tensor | None = None,
    free_form: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The image model of a pupil calibration: camera images ``[V, Yc, Xc]`` of point sources
    through a homogeneous medium, in the renderer's units (``|E|²``, before each view's
    brightness and background).

    ``Σ_w a_w·|F⁻¹{Ê_w · P_w}|²`` over the band's renderers ``(m_w, a_w)`` (incoherent sum,
    partial coherence), ``Ê_w`` the focal-plane spectrum of each source
    (:func:`.physics.homogeneous_spectrum`), the pupil ``P_w`` from the coefficients
    (:func:`.pupil.pupil_from_basis`) times the free-form factor (:func:`free_form_on_grid`);
    each renderer's camera integrates its pixels and a bead's extent (``bead_diameter_um``
    of :meth:`.physics.ForwardModel.build`).

    Args:
        renderers: the band (:func:`prepare_renderer`), all of one camera grid.
        sources_um_xyz: ``[V, 3]`` source positions (µm).
        zernike_rad, apodisation: ``[J]`` and ``[K]`` coefficients as the renderers' bases, or None.
        source_edge_na: ``(NA_in, NA_cut)`` of the source spectrum's edge
            (:func:`.physics.with_source_edge`, clamped to what the grid carries by the caller), or None.
        free_form: log-amplitude and phase maps ``[S, S]``, or None.
    """
    images: list[torch.Tensor] = []
    for r in renderers:
        m = r.model if source_edge_na is None else with_source_edge(r.model, source_edge_na)
        pupil = pupil_from_basis(r.pupil, zernike_rad, apodisation)
        if free_form is not None:
            pupil = pupil * free_form_on_grid(r.free_form_grid, *free_form)
        images.append(r.weight * camera_intensity(m, homogeneous_spectrum(m, sources_um_xyz), pupil=pupil))
    return torch.stack(images).sum(dim=0)


def _check_free_form_samples(size: int, noll: Sequence[int], start_terms: int, apodisation_terms: int) -> None:
    """The samples of a ``size × size`` free-form map inside the pupil, checked against the
    unknowns of its projection (:func:`project_free_form`): Zernike ``Z_1 … Z_top`` and the
    apodisation's ``1 + apodisation_terms`` radial terms. An underdetermined least-squares fit
    has no unique answer (LAPACK's solution then varies from call to call).

    Raises:
        ValueError: ``size`` < 3, or fewer samples inside the pupil than unknowns.
    """
    if size < 3:
        raise ValueError(f"A free-form pupil needs at least 3 × 3 samples, got {size}.")
    top = max(max(noll, default=FIRST_NOLL), start_terms + FIRST_NOLL - 1)
    samples = int(_disc(size, torch.float64)[2].sum())
    needed = max(top, 1 + apodisation_terms)
    if samples < needed:
        raise ValueError(
            f"A free-form pupil of {size} × {size} samples has {samples} inside the pupil, fewer than the "
            f"{needed} terms it is projected onto (Zernike up to Noll {top}); use a larger map."
        )


def project_free_form(
    pupil: PupilParameters, log_amplitude: np.ndarray, phase: np.ndarray, *, noll: Sequence[int], apodisation_terms: int
) -> PupilParameters:
    """The Zernike + apodisation pupil closest to ``pupil × exp(A + i·Φ)`` (maps as in
    :func:`free_form_on_grid`): the total phase fitted by Zernike polynomials ``Z_1 … Z_max(noll)``
    (least squares over the disc, amplitude-weighted), of which ``noll`` are kept (piston,
    tip/tilt and defocus belong to the source positions); the amplitude by ``c·(1 + Σ a_k ρ^{2k})``
    (``c`` is a brightness the fit carries).

    Raises:
        ValueError: maps too coarse for the terms (:func:`_check_free_form_samples`).
    """
    size = int(np.asarray(phase).shape[0])
    _check_free_form_samples(size, noll, len(pupil.zernike_rad), apodisation_terms)
    rho, theta, inside = _disc(size, torch.float64)
    z, a = pupil.tensors()
    rho_in, theta_in = rho[inside], theta[inside]
    top = max(max(noll, default=FIRST_NOLL), len(pupil.zernike_rad) + FIRST_NOLL - 1)
    basis = torch.stack([zernike(j, rho_in, theta_in) for j in range(1, top + 1)], dim=-1)
    total_phase = torch.as_tensor(np.asarray(phase), dtype=torch.float64)[inside]
    if z is not None:
        total_phase = total_phase + basis[:, FIRST_NOLL - 1 : FIRST_NOLL - 1 + z.numel()] @ z
    amplitude = torch.exp(torch.as_tensor(np.asarray(log_amplitude), dtype=torch.float64)[inside])
    if a is not None:
        amplitude = amplitude * (1.0 + torch.stack([rho_in ** (2 * (k + 1)) for k in range(a.numel())], -1) @ a)
    w = amplitude.clamp_min(0.0)
    coefficients = torch.linalg.lstsq(basis * w[:, None], (total_phase * w)[:, None]).solution[:, 0]
    keep = torch.zeros(top - FIRST_NOLL + 1, dtype=torch.float64)
    for j in noll:
        keep[j - FIRST_NOLL] = coefficients[j - 1]
    apod: tuple[float, ...] = ()
    if apodisation_terms:
        radial = torch.stack([torch.ones_like(rho_in)] + [rho_in ** (2 * k) for k in range(1, apodisation_terms + 1)], -1)
        fit = torch.linalg.lstsq(radial, amplitude[:, None]).solution[:, 0]
        apod = tuple(float(v) for v in fit[1:] / fit[0])
    return replace(pupil, zernike_rad=tuple(float(v) for v in keep), apodisation=apod)


def calibrate_pupil(
    model: ForwardModel,
    measured: np.ndarray | torch.Tensor,
    sources_um_xyz: np.ndarray | torch.Tensor,
    *,
    valid: np.ndarray | torch.Tensor | None = None,
    noll: Sequence[int] = DEFAULT_NOLL,
    apodisation_terms: int = DEFAULT_APODISATION_TERMS,
    axial: str = "view",
    start: PupilParameters | None = None,
    band: Sequence[tuple[ForwardModel, float]] | None = None,
    iterations: int = 150,
    progress: CalibrationCallback | None = None,
    free_form: int = 0,
    free_form_smoothness: float = FREE_FORM_SMOOTHNESS,
    source_edge: bool = False,
    restart_positions: bool = True,
) -> PupilCalibration:
    """Fit the detection pupil, the source positions and each view's brightness/background
    to images of point sources through a homogeneous medium.

    The model of view ``v`` is ``b_v·|E_v|² + c_v`` with ``E_v`` the field of a point source
    at ``r_v`` (:func:`.physics.homogeneous_spectrum`) through the pupil
    ``A(ρ)·exp(i·Σ_j c_j Z_j)`` (:mod:`.pupil`; the image model is :func:`point_source_images`).
    ``b_v`` and ``c_v`` are solved in closed form at every evaluation (variable projection); the positions, the Zernike
    coefficients of ``noll`` and ``apodisation_terms`` apodisation coefficients are fitted
    by L-BFGS on the mean squared residual of the images normalised by their mean,
    defective pixels (``valid`` False) left out. A first pass fits the positions alone,
    the second everything, both at ``model``'s wavelength; with a ``band`` a third pass
    fits everything again through the band's renderers, from there. On FDT frames the specimen is weak: its images are dominated
    by this homogeneous part, so the pupil can be calibrated before the volume is known.

    With ``restart_positions`` (``axial="view"``, a pupil fitted) every view's position is
    then fitted again from its start through the fitted pupil, and a view whose image fits
    better from there keeps the new position; if one does, the pupil is fitted again with
    them. A view whose image the specimen distorts can pull its bead into a wrong minimum
    (1.6 µm deep, 0.6 µm sideways) while the pupil is still far from right, and hold the
    pupil off by 0.06 rad; restarted through the fitted pupil it finds the right one
    (BENCHMARKS.md, "Pupil calibration").

    Degeneracies: piston, tip/tilt and defocus are not fitted (see :data:`DEFAULT_NOLL`);
    the lateral positions absorb tip/tilt and the axial positions defocus.

    With ``source_edge`` the source's angular spectrum is calibrated too, as far as the
    images identify it (docs/physics.md, "Source spectrum"): after the positions, the
    spectrum cut at each of :data:`SOURCE_EDGE_SCAN` × NA is tried against the default;
    if one fits better (or ``start`` carries an edge), its edge ``(NA_in, NA_cut)`` is fitted
    with everything else in the second pass (``PupilParameters.source_edge_na``), and the second pass is run again
    without it from where it started; the band's pass then runs once, with the edge or
    without as the second pass chose. A homogeneous image shows the spectrum only inside
    the pupil: the edge is kept only when it ends up inside it (``NA_in < NA``) and lowers
    the loss by more than :data:`SOURCE_EDGE_GAIN` against the fit without it; otherwise
    the result is the calibration of the default spectrum. Beyond the NA the fitted
    raised cosine is an assumption (a monotone edge), not a measurement.

    Args:
        model: the renderer (float64 recommended for the line search).
        measured: ``[V, Y, X]`` images in photo-electrons above the camera offset.
        sources_um_xyz: ``[V, 3]`` starting positions (µm).
        noll: Noll indices to fit (each ≥ 2).
        axial: ``view`` fits each view's depth; ``common`` one shift for all; ``linear`` a
            shift and a scale of the depths about their mean (a z-stack: the planes' relative
            depths are the stage's steps, times the focal shift per stage step, which
            differs from 1 when the immersion and the specimen's index differ); ``none``
            keeps the depths.
        start: a starting pupil (a warm update from an earlier calibration).
        band: renderers at wavelengths sampling the emission band and their weights: the
            model image is their weighted sum (partial coherence), so that the pupil does
            not take up the fringes a broad band washes out. Default: ``model`` alone.
        iterations: L-BFGS iterations per pass (a pass through a ``band``: at most
            :data:`BAND_ITERATIONS`).
        progress: called after every model evaluation with a :class:`.progress.CalibrationProgress`
            (stages ``positions``, ``all parameters``, with a ``band`` ``all parameters,
            emission band``, with ``free_form`` ``free-form pupil`` and ``positions,
            projected pupil``); returning False cancels.
        free_form: when > 0, a pass after the Zernike fit fits a free-form pupil on top of it
            (log-amplitude and phase maps of ``free_form × free_form`` samples over the pupil,
            :func:`free_form_on_grid`; Hanser et al. 2004, J. Microsc. 216:32, retrieve the
            same pixel-wise pupil by Gerchberg–Saxton iterations, here by gradients of the
            image residual), penalised by ``free_form_smoothness`` × the maps' mean squared
            step between neighbouring samples; the result's pupil is its projection on
            ``noll`` and ``apodisation_terms`` (:func:`project_free_form`).
        source_edge: also calibrate the source spectrum's edge (see above); a ``start``
            pupil's ``source_edge_na`` is then fitted and tested against no edge like the
            scan's, and without ``source_edge`` it is used as it is.
        restart_positions: restart the positions through the fitted pupil (see above; stages
            ``positions, restarted`` at the centre wavelength and the passes of everything
            again, skipped when no view's squared residual falls by more than :data:`RESTART_GAIN`).

    Raises:
        ValueError: for an unknown ``axial`` mode, a Noll index below 2 or a free-form map smaller than 3.
        CalibrationCancelled: ``progress`` returned False (:mod:`.progress`).
    """
    if axial not in ("view", "common", "linear", "none"):
        raise ValueError(f"axial must be 'view', 'common', 'linear' or 'none', got {axial!r}.")
    noll = tuple(sorted(int(j) for j in noll))
    if noll and noll[0] < FIRST_NOLL:
        raise ValueError(f"Noll indices must be ≥ {FIRST_NOLL}, got {noll[0]}.")
    if free_form:
        _check_free_form_samples(free_form, noll, len(start.zernike_rad) if start is not None else 0, apodisation_terms)
    device, dtype = model.device, model.real_dtype
    data = torch.as_tensor(np.asarray(measured) if not isinstance(measured, torch.Tensor) else measured, device=device).to(dtype)
    base = torch.as_tensor(np.asarray(sources_um_xyz, dtype=np.float64), device=device, dtype=dtype).reshape(-1, 3)
    if valid is None:
        weight = torch.ones_like(data)
    else:
        weight = torch.as_tensor(np.asarray(valid) if not isinstance(valid, torch.Tensor) else valid, device=device).to(dtype)
    scale = ((data * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp_min(1.0)).abs().clamp_min(1e-12)
    target = data / scale[:, None, None]
    n_terms = (max(noll) - FIRST_NOLL + 1) if noll else 0
    if start is not None:
        n_terms = max(n_terms, len(start.zernike_rad))
    fixed = torch.zeros(n_terms, device=device, dtype=dtype)
    if start is not None and start.zernike_rad:
        fixed[: len(start.zernike_rad)] = torch.tensor(start.zernike_rad, dtype=dtype)
    index = torch.tensor([j - FIRST_NOLL for j in noll], device=device, dtype=torch.long)
    free_z = fixed[index].clone().requires_grad_(True)
    apod0 = list(start.apodisation) if start is not None else []
    apod0 = (apod0 + [0.0] * apodisation_terms)[: max(apodisation_terms, len(apod0))]
    apod = torch.tensor(apod0, device=device, dtype=dtype).requires_grad_(apodisation_terms > 0)
    sine = bool(start.sine_condition) if start is not None else False
    spectral = [(model, 1.0)] if band is None else list(band)
    lateral = torch.zeros(len(base), 2, device=device, dtype=dtype, requires_grad=True)
    depth = torch.zeros({"view": len(base), "linear": 2}.get(axial, 1), device=device, dtype=dtype, requires_grad=axial != "none")
    spread = base[:, 2] - base[:, 2].mean()
    size = max(int(free_form), 3)
    log_amplitude = torch.zeros(size, size, device=device, dtype=dtype, requires_grad=bool(free_form))
    map_phase = torch.zeros(size, size, device=device, dtype=dtype, requires_grad=bool(free_form))
    inside = _disc(size, dtype, device)[2]
    neighbours = (inside[1:] & inside[:-1], inside[:, 1:] & inside[:, :-1])
    use_map = False
    start_edge = start.source_edge_na if start is not None else ()
    edge = torch.tensor(start_edge or (0.0, 0.0), device=device, dtype=dtype)
    edge_active = bool(start_edge)
    na_limit = min(m.geometry.max_field_na(m.optics) for m, _ in spectral)

    def sources() -> torch.Tensor:
        if axial == "view":
            dz = depth
        elif axial == "linear":
            dz = depth[0] + depth[1] * spread
        else:
            dz = depth.expand(len(base))
        return base + torch.cat([lateral, dz[:, None]], dim=1)

    def zernike_full() -> torch.Tensor:
        return fixed.index_put((index,), free_z) if n_terms else fixed

    # built once: the pupils' bases and free-form grids, the loss's normalisation
    band_all = [prepare_renderer(m, w, n_terms, apod.numel(), sine, dtype) for m, w in spectral]
    centre = [prepare_renderer(model, 1.0, n_terms, apod.numel(), sine, dtype)]
    total_weight = weight.sum()
    map_scale = (target * weight).pow(2).mean()  # the smoothness penalty's, relative to the images

    def evaluate(renderers: Sequence[PreparedRenderer] = band_all) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image = point_source_images(
            renderers, sources(), zernike_full() if n_terms else None, apod if apod.numel() else None,
            source_edge_na=torch.clamp(edge, 0.0, na_limit) if edge_active else None,
            free_form=(log_amplitude, map_phase) if use_map else None,
        )
        b, c = fit_brightness_background(image, target, weight)
        predicted = image * b[:, None, None] + c[:, None, None]
        loss = (weight * (predicted - target) ** 2).sum() / total_weight
        if use_map:
            loss = loss + free_form_smoothness * _smoothness((log_amplitude, map_phase), neighbours) * map_scale
        return loss, predicted, b, c

    restarting = restart_positions and axial == "view" and bool(noll or apodisation_terms)
    passes = 1 + (len(spectral) > 1)  # the passes of everything: centre wavelength (with a band), band
    # with source_edge, the first pass of everything runs again without the edge to test one (below)
    stages = (1 + passes) * (2 if restarting else 1) + (2 if free_form else 0) + (1 if source_edge else 0)

    def fit(parameters: list[torch.Tensor], renderers: Sequence[PreparedRenderer], stage_index: int, stage: str,
            max_iter: int = iterations) -> None:
        parameters = [p for p in parameters if p.requires_grad and p.numel()]
        if not parameters:
            return
        opt = torch.optim.LBFGS(
            parameters, lr=1.0, max_iter=max_iter, history_size=30, line_search_fn="strong_wolfe",
            tolerance_grad=1e-12, tolerance_change=STOP_CHANGE,
        )
        evaluations = 0

        # L-BFGS evaluates once before its first iteration, so a tiny budget (max_eval 1 for
        # max_iter 1) is exceeded by one: the budget reported is what it can really use.
        budget = max(opt.defaults["max_eval"], opt.defaults["max_iter"] + 1)

        def closure() -> torch.Tensor:
            nonlocal evaluations
            opt.zero_grad(set_to_none=True)
            loss = evaluate(renderers)[0] * 1e3
            loss.backward()
            evaluations += 1
            if progress is not None:
                state = CalibrationProgress(stage, stage_index, stages, evaluations, budget, float(loss.detach()))
                report(progress, state)
            return loss

        opt.step(closure)

    # the passes before the last run at the centre wavelength alone (a third of the band's
    # cost); the last one starts near the band's optimum and converges in a few steps
    fit([lateral, depth], centre, 0, "positions")
    with torch.no_grad():
        loss, predicted, _, c = evaluate()
        residual_start = _relative_residual(predicted, target, c, weight)
        if source_edge and not edge_active:
            best, chosen = float(loss), edge.clone()
            edge_active = True
            for fraction in SOURCE_EDGE_SCAN:
                na_cut = min(fraction * model.optics.na, na_limit)
                edge.copy_(torch.tensor(((1.0 - SOURCE_EDGE_WIDTH) * na_cut, na_cut), dtype=dtype))
                tried = float(evaluate()[0])
                if tried < best:
                    best, chosen = tried, edge.clone()
            edge_active = best < float(loss)
            if edge_active:
                edge.copy_(chosen)
    banded = len(spectral) > 1

    def fit_pass(with_edge: bool, stage: int, through_band: bool = False) -> int:
        """One pass of everything, at the centre wavelength or through the band, the edge fitted
        or not; returns the next stage."""
        edge.requires_grad_(with_edge)
        parameters = [lateral, depth, free_z, apod, edge]
        if through_band:
            fit(parameters, band_all, stage, "all parameters, emission band", min(iterations, BAND_ITERATIONS))
        else:
            fit(parameters, centre, stage, "all parameters")
        return stage + 1

    def fit_all(with_edge: bool, stage: int = 1) -> int:
        """The passes of everything (centre wavelength, then the band) from ``stage``; returns the next stage."""
        stage = fit_pass(with_edge, stage)
        return fit_pass(with_edge, stage, through_band=True) if banded else stage

    if source_edge and edge_active:  # the scan's edge or the start pupil's, tested
        # the centre wavelength's pass of everything with the edge, then the same pass without
        # it from where it started: an edge wholly outside the pupil leaves the images
        # unchanged (not identified), and one inside must fit better than the default spectrum
        # by SOURCE_EDGE_GAIN, not trade places with the apodisation. The band's pass (3× a
        # centre evaluation's cost) then runs once, with what the test chose.
        fitted = (lateral, depth, free_z, apod)
        before = [t.detach().clone() for t in fitted]
        stage = fit_pass(True, 1)
        with torch.no_grad():
            inside_pupil = float(torch.clamp(edge.detach(), 0.0, na_limit).min()) < model.optics.na
            edge_fit = (float(evaluate(centre)[0]), [t.detach().clone() for t in fitted])
            for t, v in zip(fitted, before):
                t.copy_(v)
        edge_active = False
        stage = fit_pass(False, stage)
        with torch.no_grad():
            if inside_pupil and edge_fit[0] < (1.0 - SOURCE_EDGE_GAIN) * float(evaluate(centre)[0]):
                for t, v in zip(fitted, edge_fit[1]):
                    t.copy_(v)
                edge_active = True
        if banded:
            stage = fit_pass(edge_active, stage, through_band=True)
    else:
        stage = fit_all(False) + (1 if source_edge else 0)  # no edge to test: the count skips the pass without one
    if restarting:
        # each view's position again from its start, through the fitted pupil; a view that
        # lands lower keeps it, and then the pupil is fitted again with the new positions
        def view_losses() -> torch.Tensor:
            _, predicted, _, _ = evaluate()
            return (weight * (predicted - target) ** 2).sum(dim=(1, 2))

        with torch.no_grad():
            kept = (view_losses(), lateral.detach().clone(), depth.detach().clone())
            lateral.zero_()
            depth.zero_()
        fit([lateral, depth], centre, stage, "positions, restarted")
        with torch.no_grad():
            better = view_losses() < (1.0 - RESTART_GAIN) * kept[0]
            lateral.copy_(torch.where(better[:, None], lateral, kept[1]))
            depth.copy_(torch.where(better, depth, kept[2]))
        stage = fit_all(source_edge and edge_active, stage + 1) if bool(better.any()) else stage + 1 + passes
    maps, residual_free_form = None, None
    if free_form:
        use_map = True
        fit([lateral, depth, log_amplitude, map_phase], band_all, stage, "free-form pupil")
        stage += 1
        with torch.no_grad():
            _, predicted, _, c = evaluate()
            residual_free_form = _relative_residual(predicted, target, c, weight)
            maps = (log_amplitude.detach().cpu().numpy().copy(), map_phase.detach().cpu().numpy().copy())
            zernike = zernike_full().cpu().numpy()
            projected = project_free_form(
                PupilParameters(tuple(float(v) for v in zernike), tuple(float(v) for v in apod.detach().cpu().numpy()), sine),
                *maps, noll=noll, apodisation_terms=apod.numel(),
            )
            fixed = torch.zeros(len(projected.zernike_rad), device=device, dtype=dtype)
            fixed[:] = torch.tensor(projected.zernike_rad, dtype=dtype)
            n_terms = len(projected.zernike_rad)
            free_z = fixed[index].clone()
            apod = torch.tensor(projected.apodisation, device=device, dtype=dtype)
        use_map = False
        fit([lateral, depth], band_all, stage, "positions, projected pupil")
    with torch.no_grad():
        _, predicted, b, c = evaluate()
        residual = _relative_residual(predicted, target, c, weight)
        zernike = zernike_full().cpu().numpy()
        na_in, na_cut = sorted(float(v) for v in torch.clamp(edge, 0.0, na_limit).cpu())
        identified = edge_active and na_in < model.optics.na
        pupil = PupilParameters(
            tuple(float(v) for v in zernike), tuple(float(v) for v in apod.cpu().numpy()), sine,
            (na_in, max(na_cut, na_in + 1e-6)) if identified else (),
            # the light beyond the NA: a homogeneous medium's images do not show it (the volume fit does)
            start.source_beyond_na if start is not None and not identified else 1.0,
            start.source_rim_width if start is not None and not identified else SOURCE_RIM_WIDTH,
        )
        return PupilCalibration(
            pupil=pupil,
            sources_um_xyz=sources().cpu().numpy().astype(np.float64),
            brightness=(b * scale).cpu().numpy().astype(np.float64),
            background=(c * scale).cpu().numpy().astype(np.float64),
            residual=residual,
            residual_start=residual_start,
            noll=noll,
            free_form=maps,
            residual_free_form=residual_free_form,
        )


# -- bead z-stack ----------------------------------------------------------------------


@dataclass(frozen=True)
class StackCalibration:
    """A pupil calibrated from a bead z-stack, with the fit's quality before and after.

    Attributes:
        calibration: the pupil fit (its ``sources_um_xyz`` are the bead per plane,
            z relative to the focal plane's height in the stack model).
        z_direction: +1 when the stack's planes step the bead away from the objective
            (deeper below focus), −1 the other way (the better fitting of the two).
        residual_hard: relative residual with the hard aperture, each plane's brightness,
            background, lateral position and depth fitted freely (the issue's "before").
        residual: relative residual after the calibration (the pupil shared by all planes,
            each plane's brightness, background, position and depth free, as for ``residual_hard``).
        ambiguous: both directions were fitted and fit equally well (within 1 %): the
            sign of the even aberrations rests on the direction chosen.
        noise: the stack's pixel noise (:func:`camera_noise`); its ``residual_floor`` is the
            residual the true image would leave against this fit's background
            (:meth:`CameraNoise.expected_residual`), what ``residual`` is to be read against
            (None for pixels too coarse for the estimate).
        saturated_pixels: pixels of the stack at the camera's full scale. They are left out of
            the fit, but the peak they clip is what shapes the pupil's amplitude: on a simulated
            stack with 14–64 saturated pixels per plane the fitted apodisation swung between
            fits and the even aberrations' sign could flip (BENCHMARKS.md, "A pupil from a bead
            z-stack"), so a saturated stack should be taken again with a shorter exposure.
        beads: the planes and beads fitted, in words (:meth:`StackViews.describe`).
    """

    calibration: PupilCalibration
    z_direction: int
    residual_hard: float
    residual: float
    ambiguous: bool = False
    noise: CameraNoise | None = None
    saturated_pixels: int = 0
    beads: str = ""


#: The fewest pixels per side a bead z-stack's renderer is padded by (:func:`stack_padding`).
STACK_MIN_PADDING = 16


def stack_padding(optics: Optics, pixel_um: float, depth_um: float) -> int:
    """Lateral padding (pixels per side) of a bead z-stack's renderer: the radius of the
    bead's defocused disc ``depth_um·tan θ_NA`` at the farthest plane, at least
    :data:`STACK_MIN_PADDING`.

    A homogeneous medium needs no absorbing margin and no room for the source's wide cone
    (conditions (i) and (iii) of :func:`.physics.default_padding`): the image is the
    focal-plane spectrum sampled on the exit grid times the pupil, so only the periodic copies
    of the NA-limited image can reach it. On the measured stack (NA 1.1, 0.0905 µm pixels)
    this pads by 66 pixels instead of 206 and differs from the full padding by ≈ 0.5, 0.3 and
    0.1 % (relative L2) at 3, 2 and 1 µm defocus (tests/recon/test_calibration.py).
    """
    return max(STACK_MIN_PADDING, int(math.ceil(abs(depth_um) * cone_tan(optics.n_medium, optics.na) / pixel_um)))


def stack_model(
    optics: Optics, shape_yx: tuple[int, int], pixel_um: float, depth_um: float, *, dtype=torch.float64,
    pad_yx: tuple[int, int] | None = None, bead_diameter_um: float = 0.0,
) -> ForwardModel:
    """Renderer for single planes of a bead z-stack: an empty volume one plane thick,
    focused at its centre (``z = z_step/2``, here 0.5 µm), padded for a bead ``depth_um`` away
    (:func:`stack_padding`, or by ``pad_yx`` pixels per side), of ``bead_diameter_um``
    (:meth:`.physics.ForwardModel.build`)."""
    geometry = VolumeGeometry((1, int(shape_yx[0]), int(shape_yx[1])), (1.0, float(pixel_um), float(pixel_um)))
    if pad_yx is None:
        pad_yx = (stack_padding(optics, pixel_um, depth_um),) * 2
    return ForwardModel.build(optics, geometry, source_depth_um=depth_um, dtype=dtype, pad_yx=pad_yx,
                              bead_diameter_um=bead_diameter_um)


#: A peak of a bead z-stack's maximum projection is a bead to fit when it reaches this fraction of the
#: brightest peak's height above the background (fainter beads add little but their neighbours' light).
BEAD_BRIGHTNESS = 0.25
#: A peak that reaches this fraction of a bead's own height is another bead to keep out of its crop
#: (the first dark ring of an in-focus bead stays near 0.05 on the measured stack).
NEIGHBOUR_BRIGHTNESS = 0.1
#: A peak of the maximum projection must stand this many robust standard deviations above its background.
BEAD_MIN_SNR = 10.0
#: A bead's light changes through focus: a peak whose brightest plane is less than this many times its
#: dimmest (above each plane's median), in height and in how much of its light the peak holds, is the
#: same in every plane (a hot pixel cluster), not a bead; a bead ±0.8 µm about focus at NA 0.8 changes 1.45×.
BEAD_Z_CONTRAST = 1.2


@dataclass(frozen=True)
class Bead:
    """A bead found in a z-stack's maximum projection (:func:`find_beads`).

    Attributes:
        y_px, x_px: its peak (pixel indices of the stack's frames).
        height: the smoothed projection's height there above its median (counts).
        focus_plane: the plane of its brightest pixel within an Airy diameter (its focus, or the
            stack's end nearest it).
        saturated: a pixel within the Airy diameter of the peak is at the camera's full scale in some plane.
    """

    y_px: int
    x_px: int
    height: float
    focus_plane: int
    saturated: bool = False


def airy_diameter_px(wavelength_um: float, na: float, pixel_um: float) -> float:
    """The Airy disc's diameter ``1.22·λ/NA`` in pixels: the in-focus spot of a point source."""
    return 1.22 * wavelength_um / na / pixel_um


def find_beads(
    stack: np.ndarray, valid: np.ndarray, wavelength_um: float, na: float, pixel_um: float,
    saturated: np.ndarray | None = None,
) -> list[Bead]:
    """The beads of a z-stack ``[Z, Y, X]`` (counts): the peaks of its maximum projection over z
    whose light changes through focus, brightest first.

    Pixels that carry no image (``valid`` False: hot or dead) read their plane's median;
    ``saturated`` ``[Z, Y, X]`` marks pixels at the full scale, which keep their count (the
    bead's light) and mark the bead ``saturated``. The projection is smoothed by a Gaussian of
    the in-focus spot's width (σ = 0.21·λ/NA, the Airy core's); its local maxima within the
    Airy diameter (:func:`airy_diameter_px`) that stand :data:`BEAD_MIN_SNR` robust standard
    deviations above its median are peaks, and a peak whose 3×3 sum above each plane's
    median, or that sum's share of the light within an Airy diameter, changes by at least
    :data:`BEAD_Z_CONTRAST` times between planes is a bead (a cluster of hot pixels is the
    same in every plane; a bead clipped at an unknown full scale still spreads); a peak clipped at the full
    scale is a bead unless it is clipped in every plane (a stuck pixel, or a bead so
    overexposed that it cannot serve). A defocused bead's rings are
    no beads: they fall within the Airy diameter of its peak or far below it
    (BENCHMARKS.md, "Beads of one stack"); which beads to fit is :func:`bead_stack_views`'s.

    Raises:
        NoBeadError: no peak stands out of the noise (a dark or empty stack), or none changes
            through focus.
    """
    data = np.asarray(stack, dtype=np.float64)
    median = np.array([np.median(p[v]) if v.any() else np.median(p) for p, v in zip(data, valid)])
    lit = valid if saturated is None else valid | saturated
    filled = np.where(lit, data, median[:, None, None])
    projection = filled.max(axis=0)
    spot_px = airy_diameter_px(wavelength_um, na, pixel_um)
    smooth = ndimage.gaussian_filter(projection, max(0.17 * spot_px, 0.5), mode="nearest")
    floor = float(np.median(smooth))
    noise = max(robust_sigma(smooth - floor), 1e-12)
    reach = max(int(math.ceil(spot_px)), 1)
    top = ndimage.maximum_filter(smooth, size=2 * reach + 1, mode="nearest")
    ys, xs = np.nonzero((smooth == top) & (smooth - floor > BEAD_MIN_SNR * noise))
    if len(ys) == 0:
        raise NoBeadError(
            f"no bead stands out of the noise in the stack's maximum projection (its brightest spot is "
            f"{(smooth.max() - floor) / noise:.1f} robust standard deviations above the median, a bead needs {BEAD_MIN_SNR:g})."
        )
    above = filled - median[:, None, None]
    beads, flat = [], []
    for y, x in zip(ys, xs):
        profile = above[:, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].sum(axis=(1, 2))
        spread = above[:, max(y - reach, 0) : y + reach + 1, max(x - reach, 0) : x + reach + 1].sum(axis=(1, 2))
        share = profile[spread > 0] / spread[spread > 0]  # of its light near the peak, the part in the peak's 3×3
        core = None if saturated is None else saturated[:, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].any(axis=(1, 2))
        # its peak, or how much of its light the peak holds, changes through focus; a clipped peak cannot show it
        # unless it is clipped in every plane (a stuck pixel)
        focusing = profile.max() >= BEAD_Z_CONTRAST * max(float(profile.min()), 0.0) or (
            len(share) > 1 and share.max() >= BEAD_Z_CONTRAST * max(float(share.min()), 1e-12))
        if core is not None and core.any():
            focusing = not core.all()
        if not focusing:
            flat.append((int(y), int(x)))
            continue
        clipped = saturated is not None and bool(
            saturated[:, max(y - reach, 0) : y + reach + 1, max(x - reach, 0) : x + reach + 1].any())
        box = filled[:, max(y - reach, 0) : y + reach + 1, max(x - reach, 0) : x + reach + 1]
        focus = int(np.argmax(box.reshape(len(box), -1).max(axis=1)))  # the plane of its brightest pixel
        beads.append(Bead(int(y), int(x), float(smooth[y, x] - floor), focus, clipped))
    if not beads:
        where = ", ".join(f"({y}, {x})" for y, x in flat[:5])
        raise NoBeadError(
            f"no bead in the stack: its brightest spots, at pixels (y, x) {where}, are as bright in every plane "
            f"(less than {BEAD_Z_CONTRAST:g}× from their dimmest plane to their brightest), as hot pixels are and a bead "
            "through focus is not; a stack for the pupil needs the bead defocused by a few µm on either side."
        )
    return sorted(beads, key=lambda b: -b.height)


@dataclass(frozen=True)
class StackViews:
    """A bead z-stack prepared for :func:`calibrate_pupil` (:func:`bead_stack_views`): every
    plane of every bead fitted is one view.

    Attributes:
        model: the plane renderer (:func:`stack_model`); band: renderers and weights over the
            emission band, or None (coherent at the centre wavelength).
        frames: ``[B·Z, Y, X]`` counts, bead by bead (the whole frame for one bead alone, else
            each bead's crop); valid: ``[B·Z, Y, X]`` bool, False at defective pixels.
        defocus_um: ``[B·Z]`` each plane's stage step from its bead's brightest plane (µm).
        centres_um_xy: ``[B·Z, 2]`` each view's lateral start (its bead's centroid in its
            brightest plane, µm, in the view's frame).
        beads: the beads fitted (:func:`find_beads`), in the order of ``frames``.
        crop_px: each bead's crop (pixels per side), None: the whole frame.
        noise: the stack's pixel noise (:func:`camera_noise`, on the frames fitted), None when
            its pixels sample the band too coarsely to leave frequencies beyond it.
        saturated_pixels: pixels of the frames fitted at the camera's full scale (:func:`full_scale_counts`).
    """

    model: ForwardModel
    band: list[tuple[ForwardModel, float]] | None
    frames: np.ndarray
    valid: np.ndarray
    defocus_um: np.ndarray
    centres_um_xy: np.ndarray
    beads: tuple[Bead, ...]
    crop_px: int | None
    noise: CameraNoise | None
    saturated_pixels: int = 0

    def sources(self, z_direction: int) -> np.ndarray:
        """Starting bead positions ``[B·Z, 3]`` (µm) for the planes stepping in ``z_direction``
        (see :func:`calibrate_bead_stack`): each bead's brightest plane at defocus 0."""
        focal = self.model.geometry.focal_z_um
        return np.concatenate([self.centres_um_xy, (focal - int(np.sign(z_direction)) * self.defocus_um)[:, None]], axis=1)

    def describe(self) -> str:
        """The views in words: ``21 planes of 1 bead (the whole frame)``, or ``21 planes of 3 beads
        at pixels (y, x) (40, 52), …, 64×64 each``."""
        planes = len(self.frames) // len(self.beads)
        if self.crop_px is None:
            return f"{planes} planes of 1 bead (the whole frame)"
        several = len(self.beads) > 1
        where = ", ".join(f"({b.y_px}, {b.x_px})" for b in self.beads)
        return (f"{planes} planes of {len(self.beads)} bead{'s' if several else ''} at pixel{'s' if several else ''} (y, x) "
                f"{where}, {self.crop_px}×{self.crop_px} each")


def full_scale_counts(stack: np.ndarray, bit_depth: int | None = None) -> float | None:
    """The count at which a camera's pixels saturate: ``2**bit_depth − 1`` for a camera of
    ``bit_depth`` significant bits (a 12-bit camera stores 4095 at most in 16-bit words),
    else the maximum of ``stack``'s integer type; None for floating-point frames without a
    ``bit_depth`` (no full scale is known, no pixel counts as saturated).

    Raises:
        ValueError: a ``bit_depth`` below 1 or wider than ``stack``'s integer type, or one
            whose full scale the stack's counts exceed.
    """
    data = np.asarray(stack)
    if bit_depth is None:
        return float(np.iinfo(data.dtype).max) if np.issubdtype(data.dtype, np.integer) else None
    if int(bit_depth) < 1 or (np.issubdtype(data.dtype, np.integer) and int(bit_depth) > np.iinfo(data.dtype).bits):
        raise ValueError(f"a camera of {bit_depth} bits cannot have written {data.dtype} frames")
    full = float(full_scale(bit_depth))
    top = float(data.max()) if data.size else 0.0
    if top > full:
        raise ValueError(f"the frames hold counts up to {top:g}, above the full scale {full:g} of a camera of {bit_depth} bits")
    return full


def bead_stack_views(
    stack: np.ndarray, optics: Optics, pixel_um: float, z_step_um: float, *, pad_yx: tuple[int, int] | None = None,
    bead_diameter_um: float = 0.0, bit_depth: int | None = None, crop_px: int | None = None, max_beads: int = MAX_BEADS,
) -> StackViews:
    """Prepare a z-stack ``[Z, Y, X]`` of one or more beads (raw counts) for a pupil fit.

    Defective pixels (:func:`defective_pixels`; saturated at :func:`full_scale_counts` of the
    camera's ``bit_depth``, None: the integer type's maximum) are found on the whole stack, then
    the beads (:func:`find_beads`); those of at least :data:`BEAD_BRIGHTNESS` of the brightest's
    height are the candidates. Without ``crop_px`` and with one candidate, it is fitted on the
    whole frame, or on the square around it that holds its light where the frame is larger:
    its defocused disc at the plane farthest from its focus (``depth·tan θ_NA``) and two Airy
    diameters round it. With ``crop_px``, or with several candidates (then :data:`BEAD_CROP_PX`,
    or the frame where smaller), each candidate is fitted on the crop around it (clipped to the
    frame) when its spot lies inside the frame and no other bead of :data:`NEIGHBOUR_BRIGHTNESS`
    of its height lies within an Airy diameter of that crop; the ``max_beads`` first of those,
    unsaturated ones first, then those focused inside the stack, then the brightest, share the
    pupil: every plane of every bead is a view. In every crop the defocused discs of the other
    beads of :data:`NEIGHBOUR_BRIGHTNESS` of its height (radius ``|Δz|·tan θ_NA`` plus an Airy
    diameter in each plane) are left out of the fit, as defective pixels are. Each bead's
    brightest plane is its defocus 0 and its centroid there its lateral start. The renderers
    (emission band when ``optics.emission_fwhm_um`` > 0, at :data:`EMISSION_SAMPLES`
    wavelengths, :func:`.simulate.band_renderers`) image beads of ``bead_diameter_um``; the
    pixel noise (:func:`camera_noise`) is that beyond the band of the shortest wavelength.

    Raises:
        ValueError: for a stack that is not 3D, a non-positive step or pixel size, a crop
            larger than the frame, ``max_beads`` < 1, or a ``bit_depth`` the stack's integer
            type cannot hold.
        NoBeadError: no bead in the stack (:func:`find_beads`), or none alone in its crop (the
            message says why for each, and the crop that would hold one alone); all before any
            renderer is built.
    """
    data = np.asarray(stack, dtype=np.float64)
    if data.ndim != 3 or len(data) < 2:
        raise ValueError(f"A bead z-stack must be [Z, Y, X] with at least 2 planes, got shape {data.shape}.")
    if not (pixel_um > 0 and z_step_um > 0):
        raise ValueError(f"Pixel size and z step must be positive, got {pixel_um} and {z_step_um} µm.")
    _, ny, nx = data.shape
    if crop_px is not None and not 1 <= crop_px <= min(ny, nx):
        raise ValueError(f"A crop of {crop_px}×{crop_px} pixels does not fit in the stack's {ny}×{nx} frames.")
    if max_beads < 1:
        raise ValueError(f"At least one bead must be fitted, got max_beads={max_beads}.")
    saturation = full_scale_counts(stack, bit_depth)
    bad = defective_pixels(data, peak_ratio=sharpest_peak_ratio(optics.wavelength_um, optics.na, pixel_um), saturation=saturation)
    valid = ~bad
    clipped = None if saturation is None else data >= saturation
    beads = find_beads(data, valid if clipped is None else valid & ~clipped, optics.wavelength_um, optics.na, pixel_um,
                       saturated=clipped)
    reach = max(int(math.ceil(airy_diameter_px(optics.wavelength_um, optics.na, pixel_um))), 1)
    tan = cone_tan(optics.n_medium, optics.na)
    candidates = [b for b in beads if b.height >= BEAD_BRIGHTNESS * beads[0].height]

    def neighbours(bead: Bead) -> list[Bead]:
        return [n for n in beads if n is not bead and n.height >= NEIGHBOUR_BRIGHTNESS * bead.height]

    def window(bead: Bead, size: int) -> tuple[int, int]:
        return int(np.clip(bead.y_px - size // 2, 0, ny - size)), int(np.clip(bead.x_px - size // 2, 0, nx - size))

    masks = (z_step_um * tan / pixel_um, reach)  # a neighbour's disc: its defocus times tan θ, plus the Airy diameter
    if crop_px is None and len(candidates) == 1:
        bead = candidates[0]
        # its light: the defocused disc at the plane farthest from its focus, and two Airy diameters round it
        depth = max(bead.focus_plane, len(data) - 1 - bead.focus_plane) * z_step_um
        size = 2 * int(math.ceil(depth * tan / pixel_um + 2 * reach))
        if size >= min(ny, nx):
            return _stack_views(data, valid, optics, pixel_um, z_step_um, [(bead, 0, 0, neighbours(bead))], None, pad_yx,
                                bead_diameter_um, saturation, masks)
        return _stack_views(data, valid, optics, pixel_um, z_step_um, [(bead, *window(bead, size), neighbours(bead))], size, pad_yx,
                            bead_diameter_um, saturation, masks)
    crop = crop_px if crop_px is not None else min(BEAD_CROP_PX, ny, nx)
    usable, reasons = [], []
    for bead in candidates:
        y0, x0 = window(bead, crop)
        inside = reach <= bead.y_px < ny - reach and reach <= bead.x_px < nx - reach
        intruders = [n for n in neighbours(bead)
                     if y0 - reach <= n.y_px < y0 + crop + reach and x0 - reach <= n.x_px < x0 + crop + reach]
        if not inside:
            reasons.append(f"({bead.y_px}, {bead.x_px}) lies at the frame's edge")
        elif intruders:
            others = neighbours(bead)
            nearest = min(max(abs(n.y_px - bead.y_px), abs(n.x_px - bead.x_px)) for n in others)
            alone = 2 * (nearest - reach - 1)
            reasons.append(f"({bead.y_px}, {bead.x_px}) has a bead at ({intruders[0].y_px}, {intruders[0].x_px}) in its crop"
                           + (f" (a crop of {alone} would hold it alone)" if alone >= 2 * reach else ""))
        else:
            usable.append((bead, y0, x0, neighbours(bead)))
    if not usable:
        given = f"--crop {crop}" if crop_px is not None else f"the default crop of {crop}" + (
            " (clipped to the frame)" if crop < BEAD_CROP_PX else "")
        raise NoBeadError(
            f"no bead of the stack lies alone in a {crop}×{crop} crop ({given}): {'; '.join(reasons)}. Give a crop "
            "(--crop N) that holds a bead alone, or take the stack where one lies alone."
        )
    # unsaturated beads first (a clipped peak blurs the pupil's amplitude), then those whose focus lies inside the stack
    usable.sort(key=lambda u: (u[0].saturated, u[0].focus_plane in (0, len(data) - 1), -u[0].height))
    return _stack_views(data, valid, optics, pixel_um, z_step_um, usable[:max_beads], crop, pad_yx, bead_diameter_um, saturation,
                        masks)


def _stack_views(
    data: np.ndarray, valid: np.ndarray, optics: Optics, pixel_um: float, z_step_um: float,
    windows: list[tuple[Bead, int, int, list[Bead]]], crop_px: int | None, pad_yx: tuple[int, int] | None, bead_diameter_um: float,
    saturation: float | None, disc: tuple[float, float],
) -> StackViews:
    """:class:`StackViews` of the beads in ``windows`` (bead, top row and left column of its crop
    of ``crop_px`` pixels per side, None: the whole frame, and the other beads whose defocused
    discs are left out of it: in each plane the pixels within ``disc[0]·|Δplane| + disc[1]``
    pixels of them) (:func:`bead_stack_views`)."""
    n, ny, nx = data.shape
    sy, sx = (ny, nx) if crop_px is None else (crop_px, crop_px)
    spot = 2 * airy_diameter_px(optics.wavelength_um, optics.na, pixel_um)  # the bead's in-focus spot and its first rings
    ys, xs = (np.arange(sy) - sy / 2) * pixel_um, (np.arange(sx) - sx / 2) * pixel_um
    frames, masks, steps, centres = [], [], [], []
    for bead, y0, x0, others in windows:
        crop, ok = data[:, y0 : y0 + sy, x0 : x0 + sx], valid[:, y0 : y0 + sy, x0 : x0 + sx].copy()
        rows, cols = np.arange(sy)[:, None] + y0, np.arange(sx)[None, :] + x0
        for other in others:
            radius = disc[0] * np.abs(np.arange(n) - other.focus_plane) + disc[1]
            ok &= np.hypot(rows - other.y_px, cols - other.x_px)[None] > radius[:, None, None]
        near = np.hypot(rows - bead.y_px, cols - bead.x_px) <= spot
        best = bead.focus_plane
        plane = np.where(near & ok[best], crop[best] - np.median(crop[best][ok[best]]), 0.0).clip(0)
        total = plane.sum()
        cy = float((plane.sum(1) * ys).sum() / total) if total > 0 else float(ys[bead.y_px - y0])
        cx = float((plane.sum(0) * xs).sum() / total) if total > 0 else float(xs[bead.x_px - x0])
        frames.append(crop)
        masks.append(ok)
        steps.append((np.arange(n) - best) * z_step_um)
        centres.append(np.tile([cx, cy], (n, 1)))
    frames_all, valid_all, defocus = np.concatenate(frames), np.concatenate(masks), np.concatenate(steps)
    reach = float(np.abs(defocus).max()) + 1.0
    model = stack_model(optics, (sy, sx), pixel_um, reach, pad_yx=pad_yx, bead_diameter_um=bead_diameter_um)
    band = None
    if optics.emission_fwhm_um > 0:
        band = band_renderers(optics, model.geometry, EMISSION_SAMPLES, pad_yx=model.pad_yx, dtype=model.real_dtype,
                              bead_diameter_um=bead_diameter_um)
    try:
        noise: CameraNoise | None = camera_noise(frames_all, optics.wavelength_um - optics.emission_fwhm_um, optics.na, pixel_um,
                                                 valid=valid_all)
    except ValueError:  # pixels too coarse to leave frequencies beyond the band, frames too small
        noise = None
    saturated = 0 if saturation is None else int((frames_all >= saturation).sum())
    return StackViews(model, band, frames_all, valid_all, defocus, np.concatenate(centres), tuple(w[0] for w in windows),
                      crop_px, noise, saturated)


def calibrate_bead_stack(
    stack: np.ndarray,
    optics: Optics,
    pixel_um: float,
    z_step_um: float,
    *,
    noll: Sequence[int] = DEFAULT_NOLL,
    apodisation_terms: int = DEFAULT_APODISATION_TERMS,
    iterations: int = STACK_ITERATIONS,
    start: PupilParameters | None = None,
    z_direction: int | None = None,
    bead_diameter_um: float = 0.0,
    free_form: int = 0,
    pad_px: int | None = None,
    bit_depth: int | None = None,
    crop_px: int | None = None,
    max_beads: int = MAX_BEADS,
    progress: CalibrationCallback | None = None,
) -> StackCalibration:
    """Fit the detection pupil to a z-stack ``[Z, Y, X]`` of one or more beads (raw counts; the
    camera offset is part of the fitted background).

    Each plane of each bead fitted is a view (:func:`calibrate_pupil`), all through one pupil:
    a bead's plane of best focus starts at defocus 0 and its others at ± their stage steps;
    a bead alone in the frame is fitted on the whole frame, several beads (or any with
    ``crop_px``) on the crop around each of the ``max_beads`` brightest isolated ones
    (:func:`bead_stack_views`). The pupil is then the field's average over those beads.
    ``z_direction`` +1: later planes have the bead farther below the focal plane
    (farther from the objective), −1 the other way; None (unknown) fits both and keeps
    the better. In the scalar model a pupil ``P(k)`` at defocus ``z`` and the pupil
    ``P*(−k)`` at ``−z`` give the same intensity, so the direction cannot be told from
    the images when the aberrations are even (defocus-like, astigmatism, spherical):
    their sign follows the direction chosen (``StackCalibration.ambiguous``).
    Hot, dead and saturated pixels are left out (:func:`defective_pixels`); a camera of
    ``bit_depth`` significant bits saturates at ``2**bit_depth − 1`` (None: the stack's
    integer type's maximum, :func:`full_scale_counts`).
    ``optics.emission_fwhm_um`` > 0 renders the emission band; ``bead_diameter_um`` > 0
    images a bead of that diameter (:func:`bead_stack_views`); ``free_form`` as in
    :func:`calibrate_pupil` (the hard-aperture residual keeps the coherent source at the
    centre wavelength). The planes' positions
    are not restarted (``restart_positions``): their start, the stage's steps, is all there is
    to restart from, and the real stack's figures in BENCHMARKS.md were measured without it.
    ``progress``: as for :func:`calibrate_pupil`, its stages numbered over the whole
    calibration (per direction: the hard aperture's fit, then the pupil's). ``pad_px``: the
    renderer's padding per side (default :func:`stack_padding`).

    Raises:
        ValueError: as :func:`bead_stack_views` (a stack that is not 3D, no bead, no isolated
            bead, a crop larger than the frame, …), before the fit.
        CalibrationCancelled: ``progress`` returned False (:mod:`.progress`).
    """
    views = bead_stack_views(stack, optics, pixel_um, z_step_um, bead_diameter_um=bead_diameter_um, bit_depth=bit_depth,
                             pad_yx=None if pad_px is None else (int(pad_px), int(pad_px)), crop_px=crop_px, max_beads=max_beads)
    results: list[StackCalibration] = []
    fits = 4 if z_direction is None else 2  # per direction: the hard aperture's, the pupil's
    for direction in (1, -1) if z_direction is None else (int(np.sign(z_direction)),):
        sources = views.sources(direction)
        hard = calibrate_pupil(
            views.model, views.frames, sources, valid=views.valid, noll=(), apodisation_terms=0, axial="view",
            iterations=iterations, progress=substages(progress, f"z {direction:+d}, hard aperture", 2 * len(results), fits),
        )
        cal = calibrate_pupil(  # from the hard aperture's positions: its first pass would find them again
            views.model, views.frames, hard.sources_um_xyz, valid=views.valid, noll=noll, apodisation_terms=apodisation_terms,
            axial="view", iterations=iterations, start=start, band=views.band,
            free_form=free_form, restart_positions=False,
            progress=substages(progress, f"z {direction:+d}, pupil", 2 * len(results) + 1, fits),
        )
        noise = views.noise
        if noise is not None:  # the floor against the background the residual is measured from
            noise = replace(noise, residual_floor=noise.expected_residual(views.frames, views.valid, cal.background))
        results.append(StackCalibration(cal, direction, hard.residual, cal.residual, noise=noise,
                                        saturated_pixels=views.saturated_pixels, beads=views.describe()))
    best_fit = min(results, key=lambda r: r.residual)
    ambiguous = len(results) == 2 and abs(results[0].residual - results[1].residual) < 0.01 * best_fit.residual
    return replace(best_fit, ambiguous=ambiguous)


# -- camera noise ----------------------------------------------------------------------


@dataclass(frozen=True)
class CameraNoise:
    """Pixel noise of a stack of frames, estimated without an optical model (:func:`camera_noise`).

    Attributes:
        read_variance: variance (counts²) at zero signal above the frame's background: read
            noise, the background's shot noise and the fixed-pattern offsets.
        gain: counts per photo-electron (the slope of variance against signal).
        plane_variance: ``[Z]`` mean pixel noise variance of each frame (counts²).
        residual_floor: the relative residual ``‖noise‖ / ‖measured − background‖`` that the
            true image would leave over the valid pixels: no model can expect less.
    """

    read_variance: float
    gain: float
    plane_variance: np.ndarray
    residual_floor: float

    def expected_residual(
        self, frames: np.ndarray, valid: np.ndarray | None = None, background: np.ndarray | None = None,
    ) -> float:
        """The residual floor of frames ``[Z, Y, X]`` of the same camera (these, or a crop of them):
        ``√(Σ (σ₀² + G·(x − c)) / Σ (x − c)²)`` over the valid pixels, ``x − c`` an unbiased
        estimate of the signal above the background ``c``.

        ``c`` is ``background`` ``[Z]`` (counts; a fit's per-frame background, the one its
        residual ``‖measured − background‖`` is measured against) or, without one, each
        frame's median. On a tight crop that a defocused bead's disc fills, the median lies
        above the background and the floor it gives is wrong (by a third in
        ``test_the_floor_of_a_crop_filled_by_the_signal_is_measured_against_the_given_background``).
        """
        data = np.asarray(frames, dtype=np.float64)
        data = data[None] if data.ndim == 2 else data
        ok = np.ones(data.shape, bool) if valid is None else np.broadcast_to(np.asarray(valid, bool), data.shape)
        if background is None:
            level = np.array([np.median(p[o]) if o.any() else np.median(p) for p, o in zip(data, ok)])
        else:
            level = np.broadcast_to(np.asarray(background, dtype=np.float64), (len(data),))
        signal = (data - level[:, None, None])[ok]
        noise = self.read_variance * signal.size + self.gain * signal.sum()
        return math.sqrt(max(noise, 0.0) / max(float((signal**2).sum()), 1e-30))


def camera_noise(
    frames: np.ndarray, wavelength_um: float, na: float, pixel_um: float, *, valid: np.ndarray | None = None,
    margin: float = 1.1,
) -> CameraNoise:
    """Pixel noise of frames ``[Z, Y, X]`` (counts) from their spectrum beyond the optics' band.

    The intensity image of any incoherent object through an objective of ``na`` is band
    limited to spatial frequencies ``|f| ≤ 2·NA/λ`` (the incoherent cut-off, whatever the
    aberrations; Goodman, *Introduction to Fourier Optics*, §6.3), while pixel noise —
    independent from pixel to pixel — is white. The power beyond ``margin × 2·NA/λ`` is
    therefore noise alone and, by Parseval, its mean is each frame's mean pixel variance.
    The high-passed frames ``h ⊛ x`` have ``E[(h ⊛ x)²] = h² ⊛ var``; the photon-transfer
    model ``var = σ₀² + G·s`` (Poisson with gain ``G`` counts/e⁻ plus read noise, ``s`` the
    signal above the frame's median) is fitted by weighted least squares to the sums of
    ``(h ⊛ x)²`` over tiles of :data:`NOISE_TILE` pixels, against the tiles' sums of
    ``h² ⊛ (x − median)`` — linear in the counts, hence unbiased for ``h² ⊛ s``. The floor
    ``√(Σ (σ₀² + G·(x − median)) / Σ (x − median)²)`` over the valid pixels is the residual
    expected of the true image (``x − median`` is an unbiased estimate of ``s``;
    :meth:`CameraNoise.expected_residual`). Frames should span several tiles and their edges
    be dark (the FFT wraps them round).

    Args:
        frames: ``[Z, Y, X]`` raw counts (offset included) or ``[Y, X]``.
        wavelength_um: the shortest wavelength of the emission (µm).
        valid: ``[Z, Y, X]`` bool, False at defective pixels (left out of the fit and the floor).

    Raises:
        ValueError: when the sampling is too coarse to leave any frequency beyond the band.
    """
    data = np.asarray(frames, dtype=np.float64)
    data = data[None] if data.ndim == 2 else data
    ok = np.ones(data.shape, bool) if valid is None else np.broadcast_to(np.asarray(valid, bool), data.shape)
    _, ny, nx = data.shape
    f = np.hypot(np.fft.fftfreq(ny, pixel_um)[:, None], np.fft.fftfreq(nx, pixel_um)[None, :])
    cut = 2.0 * na / wavelength_um
    beyond = f > margin * cut
    if beyond.mean() < 0.05:
        raise ValueError(
            f"Pixels of {pixel_um} µm sample the band 2·NA/λ = {cut:.2f} /µm too coarsely to estimate the noise beyond it."
        )
    background = np.array([np.median(p[o]) if o.any() else np.median(p) for p, o in zip(data, ok)])
    signal = data - background[:, None, None]
    # Defective pixels carry no image: the frame's background in the spectrum, left out below.
    spectrum = np.fft.fft2(np.where(ok, signal, 0.0))
    plane_variance = (np.abs(spectrum) ** 2 * beyond).sum(axis=(1, 2)) / (ny * nx * beyond.sum())
    high = np.fft.ifft2(spectrum * beyond).real
    h2 = np.fft.ifft2(beyond.astype(np.float64)).real ** 2
    local = np.fft.ifft2(np.fft.fft2(np.where(ok, signal, 0.0)) * np.fft.fft2(h2)).real
    # Sums over tiles: linear in the counts, so the signal term is unbiased (no errors in variables).
    t = NOISE_TILE
    ty, tx = ny // t, nx // t
    if ty == 0 or tx == 0:
        raise ValueError(f"Frames of {ny}×{nx} pixels are smaller than a {t}×{t} tile of the noise estimate.")

    def tiles(values: np.ndarray) -> np.ndarray:
        return values[:, : ty * t, : tx * t].reshape(len(values), ty, t, tx, t).sum(axis=(2, 4)).ravel()

    observed = tiles(np.where(ok, high, 0.0) ** 2)
    design = np.stack([tiles(np.where(ok, beyond.mean(), 0.0)), tiles(np.where(ok, local, 0.0))], axis=1)
    coefficients = np.linalg.lstsq(design, observed, rcond=None)[0]
    for _ in range(3):  # weighted least squares: the variance of a sum of squares grows as its mean squared
        w = 1.0 / np.clip(design @ coefficients, 0.1 * observed.mean(), None)
        coefficients = np.linalg.lstsq(design * w[:, None], observed * w, rcond=None)[0]
    read_variance, gain = coefficients
    estimate = CameraNoise(float(read_variance), float(gain), plane_variance, 0.0)
    return replace(estimate, residual_floor=estimate.expected_residual(data, ok))
