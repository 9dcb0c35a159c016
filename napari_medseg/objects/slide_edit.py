"""Proofreading the objects of a whole slide, one window at a time (no Qt).

The whole-slide objects (``objects.tiled``: ``NAME.prediction.zarr/labels/objects``, ``objects.csv``) are too
large to hold, so they are edited through a window of level 0: ``open_window(prediction_zarr, box)`` reads the
window's instance ids (the slide's own ids) and the class of every id, and gives an ``Editor`` over them whose
new ids (the parts of a split) continue the slide's numbering. Objects that touch the window's edge (where the
window is not at the slide's own edge) continue outside it: they are *locked*, and an edit that would change one
is refused with a sentence (zoom out and edit again).

``save_window(window)`` writes the edits back: the window's pixels into level 0, the same region of every
coarser level (nearest neighbour, as ``ngff_write.build_pyramid`` made them: the first pixel of each window of
the level below), the class list and count in the attributes (``medseg_objects``) and the run file, and the
table ``objects.csv``: the rows of every changed id are measured again (the settings of the pass: pixel size,
unit, features), those of removed ids dropped, new ids appended. What changed is found by comparing the window
with what was read (pixels and classes), so undone edits write nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.edit import Editor, object_boxes
from napari_medseg.objects.instances import Objects

#: a window holds at most this many level-0 pixels (the Objects widget's in-memory limit)
WINDOW_MAX_PIXELS = 2**26


class LockedEditor(Editor):
    """An ``Editor`` that refuses edits of the ``locked`` ids (objects that continue outside the window)."""

    def __init__(self, objects: Objects, locked: Iterable[int], **kw: Any) -> None:
        super().__init__(objects, **kw)
        self.locked = frozenset(int(i) for i in locked)

    def _check(self, ids: Iterable[int]) -> None:
        hit = sorted(self.locked.intersection(int(i) for i in ids))
        if hit:
            raise MedsegError(f"object {hit[0]} continues outside the window being edited: zoom out (or pan) so that "
                              "it lies wholly in view, and edit again")

    def merge(self, ids: Iterable[int], **kwargs: bool) -> Any:
        ids = list(ids)
        self._check(ids)
        return super().merge(ids, **kwargs)

    def split_by_line(self, obj_id: int, line_points: np.ndarray, width: int = 1, *,
                      slice_axis: int | None = None) -> Any:
        self._check([obj_id])
        return super().split_by_line(obj_id, line_points, width, slice_axis=slice_axis)

    def delete(self, ids: Iterable[int]) -> Any:
        ids = list(ids)
        self._check(ids)
        return super().delete(ids)

    def relabel(self, ids: Iterable[int], class_value: int) -> Any:
        ids = list(ids)
        self._check(ids)
        return super().relabel(ids, class_value)


@dataclass
class SlideWindow:
    """A window of a whole slide's objects under proofreading (see module)."""

    path: Path
    box: tuple[slice, ...]  # level-0 pixels of the slide
    editor: LockedEditor
    original: np.ndarray  # the window's ids as read
    classes_before: np.ndarray  # the class of every id of the slide as read
    class_names: list[str]
    locked: frozenset[int] = field(default_factory=frozenset)
    table: Any = None  # the slide's object table as ``save_window`` last wrote it (None before)

    @property
    def objects(self) -> Objects:
        return self.editor.objects

    def changed_ids(self) -> tuple[list[int], list[int]]:
        """(ids whose pixels or class changed or that are new, ids no longer in the window)."""
        cur = self.objects.labels
        diff = cur != self.original
        ids = set(np.unique(self.original[diff]).tolist()) | set(np.unique(cur[diff]).tolist())
        cls = np.asarray(self.objects.classes)
        n0 = len(self.classes_before)
        ids |= set(np.flatnonzero(cls[:n0] != self.classes_before).tolist()) | set(range(n0, len(cls)))
        ids.discard(0)
        present = set(np.unique(cur).tolist())
        return sorted(ids), sorted(i for i in ids if i not in present)


def _group(path: Path) -> Any:
    import zarr

    try:
        return zarr.open_group(str(path), mode="r+")["labels/objects"]
    except (KeyError, FileNotFoundError) as e:
        raise MedsegError(f"{path} holds no objects; find them first (napari-medseg predict --instances-only)") from e


def _levels(group: Any) -> list[Any]:
    return [group[k] for k in sorted((k for k in group.array_keys() if k.isdigit()), key=int)]


