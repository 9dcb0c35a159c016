"""Painting a ``LabelStore`` in napari: an editable window, autosave, and a read-only overview.

napari cannot paint a multiscale Labels layer (napari issue 1587) and loads a plain one whole, so the
controller shows a *window* of the store as a plain Labels layer at full resolution, aligned to the image
(``scale`` = the store's pixel size, ``translate`` = the window origin), and keeps it in sync:

- the window follows the camera (debounced) when the view leaves it, or jumps on request; it is
  chunk-aligned and capped (``max_window`` pixels per in-plane axis: 4096 by default), so napari's brush,
  fill, erase and undo stay fast; a volume that fits ``volume_max_voxels`` is shown whole;
- edits are tracked exactly: the layer's array is a numpy subclass whose ``__setitem__`` (the one door
  napari's paint, fill, erase, polygon and undo/redo go through) marks the touched store chunks dirty;
- autosave: dirty chunks are copied and written by one background writer thread
  ``FLUSH_DELAY_S`` after the last edit and at least every ``MAX_UNSAVED_S`` while painting goes on, and
  synchronously when the window moves or the controller closes. Only changed chunks are written, whole.
  A crash (even SIGKILL) loses at most the strokes of the last ``MAX_UNSAVED_S`` seconds plus the time
  to write them (``AUTOSAVE_NOTE``);
- the overview (slides) is a multiscale, read-only Labels layer over the whole store, blanked inside the
  window (where the editable layer shows the live labels), so every annotation is visible at any zoom; a
  volume too big to show whole gets a slab of slices that follows the slice slider instead.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QObject, QThread, QTimer, Signal

from napari_medseg.io import label_store_index as ix
from napari_medseg.io.classes import ClassSchema
from napari_medseg.io.errors import MedsegError
from napari_medseg.io.label_store import LabelStore, _normalize_key

from .layers import camera_of, units_of

log = logging.getLogger(__name__)

FLUSH_DELAY_S = 1.0
MAX_UNSAVED_S = 2.0
AUTOSAVE_NOTE = (f"Autosave: edits are written {FLUSH_DELAY_S:g} s after you stop painting and at least every "
                 f"{MAX_UNSAVED_S:g} s while you paint; a crash loses at most the last ~{MAX_UNSAVED_S:g} s of "
                 "strokes.")
FOLLOW_DELAY_MS = 300


def store_colormap(classes: ClassSchema) -> DirectLabelColormap:
    """napari colormap for label-store values (0 transparent, 1 background, 2.. classes)."""
    return DirectLabelColormap(color_dict=classes.store_colors())


def prediction_colormap(classes: ClassSchema) -> DirectLabelColormap:
    """napari colormap for predictions (0 background, transparent; k = class k): same colors per class."""
    return DirectLabelColormap(color_dict=classes.prediction_colors())


class TrackedLabels(np.ndarray):
    """A numpy array that reports every ``arr[key] = value`` on itself (not on views) to ``on_write``."""

    on_write: Callable[[Any], None] | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.on_write = None  # views and copies are not tracked

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        cb = self.on_write
        if cb is not None:
            cb(key)


def touched_box(key: Any, shape: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """The half-open box ``[lo, hi)`` an ``arr[key] = ...`` may have changed; None if nothing."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    lo, hi = [], []
    for k, s in zip(key, shape):
        if isinstance(k, slice):
            a, b, step = k.indices(s)
            if step < 0:
                a, b = b + 1, a + 1
            if b <= a:
                return None
            lo.append(a)
            hi.append(b)
        elif isinstance(k, (int, np.integer)):
            i = int(k) + s if k < 0 else int(k)
            lo.append(i)
            hi.append(i + 1)
        else:
            arr = np.asarray(k)
            if arr.dtype == bool or arr.size == 0:
                if arr.size == 0:
                    return None
                lo.append(0)
                hi.append(s)
            else:
                a = np.where(arr < 0, arr + s, arr)
                lo.append(int(a.min()))
                hi.append(int(a.max()) + 1)
    return lo, hi


