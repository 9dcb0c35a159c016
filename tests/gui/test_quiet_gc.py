"""The garbage collector's permanent generation: what is alive when work starts is frozen, garbage is not,
and the switch turns it off."""

from __future__ import annotations

import gc
import weakref

import pytest

from napari_medseg._napari import quiet_gc
from napari_medseg._napari.jobs.workers import start_generator_worker


class _Node:
    pass


@pytest.fixture
def gc_freeze_on(monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_GC_FREEZE", "1")
    gc.unfreeze()
    yield
    gc.unfreeze()


def _cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_freeze_keeps_live_objects_out_of_collections_and_collects_garbage_first(gc_freeze_on):
    garbage = _cycle()  # unreachable already: the collection before the freeze must free it
    kept = _Node()
    assert quiet_gc.freeze_long_lived(full=False)
    assert garbage() is None
    assert gc.get_freeze_count() > 0
    frozen = gc.get_freeze_count()
    ids = {id(o) for o in gc.get_objects()}  # the frozen generation is not walked by collections
    assert id(kept) not in ids
    later = _Node()
    assert id(later) in {id(o) for o in gc.get_objects()}
    # a new object does not join the frozen generation (frozen ones may still die by refcount meanwhile, e.g.
    # a frame of another test's thread: the count can fall, not rise)
    assert gc.get_freeze_count() <= frozen


def test_switched_off(monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_GC_FREEZE", "0")
    gc.unfreeze()
    assert not quiet_gc.freeze_long_lived()
    assert gc.get_freeze_count() == 0


def test_a_worker_freezes_at_start_and_after_its_first_event(qtbot, gc_freeze_on):
    before_start = _Node()
    made_by_worker: list[_Node] = []

    def work():
        made_by_worker.append(_Node())  # like a library the worker imports
        yield 1
        yield 2

    events: list[int] = []
    frozen_at_event: list[bool] = []

    def on_event(ev):
        events.append(ev)
        frozen_at_event.append(id(made_by_worker[0]) not in {id(o) for o in gc.get_objects()})

    done = []
    start_generator_worker(work, on_event=on_event, on_finished=lambda: done.append(True))
    assert id(before_start) not in {id(o) for o in gc.get_objects()}
    qtbot.waitUntil(lambda: bool(done), timeout=10_000)
    assert events == [1, 2]
    assert frozen_at_event[0]
