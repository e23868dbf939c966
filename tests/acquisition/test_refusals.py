"""Refusal before allocation (issue 16 finding 4) and the smaller items of finding 7.

Implausible optics, absurd numbers and volumes that cannot fit in memory are refused
with one sentence before anything large is allocated; numerics errors that still
escape become the project's one-line error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_recording import make_meta, write_recording

from nvplive import cli
from nvplive.acquisition.recording import JSON_NAME, RecordingWriter, open_recording
from nvplive.errors import GeometryError, ReconstructionError
from nvplive.recon.capacity import check_memory, check_plausible, estimated_bytes, free_bytes
from nvplive.recon.optics import Optics, VolumeGeometry


def run(capsys, *argv: str) -> str:
    """``nvplive ARGV`` in this process; returns its error line (exit status 2, one sentence)."""
    assert cli.main(list(argv)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and " CPU thread" not in line]
    assert len(lines) == 1 and lines[0].startswith("nvplive: error: ") and lines[0].endswith("."), lines
    assert "Traceback" not in lines[0]
    return lines[0]


def edit_json(path: Path, change) -> None:
    doc = json.loads((path / JSON_NAME).read_text())
    change(doc)
    (path / JSON_NAME).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda d: d["optics"].update(wavelength_um=600), "a wavelength of 600 µm is not an optical emission wavelength"),
        (lambda d: d["volume"].update(voxel_um_zyx=[1e308, 0.1, 0.1]), "z extent 3 × 1e+308 µm exceeds 10 mm"),
        (lambda d: d["volume"].update(focal_plane_z_um=1e308), "focal plane at 1e+308 µm"),
        (lambda d: d["views"][0].update(source_um_xyz=[0, 0, -1e308]), "view 0"),
        (lambda d: d["optics"].update(n_medium=1e300), "medium index of 1e+300 is implausible"),
    ],
)
def test_implausible_recording_is_refused_in_one_sentence(tmp_path, capsys, change, fragment):
    """wavelength_um 600 was OOM-killed at ~24 GB; 1e308 gave OverflowError tracebacks."""
    path = tmp_path / "odd.fdt"
    write_recording(path, make_meta())
    edit_json(path, change)
    message = run(capsys, "reconstruct", str(path), "--iterations", "2", "--device", "cpu")
    assert fragment in message, message
    with open_recording(path) as rec:  # nothing replaced
        assert rec.volume_timepoints == (0, 2) and rec.volume_settings[0]["method"] == "nvp"


def test_volume_too_large_for_memory_is_refused_before_allocation(tmp_path, capsys):
    """shape_zyx [4096, 32, 32] with matching 32×32 frames was OOM-killed after a minute."""
    meta = make_meta(shape=(4096, 32, 32))
    path = tmp_path / "deep.fdt"
    with RecordingWriter(path, meta) as writer:
        frames = np.full((meta.n_views, 32, 32), 200, np.uint16)
        writer.write_timepoint(0, frames, [0.0] * meta.n_views)
    need = estimated_bytes(meta.optics, meta.geometry, meta.n_views, 6.0, method="nvp")
    assert need > free_bytes("cpu")
    message = run(capsys, "reconstruct", str(path), "--device", "cpu")
    assert "Reconstructing 4096×32×32 voxels with 3 views needs about" in message
    assert "is free in the computer's memory" in message and "fewer slices" in message
    assert not (path / "volumes.ome.tif.new").exists()


def test_simulate_refuses_an_impossible_size(tmp_path, capsys):
    message = run(capsys, "simulate", "--phantom", "cell", "--shape", "4096,256,256", str(tmp_path / "huge.fdt"))
    assert "Simulating 4096×256×256 voxels with 7 views needs about" in message
    assert not (tmp_path / "huge.fdt").exists()


def test_estimate_is_modest_for_the_demo_size_and_plausible_values_pass():
    optics, geometry = Optics(), VolumeGeometry((32, 64, 64), (0.25, 0.25, 0.25))
    check_plausible(optics, geometry, np.zeros((7, 3)))
    need = check_memory(optics, geometry, 7, 6.0, "cpu", method="nvp")
    assert 200 * 2**20 < need < 1024 * 2**20  # measured peak ~300 MB (recon/capacity.py)
    with pytest.raises(GeometryError, match="finer than"):
        check_plausible(optics, VolumeGeometry((32, 64, 64), (0.25, 0.001, 0.001)))
    with pytest.raises(ReconstructionError, match="needs about"):
        check_memory(optics, VolumeGeometry((8192, 64, 64), (0.25, 0.25, 0.25)), 7, 6.0, "cpu", method="nvp")


def test_numerics_errors_become_one_sentence(capsys, monkeypatch):
    """Every command's top level: RuntimeError/MemoryError/OverflowError from the numerics, no traceback."""
    failures = {
        "torch allocation": lambda: torch.empty(2**62, dtype=torch.uint8),
        "numpy allocation": lambda: np.empty(2**62, np.uint8),
        "overflow": lambda: math.ceil(float("inf")),
        "other": lambda: torch.zeros(2, 3) @ torch.zeros(2, 3),
    }
    expected = {
        "torch allocation": "ran out of memory",
        "numpy allocation": "ran out of memory",
        "overflow": "A number overflowed",
        "other": "The computation failed (RuntimeError: ",
    }
    for name, failure in failures.items():
        monkeypatch.setitem(cli.COMMANDS, "evaluate", lambda args, failure=failure: failure())
        message = run(capsys, "evaluate", "x.fdt")
        assert expected[name] in message, message
    monkeypatch.setenv("NVPLIVE_DEBUG", "1")
    with pytest.raises(OverflowError):
        monkeypatch.setitem(cli.COMMANDS, "evaluate", lambda args: failures["overflow"]())
        cli.main(["evaluate", "x.fdt"])


def test_demo_names_a_free_output_instead_of_an_api_word(tmp_path, capsys):
    """Finding 7: a second `demo --headless --out DIR` said "pass overwrite=True"."""
    (tmp_path / "demo.fdt").mkdir()
    (tmp_path / "demo-2.fdt").mkdir()
    message = run(capsys, "demo", "--headless", "--out", str(tmp_path / "demo.fdt"), "--timepoints", "1")
    assert f"{tmp_path / 'demo.fdt'} already exists from an earlier run; pass --out {tmp_path / 'demo-3.fdt'}" in message
    assert "overwrite" not in message


KILLED_BEFORE_FIRST_TIMEPOINT = r"""
import sys
sys.path.insert(0, sys.argv[2])
from test_recording import make_meta, frames_of
from nvplive.acquisition.recording import RecordingWriter

writer = RecordingWriter(sys.argv[1], make_meta())
writer.write_frame(0, 0, frames_of(0, make_meta())[0], 0.0)  # one view of the first timepoint
print("ready", flush=True)
sys.stdin.readline()
"""


def test_evaluate_of_a_recording_killed_before_its_first_timepoint(tmp_path, capsys):
    """Finding 7: evaluate said "not a simulated recording" of a recording killed before its first timepoint."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "early.fdt"
    child = subprocess.Popen([sys.executable, "-c", KILLED_BEFORE_FIRST_TIMEPOINT, str(path), str(Path(__file__).parent)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready", child.stderr.read()
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=30)
    message = run(capsys, "evaluate", str(path))
    assert "holds no complete timepoint" in message and "simulated" not in message
