"""Numerical refractive-index phantoms (Δn volumes) for simulation and benchmarks.

Three kinds of sample, all float32 ``Δn [Z, Y, X]`` (0 = the medium):

- :func:`cell` — an adherent cell: flattened body, nucleus, nucleoli, mitochondria,
  vesicles and lipid droplets (the highest Δn).
- :func:`tissue` — continuous blood vessels (hollow or filled tubes following smooth
  random curves across the volume) and sparse neurons with branching neurites.
- :class:`Cardiomyocyte` — a striated muscle cell that beats: its Δn at any time.

Every feature is sized by the physical extent of the grid (µm), so a phantom looks
the same, only more or less finely sampled, from 16×32×32 to 128×256×256 voxels.
Features smaller than the grid can show are widened to about a voxel. Edges are
anti-aliased: a voxel's value is the fraction of it inside a shape (a linear ramp
across the boundary, one voxel wide along its normal), so volumes render without
staircases. Shapes are evaluated in their bounding boxes only.

Coordinates inside this module: a voxel ``(k, j, i)`` has its centre at
``(k·dz, j·dy, i·dx)`` µm; only relative positions matter for a phantom.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from nvplive.errors import GeometryError, NvpLiveError

#: Smallest number of voxels per axis a phantom accepts.
MIN_VOXELS = 4

# ---------------------------------------------------------------------------
# grid validation
# ---------------------------------------------------------------------------


def _check_grid(shape_zyx, voxel_um_zyx) -> tuple[tuple[int, int, int], np.ndarray]:
    """Validated ``(shape, voxel)``; raises :class:`GeometryError` with one sentence."""
    try:
        shape = tuple(shape_zyx)
    except TypeError:
        raise GeometryError(f"Phantom shape must be three voxel counts (Z, Y, X), got {shape_zyx!r}.") from None
    if len(shape) != 3 or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= MIN_VOXELS for n in shape
    ):
        raise GeometryError(
            f"Phantom shape must be three integers (Z, Y, X), each at least {MIN_VOXELS}, got {shape_zyx!r}."
        )
    try:
        voxel = np.array([float(v) for v in voxel_um_zyx], dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError(f"Voxel size must be three lengths in µm (dz, dy, dx), got {voxel_um_zyx!r}.") from None
    if voxel.shape != (3,) or not np.all(np.isfinite(voxel)) or not np.all(voxel > 0):
        raise GeometryError(
            f"Voxel size must be three positive, finite lengths in µm (dz, dy, dx), got {voxel_um_zyx!r}."
        )
    return (int(shape[0]), int(shape[1]), int(shape[2])), voxel


def _check_seed(seed) -> int:
    """A valid random seed (a non-negative integer); raises :class:`NvpLiveError`."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise NvpLiveError(f"The phantom seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


# ---------------------------------------------------------------------------
# geometry primitives
# ---------------------------------------------------------------------------


def _ramp(sd: np.ndarray) -> np.ndarray:
    """Occupancy of a voxel whose centre lies ``sd`` voxels outside a boundary (box filter)."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def _box(shape, voxel, centre, half) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
    """Index box covering ``centre ± half`` (µm, zyx) plus a voxel, clipped to the grid.

    Returns the slices and the three 1D coordinate arrays (µm) of the box, or None
    when the box misses the grid.
    """
    lo = np.floor((np.asarray(centre) - np.asarray(half)) / voxel).astype(int) - 1
    hi = np.ceil((np.asarray(centre) + np.asarray(half)) / voxel).astype(int) + 2
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape)
    if np.any(hi <= lo):
        return None
    slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    coords = [np.arange(a, b, dtype=np.float32) * np.float32(d) for a, b, d in zip(lo, hi, voxel)]
    return slices, coords


def _edge_margin(voxel: np.ndarray, ext: np.ndarray) -> np.ndarray:
    """Clearance (µm, zyx) kept between a phantom and the faces of the grid: two
    voxels, less on grids too small to afford it."""
    return np.minimum(2.0 * voxel, 0.15 * ext)


def _rot_z(angle: float) -> np.ndarray:
    """Rotation by ``angle`` about z, acting on (z, y, x) vectors (columns are the body axes)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _composite(target: np.ndarray, occ: np.ndarray, value) -> None:
    """Paint ``value`` over ``target`` with coverage ``occ`` (in place): t ← t + occ·(v − t)."""
    target += occ * (np.asarray(value, dtype=np.float32) - target)


class _SmoothNoise:
    """Band-limited random field: Gaussian-weighted sum of random nodes spaced ``corr_um``.

    Separable, so it is evaluated on any box from three 1D coordinate arrays; its
    values have about unit standard deviation.
    """

    def __init__(self, rng: np.random.Generator, extent_um: np.ndarray, corr_um: float, margin_um: np.ndarray):
        self.spacing = float(corr_um)
        self.nodes = [
            np.arange(-m - 2 * corr_um, e + m + 2 * corr_um + 1e-9, corr_um) for e, m in zip(extent_um, margin_um)
        ]
        self.coef = rng.standard_normal([len(n) for n in self.nodes]).astype(np.float32)

    def _weights(self, axis: int, coords: np.ndarray) -> np.ndarray:
        w = np.exp(-0.5 * ((coords[:, None] - self.nodes[axis][None, :]) / (0.7 * self.spacing)) ** 2)
        return (w / np.sqrt(np.sum(w**2, axis=1, keepdims=True))).astype(np.float32)

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        wz, wy, wx = self._weights(0, z), self._weights(1, y), self._weights(2, x)
        field = self.coef @ wx.T  # [A, B, nx]
        field = np.einsum("jb,abx->ajx", wy, field)  # [A, ny, nx]
        return np.tensordot(wz, field, axes=(1, 0))  # [nz, ny, nx]


