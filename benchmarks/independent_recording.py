#!/usr/bin/env python
"""Independent simulator of fluorescence diffraction tomography (FDT) recordings.

Written from the physics, by a separate author who did not read ``recon/``, for testing
nvp-live's reconstruction on data its own renderer did not make (issue 13; results in
BENCHMARKS.md, "Independent recordings"). Only nvp-live's *file format* is used
(RecordingWriter and the metadata dataclasses); all wave optics below is plain numpy/scipy,
and it must stay so: do not import ``nvplive.recon.physics`` or the simulator here.

Run: ``python -m nvplive.benchmarks.independent_recording OUT.fdt --specimen disc_cell
--variant A`` (about a minute per recording on one core), then ``nvplive reconstruct OUT.fdt``
and score the volume against the recording's ground truth.

Conventions (nvp-live DESIGN.md §1): lengths in µm, arrays [z, y, x]; lateral origin at the
centre of the field, x_j = (j - Nx/2)·dx (voxel/pixel centres); axial origin at the
volume's bottom face, slab k spans [k·dz, (k+1)·dz]; light travels toward +z, beads sit
below the volume (z < 0); the camera focus is the volume's centre plane z_f = Nz·dz/2;
frames are indexed like the volume ([y, x], no image inversion).

Model per view (one bead = one point source), coherent per wavelength and sub-source:
  1. bead field at the first plane it enters (z0 = 0, or the sub-plane just above a bead
     inside the volume) from its Weyl angular spectrum (i/2π)·exp(i·kz·(z0 - zs))/kz,
     band-limited (variant A: to 0.98·n_medium with a narrow cosine edge; B: to NA);
  2. split-step multi-slice, 2 sub-steps per voxel: E <- P_{dz/2}{exp(i·k0·Δn·dz/2)·E},
     Δn sampled at the sub-plane (finer than the ground-truth voxels), on a laterally
     padded grid with a smooth absorbing edge applied after every sub-step;
  3. refocus from the top face to z_f, detection pupil (hard NA aperture; variant A adds
     apodisation 1 - 0.12ρ² and Noll Zernikes Z11 = 0.3, Z6 = 0.15, Z8 = 0.1 rad);
  4. field evaluated by an exact band-limited DFT at 2×2 points per camera pixel,
     |E|² averaged over the pixel (pixel integration by the 2-point midpoint rule per axis,
     cos(πfΔ/2) where the exact mean is sinc(fΔ): about 0.4 % L2 from nvp-live's exact
     integral on these discs; kept as is so the recordings stay the ones measured);
  5. incoherent sum over 5 emission wavelengths (Gaussian band, FWHM 30 nm) and 4 sub-sources
     filling a 0.2 µm bead; Poisson noise at ~3000 e-/pixel mean, offset 100, gain 1, uint16.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
import argparse
import math

import numpy as np
import scipy.fft as sfft

# ---------------------------------------------------------------- issue geometry ----
NZ, NY, NX = 32, 64, 64
DZ, DY, DX = 0.5, 0.16, 0.16
LAM0, N_MED, NA = 0.52, 1.333, 0.8
Z_TOP = NZ * DZ                  # top face of the volume (µm)
Z_FOCUS = Z_TOP / 2              # camera focus: the volume's centre plane
SUB = 2                          # multi-slice sub-steps per voxel
NSUB = NZ * SUB
DZS = DZ / SUB
PAD = 224                        # lateral zero padding per side (pixels), 3.5 fields
MARGIN = 64                      # width of the absorbing edge inside the padding (pixels)
EMBED = 3                        # zero-embedding factor of the top-face field before refocus
FWHM = 0.03                      # emission band FWHM (µm)
WAVELENGTHS = np.array([0.50, 0.51, 0.52, 0.53, 0.54])
WEIGHTS = np.exp(-4 * math.log(2) * ((WAVELENGTHS - LAM0) / FWHM) ** 2)
WEIGHTS /= WEIGHTS.sum()
BEAD_DIAMETER = 0.2
TARGET_MEAN_E = 3000.0           # mean background-free signal (photo-electrons / pixel)
OFFSET, GAIN = 100.0, 1.0
ABERRATIONS_A = {11: 0.3, 6: 0.15, 8: 0.1}   # Noll index -> rad at λ0
APODISATION_A = -0.12                         # A(ρ) = 1 + a·ρ²
C64 = np.complex64


def nominal_sources():
    """[x, y, z] of the 7 beads: one 3 µm below the centre, six on a 2.5 µm ring at 2/3/4 µm."""
    src = [[0.0, 0.0, -3.0]]
    for i in range(6):
        a = i * math.pi / 3
        src.append([2.5 * math.cos(a), 2.5 * math.sin(a), -(2.0, 3.0, 4.0)[i % 3]])
    return np.round(np.array(src), 9)


def bead_subsources(centre, rng, n=4):
    """N incoherent points filling a bead: a randomly rotated tetrahedron whose RMS radius
    equals that of a uniform ball of diameter BEAD_DIAMETER (sqrt(3/5)·R)."""
    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / math.sqrt(3)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return centre + (tet[:n] @ q.T) * math.sqrt(0.6) * BEAD_DIAMETER / 2


def raised_cos(k, k_in, k_cut):
    """1 below k_in, a cosine down to 0 at k_cut, 0 beyond."""
    t = np.clip((k - k_in) / (k_cut - k_in), 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def zernike_noll(j, rho, th):
    """The few Noll-normalised Zernike polynomials we need (RMS 1 on the unit disc)."""
    table = {
        4: lambda: math.sqrt(3) * (2 * rho**2 - 1),
        5: lambda: math.sqrt(6) * rho**2 * np.sin(2 * th),
        6: lambda: math.sqrt(6) * rho**2 * np.cos(2 * th),
        7: lambda: math.sqrt(8) * (3 * rho**3 - 2 * rho) * np.sin(th),
        8: lambda: math.sqrt(8) * (3 * rho**3 - 2 * rho) * np.cos(th),
        11: lambda: math.sqrt(5) * (6 * rho**4 - 6 * rho**2 + 1),
    }
    return table[j]()


class Grid:
    """Padded lateral computational grid (square, DX spacing, origin at index n/2)."""

    def __init__(self, pad=PAD, margin=MARGIN):
        self.pad, self.n, self.margin = pad, NX + 2 * pad, margin
        self.x_origin = (self.n // 2) * DX               # index 0 sits at x = -x_origin
        self.k1 = 2 * np.pi * sfft.fftfreq(self.n, DX)
        self.kx, self.ky = self.k1[None, :], self.k1[:, None]
        self.kperp = np.hypot(self.kx, self.ky)
        self.theta = np.arctan2(self.ky, self.kx)
        # Absorbing edge: 1 inside, Gaussian roll-off over the outer `margin` pixels (applied
        # after every sub-step, so it is gentle: 0.14 at the very edge per application).
        m = margin
        d = np.minimum(np.arange(self.n), np.arange(self.n)[::-1]).astype(float)
        w = np.exp(-2.0 * (np.clip(m - d, 0, None) / m) ** 2)
        self.window = (w[:, None] * w[None, :]).astype(np.float32)
        self.vol = slice(pad, pad + NX)                  # where the volume sits laterally

    def kz(self, k0):
        """Axial wavenumber sqrt(km² − k⊥²) where propagating, 0 elsewhere."""
        km = k0 * N_MED
        prop = self.kperp < km
        return np.sqrt(np.where(prop, km**2 - self.kperp**2, 1.0)), prop

    def source_spectrum(self, k0, srcs, z0, variant):
        """Weyl spectrum of point sources srcs (B,3) on the plane z0 ≥ zs, as coefficients S
        with E(x) = Σ_k S(k)·exp(i k·(x + x_origin))."""
        kz, prop = self.kz(k0)
        if variant == "A":   # wide: to 0.98·n, narrow edge just where 1/kz would blow up
            band = raised_cos(self.kperp, 0.96 * k0 * N_MED, 0.98 * k0 * N_MED)
        else:                # narrow edge at the detection NA
            band = raised_cos(self.kperp, 0.97 * k0 * NA, k0 * NA)
        amp = np.where(prop, band / kz, 0.0) * (1j / (2 * np.pi)) * (self.k1[1] ** 2)
        out = np.empty((len(srcs), self.n, self.n), C64)
        for b, (xs, ys, zs) in enumerate(srcs):
            ph = self.kx * (xs + self.x_origin) + self.ky * (ys + self.x_origin)
            out[b] = amp * np.exp(1j * (kz * (z0 - zs) - ph))
        return out

    def pupil(self, k0, variant):
        """The detection pupil of ``variant`` on this grid (hard aperture; A: apodised and aberrated)."""
        rho = self.kperp / (k0 * NA)
        p = (rho <= 1.0).astype(complex)
        if variant == "A":
            lam = 2 * np.pi / k0
            phase = sum(c * zernike_noll(j, rho, self.theta) for j, c in ABERRATIONS_A.items())
            p *= (1 + APODISATION_A * rho**2) * np.exp(1j * (LAM0 / lam) * phase)  # fixed OPD
        return p

    def evaluate(self, spec, k0, cam):
        """Camera intensity: field at 2×2 points per pixel (x_j ± dx/4), |E|² averaged.
        The field is band-limited to k0·NA, so a DFT over the frequencies in the pupil's
        bounding box evaluates it exactly at arbitrary points (no FFT upsampling needed)."""
        idx = np.nonzero(np.abs(self.k1) <= k0 * NA + 1e-9)[0]
        kk = self.k1[idx]
        xc = (np.arange(cam) - cam // 2) * DX
        xs = np.stack([xc - DX / 4, xc + DX / 4], 1).ravel()          # (2·cam,)
        A = np.exp(1j * (xs[:, None] + self.x_origin) * kk[None, :]).astype(C64)
        sub = spec[:, idx][:, :, idx]
        field = A[None] @ sub @ A.T[None]                              # (B, 2cam, 2cam) [y, x]
        inten = np.abs(field) ** 2
        return inten.reshape(len(spec), cam, 2, cam, 2).mean(axis=(2, 4))


def fft2(a):
    """2D FFT over the last two axes."""
    return sfft.fft2(a, axes=(-2, -1), workers=1)


def ifft2(a):
    """2D inverse FFT over the last two axes."""
    return sfft.ifft2(a, axes=(-2, -1), workers=1)


def image_sources(grid, lam, dn_sub, srcs, variant, cam=NX, return_spectrum=False):
    """Coherent camera intensities of point sources srcs (B,3) at one wavelength.
    dn_sub: Δn on the NSUB sub-planes [NSUB, NY, NX] or None (homogeneous medium)."""
    k0 = 2 * np.pi / lam
    n = grid.n
    kz, prop = grid.kz(k0)
    H = np.where(prop, np.exp(1j * kz * DZS), 0).astype(C64)
    trans = None if dn_sub is None else np.exp(1j * k0 * dn_sub * DZS).astype(C64)
    starts = np.maximum(0, np.ceil(srcs[:, 2] / DZS - 1e-9)).astype(int)  # first sub-plane
    top = np.empty((len(srcs), n, n), C64)
    for s0 in np.unique(starts):
        sel = np.nonzero(starts == s0)[0]
        E = ifft2(grid.source_spectrum(k0, srcs[sel], s0 * DZS, variant)) * (n * n)
        E *= grid.window
        for s in range(s0, NSUB):                          # sub-plane s spans [s, s+1]·DZS
            if trans is not None:
                E[:, grid.vol, grid.vol] *= trans[s]
            E = ifft2(fft2(E) * H)
            E *= grid.window
        top[sel] = E
    # The field at the top face is confined to the grid's non-absorbing interior. Before the
    # refocus and the hard pupil (whose image-plane tails decay slowly and would alias on a
    # periodic grid) it is zero-embedded in a grid EMBED times wider: finer k sampling.
    big = Grid(grid.pad + (EMBED - 1) * n // 2, grid.margin) if EMBED > 1 else grid
    kzb, propb = big.kz(k0)
    filt = (np.where(propb, np.exp(1j * kzb * (Z_FOCUS - Z_TOP)), 0) * big.pupil(k0, variant)).astype(C64)
    o = (big.n - n) // 2
    img, specs = [], []
    for b in range(0, len(srcs), 4):                       # a few fields at a time (memory)
        Eb = np.zeros((len(top[b:b + 4]), big.n, big.n), C64)
        Eb[:, o:o + n, o:o + n] = top[b:b + 4]
        spec = fft2(Eb) * (filt / big.n**2)
        img.append(big.evaluate(spec, k0, cam))
        if return_spectrum:
            specs.append(spec)
    img = np.concatenate(img)
    top = np.concatenate(specs) if return_spectrum else None
    return (img, top) if return_spectrum else img


def render_views(dn_sub, sources, variant, seed, grid=None, wavelengths=None, weights=None):
    """Noise-free partially coherent images [V, Y, X] (arbitrary units); the emission band
    (``wavelengths``, ``weights``) is the objective's (:func:`use_objective`) unless given."""
    wavelengths = WAVELENGTHS if wavelengths is None else wavelengths
    weights = WEIGHTS if weights is None else weights
    grid = grid or Grid()
    rng = np.random.default_rng(seed)
    subs = np.concatenate([bead_subsources(s, rng) for s in sources])   # (V·4, 3)
    per = len(subs) // len(sources)
    total = 0.0
    for lam, w in zip(wavelengths, weights):
        img = image_sources(grid, lam, dn_sub, subs, variant)
        total = total + w * img.reshape(len(sources), per, NY, NX).mean(1)
        print(f"  λ = {lam:.3f} µm done", flush=True)
    return total


