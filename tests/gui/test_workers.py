"""Background work runs at a lower CPU priority than the viewer's threads (Linux: nice is per thread)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from napari_medseg._napari.jobs.workers import BACKGROUND_NICE, background_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_background_priority_lowers_this_thread_and_its_children_then_restores():
    seen: dict[str, int] = {}

    def work():
        before = _nice()
        with background_priority() as lowered:
            assert lowered
            seen["inside"] = _nice() - before
            child = threading.Thread(target=lambda: seen.__setitem__("child", _nice() - before))
            child.start()
            child.join()
        seen["after"] = _nice() - before

    main_before = _nice()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen["inside"] == min(BACKGROUND_NICE, 19 - main_before)
    assert seen["child"] == seen["inside"]  # the prefetch and writer threads it starts inherit it
    assert seen["after"] == 0
    assert _nice() == main_before  # the main thread (the viewer) is untouched


def _policy() -> int:
    return os.sched_getscheduler(threading.get_native_id())


def test_idle_policy_on_request_then_restored(monkeypatch):
    """NAPARI_MEDSEG_WORKER_POLICY=idle: SCHED_IDLE for the work and the threads it starts; restored after
    (as root; a user without the privilege keeps a polite thread, which is the documented fallback)."""
    monkeypatch.setenv("NAPARI_MEDSEG_WORKER_POLICY", "idle")
    seen: dict[str, int] = {}

    def work():
        before = _policy()
        with background_priority() as lowered:
            assert lowered
            seen["inside"] = _policy()
            child = threading.Thread(target=lambda: seen.__setitem__("child", _policy()))
            child.start()
            child.join()
        seen["before"], seen["after"] = before, _policy()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen["inside"] == os.SCHED_IDLE and seen["child"] == os.SCHED_IDLE
    if os.geteuid() == 0:
        assert seen["after"] == seen["before"]
    assert _policy() != os.SCHED_IDLE  # the main thread (the viewer) is untouched


def test_events_of_a_worker_that_outlives_its_widget_are_dropped(qtbot):
    """A background pass whose widget was deleted must not call into it (that crashed the process)."""
    from PyQt6 import sip
    from qtpy.QtWidgets import QWidget

    from napari_medseg._napari.jobs.workers import _alive

    w = QWidget()
    assert _alive(w) and _alive(object())
    sip.delete(w)
    assert not _alive(w)


def test_no_callback_reaches_a_deleted_widget_events_errors_or_finish(qtbot):
    """Work that outlives its widget (closed while the pass ran) ends quietly: its events, its error message,
    its error handler and its finish call are all dropped, closures included where the widget is the owner;
    a living widget gets each of them."""
    import threading

    from PyQt6 import sip
    from qtpy.QtWidgets import QWidget

    from napari_medseg._napari.jobs.workers import start_generator_worker

    calls: list[str] = []

    class Box(QWidget):
        def event_(self, ev):
            calls.append(f"event {ev}")

        def finished(self):
            calls.append("finished")

        def error(self, exc):
            calls.append(f"error {type(exc).__name__}: {exc}")

        def say(self, text):
            calls.append("said")

    def work(gate, fail):
        gate.wait(10)
        yield 1
        if fail:  # a RuntimeError (torch's kind): superqt alone would drop it, with no error and no finish
            raise RuntimeError("boom")

    for alive in (True, False):
        calls.clear()
        box, gate = Box(), threading.Event()
        closure = lambda ev, box=box: calls.append(f"closure {ev}")  # noqa: E731
        workers = [start_generator_worker(work, gate, fail, on_event=ev, on_finished=box.finished,
                                          on_error=box.error, notify=box.say, owner=box)
                   for fail, ev in ((False, box.event_), (True, closure))]
        if not alive:
            sip.delete(box)
        gate.set()
        for w in workers:
            qtbot.waitUntil(lambda w=w: not w.is_running, timeout=10_000)
        qtbot.wait(50)  # the queued signals are delivered
        if alive:
            assert sorted(calls) == ["closure 1", "error RuntimeError: boom", "event 1", "finished", "finished", "said"]
        else:
            assert calls == []


@pytest.mark.parametrize("from_event_loop", [False, True])
def test_long_work_leaves_a_thread_of_the_pool_to_qt(qtbot, from_event_loop):
    """Three long passes at once (training, a prediction, a ranking) all start at once, and Qt's global
    thread pool keeps a free thread beside them: Qt 5 scales images (napari's busy indicator) on that pool
    and waits for it on the main thread, which froze the viewer for a whole pass when the pool was full.
    From a running event loop (a button's click) superqt queues each start for a moment: passes started in
    one turn are not yet active in the pool when the next one counts."""
    import threading

    from qtpy.QtCore import QThreadPool, QTimer

    from napari_medseg._napari.jobs.workers import start_generator_worker

    pool = QThreadPool.globalInstance()
    gate, started = threading.Event(), []
    workers: list = []

    def work(i):
        started.append(i)
        gate.wait(20)
        yield i

    def start_all():
        workers.extend(start_generator_worker(work, i, on_event=lambda ev: None, on_finished=lambda: None)
                       for i in range(max(3, pool.maxThreadCount())))

    if from_event_loop:
        QTimer.singleShot(0, start_all)
        qtbot.waitUntil(lambda: bool(workers), timeout=5_000)
    else:
        start_all()
    try:
        qtbot.waitUntil(lambda: len(started) == len(workers), timeout=10_000)  # none waits in the queue
        assert pool.maxThreadCount() - pool.activeThreadCount() >= 1
    finally:
        gate.set()
        for w in workers:
            qtbot.waitUntil(lambda w=w: not w.is_running, timeout=10_000)
