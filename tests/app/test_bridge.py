"""The Qt twin of the worker events: emissions from a worker thread arrive in the GUI thread,
newest-only where a view would pile up work, every one in order otherwise."""

from __future__ import annotations

import threading

from psygnal import Signal, SignalGroup

from nvplive.app.bridge import GuiBridge


class _Events(SignalGroup):
    frame = Signal(int)
    event = Signal(int, str)


def test_newest_only_and_queued_deliveries_happen_in_the_gui_thread(qtbot):
    bridge = GuiBridge()
    events = _Events()
    frames: list[tuple[int, str]] = []
    received: list[tuple[int, str, str]] = []
    bridge.latest(events.frame, lambda i: frames.append((i, threading.current_thread().name)))
    bridge.queued(events.event, lambda i, text: received.append((i, text, threading.current_thread().name)))

    def work() -> None:
        for i in range(200):
            events.frame.emit(i)
            events.event.emit(i, f"event {i}")

    worker = threading.Thread(target=work, name="worker")
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: len(received) == 200, timeout=5000)
    main = threading.main_thread().name
    assert frames == [(199, main)]  # everything before the delivery collapsed into the newest
    assert [r[0] for r in received] == list(range(200)) and {r[2] for r in received} == {main}

    bridge.release(None)  # disconnected: later emissions are not delivered
    events.frame.emit(500)
    qtbot.wait(100)
    assert frames == [(199, main)]
    bridge.stop()


def test_a_failing_slot_is_reported_and_deliveries_go_on(qtbot):
    errors: list[BaseException] = []
    bridge = GuiBridge(on_error=errors.append)
    events = _Events()
    got: list[int] = []

    def slot(i: int, _text: str) -> None:
        if i == 1:
            raise RuntimeError("drawing bug")
        got.append(i)

    bridge.queued(events.event, slot)
    for i in range(3):
        events.event.emit(i, "")
    qtbot.waitUntil(lambda: got == [0, 2], timeout=5000)
    assert [str(e) for e in errors] == ["drawing bug"]
    bridge.stop()
