"""The optimisation loop: cold start, warm start and self-calibration (docs/reconstruction.md).

One :class:`Reconstructor` owns the representation, the source parameters and
their optimisers. ``cold_start(frames)`` fits a timepoint from scratch;
``warm_update(frames)`` continues from the previous timepoint's state and stops
on an iteration budget, a time budget or a loss plateau. The loop keeps losses
on the device and synchronises with the host only every ``check_every``
iterations (progress, plateau and time checks).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from nvplive.errors import GeometryError, ReconstructionError

from .calibration import (
    PupilCalibration,
    calibrate_pupil,
    defective_pixels,
    fit_brightness_background,
    initial_sources,
    refine_sources,
    sharpest_peak_ratio,
)
from .capacity import check_memory
from .loop import (
    CoherenceCache,
    DivergenceGuard,
    IterationBudget,
    LearningRateDecay,
    PlateauDetector,
    RefineSchedule,
    StopPolicy,
    WarmBudget,
    adam_after_refinement,
    settled_loss,
    time_is_up,
    warm_budget_from_dict,
)
from .losses import SSIM_WINDOW, gaussian_window, image_loss, path_sparsity, total_variation
from .optics import Optics, VolumeGeometry
from .physics import (
    ForwardModel,
    camera_intensity,
    homogeneous_spectrum,
    pupil_on_grid,
    render,
    slab_voxels,
    with_source_edge,
)
from .progress import CalibrationProgress
from .pupil import FIRST_NOLL, PupilParameters
from .representations import Representation, representation_class, representation_for
from .simulate import band_renderers

#: Fraction of a view's pixels at the camera's maximum above which the frames are refused
#: (fewer saturated pixels are left out of the loss).
SATURATION_LIMIT = 0.05
#: Wavelengths sampling the emission band for the coherence weights.
COHERENCE_SAMPLES = 3
#: The thickest propagation slab a reconstruction accepts (µm; ``ReconConfig.max_slab_um``).
MAX_SLAB_UM = 1.0
#: The largest common shift of the bead depths a cold start may start from (µm;
#: ``ReconConfig.depth_starts_um``): the registration's depth error under a specimen is a
#: tenth of that (BENCHMARKS.md, "Bead depths in the registration").
MAX_DEPTH_START_UM = 1.0

#: What an update is doing when it reports: fitting the pupil (:meth:`Reconstructor.calibrate`,
#: a cold start's calibration) or fitting the volume.
Phase = Literal["calibration", "fit"]

#: ``callback(done, total, loss, phase)`` of an update. In the ``"fit"`` phase: the volume
#: fit's iteration, its planned iterations and the image loss; in the ``"calibration"`` phase
#: (a cold start calibrates before it fits, so its ``done`` starts again at the fit): the
#: calibration's evaluations, their budget and its loss (:class:`.progress.CalibrationProgress`).
#: An exception it raises ends the update (cancel).
ProgressCallback = Callable[[int, int, float, Phase], None]

log = logging.getLogger(__name__)


def _calibration_progress(callback: ProgressCallback) -> Callable[[CalibrationProgress], None]:
    """A calibration's progress as ``callback(evaluations, budget, loss, "calibration")`` over all its
    stages, each counted with the largest stage budget seen (the first stage's: a pass through the
    emission band has a smaller one, :data:`.calibration.BAND_ITERATIONS`), so that the count
    never goes back."""
    largest = 0

    def progress(state: CalibrationProgress) -> None:
        nonlocal largest
        largest = max(largest, state.max_evaluations)
        callback(state.stage_index * largest + state.evaluation, state.stages * largest, state.loss, "calibration")

    return progress


def _nth_fit(callback: ProgressCallback | None, index: int, fits: int) -> ProgressCallback | None:
    """``callback`` for the ``index``-th of ``fits`` successive fits of one cold start: their
    iterations counted as one run, so that the count never goes back."""
    if callback is None or fits == 1:
        return callback

    def progress(done: int, total: int, loss: float, phase: Phase) -> None:
        callback(index * total + done, fits * total, loss, phase)

    return progress


def fit_loss(
    model: ForwardModel,
    representation: Representation,
    sources: torch.Tensor,
    brightness: torch.Tensor,
    background: torch.Tensor,
    scale: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    data_range: torch.Tensor,
    window: torch.Tensor,
    tv_weight: float,
    pupil: torch.Tensor | None = None,
    sparsity_weight: float = 0.0,
) -> torch.Tensor:
    """The objective of one iteration: image loss of the rendered views (through ``pupil``,
    complex ``[Yp, Xp]``, None = hard aperture) against the normalised measurement
    (``target = measured / scale``) plus τ·TV(Δn)/0.01 plus σ·S(Δn)/0.01, the ℓ1 sparsity
    prior along the optical path (``sparsity_weight`` σ, :func:`.losses.path_sparsity`: the
    mean over the columns of ``Σ_z |Δn|·dz / 4 µm``; most of a thick volume is the medium)."""
    dn = representation()
    predicted = render(model, dn, sources, brightness, background, pupil) / scale[:, None, None]
    loss = image_loss(predicted, target, mask, data_range=data_range, window=window)
    if tv_weight:
        loss = loss + tv_weight * total_variation(dn) / 0.01
    if sparsity_weight:
        loss = loss + sparsity_weight * path_sparsity(dn, model.geometry.voxel_um_zyx[0]) / 0.01
    return loss


@dataclass(frozen=True)
class ReconConfig:
    """Settings of a reconstruction (all saved with the volumes).

    Attributes:
        method: ``nvp``, ``explicit`` or ``triplane``.
        iterations: cold-start iteration budget.
        warm_budget: the budget of a warm update: :class:`~nvplive.recon.loop.IterationBudget`
            (iterations, optional plateau stop) or :class:`~nvplive.recon.loop.LatencyBudget`
            (wall-clock seconds; the iteration count follows from the measured rate).
        lr: learning rate of the representation (feature grid / planes; scaled for explicit)
            in a cold start.
        warm_lr_factor: a warm update steps the representation at this factor × ``lr``
            (:meth:`representation_lr`): it must catch up with the specimen's motion within
            its budget, where a cold start with the sparsity prior converges to a better
            volume at the smaller rate (BENCHMARKS.md, "The sparsity prior as the default,
            second try").
        lr_final_fraction: a cold start's representation learning rates fall geometrically
            over its last 40 % of iterations (after the last refinement) to this fraction of
            themselves (:class:`~nvplive.recon.loop.LearningRateDecay`; 1 turns it off). Warm
            updates keep their rate.
        tv_weight: τ, weight of the total variation of Δn.
        sparsity_weight: σ, weight of the ℓ1 sparsity prior along the optical path
            (:func:`.losses.path_sparsity`: ``Σ_z |Δn|·dz`` per column over 4 µm, the mean |Δn|
            of a 4 µm deep volume; 0 turns it off). It keeps Δn out of the medium around a
            specimen that fills a small part of the volume (a thick volume's missing cone
            spreads it there), with the same strength however many empty slices the volume
            holds; it needs the small cold ``lr`` (BENCHMARKS.md, "Thick geometry", "The
            sparsity prior as the default, second try" and "The ℓ1 prior per depth of optical path").
        sparsity_source_edge_factor: σ is multiplied by this when the renderer's source
            spectrum ends at an edge inside the pupil (``PupilParameters.source_edge_na``, a
            calibrated or given one; :meth:`sparsity_for`). The specimen is then lit only by
            the pupil's cone, its images carry less of Δn, and the full σ's shrinkage cost
            the mismatch benchmark's "source NA = NA" row 3 dB (BENCHMARKS.md, "Source
            spectrum calibration on by default").
        nonnegative: impose Δn ≥ 0.
        coherence_mask: weight the image loss by the coherence mask.
        self_calibration: optimise source positions, brightness and background.
        pupil_calibration: before the volume is fitted, calibrate the detection pupil
            (Zernike phase and apodisation, :func:`.calibration.calibrate_pupil`) with the
            source positions (lateral and axial) from the frames' homogeneous part; later
            timepoints reuse it. Needs ``self_calibration``. On by default: a real
            objective's pupil is never the renderer's hard aperture (docs/reconstruction.md).
        pupil_refinement: with ``pupil_calibration``, refine the calibrated pupil's fitted
            coefficients (its Noll indices and apodisation) jointly with the cold start's
            volume, after ``calibration_warmup``:
            a calibration that assumed a homogeneous specimen has taken up a little of a
            strong specimen, and the volume fit corrects it. Warm updates keep the pupil as
            the cold start left it; without calibration a given pupil is used as it is.
        lr_pupil_rad: learning rate of the refined pupil coefficients (rad per step).
        calibration_warmup: iterations before the source parameters are released.
        source_calibration: with ``pupil_calibration``, calibrate the source spectrum's
            edge too where the frames identify it: inside the pupil, and lowering the
            calibration's loss by more than :data:`.calibration.SOURCE_EDGE_GAIN` against
            the default spectrum (:func:`.calibration.calibrate_pupil`, docs/physics.md
            "Source spectrum"). A kept edge removes all light beyond the NA, so it is kept
            only where the frames show a spectrum that ends there (docs/reconstruction.md).
            Without such an edge, and with ``pupil_refinement``, the light beyond the NA
            (``PupilParameters.source_beyond_na``) is fitted with the cold start's volume.
            Off: the renderer's whole spectrum (a start pupil's edge and light beyond the NA
            are dropped).
        depth_starts_um: the cold start fits the volume once from each of these common shifts
            of the registered bead depths (µm, positive: shallower) and keeps the fit that
            ends at the lowest loss (:func:`.loop.settled_loss`); each start costs a whole fit.
            A registration through a homogeneous medium puts the beads 0.03–0.14 µm too deep
            under a thick specimen (its optical path), and the joint refinement does not take
            that back; from a start shallower than the truth it finds the depths (BENCHMARKS.md,
            "Depth starts": seven of eight thick rows +2.3 to +4.3 dB; the standard rows keep
            the unshifted fit and score as before, one +0.13). ``(0.0,)``: one fit from the registered depths, a
            third of the time (the live app's, for its first volume's latency).
        lr_sources_um: learning rate of the source positions (µm per step).
        lr_photometry: learning rate of log-brightness and background.
        coarse_to_fine: grow the NVP grid from coarse to voxel resolution.
        feature_planes: add NVP's three axis-aligned feature planes to its grid.
        features, hidden: feature channels and MLP width (NVP, triplane).
        check_every: iterations between host synchronisations (a latency budget has its own).
        plateau_rel_tol: relative loss improvement per check below which the loss has plateaued.
        divergence_factor: a loss window above this factor × the update's first loss (or a
            non-finite loss or Δn) is a divergence: the update rolls back to the last good
            state and the result is flagged.
        seed: seeds the representation's initialisation.
        bead_diameter_um: the fluorescent beads' diameter (µm, as the beads' supplier states
            it): the renderer's image of a bead is the point source's convolved with the
            bead's projection (:func:`.physics.bead_transfer`); 0 renders point sources;
            None: as the data states (a recording's ``bead_diameter_um``, which
            ``acquisition.offline.reconstructor_for`` puts here), point sources where nothing
            states it. A reconstructor's :attr:`Reconstructor.config` holds the number used.
            A 0.2 µm bead lowers the image's contrast at the band's edge to 0.67, which the
            pupil calibration cannot take up (BENCHMARKS.md, "The beads' size").
        max_slab_um: the thickest slab (µm) the renderer crosses in one propagation step: a
            whole number of voxels dividing Nz (:func:`.physics.slab_voxels`), Δn averaged
            over them; 0 (or voxels thicker than it): one step per voxel. Each step is two FFTs
            per view and direction, most of an iteration's time: 0.5 µm slabs on 0.25 µm voxels
            make an iteration 1.54× faster at 32×64×64, NVP and Explicit within ±0.1 dB of one
            step per voxel, Triplane 0.24 dB below (BENCHMARKS.md, "Slabs of two voxels";
            docs/physics.md for the image's accuracy). At most :data:`MAX_SLAB_UM`. Fixed for a
            reconstructor, like the beads' diameter.
        compile_mode: ``None`` runs eagerly; otherwise the iteration's forward and backward
            pass run through ``torch.compile`` in this mode (``default``; ``reduce-overhead``
            adds CUDA graphs on CUDA) once the representation is at its final resolution.
            Compiling takes tens of seconds (during the cold start); when it fails, the
            reconstruction runs eagerly and says so in the result's message.
    """

    method: str = "nvp"
    iterations: int = 300
    warm_budget: WarmBudget = IterationBudget()
    lr: float = 0.01
    warm_lr_factor: float = 2.0
    lr_final_fraction: float = 0.01
    tv_weight: float = 4e-3
    sparsity_weight: float = 0.016
    sparsity_source_edge_factor: float = 0.25
    nonnegative: bool = True
    coherence_mask: bool = True
    self_calibration: bool = True
    pupil_calibration: bool = True
    pupil_refinement: bool = True
    lr_pupil_rad: float = 0.002
    calibration_warmup: int = 60
    source_calibration: bool = True
    depth_starts_um: tuple[float, ...] = (0.0, 0.06, 0.12)
    lr_sources_um: float = 0.01
    lr_photometry: float = 0.005
    coarse_to_fine: bool = True
    feature_planes: bool = True
    features: int = 8
    hidden: int = 32
    check_every: int = 10
    plateau_rel_tol: float = 1e-3
    divergence_factor: float = 10.0
    seed: int = 0
    bead_diameter_um: float | None = None
    max_slab_um: float = 0.5
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        """Refuse settings no fit can run with, before anything is allocated.

        Raises:
            ValueError: a rate, factor or budget ≤ 0 or not finite, a weight < 0 or not
                finite, ``lr_final_fraction`` outside (0, 1], ``max_slab_um`` above
                :data:`MAX_SLAB_UM`, or an unknown method.
        """
        representation_class(self.method)
        positive = ("lr", "warm_lr_factor", "divergence_factor", "iterations", "check_every", "features", "hidden")
        non_negative = ("tv_weight", "sparsity_weight", "sparsity_source_edge_factor", "lr_pupil_rad", "lr_sources_um",
                        "lr_photometry", "plateau_rel_tol", "calibration_warmup", "bead_diameter_um", "max_slab_um")
        for name in positive + non_negative:
            value = getattr(self, name)
            if value is None and name == "bead_diameter_um":
                continue
            low_ok = value > 0 if name in positive else value >= 0
            if not (math.isfinite(value) and low_ok):
                bound = "> 0" if name in positive else "≥ 0"
                raise ValueError(f"Reconstruction setting {name} must be a finite number {bound}, got {value}.")
        if not (0.0 < self.lr_final_fraction <= 1.0):
            raise ValueError(f"Reconstruction setting lr_final_fraction must lie in (0, 1], got {self.lr_final_fraction}.")
        starts = self.depth_starts_um
        if not (isinstance(starts, tuple) and starts and all(math.isfinite(dz) and abs(dz) <= MAX_DEPTH_START_UM for dz in starts)
                and len(set(starts)) == len(starts)):
            raise ValueError(f"Reconstruction setting depth_starts_um must be a tuple of distinct depth shifts within "
                             f"±{MAX_DEPTH_START_UM:g} µm, at least one, got {starts!r}.")
        if self.max_slab_um > MAX_SLAB_UM:
            raise ValueError(f"Reconstruction setting max_slab_um must be at most {MAX_SLAB_UM:g} µm (1 µm slabs already "
                             f"misrender a weak specimen by 3–10 %, docs/physics.md), got {self.max_slab_um:g}.")

    def refines_source(self, pupil: PupilParameters, na: float) -> bool:
        """Whether the cold start's joint pupil refinement (``pupil_refinement``), starting from
        the calibrated ``pupil``, fits the light beyond the NA too: with source calibration,
        where the pupil carries no source edge inside the detection ``na`` (such an edge
        removes that light)."""
        edge_inside = bool(pupil.source_edge_na) and max(pupil.source_edge_na) <= na
        return self.source_calibration and not edge_inside

    def representation_lr(self, warm: bool) -> float:
        """The representation's learning rate in a warm update (``warm``) or a cold start."""
        return self.lr * self.warm_lr_factor if warm else self.lr

    def sparsity_for(self, pupil: PupilParameters | None) -> float:
        """σ, the ℓ1 prior's weight, for a renderer with ``pupil`` (see ``sparsity_source_edge_factor``)."""
        edge = pupil is not None and bool(pupil.source_edge_na)
        return self.sparsity_weight * (self.sparsity_source_edge_factor if edge else 1.0)

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (saved with the volumes); :meth:`from_dict` reads it back."""
        return {**asdict(self), "warm_budget": self.warm_budget.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReconConfig:
        """The settings :meth:`to_dict` wrote."""
        fields = dict(data)
        if isinstance(fields.get("warm_budget"), dict):
            fields["warm_budget"] = warm_budget_from_dict(fields["warm_budget"])
        if isinstance(fields.get("depth_starts_um"), list):  # JSON has no tuples
            fields["depth_starts_um"] = tuple(fields["depth_starts_um"])
        return cls(**fields)


@dataclass
class ReconResult:
    """What one cold start or warm update produced: of a cold start from several depth starts
    (``ReconConfig.depth_starts_um``), the kept fit's volume, losses, iterations and sources,
    and the ``seconds`` of all its fits (the pupil calibration before them not counted)."""

    dn: np.ndarray
    loss: float
    losses: list[float]
    iterations: int
    seconds: float
    sources_um_xyz: np.ndarray
    brightness: np.ndarray
    background: np.ndarray
    stopped_by: str
    warm: bool
    flagged: bool = False
    message: str = ""
    pupil: PupilParameters | None = None


@dataclass
class ReconState:
    """Everything a warm start needs from the previous timepoint."""

    representation: dict
    level: int
    resolution: tuple[int, ...]
    source_offset: torch.Tensor
    log_brightness: torch.Tensor
    background: torch.Tensor
    base_sources: torch.Tensor
    base_brightness: torch.Tensor
    base_background: torch.Tensor
    pupil: PupilParameters | None = None


_STATE_TENSORS = ("source_offset", "log_brightness", "background", "base_sources", "base_brightness", "base_background")


def _state_on(state: ReconState, device: torch.device) -> ReconState:
    """A copy of ``state`` with every tensor detached and on ``device``."""
    return replace(
        state,
        representation={k: v.detach().to(device) for k, v in state.representation.items()},
        **{name: getattr(state, name).detach().to(device) for name in _STATE_TENSORS},
    )


def _in_float64(model: ForwardModel) -> ForwardModel:
    """The same renderer (optics, geometry, padding, device) in float64."""
    return ForwardModel.build(model.optics, model.geometry, pad_yx=model.pad_yx, bead_diameter_um=model.bead_diameter_um,
                              voxels_per_slab=model.voxels_per_slab,
                              device=model.device, dtype=torch.float64)


def _set_lr(optimizer: torch.optim.Optimizer, groups: list[dict], factor: float = 1.0) -> None:
    """Apply the learning rates of ``groups``, times ``factor``, to the optimizer's groups, in order."""
    for group, wanted in zip(optimizer.param_groups, groups):
        group["lr"] = wanted["lr"] * factor


#: Environment variable that sets the CPU thread policy's thread count (``--threads`` wins over it).
THREADS_ENV = "NVPLIVE_THREADS"


def cpu_threads(requested: int | None = None) -> tuple[int, str]:
    """The one CPU thread policy of nvp-live (live app, demo, reconstruct, evaluate, benchmarks).

    Returns (threads, why): ``requested`` if given (``--threads``), else
    ``$NVPLIVE_THREADS``, else all cores but one, the core left to acquisition and
    display (and, offline, to whatever else runs: a reconstruction that takes every
    core of a loaded machine oversubscribes it and slows down many times, BENCHMARKS.md).

    Raises:
        ReconstructionError: ``requested`` or ``$NVPLIVE_THREADS`` is not a positive integer.
    """
    import os

    cores = os.cpu_count() or 2
    if requested is not None:
        value, why = requested, "set by --threads"
    elif os.environ.get(THREADS_ENV, "").strip():
        text = os.environ[THREADS_ENV].strip()
        try:
            value = int(text)
        except ValueError:
            raise ReconstructionError(f"{THREADS_ENV} must be a positive number of threads, got {text!r}.") from None
        why = f"set by {THREADS_ENV}"
    else:
        return max(1, cores - 1), f"all {cores} cores but one, as the live app; --threads N or {THREADS_ENV} to change"
    if value < 1:
        raise ReconstructionError(f"The number of CPU threads ({why}) must be positive, got {value}.")
    if value > cores:
        why += f"; more than this machine's {cores} cores, so the threads share them and each runs slower"
    return value, why


def check_frame_size(geometry: VolumeGeometry) -> None:
    """Refuse frames (the volume's Y×X) smaller than the image loss's SSIM window.

    Raises:
        GeometryError: Y or X below :data:`.losses.SSIM_WINDOW` pixels, naming both.
    """
    ny, nx = geometry.shape_zyx[1:]
    if min(ny, nx) < SSIM_WINDOW:
        raise GeometryError(
            f"Frames of {ny}×{nx} pixels are smaller than the image loss's {SSIM_WINDOW}-pixel SSIM window; "
            f"a reconstruction needs at least {SSIM_WINDOW}×{SSIM_WINDOW}."
        )


def live_cpu_threads() -> int:
    """Torch CPU threads for live reconstruction (:func:`cpu_threads` without a request)."""
    return cpu_threads()[0]


#: glibc's allocator for torch on the CPU (:func:`tune_allocator`): blocks up to 32 MiB (its
#: largest mmap threshold) come from the heap, and up to 1 GiB of freed heap is kept, with
#: 256 MiB of headroom per growth. As environment variables, for processes nvp-live starts.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
    "MALLOC_TOP_PAD_": str(256 * 2**20),
}


