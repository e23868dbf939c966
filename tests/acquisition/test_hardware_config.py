"""Real Micro-Manager .cfg files (pure-Python devices, no C++ adapters) + the FDT settings file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from acq_helpers import tiny_scene

from nvplive.acquisition import devices
from nvplive.acquisition.microscope import load_hardware_core, load_settings
from nvplive.acquisition.pipeline import FDTAcquisition, recording_meta
from nvplive.acquisition.recording import RecordingWriter, open_recording
from nvplive.errors import AcquisitionError

MODULE = "nvplive.acquisition.devices"

CAMERA_AND_FOCUS = f"""# nvp-live test configuration: pure-Python devices only
Property,Core,Initialize,0
#py pyDevice,Camera,{MODULE},SimulatedFDTCamera
#py pyDevice,Focus,{MODULE},SimulatedFocusStage
Property,Core,Initialize,1
#py Property,Core,Camera,Camera
#py Property,Core,Focus,Focus
"""

WITH_SELECTOR = f"""# nvp-live test configuration: camera, LED selector, source group
Property,Core,Initialize,0
#py pyDevice,Camera,{MODULE},SimulatedFDTCamera
#py pyDevice,LEDs,{MODULE},SourceSelector
Property,Core,Initialize,1
#py Property,Core,Camera,Camera
#py Property,Core,AutoShutter,0
#py ConfigGroup,Beads,bead-a,LEDs,Label,Source-0
#py ConfigGroup,Beads,bead-b,LEDs,Label,Source-1
#py ConfigGroup,Beads,bead-c,LEDs,Label,Source-2
"""


@pytest.fixture
def scene():
    """Devices built by a .cfg file (no arguments) share the process-wide default scene."""
    s = tiny_scene(3)
    devices.set_default_scene(s)
    yield s
    devices.set_default_scene(None)


def _settings(tmp_path, selection, *, n_views=3, name="fdt.json", **more):
    sc = tiny_scene(n_views)
    doc = {
        "format": "nvp-live-hardware-settings",
        "version": 1,
        "source_selection": selection,
        "sources_um_xyz": sc.sources_um_xyz.tolist(),
        "optics": {"wavelength_um": 0.6, "n_medium": 1.33, "na": 0.8},
        "volume": {"shape_zyx": [16, 32, 32], "voxel_um_zyx": [0.25, 0.25, 0.25]},
        "camera_model": {"offset": 100, "gain": 1.0, "read_noise": 1.6},
        "exposure_ms": 3.0,
        **more,
    }
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def _cfg(tmp_path, text, name="scope.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_configuration_without_the_source_selector_names_the_missing_device(tmp_path, scene):
    cfg = _cfg(tmp_path, CAMERA_AND_FOCUS)
    settings = _settings(tmp_path, {"device": "LEDs", "property": "Label",
                                    "values": ["Source-0", "Source-1", "Source-2"]})
    with pytest.raises(AcquisitionError) as info:
        load_hardware_core(cfg, settings)
    message = str(info.value)
    assert "does not load the source-selection device 'LEDs'" in message
    assert str(cfg) in message and str(settings) in message
    assert "Camera" in message and "Focus" in message  # what it does load


def test_configuration_without_the_source_group_names_the_missing_group(tmp_path, scene):
    cfg = _cfg(tmp_path, CAMERA_AND_FOCUS)
    settings = _settings(tmp_path, {"group": "Beads", "presets": ["bead-a", "bead-b", "bead-c"]})
    with pytest.raises(AcquisitionError, match=r"has no config group 'Beads' to select the sources"):
        load_hardware_core(cfg, settings)


def test_missing_presets_and_camera_are_reported_together(tmp_path, scene):
    text = WITH_SELECTOR.replace("#py Property,Core,Camera,Camera\n", "")
    cfg = _cfg(tmp_path, text)
    settings = _settings(tmp_path, {"group": "Beads", "presets": ["bead-a", "bead-x", "bead-c"]},
                         camera="Andor")
    with pytest.raises(AcquisitionError) as info:
        load_hardware_core(cfg, settings)
    message = str(info.value)
    assert "no preset 'bead-x' for view 1" in message
    assert "does not load the camera 'Andor'" in message
    assert message.count("AcquisitionError") == 0 and message.endswith(".")


def test_property_value_not_allowed_is_named(tmp_path, scene):
    cfg = _cfg(tmp_path, WITH_SELECTOR)
    settings = _settings(tmp_path, {"device": "LEDs", "property": "Label", "values": ["Source-0", "Source-9",
                                                                                       "Source-2"]},
                         name="dev.json")
    with pytest.raises(AcquisitionError, match=r"LEDs\.Label does not allow the value 'Source-9' for view 1"):
        load_hardware_core(cfg, settings)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"format": "other"}, 'field "format"'),
        ({"sources_um_xyz": [[0, 0, -1]]}, "has 1 positions but 'source_selection' selects 3 views"),
        ({"source_selection": {"group": "G"}}, "needs either 'presets'"),
        ({"optics": {"wavelength_um": 0.6, "n_medium": 1.33, "na": 1.5}}, "NA 1.5"),
        ({"volume": {"shape_zyx": [16, 32, 32]}}, 'field "volume.voxel_um_zyx" is missing'),
        ({"roi": [0, 0, 32]}, 'field "roi"'),
        ({"hardware_sequencing": "yes"}, 'field "hardware_sequencing": Input should be a valid boolean'),
        # one schema (issue 14): unknown fields, numbers as strings, non-finite numbers, rectangular pixels
        ({"exposure": 20}, 'field "exposure" is not part of the format'),
        ({"camera_model": {"offset": 100, "gian": 1.0}}, 'field "camera_model.gian" is not part of the format'),
        ({"exposure_ms": "20"}, 'field "exposure_ms": Input should be a valid number'),
        ({"optics": {"wavelength_um": 0.6, "n_medium": 1.33, "na": 1e999}}, 'field "optics.na"'),
        ({"volume": {"shape_zyx": [16, 32, 32], "voxel_um_zyx": [0.25, 0.2, 0.25]}},
         'field "volume": Volume: camera pixels are square'),
        ({"camera_model": {"bit_depth": 20}}, 'field "camera_model.bit_depth"'),
        ({"bead_diameter_um": -0.2}, 'field "bead_diameter_um": Input should be greater than or equal to 0'),
    ],
)
def test_invalid_settings_files_are_refused_with_the_field(tmp_path, change, needle):
    path = _settings(tmp_path, {"group": "Beads", "presets": ["a", "b", "c"]})
    doc = json.loads(path.read_text())
    doc.update(change)
    path.write_text(json.dumps(doc))
    with pytest.raises(AcquisitionError, match=needle.replace("(", r"\(").replace(".", r"\.").replace("[", r"\[")):
        load_settings(path)


def test_missing_files_are_acquisition_errors(tmp_path):
    with pytest.raises(AcquisitionError, match="does not exist"):
        load_settings(tmp_path / "nope.json")
    settings = _settings(tmp_path, {"group": "Beads", "presets": ["a", "b", "c"]})
    with pytest.raises(AcquisitionError, match="configuration file .* does not exist"):
        load_hardware_core(tmp_path / "nope.cfg", settings)
    broken = _cfg(tmp_path, "Device,Cam,NoSuchAdapter,NoSuchCamera\n", "broken.cfg")
    with pytest.raises(AcquisitionError, match="Could not load the Micro-Manager configuration"):
        load_hardware_core(broken, settings)


@pytest.mark.parametrize(
    ("form", "sequencing"), [("group", True), ("device", True), ("group", False)],
    ids=["group-triggered", "device-triggered", "group-software"],
)
def test_complete_configuration_acquires(tmp_path, scene, form, sequencing):
    if form == "group":
        cfg = _cfg(tmp_path, WITH_SELECTOR)
        selection = {"group": "Beads", "presets": ["bead-a", "bead-b", "bead-c"]}
        presets = ["bead-a", "bead-b", "bead-c"]
    else:
        cfg = _cfg(tmp_path, WITH_SELECTOR.split("#py ConfigGroup")[0])
        selection = {"device": "LEDs", "property": "Label", "values": ["Source-2", "Source-1", "Source-0"]}
        presets = ["View-0", "View-1", "View-2"]
    settings = _settings(tmp_path, selection, bead_diameter_um=0.2, **({} if sequencing else {"hardware_sequencing": False}))
    core, info = load_hardware_core(cfg, settings)
    # the LED selector of the .cfg steps on camera triggers, so the settings decide
    assert info.extra["hardware_triggered"] is sequencing
    assert info.group == ("Beads" if form == "group" else "FDT-Source")
    assert info.presets == presets and info.camera == "Camera" and info.exposure_ms == 3.0
    assert core.getChannelGroup() == info.group
    np.testing.assert_allclose(info.sources_um_xyz, json.loads(settings.read_text())["sources_um_xyz"])

    writer = RecordingWriter(tmp_path / "hw.fdt", recording_meta(info), durable=False)
    acq = FDTAcquisition(core, info, writer, timepoints=2)
    snapped = []  # a snap is synchronous: the scene's last frame is the one just written
    acq.frame_written.connect(lambda t, v, f: snapped.append(scene.last_frame.view))
    summary = acq.run()
    writer.close()
    assert summary.status == "completed"
    excited = [0, 1, 2] if form == "group" else [2, 1, 0]  # the settings' mapping view → source
    with open_recording(writer.path) as rec:
        assert rec.n_timepoints == 2 and rec.meta.extra["settings_file"] == str(settings)
        assert rec.meta.bead_diameter_um == 0.2  # the settings' beads, which the reconstruction images
        for t in range(2):
            meta = rec.frame_metadata(t)
            assert [m["hardware_triggered"] for m in meta] == [sequencing] * 3
            if sequencing:  # what the camera imaged, from each frame's own tags
                assert [m["sim_view"] for m in meta] == excited
        if not sequencing:
            assert snapped == excited * 2
        assert [m["preset"] for m in rec.frame_metadata(1)] == presets
