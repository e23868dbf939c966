"""A short soak run (issue 7): host memory stays flat over a headless demo."""

from __future__ import annotations

import mmap

from nvplive.acquisition.recording import Recording
from nvplive.benchmarks.soak import SoakReport, main, rss_mb, run_soak


def test_rss_is_read_from_proc_and_tracks_an_allocation():
    """64 MB of new anonymous pages, touched, show in the resident size. (An array from malloc
    may reuse heap that an earlier test freed and the process still holds: then nothing grows.)"""
    size = 64 * 1024 * 1024
    before = rss_mb()
    with mmap.mmap(-1, size) as block:
        block.write(b"\x01" * size)
        during = rss_mb()
    assert 0 < before and during - before > 50.0


def test_summary_states_the_bound_and_the_slope():
    samples = [(t, 0.1 * t, 100.0 + 0.5 * t) for t in range(40)]  # 0.5 MB per timepoint
    report = SoakReport(40, 40, 0, 0, samples, 10, 10.0, 4.0, "completed", 0.01, 0.01)
    assert abs(report.slope_mb_per_100 - 50.0) < 1e-6
    assert report.start_mb == 105.0 and report.max_mb == report.end_mb == 119.5
    assert not report.flat and "NOT flat" in report.summary() and "bound 10 MB" in report.summary()


def test_short_soak_keeps_memory_flat(tmp_path):
    report = run_soak(40, out=tmp_path / "soak.fdt", warmup=20, bound_mb=50.0, interval_s=0.25)
    assert report.status == "completed" and report.timepoints == 40 and not report.errors
    assert [s[0] for s in report.samples] == list(range(40))
    assert report.reconstructed >= 5 and report.flagged == 0  # a cold start (~2 s) and warm updates
    assert report.flat, report.summary()
    assert "Memory is flat" in report.summary()
    with Recording.open(tmp_path / "soak.fdt") as rec:
        assert rec.n_timepoints == 40 and not rec.interrupted
        assert len(rec.volume_timepoints) == report.reconstructed


def test_command_line_prints_the_summary(capsys):
    assert main(["--timepoints", "16", "--warmup", "8", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "Host memory (RSS, MB)" in out and "MB per 100 timepoints" in out and "Memory is flat" in out
