"""Helpers shared by the test packages: running an engine's event generator to its end and keeping its events.

Imported as ``from helpers import drain`` (``tests/`` is on ``sys.path`` through the root ``conftest.py``).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from napari_medseg.core.events import drive


def drain(gen: Generator[Any, Any, Any]) -> tuple[list[Any], Any]:
    """Run an event generator (``train``, ``predict``, ``predict_many``) to its end: (its events, its return value)."""
    events: list[Any] = []
    result = drive(gen, events.append)
    return events, result