#: Objectives besides the issue's (NA 0.8, λ 0.52 µm): "water1.1" is that of the measured bead
#: z-stack in ../shared/data (NA 1.1 water immersion, emission 0.605 µm).
OBJECTIVES = {"issue": (0.8, 0.52), "water1.1": (1.1, 0.605)}


def use_objective(name):
    """Set the detection NA, the centre wavelength and its 5-line emission band (FWHM 30 nm) for
    every later rendering and the recording's optics."""
    global NA, LAM0, WAVELENGTHS, WEIGHTS
    NA, LAM0 = OBJECTIVES[name]
    WAVELENGTHS = LAM0 + np.array([-0.02, -0.01, 0.0, 0.01, 0.02])
    WEIGHTS = np.exp(-4 * math.log(2) * ((WAVELENGTHS - LAM0) / FWHM) ** 2)
    WEIGHTS /= WEIGHTS.sum()


# ------------------------------------------------------------------- specimens ----
def ramp(sd, width=DX):
    """Occupancy from a signed distance (µm, > 0 inside): a 1-voxel linear soft edge."""
    return np.clip(0.5 + sd / width, 0.0, 1.0)


def rotation(tilt_deg, azimuth_deg):
    """Rotation taking the local +w axis to a direction tilted by tilt from +z."""
    t, a = math.radians(tilt_deg), math.radians(azimuth_deg)
    ry = np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return rz @ ry


