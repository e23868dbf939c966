"""Refusal before allocation: is a geometry plausible, and does its reconstruction fit in memory?

Two checks run before any large tensor exists (docs/reconstruction.md, "What fits"):

- :func:`check_plausible` refuses optics and geometry that no microscope has (a
  wavelength of 600 µm, a 1e308 µm voxel), which would otherwise reach the numerics
  as overflowing padding or astronomically large grids.
- :func:`check_memory` estimates the peak memory of a reconstruction (or a
  simulation) from the padded grid the forward model will use
  (:func:`physics.default_padding`, pure arithmetic) and refuses, with one sentence
  saying what would be needed, when it exceeds the device's free memory (psutil for
  the host; ``torch.cuda.mem_get_info`` for a GPU).

The estimate is a fit to measured peaks (2026-11-29, CPU, torch 2.13; shapes 8–32 ×
32–64 × 32–64, 3–7 views, every method) and errs on the high side by about 20 %:
``100 MB + 4 · V·Nz·Yp·Xp·8 B · s²/4`` (``s``, the field upsampling, in {1, 2}) plus,
for the NVP and triplane decoders, ``1.6 kB`` per voxel.
"""

from __future__ import annotations

import math

import torch

from nvplive.errors import GeometryError, ReconstructionError

from .optics import Optics, VolumeGeometry
from .physics import default_padding

#: Emission wavelengths (µm) of fluorescence microscopy, with room on both sides.
WAVELENGTH_RANGE_UM = (0.2, 2.0)
#: Refractive indices of immersion and embedding media (air to high-index oils).
N_MEDIUM_RANGE = (1.0, 2.5)
#: Largest extent of a volume, a focal-plane height or a source coordinate (µm): 10 mm.
MAX_EXTENT_UM = 1.0e4
#: Voxels finer than λ/(this·n) resolve nothing more and only cost memory.
_FINEST_VOXEL = 40.0
#: Axial voxels coarser than this many wavelengths are not a tomographic volume.
_COARSEST_DZ_WAVELENGTHS = 20.0

_OVERHEAD_BYTES = 100 * 2**20
_FIELD_COPIES = 4
_DECODER_BYTES_PER_VOXEL = 1600


def check_plausible(optics: Optics, geometry: VolumeGeometry, sources_um_xyz=None) -> None:
    """Refuse optics and sampling that no microscope has; GeometryError with one sentence.

    Args:
        optics, geometry: the experiment.
        sources_um_xyz: optional ``[V, 3]`` source positions (µm).

    Raises:
        GeometryError: wavelength outside 0.2–2 µm, medium index outside 1–2.5, a voxel
            finer than λ/(40·n) or an axial voxel coarser than 20 λ, an extent, focal
            plane or source coordinate beyond 10 mm, or sampling too coarse for the NA
            (:meth:`VolumeGeometry.check_sampling`).
    """
    lam, n = optics.wavelength_um, optics.n_medium
    low, high = WAVELENGTH_RANGE_UM
    if not low <= lam <= high:
        raise GeometryError(
            f"Optics: a wavelength of {lam:g} µm is not an optical emission wavelength; expected {low:g}–{high:g} µm "
            "(e.g. 0.6 for red fluorescence)."
        )
    low, high = N_MEDIUM_RANGE
    if not low <= n <= high:
        raise GeometryError(f"Optics: a medium index of {n:g} is implausible; expected {low:g}–{high:g} (water 1.33, oil 1.52).")
    finest = lam / (_FINEST_VOXEL * n)
    for axis, d, size in zip("zyx", geometry.voxel_um_zyx, geometry.shape_zyx):
        extent = d * size
        if not (math.isfinite(extent) and extent <= MAX_EXTENT_UM):
            raise GeometryError(
                f"Volume: the {axis} extent {size} × {d:g} µm exceeds {MAX_EXTENT_UM / 1000:g} mm; check the voxel size "
                "and shape."
            )
        if d < finest:
            raise GeometryError(
                f"Volume: a {axis} voxel of {d:g} µm is finer than λ/(40·n) = {finest:.3g} µm and resolves nothing more; "
                "use a coarser voxel."
            )
    dz = geometry.voxel_um_zyx[0]
    if dz > _COARSEST_DZ_WAVELENGTHS * lam:
        raise GeometryError(
            f"Volume: an axial voxel of {dz:g} µm is more than {_COARSEST_DZ_WAVELENGTHS:g} wavelengths; use at most "
            f"{_COARSEST_DZ_WAVELENGTHS * lam:g} µm."
        )
    if geometry.focal_plane_z_um is not None and abs(geometry.focal_plane_z_um) > MAX_EXTENT_UM:
        raise GeometryError(f"Volume: a focal plane at {geometry.focal_plane_z_um:g} µm is beyond 10 mm of the volume.")
    if sources_um_xyz is not None:
        for v, xyz in enumerate(sources_um_xyz):
            if not all(math.isfinite(float(c)) and abs(float(c)) <= MAX_EXTENT_UM for c in xyz):
                raise GeometryError(f"Sources: view {v} at {list(map(float, xyz))} µm is beyond 10 mm of the volume.")
    geometry.check_sampling(optics)


