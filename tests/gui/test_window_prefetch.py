"""The window follows the camera without reading the store on the GUI thread (``painting/window_prefetch``),
and falls back to the synchronous move whenever the prefetched window could lose a stroke."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from painting_gui_helpers import line, look_at, qt_stroke
from test_painting import CLASSES, PS

from napari_medseg._napari.painting import window_prefetch
from napari_medseg._napari.painting.controller import PaintingController
from napari_medseg._napari.painting.window_edits import resident
from napari_medseg.labels.store import LabelStore


@pytest.fixture
def slide(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    img = viewer.add_image(np.zeros((3000, 4000), np.uint8), scale=(PS, PS), translate=(10.0, 20.0), name="slide")
    store = LabelStore.create(tmp_path / "s.labels.zarr", (3000, 4000), chunks=(256, 256), classes=CLASSES,
                              pixel_size=(PS, PS), coarsest=500)
    ctl = PaintingController(viewer, store, img, max_window=1024, notify=lambda m: None, inform=lambda m: None)
    viewer.layers.selection.active = ctl.layer
    ctl.layer.mode, ctl.layer.selected_label = "paint", 2
    yield viewer, store, ctl
    ctl.close()
    store.close()


def _reads_on(ctl) -> list[str]:
    """Record the thread of every store read the window's edits make from now on."""
    names: list[str] = []
    for name in ("read", "differing_chunks"):
        orig = getattr(ctl.edits, name)

        def wrapped(*a, _orig=orig, **k):
            names.append(threading.current_thread().name)
            return _orig(*a, **k)

        setattr(ctl.edits, name, wrapped)
    return names


def test_the_window_follows_the_camera_reading_in_the_writer_thread(slide, qtbot, monkeypatch):
    viewer, store, ctl = slide
    store.write((slice(2000, 2100), slice(3000, 3100)), 3)  # something to find at the new place
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.follow_view()
    threads = _reads_on(ctl)
    mapped: list[str] = []  # the new window's pages are mapped there too, not on the GUI thread
    monkeypatch.setattr(window_prefetch, "resident",
                        lambda a: (mapped.append(threading.current_thread().name), resident(a))[1])
    first = ctl.window
    look_at(viewer, ctl, 2050, 3050, 4.0)  # the camera moves: the debounced handler follows
    qtbot.waitUntil(lambda: ctl.window != first, timeout=5000)
    assert ctl.prefetch.used == 1 and ctl.prefetch.refused == 0
    assert threads and all(t.startswith("medseg-flush") for t in threads), threads
    assert len(mapped) == 1 and mapped[0].startswith("medseg-flush")
    w = ctl.window
    assert w[0].start <= 2050 < w[0].stop and w[1].start <= 3050 < w[1].stop
    y0, x0 = 2000 - w[0].start, 3000 - w[1].start
    assert (np.asarray(ctl.layer.data)[y0:y0 + 100, x0:x0 + 100] == 3).all()
    # painting goes on in the new window and is saved
    qt_stroke(viewer, qtbot, ctl, line((2050, 2950), (2050, 2990)))
    ctl.flush(wait=True)
    assert (store.read((slice(2050, 2051), slice(2950, 2991))) == 2).all()


def test_a_prefetched_window_is_dropped_if_the_old_one_changed_meanwhile(slide, qtbot):
    viewer, store, ctl = slide
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.follow_view()
    first = ctl.window
    gate = threading.Event()
    orig = ctl.edits.read
    ctl.edits.read = lambda *a, **k: (gate.wait(5), orig(*a, **k))[1]  # hold the read in the writer thread
    look_at(viewer, ctl, 2050, 3050, 4.0)
    qtbot.waitUntil(lambda: ctl.prefetch.current is not None, timeout=5000)
    data = ctl.layer.data
    data[500 - first[0].start, 500 - first[1].start] = 3  # a stroke's write while the new window is read
    gate.set()
    qtbot.waitUntil(lambda: ctl.window != first, timeout=5000)
    assert ctl.prefetch.refused == 1 and ctl.prefetch.used == 0  # moved the synchronous way
    assert store.read((slice(500, 501), slice(500, 501)))[0, 0] == 3  # the write was saved first
    # edits made around the tracked door (in place on a plain view) are caught by the snapshot check too
    look_at(viewer, ctl, 500, 500, 4.0)
    qtbot.waitUntil(lambda: ctl.window == first, timeout=5000)
    ctl.edits.read = lambda *a, **k: (gate.wait(5), orig(*a, **k))[1]
    gate.clear()
    look_at(viewer, ctl, 2050, 3050, 4.0)
    qtbot.waitUntil(lambda: ctl.prefetch.current is not None, timeout=5000)
    np.asarray(ctl.layer.data)[510 - first[0].start, 510 - first[1].start] = 2  # untracked
    gate.set()
    qtbot.waitUntil(lambda: ctl.window != first, timeout=5000)
    assert ctl.prefetch.refused == 2
    assert store.read((slice(510, 511), slice(510, 511)))[0, 0] == 2


def test_an_edit_around_the_door_before_the_writer_thread_copies_the_window_is_caught_too(slide, qtbot):
    """The writer thread copies the old window itself (no window-sized copy on the GUI thread): an untracked
    edit made before that copy is in the snapshot, and the safety net finds that the store lacks it."""
    viewer, store, ctl = slide
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.follow_view()
    first = ctl.window
    gate = threading.Event()
    ctl._executor.submit(gate.wait, 5)  # the writer thread is busy: the prefetch waits in its queue
    look_at(viewer, ctl, 2050, 3050, 4.0)
    qtbot.waitUntil(lambda: ctl.prefetch.current is not None, timeout=5000)
    req = ctl.prefetch.current
    assert req.snapshot is None  # not copied yet
    np.asarray(ctl.layer.data)[520 - first[0].start, 530 - first[1].start] = 3  # untracked
    gate.set()
    qtbot.waitUntil(lambda: ctl.window != first, timeout=5000)
    assert req.snapshot is not None and req.snapshot[520 - first[0].start, 530 - first[1].start] == 3
    assert ctl.prefetch.refused == 1 and ctl.prefetch.used == 0  # moved the synchronous way, saving first
    assert store.read((slice(520, 521), slice(530, 531)))[0, 0] == 3


def test_unsaved_edits_move_the_window_the_synchronous_way(slide, qtbot):
    viewer, store, ctl = slide
    look_at(viewer, ctl, 500, 500, 4.0)
    ctl.follow_view()
    first = ctl.window
    qt_stroke(viewer, qtbot, ctl, line((500, 480), (500, 520)))  # not yet saved (autosave is debounced)
    assert ctl.edits.dirty
    look_at(viewer, ctl, 2050, 3050, 4.0)
    qtbot.waitUntil(lambda: ctl.window != first, timeout=5000)
    assert ctl.prefetch.used == 0
    assert (store.read((slice(500, 501), slice(480, 521))) == 2).all()