def _ellipsoid(
    vol: np.ndarray,
    voxel: np.ndarray,
    centre,
    semi,
    value,
    rot: np.ndarray | None = None,
    harmonics: Sequence[tuple[int, float, float]] = (),
) -> None:
    """Paint an anti-aliased ellipsoid over ``vol`` (in place).

    Args:
        centre: (z, y, x) µm. semi: semi-axes (µm) along the body axes.
        value: a number, or ``f(z, y, x) -> array`` on the box's 1D µm coordinates.
        rot: 3×3 matrix whose columns are the body axes in (z, y, x); identity if None.
        harmonics: ``(k, amplitude, phase)`` modulating the in-plane radius by
            ``1 + Σ a·cos(kθ + φ)`` (an irregular outline).
    """
    rot = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)
    semi = np.maximum(np.asarray(semi, dtype=np.float64), 1e-6)
    grow = 1.0 + sum(abs(a) for _, a, _ in harmonics)
    half = np.sqrt(((rot * semi[None, :]) ** 2).sum(axis=1)) * grow
    box = _box(vol.shape, voxel, centre, half)
    if box is None:
        return
    slices, (z, y, x) = box
    p = (
        z[:, None, None] - np.float32(centre[0]),
        y[None, :, None] - np.float32(centre[1]),
        x[None, None, :] - np.float32(centre[2]),
    )
    scaled = rot / semi[None, :]  # R_ik / a_k
    u = [sum(np.float32(scaled[i, k]) * p[i] for i in range(3)) for k in range(3)]
    r = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    r_safe = np.maximum(r, np.float32(1e-6))
    # gradient of r w.r.t. voxel indices: d_i · Σ_k R_ik u_k / (a_k r)
    grad2 = sum((np.float32(voxel[i]) * sum(np.float32(scaled[i, k]) * u[k] for k in range(3))) ** 2 for i in range(3))
    grad = np.sqrt(grad2) / r_safe
    if harmonics:  # fades out towards the poles, where the in-plane angle is undefined
        theta = np.arctan2(u[1], u[2])
        inplane = (u[1] ** 2 + u[2] ** 2) / r_safe**2
        m = 1.0 + inplane * sum(np.float32(a) * np.cos(k * theta + np.float32(ph)) for k, a, ph in harmonics)
        r = r / m
        grad = grad / m
    occ = _ramp((r - 1.0) / np.maximum(grad, np.float32(1e-6)))
    val = value(z, y, x) if callable(value) else value
    _composite(vol[slices], occ.astype(np.float32), val)


