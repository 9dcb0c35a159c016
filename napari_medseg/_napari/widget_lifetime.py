"""Clean-up when a Qt widget goes, without a Python callable that the garbage collector can tear down first.

``obj.destroyed.connect(lambda: ...)`` crashes the interpreter now and then (a segmentation fault in CI,
in ``guidance.py``'s lambda, 2026-12-05): the slot is reachable from the widget's Python wrapper, so when
the collector frees a cycle holding that wrapper it first clears the lambda (its globals become NULL), then
the wrapper's deallocation deletes the C++ widget, Qt emits ``destroyed`` and PyQt calls the cleared lambda.
``tests/gui/test_widget_lifetime.py`` runs the loop that crashed with such lambdas (3 of 3 runs) through
this module instead (silx-kit/silx#4605 and pyapp-kit/app-model#183 met the same).

``when_destroyed(obj, callback)`` keeps the slot in a module registry instead (reachable from a global, it is
never part of a garbage cycle), holds a bound method of ``obj`` weakly (the registry must not keep the widget
alive) and drops the entry when either path ends the widget:

- Qt deletes it (its window closed, a parent deleted): ``destroyed`` calls ``callback``; the wrapper is
  still alive then, so a bound method of the widget runs;
- the collector frees its Python wrapper (an undocked widget nobody holds): ``weakref.finalize`` calls a
  plain ``callback``; a bound method of the widget is gone with it and is skipped (a widget with work to
  save, e.g. open labels, is held by that work's listeners and is not collected while it is open).

``callback`` runs once at most; an exception in it is logged, never raised into Qt's destructor.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: the slots of widgets not yet gone (see module): reachable from here, never cleared by the collector
_PENDING: set[Callable[..., None]] = set()


def when_destroyed(obj: Any, callback: Callable[[], Any]) -> None:
    """Call ``callback()`` once when the Qt object ``obj`` goes (see module). ``callback`` is a bound method
    of ``obj`` (held weakly) or a callable that does not refer to ``obj`` (held until ``obj`` goes)."""
    if getattr(callback, "__self__", None) is obj:
        method = weakref.WeakMethod(callback)  # type: ignore[arg-type]
        target: Callable[[], Callable[[], Any] | None] = method
    else:
        target = lambda: callback  # noqa: E731 - the plain callable itself, held strongly
    name = type(obj).__name__  # run() must not refer to obj: the registry would keep it alive
    done: list[bool] = []

    def run(*_: Any) -> None:
        _PENDING.discard(run)
        if done:
            return
        done.append(True)
        fn = target()
        if fn is None:
            return
        try:
            fn()
        except Exception:
            log.exception("clean-up after %s failed", name)

    _PENDING.add(run)
    weakref.finalize(obj, run)
    obj.destroyed.connect(run)


def pending_count() -> int:
    """How many widgets registered with ``when_destroyed`` have not gone yet (for tests)."""
    return len(_PENDING)
