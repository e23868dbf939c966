"""The app's "Calibrate pupil" without Qt: a bead z-stack through the MDA of the simulated
microscope, calibrated with the project's bead-stack calibration, and the live reconstructor
taking the calibrated pupil.

Tiny on purpose (32×32 frames, 7 planes, 20 L-BFGS iterations, one z direction): the
calibration part takes ~15 s on one core.
"""

from __future__ import annotations

import numpy as np
import pytest
from acq_helpers import FAST, SHAPE, VOXEL

from nvplive.acquisition.bead_stack import BeadStackPlan, acquire_bead_stack, calibrate_bead_stack_acquired
from nvplive.acquisition.live import DemoOptions, live_reconstructor, load_demo_microscope
from nvplive.acquisition.pupil_file import read_pupil, read_pupil_file
from nvplive.errors import AcquisitionError
from nvplive.recon.loop import IterationBudget
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.reconstructor import ReconConfig
from nvplive.recon.simulate import Instrument

#: The simulated objective: primary spherical, astigmatism (Noll 6, 7), 0.49 rad RMS.
ZERNIKE = {6: 0.25, 7: -0.15, 11: 0.4}
PLAN = BeadStackPlan(view=0, half_range_um=1.5, step_um=0.5, z_direction=1)


def _zernike(values: dict[int, float], n: int = 21) -> np.ndarray:
    z = np.zeros(n)
    for j, c in values.items():
        z[j - 2] = c
    return z



@pytest.fixture
def microscope():
    instrument = Instrument("aberrated", PupilParameters(tuple(_zernike(ZERNIKE))))
    scope = load_demo_microscope(3, 10.0, DemoOptions(SHAPE, VOXEL, FAST, seed=1, instrument=instrument))
    yield scope
    scope.close()


def test_bead_stack_through_the_mda_has_the_planned_focus_and_calibrates_the_instruments_aberration(microscope, tmp_path):
    core, info = microscope.core, microscope.info
    core.setPosition(info.focus, 0.3)  # the stack is relative to where the focus is
    started: list[object] = []
    core.mda.events.sequenceStarted.connect(lambda seq, *_: started.append(seq))

    bead = acquire_bead_stack(core, info, PLAN)

    bead_z = info.sources_um_xyz[0][2] - info.geometry.focal_z_um  # the bead below the focal plane
    np.testing.assert_allclose(bead.z_um, 0.3 + bead_z + PLAN.offsets_um, atol=1e-6)
    assert bead.stack.shape == (7, *info.geometry.camera_shape_yx) and bead.stack.dtype == np.uint16
    assert bead.z_step_um == pytest.approx(0.5)
    assert started[-1].z_plan is not None and len(started[-1].channels) == 1  # a real MDA z-stack, one source
    assert started[-1].channels[0].config == info.presets[0]
    assert core.getPosition(info.focus) == pytest.approx(0.3)  # the focus went back
    assert core.getExposure() == pytest.approx(10.0)  # and the exposure
    peaks = bead.stack.reshape(len(bead.stack), -1).max(axis=1)
    assert abs(int(np.argmax(peaks)) - 3) <= 1  # in focus in the middle
    assert peaks.max() < 0.7 * 65535  # the automatic exposure does not saturate
    assert bead.bit_depth == int(core.getImageBitDepth()) == info.camera_model.bit_depth  # the camera's full scale

    result, calibrated, written = calibrate_bead_stack_acquired(bead, iterations=20, output=tmp_path / "pupil.json")
    found = np.asarray(calibrated.pupil.zernike_rad)
    truth = _zernike(ZERNIKE, len(found))
    error = np.sqrt(np.sum((found - truth)[3:] ** 2))  # Noll 5+ (tip/tilt/defocus are held by the positions)
    assert error < 0.15, (found.round(3), error)
    for j, c in ZERNIKE.items():
        assert found[j - 2] == pytest.approx(c, abs=0.1)
    assert calibrated.residual < 0.5 * calibrated.residual_before
    assert calibrated.bead_diameter_um == bead.bead_diameter_um == info.bead_diameter_um > 0  # the scene's beads, imaged
    assert result.z_direction == 1
    assert read_pupil(written) == calibrated.pupil
    doc = read_pupil_file(written)
    assert doc.method == "bead-z-stack" and "7 planes" in doc.calibrated_from


