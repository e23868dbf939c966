"""The ``nvplive`` command line, run as a real subprocess (issue 2/3: simulate, reconstruct, evaluate)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nvplive.acquisition.pupil_file import read_pupil, read_pupil_file
from nvplive.acquisition.recording import Recording
from nvplive.recon.metrics import absolute_scores
from nvplive.recon.simulate import Instrument

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
#: The CPU thread policy's line that reconstruct, evaluate, demo and bench print first (issue 16 finding 6).
THREADS_LINE = re.compile(r"^nvplive: \d+ CPU threads? \((all \d+ cores but one, as the live app; --threads N or NVPLIVE_THREADS to change|set by --threads|set by NVPLIVE_THREADS)\)$")


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


@pytest.fixture(scope="module")
def reconstructed(simulated: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of the simulated recording (which stays untouched, without a pupil, for the other
    tests) and the ``reconstruct`` run at default pupil settings that filled it: volumes and a
    pupil.json calibrated from its frames."""
    path = tmp_path_factory.mktemp("reconstructed") / simulated.name
    shutil.copytree(simulated, path)
    assert not (path / "pupil.json").exists()  # a recording without a pupil (as every older one)
    out = nvplive("reconstruct", str(path), "--iterations", "20", "--warm-iterations", "5", "--device", "cpu", cwd=path.parent)
    return path, out


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
    again = nvplive("simulate", "--phantom", "cell", "--views", "4", "--timepoints", "1", "--shape", "8,24,24", "again.fdt", cwd=tmp_path)
    assert again.returncode == 2 and "again.fdt already exists (a recording of 1 complete timepoint); pass --overwrite to replace it" in again.stderr


def test_reconstruct_then_evaluate(reconstructed: tuple[Path, subprocess.CompletedProcess]):
    simulated, out = reconstructed
    assert out.returncode == 0, out.stderr
    assert "reconstructed 2 timepoint(s)" in out.stdout
    assert (f"the detection pupil: calibrated on timepoint 0's frames, starting from the hard aperture; written to "
            f"{simulated / 'pupil.json'}") in out.stdout  # which pupil, said after the run
    assert THREADS_LINE.match(out.stderr.splitlines()[0]), out.stderr  # the thread policy, printed
    shown = [int(m) for m in re.findall(r"^reconstruct\b.*?(\d+)%", out.stderr, re.MULTILINE)]
    assert shown == sorted(shown) and shown[-1] == 100, out.stderr  # the calibration hands over to the fit, not back
    assert "calibrating the pupil" in out.stderr
    # one number called loss, on one scale: the calibration's misfit is not shown as a loss
    assert not re.search(r"calibrating the pupil.*loss", out.stderr), out.stderr
    with Recording.open(simulated) as rec:
        assert rec.volume_timepoints == (0, 1)
        assert rec.volume(0).shape == (8, 24, 24)
        assert rec.volume_settings[0]["method"] == "nvp"
        # the simulated beads' size is on their label, so the recording states it and the renderer images it
        assert rec.meta.bead_diameter_um == 0.2 and rec.volume_settings[0]["settings"]["bead_diameter_um"] == 0.2
    stored = read_pupil_file(simulated / "pupil.json")  # the calibrated pupil, stored
    assert stored.method == "frames" and stored.calibrated_from == "frames of small.fdt, timepoint 0, starting from the hard aperture"
    assert stored.bead_diameter_um == 0.2
    ev = nvplive("evaluate", str(simulated), "--json", cwd=simulated.parent)
    assert ev.returncode == 0, ev.stderr
    scores = json.loads(ev.stdout)
    assert scores["timepoints"] == 2 and scores["method"] == "nvp"
    for protocol in ("absolute", "published"):
        assert np.isfinite(scores[protocol]["psnr_db"]) and -1 <= scores[protocol]["ssim"] <= 1
    assert np.isfinite(scores["heldout_image_psnr_db"]) and np.isfinite(scores["heldout_all_zero_image_psnr_db"])
    with Recording.open(simulated) as rec:  # the floor to beat, beside the score
        truth = rec.ground_truth(0)
    zero = absolute_scores(np.zeros_like(truth), truth).psnr_db
    assert scores["absolute"]["all_zero_psnr_db"] == pytest.approx(zero, abs=3)  # the mean over both timepoints
    ev = nvplive("evaluate", str(simulated / "recording.json"), cwd=simulated.parent)  # its JSON named: the folder
    assert ev.stdout.startswith(f"{simulated}: nvp, 2 timepoint(s)"), ev.stdout
    assert "(the all-zero volume: " in ev.stdout and "higher is better" in ev.stdout
    assert "(through the all-zero volume: " in ev.stdout  # the held-out images' floor too
    little = scores["absolute"]["psnr_db"] - scores["absolute"]["all_zero_psnr_db"] < 3.0
    assert ("the volumes recover little of the specimen" in ev.stdout) == little, ev.stdout
    assert "the volumes were rendered with the detection pupil: " in ev.stdout and "rad RMS" in ev.stdout


