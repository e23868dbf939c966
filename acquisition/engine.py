"""The FDT acquisition sequence and the pymmcore-plus engine that runs it.

:func:`fdt_sequence` is the ``useq.MDASequence`` of an FDT time-lapse (a time plan × one
channel per view); :class:`FDTEngine` extends pymmcore-plus's ``MDAEngine`` through
``super()`` and its public API: a failing snap, a short triggered sequence or a source
that was not selected raises :class:`~nvplive.errors.AcquisitionError` (docs/acquisition.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import groupby
from typing import Any

import useq
from pymmcore_plus.core import SequencedEvent, iter_sequenced_events
from pymmcore_plus.mda import MDAEngine, SkipEvent

from nvplive.errors import AcquisitionError

from .devices import source_labels
from .log_filter import log_filter

#: Default name of the config group whose presets select the excited source.
SOURCE_GROUP = "FDT-Source"
#: Key of the FDT description in the sequence's and the events' metadata.
FDT_METADATA_KEY = "nvplive"
#: Micro-Manager's per-image tag with the time since the sequence started (ms).
ELAPSED_TIME_TAG = "ElapsedTime-ms"
#: Key of a frame's metadata naming the clock of its time: ``camera`` (the camera's
#: ``ElapsedTime-ms`` tag) or ``host`` (the host's monotonic clock at frame arrival).
TIMESTAMP_SOURCE_KEY = "timestamp_source"
#: The logger pymmcore-plus reports through (its stock engine logs a failed snap there).
PYMMCORE_PLUS_LOGGER = "pymmcore-plus"


def fdt_sequence(
    views: int | Sequence[str],
    timepoints: int,
    interval_s: float = 0.0,
    *,
    group: str = SOURCE_GROUP,
    exposure_ms: float | None = None,
) -> useq.MDASequence:
    """An FDT time-lapse: ``timepoints`` × (one frame per view), views innermost.

    Args:
        views: number of views (presets ``Source-0`` …) or the preset of each view.
        timepoints: number of timepoints.
        interval_s: time between timepoint starts (s); 0 = as fast as possible.
        group: config group of the presets.
        exposure_ms: exposure of every frame (``None``: keep the camera's).

    The sequence's metadata ``["nvplive"]`` lists the presets in view order; the
    :class:`FDTEngine` copies ``{"view", "timepoint", "preset"}`` into each event's
    metadata ``["nvplive"]``.
    """
    presets = source_labels(views) if isinstance(views, int) else [str(p) for p in views]
    if not presets:
        raise AcquisitionError("An FDT sequence needs at least one view.")
    if not isinstance(timepoints, int) or timepoints < 1:
        raise AcquisitionError(f"An FDT sequence needs at least one timepoint, got {timepoints!r}.")
    if not (math.isfinite(interval_s) and interval_s >= 0):
        raise AcquisitionError(f"The interval must be ≥ 0 s, got {interval_s!r}.")
    channels = []
    for preset in presets:
        channel: dict[str, Any] = {"group": group, "config": preset}
        if exposure_ms is not None:
            channel["exposure"] = float(exposure_ms)
        channels.append(channel)
    return useq.MDASequence(
        time_plan={"interval": float(interval_s), "loops": int(timepoints)},
        channels=channels,
        axis_order="tpcz",
        metadata={
            FDT_METADATA_KEY: {
                "group": group,
                "presets": presets,
                "views": len(presets),
                "timepoints": int(timepoints),
                "interval_s": float(interval_s),
            }
        },
    )


def event_view_timepoint(event: useq.MDAEvent) -> tuple[int, int]:
    """(timepoint, view) of an FDT event (from the engine's metadata, else its index).

    A hardware-sequenced event (whose own index is empty) gives its first frame's.
    """
    if isinstance(event, SequencedEvent) and event.events:
        event = event.events[0]
    fdt = event.metadata.get(FDT_METADATA_KEY) or {}
    t = fdt.get("timepoint", event.index.get("t", 0))
    v = fdt.get("view", event.index.get("c", 0))
    return int(t), int(v)


class FDTEngine(MDAEngine):
    """The pymmcore-plus engine, made strict for FDT.

    The stock engine logs a failed snap or a failed ``setConfig`` and carries on,
    which would silently drop a frame or image the wrong source. Here both raise
    :class:`AcquisitionError`, which ends the run (the runner reports it). Each
    event's metadata gets ``["nvplive"] = {"view", "timepoint", "preset"}``.

    ``skip_from_timepoint``: events of this timepoint and later are skipped (set by
    a stop request so that no frame of a timepoint after the stop is taken).

    Hardware sequencing (``use_hardware_sequencing``, on by default): when the
    property that the source presets set is sequenceable (a DMD, LED array or
    galvo controller that steps on the camera's trigger), the V views of each
    timepoint run as one triggered camera sequence. A sequence never spans two
    timepoints, so that each timepoint keeps its own start time and a stop still
    ends at a timepoint boundary. A sequence that delivers fewer frames than it
    was asked for raises :class:`AcquisitionError`.
    """

    _views: dict[str, int]
    skip_from_timepoint: int | None = None
    #: Optional: the camera's own message of the fault that cut its last sequence short.
    camera_fault: Callable[[], str | None] | None = None

    def setup_event(self, event: useq.MDAEvent) -> None:
        """Skip events from ``skip_from_timepoint`` on (a stop request), else the stock set-up."""
        limit = self.skip_from_timepoint
        if limit is not None and event_view_timepoint(event)[0] >= limit:
            raise SkipEvent(reason=f"acquisition stopped before timepoint {limit}")
        super().setup_event(event)

    def setup_sequence(self, sequence: useq.MDASequence):  # type: ignore[override]
        """Remember the sequence's presets (preset → view), clear a previous stop, then the stock set-up."""
        fdt = sequence.metadata.get(FDT_METADATA_KEY) or {}
        self._views = {str(p): i for i, p in enumerate(fdt.get("presets", []))}
        self.skip_from_timepoint = None
        return super().setup_sequence(sequence)

    def event_iterator(self, events: Iterable[useq.MDAEvent]) -> Iterator[useq.MDAEvent]:
        """Events, merged into one hardware sequence per timepoint where the devices allow."""
        if not self.use_hardware_sequencing:
            yield from events
            return
        for _, timepoint in groupby(events, key=lambda e: e.index.get("t", 0)):
            yield from iter_sequenced_events(self.mmcore, timepoint)

    def _tag(self, event: useq.MDAEvent) -> tuple[int, int, str]:
        """Write ``metadata["nvplive"]`` of one frame's event; returns (t, view, preset)."""
        t = int(event.index.get("t", 0))
        view = int(event.index.get("c", 0))
        preset = ""
        if (ch := event.channel) is not None:
            preset = ch.config
            view = getattr(self, "_views", {}).get(ch.config, view)
        event.metadata[FDT_METADATA_KEY] = {"view": view, "timepoint": t, "preset": preset}
        return t, view, preset

    def _check_selected(self, event: useq.MDAEvent) -> None:
        t, view, _preset = self._tag(event)
        if (ch := event.channel) is not None:
            current = self.mmcore.getCurrentConfigFromCache(ch.group)
            if current != ch.config:
                raise AcquisitionError(
                    f"Could not select source {view} (preset {ch.config!r} of group {ch.group!r}) at timepoint {t}: "
                    f"the group reports {current!r}."
                )

    def setup_single_event(self, event: useq.MDAEvent) -> None:
        """The stock set-up (source preset, exposure …), then check that the source was selected."""
        super().setup_single_event(event)
        self._check_selected(event)

    def setup_sequenced_event(self, event: SequencedEvent) -> None:
        """The stock set-up of a triggered sequence, then check its first source and tag every view."""
        super().setup_sequenced_event(event)
        self._check_selected(event.events[0])
        for sub in event.events[1:]:
            self._tag(sub)

    def exec_sequenced_event(self, event: SequencedEvent) -> Iterator[Any]:  # type: ignore[override]
        """The stock triggered sequence, made strict: a sequence cut short raises
        :class:`AcquisitionError`; every frame is stamped (:meth:`_stamp`)."""
        n = len(event.events)
        delivered = 0
        frames = super().exec_sequenced_event(event)
        signal = None  # "cancel" / "pause" from the runner, passed on to the stock generator
        try:
            while True:
                try:
                    payload = frames.send(signal)
                except StopIteration:
                    return
                if payload is None:
                    t, view = event_view_timepoint(event.events[delivered])
                    fault = self.camera_fault() if self.camera_fault is not None else None
                    reason = fault or "the camera's own error is in the Micro-Manager log"
                    raise AcquisitionError(
                        f"The camera failed at timepoint {t}, view {view}: its triggered sequence delivered "
                        f"{delivered} of {n} frames ({reason})."
                    )
                delivered += 1
                signal = yield self._stamp(payload, event)
        finally:
            frames.close()

    @staticmethod
    def _stamp(payload: Any, event: useq.MDAEvent) -> Any:
        """Time and trigger flag of one frame of a triggered sequence, from what the engine knows.

        The camera's ``ElapsedTime-ms`` tag gives the time when present (the stock
        engine's ``runner_time_ms``); without it (some adapters send no tags in
        sequences) the host's monotonic clock is read now, as the frame arrives,
        instead of repeating the sequence's start time for every view.
        """
        img, sub_event, meta = payload
        tags = meta.get("camera_metadata") or {}
        if ELAPSED_TIME_TAG in tags:
            meta[TIMESTAMP_SOURCE_KEY] = "camera"
        else:
            t0 = event.metadata.get("runner_t0") or sub_event.metadata.get("runner_t0")
            meta["runner_time_ms"] = (time.perf_counter() - t0) * 1000 if t0 else time.perf_counter() * 1000
            meta[TIMESTAMP_SOURCE_KEY] = "host"
        meta["hardware_triggered"] = True
        return img, sub_event, meta

    def exec_single_event(self, event: useq.MDAEvent) -> Iterator[Any]:  # type: ignore[override]
        """The stock engine's snap (SLM image, shutter and multi-camera handling included),
        made strict: a snap that fails raises :class:`AcquisitionError` with the camera's message."""
        t, view = event_view_timepoint(event)
        with log_filter(PYMMCORE_PLUS_LOGGER, _SnapFailure()) as failure:
            payloads = list(super().exec_single_event(event))
        if not payloads:  # the stock engine logs a failed snap and yields nothing
            fault = self.camera_fault() if self.camera_fault is not None else None
            reason = fault or failure.message or "its error is in the Micro-Manager log"
            raise AcquisitionError(f"The camera failed at timepoint {t}, view {view}: {reason}")
        for img, sub_event, meta in payloads:
            meta["hardware_triggered"] = False
            meta[TIMESTAMP_SOURCE_KEY] = "host"
            yield img, sub_event, meta


def _not_cancel_notice(record: logging.LogRecord) -> bool:
    """Everything but pymmcore-plus's "MDA Canceled: <the whole sequence>" warning passes: a
    cancel is ours (Stop, a closed window, SIGTERM), and the acquisition reports it in one line itself."""
    return not str(record.msg).startswith("MDA Canceled")


def quiet_cancel_notice() -> contextlib.AbstractContextManager:
    """While an acquisition of ours runs (``mda.run``): its cancel notice is not logged."""
    return log_filter(PYMMCORE_PLUS_LOGGER, _not_cancel_notice)


class _SnapFailure(logging.Filter):
    """Takes the stock engine's "Failed to snap image" warning of this thread off the
    ``pymmcore-plus`` logger (:func:`log_filter`) and keeps its message: the engine raises it instead."""

    PREFIX = "Failed to snap image. "

    def __init__(self) -> None:
        super().__init__()
        self.message: str | None = None
        self._thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop (and keep) this thread's snap failure; let everything else through."""
        text = record.getMessage()
        if record.thread == self._thread and text.startswith(self.PREFIX):
            self.message = text.removeprefix(self.PREFIX)
            return False
        return True
