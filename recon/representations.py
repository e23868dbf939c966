"""Volume representations behind one interface (docs/reconstruction.md).

Every representation is an ``nn.Module`` whose ``forward()`` returns the Δn volume
``[Z, Y, X]`` on the voxel grid, and whose ``refine()`` grows its resolution one
step (coarse-to-fine); representations without a resolution hierarchy return
``False``. ``dn_scale`` sets the output units so that unit-sized parameters map to a
typical biological Δn.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .methods import METHODS

#: Typical Δn magnitude of cells and tissue; network outputs are scaled by it.
DN_SCALE = 0.05

#: Finest NVP feature grid as a fraction of the voxel grid (z, y, x). FDT's axial
#: resolution (~λ·n/NA² ≈ 1.2 µm at NA 0.8) is ~3× coarser than its lateral one, and
#: with few views a voxel-resolution grid fits the noise and the model mismatch; a
#: coarser grid, decoded per voxel by the MLP, is the prior (benchmarks/quality.py).
NVP_END_FRACTION = (0.3, 0.5, 0.5)

#: Resolution of NVP's three axis-aligned feature planes as a fraction of the voxel
#: grid. They carry the sharp in-plane outlines (membranes, nuclei) that a coarse 3D
#: grid blurs, with ~100× fewer values than a voxel-resolution grid, so they do not
#: fit the noise of 6 views the way a fine 3D grid does (docs/reconstruction.md).
NVP_PLANE_FRACTION = 0.75


#: Learning rate of a warm update's MLP decoder relative to the representation's: between
#: timepoints the specimen changes, not the decoding, so the features do the adapting
#: (warm start to cold quality: 48 iterations against 72 at the cold factor of NVP).
WARM_DECODER_LR_FACTOR = 0.2

#: Learning rate of NVP's 3D grid relative to its feature planes'. The grid is the slow,
#: smooth part of the prior: letting it follow the images as fast as the planes do put
#: missing-cone artefacts into it (benchmark: +1.5 dB cell, +1.1 dB tissue at 6 views
#: with 0.25 and decoder 0.5 against 1.0 and 0.2; docs/reconstruction.md).
NVP_GRID_LR_FACTOR = 0.25


def _activate(raw: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    """Map raw outputs to Δn: softplus when Δn ≥ 0 is imposed, identity otherwise."""
    if nonnegative:
        return DN_SCALE * F.softplus(raw - 3.0, beta=1.0)
    return DN_SCALE * raw


class RepresentationSettings(Protocol):
    """The settings representations read, read-only (``ReconConfig`` has them)."""

    @property
    def method(self) -> str: ...  # noqa: D102

    @property
    def nonnegative(self) -> bool: ...  # noqa: D102

    @property
    def seed(self) -> int: ...  # noqa: D102

    @property
    def features(self) -> int: ...  # noqa: D102

    @property
    def hidden(self) -> int: ...  # noqa: D102

    @property
    def coarse_to_fine(self) -> bool: ...  # noqa: D102

    @property
    def feature_planes(self) -> bool: ...  # noqa: D102


class Representation(nn.Module):
    """Base class: ``forward() -> Δn [Z, Y, X]``, ``refine() -> bool``."""

    def __init__(self, shape_zyx: tuple[int, int, int], nonnegative: bool = True) -> None:
        super().__init__()
        self.shape_zyx = tuple(int(n) for n in shape_zyx)
        self.nonnegative = nonnegative

    @classmethod
    def options(cls, config: RepresentationSettings) -> dict[str, Any]:
        """The keyword arguments this representation takes from a reconstruction's settings
        (each representation adds its own; nothing branches on the method's name)."""
        return {"nonnegative": config.nonnegative}

    def refine(self) -> bool:
        """Grow the resolution one step; ``False`` when already at full resolution."""
        return False

    @property
    def resolution(self) -> tuple[int, ...]:
        """Current resolution ``(Z, Y, X)`` of the parameters (voxels; the output is always the voxel grid)."""
        return self.shape_zyx

    #: Cold-start learning rate of an MLP decoder relative to ``lr`` (representations with one).
    decoder_lr_factor = 0.2

    def parameter_groups(self, lr: float, warm: bool = False) -> list[dict]:
        """Optimizer parameter groups (representation-specific learning rates; ``warm``: for
        a warm update, whose groups are the same with other rates)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def decoder_lr(self, lr: float, warm: bool) -> float:
        """Learning rate of the decoder: its own factor cold, :data:`WARM_DECODER_LR_FACTOR` warm."""
        return (WARM_DECODER_LR_FACTOR if warm else self.decoder_lr_factor) * lr

    def project(self) -> None:
        """Map the parameters back onto their feasible set after an optimiser step (default: nothing)."""


class MLPDecoder(nn.Module):
    """The 3-layer MLP that decodes a feature vector into Δn (features on dim 0)."""

    def __init__(self, features: int, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )
        last = cast(nn.Linear, self.layers[-1])
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            last.weight.mul_(0.1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[F, Z, Y, X]`` features → ``[Z, Y, X]`` raw output.

        Evaluated channels-first (``W·h + b`` on ``[channels, voxels]``), so the features
        are never transposed into a copy.
        """
        h = features.reshape(features.shape[0], -1)
        for module in self.layers:
            h = torch.addmm(module.bias[:, None], module.weight, h) if isinstance(module, nn.Linear) else module(h)
        return h.reshape(features.shape[1:])


def _seeded_decoder(features: int, hidden: int, seed: int) -> MLPDecoder:
    """An :class:`MLPDecoder` initialised from ``seed`` alone (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPDecoder(features, hidden)


def _grid_levels(
    shape: tuple[int, ...],
    start_fraction: float | tuple[float, float, float],
    levels: int,
    end_fraction: float | tuple[float, float, float] = 1.0,
) -> list[tuple[int, ...]]:
    """Coarse-to-fine feature-grid sizes, geometric from ``start_fraction`` to ``end_fraction``
    of the voxel grid (a scalar, or one fraction per axis z, y, x)."""
    start = np.broadcast_to(np.asarray(start_fraction, dtype=float), (3,))
    end = np.broadcast_to(np.asarray(end_fraction, dtype=float), (3,))
    out = []
    for i in range(levels):
        t = i / max(levels - 1, 1)
        f = start ** (1 - t) * end**t
        out.append(tuple(max(2, int(round(n * fi))) for n, fi in zip(shape, f)))
    return out


def _interpolation_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_out, n_in]`` weights of 1D linear interpolation with ``align_corners=False``:
    exactly ``F.interpolate``'s (it is applied to the identity)."""
    eye = torch.eye(n_in, device=like.device, dtype=like.dtype)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def resample_linear(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``x`` with its trailing ``len(size)`` axes linearly resampled to ``size``.

    The same as ``F.interpolate`` (bi/trilinear, ``align_corners=False``) on those axes,
    computed one axis at a time as a small matrix product: about 5× faster forward and
    backward than ``upsample_trilinear3d`` on the CPU at NVP's sizes.
    """
    first = x.ndim - len(size)
    for axis, n_out in enumerate(size, start=first):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        weights = _interpolation_matrix(n_in, n_out, x)
        shape = list(x.shape)
        x = x.contiguous()
        if axis == x.ndim - 1:
            x = x.reshape(-1, n_in) @ weights.T
        else:
            prefix = math.prod(shape[:axis])
            x = weights @ x.reshape(prefix, n_in, -1)
        shape[axis] = n_out
        x = x.reshape(shape)
    return x


def plane_features(
    xy: torch.Tensor, xz: torch.Tensor, yz: torch.Tensor, shape_zyx: tuple[int, ...]
) -> torch.Tensor:
    """Sum of three feature planes at every voxel: ``[F, Z, Y, X]``.

    ``xy`` is ``[F, *, *]`` over (y, x), ``xz`` over (z, x), ``yz`` over (z, y); each is
    resampled to the voxel grid first.
    """
    z, y, x = shape_zyx
    return resample_linear(xy, (y, x))[:, None] + resample_linear(xz, (z, x))[:, :, None] + resample_linear(yz, (z, y))[:, :, :, None]


class NVP(Representation):
    """Neural volumetric prior: feature grid ``W ∈ R^{F×Gz×Gy×Gx}`` + 3-layer MLP.

    Features are trilinearly interpolated to voxel centres and decoded per voxel.
    Coarse-to-fine: the grid starts at ``start_fraction`` of the voxel resolution
    and ``refine()`` upsamples it (trilinear, preserving the decoded volume) through
    ``levels`` steps up to ``end_fraction`` of the voxel grid (per axis z, y, x;
    1.0 = voxel resolution). Without coarse-to-fine the grid is the finest level.

    With ``feature_planes``, three axis-aligned feature planes at ``plane_fraction``
    of the voxel resolution are added to the grid's features before decoding. They
    start at zero (the initial volume is the grid's alone) and add the fine
    in-plane detail that the coarse grid, kept coarse as the prior, cannot hold.
    """

    def __init__(
        self,
        shape_zyx: tuple[int, int, int],
        features: int = 8,
        hidden: int = 32,
        nonnegative: bool = True,
        coarse_to_fine: bool = True,
        start_fraction: float | tuple[float, float, float] = 0.25,
        levels: int = 2,
        end_fraction: float | tuple[float, float, float] = NVP_END_FRACTION,
        feature_planes: bool = True,
        plane_fraction: float | tuple[float, float, float] = NVP_PLANE_FRACTION,
        seed: int = 0,
    ) -> None:
        super().__init__(shape_zyx, nonnegative)
        finest = _grid_levels(self.shape_zyx, end_fraction, 1)
        self.levels = _grid_levels(self.shape_zyx, start_fraction, levels, end_fraction) if coarse_to_fine else finest
        self.level = 0
        gen = torch.Generator().manual_seed(seed)
        self.grid = nn.Parameter(0.01 * torch.randn(features, *self.levels[0], generator=gen))
        self.decoder = _seeded_decoder(features, hidden, seed)
        self.planes = nn.ParameterList()
        if feature_planes:
            pz, py, px = _grid_levels(self.shape_zyx, plane_fraction, 1)[0]
            self.planes.extend(nn.Parameter(torch.zeros(features, a, b)) for a, b in ((py, px), (pz, px), (pz, py)))

    @classmethod
    def options(cls, config: RepresentationSettings) -> dict[str, Any]:
        """Δn ≥ 0, seed, feature channels, MLP width, coarse-to-fine and feature planes."""
        return {
            **super().options(config), "seed": config.seed, "features": config.features, "hidden": config.hidden,
            "coarse_to_fine": config.coarse_to_fine, "feature_planes": config.feature_planes,
        }

    @property
    def resolution(self) -> tuple[int, ...]:
        """Current resolution ``(Z, Y, X)`` of the 3D feature grid."""
        return tuple(self.grid.shape[1:])

    def features(self) -> torch.Tensor:
        """Feature volume ``[F, Z, Y, X]``: the grid resampled to the voxel grid plus the feature planes."""
        grid = resample_linear(self.grid, self.shape_zyx)
        if len(self.planes):
            xy, xz, yz = self.planes
            grid = grid + plane_features(xy, xz, yz, self.shape_zyx)
        return grid

    def forward(self) -> torch.Tensor:
        """Δn ``[Z, Y, X]`` decoded from the features."""
        return _activate(self.decoder(self.features()), self.nonnegative)

    def refine(self) -> bool:
        """Move the feature grid one level finer (linear resampling); ``False`` at the finest level."""
        if self.level + 1 >= len(self.levels):
            return False
        self.level += 1
        with torch.no_grad():
            finer = resample_linear(self.grid, self.levels[self.level])
        self.grid = nn.Parameter(finer.contiguous())
        return True

    #: Cold-start learning rate of the decoder relative to ``lr`` (tuned for NVP).
    decoder_lr_factor = 0.5

    def parameter_groups(self, lr: float, warm: bool = False) -> list[dict]:
        """Grid at ``NVP_GRID_LR_FACTOR``·lr, planes at lr, decoder at its own factor."""
        return [
            {"params": [self.grid], "lr": NVP_GRID_LR_FACTOR * lr},
            {"params": list(self.planes), "lr": lr},
            {"params": list(self.decoder.parameters()), "lr": self.decoder_lr(lr, warm)},
        ]


class Explicit(Representation):
    """One Δn value per voxel (the classic explicit baseline)."""

    def __init__(self, shape_zyx: tuple[int, int, int], nonnegative: bool = True) -> None:
        super().__init__(shape_zyx, nonnegative)
        self.values = nn.Parameter(torch.zeros(self.shape_zyx))

    def forward(self) -> torch.Tensor:
        """Δn ``[Z, Y, X]``: the voxel values (clamped at 0 when Δn ≥ 0 is imposed)."""
        return self.values.clamp_min(0.0) if self.nonnegative else self.values

    def parameter_groups(self, lr: float, warm: bool = False) -> list[dict]:
        """One group: the voxel values at lr·``DN_SCALE``·2 (Δn units, not unit-sized features)."""
        return [{"params": [self.values], "lr": lr * DN_SCALE * 2.0}]

    def project(self) -> None:
        """Projected gradient for Δn ≥ 0: a clamped voxel stays at 0, where its gradient is alive again."""
        if self.nonnegative:
            with torch.no_grad():
                self.values.clamp_(min=0.0)


class Triplane(Representation):
    """Three 2D feature planes (xy, xz, yz), summed at each voxel and decoded by an MLP."""

    def __init__(
        self,
        shape_zyx: tuple[int, int, int],
        features: int = 8,
        hidden: int = 32,
        nonnegative: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(shape_zyx, nonnegative)
        z, y, x = self.shape_zyx
        gen = torch.Generator().manual_seed(seed)
        self.plane_xy = nn.Parameter(0.01 * torch.randn(features, y, x, generator=gen))
        self.plane_xz = nn.Parameter(0.01 * torch.randn(features, z, x, generator=gen))
        self.plane_yz = nn.Parameter(0.01 * torch.randn(features, z, y, generator=gen))
        self.decoder = _seeded_decoder(features, hidden, seed)

    @classmethod
    def options(cls, config: RepresentationSettings) -> dict[str, Any]:
        """Δn ≥ 0, seed, feature channels and MLP width."""
        return {**super().options(config), "seed": config.seed, "features": config.features, "hidden": config.hidden}

    def forward(self) -> torch.Tensor:
        """Δn ``[Z, Y, X]`` decoded from the summed plane features."""
        feats = plane_features(self.plane_xy, self.plane_xz, self.plane_yz, self.shape_zyx)
        return _activate(self.decoder(feats), self.nonnegative)

    #: Cold-start learning rate of the decoder relative to ``lr`` (tuned for Triplane: 0.5,
    #: NVP's value, lowered it by 0.8 dB at 6 views and 2.2 dB at 20 on the cell).
    decoder_lr_factor = 0.2

    def parameter_groups(self, lr: float, warm: bool = False) -> list[dict]:
        """Planes at lr, decoder at its own factor."""
        planes = [self.plane_xy, self.plane_xz, self.plane_yz]
        return [{"params": planes, "lr": lr}, {"params": list(self.decoder.parameters()), "lr": self.decoder_lr(lr, warm)}]


#: Method name (:data:`~nvplive.recon.methods.METHODS`, in that order) → representation.
REPRESENTATIONS: dict[str, type[Representation]] = dict(zip(METHODS, (NVP, Explicit, Triplane), strict=True))


def make_representation(method: str, shape_zyx: tuple[int, int, int], **options: Any) -> Representation:
    """Build a representation by name (:data:`~nvplive.recon.methods.METHODS`).

    Raises:
        ValueError: an unknown method.
    """
    return representation_class(method)(shape_zyx, **options)


def representation_for(config: RepresentationSettings, shape_zyx: tuple[int, int, int]) -> Representation:
    """The representation of ``config.method`` with the options it takes from ``config``
    (:meth:`Representation.options`). Raises ValueError for an unknown method."""
    cls = representation_class(config.method)
    return cls(shape_zyx, **cls.options(config))


def representation_class(method: str) -> type[Representation]:
    """The representation class of ``method`` (:data:`~nvplive.recon.methods.METHODS`).

    Raises:
        ValueError: an unknown method.
    """
    try:
        return REPRESENTATIONS[method]
    except KeyError:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.") from None


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(math.prod(p.shape) for p in module.parameters())
