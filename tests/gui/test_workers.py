"""Background work runs at a lower CPU priority than the viewer's threads (Linux: nice is per thread)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from napari_medseg._napari.workers import BACKGROUND_NICE, background_priority

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