def _tube_field(shape, voxel: np.ndarray, pts: np.ndarray, radii: np.ndarray):
    """Distance field of a tube of varying radius along a polyline, evaluated near it.

    Args:
        pts: [n, 3] polyline vertices (z, y, x) µm; radii: [n] tube radius (µm) at them.

    Returns:
        ``(idx, sd, h)``: flat voxel indices, signed distance to the tube surface (µm)
        and the voxel's width along the surface normal (µm), for every voxel whose
        coverage is non-zero.
    """
    pts = np.asarray(pts, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    vmax = float(voxel.max())
    isotropic = bool(np.ptp(voxel) <= 1e-9 * vmax)
    v32 = voxel.astype(np.float32)
    seg_len = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    chunk_len = max(radii.max(), 6.0 * vmax)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    bounds = np.searchsorted(cum, np.arange(0.0, cum[-1] + chunk_len, chunk_len), side="right") - 1
    bounds = np.unique(np.clip(np.append(bounds, len(pts) - 1), 0, len(pts) - 1))
    _nz, ny, nx = shape
    out_idx, out_sd, out_h = [], [], []
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        pad = radii[s0 : s1 + 1].max() + 1.5 * vmax
        lo_c, hi_c = pts[s0 : s1 + 1].min(axis=0), pts[s0 : s1 + 1].max(axis=0)
        box = _box(shape, voxel, (lo_c + hi_c) / 2, (hi_c - lo_c) / 2 + pad)
        if box is None:
            continue
        slices, (z, y, x) = box
        z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
        sd: np.ndarray | None = None
        h: np.ndarray | None = None
        for j in range(s0, s1):  # running minimum over the chunk's segments
            a = pts[j].astype(np.float32)
            ab = (pts[j + 1] - pts[j]).astype(np.float32)
            pz, py, px = z - a[0], y - a[1], x - a[2]
            t = np.clip((pz * ab[0] + py * ab[1] + px * ab[2]) / np.float32(max(float(ab @ ab), 1e-12)), 0.0, 1.0)
            qz, qy, qx = pz - t * ab[0], py - t * ab[1], px - t * ab[2]
            d = np.sqrt(qz * qz + qy * qy + qx * qx)
            sd_j = d - (np.float32(radii[j]) + t * np.float32(radii[j + 1] - radii[j]))
            if not isotropic:
                h_j = np.sqrt((qz * v32[0]) ** 2 + (qy * v32[1]) ** 2 + (qx * v32[2]) ** 2)
                h_j /= np.maximum(d, np.float32(1e-6))
            if sd is None:
                sd = sd_j
                h = None if isotropic else h_j
            else:
                closer = sd_j < sd
                sd = np.where(closer, sd_j, sd)
                if not isotropic:
                    assert h is not None
                    h = np.where(closer, h_j, h)
        assert sd is not None  # s0 < s1: every chunk has a segment
        if isotropic:
            h = np.full(sd.shape, v32[0], np.float32)
        assert h is not None
        keep = sd < 0.5 * h
        kz, ky, kx = np.nonzero(keep)
        out_idx.append(((kz + slices[0].start) * ny + (ky + slices[1].start)) * nx + (kx + slices[2].start))
        out_sd.append(sd[keep])
        out_h.append(h[keep])
    if not out_idx:
        empty = np.zeros(0, np.float32)
        return np.zeros(0, np.int64), empty, empty
    idx, sd, h = np.concatenate(out_idx), np.concatenate(out_sd), np.concatenate(out_h)
    order = np.lexsort((sd, idx))
    idx, sd, h = idx[order], sd[order], h[order]
    first = np.ones(len(idx), bool)
    first[1:] = idx[1:] != idx[:-1]
    return idx[first], sd[first], h[first]


def _paint_tube(vol: np.ndarray, field, value: float) -> None:
    """Paint a filled tube from :func:`_tube_field` with ``value`` (in place)."""
    idx, sd, h = field
    flat = vol.reshape(-1)
    cur = flat[idx]
    _composite(cur, _ramp(sd / h), value)
    flat[idx] = cur


def _smooth_curve(rng, start, direction, length_um, step_um, bend_rad, z_range, z_wander_um=math.inf) -> np.ndarray:
    """Points (z, y, x) of a smooth random curve of ``length_um`` from ``start``.

    The in-plane heading turns smoothly by up to about ``bend_rad``; the height
    wanders smoothly by at most ``z_wander_um`` and stays inside ``z_range``.
    """
    n = max(2, int(math.ceil(length_um / step_um)) + 1)
    s = np.linspace(0.0, length_um, n)
    heading0 = math.atan2(direction[1], direction[2])
    heading = np.full(n, heading0)
    frac = s / max(length_um, 1e-9)
    for k in (1, 2, 3):
        amp = bend_rad / k * rng.uniform(-1, 1)
        heading += amp * np.sin(math.pi * k * frac + rng.uniform(0, 2 * math.pi))
    ds = np.diff(s, prepend=0.0)
    y = start[1] + np.cumsum(ds * np.sin(heading))
    x = start[2] + np.cumsum(ds * np.cos(heading))
    zc = start[0]
    room = min(max(0.0, min(zc - z_range[0], z_range[1] - zc)), z_wander_um)
    cycles = rng.uniform(0.3, 1.0)
    wave = np.sin(2 * math.pi * frac * cycles + rng.uniform(0, 2 * math.pi))
    z = zc + room * 0.8 * wave * rng.uniform(0, 1)
    z = z - (z[0] - zc)
    z = np.clip(z, z_range[0], z_range[1])
    return np.stack([z, y, x], axis=1)


def _sample_in_ellipsoid(rng, n, centre, semi, rot, shrink_um, exclude=(), tries: int = 40) -> np.ndarray:
    """Up to ``n`` random points inside an ellipsoid shrunk by ``shrink_um`` (µm),
    outside each excluded ``(centre, semi, rot, margin_um)`` ellipsoid."""
    semi_in = np.maximum(np.asarray(semi) - shrink_um, 1e-6)
    m = n * tries
    v = rng.standard_normal((m, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v *= rng.uniform(0, 1, (m, 1)) ** (1 / 3)
    pts = np.asarray(centre) + (v * semi_in) @ np.asarray(rot).T
    ok = np.ones(m, bool)
    for c, s, r, margin in exclude:
        u = ((pts - np.asarray(c)) @ np.asarray(r)) / (np.asarray(s) + margin)
        ok &= np.sum(u**2, axis=1) > 1.0
    return pts[ok][:n]


# ---------------------------------------------------------------------------
# cell
# ---------------------------------------------------------------------------


def cell(shape_zyx: tuple[int, int, int], voxel_um_zyx: tuple[float, float, float], seed: int = 0) -> np.ndarray:
    """An adherent cell, Δn float32 ``[Z, Y, X]``.

    A flattened body with an irregular outline filling most of the field of view
    (cytoplasm Δn ≈ 0.021–0.027 with texture), a nucleus (≈ 0.017, lower than the
    cytoplasm) holding 1–3 nucleoli (≈ 0.04), tubular mitochondria (≈ 0.031),
    vesicles (≈ 0.013) and small lipid droplets (0.050–0.058, the highest).
    0 outside the body.
    """
    shape, voxel = _check_grid(shape_zyx, voxel_um_zyx)
    rng = np.random.default_rng([_check_seed(seed), 101])
    ext = np.asarray(shape) * voxel
    centre = (np.asarray(shape) - 1) / 2 * voxel
    vmax = float(voxel.max())
    lat = float(min(ext[1], ext[2]))
    edge = _edge_margin(voxel, ext)
    vol = np.zeros(shape, np.float32)

    # body: in-plane rotated, flattened ellipsoid with a wavy outline, kept inside the grid
    angle = rng.uniform(0, math.pi)
    harmonics = [(k, rng.uniform(0.02, 0.06) / (k - 1), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4)]
    grow = 1 + sum(a for _, a, _ in harmonics)
    ax_, ay_ = 0.46 * ext[2] * rng.uniform(0.92, 1.0), 0.40 * ext[1] * rng.uniform(0.85, 1.0)
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    hx, hy = math.hypot(ax_ * c, ay_ * s) * grow, math.hypot(ax_ * s, ay_ * c) * grow
    fit = min(1.0, (0.5 * ext[2] - edge[2]) / hx, (0.5 * ext[1] - edge[1]) / hy)
    ax_, ay_ = ax_ * fit, ay_ * fit
    az_ = min(0.5 * ext[0] - edge[0], 0.42 * ext[0], 0.35 * min(ax_, ay_))
    body_semi = np.array([az_, ay_, ax_])
    body_rot = _rot_z(angle)
    margin = np.array([1.0, 1.0, 1.0]) * lat * 0.1
    noise = _SmoothNoise(rng, ext, corr_um=max(0.08 * lat, 2 * vmax), margin_um=margin)
    cytoplasm = lambda z, y, x: 0.024 + 0.003 * np.tanh(noise(z, y, x) / 1.5)  # noqa: E731
    _ellipsoid(vol, voxel, centre, body_semi, cytoplasm, body_rot, harmonics)

    # nucleus (placed first so that organelles avoid it, painted after them)
    nuc_rot = _rot_z(angle + rng.uniform(-0.5, 0.5))
    nuc_semi = np.array([0.6 * az_, 0.42 * ay_ * rng.uniform(0.85, 1.05), 0.40 * ax_ * rng.uniform(0.85, 1.05)])
    nuc_semi = np.maximum(nuc_semi, 2.0 * voxel)
    off = body_rot @ np.array([0.0, rng.uniform(-0.2, 0.2) * ay_, rng.uniform(-0.2, 0.2) * ax_])
    nuc_centre = centre + off

    def outside_nucleus(radius_um: float) -> list:
        return [(nuc_centre, nuc_semi, nuc_rot, radius_um + vmax)]

    # mitochondria: short, gently bent tubes lying in the cytoplasm, centred on sampled points
    r_mito = max(0.012 * lat, 0.7 * vmax)
    half_len = 0.07 * lat
    reach = half_len + 2 * r_mito
    n_mito = int(rng.integers(8, 17))
    for p0 in _sample_in_ellipsoid(rng, n_mito, centre, body_semi, body_rot, reach, outside_nucleus(reach)):
        length = 2 * half_len * rng.uniform(0.45, 1.0)
        heading = rng.uniform(0, 2 * math.pi)
        d = np.array([0.0, math.sin(heading), math.cos(heading)])
        z_range = (p0[0] - 0.3 * az_, p0[0] + 0.3 * az_)
        pts = _smooth_curve(rng, p0 - d * length / 2, d, length, max(vmax, length / 8), 0.6, z_range)
        _paint_tube(vol, _tube_field(shape, voxel, pts, np.full(len(pts), r_mito)), 0.031)

    # vesicles (lower Δn than the cytoplasm)
    r_ves = max(0.022 * lat, 1.0 * vmax)
    n_ves = int(rng.integers(8, 17))
    sites = _sample_in_ellipsoid(rng, n_ves, centre, body_semi, body_rot, 1.3 * r_ves + 2 * vmax, outside_nucleus(1.3 * r_ves))
    for p in sites:
        r = max(r_ves * rng.uniform(0.7, 1.3), 1.0 * vmax)
        _ellipsoid(vol, voxel, p, (r, r, r), rng.uniform(0.012, 0.014))

    # nucleus and nucleoli
    nucleoplasm = lambda z, y, x: 0.017 + 0.0015 * np.tanh(noise(z, y, x) / 1.5)  # noqa: E731
    _ellipsoid(vol, voxel, nuc_centre, nuc_semi, nucleoplasm, nuc_rot)
    for p in _sample_in_ellipsoid(rng, int(rng.integers(1, 4)), nuc_centre, nuc_semi * 0.6, nuc_rot, 0.0):
        r = min(ax_, ay_) * 0.4 * 0.2 * rng.uniform(0.8, 1.2)
        semi = np.maximum([min(r, 0.45 * nuc_semi[0]), r, r], 1.2 * vmax)
        _ellipsoid(vol, voxel, p, semi, rng.uniform(0.038, 0.044))

    # lipid droplets: small, the highest Δn, in the cytoplasm
    r_drop = max(0.018 * lat, 1.2 * vmax)
    n_drop = int(rng.integers(3, 9))
    sites = _sample_in_ellipsoid(rng, n_drop, centre, body_semi, body_rot, 1.2 * r_drop + 2 * vmax, outside_nucleus(1.2 * r_drop))
    for p in sites:
        r = max(r_drop * rng.uniform(0.85, 1.2), 1.2 * vmax)
        _ellipsoid(vol, voxel, p, (r, r, r), rng.uniform(0.050, 0.058))
    return vol


# ---------------------------------------------------------------------------
# tissue
# ---------------------------------------------------------------------------


def tissue(shape_zyx: tuple[int, int, int], voxel_um_zyx: tuple[float, float, float], seed: int = 0) -> np.ndarray:
    """Brain-like tissue, Δn float32 ``[Z, Y, X]`` in [0, 0.04].

    2–3 blood vessels cross the whole field of view along smooth random curves
    (some hollow: a wall Δn 0.03–0.04 around a lumen 0.005–0.008; some filled:
    0.025–0.032), some with a thinner side branch; 1–3 neurons away from the
    vessels, each a soma (0.02) with nucleus (0.014) and nucleolus (0.03) and 3–5
    thin tapering neurites (0.022) that branch. The extracellular space is the
    medium (0).
    """
    shape, voxel = _check_grid(shape_zyx, voxel_um_zyx)
    rng = np.random.default_rng([_check_seed(seed), 202])
    vessels = _tissue_vessels(rng, shape, voxel)
    neurons = _tissue_neurons(rng, shape, voxel, vessels)
    vol = np.zeros(shape, np.float32)
    _paint_vessels(vol, voxel, vessels)
    for neuron in neurons:
        _paint_neuron(vol, voxel, neuron)
    return vol


def _tissue_vessels(rng: np.random.Generator, shape, voxel: np.ndarray) -> list[dict]:
    """Random vessels crossing the field of view: polyline, radius, wall (None: filled), values."""
    ext = np.asarray(shape) * voxel
    centre = (np.asarray(shape) - 1) / 2 * voxel
    vmax = float(voxel.max())
    lat = float(min(ext[1], ext[2]))
    diag = float(math.hypot(ext[1], ext[2]))
    vessels = []
    for _ in range(int(rng.integers(2, 4))):
        radius = float(np.clip(lat * rng.uniform(0.05, 0.09), 2.5 * vmax, max(0.3 * ext[0], 2.5 * vmax)))
        z_range = (min(radius + voxel[0], centre[0]), max(ext[0] - radius - 2 * voxel[0], centre[0]))
        heading = rng.uniform(0, 2 * math.pi)
        through = centre + np.array([rng.uniform(-0.1, 0.1) * ext[0], *(rng.uniform(-0.25, 0.25, 2) * ext[1:])])
        through[0] = np.clip(through[0], *z_range)
        length = diag + 4 * radius
        d = np.array([0.0, math.sin(heading), math.cos(heading)])
        step = float(np.clip(0.4 * radius, 1.5 * vmax, 8 * vmax))
        pts = _smooth_curve(rng, through - d * length / 2, d, length * 1.15, step, 0.35, z_range)
        hollow = rng.random() < 0.6
        wall = float(np.clip(0.3 * radius, 1.5 * vmax, 0.6 * radius)) if hollow else None
        wall_value = rng.uniform(0.03, 0.04) if hollow else rng.uniform(0.025, 0.032)
        vessel = dict(points=pts, radius=radius, wall=wall, value=wall_value, lumen=rng.uniform(0.005, 0.008))
        vessels.append(vessel)
        if rng.random() < 0.5:  # a thinner side branch leaving the vessel towards the edge
            start = pts[int(rng.uniform(1 / 3, 2 / 3) * (len(pts) - 1))]
            hb = heading + rng.choice([-1, 1]) * rng.uniform(0.6, 1.1)
            rb = max(0.6 * radius, 2.0 * vmax)
            step_b = float(np.clip(0.4 * rb, 1.5 * vmax, 8 * vmax))
            bpts = _smooth_curve(rng, start, (0.0, math.sin(hb), math.cos(hb)), diag, step_b, 0.3, z_range)
            wall_b = None if wall is None else max(0.3 * rb, min(wall, 0.6 * rb))
            vessels.append(dict(vessel, points=bpts, radius=rb, wall=wall_b))
    return vessels


def _paint_vessels(vol: np.ndarray, voxel: np.ndarray, vessels: list[dict]) -> None:
    """Paint all walls (or filled tubes), then open all lumens, so junctions stay open."""
    fields = [_tube_field(vol.shape, voxel, v["points"], np.full(len(v["points"]), v["radius"])) for v in vessels]
    for f, v in zip(fields, vessels):
        _paint_tube(vol, f, v["value"])
    flat = vol.reshape(-1)
    for (idx, sd, h), v in zip(fields, vessels):
        if v["wall"] is not None:
            cur = flat[idx]
            _composite(cur, _ramp((sd + np.float32(v["wall"])) / h), v["lumen"])
            flat[idx] = cur


def _tissue_neurons(rng: np.random.Generator, shape, voxel: np.ndarray, vessels: list[dict]) -> list[dict]:
    """Random neurons placed clear of the vessels and of each other: soma and neurite polylines."""
    ext = np.asarray(shape) * voxel
    centre = (np.asarray(shape) - 1) / 2 * voxel
    vmax = float(voxel.max())
    lat = float(min(ext[1], ext[2]))
    avoid_pts = np.concatenate([v["points"][:, 1:] for v in vessels])
    avoid_r = np.concatenate([np.full(len(v["points"]), v["radius"]) for v in vessels])
    neurons = []
    for _ in range(int(rng.integers(1, 4))):
        r_soma = max(lat * rng.uniform(0.06, 0.085), 3 * vmax)
        cands = centre + np.column_stack([
            rng.uniform(-0.1, 0.1, 200) * ext[0],
            rng.uniform(-0.35, 0.35, 200) * ext[1],
            rng.uniform(-0.35, 0.35, 200) * ext[2],
        ])
        clearance = (np.linalg.norm(cands[:, None, 1:] - avoid_pts[None], axis=2) - avoid_r[None]).min(axis=1)
        ok = clearance > 1.5 * r_soma
        soma_c = cands[int(np.argmax(ok))] if ok.any() else cands[int(np.argmax(clearance))]
        avoid_pts = np.concatenate([avoid_pts, soma_c[None, 1:]])
        avoid_r = np.append(avoid_r, 2.5 * r_soma)
        z_range = (min(soma_c[0], 0.7 * vmax + voxel[0]), max(soma_c[0], ext[0] - 0.7 * vmax - 2 * voxel[0]))
        neuron = dict(
            centre=soma_c,
            semi=np.array([min(0.8 * r_soma, 0.4 * ext[0]), r_soma, r_soma * rng.uniform(0.8, 1.1)]),
            rot=_rot_z(rng.uniform(0, math.pi)),
            r_soma=r_soma,
            neurites=[],
        )
        n_prim = int(rng.integers(3, 6))
        base = rng.uniform(0, 2 * math.pi)
        r0, r1 = max(0.2 * r_soma, 1.0 * vmax), max(0.08 * r_soma, 0.6 * vmax)
        step = float(np.clip(0.5 * r0, 0.75 * vmax, 3 * vmax))
        for k in range(n_prim):
            heading = base + 2 * math.pi * k / n_prim + rng.uniform(-0.4, 0.4)
            length = lat * rng.uniform(0.3, 0.6)
            d = (0.0, math.sin(heading), math.cos(heading))
            pts = _smooth_curve(rng, soma_c, d, length, step, 0.5, z_range, r_soma)
            radii = np.linspace(r0, r1, len(pts))
            neuron["neurites"].append((pts, radii))
            for _ in range(int(rng.integers(0, 3))):
                i0 = int(rng.uniform(0.25, 0.75) * (len(pts) - 1))
                hb = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
                rb0 = max(0.75 * radii[i0], 0.6 * vmax)
                db = (0.0, math.sin(hb), math.cos(hb))
                bpts = _smooth_curve(rng, pts[i0], db, length * rng.uniform(0.3, 0.6), step, 0.5, z_range, r_soma)
                neuron["neurites"].append((bpts, np.linspace(rb0, max(0.6 * rb0, 0.6 * vmax), len(bpts))))
        neurons.append(neuron)
    return neurons


def _paint_neuron(vol: np.ndarray, voxel: np.ndarray, neuron: dict) -> None:
    """Neurites (0.022), then the soma (0.020) with its nucleus (0.014) and nucleolus (0.030)."""
    vmax = float(voxel.max())
    for pts, radii in neuron["neurites"]:
        _paint_tube(vol, _tube_field(vol.shape, voxel, pts, radii), 0.022)
    c, semi, rot, r_soma = neuron["centre"], neuron["semi"], neuron["rot"], neuron["r_soma"]
    _ellipsoid(vol, voxel, c, semi, 0.020, rot)
    _ellipsoid(vol, voxel, c, np.maximum(0.55 * semi, 1.5 * vmax), 0.014, rot)
    r_nl = max(0.15 * r_soma, 1.2 * vmax)
    _ellipsoid(vol, voxel, c + rot @ np.array([0.0, 0.15 * r_soma, 0.0]), (r_nl, r_nl, r_nl), 0.030)


# ---------------------------------------------------------------------------
# beating cardiomyocyte
# ---------------------------------------------------------------------------


class Cardiomyocyte:
    """A beating, striated heart-muscle cell; :meth:`at` gives its Δn at any time.

    The rod-shaped cell lies along x (about 78 % of the field of view long, aspect
    ≈ 3.5:1, flattened in z). Inside: myofibrils striated along the long axis
    (sarcomere period 1.8 µm, or what fits the grid: at least 4.5 voxels and at
    most a sixth of the cell), rows of mitochondria between them (one per
    sarcomere), 1–2 nuclei with nucleoli, a few lipid droplets.

    Each beat shortens the cell uniformly along x by up to ``SHORTENING`` (the
    sarcomeres shrink with it) and widens it in y and z by ``1/√λ`` so the volume is
    conserved. The twitch is a brief systole (≈ 0.12 s rise, ≈ 0.28 s relaxation at
    1 Hz; at most 20 % and 45 % of the period) followed by a resting diastole; it
    is C¹-smooth and exactly periodic in time.
    """

    #: Peak fractional shortening of the long axis.
    SHORTENING = 0.10
    #: Resting sarcomere length (µm) when the grid can show it.
    SARCOMERE_UM = 1.8

    def __init__(self, shape_zyx, voxel_um_zyx, seed: int = 0, beat_hz: float = 1.0):
        self.shape, self.voxel = _check_grid(shape_zyx, voxel_um_zyx)
        if not (isinstance(beat_hz, (int, float)) and math.isfinite(beat_hz) and beat_hz > 0):
            raise NvpLiveError(f"The beat frequency must be a positive number of Hz, got {beat_hz!r}.")
        self.beat_hz = float(beat_hz)
        self.seed = _check_seed(seed)
        rng = np.random.default_rng([self.seed, 303])
        voxel = self.voxel
        ext = np.asarray(self.shape) * voxel
        self._centre = (np.asarray(self.shape) - 1) / 2 * voxel
        vmax = float(voxel.max())
        edge = _edge_margin(voxel, ext)
        widen = 1.0 / math.sqrt(1.0 - self.SHORTENING)

        # body (material frame = resting cell): half-length a, half-width b, half-height c
        self._a = min(0.5 * ext[2] - edge[2], 0.39 * ext[2] * rng.uniform(0.95, 1.0))
        width_mod = [(k, rng.uniform(0.02, 0.05), rng.uniform(0, 2 * math.pi)) for k in (1, 2, 3)]
        self._width_mod = width_mod
        bmax_fit = (0.5 * ext[1] - edge[1]) / widen / (1 + sum(a for _, a, _ in width_mod))
        self._b = min(self._a / 3.5, bmax_fit)
        self._c = min(0.7 * self._b, (0.5 * ext[0] - edge[0]) / widen, 0.42 * ext[0] / widen)
        self._q = 4.0  # superellipse exponent: blunt ends

        # striations and myofibril lattice (material frame)
        p = self.SARCOMERE_UM
        lo, hi = 4.5 * voxel[2], 2 * self._a / 6
        self._p = float(min(max(p, lo), hi) if hi >= lo else lo)
        self._sharp = 1.5 if self._p >= 8 * voxel[2] else 0.7
        self._qy = float(max(min(1.2, 0.6 * self._b), 4 * voxel[1]))
        self._qz = float(max(min(1.2, 0.6 * self._c), 4 * voxel[0]))
        self._phase = rng.uniform(0, 2 * math.pi, 4)
        self._misalign = [  # (amplitude, lateral wavelength, phase) of the Z-line offsets
            (rng.uniform(0.06, 0.12) * self._p, rng.uniform(1.5, 3.0) * self._b, rng.uniform(0, 2 * math.pi))
            for _ in range(2)
        ]
        lat = float(min(ext[1], ext[2]))
        self._noise = _SmoothNoise(rng, ext, corr_um=max(0.06 * lat, 2 * vmax), margin_um=ext * 0.2)

        # nuclei and droplets (material frame, relative to the centre)
        n_nuc = int(rng.integers(1, 3))
        if n_nuc == 1:
            xs = [rng.uniform(-0.05, 0.05) * self._a]
        else:
            xs = [s * rng.uniform(0.28, 0.36) * self._a for s in (-1, 1)]
        self._nuclei = []
        for xn in xs:
            semi = np.maximum([0.55 * self._c, 0.45 * self._b, min(0.16 * self._a, 1.6 * self._b)], 2 * voxel)
            off = np.array([0.0, rng.uniform(-0.1, 0.1) * self._b, xn])
            nucleoli = []
            for _ in range(int(rng.integers(1, 3))):
                u = rng.uniform(-0.4, 0.4, 3) * semi
                r = max(0.22 * semi[1], 1.2 * vmax)
                nucleoli.append((off + u, np.array([min(r, 0.45 * semi[0]), r, r]), rng.uniform(0.034, 0.040)))
            self._nuclei.append((off, semi, nucleoli))
        self._droplets = []
        for _ in range(int(rng.integers(2, 6))):
            r = max(0.1 * self._b, 1.2 * vmax)
            oz = rng.uniform(-0.4, 0.4) * self._c
            oy = rng.uniform(-0.55, 0.55) * self._b
            off = np.array([oz, oy, rng.uniform(-0.8, 0.8) * self._a])
            self._droplets.append((off, np.array([min(r, 0.5 * self._c), r, r]), rng.uniform(0.045, 0.052)))

        t_period = 1.0 / self.beat_hz
        self._t_rise = min(0.12, 0.2 * t_period)
        self._t_relax = min(0.28, 0.45 * t_period)

    @property
    def period_s(self) -> float:
        """Duration of one beat (s)."""
        return 1.0 / self.beat_hz

    @property
    def peak_s(self) -> float:
        """Time after the start of each beat of maximal shortening (peak systole, s)."""
        return self._t_rise

    @property
    def sarcomere_um(self) -> float:
        """Resting striation period along the long axis (µm) on this grid."""
        return self._p

    @property
    def length_um(self) -> float:
        """Resting (diastolic) length of the cell (µm)."""
        return 2 * self._a

    def activation(self, t_s: float) -> float:
        """Twitch waveform in [0, 1] at time ``t_s`` (0 in diastole, 1 at peak systole)."""
        tau = (float(t_s) * self.beat_hz) % 1.0 * self.period_s
        if tau < self._t_rise:
            return 0.5 * (1.0 - math.cos(math.pi * tau / self._t_rise))
        if tau < self._t_rise + self._t_relax:
            return 0.5 * (1.0 + math.cos(math.pi * (tau - self._t_rise) / self._t_relax))
        return 0.0

    def shortening(self, t_s: float) -> float:
        """Fractional shortening of the long axis at ``t_s`` (0 … ``SHORTENING``)."""
        return self.SHORTENING * self.activation(t_s)

    def at(self, t_s: float) -> np.ndarray:
        """Δn float32 ``[Z, Y, X]`` at time ``t_s`` (s)."""
        if not (isinstance(t_s, (int, float, np.floating)) and math.isfinite(t_s)):
            raise NvpLiveError(f"The time must be a finite number of seconds, got {t_s!r}.")
        lam = 1.0 - self.shortening(t_s)
        w = 1.0 / math.sqrt(lam)
        voxel, c0 = self.voxel, self._centre
        vol = np.zeros(self.shape, np.float32)
        bgrow = 1 + sum(a for _, a, _ in self._width_mod)
        half = np.array([w * self._c, w * self._b * bgrow, lam * self._a])
        box = _box(self.shape, voxel, c0, half)
        if box is None:
            return vol
        slices, (z, y, x) = box
        f32 = np.float32
        # material coordinates (separable affine map)
        X = ((x - f32(c0[2])) / f32(lam))[None, None, :]
        Y = ((y - f32(c0[1])) / f32(w))[None, :, None]
        Z = ((z - f32(c0[0])) / f32(w))[:, None, None]
        a, c, q = f32(self._a), f32(self._c), self._q
        xr = X / a
        bmod = 1.0 + sum(f32(amp) * np.sin(f32(math.pi * k / 2) * xr + f32(ph)) for k, amp, ph in self._width_mod)
        bX = f32(self._b) * bmod * (1.0 - f32(0.12) * xr**2)
        rho2 = (Y / bX) ** 2 + (Z / c) ** 2
        ax4 = np.abs(xr) ** q
        r = np.maximum((ax4 + rho2 ** (q / 2)) ** (1 / q), f32(1e-6))
        rq1 = r ** (1 - q)
        gx = rq1 * np.abs(xr) ** (q - 1) * np.sign(xr) / a / f32(lam)
        gy = rq1 * rho2 ** (q / 2 - 1) * Y / bX**2 / f32(w)
        gz = rq1 * rho2 ** (q / 2 - 1) * Z / c**2 / f32(w)
        grad = np.sqrt((gx * f32(voxel[2])) ** 2 + (gy * f32(voxel[1])) ** 2 + (gz * f32(voxel[0])) ** 2)
        occ = _ramp((r - 1.0) / np.maximum(grad, f32(1e-6)))

        # interior: striated myofibrils, mitochondria rows, texture (all in material frame)
        shift = sum(f32(m) * np.sin(f32(2 * math.pi / L) * (Y + f32(0.7) * Z) + f32(ph)) for m, L, ph in self._misalign)
        phase = f32(2 * math.pi / self._p) * (X + shift)
        k = self._sharp
        stri = np.tanh(f32(k) * np.cos(phase)) / f32(math.tanh(k))
        lattice = 0.5 * (
            np.cos(f32(2 * math.pi / self._qy) * Y + f32(self._phase[0]))
            + np.cos(f32(2 * math.pi / self._qz) * Z + f32(self._phase[1]))
        )
        mito_rows = np.clip((-lattice - 0.3) / 0.4, 0.0, 1.0)
        chain = np.clip((np.cos(phase) + 0.9) / 0.3, 0.0, 1.0)  # one mitochondrion per sarcomere
        tex = np.tanh(self._noise(Z[:, 0, 0] + f32(c0[0]), Y[0, :, 0] + f32(c0[1]), X[0, 0, :] + f32(c0[2])) / 1.5)
        inside = 0.025 + 0.005 * stri + 0.0015 * tex
        inside = inside + mito_rows * chain * (f32(0.029) + 0.0015 * tex - inside)
        _composite(vol[slices], occ, inside)

        # nuclei, nucleoli, droplets: ellipsoids carried by the same deformation
        scale = np.array([w, w, lam])
        for off, semi, nucleoli in self._nuclei:
            _ellipsoid(vol, voxel, c0 + off * scale, semi * scale, 0.017)
            for o2, s2, v2 in nucleoli:
                _ellipsoid(vol, voxel, c0 + o2 * scale, s2 * scale, v2)
        for off, semi, v in self._droplets:
            _ellipsoid(vol, voxel, c0 + off * scale, semi * scale, v)
        return vol


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------


def _cell_at(shape_zyx, voxel_um_zyx, seed: int = 0, t_s: float = 0.0) -> np.ndarray:
    return cell(shape_zyx, voxel_um_zyx, seed)


def _tissue_at(shape_zyx, voxel_um_zyx, seed: int = 0, t_s: float = 0.0) -> np.ndarray:
    return tissue(shape_zyx, voxel_um_zyx, seed)


def _cardiomyocyte_at(shape_zyx, voxel_um_zyx, seed: int = 0, t_s: float = 0.0) -> np.ndarray:
    return Cardiomyocyte(shape_zyx, voxel_um_zyx, seed).at(t_s)


#: Phantom name → ``f(shape_zyx, voxel_um_zyx, seed=0, t_s=0.0) -> Δn [Z, Y, X]``
#: (static phantoms ignore ``t_s``).
PHANTOMS: dict[str, Callable[..., np.ndarray]] = {
    "cell": _cell_at,
    "tissue": _tissue_at,
    "cardiomyocyte": _cardiomyocyte_at,
}


def make_phantom(name: str, shape_zyx, voxel_um_zyx, seed: int = 0, t_s: float = 0.0) -> np.ndarray:
    """The phantom ``name`` (see :data:`PHANTOMS`) on the given grid, at time ``t_s`` (s)."""
    if name not in PHANTOMS:
        raise NvpLiveError(f"Unknown phantom {name!r}; choose one of: {', '.join(PHANTOMS)}.")
    _check_grid(shape_zyx, voxel_um_zyx)
    return PHANTOMS[name](shape_zyx, voxel_um_zyx, seed=seed, t_s=t_s)
