"""Run the engine's generators off the main thread (napari thread workers) and bring their events and
errors back to the main thread as callbacks and napari notifications."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from napari_medseg._napari.quiet_gc import freeze_long_lived
from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)


def user_message(exc: BaseException) -> str:
    """One sentence for the user: our own errors as they are, others with their type and a hint."""
    if isinstance(exc, MedsegError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Out of memory: use a smaller patch, batch or region, or close other programs, then try again."
    return f"{type(exc).__name__}: {exc} (see the terminal for details; the widget is ready for another try)"


#: nice increment of the worker threads (Linux: per thread): the viewer's threads win the CPU when both want it
BACKGROUND_NICE = 10


def _idle_policy_wanted() -> bool:
    return os.environ.get("NAPARI_MEDSEG_WORKER_POLICY", "").strip().lower() == "idle"


@contextlib.contextmanager
def background_priority(increment: int = BACKGROUND_NICE) -> Iterator[bool]:
    """Run the calling thread (and the threads it starts) at a lower CPU priority, then restore it.

    On a machine with few cores, training or prediction competes with the viewer's main thread, its
    OpenGL rasteriser and napari's tile loading; at nice +10 the scheduler gives the viewer's threads ~10x
    the weight when they want the CPU, while the work still gets every idle cycle. Linux applies nice per
    thread; elsewhere this does nothing. ``NAPARI_MEDSEG_WORKER_POLICY=idle`` uses the SCHED_IDLE policy
    instead (Linux): the work runs only on otherwise idle cores, and a waking viewer thread preempts it at
    once. Yields whether the priority was lowered."""
    tid = threading.get_native_id()
    idle = _idle_policy_wanted() and hasattr(os, "SCHED_IDLE")
    try:
        old = os.getpriority(os.PRIO_PROCESS, tid)
        if idle:
            old_policy = os.sched_getscheduler(tid)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, old + increment))
    except (AttributeError, OSError):
        yield False
        return
    try:
        yield True
    finally:
        try:  # raising it back needs privileges a user may not have: then the pooled thread stays polite
            if idle:
                os.sched_setscheduler(tid, old_policy, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, old)
        except OSError:
            log.debug("could not restore the worker thread's priority", exc_info=True)


class _RuntimeErrorOfTheWork(Exception):
    """A ``RuntimeError`` raised by the work (torch raises them: shapes, memory), carried as another type:
    superqt's worker takes a ``RuntimeError`` for the sign of its own deletion and drops it with a warning,
    without its error or finished signals, which would leave the widget waiting for ever."""


def _in_background(gen_func: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Generator[Any, Any, Any]]:
    def run(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        with background_priority():
            try:
                return (yield from gen_func(*args, **kwargs))
            except RuntimeError as e:
                raise _RuntimeErrorOfTheWork(str(e)) from e

    run.__name__ = getattr(gen_func, "__name__", "run")
    return run


def _alive(obj: Any) -> bool:
    """False for a Qt object whose C++ side is deleted (calling into it would crash); True otherwise."""
    try:
        from PyQt6 import sip  # the project's binding (QT_API=pyqt6)

        return not sip.isdeleted(obj)
    except (ImportError, TypeError):  # another binding, or not a Qt object
        pass
    try:
        import shiboken6

        return shiboken6.isValid(obj)
    except (ImportError, TypeError):
        return True


def _while_alive(fn: Callable[..., Any], owner: Any) -> Callable[..., Any]:
    """``fn``, called only while its own Qt receiver (a bound method's object) and ``owner`` are alive: a
    pass that outlives its closed widget must not call into it (the widget's C++ side is gone: a crash)."""
    receivers = [r for r in (getattr(fn, "__self__", None), owner) if r is not None]
    if not receivers:
        return fn

    def call(*args: Any) -> None:
        if all(_alive(r) for r in receivers):
            fn(*args)
        else:
            log.debug("dropped a worker callback: its widget is closed")

    return call


def start_generator_worker(
    gen_func: Callable[..., Generator[Any, Any, Any]],
    *args: Any,
    on_event: Callable[[Any], None],
    on_finished: Callable[[], None],
    on_error: Callable[[BaseException], None] | None = None,
    progress: dict[str, Any] | None = None,
    notify: Callable[[str], None] | None = None,
    owner: Any = None,
    **kwargs: Any,
) -> Any:
    """Start ``gen_func(*args, **kwargs)`` in a napari thread worker. Events reach ``on_event`` on the main
    thread; an exception becomes one plain error message (through ``notify``, e.g. the widget's
    ``MessageLog.error``; a napari error notification without it) and ``on_error``; ``on_finished`` always
    runs last, so the widget returns to a usable state. The work runs at ``background_priority``.

    Each callback runs only while the Qt object it is bound to (and ``owner``, the widget, where given: for
    callbacks that are closures) is alive: work that outlives its closed widget ends quietly.

    What is alive when the work starts, and again at its first event (after the libraries it imports),
    goes to the garbage collector's permanent generation (``quiet_gc``), so collections during the work
    stay short."""
    freeze_long_lived()
    worker = create_worker(_in_background(gen_func), *args, _start_thread=False, _progress=progress or False,
                           _ignore_errors=True, **kwargs)  # we notify ourselves, once, in plain words
    first = [True]
    on_event = _while_alive(on_event, owner)
    say = _while_alive(notify or show_error, owner if notify is not None else None)
    failed = _while_alive(on_error, owner) if on_error is not None else None

    def _yielded(ev: Any) -> None:
        if first[0]:
            first[0] = False
            freeze_long_lived()
        on_event(ev)

    worker.yielded.connect(_yielded)

    def _errored(exc: BaseException) -> None:
        if isinstance(exc, _RuntimeErrorOfTheWork) and exc.__cause__ is not None:
            exc = exc.__cause__
        log.error("worker failed", exc_info=exc)
        say(user_message(exc))
        if failed is not None:
            failed(exc)

    worker.errored.connect(_errored)
    worker.finished.connect(_while_alive(on_finished, owner))
    _starting.add(worker)
    worker.started.connect(lambda: _starting.discard(worker))
    worker.finished.connect(lambda: _starting.discard(worker))  # also when it never ran
    leave_room_for_qt()
    worker.start()
    return worker


#: workers started here and not yet running: from a running event loop superqt queues the start for a moment,
#: so they are not yet active in the pool when the next start counts
_starting: set[Any] = set()


def leave_room_for_qt(spare: int = 1) -> int:
    """Grow Qt's global thread pool so that ``spare`` threads stay free beside the workers running now and
    those about to start; returns the pool's size.

    napari's workers run in ``QThreadPool.globalInstance()``, which Qt 5 also uses for its own short tasks
    and waits for on the main thread: QImage scaling and format conversion (napari's animated busy
    indicator, a QMovie, scales each frame) is split over that pool. With the pool's ``idealThreadCount``
    threads (2 on a 2-core machine) all taken by long work (a prediction and a ranking), the main thread
    waited for the whole pass: 4-12 s frozen viewer (``benchmarks/bench_ui_latency.py`` under PyQt5; native
    stack ``QMoviePrivate::_q_loadNextFrame -> QImage::scaled -> convert_generic -> QSemaphore::acquire``).
    Spare threads sleep; our work keeps its own priority (``background_priority``)."""
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    need = pool.activeThreadCount() + len(_starting) + spare
    if pool.maxThreadCount() < need:
        pool.setMaxThreadCount(need)
    return pool.maxThreadCount()


#: how long the interpreter's exit waits for workers still running (``wait_at_exit``)
EXIT_WAIT_S = 10.0


def wait_at_exit(timeout_s: float = EXIT_WAIT_S) -> bool:
    """Let the workers still running end before Python tears down their Qt signal objects (at most
    ``timeout_s``); returns whether they all ended.

    Closing the viewer stops the work (the widgets set their stop events when they go), but a pass takes a
    moment to notice. A worker that warns or finishes after the interpreter's clean-up deleted its superqt
    signals raises "wrapped C/C++ object of type GeneratorWorkerSignals has been deleted" in its thread and
    the process ends with "Aborted" (seen with the ranking that follows a training run, closed by
    ``benchmarks/bench_ui_latency.py --quick``). Registered with ``atexit``, which runs before that
    clean-up."""
    try:
        from qtpy.QtCore import QThreadPool

        pool = QThreadPool.globalInstance()
        if pool is None or pool.activeThreadCount() == 0:
            return True
        return bool(pool.waitForDone(int(timeout_s * 1000)))
    except Exception:  # pragma: no cover - Qt already gone
        return True


atexit.register(wait_at_exit)


__all__ = ["leave_room_for_qt", "show_error", "show_info", "show_warning", "start_generator_worker", "user_message",
           "wait_at_exit"]
