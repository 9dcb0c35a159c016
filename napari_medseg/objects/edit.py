"""Proofreading objects: merge, split by a drawn line, delete, change the class, undo (pure numpy).

Each operation edits an ``Objects`` (instance labels + class of each id) in place, reading and writing only
the bounding box of the objects it touches: a whole-slide label array is never copied or scanned again.
The boxes come from ``boxes`` (id -> tuple of slices, e.g. an ``Editor``'s cache) when given; otherwise they
are found once with ``scipy.ndimage.find_objects`` (one pass over the array, no copy).

Every operation returns an ``Edit``: what it changed (the box and its labels before, the class array
before, the ids changed, added and removed, and the boxes of those ids after), which ``undo`` puts back.
Ids are never renumbered (that would rewrite the whole array): a removed id keeps its slot in
``objects.classes`` with class 0 (no object); new ids (the parts of a split) are appended.

``Editor`` bundles an ``Objects``, its box cache and an undo history (the last ``keep`` edits):
``editor.merge([3, 4])``, ``editor.split_by_line(5, [[10, 0], [10, 40]])``, ``editor.delete([7])``,
``editor.relabel([2], class_value=1)``, ``editor.undo()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.errors import MedsegError
from napari_medseg.objects.instances import Objects

Box = tuple[slice, ...]


@dataclass
class Edit:
    """What one operation changed (see module). ``target`` is the merged id (merge) or the id that kept
    the largest part (split); ``boxes`` holds the box of each changed or added id after the edit (None for
    a removed id), ``boxes_before`` the boxes of the same ids before."""

    kind: str
    box: Box | None  # region whose labels changed (None: only classes changed)
    before: np.ndarray | None  # labels in ``box`` before the edit
    classes_before: np.ndarray
    changed: tuple[int, ...] = ()
    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    target: int = 0
    boxes: dict[int, Box | None] = field(default_factory=dict)
    boxes_before: dict[int, Box | None] = field(default_factory=dict)

    @property
    def ids(self) -> tuple[int, ...]:
        """Every id whose pixels or class changed (to re-measure or drop from a table)."""
        return tuple(sorted({*self.changed, *self.added, *self.removed}))


# -- boxes ----------------------------------------------------------------------------------------------
def object_boxes(labels: np.ndarray) -> dict[int, Box]:
    """id -> bounding box (slices) of every object in ``labels`` (one pass, ``ndimage.find_objects``)."""
    arr = np.asarray(labels)
    return {i + 1: sl for i, sl in enumerate(ndi.find_objects(arr)) if sl is not None}


def _union(boxes: Iterable[Box]) -> Box:
    boxes = list(boxes)
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0])))


def _grow(box: Box, by: int, shape: Sequence[int]) -> Box:
    return tuple(slice(max(0, s.start - by), min(n, s.stop + by)) for s, n in zip(box, shape))


def _check_ids(objects: Objects, ids: Iterable[int], what: str) -> list[int]:
    out = []
    for i in ids:
        try:
            k = int(i)
        except (TypeError, ValueError):
            raise MedsegError(f"object ids are whole numbers, got {i!r}") from None
        if k < 1 or k > objects.n or objects.classes[k] == 0:
            raise MedsegError(f"there is no object {k} to {what} (ids 1..{objects.n}; removed ids are gone)")
        if k not in out:
            out.append(k)
    if not out:
        raise MedsegError(f"choose the objects to {what} (select rows in the table or type their ids)")
    return out


def _boxes_of(objects: Objects, ids: Sequence[int], boxes: Mapping[int, Box] | None) -> dict[int, Box]:
    found = {i: boxes[i] for i in ids if boxes is not None and boxes.get(i) is not None}
    missing = [i for i in ids if i not in found]
    if missing:
        arr = np.asarray(objects.labels)
        sl = ndi.find_objects(arr, max_label=max(missing))
        for i in missing:
            if sl[i - 1] is None:
                raise MedsegError(f"object {i} has no pixels (it was removed or emptied)")
            found[i] = sl[i - 1]
    return found


def _sub_boxes(sub: np.ndarray, box: Box, ids: Iterable[int]) -> dict[int, Box | None]:
    """Boxes (in full-array coordinates) of ``ids`` found inside ``sub`` = labels[box]."""
    ids = list(ids)
    out: dict[int, Box | None] = dict.fromkeys(ids)
    if not ids:
        return out
    sl = ndi.find_objects(sub, max_label=max(ids))
    for i in ids:
        s = sl[i - 1]
        if s is not None:
            out[i] = tuple(slice(a.start + b.start, a.stop + b.start) for a, b in zip(s, box))
    return out


def _write(objects: Objects, box: Box, sub: np.ndarray) -> None:
    objects.labels[box] = sub  # numpy writes through its view; zarr-like arrays get the block written back


# -- operations -----------------------------------------------------------------------------------------
def merge(objects: Objects, ids: Iterable[int], *, boxes: Mapping[int, Box] | None = None,
          close_gaps: bool = True) -> Edit:
    """Merge ``ids`` (two or more) into one object: the smallest id, with the class of the largest part.
    With ``close_gaps`` the background pixels that lie between the parts (a morphological closing of the
    merged mask by one pixel, unlabelled pixels only) join it, so a boundary line between two halves of an
    over-split object disappears. ``edit.target`` is the merged id."""
    ids = _check_ids(objects, ids, "merge")
    if len(ids) < 2:
        raise MedsegError("merging needs at least two objects: select two or more rows, or type two ids")
    bxs = _boxes_of(objects, ids, boxes)
    box = _grow(_union(bxs.values()), 1 if close_gaps else 0, objects.labels.shape)
    sub = np.array(objects.labels[box])
    before = sub.copy()
    classes_before = objects.classes.copy()
    mask = np.isin(sub, ids)
    sizes = {i: int(np.count_nonzero(sub == i)) for i in ids}
    target = min(ids)
    cls = objects.classes[max(ids, key=lambda i: (sizes[i], -i))]
    sub[mask] = target
    if close_gaps:
        closed = ndi.binary_closing(mask, structure=ndi.generate_binary_structure(sub.ndim, sub.ndim))
        sub[closed & (sub == 0)] = target
    _write(objects, box, sub)
    objects.classes[target] = cls
    removed = tuple(i for i in ids if i != target)
    objects.classes[list(removed)] = 0
    after = _sub_boxes(sub, box, [target])
    after.update(dict.fromkeys(removed))
    return Edit("merge", box, before, classes_before, changed=(target,), removed=removed, target=target,
                boxes=after, boxes_before=dict(bxs))


def line_mask(line_points: np.ndarray, shape: Sequence[int], width: int = 1, *,
              slice_axis: int | None = None) -> np.ndarray:
    """The pixels under a polyline (``N x ndim`` coordinates, in pixels of an array of ``shape``), ``width``
    pixels wide. In 3D a line drawn on a slice cuts through every slice: the slices are along
    ``slice_axis`` (default: the first axis on which all the points agree); a line with no such axis is
    drawn as a 3D line."""
    from skimage.draw import line_nd

    pts = np.asarray(line_points, float)
    nd = len(shape)
    if pts.ndim != 2 or pts.shape[1] != nd or len(pts) < 2:
        raise MedsegError(f"a cutting line needs at least two points with {nd} coordinates, got an array of "
                          f"shape {pts.shape}: draw a line or a path across the object")
    flat_axis = slice_axis
    if nd == 3 and flat_axis is None:
        const = [a for a in range(3) if np.ptp(pts[:, a]) < 0.5]
        flat_axis = const[0] if const else None
    if nd != 3:
        flat_axis = None
    draw_pts = pts if flat_axis is None else np.delete(pts, flat_axis, axis=1)
    plane = np.zeros(tuple(shape) if flat_axis is None else tuple(np.delete(np.asarray(shape), flat_axis)), bool)
    for a, b in zip(draw_pts[:-1], draw_pts[1:]):
        idx = line_nd(a, b, endpoint=True, integer=True)
        keep = np.all([(c >= 0) & (c < n) for c, n in zip(idx, plane.shape)], axis=0)
        plane[tuple(c[keep] for c in idx)] = True
    if width > 1:
        plane = ndi.binary_dilation(plane, structure=np.ones((3,) * plane.ndim, bool), iterations=(int(width) - 1) // 2)
    if flat_axis is None:
        return plane
    return np.broadcast_to(np.expand_dims(plane, flat_axis), tuple(shape))


def split_by_line(objects: Objects, obj_id: int, line_points: np.ndarray, width: int = 1, *,
                  boxes: Mapping[int, Box] | None = None, slice_axis: int | None = None) -> Edit:
    """Cut object ``obj_id`` along a polyline (``N x 2`` or ``N x 3`` pixel coordinates of the label
    array): its pixels under the line (``width`` px wide) are removed and each remaining connected part
    (face connectivity) becomes an object. The largest part keeps the id (``edit.target``), the others get
    new ids of the same class. A line that leaves the object in one piece raises ``MedsegError``. In 3D the
    line cuts every slice along ``slice_axis`` (see ``line_mask``)."""
    (obj_id,) = _check_ids(objects, [obj_id], "split")
    bx = _boxes_of(objects, [obj_id], boxes)[obj_id]
    box = bx
    sub = np.array(objects.labels[box])
    pts = np.asarray(line_points, float)
    if pts.ndim == 2 and pts.shape[1] == sub.ndim:
        pts = pts - np.asarray([s.start for s in box], float)
    cut = line_mask(pts, sub.shape, width, slice_axis=slice_axis)
    mask = sub == obj_id
    if not (cut & mask).any():
        raise MedsegError(f"the line does not cross object {obj_id}: draw it across the object, from outside "
                          "one side to outside the other")
    parts, n = ndi.label(mask & ~cut)
    if n < 2:
        raise MedsegError(f"the line does not cut object {obj_id} in two: draw it all the way across the "
                          "object, from outside one side to outside the other")
    before = sub.copy()
    classes_before = objects.classes.copy()
    sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes, kind="stable") + 1  # part numbers, largest first
    sub[mask] = 0
    sub[parts == order[0]] = obj_id
    first_new = objects.n + 1
    added = tuple(range(first_new, first_new + n - 1))
    for new_id, part in zip(added, order[1:]):
        sub[parts == part] = new_id
    objects.classes = np.concatenate([objects.classes, np.full(n - 1, objects.classes[obj_id], np.int32)])
    if objects.labels.dtype.kind == "u" and added[-1] > np.iinfo(objects.labels.dtype).max:
        objects.classes = classes_before
        raise MedsegError(f"object id {added[-1]} does not fit the label array's {objects.labels.dtype}")
    _write(objects, box, sub)
    return Edit("split", box, before, classes_before, changed=(obj_id,), added=added, target=obj_id,
                boxes=_sub_boxes(sub, box, [obj_id, *added]), boxes_before={obj_id: bx})


def delete(objects: Objects, ids: Iterable[int], *, boxes: Mapping[int, Box] | None = None) -> Edit:
    """Remove ``ids``: their pixels become 0 (no object), their class 0."""
    ids = _check_ids(objects, ids, "delete")
    bxs = _boxes_of(objects, ids, boxes)
    box = _union(bxs.values())
    sub = np.array(objects.labels[box])
    before = sub.copy()
    classes_before = objects.classes.copy()
    sub[np.isin(sub, ids)] = 0
    _write(objects, box, sub)
    objects.classes[ids] = 0
    return Edit("delete", box, before, classes_before, removed=tuple(ids), boxes=dict.fromkeys(ids),
                boxes_before=dict(bxs))


def relabel(objects: Objects, ids: Iterable[int], class_value: int) -> Edit:
    """Give ``ids`` the class ``class_value`` (a prediction value, 1..). Pixels do not change."""
    ids = _check_ids(objects, ids, "change the class of")
    if int(class_value) < 1:
        raise MedsegError(f"an object's class is a class value of 1 or more, got {class_value}")
    classes_before = objects.classes.copy()
    objects.classes[ids] = int(class_value)
    return Edit("relabel", None, None, classes_before, changed=tuple(ids))


def undo(objects: Objects, edit: Edit) -> None:
    """Put back what ``edit`` changed (the labels in its box and the classes): the last edit first."""
    if edit.box is not None and edit.before is not None:
        _write(objects, edit.box, edit.before)
    objects.classes = edit.classes_before.copy()


# -- an editor with a box cache and an undo history ----------------------------------------------------
class Editor:
    """An ``Objects`` under proofreading: its boxes (found once, kept up to date by each edit) and the
    last ``keep`` edits for ``undo``."""

    def __init__(self, objects: Objects, *, keep: int = 50, boxes: MutableMapping[int, Box] | None = None) -> None:
        self.objects = objects
        self.keep = int(keep)
        self.history: list[Edit] = []
        self._boxes: MutableMapping[int, Box] | None = boxes

    @property
    def boxes(self) -> MutableMapping[int, Box]:
        if self._boxes is None:
            self._boxes = object_boxes(self.objects.labels)
        return self._boxes

    def box(self, obj_id: int) -> Box | None:
        return self.boxes.get(int(obj_id))

    def _done(self, edit: Edit) -> Edit:
        self._set_boxes(edit.boxes)
        self.history = [*self.history, edit][-self.keep:] if self.keep > 0 else []
        return edit

    def _set_boxes(self, boxes: Mapping[int, Box | None]) -> None:
        for i, b in boxes.items():
            if b is None:
                self.boxes.pop(i, None)
            else:
                self.boxes[i] = b

    def merge(self, ids: Iterable[int], **kwargs: bool) -> Edit:
        return self._done(merge(self.objects, ids, boxes=self.boxes, **kwargs))

    def split_by_line(self, obj_id: int, line_points: np.ndarray, width: int = 1, *,
                      slice_axis: int | None = None) -> Edit:
        return self._done(split_by_line(self.objects, obj_id, line_points, width, boxes=self.boxes,
                                        slice_axis=slice_axis))

    def delete(self, ids: Iterable[int]) -> Edit:
        return self._done(delete(self.objects, ids, boxes=self.boxes))

    def relabel(self, ids: Iterable[int], class_value: int) -> Edit:
        return self._done(relabel(self.objects, ids, class_value))

    def undo(self) -> Edit | None:
        """Undo the last edit; returns it (None when there is nothing to undo)."""
        if not self.history:
            return None
        edit = self.history.pop()
        undo(self.objects, edit)
        for i in edit.added:
            self.boxes.pop(i, None)
        self._set_boxes(edit.boxes_before)
        return edit
