"""nvp-live GUI: PySide6 widgets (vispy 3D view, pyqtgraph frames and plots).

Importing this package applies :func:`nvplive.app.qt_compat.ensure_singleton_refcounts_safe`,
which guards against PySide6 6.12 dropping references to None and True (see there).
"""

from .qt_compat import ensure_singleton_refcounts_safe

ensure_singleton_refcounts_safe()
