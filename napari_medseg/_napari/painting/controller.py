"""Painting a ``LabelStore`` in napari at any zoom: an editable window, autosave, and a read-only overview.

napari cannot paint a multiscale Labels layer (napari issue 1587) and loads a plain one whole, so the
controller shows a *window* of the store as a plain Labels layer, aligned to the image, and keeps it in
sync:

- the window covers the view: it follows the camera (debounced) and is capped at ``max_window`` layer
  pixels per in-plane axis (4096 by default) so napari's brush, fill, erase and undo stay fast. Zoomed in,
  it shows the store at full resolution; zoomed out beyond what ``max_window`` full-resolution pixels
  cover, it shows a coarser level of the store's pyramid, and each pixel painted there is saved as a block
  of full-resolution pixels (``window_geometry``, ``window_edits``). A stroke that starts outside the
  window (the view moved less than ``FOLLOW_DELAY_MS`` ago, or ``follow`` is off) first moves the window
  there. A slide's window is outlined on the canvas; a volume that fits ``volume_max_voxels`` is shown
  whole, a bigger one as a slab of slices that follows the slice slider;
- edits are tracked exactly (``window_edits.TrackedLabels``) and saved by autosave: dirty chunks are
  copied and written by one background writer thread ``FLUSH_DELAY_S`` after the last edit and at least
  every ``MAX_UNSAVED_S`` while painting goes on, and synchronously when the window moves or the
  controller closes. Only changed chunks are written, whole. A crash (even SIGKILL) loses at most the
  strokes of the last ``MAX_UNSAVED_S`` seconds plus the time to write them (``AUTOSAVE_NOTE``);
- the undo history covers the strokes since the window last moved (or changed resolution);
- the overview (slides) is a multiscale, read-only Labels layer over the whole store, blank inside the
  window (``store_overview``), so every annotation is visible at any zoom; it is hidden while the window
  covers the view.

Only napari's public API is used (``napari_compat``): a dock widget's viewer is a ``PublicOnlyProxy``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QThread, QTimer, Signal

from napari_medseg._napari import napari_compat as compat
from napari_medseg._napari.layerdata import store_colormap, units_of
from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.painting.store_overview import StoreOverview
from napari_medseg._napari.painting.window_edits import TrackedLabels, WindowEdits, WriteJob, touched_box
from napari_medseg._napari.painting.window_geometry import Window, WindowGeometry, store_transform
from napari_medseg._napari.painting.window_prefetch import Request, WindowPrefetch
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.grid import Chunk
from napari_medseg.labels.ops import extend_classes, set_classes
from napari_medseg.labels.store import LabelStore

__all__ = ["AUTOSAVE_NOTE", "FLUSH_DELAY_S", "MAX_UNSAVED_S", "PaintingController", "TrackedLabels",
           "touched_box"]

log = logging.getLogger(__name__)

FLUSH_DELAY_S = 1.0
MAX_UNSAVED_S = 2.0
AUTOSAVE_NOTE = (f"Autosave: edits are written {FLUSH_DELAY_S:g} s after you stop painting and at least every "
                 f"{MAX_UNSAVED_S:g} s while you paint; a crash loses at most the last ~{MAX_UNSAVED_S:g} s of "
                 "strokes.")
FOLLOW_DELAY_MS = 300
OUTLINE_COLOR = "#ffd400"
PAINT_MODES = ("paint", "erase", "fill")  # modes whose first click must land in the window


def _default_inform(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


class PaintingController(QObject):
    """Keeps an editable Labels window over ``store`` in ``viewer`` and saves its edits (see module).

    ``notify`` gets warnings (labels that cannot be saved, a window that cannot move), ``inform`` notes
    (painting at a coarser resolution); both default to napari notifications / the log."""

    flushed = Signal(object)       # {"chunks": n, "seconds": s} after each background write, main thread
    flush_failed = Signal(str)     # a message: the store could not be written (labels kept in memory)
    window_moved = Signal(object)  # the new window (tuple of slices, store pixels)
    _external = Signal(object)     # chunks changed in the store by someone else (queued to the main thread)
    _prefetched = Signal(object)   # a window_prefetch.Request whose read finished (queued to the main thread)

    def __init__(self, viewer: Any, store: LabelStore, image_layer: Any = None, *, max_window: int = 4096,
                 volume_max_voxels: int = 256 * 2**20, flush_delay_s: float = FLUSH_DELAY_S,
                 max_unsaved_s: float = MAX_UNSAVED_S, follow: bool = True, name: str | None = None,
                 notify: Callable[[str], None] | None = None,
                 inform: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.viewer, self.store, self.image_layer = viewer, store, image_layer
        self._camera = camera_of(viewer)
        self.geom = WindowGeometry.of_store(store, max_window=max_window, volume_max_voxels=volume_max_voxels)
        self.edits = WindowEdits(store, self.geom)
        self.follow = follow
        self._notify = notify or (lambda msg: log.warning(msg))
        self._inform = inform or _default_inform
        self._invalid_warned: frozenset[int] = frozenset()
        self._pending: list[concurrent.futures.Future] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-flush")
        self.flush_log: list[dict[str, float]] = []
        self._closed = False
        self._stroke = False  # a mouse stroke is under way: the window stays where it is
        self._told_levels: set[int] = set()
        self.window: Window = tuple(slice(0, 0) for _ in store.shape)
        self.level = 0  # the pyramid level the window shows (0: full resolution)

        base = name or (image_layer.name if image_layer is not None else "labels")
        self._scale, self._translate = store_transform(
            store.pixel_size, *((image_layer.scale, image_layer.translate) if image_layer is not None else ()))
        units = units_of(image_layer, store.ndim)
        self.overview_layer = None
        self._overview: StoreOverview | None = None
        if store.ndim == 2 and not self.geom.fits_whole:  # a volume's window follows the slice slider instead
            self._overview = StoreOverview(store, self._window_or_none)
            self.overview_layer = self._overview.add_layer(
                viewer, f"{base} annotations (overview)", scale=self._scale, translate=self._translate,
                colormap=store_colormap(store.classes), opacity=0.8, **units)
        self.layer = viewer.add_labels(self._empty(), name=f"{base} annotations", scale=self._scale,
                                       translate=self._translate, colormap=store_colormap(store.classes),
                                       opacity=0.8, **units)
        self.layer.selected_label = 2 if store.classes.max_store_value >= 2 else 1
        self.layer.editable = store.writable
        self.layer.metadata["napari_medseg"] = {"label_store": str(store.path) if store.path else None,
                                                "classes": store.classes.to_dict(), "axes": store.axes}
        self.outlined = store.ndim == 2 and not self.geom.fits_whole and compat.show_outline(self.layer,
                                                                                             OUTLINE_COLOR)
        self.layer.mouse_drag_callbacks.insert(0, self._on_press)  # before napari's brush sees the click

        self._debounce = self._timer(int(flush_delay_s * 1000), self._on_timer)
        self._max_wait = self._timer(int(max_unsaved_s * 1000), self._on_timer)
        self._follow_timer = self._timer(FOLLOW_DELAY_MS, self._follow_in_background)
        self._writes = 0  # strokes' writes to the window so far (a prefetched window is used only if none came)
        self.prefetch = WindowPrefetch(self.edits, self._executor, self._prefetched.emit)
        self._prefetched.connect(self._on_prefetched)
        self.flushed.connect(self._after_flush)
        self._external.connect(self._apply_external)
        store.add_listener(self._on_store_change)
        self._camera.events.center.connect(self._on_camera)
        self._camera.events.zoom.connect(self._on_camera)
        viewer.dims.events.current_step.connect(self._on_camera)
        self.move_window(self.window_for_view(), flush=False)

    def _timer(self, ms: int, slot: Callable[[], None]) -> QTimer:
        t = QTimer(self)
        t.setSingleShot(True)
        t.setInterval(ms)
        t.timeout.connect(slot)
        return t

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def max_window(self) -> int:
        return self.geom.max_window

    @property
    def factor(self) -> tuple[int, ...]:
        """Store pixels per layer pixel, per axis (1 at full resolution)."""
        return self.geom.factors[self.level]

    def _window_or_none(self) -> Window | None:
        return self.window if any(w.stop > w.start for w in self.window) else None

    def _empty(self) -> TrackedLabels:
        return np.zeros((1,) * self.store.ndim, np.uint8).view(TrackedLabels)

    def _to_store(self, world: Sequence[float]) -> list[float]:
        """Store pixel coordinates (level 0) of a world position (the store's axes, last of ``world``)."""
        nd = self.store.ndim
        return [(w - t) / s for w, t, s in zip(list(world)[-nd:], self._translate, self._scale)]

    def view_box(self) -> tuple[list[float], list[float]]:
        """The visible part of the store in store pixels (``lo``, ``hi`` per axis, not clipped)."""
        h, w = compat.canvas_size(self.viewer)
        zoom = max(float(self._camera.zoom), 1e-9)
        center = list(self._camera.center)[-2:]
        half = [h / zoom / 2, w / zoom / 2]
        lo = [(c - hh - t) / s for c, hh, t, s in zip(center, half, self._translate[-2:], self._scale[-2:])]
        hi = [(c + hh - t) / s for c, hh, t, s in zip(center, half, self._translate[-2:], self._scale[-2:])]
        if self.store.ndim == 3:
            z = (float(self.viewer.dims.point[-3]) - self._translate[0]) / self._scale[0]
            lo, hi = [z, *lo], [z + 1, *hi]
        return lo, hi

    def level_for_view(self) -> int:
        """The finest pyramid level whose window covers the current view."""
        return self.geom.level_for_view(*self.view_box())[0]

    def window_for_view(self, center: Sequence[float] | None = None, level: int | None = None) -> Window:
        """A window (store pixels) over the view at the finest level that covers it (or at ``level``),
        centred on the view or on ``center`` (store pixels); the whole store when it fits. At full
        resolution that is up to ``max_window`` pixels per in-plane axis (a slab of slices for a volume too
        big to show whole); at level ``k`` up to ``max_window`` cells of ``F x F`` pixels."""
        lo, hi = self.view_box()
        if level is None:
            level = self.geom.level_for_view(lo, hi)[0]
        if center is None:
            center = [(a + b) / 2 for a, b in zip(lo, hi)]
        return self.geom.window_for(center, level)

    # -- window -------------------------------------------------------------------------------------
    def _on_camera(self, event: Any = None) -> None:
        if self.follow and not self._closed:
            self._follow_timer.start()
        self._show_overview_if_needed()

    def _show_overview_if_needed(self) -> None:
        """The overview is shown only while the view reaches beyond the window (``store_overview``)."""
        if self._overview is not None and not self._closed:
            self._overview.show(self.geom.beyond(self.window, *self.view_box()))

    def follow_view(self, background: bool = False) -> None:
        """Put the window over the view at the finest level that covers it, if it is not there yet;
        ``background``: read the new window in the writer thread and move when it is read
        (``window_prefetch``), the synchronous way when that cannot be done safely."""
        if self._closed or self.geom.fits_whole:
            return
        if self._stroke:  # never under the brush: look again after the stroke
            self._follow_timer.start()
            return
        lo, hi = self.view_box()
        level, fits = self.geom.level_for_view(lo, hi)
        lo_c = [max(0.0, v) for v in lo]
        hi_c = [min(float(s), v) for s, v in zip(self.store.shape, hi)]
        inside = all(w.start <= a and b <= w.stop for w, a, b in zip(self.window, lo_c, hi_c))
        mid = [(a + b) / 2 for a, b in zip(lo_c, hi_c)]
        center_in = all(w.start <= m < w.stop for w, m in zip(self.window, mid))
        if level != self.level or (not inside and (fits or not center_in)):
            target = self.geom.window_for(mid, level)
            if background and (self.prefetch.current is not None and self.prefetch.current.window == target
                               and self.prefetch.current.level == level):
                return  # already being read
            busy = any(not f.done() for f in self._pending)
            if not (background and self.prefetch.request(target, level, self.layer.data, self._writes, busy)):
                self.move_window(target, level=level)

    def _follow_in_background(self) -> None:
        self.follow_view(background=True)

    def _on_prefetched(self, req: Request) -> None:
        if self._closed or req is not self.prefetch.current:
            return
        data = self.prefetch.take(req, self.layer.data, self._writes, self._stroke)
        if data is not None:
            self.move_window(req.window, level=req.level, flush=False, data=data, baseline=req.baseline)
        elif self._stroke:
            self._follow_timer.start()  # after the stroke
        else:
            self.follow_view()  # the synchronous way: save, then read

    def move_window(self, window: Window, *, level: int | None = None, flush: bool = True,
                    force: bool = False, data: np.ndarray | None = None,
                    baseline: np.ndarray | None = None) -> bool:
        """Show ``window`` (store pixels) at pyramid ``level`` (default: the view's if it fits). Edits of
        the old window are saved first; if some cannot be (labels beyond the class schema) the window stays
        and the user is told. ``data``: the window as already read, ``baseline`` its copy
        (``window_prefetch``). Returns True if moved."""
        self.prefetch.cancel()
        window = tuple(slice(int(w.start), int(w.stop)) for w in window)
        if level is None:  # the view's level if the window can be shown at it (e.g. "Paint here")
            level = self.geom.level_of(window, prefer=self.level_for_view() if self.store.ndim == 2 else 0)
        level = int(level)
        if window == self.window and level == self.level and not force:
            return False
        if flush and any(w.stop > w.start for w in self.window):
            self.flush(wait=True, full=True)
            if self.edits.dirty:
                self._notify("The window was not moved: it holds labels that cannot be saved yet (see the "
                             "previous message). Fix them first.")
                return False
        t0 = time.perf_counter()
        data = self.edits.load(window, level, data, baseline).view(TrackedLabels)
        data.on_write = self._on_write
        old = self.layer.data
        if isinstance(old, TrackedLabels):
            old.on_write = None
        self.window, self.level = window, level
        scale, translate = self.geom.layer_transform(window, level, self._scale, self._translate)
        if tuple(self.layer.scale) != scale:
            self.layer.scale = scale
        self.layer.translate = translate
        self.layer.data = data
        self.layer.editable = self.store.writable  # setting data makes a Labels layer editable again
        compat.reset_undo_history(self.layer)  # undo history refers to the old window's pixels
        self._refresh_overview()
        self._show_overview_if_needed()
        log.debug("window moved to %s at level %d in %.3f s", window, level, time.perf_counter() - t0)
        self.window_moved.emit(window)
        return True

    def show_region(self, region: tuple[slice, ...], *, zoom: bool = True) -> None:
        """Center the camera on ``region`` (store pixels), zoom to it, and put the window there."""
        mid = [(r.start + r.stop) / 2 for r in region]
        world = [t + m * s for t, m, s in zip(self._translate, mid, self._scale)]
        if self.store.ndim == 3:
            step = list(self.viewer.dims.point)
            step[-3] = world[0]
            self.viewer.dims.point = step
        self._camera.center = tuple(world[-2:])
        if zoom:
            h, w = compat.canvas_size(self.viewer)
            ext = [max(r.stop - r.start, 64) * s for r, s in zip(region[-2:], self._scale[-2:])]
            cap = [(n - a) * 0.8 * s for n, a, s in zip(self.geom.cap(0)[-2:], self.geom.align(0)[-2:],
                                                        self._scale[-2:])]  # a view at full resolution
            ext = [min(e, c) for e, c in zip(ext, cap)]
            self._camera.zoom = 0.8 * min(h / ext[0], w / ext[1])
        self._follow_timer.stop()
        level = self.level_for_view()
        self.move_window(self.window_for_view(center=mid, level=level), level=level)

    # -- strokes ------------------------------------------------------------------------------------
    def _on_press(self, layer: Any, event: Any) -> Any:
        """The first mouse drag callback of the window layer: before napari's brush sees a click, make sure
        the window is at the view's resolution and under the click (moving it there if not)."""
        if self._closed or str(layer.mode) not in PAINT_MODES or len(getattr(event, "dims_displayed", ())) != 2:
            return  # 3D views paint on a ray: napari finds the pixel, the window holds the whole volume or slab
        if self._follow_timer.isActive() or self.prefetch.current is not None:  # the view just changed:
            self._follow_timer.stop()  # follow it before the stroke, the synchronous way
            self.prefetch.cancel()
            self.follow_view()
        if not self._under(event.position):
            self._move_to(event.position)
        if self.level and self.level not in self._told_levels and self._under(event.position):
            self._told_levels.add(self.level)
            fy, fx = self.factor[-2:]
            self._inform(f"Zoomed out: painting at 1/{max(fy, fx)} resolution. Each pixel you paint fills "
                         f"{fy} x {fx} pixels of the slide's labels; zoom in to paint details.")
        self._stroke = True
        try:
            yield
            while event.type == "mouse_move":
                yield
        finally:  # released, or napari dropped the stroke
            self._stroke = False

    def _under(self, world: Sequence[float]) -> bool:
        """Is the world position ``world`` on a pixel of the window?"""
        p = self._to_store(world)
        return all(w.start <= v < w.stop for w, v in zip(self.window, np.floor(np.add(p, 0.5))))

    def _move_to(self, world: Sequence[float]) -> None:
        """Move the window so that the stroke starting at ``world`` lands in it; say so if it cannot."""
        p = self._to_store(world)
        if not all(0 <= v < s for v, s in zip(np.floor(np.add(p, 0.5)), self.store.shape)):
            return  # off the slide: nothing to paint there
        level = self.level_for_view()
        self._follow_timer.stop()
        if not self.move_window(self.geom.window_for(p, level), level=level) and not self._under(world):
            self._notify("Nothing was painted there: the editable window (outlined) could not move to this "
                         "spot. " + ("The labels are read-only." if not self.store.writable else
                                     "See the previous message."))

    # -- edits and autosave -------------------------------------------------------------------------
    def _on_write(self, key: Any) -> None:
        self._writes += 1
        box = touched_box(key, self.layer.data.shape)
        if box is None:
            return
        self.edits.mark(box)
        self._debounce.start()
        if not self._max_wait.isActive():
            self._max_wait.start()

    def _on_timer(self) -> None:
        self.flush()

    def flush(self, wait: bool = False, full: bool = False) -> None:
        """Save dirty chunks (in the background unless ``wait``). ``full`` also compares the whole window
        with the store first."""
        self._debounce.stop()
        self._max_wait.stop()
        if self._closed or not self.store.writable:
            return
        if full:
            self.edits.full_diff(np.asarray(self.layer.data))
        if self.edits.dirty:
            top = self.store.classes.max_store_value
            job, bad_vals = self.edits.take(np.asarray(self.layer.data), top)
            if bad_vals and frozenset(bad_vals) != self._invalid_warned:
                self._invalid_warned = frozenset(bad_vals)
                self._notify(f"Label value(s) {sorted(bad_vals)} are not classes (the schema has "
                             f"{len(self.store.classes.names)} classes, store values 1..{top}): add classes in the "
                             "Annotate widget or repaint them. They stay in the window, unsaved, until then.")
            if job is not None:
                self._pending.append(self._executor.submit(self._write_job, job))
        self._pending = [f for f in self._pending if not f.done()]
        if wait:
            for f in list(self._pending):
                f.result()
            self._pending = []

    def _write_job(self, job: WriteJob) -> None:
        """Runs in the writer thread: the only place the controller writes the store."""
        t0 = time.perf_counter()
        try:
            changed = job.run(self.store, origin=self)
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

    def _on_store_change(self, chunks: list[Chunk], origin: Any) -> None:
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
        if self.edits.apply_external(chunks, np.asarray(self.layer.data)):  # a plain view: not edits
            self.layer.refresh()
        self._refresh_overview()

    def _after_flush(self, info: Any) -> None:
        if self.overview_layer is not None and not self._closed and self.overview_layer.visible \
                and self.geom.beyond(self.window, *self.view_box()):
            self._refresh_overview()

    def _refresh_overview(self) -> None:
        """Re-read the overview, its coarsest level included (refilled in place: see ``store_overview``)."""
        if self._overview is not None:
            self._overview.refresh()

    @property
    def unsaved(self) -> bool:
        return bool(self.edits.dirty) or any(not f.done() for f in self._pending)

    # -- classes / lifecycle ------------------------------------------------------------------------
    def set_classes(self, classes: ClassSchema) -> None:
        """Apply a new class schema to the store and the layers' colors."""
        self.flush(wait=True, full=True)
        set_classes(self.store, classes)
        self.update_colors()
        if self.edits.dirty:
            self.flush(wait=True)

    def update_colors(self) -> None:
        cmap = store_colormap(self.store.classes)
        self.layer.colormap = cmap
        self.layer.metadata.setdefault("napari_medseg", {})["classes"] = self.store.classes.to_dict()
        if self.overview_layer is not None:
            self.overview_layer.colormap = store_colormap(self.store.classes)

    def reload(self) -> None:
        """Re-read the window from the store (after an operation changed the store underneath)."""
        self.move_window(self.window, level=self.level, flush=False, force=True)

    def close(self, remove_layers: bool = False) -> None:
        """Save everything and stop following the camera. The store stays open (its owner closes it)."""
        if self._closed:
            return
        try:
            self.flush(wait=True, full=True)
            if self.edits.dirty:  # values beyond the schema: extend it rather than lose them
                names = extend_classes(self.store, int(np.asarray(self.layer.data).max()))
                log.warning("classes are now %s so that painted labels are not lost", names)
                self.flush(wait=True)
        finally:
            self._closed = True
            self.prefetch.cancel()
            for t in (self._debounce, self._max_wait, self._follow_timer):
                t.stop()
            for em, cb in ((self._camera.events.center, self._on_camera),
                           (self._camera.events.zoom, self._on_camera),
                           (self.viewer.dims.events.current_step, self._on_camera)):
                with contextlib.suppress(Exception):
                    em.disconnect(cb)
            with contextlib.suppress(ValueError):
                self.layer.mouse_drag_callbacks.remove(self._on_press)
            if self._overview is not None:
                self._overview.close()
            self._executor.shutdown(wait=True)
            self.store.remove_listener(self._on_store_change)
            if isinstance(self.layer.data, TrackedLabels):
                self.layer.data.on_write = None
            if remove_layers:
                for lyr in (self.layer, self.overview_layer):
                    if lyr is not None and lyr in self.viewer.layers:
                        self.viewer.layers.remove(lyr)