def open_window(prediction_zarr: str | os.PathLike, box: Sequence[slice]) -> SlideWindow:
    """The objects of ``box`` (level-0 slices, clipped to the slide) under an ``Editor`` (see module)."""
    p = Path(prediction_zarr)
    group = _group(p)
    meta = dict(group.attrs).get("medseg_objects")
    if not meta:
        raise MedsegError(f"{p}: the objects are unfinished; run the objects pass again to finish them")
    lv0 = _levels(group)[0]
    shape = tuple(int(s) for s in lv0.shape)
    if len(box) != len(shape):
        raise MedsegError(f"a window of {len(shape)}D objects needs {len(shape)} slices, got {len(box)}")
    box = tuple(slice(max(0, int(b.start or 0)), min(n, int(b.stop if b.stop is not None else n)))
                for b, n in zip(box, shape))
    if any(b.stop <= b.start for b in box):
        raise MedsegError(f"the window {[(b.start, b.stop) for b in box]} lies outside the slide {shape}")
    if math.prod(b.stop - b.start for b in box) > WINDOW_MAX_PIXELS:
        raise MedsegError(f"the window holds {math.prod(b.stop - b.start for b in box):,} pixels, more than can be "
                          "edited at once; zoom in")
    labels = np.asarray(lv0[box]).astype(np.uint32, copy=False)
    classes = np.asarray(meta["classes"], np.int32)
    edges = []
    for ax, (b, n) in enumerate(zip(box, shape)):
        if b.start > 0:
            edges.append(np.take(labels, 0, axis=ax).ravel())
        if b.stop < n:
            edges.append(np.take(labels, -1, axis=ax).ravel())
    locked = frozenset(int(i) for i in np.unique(np.concatenate(edges)) if i) if edges else frozenset()
    objects = Objects(labels.copy(), classes.copy())
    editor = LockedEditor(objects, locked, boxes=object_boxes(objects.labels))
    return SlideWindow(p, box, editor, labels, classes, [str(n) for n in meta.get("class_names", [])], locked)


def _write_levels(levels: Sequence[Any], box: tuple[slice, ...], window: np.ndarray) -> None:
    """``window`` into level 0 at ``box``, and the nearest-neighbour pixels it feeds into every coarser level."""
    levels[0][box] = window
    f = [1] * window.ndim
    for src, dst in zip(levels[:-1], levels[1:]):
        f = [a * max(1, round(s / d)) for a, s, d in zip(f, src.shape, dst.shape)]
        # the level's pixels i with i * f in the box read level-0 pixel i * f, which the window holds
        region = tuple(slice(-(-b.start // k), -(-b.stop // k)) for b, k in zip(box, f))
        if any(r.stop <= r.start for r in region):
            continue
        pick = tuple(slice(r.start * k - b.start, (r.stop - 1) * k - b.start + 1, k)
                     for r, b, k in zip(region, box, f))
        dst[region] = window[pick]


def save_window(win: SlideWindow) -> dict[str, int]:
    """Write the window's edits into the slide (see module); returns counts: changed, removed, added ids."""
    import pandas as pd

    from napari_medseg.core.files import atomic_write, write_json_atomic
    from napari_medseg.objects.measure import measure_objects
    from napari_medseg.objects.stitch import measure_kwargs
    from napari_medseg.objects.tiled import PREDICTION_MANIFEST, RUN_FILE, TABLE

    changed, removed = win.changed_ids()
    if not changed:
        return {"changed": 0, "removed": 0, "added": 0}
    group = _group(win.path)
    levels = _levels(group)
    cur = win.objects.labels
    _write_levels(levels, win.box, cur)
    classes = np.asarray(win.objects.classes, np.int64)
    n0 = len(win.classes_before) - 1
    added = [i for i in changed if i > n0 and i not in removed]
    meta = dict(group.attrs)["medseg_objects"]
    meta.update(classes=classes.tolist(), n=int(len(classes) - 1))
    group.attrs.update({"medseg_objects": meta})
    run_file = win.path / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.is_file() else None
    if run is not None:
        res = run.get("result") or {}
        names = list(meta.get("class_names", []))
        alive = np.zeros(len(classes), bool)
        alive[1:] = True
        # ids removed here stay in the class list (ids are never reused); the count is of the ids still present
        gone = set(removed) | set(res.get("removed_ids", []))
        alive[[i for i in gone if i < len(alive)]] = False
        res["per_class"] = {names[v]: int(((classes == v) & alive).sum()) for v in sorted(set(classes[1:].tolist()))
                            if 0 < v < len(names)}
        res["n"] = int(alive.sum())
        res["removed_ids"] = sorted(gone)
        res["n_edited"] = int(res.get("n_edited", 0)) + len(changed)
        run["result"] = res
        write_json_atomic(run_file, run, indent=1)
    table_path = win.path / TABLE
    if table_path.is_file():
        manifest = json.loads((win.path / PREDICTION_MANIFEST).read_text())
        settings = run.get("settings", {}) if run is not None else {}
        kw = dict(measure_kwargs(manifest, cur.ndim), shape=settings.get("features", "basic"))
        table = pd.read_csv(table_path)
        keep = table[~table["id"].isin(changed)]
        alive_ids = [i for i in changed if i not in removed]
        parts = [keep]
        if alive_ids:
            sub = np.where(np.isin(cur, alive_ids), cur, 0)
            parts.append(measure_objects(sub, classes, class_names=win.class_names or None,
                                         offset=[b.start for b in win.box], **kw))
        out = pd.concat([t for t in parts if len(t)] or [keep], ignore_index=True)
        out = out.sort_values("id", kind="stable").reset_index(drop=True)
        atomic_write(table_path, lambda fh: fh.write(out.to_csv(index=False).encode()))
        win.table = out
    win.original = cur.copy()
    win.classes_before = np.asarray(win.objects.classes).copy()
    return {"changed": len(changed), "removed": len(removed), "added": len(added)}
