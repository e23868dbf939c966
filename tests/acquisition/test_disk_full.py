"""Disk full during a recording (issue 7): the acquisition stops with a clear error and
nothing already written is corrupted.

The disk fills for real at the operating-system level: the demo runs in a subprocess whose
file-size limit (RLIMIT_FSIZE) is small, so a write into the frames file fails (EFBIG, the
same path as ENOSPC through the writer) after a few timepoints."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from nvplive.acquisition.recording import Recording

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    import torch
    torch.set_num_threads(1)
    from nvplive.acquisition.demo import default_reconstructor_factory, run_headless_demo
    from nvplive.recon.loop import IterationBudget
    from nvplive.recon.reconstructor import ReconConfig
    from nvplive.recon.simulate import PartialCoherence

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    factory = default_reconstructor_factory("cpu", ReconConfig(iterations=4, warm_budget=IterationBudget(2), check_every=2, pupil_calibration=False,
                                                                  depth_starts_um=(0.0,)))
    result = run_headless_demo(sys.argv[1], 200, views=3, shape=(8, 32, 32), interval_s=0.0, exposure_ms=1.0,
                               coherence=PartialCoherence(1, 0.0, 1), reconstructor_factory=factory, durable=True)
    print("STATUS", result.acquisition.status, result.acquisition.timepoints_complete)
    print("ERROR", result.acquisition.error, "|", " | ".join(result.reconstruction_errors))
    """
)


def test_disk_full_stops_acquisition_and_keeps_what_was_written(tmp_path: Path):
    path = tmp_path / "full.fdt"
    limit = 40_000  # bytes per file: a few timepoints of 3 × 32×32 uint16 frames
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(limit)], cwd=REPO, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYMM_LOG_FILE": "0"},  # only the recording's files hit the limit
    )
    assert out.returncode == 0, out.stderr[-2000:]
    status_line = next(line for line in out.stdout.splitlines() if line.startswith("STATUS"))
    _, status, complete = status_line.split()
    error_line = next(line for line in out.stdout.splitlines() if line.startswith("ERROR"))
    # The largest file (float32 ground truth) fills first; the writer then refuses
    # everything, the demo stops the acquisition and says why.
    assert status in ("failed", "aborted")
    assert "cannot write" in error_line, error_line
    complete = int(complete)
    assert 1 <= complete < 200
    with Recording.open(path) as rec:
        assert rec.n_timepoints >= 1
        assert rec.n_timepoints <= complete
        for t in range(rec.n_timepoints):
            frames = rec.frames(t)
            assert frames.shape == (3, 32, 32) and frames.dtype == np.uint16
            assert frames.max() > frames.min()  # real images, not zero-filled pages
            assert np.isfinite(rec.timestamps(t)).all()
