"""OME metadata, built in one place, and the Δn stack export (docs/format.md).

:func:`ome_metadata` is the one description of an image that both the recording's TIFFs
(:func:`ome_xml`, installed when a recording closes) and an exported Δn stack
(:func:`export_dn_stack`, written by ``tifffile.imwrite``) carry: name, description,
physical pixel sizes in µm, channel names and the time increment in s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from nvplive import __version__


def ome_metadata(
    *,
    name: str,
    axes: str,
    pixel_um_zyx: Sequence[float],
    description: str,
    channel_names: Sequence[str] | None = None,
    time_increment_s: float | None = None,
) -> dict[str, Any]:
    """OME image metadata as tifffile takes it (``OmeXml.addimage`` or ``imwrite(metadata=)``).

    Args:
        name: the image's name.
        axes: tifffile axes of the stored array (``TCYX``, ``TZYX``, ``ZYX`` …).
        pixel_um_zyx: pixel size (µm): ``(dz, dy, dx)``, or ``(dy, dx)`` for images without Z.
        description: free text (the recording stores JSON there).
        channel_names: one name per channel (``C``), or None.
        time_increment_s: time between timepoints (s), or None when unknown.
    """
    metadata: dict[str, Any] = {
        "Name": name,
        "Description": description,
        "PhysicalSizeX": float(pixel_um_zyx[-1]),
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": float(pixel_um_zyx[-2]),
        "PhysicalSizeYUnit": "µm",
    }
    if "Z" in axes:
        metadata.update(PhysicalSizeZ=float(pixel_um_zyx[0]), PhysicalSizeZUnit="µm")
    if channel_names is not None:
        metadata["Channel"] = {"Name": list(channel_names)}
    if time_increment_s is not None:
        metadata.update(TimeIncrement=float(time_increment_s), TimeIncrementUnit="s")
    return metadata


def ome_xml(
    *,
    dtype: str,
    shape: tuple[int, ...],
    axes: str,
    name: str,
    pixel_um_zyx: Sequence[float],
    description: str,
    channel_names: Sequence[str] | None = None,
    time_increment_s: float | None = None,
) -> bytes:
    """OME-XML (ASCII, character references) for one image of ``dtype`` and ``shape`` stored
    as consecutive 2D pages; the other arguments as :func:`ome_metadata`'s."""
    metadata = ome_metadata(
        name=name, axes=axes, pixel_um_zyx=pixel_um_zyx, description=description,
        channel_names=channel_names, time_increment_s=time_increment_s,
    )
    pages = int(np.prod(shape[:-2]))
    ome = tifffile.OmeXml(Creator=f"nvp-live {__version__}")
    ome.addimage(dtype, shape, (pages, 1, 1, shape[-2], shape[-1], 1), axes=axes, **metadata)
    return ome.tostring(declaration=True).encode("ascii", "xmlcharrefreplace")


def export_dn_stack(
    path: str | Path,
    dn: np.ndarray,
    voxel_um_zyx: Sequence[float],
    *,
    n_medium: float,
    interval_s: float | None = None,
    timepoints: Sequence[int] | None = None,
    name: str = "delta_n",
    description: str = "",
) -> Path:
    """Write Δn as an OME-TIFF with physical voxel sizes (µm); returns the file written.

    Args:
        path: output file (``.ome.tif`` is appended when missing).
        dn: float Δn, ``[Z, Y, X]`` or ``[T, Z, Y, X]``.
        voxel_um_zyx: voxel size (dz, dy, dx) in µm.
        n_medium: refractive index of the medium (RI = n_medium + Δn), stored in the description.
        interval_s: time between timepoints (s), stored as the OME time increment.
        timepoints: the recording's timepoint of each stack (stored in the description).
        name: the image's name; description: more text for its description.

    Raises:
        ValueError: ``dn`` is neither 3D nor 4D.
    """
    path = Path(path)
    if not path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        path = path.with_name(path.name.removesuffix(".tif").removesuffix(".tiff") + ".ome.tif")
    data = np.ascontiguousarray(np.asarray(dn).real, dtype=np.float32)
    if data.ndim not in (3, 4):
        raise ValueError(f"Δn must be [Z, Y, X] or [T, Z, Y, X], got shape {data.shape}")
    text = f"Refractive-index contrast Δn; RI = {float(n_medium):.6f} + Δn."
    if timepoints is not None:
        text += f" Timepoints: {', '.join(str(int(t)) for t in timepoints)}."
    if description:
        text += " " + description
    axes = "TZYX" if data.ndim == 4 else "ZYX"
    increment = float(interval_s) if data.ndim == 4 and interval_s is not None and interval_s > 0 else None
    metadata = ome_metadata(
        name=name, axes=axes, pixel_um_zyx=voxel_um_zyx, description=text, channel_names=["delta_n"], time_increment_s=increment
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={"axes": axes, **metadata})
    return path