def rbc_sd(p, centre, diameter=6.0, t_max=2.0, tilt=20.0, azimuth=30.0):
    """Approximate signed distance of a biconcave disc (Evans-Fung profile)."""
    q = (p - centre) @ rotation(tilt, azimuth)        # into the disc frame (u, v, w)
    R = diameter / 2
    r = np.hypot(q[..., 0], q[..., 1])
    rho2 = np.clip((r / R) ** 2, 0, 1)
    f = np.sqrt(1 - rho2) * (0.2072 + 2.0026 * rho2 - 1.1228 * rho2**2)
    half = 0.5 * t_max * f / 0.6348                   # 0.6348 = max of the profile
    return np.minimum(R - r, half - np.abs(q[..., 2]))


def sphere_sd(p, centre, radius):
    """Signed distance (µm) of points ``p`` to a sphere."""
    return radius - np.linalg.norm(p - centre, axis=-1)


def bezier(pts, n=400):
    """``n`` points of the cubic Bézier curve with control points ``pts``."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2, p3 = (np.array(q, float) for q in pts)
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def tube_sd(p, curve, radius):
    """Signed distance to a tube around a densely sampled curve (plane by plane, using only
    curve points within reach of this plane)."""
    z = p[..., 2].mean()
    near = curve[np.abs(curve[:, 2] - z) < radius + 0.5]
    if len(near) == 0:
        return np.full(p.shape[:-1], -1e3)
    d2 = ((p[..., None, :] - near) ** 2).sum(-1).min(-1)
    return radius - np.sqrt(d2)


def specimen(name):
    """Δn on the NSUB multi-slice sub-planes [NSUB, NY, NX] and the ground truth voxels
    [NZ, NY, NX] (the mean of each voxel's two sub-planes). Each sub-plane is itself the
    mean of two z samples, laterally the soft edge does the antialiasing."""
    y = (np.arange(NY) - NY // 2) * DY
    x = (np.arange(NX) - NX // 2) * DX
    Y, X = np.meshgrid(y, x, indexing="ij")
    sub = np.zeros((NSUB, NY, NX), np.float64)
    if name == "neurites":
        s1, s2 = np.array([-3.0, -2.6, 4.5]), np.array([2.9, 2.7, 11.5])
        curves = [bezier([s1, [-0.5, -4.2, 6.0], [1.5, 4.2, 8.5], s2]),
                  bezier([s1, [-4.0, 2.5, 8.0], [0.5, -1.0, 13.0], s2]),
                  bezier([s2, [4.6, 0.0, 13.5], [4.2, -3.0, 15.0], [3.0, -4.8, 17.0]])]
    for s in range(NSUB):
        for f in (0.25, 0.75):
            p = np.stack([X, Y, np.full_like(X, (s + f) * DZS)], -1)
            if name == "disc_cell":
                dn = 0.03 * ramp(rbc_sd(p, np.array([-2.0, -1.2, 5.0])))
                cell = np.array([2.3, 1.8, 11.0])
                dn = dn + 0.015 * ramp(sphere_sd(p, cell, 2.5))
                dn = dn + 0.010 * ramp(sphere_sd(p, cell + [0.4, 0.3, 0.3], 1.2))  # nucleus 0.025
            elif name == "neurites":
                occ = np.maximum(ramp(sphere_sd(p, s1, 1.5)), ramp(sphere_sd(p, s2, 1.5)))
                for c in curves:
                    occ = np.maximum(occ, ramp(tube_sd(p, c, 0.3)))
                dn = 0.02 * occ
            else:
                raise ValueError(f"unknown specimen {name!r}")
            sub[s] += 0.5 * dn
    truth = sub.reshape(NZ, SUB, NY, NX).mean(1)
    return sub.astype(np.float32), truth.astype(np.float32)


# ------------------------------------------------------------------- recording ----
def write_recording(path, name, variant, seed):
    """Write one timepoint of ``name`` seen through ``variant`` to the recording ``path`` (format v1, ground truth included)."""
    from nvplive.acquisition.recording import CameraSettings, RecordingMeta, RecordingWriter
    from nvplive.recon.optics import Optics, VolumeGeometry

    sources = nominal_sources()
    dn_sub, truth = specimen(name)
    print(f"{path}: specimen {name}, Δn max {truth.max():.4f}, variant {variant}", flush=True)
    clean = render_views(dn_sub, sources, variant, seed)
    scale = TARGET_MEAN_E / clean.mean()            # one brightness for all beads
    rng = np.random.default_rng(seed + 12345)
    counts = OFFSET + GAIN * rng.poisson(scale * clean)
    frames = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)

    geometry = VolumeGeometry((NZ, NY, NX), (DZ, DY, DX), focal_plane_z_um=Z_FOCUS)
    optics = Optics(wavelength_um=LAM0, n_medium=N_MED, na=NA, na_source=None, emission_fwhm_um=FWHM)
    camera = CameraSettings(pixel_size_um=DX, offset=OFFSET, gain=GAIN, read_noise=0.0, bit_depth=16)
    extra = {
        "simulated": True, "phantom": name, "seed": seed,
        "generator": "nvplive.benchmarks.independent_recording (numpy, not the reconstruction's renderer)",
        "true_sources_um_xyz": sources.tolist(),
        "independent_instrument": {   # for humans only; nothing the reconstruction is told
            "variant": variant, "na": NA, "wavelength_um": LAM0,
            "source_spectrum": ("1/kz to 0.98·n_medium, cosine edge 0.96–0.98·n_medium" if variant == "A"
                                else "1/kz, cosine edge from 0.97·NA to NA"),
            "pupil_apodisation_rho2": APODISATION_A if variant == "A" else 0.0,
            "pupil_zernike_noll_rad": ({str(k): v for k, v in ABERRATIONS_A.items()} if variant == "A" else {}),
            "wavelengths_um": WAVELENGTHS.tolist(), "wavelength_weights": WEIGHTS.tolist(),
            "bead_diameter_um": BEAD_DIAMETER, "subsources_per_bead": 4,
            "steps_per_voxel": SUB, "pad_px_per_side": PAD, "absorbing_margin_px": MARGIN, "refocus_embed": EMBED,
            "photoelectrons_scale": float(scale), "mean_signal_e": float((scale * clean).mean()),
            "background_e": 0.0, "read_noise_e": 0.0,
        },
    }
    # the beads' size is on their label: the recording states it, as the lab's settings file would
    meta = RecordingMeta(optics=optics, geometry=geometry, camera=camera,
                         sources_um_xyz=sources.tolist(), extra=extra, bead_diameter_um=BEAD_DIAMETER)
    with RecordingWriter(path, meta, overwrite=True) as w:
        w.write_timepoint(0, frames, [0.011 * v for v in range(len(sources))],
                          [{"exposure_ms": 10.0} for _ in sources])
        w.write_ground_truth(0, truth)
    print(f"wrote {path}: frames mean {frames.mean():.1f} counts, min {frames.min()}, max {frames.max()}")
    return frames, clean * scale


def main():
    """Command line: ``python -m nvplive.benchmarks.independent_recording OUT.fdt --specimen … --variant …``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--specimen", choices=["disc_cell", "neurites"], required=True)
    ap.add_argument("--variant", choices=["A", "B"], required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objective", choices=sorted(OBJECTIVES), default="issue",
                    help="detection NA and wavelength: the issue's (0.8, 0.52 µm) or the measured bead stack's "
                         "water objective (1.1, 0.605 µm)")
    a = ap.parse_args()
    if a.objective != "issue":  # the constants stay as they are: its recordings reproduce bit for bit
        use_objective(a.objective)
    write_recording(a.out, a.specimen, a.variant, a.seed)


if __name__ == "__main__":
    main()
