"""Processes holding a vispy canvas and pyqtgraph views exit cleanly (exit code 0).

Background (see nvplive/app/qt_compat.py): PySide6 6.12.0 on Python 3.11 returns
``None``/``True`` to Python without a reference, so a busy Qt process runs the
singletons' reference counts down to zero and aborts (``bool_dealloc`` /
``none_dealloc``), typically at exit. The same PySide6 also loses ownership of
widgets put into a loose layout, which made a VolumeView crash at exit with
"shared QObject was deleted directly"; the views nest layouts first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from nvplive.app.qt_compat import binding_leaks_singletons

RAW_CANVAS_AND_IMAGEVIEW = textwrap.dedent(
    """
    import sys
    guard = sys.argv[1] == "guard"
    if guard:
        import nvplive.app  # applies the PySide6 reference-count guard
        from nvplive.app.qt_compat import RESERVE, ensure_singleton_refcounts_safe
    import numpy as np
    import vispy
    vispy.use("pyside6")
    from vispy import scene
    import pyqtgraph as pg
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication([])
    win = QtWidgets.QMainWindow()
    central = QtWidgets.QWidget()
    win.setCentralWidget(central)
    layout = QtWidgets.QHBoxLayout(central)
    canvas = scene.SceneCanvas(keys=None, show=False, parent=central)
    view = canvas.central_widget.add_view()
    view.camera = scene.TurntableCamera()
    scene.visuals.Volume(np.random.rand(16, 32, 32).astype(np.float32), parent=view.scene)
    layout.addWidget(canvas.native)
    image_view = pg.ImageView()
    layout.addWidget(image_view)
    win.resize(420, 260)
    win.show()
    app.processEvents()
    # References None and True hold without the guard's reserve (the reserve is 0 when inactive).
    reserve = RESERVE if guard and ensure_singleton_refcounts_safe() else 0
    natural = {s: sys.getrefcount(s) - reserve for s in (None, True)}
    start = {s: sys.getrefcount(s) for s in (None, True)}
    rng = np.random.default_rng(0)
    lost = {None: 0, True: 0}
    # Live-view traffic: new images and camera moves until more references were
    # lost than the singletons naturally hold (an unguarded leaking binding dies here).
    for i in range(400):
        image_view.setImage(rng.random((32, 32)))
        view.camera.azimuth = 3 * i
        app.processEvents()
        lost = {s: start[s] - sys.getrefcount(s) for s in start}
        if lost[None] > natural[None] + 1000:
            break
    assert canvas.render().std() > 0
    win.close()
    app.processEvents()
    print("finished", i + 1, "lost", lost[None], lost[True], "natural", natural[None], natural[True], flush=True)
    """
)


APP_VIEWS_WINDOW = textwrap.dedent(
    """
    import numpy as np
    import nvplive.app
    from nvplive.app.frames_view import FramesView
    from nvplive.app.plots import LossPlot
    from nvplive.app.volume_view import VolumeView
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication([])
    win = QtWidgets.QMainWindow()
    splitter = QtWidgets.QSplitter()
    win.setCentralWidget(splitter)
    volume, frames, loss = VolumeView(), FramesView(), LossPlot()
    for w in (frames, volume, loss):
        splitter.addWidget(w)
    win.resize(1000, 500)
    win.show()
    rng = np.random.default_rng(0)
    for t in range(12):
        volume.set_volume(rng.random((12, 24, 24), dtype=np.float32) * 0.02, (0.4, 0.2, 0.2), 1.333)
        frames.set_frames(rng.integers(0, 4000, (3, 48, 48)).astype(np.uint16), 0.2, rng.random((3, 2)))
        loss.append(1.0 / (t + 1))
        app.processEvents()
    assert volume.snapshot().std() > 0
    win.close()
    app.processEvents()
    print("finished", flush=True)
    """
)


def _run(script: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )


def test_vispy_canvas_and_imageview_exit_cleanly():
    proc = _run(RAW_CANVAS_AND_IMAGEVIEW, "guard")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished" in proc.stdout
    assert "dealloc" not in proc.stderr
    words = proc.stdout.split()
    lost_none, natural_none = int(words[words.index("lost") + 1]), int(words[words.index("natural") + 1])
    if max(binding_leaks_singletons().values()) > 0:
        # The run lost more references than None naturally has: without the guard it would have aborted.
        assert lost_none > natural_none


def test_without_guard_the_same_process_crashes_when_binding_leaks():
    """Control: shows the subprocess test above can fail, on a leaking PySide6."""
    lost = binding_leaks_singletons()
    if max(lost.values()) <= 0:
        pytest.skip(f"installed PySide6 keeps its references ({lost}); nothing to show")
    proc = _run(RAW_CANVAS_AND_IMAGEVIEW, "noguard")
    assert proc.returncode != 0
    assert "dealloc" in proc.stderr


def test_window_with_app_views_exits_cleanly():
    proc = _run(APP_VIEWS_WINDOW)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finished" in proc.stdout
    assert "shared QObject was deleted directly" not in proc.stderr
