"""Numerical phantoms: determinism, value ranges, anatomy, and the beating cardiomyocyte."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nvplive.errors import NvpLiveError
from nvplive.recon import phantoms
from nvplive.recon.phantoms import PHANTOMS, Cardiomyocyte, cell, make_phantom, tissue

SMALL = (16, 32, 32)
VOX = (0.25, 0.25, 0.25)
CELL_GRID = ((24, 64, 64), (0.2, 0.2, 0.2))
CM_GRID = ((20, 40, 96), (0.25, 0.25, 0.25))


def _interior(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=iterations)


# ---------------------------------------------------------------------------
# all phantoms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_shape_dtype_and_determinism(name):
    a = make_phantom(name, SMALL, VOX, seed=3, t_s=0.05)
    b = make_phantom(name, SMALL, VOX, seed=3, t_s=0.05)
    c = make_phantom(name, SMALL, VOX, seed=4, t_s=0.05)
    assert a.shape == SMALL and a.dtype == np.float32
    assert np.all(np.isfinite(a)) and a.min() >= 0.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.001 < np.mean(a > 0) < 0.6


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_anisotropic_and_tiny_grids(name):
    v = make_phantom(name, (8, 16, 24), (0.4, 0.2, 0.15), seed=1)
    assert v.shape == (8, 16, 24) and v.max() > 0.01
    v = make_phantom(name, (4, 4, 4), (0.2, 0.2, 0.2), seed=1)
    assert v.shape == (4, 4, 4) and np.all(np.isfinite(v))


@pytest.mark.parametrize("name, mass_tol, diff_tol", [("cell", 0.05, 0.1), ("tissue", 0.15, 0.35)])
def test_features_scale_with_physical_extent(name, mass_tol, diff_tol):
    """The same field of view sampled twice as finely gives the same sample (binned back)."""
    coarse = make_phantom(name, (24, 64, 64), (0.4, 0.4, 0.4), seed=2)
    fine = make_phantom(name, (48, 128, 128), (0.2, 0.2, 0.2), seed=2)
    binned = fine.reshape(24, 2, 64, 2, 64, 2).mean(axis=(1, 3, 5))
    assert binned.mean() == pytest.approx(coarse.mean(), rel=mass_tol)
    assert np.abs(coarse - binned).mean() < diff_tol * coarse.mean()
    # and the same grid with larger voxels is the same array (features sized by extent)
    assert np.allclose(make_phantom(name, (24, 64, 64), (0.3, 0.3, 0.3), seed=2), coarse, rtol=0, atol=1e-5)


def test_make_phantom_rejects_bad_input():
    with pytest.raises(NvpLiveError, match="cardiomyocyte") as info:
        make_phantom("bacterium", SMALL, VOX)
    assert "bacterium" in str(info.value) and str(info.value).count(".") >= 1
    for shape in [(0, 32, 32), (16, 32), (16, -1, 32), (16.5, 32, 32), "abc"]:
        with pytest.raises(NvpLiveError):
            make_phantom("cell", shape, VOX)
    for voxel in [(0.2, 0.2), (0.2, 0.0, 0.2), (0.2, float("nan"), 0.2), (-0.1, 0.2, 0.2), None]:
        with pytest.raises(NvpLiveError):
            make_phantom("tissue", SMALL, voxel)
    with pytest.raises(NvpLiveError):
        Cardiomyocyte(SMALL, VOX, beat_hz=0.0)
    with pytest.raises(NvpLiveError):
        make_phantom("cell", SMALL, VOX, seed=-1)
    with pytest.raises(NvpLiveError):
        Cardiomyocyte(SMALL, VOX).at(float("nan"))


def test_make_phantom_matches_direct_calls():
    shape, voxel = SMALL, VOX
    assert np.array_equal(make_phantom("cell", shape, voxel, seed=5), cell(shape, voxel, seed=5))
    assert np.array_equal(make_phantom("tissue", shape, voxel, seed=5), tissue(shape, voxel, seed=5))
    cm = Cardiomyocyte(shape, voxel, seed=5)
    assert np.array_equal(make_phantom("cardiomyocyte", shape, voxel, seed=5, t_s=0.1), cm.at(0.1))


# ---------------------------------------------------------------------------
# cell
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_body_values_and_droplets(seed):
    v = cell(*CELL_GRID, seed=seed)
    body = v > 0
    faces = np.concatenate([v[[0, -1]].ravel(), v[:, [0, -1]].ravel(), v[:, :, [0, -1]].ravel()])
    assert np.all(faces == 0), "Δn must be 0 (the medium) at the edges of the volume"
    labels, n = ndimage.label(body)
    assert n == 1, "everything lies inside one cell body"
    # the body fills most of the field of view laterally and is flattened
    ys, xs = np.nonzero(body.any(axis=0))
    assert np.ptp(xs) > 0.6 * v.shape[2] or np.ptp(ys) > 0.6 * v.shape[1]
    zs = np.nonzero(body.any(axis=(1, 2)))[0]
    assert np.ptp(zs) * CELL_GRID[1][0] < 0.6 * max(np.ptp(xs) * CELL_GRID[1][2], np.ptp(ys) * CELL_GRID[1][1])
    inner = _interior(body)
    assert inner.sum() > 0.5 * body.sum()
    assert v[inner].min() >= 0.01 and v.max() <= 0.06
    # lipid droplets: the highest Δn, in small compact blobs
    assert 0.045 <= v.max() <= 0.06
    high = v > 0.045
    drops, n_drops = ndimage.label(high)
    assert 1 <= n_drops <= 12
    assert high.sum() < 0.02 * body.sum()
    assert np.max(ndimage.sum_labels(high, drops, range(1, n_drops + 1))) < 0.01 * body.sum()


def test_cell_edges_are_antialiased():
    v = cell(*CELL_GRID, seed=0)
    body = v > 0
    edge = body & ~_interior(body, 1)
    partial = (v > 0) & (v < 0.01)
    assert partial.sum() > 0.3 * edge.sum(), "boundary voxels carry partial values (sub-voxel coverage)"


@pytest.mark.parametrize("seed", [0, 1])
def test_cell_has_nucleus_with_nucleoli(seed):
    v = cell(*CELL_GRID, seed=seed)
    body = v > 0
    inner = _interior(body)
    band = inner & (v > 0.0145) & (v < 0.0195)
    labels, n = ndimage.label(band)
    sizes = ndimage.sum_labels(band, labels, range(1, n + 1))
    nucleus = labels == (np.argmax(sizes) + 1)
    assert nucleus.sum() > 0.04 * body.sum()
    # enclosed by the cytoplasm: does not touch the medium
    assert not np.any(ndimage.binary_dilation(nucleus, iterations=2) & ~body)
    # it differs from the cytoplasm around it
    shell = ndimage.binary_dilation(nucleus, iterations=3) & ~ndimage.binary_dilation(nucleus, iterations=1) & inner
    assert np.median(v[shell]) - np.median(v[nucleus]) > 0.003
    # nucleoli: a denser spot inside the filled nucleus
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(nucleus, iterations=2))
    assert np.any(v[filled] > 0.035)


# ---------------------------------------------------------------------------
# tissue
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tissue_values_and_continuous_vessels(seed):
    shape, voxel = (16, 48, 48), (0.4, 0.4, 0.4)
    v = tissue(shape, voxel, seed=seed)
    assert v.min() >= 0.0 and 0.025 <= v.max() <= 0.04
    assert np.percentile(v[_interior(v > 0.003, 1)], 1) >= 0.005  # away from edges, Δn ≥ 0.005
    labels, n = ndimage.label(v > 0.003)
    spans = []
    for sl in ndimage.find_objects(labels):
        spans.append(max((sl[1].stop - sl[1].start) / shape[1], (sl[2].stop - sl[2].start) / shape[2]))
    assert max(spans) == 1.0, "a vessel crosses the whole field of view in one connected piece"
    assert sum(s == 1.0 for s in spans) >= 1
    assert 0.01 < np.mean(v > 0.003) < 0.5


def test_tissue_vessels_hollow_and_filled():
    shape, voxel = (24, 64, 64), (0.3, 0.3, 0.3)
    hollow = filled = 0
    for seed in range(4):
        v = tissue(shape, voxel, seed=seed)
        inner = _interior(v > 0.003, 2)  # away from every outer edge
        hollow += int(np.any(inner & (v < 0.009)))  # a lumen enclosed by a wall
        filled += int(np.any(inner & (v > 0.024) & (v < 0.029)))  # a filled vessel's core
    assert hollow >= 2 and filled >= 1


def test_tissue_neurons_have_soma_and_thin_neurites():
    """Each neuron alone: a soma with nucleus, and ≥ 3 thin neurites leaving it."""
    shape, voxel = (24, 96, 96), (0.25, 0.25, 0.25)
    counted = 0
    for seed in range(3):
        rng = np.random.default_rng([seed, 202])
        vessels = phantoms._tissue_vessels(rng, shape, np.array(voxel))
        neurons = phantoms._tissue_neurons(rng, shape, np.array(voxel), vessels)
        assert 1 <= len(neurons) <= 3
        for neuron in neurons:
            v = np.zeros(shape, np.float32)
            phantoms._paint_neuron(v, np.array(voxel), neuron)
            mask = v > 0.005
            assert ndimage.label(mask)[1] == 1, "soma and neurites are one connected cell"
            assert np.any(_interior(mask, 1) & (np.abs(v - 0.014) < 5e-4)), "nucleus"
            zz, yy, xx = np.indices(shape, dtype=float) * 0.25
            c = neuron["centre"]
            r = np.sqrt((yy - c[1]) ** 2 + (xx - c[2]) ** 2)
            outside = mask & (r > 1.6 * neuron["r_soma"])
            pieces = ndimage.label(outside)[1]
            if pieces == 0:
                continue
            counted += 1
            assert pieces >= 3, "at least three neurites leave the soma"
            # neurites are thin: far from the soma, most voxels lie on the surface
            surface = outside & ~_interior(mask, 1)
            assert surface.sum() > 0.6 * outside.sum()
            # and reach far beyond it
            assert r[mask].max() > 4 * neuron["r_soma"]
    assert counted >= 3


# ---------------------------------------------------------------------------
# cardiomyocyte
# ---------------------------------------------------------------------------


def _length_width_volume(v: np.ndarray) -> tuple[float, float, float]:
    """Long-axis length and width (voxels, sub-voxel from the coverage) and volume."""
    occ = np.clip(v / 0.012, 0, 1)  # Δn coverage of the body (interior ≥ 0.015)
    mask = v > 0.005
    length = occ.max(axis=(0, 1)).sum()
    width = occ.max(axis=(0, 2)).sum()
    return length, width, float(mask.sum())


def _striation_period(v: np.ndarray, dx: float) -> float:
    """Dominant period (µm) of the Δn profile along the long axis x, from its spectrum."""
    mask = v > 0.005
    core = mask & _interior(mask, 2)
    prof = (v * core).sum(axis=(0, 1)) / np.maximum(core.sum(axis=(0, 1)), 1)
    xs = np.nonzero(core.any(axis=(0, 1)))[0]
    seg = prof[xs[0] + 2 : xs[-1] - 1]
    seg = (seg - seg.mean()) * np.hanning(len(seg))
    n = 64 * len(seg)
    spec = np.abs(np.fft.rfft(seg, n))
    freq = np.fft.rfftfreq(n, dx)
    band = freq > 1.0 / (len(seg) * dx / 3)  # at least three periods along the cell
    return 1.0 / freq[band][np.argmax(spec[band])]


@pytest.fixture(scope="module")
def beating():
    cm = Cardiomyocyte(*CM_GRID, seed=0, beat_hz=1.0)
    times = np.linspace(0.0, cm.period_s, 41)[:-1]
    frames = [cm.at(float(t)) for t in times]
    return cm, times, frames


def test_cardiomyocyte_periodic_and_deterministic(beating):
    cm, _, frames = beating
    assert cm.period_s == pytest.approx(1.0)
    assert np.allclose(cm.at(cm.period_s), frames[0], atol=1e-6)
    assert np.allclose(cm.at(0.1 + 3 * cm.period_s), cm.at(0.1), atol=1e-6)
    assert np.array_equal(Cardiomyocyte(*CM_GRID, seed=0).at(0.1), cm.at(0.1))
    assert not np.array_equal(Cardiomyocyte(*CM_GRID, seed=1).at(0.1), cm.at(0.1))
    assert Cardiomyocyte(*CM_GRID, beat_hz=2.0).period_s == pytest.approx(0.5)


def test_cardiomyocyte_is_elongated_and_striated(beating):
    cm, _, frames = beating
    v = frames[0]
    length, width, _ = _length_width_volume(v)
    assert length > 3 * width
    assert 0.01 <= v[_interior(v > 0.005)].min() and v.max() <= 0.06
    period = _striation_period(v, CM_GRID[1][2])
    assert period == pytest.approx(cm.sarcomere_um, rel=0.06)
    assert period == pytest.approx(1.8, rel=0.06)  # this grid can show the real sarcomere length


def test_cardiomyocyte_contracts_conserving_volume(beating):
    cm, times, frames = beating
    lwv = np.array([_length_width_volume(f) for f in frames])
    length, width, volume = lwv.T
    i_sys, i_dia = int(np.argmin(length)), 0
    shortening = 1 - length[i_sys] / length[i_dia]
    assert 0.05 <= shortening <= 0.15
    assert abs(times[i_sys] - cm.peak_s) <= 0.03
    assert width[i_sys] > width[i_dia] * 1.02, "the cell widens as it shortens"
    assert np.all(np.abs(volume / volume[i_dia] - 1) < 0.10)
    # a brief systole and a long diastole, not a sinusoid
    contracted = (length[i_dia] - length) > 0.5 * (length[i_dia] - length[i_sys])
    assert 0.05 < contracted.mean() < 0.35
    assert np.ptp(length[times > 0.5]) < 0.5, "diastole is at rest"
    # the sarcomeres shorten with the cell
    p_dia = _striation_period(frames[i_dia], CM_GRID[1][2])
    p_sys = _striation_period(frames[i_sys], CM_GRID[1][2])
    assert 0.85 <= p_sys / p_dia <= 0.95


def test_cardiomyocyte_smooth_in_time(beating):
    cm, _, frames = beating
    full = np.linalg.norm(cm.at(cm.peak_s) - frames[0])
    assert full > 0
    d10 = [np.linalg.norm(cm.at(t + 0.01) - cm.at(t)) for t in np.linspace(0.0, 0.5, 26)]
    d50 = [np.linalg.norm(cm.at(t + 0.05) - cm.at(t)) for t in np.linspace(0.0, 0.5, 26)]
    assert max(d10) < 0.3 * full, "frames 10 ms apart differ little"
    assert max(d10) < max(d50) < 0.9 * full
    # continuous motion (anti-aliased, no jumps): 1 ms changes ~10x less than 10 ms
    t = 0.5 * cm.peak_s
    d1 = np.linalg.norm(cm.at(t + 0.001) - cm.at(t))
    assert 0 < d1 < 0.25 * np.linalg.norm(cm.at(t + 0.01) - cm.at(t))
    # diastole is still
    assert np.array_equal(cm.at(0.7), cm.at(0.9))