def test_a_microscope_that_cannot_take_a_bead_stack_is_refused_naming_why(microscope):
    core, info = microscope.core, microscope.info
    with pytest.raises(AcquisitionError, match="at least 3 planes.*gives 1"):
        acquire_bead_stack(core, info, BeadStackPlan(half_range_um=0.1, step_um=0.5))
    with pytest.raises(AcquisitionError, match="Source 5 does not exist: the microscope has 3 sources"):
        acquire_bead_stack(core, info, BeadStackPlan(view=5))
    core.unloadDevice(info.focus)  # a microscope without a focus drive
    with pytest.raises(AcquisitionError, match="needs a focus device.*none"):
        acquire_bead_stack(core, info, PLAN)


def test_the_live_reconstructor_renders_through_a_new_pupil_from_a_cold_start(microscope):
    config = ReconConfig(iterations=2, warm_budget=IterationBudget(1), check_every=1, pupil_calibration=False)
    recon = live_reconstructor(microscope.info, config, "cpu")
    assert recon.pupil is None and recon.inner.pupil is None
    frames = microscope.scene.simulator().frames(np.zeros(SHAPE, np.float32), np.random.default_rng(0))
    colds: list[bool] = []
    recon.progress_hook = lambda it, total, loss, cold, phase: colds.append(cold)
    recon.warm_update(frames)
    recon.warm_update(frames)
    assert colds[0] and not colds[-1]
    pupil = PupilParameters(tuple(_zernike(ZERNIKE)))
    recon.use_pupil(pupil)
    assert recon.has_pending_changes
    colds.clear()
    recon.warm_update(frames)
    assert colds and all(colds)  # cold with the new pupil
    assert recon.pupil == pupil and recon.inner.pupil == pupil
    recon.request(device="auto")  # a rebuilt reconstructor keeps it
    recon.warm_update(frames)
    assert recon.inner.pupil == pupil


def test_a_stack_files_bit_depth_is_the_tiffs_own_and_marks_its_saturated_pixels(tmp_path):
    """``nvplive calibrate STACK.tif``'s path: a 12-bit camera's stack saved in 16-bit words
    clips at 4095. The OME metadata's SignificantBits says so, with no bit_depth in
    STACK.json, and the clipped pixels are counted (left out of the fit, warned about)."""
    import json

    import tifffile

    from nvplive.acquisition.offline import calibrate_stack_file, tiff_stated

    # a bead's spot widening away from focus (the fit's image model is not needed to count clipping)
    yy, xx = np.mgrid[-12:12, -12:12] * 0.1
    widths = 0.15 + 0.3 * np.abs(np.arange(-2, 3))
    spots = np.exp(-(yy**2 + xx**2)[None] / (2 * widths[:, None, None] ** 2)) / widths[:, None, None] ** 2
    stack = np.minimum(np.random.default_rng(0).poisson(spots / spots.max() * 6000.0 + 100.0), 4095).astype(np.uint16)
    clipped = int((stack == 4095).sum())
    assert clipped > 0
    params = {"wavelength_um": 0.52, "na": 0.8, "n_medium": 1.333, "pixel_size_um": 0.1, "z_step_um": 0.4}
    (tmp_path / "beads.json").write_text(json.dumps(params))
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    with tifffile.TiffFile(tmp_path / "plain.tif") as tif:
        assert tiff_stated(tif) == {}  # a TIFF that states nothing: the settings' or the type's
    tifffile.imwrite(tmp_path / "beads.tif", stack, ome=True, metadata={"axes": "ZYX", "SignificantBits": 12})
    result, written = calibrate_stack_file(tmp_path / "beads.tif", output=tmp_path / "pupil.json", iterations=1, z_direction=1)
    assert result.saturated_pixels == clipped and written.is_file()


