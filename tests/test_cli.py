"""The ``nvplive`` command line, run as a real subprocess (issue 2/3: simulate, reconstruct, evaluate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nvplive.acquisition.recording import Recording

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def nvplive(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvplive", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    out = nvplive("simulate", "--phantom", "cell", "--views", "4", "--timepoints", "2", "--shape", "8,24,24", "--seed", "3", "small.fdt", cwd=root)
    assert out.returncode == 0, out.stderr
    assert "simulate" in out.stderr  # progress is shown
    return root / "small.fdt"


def test_simulate_writes_a_valid_recording(simulated: Path):
    with Recording.open(simulated) as rec:
        assert rec.n_timepoints == 2 and rec.n_views == 4
        assert rec.frames(0).dtype == np.uint16 and rec.frames(0).shape == (4, 24, 24)
        assert rec.has_ground_truth and rec.ground_truth(1).shape == (8, 24, 24)
        assert rec.meta.extra["phantom"] == "cell"
        assert rec.ground_truth(0).max() > 0.01
    with tifffile.TiffFile(simulated / "frames.ome.tif") as tif:
        assert tif.is_ome


def test_simulate_is_deterministic_under_a_seed(simulated: Path, tmp_path: Path):
    out = nvplive("simulate", "--phantom", "cell", "--views", "4", "--timepoints", "1", "--shape", "8,24,24", "--seed", "3", "again.fdt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with Recording.open(simulated) as a, Recording.open(tmp_path / "again.fdt") as b:
        assert np.array_equal(a.frames(0), b.frames(0))


def test_reconstruct_then_evaluate(simulated: Path):
    out = nvplive("reconstruct", str(simulated), "--iterations", "20", "--warm-iterations", "5", "--device", "cpu", cwd=simulated.parent)
    assert out.returncode == 0, out.stderr
    assert "reconstructed 2 timepoint(s)" in out.stdout
    with Recording.open(simulated) as rec:
        assert rec.volume_timepoints == (0, 1)
        assert rec.volume(0).shape == (8, 24, 24)
        assert rec.volume_settings[0]["method"] == "nvp"
    ev = nvplive("evaluate", str(simulated), "--json", cwd=simulated.parent)
    assert ev.returncode == 0, ev.stderr
    scores = json.loads(ev.stdout)
    assert scores["timepoints"] == 2 and scores["method"] == "nvp"
    for protocol in ("absolute", "published"):
        assert np.isfinite(scores[protocol]["psnr_db"]) and -1 <= scores[protocol]["ssim"] <= 1
    assert np.isfinite(scores["heldout_image_psnr_db"])


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("simulate", "--phantom", "blob", "x.fdt"), "invalid choice"),
        (("simulate", "--phantom", "cell", "--shape", "8,24", "x.fdt"), "Z,Y,X"),
        (("simulate", "--phantom", "cell", "--voxel-um", "0.5", "x.fdt"), "too coarse"),
        (("simulate", "--phantom", "cell", "not-a-recording"), ".fdt"),
        (("reconstruct", "missing.fdt"), "missing.fdt"),
        (("reconstruct", "x.fdt", "--compile", "fast"), "invalid choice"),
        (("bench", "quality", "--device", "cpu"), "--device applies to the speed benchmark"),
        (("evaluate", "missing.fdt"), "missing.fdt"),
    ],
)
def test_user_mistakes_are_one_sentence_without_traceback(tmp_path: Path, args, fragment):
    out = nvplive(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nvplive: error:")
    assert fragment in lines[0]


def test_evaluate_without_ground_truth_or_volumes_says_why(simulated: Path, tmp_path: Path):
    out = nvplive("simulate", "--phantom", "tissue", "--views", "3", "--shape", "8,24,24", "fresh.fdt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ev = nvplive("evaluate", "fresh.fdt", cwd=tmp_path)
    assert ev.returncode == 2 and "reconstruct" in ev.stderr
