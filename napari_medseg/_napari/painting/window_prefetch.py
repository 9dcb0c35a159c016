"""Moving the editable window after a camera move without reading the store on the GUI thread (no Qt).

When the view pans or zooms, the window follows (debounced). Moving it means two reads of the store: the safety
net that compares the old window with the store (``WindowEdits.full_diff``: edits made around the tracked
door) and the new window itself; at 4096 x 4096 pixels each read decompresses up to 16 MB, which stalled the
viewer for up to ~270 ms per move (issue 23). ``WindowPrefetch`` does both in the controller's writer thread
(after any write already queued, so the read sees it) and hands the new window back to the GUI thread, which
only swaps the layer's data. The thread also copies the old window's pixels (the snapshot the checks below
compare with) and the new coarse window's cell values, and writes every page of the new arrays once
(``window_edits.resident``): a fresh 16 MB array costs 50-80 ms of page faults on a VM to whichever thread
touches it first, so no new array of a window's size is made on the GUI thread, whose compares run in
blocks (``window_edits.same``).

It hands the data back only if nothing could be lost by using it; otherwise the controller moves the window
the synchronous way (save, then read), exactly as before:

- nothing was unsaved or being written when the read was asked for;
- no stroke wrote to the window since (the controller's write counter), the window did not move, no stroke is
  under way, and the layer's pixels equal the snapshot (edits made around the tracked door). The snapshot is
  copied from the live array in the writer thread; an edit made around the door meanwhile is either in the
  snapshot, where the safety net below finds that the store lacks it, or not, where the layer differs from
  the snapshot;
- the old window held nothing the store lacks (the safety net found no differing chunk; a coarse window's
  cells equal the values they showed when read).

A newer request supersedes an older one (its result is dropped).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medseg._napari.painting.window_edits import WindowEdits, resident, same
from napari_medseg._napari.painting.window_geometry import Window

log = logging.getLogger(__name__)


@dataclass
class Request:
    window: Window
    level: int
    old_window: Window
    old_level: int
    writes: int  # the controller's write counter when asked
    source: np.ndarray | None  # the old full-resolution window's array (the layer's), to snapshot
    snapshot: np.ndarray | None = None  # its copy by the writer thread, for the safety net and the re-check
    baseline: np.ndarray | None = None  # a coarse new window: its cell values as read (``WindowEdits.load``)
    future: concurrent.futures.Future | None = None


class WindowPrefetch:
    """Reads the next window in ``executor`` (the writer thread); ``deliver`` gets the request back from that
    thread (the controller queues it to the GUI thread and calls ``take``)."""

    def __init__(self, edits: WindowEdits, executor: concurrent.futures.Executor,
                 deliver: Callable[[Request], None]) -> None:
        self.edits, self.executor, self.deliver = edits, executor, deliver
        self.current: Request | None = None
        self.used = self.refused = 0  # counts, for tests and benchmarks

    def request(self, window: Window, level: int, layer_data: Any, writes: int, busy: bool) -> bool:
        """Start reading ``window`` at ``level``; False (nothing started) when the old window holds unsaved
        edits or writes are under way (``busy``): then the controller moves the synchronous way."""
        self.current = None
        ed = self.edits
        if busy or ed.dirty:
            return False
        source = None
        has_window = any(w.stop > w.start for w in ed.window)
        if has_window and ed.level == 0 and ed.store.writable:
            source = np.asarray(layer_data)
        elif has_window and ed.store.writable:
            ed.full_diff(np.asarray(layer_data))  # a coarse window: an in-memory comparison, cheap
            if ed.dirty:
                return False
        req = Request(tuple(window), int(level), ed.window, ed.level, writes, source)
        self.current = req  # before the callback, which may run at once
        req.future = self.executor.submit(self._read, req)
        req.future.add_done_callback(lambda _f, r=req: self.deliver(r))
        return True

    def _read(self, req: Request) -> tuple[set, np.ndarray]:
        """The writer thread: the snapshot and the safety net over the old window, then the new window."""
        differ = set()
        if req.source is not None:
            req.snapshot = np.array(req.source)
            req.source = None
            differ = self.edits.differing_chunks(req.snapshot, req.old_window)
        data = resident(self.edits.read(req.window, req.level))
        if req.level:
            req.baseline = data.copy()
        return differ, data

    def cancel(self) -> None:
        self.current = None

    def take(self, req: Request, layer_data: Any, writes: int, stroke: bool) -> np.ndarray | None:
        """On the GUI thread: the new window's data if it can be used now (see module), else None."""
        if req is not self.current:
            return None  # superseded or cancelled
        self.current = None
        ed = self.edits
        try:
            differ, data = req.future.result()
        except Exception:
            log.exception("reading the next window failed; moving it the synchronous way")
            self.refused += 1
            return None
        ok = (not stroke and writes == req.writes and not ed.dirty and not differ
              and ed.window == req.old_window and ed.level == req.old_level)
        if ok and req.snapshot is not None:
            cur = np.asarray(layer_data)
            ok = same(cur, req.snapshot)
        elif ok and ed.level and ed.store.writable and any(w.stop > w.start for w in ed.window):
            ed.full_diff(np.asarray(layer_data))
            ok = not ed.dirty
        if not ok:
            self.refused += 1
            return None
        self.used += 1
        return data
