"""Acquisition: the microscope through pymmcore-plus, recordings, the live pipeline.

pymmcore-plus picks Qt signals for its cores when a QApplication is running ("auto"
backend; that needs qtpy and would queue the MDA's frameReady to the GUI thread). The
pipeline relies on psygnal callbacks running in the MDA thread (frames go to disk
there; the GUI thread only draws), so the backend is pinned before pymmcore-plus loads.
"""

import os

os.environ["PYMM_SIGNALS_BACKEND"] = "psygnal"