def padded_shape_yx(optics: Optics, geometry: VolumeGeometry, source_depth_um: float) -> tuple[int, int]:
    """The lateral grid (Yp, Xp) that :meth:`physics.ForwardModel.build` will use, without allocating it."""
    pad_y, pad_x = default_padding(optics, geometry, source_depth_um)
    return geometry.shape_zyx[1] + 2 * pad_y, geometry.shape_zyx[2] + 2 * pad_x


def estimated_bytes(optics: Optics, geometry: VolumeGeometry, n_views: int, source_depth_um: float, *,
                    method: str | None, voxels_per_slab: int = 1) -> int:
    """Peak memory (bytes) of a reconstruction with ``method`` (None: a simulation/rendering without
    gradients) whose renderer steps ``voxels_per_slab`` voxels at a time (a field per slab and view)."""
    yp, xp = padded_shape_yx(optics, geometry, source_depth_um)
    upsample = geometry.check_sampling(optics)
    slabs = max(1, geometry.shape_zyx[0] // voxels_per_slab)
    field = n_views * slabs * yp * xp * 8 * upsample**2 / 4
    if method is None:
        return int(_OVERHEAD_BYTES + field)
    decoder = _DECODER_BYTES_PER_VOXEL * math.prod(geometry.shape_zyx) if method in ("nvp", "triplane") else 0
    return int(_OVERHEAD_BYTES + _FIELD_COPIES * field + decoder)


def free_bytes(device: torch.device | str) -> int:
    """Memory free for new tensors on ``device`` (bytes): the host's available memory, or a GPU's free
    memory plus what torch has cached but not used."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
    import psutil

    return int(psutil.virtual_memory().available)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_memory(optics: Optics, geometry: VolumeGeometry, n_views: int, source_depth_um: float,
                 device: torch.device | str, *, method: str | None, what: str = "Reconstructing",
                 sources_um_xyz=None, voxels_per_slab: int = 1) -> int:
    """Refuse work that cannot fit in ``device``'s free memory; returns the estimate (bytes).

    Runs :func:`check_plausible` first. On a GPU the host's memory counts too (the
    reconstruction falls back to the CPU when the GPU runs out).

    Raises:
        GeometryError: implausible optics or sampling.
        ReconstructionError: the estimate exceeds the free memory (one sentence with both figures).
    """
    check_plausible(optics, geometry, sources_um_xyz)
    need = estimated_bytes(optics, geometry, n_views, source_depth_um, method=method, voxels_per_slab=voxels_per_slab)
    device = torch.device(device)
    free = free_bytes(device)
    where = "on the GPU" if device.type == "cuda" else "in the computer's memory"
    if device.type == "cuda":
        free = max(free, free_bytes("cpu"))
        where = "on the GPU or in the computer's memory"
    if need > free:
        yp, xp = padded_shape_yx(optics, geometry, source_depth_um)
        nz, ny, nx = geometry.shape_zyx
        raise ReconstructionError(
            f"{what} {nz}×{ny}×{nx} voxels with {n_views} views needs about {_gb(need)} (a padded {yp}×{xp} field per "
            f"slab and view), but only {_gb(free)} is free {where}; use fewer slices, a smaller field or fewer views."
        )
    return need
