"""A straightforward multi-slice renderer, the speed benchmark's reference.

Same physics and conventions as :mod:`nvplive.recon.physics`, written the way a
first implementation usually is: one view at a time, every kernel (frequency
grids, kz, propagators, pupil, source band) rebuilt on each call, no fused or
precomputed transmission. The speed benchmark checks that it produces the same
images as the optimised renderer before timing both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.physics import absorbing_window, band_edge, exit_padding, live_half_width_um, source_band_limits
from nvplive.recon.pupil import aperture


def render_reference(
    optics: Optics, geometry: VolumeGeometry, pad_yx: tuple[int, int], dn: torch.Tensor, sources_xyz: torch.Tensor
) -> torch.Tensor:
    """Camera images ``[V, Yc, Xc]`` (b = 1, c = 0), one view at a time."""
    return torch.stack([_one_view(optics, geometry, pad_yx, dn, s) for s in sources_xyz])


def _one_view(optics: Optics, geometry: VolumeGeometry, pad_yx, dn: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    nz, ny, nx = geometry.shape_zyx
    dz, dy, dx = geometry.voxel_um_zyx
    py, px = pad_yx
    yp, xp = ny + 2 * py, nx + 2 * px
    dev = dn.device
    ky = 2 * math.pi * torch.fft.fftfreq(yp, d=dy, device=dev, dtype=torch.float64)[:, None]
    kx = 2 * math.pi * torch.fft.fftfreq(xp, d=dx, device=dev, dtype=torch.float64)[None, :]
    k0, km = optics.k0, optics.km
    kz2 = km**2 - kx**2 - ky**2
    kz = torch.sqrt(torch.clamp(kz2, min=0))
    kperp = torch.sqrt(kx**2 + ky**2)
    k_in, k_cut = source_band_limits(optics, geometry)
    band = band_edge(kperp, k_cut, k_in) * (kz2 > 0)
    xs = source[0].double() + 0.5 * xp * dx
    ys = source[1].double() + 0.5 * yp * dy
    zs = source[2].double()
    z0 = 0.5 * dz
    phase = -(kx * xs + ky * ys) + kz * (z0 - zs)
    amp = band * (2 * math.pi / (dx * dy)) / torch.where(band > 0, kz, torch.ones_like(kz))
    field = torch.fft.ifft2(1j * amp * torch.exp(1j * phase))
    live_y, live_x = live_half_width_um(optics, geometry)
    wy = absorbing_window(yp, live_y / dy, device=dev, dtype=torch.float64) if py else torch.ones(yp, device=dev, dtype=torch.float64)
    wx = absorbing_window(xp, live_x / dx, device=dev, dtype=torch.float64) if px else torch.ones(xp, device=dev, dtype=torch.float64)
    absorber = wy[:, None] * wx[None, :]
    dn_pad = F.pad(dn.double(), (px, px, py, py))
    for k in range(nz):
        if k * dz >= float(zs):
            field = field * torch.exp(1j * k0 * dz * dn_pad[k]) * absorber
        if k < nz - 1:
            field = torch.fft.ifft2(torch.fft.fft2(field) * torch.exp(1j * kz * dz) * (kz2 > 0))
    exit_d = geometry.focal_z_um - (nz - 0.5) * dz
    ey_pad, ex_pad = exit_padding((yp, xp)) if (py or px) else (0, 0)
    field = F.pad(field, (ex_pad, ex_pad, ey_pad, ey_pad))
    yp, xp, py, px = yp + 2 * ey_pad, xp + 2 * ex_pad, py + ey_pad, px + ex_pad
    ky = 2 * math.pi * torch.fft.fftfreq(yp, d=dy, device=dev, dtype=torch.float64)[:, None]
    kx = 2 * math.pi * torch.fft.fftfreq(xp, d=dx, device=dev, dtype=torch.float64)[None, :]
    kz2 = km**2 - kx**2 - ky**2
    kz = torch.sqrt(torch.clamp(kz2, min=0))
    pupil = aperture(ky, kx, k0, optics.na)
    spectrum = torch.fft.fft2(field) * torch.exp(1j * kz * exit_d) * (kz2 > 0) * pupil
    s = geometry.check_sampling(optics)
    if s > 1:
        shift = -(s - 1) / (2 * s)
        spectrum = spectrum * torch.exp(1j * (kx * dx + ky * dy) * shift)
        shifted = torch.fft.fftshift(spectrum)
        ey, ex = (s - 1) * yp, (s - 1) * xp
        big = F.pad(shifted, (ex // 2, ex - ex // 2, ey // 2, ey - ey // 2))
        fine = torch.fft.ifft2(torch.fft.ifftshift(big)) * s * s
    else:
        fine = torch.fft.ifft2(spectrum)
    # each sample's sub-pixel integrated (the box's sinc) on the whole periodic grid, then cropped
    fy = torch.fft.fftfreq(fine.shape[0], d=dy / s, device=dev, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(fine.shape[1], d=dx / s, device=dev, dtype=torch.float64)[None, :]
    box = torch.sinc(fy * dy / s) * torch.sinc(fx * dx / s)
    intensity = torch.fft.ifft2(torch.fft.fft2(fine.abs() ** 2) * box).real
    intensity = intensity[s * py : s * (py + ny), s * px : s * (px + nx)]
    b = s * geometry.camera_binning
    return F.avg_pool2d(intensity[None, None], b)[0, 0].to(dn.dtype)