def tune_allocator() -> bool:
    """Set :data:`ALLOCATOR_ENV` in this process through glibc's ``mallopt``; False (nothing
    done) where the C library is not glibc.

    With glibc's defaults a torch iteration's megabyte-sized temporaries are mapped fresh
    from the kernel and handed back on every free, and the page faults cost more than the
    arithmetic on a small CPU: a 16×32×32, 7-view reconstruction ran in 50.8 s (user 40 s,
    system 11 s), 36.6 s tuned (system 0.7 s); BENCHMARKS.md, "Allocator". The price is memory
    kept for reuse instead of returned: at most the trim threshold above the peak.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    options = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3}  # M_* of malloc.h
    return all(mallopt(options[key], int(value)) == 1 for key, value in ALLOCATOR_ENV.items())


def use_cpu_threads(requested: int | None = None) -> str:
    """Apply the CPU policy: :func:`cpu_threads` to torch and :func:`tune_allocator`; returns one
    line saying what was chosen and how to change it."""
    tune_allocator()
    threads, why = cpu_threads(requested)
    torch.set_num_threads(threads)
    plural = "s" if threads != 1 else ""
    return f"{threads} CPU thread{plural} ({why})"


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReconstructionError("CUDA was requested but no CUDA device is available; use --device cpu.")
    return dev


def _source_spectrum(pupil: PupilParameters | None) -> tuple[tuple[float, ...], float, float]:
    """:attr:`.pupil.PupilParameters.source_spectrum` of ``pupil`` (None: the renderer's default spectrum)."""
    return (pupil or PupilParameters()).source_spectrum


#: Adam's steps (per iteration) of :attr:`.pupil.PupilParameters.source_beyond_na` and
#: ``source_rim_width`` in the joint refinement. β reaches where it ends on the recordings
#: measured (0.27–0.76) within about 25 iterations of the warm-up, before the volume settles on
#: the start's spectrum (at 0.01 it took about 70, and the volume formed meanwhile stayed
#: worse); the rim can cross 0.24 of the NA in 240 iterations (BENCHMARKS.md, "Light beyond the NA").
LR_SOURCE_BEYOND_NA = 0.03
LR_SOURCE_RIM = 0.001

#: The range a refined rim width is held in (relative to the NA).
SOURCE_RIM_RANGE = (0.005, 0.2)


class _PupilRefinement:
    """A pupil's Zernike coefficients of ``noll`` and its apodisation as trainable tensors
    (Adam at ``lr`` rad per step); the other coefficients stay as they are. With ``source``
    (:meth:`ReconConfig.refines_source`), the amplitude of the light beyond the NA and the
    width of the rim it blends in over (:attr:`.pupil.PupilParameters.source_beyond_na`,
    ``source_rim_width``) too, at :data:`LR_SOURCE_BEYOND_NA` and :data:`LR_SOURCE_RIM`."""

    def __init__(self, pupil: PupilParameters, noll: Sequence[int], lr: float, model: ForwardModel, *, source: bool) -> None:
        device, dtype = model.device, model.real_dtype
        n_terms = max([len(pupil.zernike_rad), *(j - FIRST_NOLL + 1 for j in noll)])
        fixed = list(pupil.zernike_rad) + [0.0] * (n_terms - len(pupil.zernike_rad))
        self.fixed = torch.tensor(fixed, dtype=dtype, device=device)
        self.index = torch.tensor([j - FIRST_NOLL for j in noll], dtype=torch.long, device=device)
        self.zernike = self.fixed[self.index].clone().requires_grad_(True)
        self.apodisation = torch.tensor(pupil.apodisation, dtype=dtype, device=device).requires_grad_(True)
        self.start = pupil
        self.beyond_na = torch.tensor(pupil.source_beyond_na, dtype=dtype, device=device)
        self.rim_width = torch.tensor(pupil.source_rim_width, dtype=dtype, device=device)
        groups: list[dict[str, Any]] = [{"params": [p for p in (self.zernike, self.apodisation) if p.numel()]}]
        self.refining_source = source
        if self.refining_source:
            self.beyond_na.requires_grad_(True)
            self.rim_width.requires_grad_(True)
            groups.append({"params": [self.beyond_na], "lr": LR_SOURCE_BEYOND_NA})
            groups.append({"params": [self.rim_width], "lr": LR_SOURCE_RIM})
        groups = [g for g in groups if g["params"]]
        self.parameters = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.Adam(groups, lr=lr) if groups else None

    def model(self, plain: ForwardModel) -> ForwardModel:
        """``plain`` (a renderer without source edge) with the source spectrum, differentiable in
        the light beyond the NA and the rim's width (only called when :attr:`refining_source`;
        otherwise the spectrum is the start pupil's, already in the reconstructor's model)."""
        return with_source_edge(plain, self.start.source_edge_na, self.beyond_na.clamp(0.0, 1.0),
                                self.rim_width.clamp(*SOURCE_RIM_RANGE))

    def _zernike_full(self) -> torch.Tensor:
        return self.fixed.index_put((self.index,), self.zernike)

    def on(self, model: ForwardModel) -> torch.Tensor:
        """The pupil on ``model``'s grid, differentiable in the coefficients."""
        apodisation = self.apodisation if self.apodisation.numel() else None
        return pupil_on_grid(model, (self._zernike_full(), apodisation), sine_condition=self.start.sine_condition)

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One Adam step on the gradients the last backward pass left."""
        if self.optimizer is not None:
            self.optimizer.step()

    def parameters_now(self) -> PupilParameters:
        """The start pupil with the refined values (those not refined exactly as they were)."""
        with torch.no_grad():
            now = replace(self.start, zernike_rad=tuple(float(v) for v in self._zernike_full().cpu()),
                          apodisation=tuple(float(v) for v in self.apodisation.cpu()))
            if self.refining_source:
                now = replace(now, source_beyond_na=float(self.beyond_na.clamp(0.0, 1.0)),
                              source_rim_width=float(self.rim_width.clamp(*SOURCE_RIM_RANGE)))
            return now


@dataclass
class _FitState:
    """What a cold start's fit leaves in the :class:`Reconstructor` and the warm updates go on
    from: kept for the best of the depth starts and put back (``Reconstructor._fit_state``,
    ``Reconstructor._restore_fit``)."""

    representation: Representation | None
    state: ReconState | None
    optimizers: Any
    pupil: PupilParameters | None
    coherence_weights: torch.Tensor | None
    coherence_age: int | None
    seconds_per_iteration: float | None
    finish_seconds: float


class Reconstructor:
    """Fits Δn (and calibrates the sources) to the frames of successive timepoints.

    Args:
        optics, geometry: the microscope and the reconstructed volume.
        sources_um_xyz: ``[V, 3]`` nominal source positions (µm).
        camera_offset, camera_gain: to convert ADU to photo-electrons.
        saturation_level: the largest count the camera reports (``2**bit_depth − 1``;
            ``None``: the frames' integer dtype maximum); pixels at it are saturated.
        pupil: a known detection pupil (a pupil file); with ``pupil_calibration`` the
            calibration starts from it, without it is used as it is. None: the hard aperture.
        config: the settings.
        device: ``auto``, ``cpu``, ``cuda`` …
        clock: the wall clock (s) a time budget reads and :attr:`ReconResult.seconds` comes
            from (a simulated clock makes the budget's decisions reproducible in tests).
    """

    def __init__(
        self,
        optics: Optics,
        geometry: VolumeGeometry,
        sources_um_xyz: np.ndarray,
        *,
        camera_offset: float = 0.0,
        camera_gain: float = 1.0,
        saturation_level: int | None = None,
        pupil: PupilParameters | None = None,
        config: ReconConfig = ReconConfig(),
        device: str | torch.device = "auto",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.optics = optics
        self.clock = clock
        self.geometry = geometry
        bead_um = 0.0 if config.bead_diameter_um is None else config.bead_diameter_um  # None: nothing states it
        self.config = replace(config, bead_diameter_um=bead_um)
        self.device = select_device(device)
        self.nominal_sources = np.asarray(sources_um_xyz, dtype=np.float64).reshape(-1, 3)
        self.camera_offset = float(camera_offset)
        self.camera_gain = float(camera_gain)
        self.saturation_level = None if saturation_level is None else int(saturation_level)
        depth = float(max(0.0, -self.nominal_sources[:, 2].min()) + 1.0)
        # implausible geometry and work that cannot fit are refused before anything large is allocated
        per_slab = slab_voxels(geometry, config.max_slab_um)
        check_memory(optics, geometry, len(self.nominal_sources), depth, self.device, method=config.method,
                     sources_um_xyz=self.nominal_sources, voxels_per_slab=per_slab)
        self._plain_model = ForwardModel.build(optics, geometry, source_depth_um=depth, bead_diameter_um=bead_um,
                                               voxels_per_slab=per_slab, device=self.device)
        self.model = self._plain_model
        self._spectral_models: list[tuple[ForwardModel, float]] | None = None
        self._band_models: list[tuple[ForwardModel, float]] | None = None
        self._pupil: PupilParameters | None = None
        self.pupil = pupil
        self.calibration: PupilCalibration | None = None  # the last pupil calibration
        self._calibrated_ahead = False  # the next cold start's frames were calibrated already (adopt_calibration)
        self.representation: Representation | None = None
        self.state: ReconState | None = None
        self._optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer] | None = None
        # 1 where a pixel carries image, 0 at hot, dead and saturated pixels (this timepoint)
        self._valid: torch.Tensor | None = None
        # pixels defective in most views of an earlier timepoint (a hot-pixel map), kept
        self._pixel_map: np.ndarray | None = None
        self._seconds_per_iteration: float | None = None
        self._finish_seconds = 0.0  # from the loop's end to the result (decode, copies to the host)
        self._window = gaussian_window(device=self.device)
        # coherence weights of the current estimate, reused across warm updates until stale
        self._coherence = CoherenceCache()
        self._compiled: tuple[str, Callable[..., torch.Tensor]] | None = None
        self.compile_failure: str | None = None

    @property
    def pupil(self) -> PupilParameters | None:
        """The detection pupil the renderer uses (None: the hard aperture), with the
        source spectrum it carries (edge, light beyond the NA) applied to :attr:`model` and
        the band's renderers."""
        return self._pupil

    @pupil.setter
    def pupil(self, value: PupilParameters | None) -> None:
        spectrum = _source_spectrum(value)
        if spectrum != _source_spectrum(self._pupil):
            self._spectral_models = None
        self._pupil = value
        self.model = with_source_edge(self._plain_model, *spectrum)

    @property
    def n_views(self) -> int:
        """Views (sources) per timepoint."""
        return len(self.nominal_sources)

    def with_config(self, **changes: Any) -> None:
        """Change settings between timepoints (e.g. from the GUI); the warm state is kept.

        Raises:
            ValueError: a change of ``bead_diameter_um`` (None keeps it) or ``max_slab_um``, which
                the renderer is built for (make a new reconstructor), or an invalid setting
                (:class:`ReconConfig`).
        """
        if "max_slab_um" in changes and changes["max_slab_um"] != self.config.max_slab_um:
            raise ValueError(
                f"The slab thickness is fixed for a reconstructor ({self.config.max_slab_um} µm; asked for "
                f"{changes['max_slab_um']} µm): its renderer is built for it. Start a new reconstruction."
            )
        if changes.get("bead_diameter_um") is None:
            changes.pop("bead_diameter_um", None)
        elif changes["bead_diameter_um"] != self.config.bead_diameter_um:
            raise ValueError(
                f"The bead diameter is fixed for a reconstructor ({self.config.bead_diameter_um} µm; asked for "
                f"{changes['bead_diameter_um']} µm): its renderer is built for it. Start a new reconstruction."
            )
        self.config = replace(self.config, **changes)

    def reset(self) -> None:
        """Forget the warm-start state: the next update is a cold start."""
        self.representation = None
        self.state = None
        self._optimizers = None

    # -- data -----------------------------------------------------------------
    def _measured(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Photo-electron images ``[V, Y, X]`` and their per-view mean (normalisation)."""
        arr = np.asarray(frames)
        expected = (self.n_views, *self.geometry.camera_shape_yx)
        if arr.shape != expected:
            raise ReconstructionError(f"Frames have shape {arr.shape}, expected {expected} (views, y, x).")
        top = None
        if np.issubdtype(arr.dtype, np.integer):
            top = np.iinfo(arr.dtype).max if self.saturation_level is None else self.saturation_level
            saturated = (arr >= top).reshape(len(arr), -1).mean(axis=1)
            worst = int(np.argmax(saturated))
            if saturated[worst] > SATURATION_LIMIT:
                raise ReconstructionError(
                    f"View {worst} is saturated ({100 * saturated[worst]:.1f} % of its pixels at {top}); "
                    "lower the exposure or the excitation power."
                )
        if not np.isfinite(arr).all():
            raise ReconstructionError("Frames contain NaN or infinite values.")
        # Hot, dead and saturated pixels carry no image: they get zero weight in every fit.
        ratio = sharpest_peak_ratio(self.optics.wavelength_um, self.optics.na, self.geometry.camera_pixel_um)
        bad = defective_pixels(arr, peak_ratio=ratio, saturation=top, known=self._pixel_map)
        self._pixel_map = np.asarray(bad.all(axis=0))
        self._valid = torch.as_tensor(~bad, dtype=torch.float32, device=self.device) if bad.any() else None
        data = torch.as_tensor(arr.astype(np.float32), device=self.device)
        data = (data - self.camera_offset) / self.camera_gain
        if self._valid is None:
            scale = data.mean(dim=(1, 2)).clamp_min(1e-6)
        else:
            scale = ((data * self._valid).sum(dim=(1, 2)) / self._valid.sum(dim=(1, 2)).clamp_min(1.0)).clamp_min(1e-6)
        return data, scale

    # -- public API ---------------------------------------------------------------
    def cold_start(self, frames: np.ndarray, callback: ProgressCallback | None = None) -> ReconResult:
        """Reconstruct one timepoint from scratch (self-calibration included).

        Out of memory, the reconstruction moves to the CPU and starts again there (the
        result's ``message`` says so); out of memory on the CPU too is a ReconstructionError.
        """
        return self._with_memory_fallback(lambda: self._cold_start(frames, callback))

    def calibrate(self, frames: np.ndarray, callback: ProgressCallback | None = None) -> PupilCalibration:
        """Calibrate the pupil and the sources on one timepoint's frames without fitting a
        volume (``nvplive calibrate REC.fdt``); later cold starts begin from this pupil.
        ``callback`` sees the calibration's evaluations (:data:`ProgressCallback`); an
        exception it raises ends the calibration and leaves the pupil as it was.

        Raises:
            ReconstructionError: for frames that cannot be used (see :meth:`cold_start`).
        """
        measured, _ = self._measured(frames)
        y, x = self.geometry.camera_coordinates_um()
        valid = None if self._valid is None else self._valid.cpu().numpy() > 0
        start = initial_sources(measured.cpu().numpy(), self.nominal_sources, y, x, valid=valid)
        return self._calibrate_pupil(measured, start, callback)

    def adopt_calibration(self, calibration: PupilCalibration) -> None:
        """Take :meth:`calibrate`'s result for the next cold start's frames, made by another
        reconstructor of the same recording and settings (a Dask client's), so that the cold
        start fits the volume from it instead of calibrating the same frames again.

        Raises:
            ReconstructionError: without ``pupil_calibration`` and ``self_calibration`` in
                the settings (the cold start would not use it).
        """
        if not (self.config.self_calibration and self.config.pupil_calibration):
            raise ReconstructionError("A pupil calibration can only be adopted with pupil calibration and self-calibration on.")
        self.calibration = calibration
        self.pupil = calibration.pupil
        self._calibrated_ahead = True

    def _calibrate_pupil(self, measured: torch.Tensor, start: np.ndarray, callback: ProgressCallback | None) -> PupilCalibration:
        """:func:`.calibration.calibrate_pupil` from ``start`` positions and the current pupil."""
        # float64: the line search of the calibration needs the precision; the emission
        # band's renderers, so that the pupil does not take up what partial coherence washes out
        valid = None if self._valid is None else self._valid > 0
        # the renderer's own source spectrum: the calibration applies the edge it fits or tests
        band = [(_in_float64(m), w) for m, w in self._band()] if self.optics.emission_fwhm_um > 0 else None
        progress = None if callback is None else _calibration_progress(callback)
        start_pupil = self.pupil
        if start_pupil is not None and not self.config.source_calibration:
            # the renderer's source spectrum, as asked
            start_pupil = start_pupil.with_default_source_spectrum()
        self.calibration = calibrate_pupil(
            _in_float64(self._plain_model), measured, start, valid=valid, start=start_pupil, band=band,
            progress=progress, source_edge=self.config.source_calibration,
        )
        self.pupil = self.calibration.pupil
        return self.calibration

    def _cold_start(self, frames: np.ndarray, callback: ProgressCallback | None) -> ReconResult:
        check_frame_size(self.geometry)  # before the pupil calibration's minutes, not after them
        cfg = self.config
        measured, scale = self._measured(frames)
        if cfg.self_calibration:
            y, x = self.geometry.camera_coordinates_um()
            valid = None if self._valid is None else self._valid.cpu().numpy() > 0
            start = initial_sources(measured.cpu().numpy(), self.nominal_sources, y, x, valid=valid)
            if cfg.pupil_calibration:
                calibration = self.calibration if self._calibrated_ahead and self.calibration is not None else (
                    self._calibrate_pupil(measured, start, callback))
                self._calibrated_ahead = False
                base_sources = torch.as_tensor(calibration.sources_um_xyz, dtype=torch.float32, device=self.device)
                b0 = torch.as_tensor(calibration.brightness, dtype=torch.float32, device=self.device)
                c0 = torch.as_tensor(calibration.background, dtype=torch.float32, device=self.device)
            else:
                base_sources = torch.as_tensor(start, dtype=torch.float32, device=self.device)
                base_sources, b0, c0 = refine_sources(
                    self.model, measured, base_sources, valid=self._valid, pupil=self._pupil_on(self.model)
                )
        else:
            base_sources = torch.as_tensor(self.nominal_sources, dtype=torch.float32, device=self.device)
            with torch.no_grad():
                unperturbed = camera_intensity(
                    self.model, homogeneous_spectrum(self.model, base_sources), pupil=self._pupil_on(self.model)
                )
            b0, c0 = fit_brightness_background(unperturbed, measured, self._valid)
        starts = cfg.depth_starts_um
        pupil = self.pupil
        best: tuple[float, ReconResult, float, _FitState] | None = None
        seconds = 0.0
        for k, dz in enumerate(starts):
            self.pupil = pupil  # every start from the calibrated pupil (the fit refines it)
            shift = torch.tensor([0.0, 0.0, dz], dtype=base_sources.dtype, device=self.device)
            result = self._fit_cold(measured, scale, base_sources + shift, b0, c0, _nth_fit(callback, k, len(starts)))
            seconds += result.seconds
            settled = settled_loss(result.losses, flagged=result.flagged)
            if best is None or settled < best[0]:
                best = (settled, result, dz, self._fit_state())
        assert best is not None
        loss, result, kept_dz, kept = best
        result.seconds = seconds  # every start's fit
        self._restore_fit(kept)
        if len(starts) > 1:
            tried = ", ".join(f"{dz:+g}" for dz in starts)
            kept_what = (f"kept {kept_dz:+g} µm, the lowest final loss ({loss:.4g})." if math.isfinite(loss)
                         else "every fit diverged, kept the first.")
            result.message = f"Fitted from {len(starts)} bead depth starts ({tried} µm); {kept_what} {result.message}".strip()
        return result

    def _fit_state(self) -> _FitState:
        return _FitState(self.representation, self.state, self._optimizers, self.pupil, self._coherence.weights,
                         self._coherence.age, self._seconds_per_iteration, self._finish_seconds)

    def _restore_fit(self, kept: _FitState) -> None:
        self.representation, self.state, self._optimizers, self.pupil = kept.representation, kept.state, kept.optimizers, kept.pupil
        self._coherence.weights, self._coherence.age = kept.coherence_weights, kept.coherence_age
        self._seconds_per_iteration, self._finish_seconds = kept.seconds_per_iteration, kept.finish_seconds

    def _fit_cold(self, measured: torch.Tensor, scale: torch.Tensor, sources: torch.Tensor, b0: torch.Tensor,
                  c0: torch.Tensor, callback: ProgressCallback | None) -> ReconResult:
        """A cold start's volume fit from a new representation, with ``sources`` ``[V, 3]`` (µm),
        brightness ``b0`` and background ``c0`` ``[V]`` as the calibration's base."""
        cfg = self.config
        torch.manual_seed(cfg.seed)  # the MLP layers' default initialisation draws from torch's global generator
        self.representation = representation_for(cfg, self.geometry.shape_zyx).to(self.device)
        self.state = ReconState(
            representation={},
            level=0,
            resolution=(),
            source_offset=torch.zeros_like(sources),
            log_brightness=torch.zeros_like(b0),
            background=torch.zeros_like(c0),
            base_sources=sources,
            base_brightness=b0.detach(),
            base_background=c0.detach(),
            pupil=self.pupil,
        )
        self._optimizers = None
        self._coherence.invalidate()  # a new estimate: recompute the coherence weights
        return self._optimise(measured, scale, StopPolicy.cold(cfg.iterations, cfg.check_every), warm=False, callback=callback)

    def warm_update(self, frames: np.ndarray, state: ReconState | None = None, callback: ProgressCallback | None = None) -> ReconResult:
        """Update from the previous timepoint's state (cold start when there is none).

        A divergent update (non-finite or exploding loss) is rolled back to the last good
        state and ``flagged``; out of memory, it falls back to the CPU like :meth:`cold_start`.
        """
        if state is not None:
            self.load_state(state)
        return self._with_memory_fallback(lambda: self._warm_update(frames, callback))

    def _warm_update(self, frames: np.ndarray, callback: ProgressCallback | None) -> ReconResult:
        if self.state is None or self.representation is None:
            return self._cold_start(frames, callback)
        check_frame_size(self.geometry)
        measured, scale = self._measured(frames)
        policy = StopPolicy.warm(self.config.warm_budget, self.config.check_every)
        return self._optimise(measured, scale, policy, warm=True, callback=callback)

    def _with_memory_fallback(self, attempt: Callable[[], ReconResult]) -> ReconResult:
        """Run ``attempt``; out of memory, free what the reconstruction holds, move to the
        CPU (the warm state with it) and run it once more from where it started (the pupil
        and the hot-pixel map the failed attempt may have updated are put back)."""
        pupil, calibration, pixel_map = self.pupil, self.calibration, self._pixel_map
        try:
            return attempt()
        except torch.OutOfMemoryError as exc:
            where = "the CPU" if self.device.type == "cpu" else str(self.device)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "allocation failed"
        # Outside the except clause: its traceback holds the failed step's tensors.
        self.pupil, self.calibration, self._pixel_map = pupil, calibration, pixel_map
        self._move_to_cpu()
        try:
            result = attempt()
        except torch.OutOfMemoryError as again:
            raise ReconstructionError(
                f"Out of memory on {where} and again on the CPU: reconstruct a smaller volume or fewer views."
            ) from again
        then = "freed its memory and ran again" if where == "the CPU" else "continued on the CPU"
        note = f"Out of memory on {where} ({reason}); the reconstruction {then}."
        result.message = f"{note} {result.message}".strip()
        return result

    def _move_to_cpu(self) -> None:
        """Release the device's tensors and rebuild the model (and the warm state) on the CPU."""
        state = None
        if self.state is not None and self.representation is not None:
            self._store_representation()
            state = _state_on(self.state, torch.device("cpu"))
        weights, age = self._coherence.weights, self._coherence.age
        self._coherence.weights = None
        self.representation, self.state, self._optimizers = None, None, None
        previous = self.device
        # the renderer is rebuilt for the same beads and slabs
        bead_um, per_slab = self._plain_model.bead_diameter_um, self._plain_model.voxels_per_slab
        self.model = self._plain_model = None  # type: ignore[assignment]
        gc.collect()
        if previous.type == "cuda":
            torch.cuda.empty_cache()
        self.device = torch.device("cpu")
        depth = float(max(0.0, -self.nominal_sources[:, 2].min()) + 1.0)
        self._plain_model = ForwardModel.build(self.optics, self.geometry, source_depth_um=depth, bead_diameter_um=bead_um,
                                               voxels_per_slab=per_slab, device=self.device)
        self.pupil = self.pupil  # the source edge onto the rebuilt model
        self._window = gaussian_window(device=self.device)
        self._spectral_models = self._band_models = None
        self._seconds_per_iteration = None
        self._finish_seconds = 0.0
        if state is not None:
            self.load_state(state)
        # the same estimate: the same weights, as old as they were
        self._coherence.weights, self._coherence.age = (None if weights is None else weights.cpu()), age

    def snapshot(self) -> ReconState:
        """A deep copy of the current warm-start state."""
        if self.state is None or self.representation is None:
            raise ReconstructionError("Nothing reconstructed yet: no state to save.")
        self._store_representation()
        return copy.deepcopy(self.state)

    def load_state(self, state: ReconState) -> None:
        """Restore a state saved by :meth:`snapshot` (e.g. from another timepoint)."""
        rep = representation_for(self.config, self.geometry.shape_zyx)
        for _ in range(state.level):
            rep.refine()
        rep.load_state_dict(state.representation)
        self.representation = rep.to(self.device)
        self._optimizers = None
        self._coherence.invalidate()
        self.state = copy.deepcopy(state)
        for name in _STATE_TENSORS:
            setattr(self.state, name, getattr(self.state, name).to(self.device))
        if state.pupil is not None:
            self.pupil = state.pupil

    def _refined_pupil(self) -> _PupilRefinement | None:
        """The calibrated pupil's fitted coefficients as parameters of the volume fit (None without one)."""
        if self.pupil is None or self.calibration is None:
            return None
        return _PupilRefinement(self.pupil, self.calibration.noll, self.config.lr_pupil_rad, self.model,
                                source=self.config.refines_source(self.pupil, self.optics.na))

    def _pupil_on(self, model: ForwardModel) -> torch.Tensor | None:
        """The current pupil on ``model``'s grid (None: the hard aperture alone)."""
        return None if self.pupil is None else pupil_on_grid(model, self.pupil)

    # -- internals --------------------------------------------------------------
    def _spent(self, start_time: float, iterations: int) -> float:
        """Seconds spent on this update: the clock on the CPU; on an accelerator an
        estimate from the previous update's rate, so that the loop never waits for it."""
        if self.device.type == "cpu" or self._seconds_per_iteration is None:
            return self.clock() - start_time
        return iterations * self._seconds_per_iteration

    def _store_representation(self) -> None:
        rep = self.representation
        assert rep is not None and self.state is not None
        self.state.representation = {k: v.detach().clone() for k, v in rep.state_dict().items()}
        self.state.level = getattr(rep, "level", 0)
        self.state.resolution = rep.resolution

    def _band(self) -> list[tuple[ForwardModel, float]]:
        """Renderers at wavelengths sampling the emission band, with their weights, with the
        renderer's own source spectrum (built once)."""
        if self._band_models is None:
            self._band_models = band_renderers(self.optics, self.geometry, COHERENCE_SAMPLES, pad_yx=self.model.pad_yx,
                                               bead_diameter_um=self._plain_model.bead_diameter_um,
                                               voxels_per_slab=self._plain_model.voxels_per_slab, device=self.device)
        return self._band_models

    def _spectral(self) -> list[tuple[ForwardModel, float]]:
        """:meth:`_band` with the pupil's source spectrum (built once per spectrum)."""
        if self._spectral_models is None:
            spectrum = _source_spectrum(self.pupil)
            self._spectral_models = [(with_source_edge(m, *spectrum), a) for m, a in self._band()]
        return self._spectral_models

    def _coherence_weights(
        self, dn: torch.Tensor, sources: torch.Tensor, brightness: torch.Tensor, background: torch.Tensor,
        measured: torch.Tensor, scale: torch.Tensor,
    ) -> torch.Tensor | None:
        """Per-pixel weights ``σ²/(σ² + d²)`` that discount the coherent model's predicted error.

        ``d`` is the difference between the coherent image of the current estimate and its
        image summed over the emission band (both normalised like the target); ``σ²`` the
        shot-noise variance of the normalised measurement. Where partial coherence washes
        out fringes the coherent model predicts, ``d ≫ σ`` and the pixel counts little;
        elsewhere the weight is ≈ 1. ``None`` without a mask or for a line source.
        """
        if not self.config.coherence_mask or self.optics.emission_fwhm_um <= 0:
            return None
        with torch.no_grad():
            coherent = render(self.model, dn, sources, brightness, background, self._pupil_on(self.model))
            band = sum(a * render(m, dn, sources, brightness, background, self._pupil_on(m)) for m, a in self._spectral())
            d2 = ((coherent - band) / scale[:, None, None]) ** 2
            variance = measured.clamp_min(1.0) / scale[:, None, None] ** 2
            return variance / (variance + d2)

    def _optimise(
        self, measured: torch.Tensor, scale: torch.Tensor, policy: StopPolicy, *, warm: bool, callback: ProgressCallback | None
    ) -> ReconResult:
        """Run one update under ``policy``: iterate, check the loss on the host every
        ``policy.check_every`` iterations (divergence, progress, refinement, plateau) and,
        under a time budget, stop before the next iteration would overrun it."""
        cfg = self.config
        rep, st = self.representation, self.state
        assert rep is not None and st is not None
        torch.manual_seed(cfg.seed)
        start_time = self.clock()
        target = measured / scale[:, None, None]
        data_range = target.amax()

        def source_parameters() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Source positions ``[V, 3]`` (µm), brightness and background ``[V]`` of the current calibration."""
            return (
                st.base_sources + st.source_offset,
                st.base_brightness * torch.exp(st.log_brightness),
                st.base_background + st.background * scale,
            )

        def current_mask() -> torch.Tensor | None:
            """The coherence weights (:class:`CoherenceCache`) × valid (not defective) pixels."""
            with torch.no_grad():
                weights = self._coherence.get(lambda: self._coherence_weights(rep(), *source_parameters(), measured, scale))
            if self._valid is not None:
                return self._valid if weights is None else weights * self._valid
            return weights

        mask = current_mask()
        # the pupil is the instrument's: refined with the cold start's volume, then kept for the warm updates
        refining = cfg.pupil_refinement and cfg.pupil_calibration and cfg.self_calibration and not warm
        refined = self._refined_pupil() if refining else None
        pupil = self._pupil_on(self.model)
        model = self.model
        calib = [st.source_offset, st.log_brightness, st.background]
        for p in calib:
            p.requires_grad_(cfg.self_calibration)
        opt, calib_opt = self._optimizers_for(rep, st, warm)
        if refined is not None:
            calib = [*calib, *refined.parameters]
        levels = len(getattr(rep, "levels", [0]))
        refine = RefineSchedule(policy.iterations, levels, warm)
        decay = LearningRateDecay(policy.iterations, cfg.lr_final_fraction, warm)
        sparsity = cfg.sparsity_for(self.pupil)
        base_rates = [{"lr": group["lr"]} for group in opt.param_groups]
        plateau_detector = PlateauDetector(cfg.plateau_rel_tol)
        guard = DivergenceGuard(cfg.divergence_factor, rep, calib)
        losses_dev: list[torch.Tensor] = []
        losses: list[float] = []
        stopped_by = "iterations"
        flagged, message = False, ""
        it = 0
        # The rate the next update plans with is measured at the final resolution: coarse
        # levels iterate faster. A refinement (at a synchronised check point) restarts it.
        rate_since, rate_it = start_time, 0

        def roll_back(why: str) -> None:
            nonlocal stopped_by, flagged, message
            guard.roll_back()
            stopped_by, flagged = "diverged", True
            message = f"{why}; rolled back to the last good state."

        for it in range(1, policy.iterations + 1):
            opt.zero_grad(set_to_none=True)
            calib_opt.zero_grad(set_to_none=True)
            if refined is not None:
                refined.zero_grad()
                pupil = refined.on(self.model)
                if refined.refining_source:
                    model = refined.model(self._plain_model)
            inputs = (model, rep, *source_parameters(), scale, target, mask, data_range, self._window, cfg.tv_weight, pupil,
                      sparsity)
            loss = self._loss_and_gradients(inputs, calib, final_resolution=getattr(rep, "level", 0) == levels - 1)
            _set_lr(opt, base_rates, decay.factor(it))
            opt.step()
            rep.project()
            if cfg.self_calibration and (warm or it > cfg.calibration_warmup):
                calib_opt.step()
                if refined is not None:
                    refined.step()
            losses_dev.append(loss.detach().clone())  # a CUDA graph's output is overwritten by its next replay
            self._coherence.tick()
            if policy.checks_at(it) or refine.scheduled(it):
                window = torch.stack(losses_dev).cpu().tolist()
                losses_dev.clear()
                losses.extend(window)
                current = float(np.mean(window))
                if guard.diverged(window):
                    roll_back(f"The loss diverged ({current:.3g}) by iteration {it}")
                    break
                guard.keep()
                if policy.seconds is None:
                    # Under a time budget the weights are refreshed only at an update's start,
                    # where their cost is counted before the iterations are planned.
                    mask = current_mask()
                if callback is not None:
                    callback(it, policy.iterations, window[-1], "fit")
                plateau = plateau_detector.update(current)
                if refine.due(it, plateau) and rep.refine():
                    rate_since, rate_it = self.clock(), it
                    opt = adam_after_refinement(opt, rep.parameter_groups(cfg.representation_lr(warm), warm))
                    base_rates = [{"lr": group["lr"]} for group in opt.param_groups]
                    guard.keep(calibration_too=False)
                    refine.refined(it)
                    decay.refined(it)
                    plateau_detector.reset()
                    continue
                if plateau and policy.stop_on_plateau:
                    stopped_by = "plateau"
                    break
            if policy.seconds is not None and time_is_up(
                self._spent(start_time, it), it, self._seconds_per_iteration, self._finish_seconds, policy.seconds
            ):
                stopped_by = "time"
                break
        if losses_dev:
            window = torch.stack(losses_dev).cpu().tolist()
            losses.extend(window)
            if not flagged and guard.diverged(window):
                roll_back(f"The loss diverged ({float(np.mean(window)):.3g}) by iteration {it}")
        loop_end = self.clock()
        loop_seconds = loop_end - start_time
        if it > rate_it:
            self._seconds_per_iteration = (loop_end - rate_since) / (it - rate_it)
        for p in calib:
            p.requires_grad_(False)
        if refined is not None:
            self.pupil = st.pupil = refined.parameters_now()
        with torch.no_grad():
            dn = rep().detach()
            if not flagged and not bool(torch.isfinite(dn).all()):
                roll_back(f"Δn became non-finite at iteration {it}")
                dn = rep().detach()
        # Adam's moments of a divergent update are poisoned: the next update starts afresh.
        self._optimizers = None if flagged else (opt, calib_opt)
        self._store_representation()
        dn_host = dn.cpu().numpy().astype(np.float32)
        sources, brightness, background = (t.detach().cpu().numpy() for t in source_parameters())
        sources_host = sources.astype(np.float64)
        seconds = self.clock() - start_time
        self._finish_seconds = seconds - loop_seconds
        return ReconResult(
            dn=dn_host,
            loss=float(losses[-1]) if losses else math.nan,
            losses=losses,
            iterations=it,
            seconds=seconds,
            sources_um_xyz=sources_host,
            brightness=brightness,
            background=background,
            stopped_by=stopped_by,
            warm=warm,
            flagged=flagged,
            message=" ".join(m for m in (message, self._compile_note()) if m),
            pupil=self.pupil,
        )

    def _optimizers_for(
        self, rep: Representation, st: ReconState, warm: bool
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """The representation's and the calibration's Adam optimisers at this update's rates.

        A warm update keeps the previous update's optimisers: Adam's moment estimates carry
        over, where a fresh Adam would take full-size first steps in every parameter and
        throw the warm state away.
        """
        cfg = self.config
        if warm and self._optimizers is not None:
            opt, calib_opt = self._optimizers
        else:
            calib_opt = torch.optim.Adam(
                [
                    {"params": [st.source_offset], "lr": cfg.lr_sources_um},
                    {"params": [st.log_brightness, st.background], "lr": cfg.lr_photometry},
                ]
            )
            opt = torch.optim.Adam(rep.parameter_groups(cfg.representation_lr(warm), warm))
        _set_lr(opt, rep.parameter_groups(cfg.representation_lr(warm), warm))
        _set_lr(calib_opt, [{"lr": cfg.lr_sources_um}, {"lr": cfg.lr_photometry}])
        return opt, calib_opt

    def _loss_and_gradients(self, inputs: tuple, calibration: list[torch.Tensor], *, final_resolution: bool) -> torch.Tensor:
        """Evaluate :func:`fit_loss` on ``inputs`` and back-propagate it: through
        ``torch.compile`` when ``compile_mode`` is set and the representation is at its
        final resolution (the shapes no longer change), eagerly otherwise or after
        compiling failed in that mode."""
        mode = self.config.compile_mode
        if self._compiled is not None and self._compiled[0] != mode:  # the mode was changed
            self._compiled, self.compile_failure = None, None
        if mode is not None and final_resolution and self.compile_failure is None:
            try:
                if self._compiled is None:
                    self._compiled = (mode, torch.compile(fit_loss, mode=mode, dynamic=False))
                loss = self._compiled[1](*inputs)
                loss.backward()
                return loss
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # a missing compiler, an unsupported operation …: run eagerly
                text = str(exc).strip()
                self._compiled = (mode, fit_loss)  # remembers the mode that failed
                self.compile_failure = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
                log.warning("torch.compile (mode %r) failed, reconstructing eagerly: %s", mode, self.compile_failure)
                representation = inputs[1]
                for p in [*representation.parameters(), *calibration]:
                    p.grad = None  # whatever a failed backward pass left
        loss = fit_loss(*inputs)
        loss.backward()
        return loss

    def _compile_note(self) -> str:
        if self.config.compile_mode is None or self.compile_failure is None:
            return ""
        return f"torch.compile failed ({self.compile_failure}); the reconstruction runs eagerly."