def test_a_stack_files_pixel_size_and_z_step_are_the_tiffs_own(tmp_path):
    """The instrument's word beats the settings file: a stack whose OME metadata states its
    pixel size and z step (in its own units) is calibrated without them in STACK.json, and a
    JSON value or an option that disagrees is refused before the fit, both values named.
    ImageJ's calibration (pixels per micron, spacing) is read too; a TIFF that states pixels
    of different widths is refused."""
    import json

    import tifffile

    from nvplive.acquisition.offline import calibrate_stack_file, tiff_stated
    from nvplive.errors import RecordingError

    yy, xx = np.mgrid[-12:12, -12:12] * 0.1
    widths = 0.15 + 0.3 * np.abs(np.arange(-2, 3))
    spots = np.exp(-(yy**2 + xx**2)[None] / (2 * widths[:, None, None] ** 2)) / widths[:, None, None] ** 2
    stack = np.random.default_rng(0).poisson(spots / spots.max() * 3000.0 + 100.0).astype(np.uint16)
    optics = {"wavelength_um": 0.52, "na": 0.8, "n_medium": 1.333}
    (tmp_path / "beads.json").write_text(json.dumps(optics))
    tifffile.imwrite(tmp_path / "beads.tif", stack, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 100.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 100.0, "PhysicalSizeYUnit": "nm",
        "PhysicalSizeZ": 0.4, "PhysicalSizeZUnit": "µm"})
    with tifffile.TiffFile(tmp_path / "beads.tif") as tif:
        stated = tiff_stated(tif)
    assert stated["pixel_size_um"] == pytest.approx((0.1, "its OME metadata (PhysicalSizeX)"))
    assert stated["z_step_um"] == (0.4, "its OME metadata (PhysicalSizeZ)")
    _, written = calibrate_stack_file(tmp_path / "beads.tif", output=tmp_path / "pupil.json", iterations=1, z_direction=1)
    assert written.is_file()

    (tmp_path / "beads.json").write_text(json.dumps({**optics, "pixel_size_um": 0.12}))
    with pytest.raises(RecordingError, match=r"the pixel size is 0\.1 µm in its OME metadata \(PhysicalSizeX\), but "
                                             r".*beads\.json says 0\.12 µm; the stack's own metadata is the instrument's word"):
        calibrate_stack_file(tmp_path / "beads.tif", output=tmp_path / "other.json", iterations=1, z_direction=1)
    (tmp_path / "beads.json").write_text(json.dumps({**optics, "pixel_size_um": 0.1004}))  # within 1 %: the TIFF's
    with pytest.raises(RecordingError, match=r"the z step is 0\.4 µm in its OME metadata \(PhysicalSizeZ\), but --z-step-um says 0\.5 µm"):
        calibrate_stack_file(tmp_path / "beads.tif", output=tmp_path / "other.json", iterations=1, z_direction=1, z_step_um=0.5)
    assert not (tmp_path / "other.json").exists()

    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, resolution=(12.5, 12.5),
                     metadata={"axes": "ZYX", "spacing": 0.3, "unit": "micron"})
    with tifffile.TiffFile(tmp_path / "imagej.tif") as tif:
        stated = tiff_stated(tif)
    assert stated["pixel_size_um"][0] == pytest.approx(0.08) and stated["z_step_um"][0] == pytest.approx(0.3)
    # ImageJ writes µ escaped, and may give z its own unit
    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, resolution=(12.5, 12.5),
                     metadata={"axes": "ZYX", "spacing": 400, "unit": "\\u00B5m", "zunit": "nm"})
    with tifffile.TiffFile(tmp_path / "imagej.tif") as tif:
        stated = tiff_stated(tif)
    assert stated["pixel_size_um"][0] == pytest.approx(0.08) and stated["z_step_um"] == pytest.approx((0.4, "its ImageJ metadata (spacing)"))
    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, resolution=(10, 5), metadata={"axes": "ZYX", "unit": "um"})
    with tifffile.TiffFile(tmp_path / "imagej.tif") as tif, pytest.raises(RecordingError, match=r"pixels of 0\.1 × 0\.2 µm"):
        tiff_stated(tif)

    tifffile.imwrite(tmp_path / "oblong.tif", stack, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.2})
    (tmp_path / "oblong.json").write_text(json.dumps({**optics, "z_step_um": 0.4}))
    with pytest.raises(RecordingError, match=r"oblong\.tif: its OME metadata states pixels of 0\.1 × 0\.2 µm \(X × Y\)"):
        calibrate_stack_file(tmp_path / "oblong.tif", output=tmp_path / "other.json", iterations=1, z_direction=1)
