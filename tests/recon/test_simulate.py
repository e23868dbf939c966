"""The simulator's own instrument (recon/simulate.py): drawn, recorded, and rendered."""

from __future__ import annotations

import numpy as np
import pytest

from nvplive.acquisition.offline import simulate_recording
from nvplive.acquisition.recording import Recording
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.simulate import Instrument, PartialCoherence, Simulator, default_sources, stated_positions

OPTICS = Optics()
GEOMETRY = VolumeGeometry((8, 24, 24), (0.25, 0.25, 0.25))


def test_realistic_instrument_is_realistic_and_round_trips():
    for seed in range(5):
        instrument = Instrument.realistic(OPTICS, seed=seed)
        assert 0.2 - 1e-9 <= instrument.pupil.aberration_rms_rad <= 0.5 + 1e-9
        assert instrument.pupil.zernike_rad[:2] == (0.0, 0.0)  # no tip/tilt: that is a bead position
        assert -0.2 <= instrument.pupil.apodisation[0] <= 0.0
        assert instrument.source_na > OPTICS.source_na and instrument.steps_per_voxel == 2
        assert Instrument.from_dict(instrument.to_dict()) == instrument
    assert Instrument.realistic(OPTICS, seed=1) != Instrument.realistic(OPTICS, seed=2)
    assert Instrument.from_dict(None) == Instrument() == Instrument.from_dict({})


def test_the_instrument_changes_the_frames():
    sources = default_sources(GEOMETRY, 2, seed=0)
    dn = np.zeros(GEOMETRY.shape_zyx)
    coherence = PartialCoherence(1, 0.0, 1)
    matched = Simulator(OPTICS, GEOMETRY, sources, coherence=coherence).expected(dn)
    finer = Simulator(OPTICS, GEOMETRY, sources, coherence=coherence, instrument=Instrument(steps_per_voxel=2)).expected(dn)
    # Δn = 0: finer axial steps change nothing (propagation is exact in a homogeneous medium).
    assert np.allclose(finer, matched, rtol=1e-4, atol=1e-3)
    aberrated = Simulator(
        OPTICS, GEOMETRY, sources, coherence=coherence,
        instrument=Instrument("custom", PupilParameters(zernike_rad=(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.5))),
    ).expected(dn)
    assert np.linalg.norm(aberrated - matched) > 0.05 * np.linalg.norm(matched)


@pytest.mark.parametrize("thick", [False, True])
def test_simulate_records_the_instrument_beside_the_ground_truth(tmp_path, thick):
    path = simulate_recording(
        tmp_path / "r.fdt", phantom="cell", views=3, timepoints=1, shape_zyx=(8, 24, 24), instrument="realistic",
        seed=3, thick=thick, coherence=PartialCoherence(1, 0.0, 1),
    )
    with Recording.open(path) as rec:
        meta = rec.meta
        assert meta.optics.na_source is None  # the reconstruction is told λ, NA, n only
        assert Instrument.from_dict(meta.extra["simulated_instrument"]) == Instrument.realistic(meta.optics, seed=3)
        true_sources = np.array(meta.extra["true_sources_um_xyz"])
        # the reconstruction is told the bead positions a user would state, not the true ones
        error = np.array(meta.sources_um_xyz) - true_sources
        assert np.all(error != 0.0) and np.abs(error[:, :2]).max() < 0.5 and np.abs(error[:, 2]).max() < 1.5
        if thick:
            assert meta.geometry.extent_um_zyx[0] >= 12.0
            depths = -true_sources[:, 2]
            assert np.all((depths >= 2.0) & (depths <= 4.0))


def test_nominal_bead_positions_are_off_by_the_instruments_error():
    """A realistic instrument's stated bead positions are off by 0.1 µm per bead (x, y, z) and
    by one draw of 0.3 µm for the whole bead layer (z); a bead below the volume is never stated
    inside it. The matched instrument and recordings from before the field state the true ones
    (:func:`stated_positions` with the instrument's ``bead_position_error_um``)."""
    truth = np.zeros((4000, 3)) - [0.0, 0.0, 5.0]
    realistic = Instrument.realistic(OPTICS, seed=2)
    error = stated_positions(truth, realistic.bead_position_error_um, seed=5) - truth
    np.testing.assert_allclose(error.std(axis=0), [0.1, 0.1, 0.1], rtol=0.05)
    layers = [stated_positions(truth[:50], realistic.bead_position_error_um, seed=s)[:, 2].mean() + 5.0 for s in range(400)]
    assert 0.27 < np.std(layers) < 0.36  # √(0.3² + 0.1²/50): the layer's draw dominates
    error_um = realistic.bead_position_error_um
    np.testing.assert_array_equal(stated_positions(truth, error_um, seed=5), stated_positions(truth, error_um, seed=5))
    shallow = stated_positions(np.zeros((4000, 3)) - [0.0, 0.0, 0.05], realistic.bead_position_error_um, seed=5)
    assert shallow[:, 2].max() == 0.0  # at the volume's bottom at most, never inside it
    assert Instrument.from_dict(realistic.to_dict()) == realistic
    old = {k: v for k, v in realistic.to_dict().items() if k != "bead_position_error_um"}
    assert Instrument.from_dict(old).bead_position_error_um == (0.0, 0.0)
    np.testing.assert_array_equal(stated_positions(truth + 1.0, Instrument().bead_position_error_um, seed=5), truth + 1.0)
