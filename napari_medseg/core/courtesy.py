"""Background work that gives way to the user: while they pan, zoom, scroll slices or paint, training and
whole-image prediction pause between two layers of the network, and carry on a moment after the user stops.

On a machine with few cores and software OpenGL (the 2-core VM: napari draws a frame with the main thread
and Mesa's rasteriser threads on both cores), a training step on the other core still slows each frame
down, whatever its thread priority: ``benchmarks/bench_ui_latency.py`` measured the main thread's p99 stall
at 1.4-2x napari alone's while training. A user who moves the view is looking at it; the work can wait
for that moment.

``Courtesy`` is the flag between the two sides. The viewer side calls ``touch()`` on every camera, slice or
mouse-drag event (cheap: one clock read and one store). The worker side calls ``give_way()`` at safe points
(``training.guard.StepGuard`` between layers; the tiled predictor between batches, through its cancel
flag, a ``CourteousStop``): it sleeps while the
last touch is less than ``quiet_s`` old, so that the work resumes once the user has stopped for that
long. No starvation: a wait ends after ``max_wait_s`` whatever the user does, and after a wait the work runs
at least ``min_run_s`` before it gives way again, so continuous interaction leaves it about
``min_run_s / (min_run_s + max_wait_s)`` of its time. The engine never imports Qt; ``None`` or a
``Courtesy`` that is never touched costs one clock read per safe point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: how long after the user's last camera or mouse event the work waits before it carries on
QUIET_S = 0.3
#: the longest single wait (continuous interaction cannot stop the work)
MAX_WAIT_S = 2.0
#: after a wait, the work runs at least this long before it gives way again
MIN_RUN_S = 0.5


@dataclass
class Courtesy:
    """The user's recent activity, shared between the viewer (``touch``) and background work
    (``give_way``); see the module docstring."""

    quiet_s: float = QUIET_S
    max_wait_s: float = MAX_WAIT_S
    min_run_s: float = MIN_RUN_S
    enabled: bool = True
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _last_touch: float = field(default=-1e18, repr=False)
    _run_until: float = field(default=-1e18, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    waited_s: float = 0.0  #: seconds the work has given way so far (all threads), for reports and tests
    waits: int = 0

    def touch(self, *_: object) -> None:
        """The user moved the view or the mouse with a button down (any thread; usually the main one).
        Accepts and ignores event arguments, so it can be connected to any event."""
        self._last_touch = self.clock()

    @property
    def busy(self) -> bool:
        """Whether the user touched the view less than ``quiet_s`` ago."""
        return self.enabled and self.clock() - self._last_touch < self.quiet_s

    def give_way(self, stop: threading.Event | None = None) -> float:
        """Sleep while the user is busy (at most ``max_wait_s``; not within ``min_run_s`` of the last wait's
        end; never once ``stop`` is set). Returns the seconds waited."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        if now - self._last_touch >= self.quiet_s or now < self._run_until:
            return 0.0
        start = now
        while (now - self._last_touch < self.quiet_s and now - start < self.max_wait_s
               and not (stop is not None and stop.is_set())):
            self.sleep(min(0.02, self.quiet_s - (now - self._last_touch) + 1e-3))
            now = self.clock()
        with self._lock:
            self.waited_s += now - start
            self.waits += 1
            self._run_until = now + self.min_run_s
        return now - start


class CourteousStop:
    """A stop flag (``is_set``, ``set``, ``clear``, ``wait``, as ``threading.Event``) whose every check first
    gives way to the user (``Courtesy.give_way``): an engine that checks its cancel flag at safe points (the
    tiled predictor: before each batch of windows and each block) pauses there while the user moves the
    view, with no change to the engine. Setting it ends a wait at once."""

    def __init__(self, event: threading.Event, courtesy: Courtesy) -> None:
        self.event, self.courtesy = event, courtesy

    def is_set(self) -> bool:
        self.courtesy.give_way(self.event)
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()

    def clear(self) -> None:
        self.event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


__all__ = ["MAX_WAIT_S", "MIN_RUN_S", "QUIET_S", "CourteousStop", "Courtesy"]