def test_a_json_file_that_is_not_a_pupil_file_is_named_so(tmp_path: Path):
    (tmp_path / "junk.json").write_text(json.dumps({"settings": 1}))
    out = nvplive("reconstruct", "x.fdt", "--pupil", "junk.json", cwd=tmp_path)
    assert out.returncode == 2 and 'junk.json: not a pupil file (JSON without the "format": "nvp-live-pupil" field;' in out.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("simulate", "--phantom", "blob", "x.fdt"), "invalid choice"),
        (("simulate", "--phantom", "cell", "--shape", "8,24", "x.fdt"), "Z,Y,X"),
        (("simulate", "--phantom", "cell", "--voxel-um", "0.5", "x.fdt"), "too coarse"),
        (("simulate", "--phantom", "cell", "--voxel-um", "0.3,0.2,0.25", "x.fdt"),
         "camera pixels are square, so the lateral voxel sizes must be equal (dy 0.2 µm, dx 0.25 µm)"),
        (("simulate", "--phantom", "cell", "not-a-recording"), ".fdt"),
        (("reconstruct", "missing.fdt"), "missing.fdt"),
        (("reconstruct", "x.fdt", "--compile", "fast"), "invalid choice"),
        (("bench", "quality", "--device", "cpu"), "--device applies to the speed benchmark"),
        (("evaluate", "missing.fdt"), "missing.fdt"),
        (("reconstruct", "x.fdt", "--pupil", "nope.json"), "nope.json: no pupil file there"),
        (("calibrate", "x.txt"), "must be a recording (NAME.fdt) or a bead z-stack (.tif)"),
        (("calibrate", "stack.tif"), "stack.tif: no such bead z-stack file"),
        (("calibrate", "x.fdt", "--crop", "64"), "--crop applies to a bead z-stack (.tif), not to a recording's frames"),
        (("calibrate", "x.fdt", "--na", "0.8", "--pad", "8"), "--na and --pad apply to a bead z-stack (.tif)"),
        (("reconstruct", "x.fdt", "--pupil", "/bin/sh"), "not a pupil file (not text;"),
        (("reconstruct", "x.fdt", "--pupil", "/etc/os-release"), "not a pupil file (not JSON at line 1, column 1;"),
        (("evaluate", "/dev/null"), "/dev/null: not a recording folder (a recording is a folder NAME.fdt"),
        (("simulate", "--phantom", "cell", "--shape", "-8,16,16", "x.fdt"),
         "argument --shape: expected one argument (a value that starts with '-' is given as --shape=VALUE)"),
    ],
)
def test_user_mistakes_are_one_sentence_without_traceback(tmp_path: Path, args, fragment):
    out = nvplive(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]  # no thread-policy line before a refusal
    assert len(lines) == 1 and lines[0].startswith("nvplive: error:"), lines
    assert fragment in lines[0]


