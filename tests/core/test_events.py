"""``core.events.drive``: runs an event generator to its return value, every event to the callback."""

from __future__ import annotations

import pytest

from napari_medseg.core.events import drive


def _gen(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise ValueError("boom")
        yield i
    return f"done {n}"


def test_drive_returns_the_generators_value_and_shows_every_event():
    seen: list[int] = []
    assert drive(_gen(3), seen.append) == "done 3"
    assert seen == [0, 1, 2]
    assert drive(_gen(2)) == "done 2"  # without a callback


def test_drive_lets_errors_through():
    seen: list[int] = []
    with pytest.raises(ValueError, match="boom"):
        drive(_gen(5, fail_at=2), seen.append)
    assert seen == [0, 1]


def test_drive_closes_the_generator_when_the_callback_fails():
    closed: list[bool] = []

    def gen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    def fail(ev):
        raise RuntimeError("callback")

    with pytest.raises(RuntimeError, match="callback"):
        drive(gen(), fail)
    assert closed == [True]  # its finally ran before the error reached the caller
