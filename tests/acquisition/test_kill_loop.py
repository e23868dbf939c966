"""``kill -9`` at random moments of a headless demo, many times (issue 7): every recording
left behind opens, and every complete timepoint reads back."""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path

import numpy as np
from acq_helpers import kill_9, script_process

from nvplive.acquisition.recording import Recording

SHAPE = (8, 24, 24)
VIEWS = 3
BUDGET_S = 45.0

DEMO_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from nvplive.acquisition.demo import default_reconstructor_factory, run_headless_demo
    from nvplive.recon.loop import IterationBudget
    from nvplive.recon.reconstructor import ReconConfig
    from nvplive.recon.simulate import PartialCoherence

    print("started", flush=True)
    factory = default_reconstructor_factory("cpu", ReconConfig(iterations=6, warm_budget=IterationBudget(2), check_every=2, pupil_calibration=False,
                                                                  depth_starts_um=(0.0,)))
    run_headless_demo(sys.argv[1], 100000, views=3, shape=(8, 24, 24), interval_s=0.0, exposure_ms=1.0,
                      coherence=PartialCoherence(1, 0.0, 1), reconstructor_factory=factory, durable=True)
    """
)


def _check(path: Path) -> int:
    """Open the recording and read back everything it lists; returns its complete timepoints."""
    with Recording.open(path) as rec:
        n = rec.n_timepoints
        for t in range(n):
            frames = rec.frames(t)
            assert frames.shape == (VIEWS, *SHAPE[1:]) and frames.mean() > 100.0  # offset + photons
            assert [m["sim_view"] for m in rec.frame_metadata(t)] == list(range(VIEWS))
        assert set(rec.ground_truth_timepoints) <= set(range(n))
        for t in rec.ground_truth_timepoints:
            assert rec.ground_truth(t).shape == SHAPE
        assert set(rec.volume_timepoints) <= set(range(n))
        for t in rec.volume_timepoints:
            volume = rec.volume(t)
            assert volume.shape == SHAPE and np.isfinite(volume).all()
    return n


def test_kill_9_at_random_moments_always_leaves_a_readable_recording(tmp_path):
    script = tmp_path / "demo_script.py"
    script.write_text(DEMO_SCRIPT)
    rng = random.Random(7)
    deadline = time.monotonic() + BUDGET_S
    outcomes: list[tuple[float, int | None]] = []  # (delay after start-up, timepoints; None: no folder yet)
    i = 0
    while time.monotonic() < deadline - 8.0 or i < 3:
        path = tmp_path / f"run{i}.fdt"
        with script_process(script, str(path)) as proc:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
            start = time.monotonic()
            if i % 4 == 0:  # the moment the recording folder appears (its creation)
                while not path.exists() and proc.poll() is None and time.monotonic() - start < 20:
                    pass
            elif i % 4 == 1:  # set-up: scene, simulated core, the writer, the first timepoint
                time.sleep(rng.uniform(0.0, 0.4))
            else:  # anywhere in the first seconds of acquisition and reconstruction
                time.sleep(rng.uniform(0.3, 2.5))
            delay = time.monotonic() - start
            kill_9(proc)
        outcomes.append((delay, _check(path) if path.exists() else None))
        i += 1
    opened = [n for _, n in outcomes if n is not None]
    assert len(outcomes) >= 5, outcomes
    assert sum(1 for n in opened if n == 0) >= 2, outcomes  # kills landed right after the creation
    assert sum(1 for n in opened if n >= 1) >= 2, outcomes  # kills also landed mid-acquisition
    print("kills (delay s, complete timepoints):", [(round(d, 2), n) for d, n in outcomes])