class MaskedLevel:
    """One overview level of the store for napari, blank where the editable window is."""

    def __init__(self, store: LabelStore, level: int, window: Callable[[], tuple[slice, ...] | None]) -> None:
        self.store, self.level, self._window = store, level, window
        self.shape = store.level_shapes[level]
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.store._read_level(self.level, key)
        win = self._window()
        if win is None:
            return out
        ranges, squeeze = _normalize_key(key, self.shape)
        cum = self.store._cum[self.level]
        sel = []
        for (start, stop, step), w, f in zip(ranges, win, cum):
            wlo, whi = -(-w.start // f), w.stop // f  # level pixels entirely inside the window
            i0 = max(0, -(-(wlo - start) // step))
            i1 = max(i0, min(len(range(start, stop, step)), -(-(whi - start) // step)))
            sel.append(slice(i0, i1))
        view = out
        if squeeze:
            view = out.reshape([1 if ax in squeeze else n for ax, n in
                                enumerate(len(range(*r)) for r in ranges)])
        view[tuple(sel)] = 0
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype)


class PaintingController(QObject):
    """Keeps an editable Labels window over ``store`` in ``viewer`` and saves its edits (see module)."""

    flushed = Signal(object)       # {"chunks": n, "seconds": s} after each background write, main thread
    flush_failed = Signal(str)     # a message: the store could not be written (labels kept in memory)
    window_moved = Signal(object)  # the new window (tuple of slices, store pixels)
    _external = Signal(object)     # chunks changed in the store by someone else (queued to the main thread)

    def __init__(self, viewer: Any, store: LabelStore, image_layer: Any = None, *, max_window: int = 4096,
                 volume_max_voxels: int = 256 * 2**20, flush_delay_s: float = FLUSH_DELAY_S,
                 max_unsaved_s: float = MAX_UNSAVED_S, follow: bool = True, name: str | None = None,
                 notify: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.viewer, self.store, self.image_layer = viewer, store, image_layer
        self._camera = camera_of(viewer)
        self.max_window = max(int(max_window), 1)
        self.volume_max_voxels = int(volume_max_voxels)
        self.follow = follow
        self._notify = notify or (lambda msg: log.warning(msg))
        self._dirty: set[ix.Chunk] = set()
        self._invalid_warned: frozenset[int] = frozenset()
        self._pending: list[concurrent.futures.Future] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-flush")
        self.flush_log: list[dict[str, float]] = []
        self._closed = False
        self.window: tuple[slice, ...] = tuple(slice(0, 0) for _ in store.shape)

        base = name or (image_layer.name if image_layer is not None else "labels")
        self._scale, self._translate = self._geometry()
        units = units_of(image_layer, store.ndim)
        self.overview_layer = None
        if store.ndim == 2 and not self._fits_whole():  # a volume's window follows the slice slider instead
            levels = [MaskedLevel(store, k, self._window_or_none) for k in range(len(store.level_shapes))]
            self.overview_layer = viewer.add_labels(
                levels if len(levels) > 1 else levels[0], name=f"{base} annotations (overview)",
                multiscale=len(levels) > 1, scale=self._scale, translate=self._translate,
                colormap=store_colormap(store.classes), opacity=0.8, **units)
            self.overview_layer.editable = False
        self.layer = viewer.add_labels(self._empty(), name=f"{base} annotations", scale=self._scale,
                                       translate=self._translate, colormap=store_colormap(store.classes),
                                       opacity=0.8, **units)
        self.layer.selected_label = 2 if store.classes.max_store_value >= 2 else 1
        self.layer.editable = store.writable
        self.layer.metadata["napari_medseg"] = {"label_store": str(store.path) if store.path else None,
                                                "classes": store.classes.to_dict(), "axes": store.axes}

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(int(flush_delay_s * 1000))
        self._debounce.timeout.connect(self._on_timer)
        self._max_wait = QTimer(self)
        self._max_wait.setSingleShot(True)
        self._max_wait.setInterval(int(max_unsaved_s * 1000))
        self._max_wait.timeout.connect(self._on_timer)
        self._follow_timer = QTimer(self)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.setInterval(FOLLOW_DELAY_MS)
        self._follow_timer.timeout.connect(self.follow_view)
        self.flushed.connect(self._after_flush)
        self._external.connect(self._apply_external)
        store.add_listener(self._on_store_change)
        self._camera.events.center.connect(self._on_camera)
        self._camera.events.zoom.connect(self._on_camera)
        viewer.dims.events.current_step.connect(self._on_camera)
        self.move_window(self.window_for_view(), flush=False)

    # -- geometry -----------------------------------------------------------------------------------
    def _geometry(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """napari ``scale`` and ``translate`` of store pixel (0, ..) so it sits on the image's pixels."""
        nd = self.store.ndim
        scale = tuple(self.store.pixel_size)
        translate = [0.0] * nd
        if self.image_layer is not None:
            img_scale = tuple(self.image_layer.scale[-nd:])
            img_tr = tuple(self.image_layer.translate[-nd:])
            for a in range(nd):
                f = scale[a] / img_scale[a] if img_scale[a] else 1.0
                translate[a] = img_tr[a] + (f - 1) / 2 * img_scale[a]  # a declared level's pixel centres
        return scale, tuple(translate)

    def _fits_whole(self) -> bool:
        shp = self.store.shape
        if self.store.ndim == 3:
            return int(np.prod(shp)) <= self.volume_max_voxels
        return all(s <= self.max_window for s in shp)

    def _window_or_none(self) -> tuple[slice, ...] | None:
        return self.window if any(w.stop > w.start for w in self.window) else None

    def _empty(self) -> TrackedLabels:
        return np.zeros((1,) * self.store.ndim, np.uint8).view(TrackedLabels)

    def view_box(self) -> tuple[list[float], list[float]]:
        """The visible part of the store in store pixels (``lo``, ``hi`` per axis, not clipped)."""
        nd = self.store.ndim
        try:
            h, w = self.viewer.window._qt_viewer.canvas.size
        except Exception:  # no Qt window: assume a typical canvas
            h, w = 800, 1200
        zoom = max(float(self._camera.zoom), 1e-9)
        center = list(self._camera.center)[-2:]
        half = [h / zoom / 2, w / zoom / 2]
        lo = [(c - hh - t) / s for c, hh, t, s in zip(center, half, self._translate[-2:], self._scale[-2:])]
        hi = [(c + hh - t) / s for c, hh, t, s in zip(center, half, self._translate[-2:], self._scale[-2:])]
        if nd == 3:
            z = (float(self.viewer.dims.point[-3]) - self._translate[0]) / self._scale[0]
            lo, hi = [z, *lo], [z + 1, *hi]
        return lo, hi

    def window_for_view(self, center: Sequence[float] | None = None) -> tuple[slice, ...]:
        """A chunk-aligned window of ``max_window`` pixels per in-plane axis (a slab of slices for a volume
        too big to show whole) centred on the view, or on ``center`` (store pixels); the whole store when
        it fits. A full-sized window means fewer moves while panning."""
        shp, ch = self.store.shape, self.store.chunks
        if self._fits_whole():
            return tuple(slice(0, s) for s in shp)
        if center is None:
            lo, hi = self.view_box()
            center = [(a + b) / 2 for a, b in zip(lo, hi)]
        out = []
        for a, (s, c) in enumerate(zip(shp, ch)):
            cap = self.max_window
            if self.store.ndim == 3 and a == 0:
                inplane = min(self.max_window, shp[1]) * min(self.max_window, shp[2])
                cap = self.volume_max_voxels // max(inplane, 1)
            cap = max(c, cap // c * c)
            if cap >= s:
                out.append(slice(0, s))
                continue
            a0 = math.floor((center[a] - cap / 2) / c) * c
            a0 = max(0, min(a0, math.ceil((s - cap) / c) * c))
            out.append(slice(int(a0), int(min(s, a0 + cap))))
        return tuple(out)

    # -- window -------------------------------------------------------------------------------------
    def _on_camera(self, event: Any = None) -> None:
        if self.follow and not self._closed:
            self._follow_timer.start()

    def follow_view(self) -> None:
        """Move the window if the view has left it (and the view is small enough to paint in)."""
        if self._closed or self._fits_whole():
            return
        lo, hi = self.view_box()
        shp = self.store.shape
        lo_c = [max(0.0, v) for v in lo]
        hi_c = [min(float(s), v) for s, v in zip(shp, hi)]
        inside = all(w.start <= a and b <= w.stop for w, a, b in zip(self.window, lo_c, hi_c))
        if inside:
            return
        fits = all(b - a <= self.max_window for a, b in zip(lo_c[-2:], hi_c[-2:]))
        mid = [(a + b) / 2 for a, b in zip(lo_c, hi_c)]
        center_in = all(w.start <= m < w.stop for w, m in zip(self.window, mid))
        if fits or not center_in:
            self.move_window(self.window_for_view())

    def move_window(self, window: tuple[slice, ...], *, flush: bool = True, force: bool = False) -> bool:
        """Show ``window`` (store pixels). Edits of the old window are saved first; if some cannot be
        (labels beyond the class schema) the window stays and the user is told. Returns True if moved."""
        window = tuple(slice(int(w.start), int(w.stop)) for w in window)
        if window == self.window and not force:
            return False
        if flush and any(w.stop > w.start for w in self.window):
            self.flush(wait=True, full=True)
            if self._dirty:
                self._notify("The window was not moved: it holds labels that cannot be saved yet (see the "
                             "previous message). Fix them first.")
                return False
        t0 = time.perf_counter()
        data = self.store.read(window).view(TrackedLabels)
        data.on_write = self._on_write
        old = self.layer.data
        if isinstance(old, TrackedLabels):
            old.on_write = None
        self.window = window
        self._dirty.clear()
        tr = tuple(t + w.start * s for t, w, s in zip(self._translate, window, self._scale))
        self.layer.translate = tr
        self.layer.data = data
        self.layer.editable = self.store.writable  # setting data makes a Labels layer editable again
        if hasattr(self.layer, "_reset_history"):
            self.layer._reset_history()  # undo history refers to the old window's pixels
        self._refresh_overview()
        log.debug("window moved to %s in %.3f s", window, time.perf_counter() - t0)
        self.window_moved.emit(window)
        return True

    def show_region(self, region: tuple[slice, ...], *, zoom: bool = True) -> None:
        """Center the camera on ``region`` (store pixels), zoom to it, and put the window there."""
        nd = self.store.ndim
        mid = [(r.start + r.stop) / 2 for r in region]
        world = [t + m * s for t, m, s in zip(self._translate, mid, self._scale)]
        if nd == 3:
            step = list(self.viewer.dims.point)
            step[-3] = world[0]
            self.viewer.dims.point = step
        self._camera.center = tuple(world[-2:])
        if zoom:
            try:
                h, w = self.viewer.window._qt_viewer.canvas.size
            except Exception:
                h, w = 800, 1200
            ext = [max(r.stop - r.start, 64) * s for r, s in zip(region[-2:], self._scale[-2:])]
            cap = [self.max_window * s * 0.9 for s in self._scale[-2:]]
            ext = [min(e, c) for e, c in zip(ext, cap)]
            self._camera.zoom = 0.8 * min(h / ext[0], w / ext[1])
        self._follow_timer.stop()
        self.move_window(self.window_for_view(center=mid))

    # -- edits and autosave -------------------------------------------------------------------------
    def _on_write(self, key: Any) -> None:
        box = touched_box(key, self.layer.data.shape)
        if box is None:
            return
        ch = self.store.chunks
        org = [w.start // c for w, c in zip(self.window, ch)]  # the window is chunk-aligned
        ranges = [range(o + a // c, o + (b - 1) // c + 1) for o, a, b, c in zip(org, box[0], box[1], ch)]
        if len(ranges) == 2:
            self._dirty.update((i, j) for i in ranges[0] for j in ranges[1])
        else:
            self._dirty.update((i, j, k) for i in ranges[0] for j in ranges[1] for k in ranges[2])
        self._debounce.start()
        if not self._max_wait.isActive():
            self._max_wait.start()

    def _on_timer(self) -> None:
        self.flush()

    def _full_diff(self) -> None:
        """Mark every window chunk that differs from the store (a safety net for edits made around the
        tracked door, e.g. in place on a view of the layer's array)."""
        data = np.asarray(self.layer.data)
        cur = self.store.read(self.window)
        if data.shape != cur.shape:
            return
        ch = self.store.chunks
        org = [w.start // c for w, c in zip(self.window, ch)]
        for c in ix.chunks_in_box([0] * data.ndim, data.shape, ch):
            sl = tuple(slice(i * cc, (i + 1) * cc) for i, cc in zip(c, ch))
            if not np.array_equal(data[sl], cur[sl]):
                self._dirty.add(tuple(o + i for o, i in zip(org, c)))

    def flush(self, wait: bool = False, full: bool = False) -> None:
        """Save dirty chunks (in the background unless ``wait``). ``full`` also compares the whole window
        with the store first."""
        self._debounce.stop()
        self._max_wait.stop()
        if self._closed or not self.store.writable:
            return
        if full:
            self._full_diff()
        if self._dirty:
            data = np.asarray(self.layer.data)
            top = self.store.classes.max_store_value
            blocks, bad, bad_vals = {}, set(), set()
            for c in self._dirty:
                gsl = self.store.chunk_region(c)
                if not all(w.start <= g.start and g.stop <= w.stop for g, w in zip(gsl, self.window)):
                    continue
                blk = np.array(data[tuple(slice(g.start - w.start, g.stop - w.start) for g, w in zip(gsl, self.window))])
                if blk.size and int(blk.max()) > top:
                    bad.add(c)
                    bad_vals.update(int(v) for v in np.unique(blk) if v > top)
                    continue
                blocks[c] = blk
            self._dirty = bad
            if bad and frozenset(bad_vals) != self._invalid_warned:
                self._invalid_warned = frozenset(bad_vals)
                self._notify(f"Label value(s) {sorted(bad_vals)} are not classes (the schema has "
                             f"{len(self.store.classes.names)} classes, store values 1..{top}): add classes in the "
                             "Annotate widget or repaint them. They stay in the window, unsaved, until then.")
            if blocks:
                self._pending.append(self._executor.submit(self._write_job, blocks))
        self._pending = [f for f in self._pending if not f.done()]
        if wait:
            for f in list(self._pending):
                f.result()
            self._pending = []

    def _write_job(self, blocks: dict[ix.Chunk, np.ndarray]) -> None:
        """Runs in the writer thread: the only place the controller writes the store."""
        t0 = time.perf_counter()
        try:
            changed = self.store.write_chunks(blocks, validated=True, origin=self)
        except MedsegError as e:
            self.flush_failed.emit(str(e))
            return
        except Exception as e:  # never lose the reason; the labels remain in the window and the store's memory
            log.exception("writing labels failed")
            self.flush_failed.emit(f"Saving labels failed ({type(e).__name__}: {e}); they are kept in memory.")
            return
        info = {"chunks": len(changed), "seconds": time.perf_counter() - t0, "time": time.time()}
        self.flush_log.append(info)
        self.flushed.emit(info)

    def _on_store_change(self, chunks: list[ix.Chunk], origin: Any) -> None:
        """A store listener: chunks written by anyone but this controller (accepting a prediction,
        importing a mask, removing a class) are re-read into the window."""
        if origin is self or self._closed:
            return
        if QThread.currentThread() is self.thread():
            self._apply_external(chunks)
        else:
            self._external.emit(chunks)

    def _apply_external(self, chunks: Any) -> None:
        if self._closed:
            return
        data = np.asarray(self.layer.data)  # a plain view: these writes are not edits to save
        touched = False
        for c in chunks:
            gsl = self.store.chunk_region(c)
            if not all(w.start <= g.start and g.stop <= w.stop for g, w in zip(gsl, self.window)):
                continue
            loc = tuple(slice(g.start - w.start, g.stop - w.start) for g, w in zip(gsl, self.window))
            cur = self.store.read(gsl)
            if c in self._dirty:  # unsaved strokes there: they win where they painted
                cur = np.where(data[loc] != 0, data[loc], cur)
            data[loc] = cur
            touched = True
        if touched:
            self.layer.refresh()
        self._refresh_overview()

    def _after_flush(self, info: Any) -> None:
        if self.overview_layer is not None and not self._closed and self.overview_layer.visible:
            lo, hi = self.view_box()
            if any(a < w.start or b > w.stop for w, a, b in zip(self.window, lo, hi)):
                self._refresh_overview()

    def _refresh_overview(self) -> None:
        """Re-read the overview. napari keeps the coarsest level of a 2D multiscale layer in memory
        (its thumbnail level); drop that copy too, or the zoomed-out view would never change."""
        lyr = self.overview_layer
        if lyr is None:
            return
        if hasattr(lyr, "_reset_thumbnail_level_data"):
            lyr._reset_thumbnail_level_data()
            lyr.refresh()
        else:  # other napari versions: replacing the data resets every cache
            lyr.data = lyr.data_raw
            lyr.editable = False

    @property
    def unsaved(self) -> bool:
        return bool(self._dirty) or any(not f.done() for f in self._pending)

    # -- classes / lifecycle ------------------------------------------------------------------------
    def set_classes(self, classes: ClassSchema) -> None:
        """Apply a new class schema to the store and the layers' colors."""
        self.flush(wait=True, full=True)
        self.store.set_classes(classes)
        self.update_colors()
        if self._dirty:
            self.flush(wait=True)

    def update_colors(self) -> None:
        cmap = store_colormap(self.store.classes)
        self.layer.colormap = cmap
        self.layer.metadata.setdefault("napari_medseg", {})["classes"] = self.store.classes.to_dict()
        if self.overview_layer is not None:
            self.overview_layer.colormap = store_colormap(self.store.classes)

    def reload(self) -> None:
        """Re-read the window from the store (after an operation changed the store underneath)."""
        self.move_window(self.window, flush=False, force=True)

    def close(self, remove_layers: bool = False) -> None:
        """Save everything and stop following the camera. The store stays open (its owner closes it)."""
        if self._closed:
            return
        try:
            self.flush(wait=True, full=True)
            if self._dirty:  # values beyond the schema: extend it rather than lose them
                data = np.asarray(self.layer.data)
                top = int(data.max())
                names = list(self.store.classes.names) + [f"class {v - 1}" for v in
                                                          range(self.store.classes.max_store_value + 1, top + 1)]
                self.store.set_classes(ClassSchema(names=tuple(names)))
                log.warning("classes are now %s so that painted labels are not lost", names)
                self.flush(wait=True)
        finally:
            self._closed = True
            for t in (self._debounce, self._max_wait, self._follow_timer):
                t.stop()
            for em, cb in ((self._camera.events.center, self._on_camera),
                           (self._camera.events.zoom, self._on_camera),
                           (self.viewer.dims.events.current_step, self._on_camera)):
                with contextlib.suppress(Exception):
                    em.disconnect(cb)
            self._executor.shutdown(wait=True)
            self.store.remove_listener(self._on_store_change)
            if isinstance(self.layer.data, TrackedLabels):
                self.layer.data.on_write = None
            if remove_layers:
                for lyr in (self.layer, self.overview_layer):
                    if lyr is not None and lyr in self.viewer.layers:
                        self.viewer.layers.remove(lyr)
