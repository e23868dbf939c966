"""One OME metadata builder (acquisition/ome.py): the Δn export and the recording's TIFFs."""

import numpy as np
import pytest
import tifffile
from ome_types import from_xml

from nvplive.acquisition.ome import export_dn_stack, ome_xml


def test_dn_stack_export_carries_voxel_sizes_time_and_medium(tmp_path):
    dn = np.random.default_rng(0).normal(0, 0.01, (3, 4, 8, 10)).astype(np.float32)
    path = export_dn_stack(tmp_path / "stack", dn, (0.5, 0.25, 0.2), n_medium=1.333, interval_s=2.0, timepoints=[4, 5, 6])
    assert path.name == "stack.ome.tif"
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.asarray(), dn)
        pixels = from_xml(tif.ome_metadata).images[0].pixels
    assert (pixels.size_t, pixels.size_z, pixels.size_y, pixels.size_x) == (3, 4, 8, 10)
    assert (pixels.physical_size_z, pixels.physical_size_y, pixels.physical_size_x) == (0.5, 0.25, 0.2)
    assert pixels.physical_size_x_unit.value == "µm" and pixels.time_increment == 2.0
    assert pixels.channels[0].name == "delta_n"
    description = from_xml(tifffile.TiffFile(path).ome_metadata).images[0].description
    assert "RI = 1.333000 + Δn" in description and "Timepoints: 4, 5, 6" in description


def test_export_refuses_what_is_not_a_volume(tmp_path):
    with pytest.raises(ValueError, match="must be"):
        export_dn_stack(tmp_path / "flat", np.zeros((8, 8)), (1, 1, 1), n_medium=1.33)


def test_recording_ome_xml_describes_pages_with_the_same_builder():
    text = ome_xml(dtype="uint16", shape=(2, 7, 16, 16), axes="TCYX", name="run frames", pixel_um_zyx=(0.5, 0.5),
                   description="{}", channel_names=[f"view {v}" for v in range(7)], time_increment_s=1.5)
    pixels = from_xml(text.decode("ascii")).images[0].pixels
    assert (pixels.size_t, pixels.size_c, pixels.size_z) == (2, 7, 1)
    assert pixels.physical_size_x == 0.5 and pixels.time_increment == 1.5 and pixels.type.value == "uint16"
    assert [c.name for c in pixels.channels] == [f"view {v}" for v in range(7)]