def test_evaluate_without_ground_truth_or_volumes_says_why(simulated: Path, tmp_path: Path):
    out = nvplive("simulate", "--phantom", "tissue", "--views", "3", "--shape", "8,24,24", "fresh.fdt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ev = nvplive("evaluate", "fresh.fdt", cwd=tmp_path)
    assert ev.returncode == 2 and "reconstruct" in ev.stderr


def test_commands_use_the_live_cpu_thread_policy(simulated: Path, tmp_path: Path, capsys, monkeypatch):
    """Finding 6: reconstruct left torch at its default thread count (18x slower on a loaded 2-core machine)."""
    import torch

    from nvplive.cli import _use_threads, main
    from nvplive.recon.reconstructor import cpu_threads, live_cpu_threads

    cores = os.cpu_count() or 2
    monkeypatch.delenv("NVPLIVE_THREADS", raising=False)
    assert cpu_threads()[0] == live_cpu_threads() == max(1, cores - 1)
    before = torch.get_num_threads()
    try:
        # the policy is applied before the command reads anything; it is said when the work starts
        # (the first progress step), so that a refusal stays one line
        assert main(["evaluate", str(tmp_path / "missing.fdt")]) == 2
        assert torch.get_num_threads() == max(1, cores - 1)
        assert capsys.readouterr().err.count("\n") == 1
        assert _use_threads(argparse.Namespace(threads=None)).startswith(f"nvplive: {max(1, cores - 1)} CPU thread")
        monkeypatch.setenv("NVPLIVE_THREADS", "3")
        assert main(["reconstruct", str(tmp_path / "missing.fdt")]) == 2
        assert torch.get_num_threads() == 3 and "CPU thread" not in capsys.readouterr().err
        assert "3 CPU threads (set by NVPLIVE_THREADS" in _use_threads(argparse.Namespace(threads=None))
        assert main(["reconstruct", "--threads", "2", str(tmp_path / "missing.fdt")]) == 2
        assert torch.get_num_threads() == 2 and "CPU thread" not in capsys.readouterr().err
        assert "2 CPU threads (set by --threads" in _use_threads(argparse.Namespace(threads=2))
        monkeypatch.setenv("NVPLIVE_THREADS", "many")
        assert main(["evaluate", str(simulated)]) == 2
        assert capsys.readouterr().err.strip() == "nvplive: error: NVPLIVE_THREADS must be a positive number of threads, got 'many'."
        monkeypatch.setenv("NVPLIVE_THREADS", "0")  # the variable named, as for 'many'
        assert main(["evaluate", str(simulated)]) == 2
        assert "The number of CPU threads (set by NVPLIVE_THREADS) must be positive, got 0." in capsys.readouterr().err
        monkeypatch.delenv("NVPLIVE_THREADS")
        assert f"more than this machine's {cores} cores" in _use_threads(argparse.Namespace(threads=cores + 1))  # oversubscription said
    finally:
        torch.set_num_threads(before)


def test_frames_smaller_than_the_ssim_window_are_refused_before_any_work(tmp_path: Path, capsys):
    """A recording of 8×8-pixel frames was written, and its reconstruction then failed inside
    the loss's convolution; now simulate refuses it in one sentence, and so does a reconstruction
    before it starts (a calibration alone, which needs no SSIM, still runs on such frames)."""
    from nvplive.cli import main
    from nvplive.errors import GeometryError
    from nvplive.recon.optics import Optics, VolumeGeometry
    from nvplive.recon.reconstructor import Reconstructor

    assert main(["simulate", "--phantom", "cell", "--shape", "4,8,8", str(tmp_path / "tiny.fdt")]) == 2
    assert ("--shape 4,8,8: Frames of 8×8 pixels are smaller than the image loss's 11-pixel SSIM window; a "
            "reconstruction needs at least 11×11.") in capsys.readouterr().err  # the option named, as the user gave it
    assert not (tmp_path / "tiny.fdt").exists()
    from nvplive.acquisition.offline import simulate_recording

    with pytest.raises(GeometryError, match="Frames of 8×8 pixels are smaller than the image loss's 11-pixel SSIM window"):
        simulate_recording(tmp_path / "tiny.fdt", phantom="cell", views=3, timepoints=1, shape_zyx=(4, 8, 8))
    assert not (tmp_path / "tiny.fdt").exists()
    reconstructor = Reconstructor(Optics(), VolumeGeometry((4, 12, 10), (0.25,) * 3), np.zeros((3, 3)), device="cpu")
    with pytest.raises(GeometryError, match="at least 11×11"):  # before the pupil calibration, not after its minutes
        reconstructor.cold_start(np.zeros((3, 12, 10), np.uint16))


def test_the_older_source_calibration_flag_is_still_accepted(tmp_path: Path, capsys):
    """``--source-calibration`` (opt-in before it became the default) still parses: the command
    gets as far as the missing recording instead of an argument error."""
    import torch

    from nvplive.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["reconstruct", "--source-calibration", str(tmp_path / "missing.fdt")]) == 2
        assert "missing.fdt" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_nonsense_fit_settings_are_refused_before_any_work(simulated: Path, tmp_path: Path, capsys):
    """A negative or non-finite weight, or a learning rate ≤ 0, is refused at parsing, naming the
    option, and the recording's volumes are not touched (they were replaced by a fit that ran
    to the end, or refused only when the settings were saved)."""
    from nvplive.cli import main

    before = sorted(p.name for p in simulated.iterdir())
    for option, value in (("--sparsity", "-1"), ("--tv", "-1"), ("--sparsity", "nan"), ("--tv", "inf"),
                          ("--lr", "0"), ("--lr", "-0.01"), ("--lr", "inf"), ("--bead-diameter", "-0.2"),
                          ("--depth-starts", "0,0"), ("--depth-starts", "0,2"), ("--depth-starts", "0,x")):
        assert main(["reconstruct", str(simulated), option, value]) == 2
        err = capsys.readouterr().err
        assert f"argument {option}" in err and value in err, err
    assert sorted(p.name for p in simulated.iterdir()) == before


