"""Times diffractio's beam-propagation method over a Δn volume (run by the speed benchmark).

Usage: PYTHON_WITH_DIFFRACTIO diffractio_bpm.py VOLUME.npy '{"voxel_um": [dz, dy, dx],
"wavelength_um": λ, "n_medium": n, "views": V}'. Prints one JSON line {"seconds": …}:
the time for V single-view propagations (a spherical wave from below each time).
diffractio needs numpy < 2 and PyQt5, so it lives in its own environment.
"""

import json
import sys
import time

import numpy as np
from diffractio.scalar_fields_XYZ import Scalar_field_XYZ
from diffractio.scalar_sources_XY import Scalar_source_XY

volume = np.load(sys.argv[1])
cfg = json.loads(sys.argv[2])
nz, ny, nx = volume.shape
dz, dy, dx = cfg["voxel_um"]
x = (np.arange(nx) - nx / 2) * dx
y = (np.arange(ny) - ny / 2) * dy
z = (np.arange(nz) + 0.5) * dz
start = time.perf_counter()
for view in range(cfg["views"]):
    field = Scalar_field_XYZ(x=x, y=y, z=z, wavelength=cfg["wavelength_um"], n_background=cfg["n_medium"])
    field.n = cfg["n_medium"] + np.transpose(volume, (2, 1, 0))
    source = Scalar_source_XY(x=x, y=y, wavelength=cfg["wavelength_um"])
    source.spherical_wave(r0=(0.0, 0.0), z0=-2.0 - 0.3 * view)
    field.incident_field(source)
    field.BPM(verbose=False)
print(json.dumps({"seconds": time.perf_counter() - start}))
