"""Running the engines' event generators to their end.

Training (``training.loop.train``) and prediction (``inference.predictor.predict``) are generators: they
yield progress events and *return* their result (``StopIteration.value``), so a caller can show progress,
stop them, or just wait. ``drive`` is the one way to run such a generator to its result, handing every
event to an optional callback; the CLI, the ``run_*`` helpers and the tests use it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

E = TypeVar("E")
R = TypeVar("R")


def drive(gen: Generator[E, Any, R], on_event: Callable[[E], Any] | None = None) -> R:
    """Run ``gen`` to its end, calling ``on_event(event)`` for each event it yields; return its return value.

    An exception from the generator or from ``on_event`` propagates, after the generator is closed: its
    ``finally`` blocks run at once, not whenever a kept traceback lets it go (a training run gives back the
    process-wide settings it holds, ``core.heap``).
    """
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(ev)
    except BaseException:
        gen.close()
        raise
