"""FDTEngine extends pymmcore-plus's engine through super() and its public API only."""

from __future__ import annotations

import logging

import pytest
import useq
from acq_helpers import tiny_core

from nvplive.acquisition.microscope import PYMMCORE_PLUS_LOGGER, demo_camera, fdt_sequence, release_core
from nvplive.errors import AcquisitionError


def _software_core():
    core, info, scene = tiny_core(views=2, triggered=False)
    return core, core.mda.engine


def test_a_failed_snap_raises_with_the_cameras_own_message_from_the_stock_engine(caplog):
    core, engine = _software_core()
    try:
        engine.camera_fault = None  # a real camera: no hook, the message comes from the stock engine's report
        demo_camera(core).fail_now("USB link lost")
        event = next(iter(fdt_sequence(1, 2, 0.0)))
        engine.setup_sequence(fdt_sequence(1, 2, 0.0))
        engine.setup_event(event)
        with caplog.at_level(logging.WARNING, logger=PYMMCORE_PLUS_LOGGER):
            with pytest.raises(AcquisitionError, match=r"camera failed at timepoint 0, view 0: .*USB link lost"):
                list(engine.exec_event(event))
        assert not [r for r in caplog.records if "Failed to snap image" in r.getMessage()]  # raised, not also logged
    finally:
        release_core(core)


def test_a_snap_goes_through_the_stock_engine_and_is_stamped():
    core, engine = _software_core()
    try:
        sequence = fdt_sequence(1, 2, 0.0)
        engine.setup_sequence(sequence)
        event = next(iter(sequence))
        engine.setup_event(event)
        [(image, sub_event, meta)] = list(engine.exec_event(event))
        assert image.shape == (32, 32) and sub_event is event
        assert meta["hardware_triggered"] is False and meta["timestamp_source"] == "host"
        assert meta["runner_time_ms"] >= 0 and meta["camera_device"] == "FDTCamera"
    finally:
        release_core(core)


def test_an_slm_image_is_handed_to_the_stock_engine(caplog):
    """The copied method had lost upstream's SLM handling; delegating to it brings it back
    (this core has no SLM, so the stock engine reports that it could not show the image)."""
    core, engine = _software_core()
    try:
        sequence = fdt_sequence(1, 2, 0.0)
        engine.setup_sequence(sequence)
        event = next(iter(sequence)).model_copy(update={"slm_image": useq.SLMImage(data=1, device="SLM")})
        engine.setup_event(event)
        with caplog.at_level(logging.WARNING, logger=PYMMCORE_PLUS_LOGGER):
            [(image, _, _)] = list(engine.exec_event(event))
        assert image.shape == (32, 32)
        assert any("Failed to set SLM Image" in r.getMessage() for r in caplog.records)
    finally:
        release_core(core)