def test_calibrate_a_recording_then_reconstruct_with_its_pupil(reconstructed: tuple[Path, subprocess.CompletedProcess],
                                                               tmp_path: Path):
    """Calibrated again from its frames, a recording's pupil starts from its earlier pupil.json;
    the file written is used as given by a reconstruction of the same recording."""
    simulated = tmp_path / "copy" / reconstructed[0].name
    shutil.copytree(reconstructed[0], simulated)
    out = nvplive("calibrate", str(simulated), "-o", str(tmp_path / "scope.json"), "--device", "cpu",
                  "--no-source-calibration", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "calibrated the pupil on small.fdt (4 views, starting from the recording's earlier pupil.json (frames, " in out.stdout
    pupil = read_pupil(tmp_path / "scope.json")
    assert len(pupil.zernike_rad) == 21 and pupil.zernike_rad[:3] == (0.0, 0.0, 0.0)
    out = nvplive("reconstruct", str(simulated), "--pupil", str(tmp_path / "scope.json"), "--no-pupil-calibration",
                  "--no-source-calibration", "--bead-diameter", "0.3", "--iterations", "3", "--warm-iterations", "2",
                  "--depth-starts", "0,0.05", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"the detection pupil: {tmp_path / 'scope.json'} (frames, " in out.stdout and ", as it is" in out.stdout
    assert "--no-source-calibration has no effect with --no-pupil-calibration" in out.stderr  # said, not silently moot
    # the pupil was calibrated on the recording's own beads (0.2 µm): other beads are warned of
    assert "scope.json was calibrated with beads of 0.2 µm, but the reconstruction images beads of 0.3 µm" in out.stderr
    with Recording.open(simulated) as rec:
        settings = rec.volume_settings[0]["settings"]
        assert settings["pupil_calibration"] is False and settings["source_calibration"] is False
        assert settings["bead_diameter_um"] == 0.3  # the renderer's beads (the option's over the recording's), saved
        assert settings["depth_starts_um"] == [0.0, 0.05]
        assert settings["message"].startswith("Fitted from 2 bead depth starts (+0, +0.05 µm); kept ")  # which, and why
    assert "timepoint 1: Fitted from 2 bead depth starts (+0, +0.05 µm); kept " in out.stdout
    from nvplive.acquisition.offline import evaluate_recording

    assert np.isfinite(evaluate_recording(simulated)["heldout_image_psnr_db"])  # held-out views rendered with them


def test_calibrate_refuses_an_output_inside_a_recording_or_a_missing_folder_before_the_fit(simulated: Path, tmp_path: Path):
    """A pupil file inside a recording (its frames, or a new name there) is refused in one
    sentence before the fit, naming how that recording's pupil.json is written, also with --overwrite; ``-o new/`` is a folder
    that does not exist, not a file named ``new``."""
    frames = simulated / "frames.ome.tif"
    before = frames.stat().st_mtime_ns
    for extra in ([], ["--overwrite"]):
        out = nvplive("calibrate", str(simulated), "-o", str(frames), *extra, "--device", "cpu", cwd=tmp_path)
        assert out.returncode == 2 and f"is inside the recording {simulated}" in out.stderr, out.stderr
        assert f"a recording's own pupil.json is written by calibrating its frames: nvplive calibrate {simulated}" in out.stderr
        assert "fitting the pupil" not in out.stderr  # refused before the fit, not after it
    assert frames.stat().st_mtime_ns == before
    out = nvplive("calibrate", str(simulated), "-o", "new/", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 2 and "new/: no such folder" in out.stderr, out.stderr
    assert not (tmp_path / "new").exists()


def test_volumes_keep_the_pupil_they_were_rendered_with_and_pupils_of_other_optics_are_refused(simulated: Path, tmp_path: Path,
                                                                                                capsys):
    """Each volume's settings carry its pupil, and ``evaluate`` renders the held-out views
    through it: a later pupil.json (a new calibration) does not change the scores of volumes
    already there. A pupil file calibrated for another λ is refused before any work, naming
    both values."""
    from nvplive.acquisition.offline import evaluate_recording
    from nvplive.acquisition.pupil_file import volume_pupil, write_pupil
    from nvplive.acquisition.recording_writer import store_pupil
    from nvplive.cli import _given_pupil
    from nvplive.recon.pupil import PupilParameters
    from nvplive.recon.reconstructor import ReconConfig

    path = tmp_path / "copy.fdt"
    shutil.copytree(simulated, path)
    with Recording.open(path) as rec:
        optics = rec.meta.optics
    given = PupilParameters((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3), (-0.1,))
    write_pupil(tmp_path / "given.json", given, optics, calibrated_from="test", method="frames")
    out = nvplive("reconstruct", str(path), "--pupil", str(tmp_path / "given.json"), "--no-pupil-calibration",
                  "--iterations", "3", "--warm-iterations", "2", "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with Recording.open(path) as rec:
        stored = [rec.volume_settings[t]["settings"] for t in rec.volume_timepoints]
    assert all(volume_pupil(s, path) == given for s in stored)
    first = evaluate_recording(path)
    assert first["pupil"]["summary"] == "aberration 0.300 rad RMS, apodisation a₁ -0.100"  # the volumes' pupil, named
    assert first["pupil"]["zernike_rad"] == list(given.zernike_rad) and first["pupil"]["same_at_every_timepoint"]
    # against the simulated instrument's own pupil (the recording's ground truth): named, and the error on Noll 5-22
    with Recording.open(path) as rec:
        true_pupil = Instrument.from_dict(rec.meta.extra["simulated_instrument"]).pupil
    assert first["pupil"]["true_summary"] == true_pupil.summary and true_pupil.aberration_rms_rad > 0
    given_c = list(given.zernike_rad) + [0.0] * 21
    expected = math.sqrt(sum((given_c[j - 2] - true_pupil.zernike_rad[j - 2]) ** 2 for j in range(5, 23)))
    assert first["pupil"]["wavefront_error_rad"] == pytest.approx(expected)
    store_pupil(path, PupilParameters((0.0,) * 9 + (1.0,)), optics, calibrated_from="a later calibration", method="frames")
    assert evaluate_recording(path) == first
    assert volume_pupil({}, path) == read_pupil(path)  # volumes written before settings carried their pupil
    # the recording's own pupil.json, calibrated with other beads than the recording's (0.2 µm): warned of
    store_pupil(path, given, optics, calibrated_from="other beads", method="frames", bead_diameter_um=0.5)
    assert _given_pupil(path, None, ReconConfig()) == (None, None)
    assert "pupil.json was calibrated with beads of 0.5 µm, but the reconstruction images beads of 0.2 µm" in capsys.readouterr().err

    other = replace(optics, wavelength_um=0.45, na=optics.na + 0.1)
    write_pupil(tmp_path / "other.json", given, other, calibrated_from="test", method="frames")
    before = (path / "volumes.ome.tif").stat().st_mtime_ns
    out = nvplive("reconstruct", str(path), "--pupil", str(tmp_path / "other.json"), "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 2
    assert (f"was calibrated for λ 0.45 µm, NA {other.na:g}, but copy.fdt was recorded at λ {optics.wavelength_um:g} µm, "
            f"NA {optics.na:g};") in out.stderr  # every value that differs, both sides
    assert (path / "volumes.ome.tif").stat().st_mtime_ns == before


def test_calibrate_a_bead_z_stack(tmp_path: Path):
    """A synthetic stack (parameters in the JSON beside it, as for the measured one): the pupil
    is fitted and written beside the stack."""
    import torch

    from nvplive.recon.calibration import stack_model
    from nvplive.recon.optics import Optics
    from nvplive.recon.physics import camera_intensity, homogeneous_spectrum, pupil_on_grid
    from nvplive.recon.pupil import PupilParameters

    optics = Optics(wavelength_um=0.52, n_medium=1.333, na=0.8, emission_fwhm_um=0.0)
    model = stack_model(optics, (40, 40), 0.1, 2.0)
    truth = PupilParameters((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.4))
    depths = model.geometry.focal_z_um - np.arange(-3, 4) * 0.4
    sources = torch.tensor([[0.05, -0.03, z] for z in depths], dtype=torch.float64)
    with torch.no_grad():
        planes = camera_intensity(model, homogeneous_spectrum(model, sources), pupil=pupil_on_grid(model, truth)).numpy()
    counts = np.random.default_rng(0).poisson(planes / planes.max() * 2000.0 + 100.0).astype(np.uint16)
    data = tmp_path / "data"  # a data folder: the pupil file goes to the current folder, not beside the stack
    data.mkdir()
    tifffile.imwrite(data / "beads.tif", counts)
    (data / "beads.json").write_text(json.dumps(
        {"wavelength_um": 0.52, "na": 0.8, "n_medium": 1.333, "pixel_size_um": 0.1, "z_step_um": 0.4, "bead_diameter_um": 0.05}
    ))
    out = nvplive("calibrate", "data/beads.tif", "--z-direction", "1", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "7 planes of 1 bead (the whole frame), z direction +1" in out.stdout and "the stack's noise alone would leave" in out.stdout
    assert re.search(r"relative residual 0\.\d+ with the hard aperture .*, 0\.\d+ calibrated \(the stack's noise", out.stdout)
    assert "apodisation a₁ " in out.stdout and "did not lower the residual" not in out.stderr
    assert "full scale" not in out.stderr  # no saturation warning for a stack that does not saturate
    assert sorted(p.name for p in data.iterdir()) == ["beads.json", "beads.tif"]
    doc = read_pupil_file(tmp_path / "beads.pupil.json")
    assert doc.method == "bead-z-stack" and doc.residual < doc.residual_before
    assert doc.bead_diameter_um == 0.05  # STACK.json's beads, imaged by the fit and recorded
    assert abs(doc.zernike_rad[11 - 2] - 0.4) < 0.1  # primary spherical
    # the 32 × 32 pixels around the bead, 10 iterations per pass: a faster fit, still the spherical term's sign and size
    out = nvplive("calibrate", "data/beads.tif", "--z-direction", "1", "--crop", "32", "--iterations", "10",
                  "--pad", "12", "-o", "cropped.json", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert abs(read_pupil_file(tmp_path / "cropped.json").zernike_rad[11 - 2] - 0.4) < 0.15
    # one iteration per pass leaves the pupil where it started: written, but said
    out = nvplive("calibrate", "data/beads.tif", "--z-direction", "1", "--crop", "32", "--iterations", "1",
                  "--pad", "12", "-o", "one.json", "--threads", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "warning: the calibration did not lower the residual" in out.stderr, out.stdout


def test_a_bead_z_stack_calibration_refuses_before_the_fit(tmp_path: Path, capsys):
    """What would fail or destroy data after a fit of minutes is refused before it: an output
    that is the stack or its JSON, an output folder that takes no file or does not exist (a
    typo is not created), an earlier pupil file (without --overwrite), parameters that are not
    positive numbers (a JSON true is no NA), a crop larger than the frames, a recording's option
    (--timepoint), --device cuda (the stack is fitted on the CPU), a camera bit depth that
    disagrees with the TIFF's own metadata (both values named) or cannot have written its pixels,
    and a stack that shows no bead."""
    import torch

    from nvplive.cli import main

    stack = np.full((3, 16, 16), 100, np.uint16)
    tifffile.imwrite(tmp_path / "beads.tif", stack, photometric="minisblack")
    params = {"wavelength_um": 0.52, "na": 0.8, "n_medium": 1.333, "pixel_size_um": 0.1, "z_step_um": 0.4}
    (tmp_path / "beads.json").write_text(json.dumps(params))
    before = torch.get_num_threads()
    cases = [
        (["-o", str(tmp_path / "beads.tif")], "is the data being calibrated"),
        (["-o", str(tmp_path / "beads.json")], "is the data being calibrated"),
        (["-o", str(tmp_path / "beads.tif" / "p.json")], "cannot be written"),  # its folder is a file
        (["-o", str(tmp_path / "typo" / "p.json")], f"cannot be written: {tmp_path / 'typo'} does not exist"),  # not created
        (["-o", str(tmp_path / "earlier.json")], "earlier.json: already exists; replace it with nvplive calibrate --overwrite"),
        (["--device", "cuda"], "fitted on the CPU"),
        (["--crop", "500", "-o", str(tmp_path / "p.json")], "a crop of 500×500 pixels must be at least 16 and at most its 16×16 frames"),
        (["--timepoint", "2"], "--timepoint applies to a recording's frames (REC.fdt), not to a bead z-stack"),
        (["--na", "2", "-o", str(tmp_path / "p.json")],
         "--na: the z-stack's optics are impossible: NA 2.0 must be smaller than the medium index 1.333."),
    ]
    (tmp_path / "earlier.json").write_text("{}")
    try:
        for extra, fragment in cases:
            assert main(["calibrate", str(tmp_path / "beads.tif"), *extra]) == 2
            assert fragment in capsys.readouterr().err, extra
        (tmp_path / "beads.json").write_text(json.dumps({**params, "na": True}))
        assert main(["calibrate", str(tmp_path / "beads.tif")]) == 2
        assert "beads.json: the z-stack's na must be a positive number, got true" in capsys.readouterr().err
        (tmp_path / "beads.json").write_text(json.dumps({**params, "bead_diameter_um": -0.1}))
        assert main(["calibrate", str(tmp_path / "beads.tif")]) == 2
        assert "beads.json: the z-stack's bead_diameter_um must be a number ≥ 0, got -0.1" in capsys.readouterr().err
        (tmp_path / "beads.json").write_text(json.dumps({**params, "emission_fwhm_um": -0.01}))
        assert main(["calibrate", str(tmp_path / "beads.tif")]) == 2
        assert "beads.json: the z-stack's emission_fwhm_um must be a number ≥ 0, got -0.01" in capsys.readouterr().err
        # the camera's bit depth: the TIFF's own word beats the settings, and a depth the pixels cannot hold is refused
        (tmp_path / "beads.json").write_text(json.dumps({**params, "bit_depth": 12}))
        tifffile.imwrite(tmp_path / "beads.tif", stack, ome=True, metadata={"axes": "ZYX", "SignificantBits": 14})
        assert main(["calibrate", str(tmp_path / "beads.tif"), "-o", str(tmp_path / "p.json")]) == 2
        assert ("the camera's bit depth is 14 in its OME metadata (SignificantBits), but "
                f"{tmp_path / 'beads.json'} says 12") in capsys.readouterr().err
        assert main(["calibrate", str(tmp_path / "beads.tif"), "--bit-depth", "10", "-o", str(tmp_path / "p.json")]) == 2
        assert "bit depth is 14 in its OME metadata (SignificantBits), but --bit-depth says 10" in capsys.readouterr().err
        # an option that agrees with the TIFF does not hide a JSON that does not
        assert main(["calibrate", str(tmp_path / "beads.tif"), "--bit-depth", "14", "-o", str(tmp_path / "p.json")]) == 2
        assert f"bit depth is 14 in its OME metadata (SignificantBits), but {tmp_path / 'beads.json'} says 12" in capsys.readouterr().err
        tifffile.imwrite(tmp_path / "beads.tif", stack, photometric="minisblack")
        assert main(["calibrate", str(tmp_path / "beads.tif"), "--bit-depth", "20", "-o", str(tmp_path / "p.json")]) == 2
        assert "a camera of 20 bits cannot have written uint16 frames (bit depth from --bit-depth)" in capsys.readouterr().err
        # counts above the stated full scale: the depth is wrong, not the pixels saturated
        assert main(["calibrate", str(tmp_path / "beads.tif"), "--bit-depth", "6", "-o", str(tmp_path / "p.json")]) == 2
        assert "the frames hold counts up to 100, above the full scale 63 of a camera of 6 bits (bit depth from --bit-depth)" \
            in capsys.readouterr().err
        (tmp_path / "beads.json").write_text(json.dumps({**params, "emission_fwhm_um": 3.0}))
        assert main(["calibrate", str(tmp_path / "beads.tif"), "-o", str(tmp_path / "p.json")]) == 2
        assert "beads.json: the z-stack's optics are impossible: emission_fwhm_um 3 must be below half the wavelength" \
            in capsys.readouterr().err
        # a stack that shows no bead (all 100 counts): refused, naming the file, before any fit
        (tmp_path / "beads.json").write_text(json.dumps(params))
        assert main(["calibrate", str(tmp_path / "beads.tif"), "-o", str(tmp_path / "p.json")]) == 2
        assert f"{tmp_path / 'beads.tif'}: no bead stands out of the noise in the stack's maximum projection" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(tifffile.imread(tmp_path / "beads.tif"), stack)
    assert not (tmp_path / "beads.pupil.json").exists() and not (tmp_path / "typo").exists()
    assert (tmp_path / "earlier.json").read_text() == "{}"  # an earlier pupil file is kept


def test_sigterm_unwinds_like_ctrl_c_and_leaves_the_recording_as_it_was(simulated: Path, tmp_path: Path):
    """``kill``/``timeout`` (SIGTERM) mid-reconstruction: the command says so, exits 143,
    releases the recording's lock (no stale holder left) and keeps the volumes there were."""
    import signal
    import time

    from nvplive.acquisition.recording_lock import LOCK_NAME, lock_holder

    path = tmp_path / "copy.fdt"
    shutil.copytree(simulated, path)
    with Recording.open(path) as rec:
        before = rec.volume_timepoints
    run = subprocess.Popen([sys.executable, "-m", "nvplive", "reconstruct", str(path), "--iterations", "3000", "--device", "cpu"],
                           cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while lock_holder(path) is None and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143 and "nvplive: terminated." in err, err
    assert lock_holder(path) is None and (path / LOCK_NAME).read_text() == ""  # released, not stale
    with Recording.open(path) as rec:
        assert rec.volume_timepoints == before and not rec.interrupted


def test_sigterm_stops_the_headless_demo_in_its_own_words(tmp_path: Path):
    """A stop signal (``kill``) to ``demo --headless``: the first stops the acquisition and says
    that another stop signal (not Ctrl+C) cancels what is waiting; the second does; exit 143."""
    import signal
    import time

    out = tmp_path / "demo.fdt"
    run = subprocess.Popen([sys.executable, "-m", "nvplive", "demo", "--headless", "--out", str(out), "--timepoints", "1000",
                            "--interval", "0.5", "--device", "cpu"],
                           cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert run.stderr is not None

    def read_until(word: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(word in line for line in lines):
            line = run.stderr.readline()
            if not line:
                break
            lines.append(line)
        assert any(word in line for line in lines), lines

    read_until("t=0 acquired")  # the session runs
    run.send_signal(signal.SIGTERM)
    read_until("Interrupted:")
    run.send_signal(signal.SIGTERM)
    _, rest = run.communicate(timeout=120)
    text = "".join(lines) + rest
    assert "another stop signal cancels it" in text and "Ctrl+C" not in text, text
    assert run.returncode == 143 and "nvplive: terminated." in text, text
    with Recording.open(out) as rec:  # the recording keeps what it had, closed
        assert not rec.interrupted


def test_the_cpu_policy_tunes_glibcs_allocator_for_torch():
    """Every command applies it (``use_cpu_threads``): on glibc, mallopt accepts each setting of
    ``ALLOCATOR_ENV`` (a 16×32×32 reconstruction: 50.8 s → 36.6 s, BENCHMARKS.md "Allocator")."""
    import platform

    from nvplive.recon.reconstructor import ALLOCATOR_ENV, tune_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    assert set(ALLOCATOR_ENV) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}
    assert tune_allocator() is True


def test_plain_progress_lines_every_tenth_and_during_a_long_tenth(monkeypatch):
    """In a log file the bar prints a line per tenth, and also when a tenth lasts longer than
    PLAIN_LINE_S (a pupil calibration can hold one for minutes)."""
    import io

    from rich.console import Console

    from nvplive import cli

    def lines(pause_s: float) -> list[str]:
        monkeypatch.setattr(cli, "PLAIN_LINE_S", pause_s)
        out = io.StringIO()
        with cli.ProgressBar("fit", Console(file=out, force_terminal=False, width=120)) as bar:
            for done in (0, 1, 2, 3, 50, 100):
                bar(done, 100, f"step {done}")
        return [line for line in out.getvalue().splitlines() if line.strip()]

    assert [re.search(r"\d+%", line).group() for line in lines(1e9)] == ["0%", "50%", "100%"]  # a line per tenth reached
    assert len(lines(0.0)) == 6  # a long tenth still shows that work goes on


def test_a_cold_start_calibration_holds_the_bar_and_counts_its_evaluations():
    """The calibration's length is not known in advance, so it does not move the bar (the
    remaining-time estimate then follows the iterations alone); its message counts evaluations."""
    from nvplive.acquisition.offline import timepoint_progress

    shown: list[tuple[int, int, str]] = []
    report = timepoint_progress(lambda done, total, message: shown.append((done, total, message)), 1, 3)
    report(12, 160, 3.5, "calibration")
    report(80, 160, 2.0, "calibration")
    report(150, 300, 0.0123, "fit")
    report(300, 300, 0.0101, "fit")
    assert [(done, total) for done, total, _ in shown] == [(1000, 3000), (1000, 3000), (1500, 3000), (2000, 3000)]
    assert shown[0][2] == "timepoint 2/3, calibrating the pupil (evaluation 12, at most 160)"
    assert shown[2][2] == "timepoint 2/3, loss 0.0123"


def test_a_calibrations_remaining_time_follows_the_whole_runs_pace():
    """``nvplive calibrate`` counts each stage's budget of evaluations and skips what a stage that
    converges early leaves unused. Over the last 30 s's pace (rich's default) such a jump swung
    the remaining time by 26× from one evaluation to the next; over the whole run's pace it moves
    by less than 2× (a jump still shortens it: how much of a stage's budget the later stages
    leave unused is not known in advance). The stages as the high-NA disc_cell's calibration ran
    them (BENCHMARKS.md, "The source-edge test at the centre wavelength only": evaluations and
    seconds of the first five of 7 stages, a budget of 150 × 5/4 evaluations each; the last two
    were skipped)."""
    import io

    from rich.console import Console

    from nvplive.cli import ProgressBar

    ran = ((11, 23.9), (170, 219.8), (49, 67.5), (43, 161.0), (11, 15.9))
    stages, budget = 7, 150 * 5 // 4

    def estimates(whole_run_pace: bool) -> list[float]:
        now = [0.0]
        console = Console(file=io.StringIO(), force_terminal=False, get_time=lambda: now[0])
        shown = []
        with ProgressBar("calibrate", console, whole_run_pace=whole_run_pace) as bar:
            for stage, (n, seconds) in enumerate(ran):
                for evaluation in range(1, n + 1):
                    now[0] += seconds / n
                    bar(stage * budget + evaluation, stages * budget, "fitting the pupil")
                    shown.append(bar._progress.tasks[0].time_remaining)
        return shown[ran[0][0]:]  # from the second stage on: a pace to go by

    def largest_swing(shown: list[float]) -> float:
        return max(max(a, b) / min(a, b) for a, b in zip(shown, shown[1:]))

    assert largest_swing(estimates(False)) > 5
    assert largest_swing(estimates(True)) < 2
