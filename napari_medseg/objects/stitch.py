"""The two decisions behind the block-wise objects of ``objects.tiled``, as pure numpy functions.

``keep_in_core`` says which objects found in a block's window the block keeps: those whose centroid lies in
the block's core (exact integer test: sum of coordinates against core bounds times pixel count, so the
same object seen from two windows is owned by one core only) and that stay ``margin`` pixels clear of the
window's inner sides (the slide's own border does not count).

``cut_objects`` finds what no block kept: the object-class pixels of the prediction that no written object
covers, joined into components across block faces with a union-find over per-block connected components
(face connectivity, per class, as ``find_objects``' seeds). Components of at least ``min_size`` pixels are
objects larger than the halo. Memory: one block and the faces shared with the blocks still to come.

``cut_object`` then finds one such component's object as ``find_objects`` does on the whole array: on the
component's bounding box grown by twice ``grow`` (its seed is the whole component; the boundary pixels it grows
into compete with the neighbouring seeds inside that box), when the box holds at most ``JOIN_MAX_PIXELS``.

``measure_kwargs``, ``write_part`` and ``join_parts``: the per-block parts of the object table and their
join into one CSV.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.errors import MedsegError


def keep_in_core(labels: np.ndarray, win: Sequence[slice], core: Sequence[slice], shape: Sequence[int],
                 margin: int) -> tuple[np.ndarray, bool]:
    """Ids of ``labels`` (objects of the window ``win``, 1..n) kept by the block ``core`` (both in slide
    pixels), sorted, and whether some incomplete object reaches into the core (an object possibly larger
    than the halo)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0, np.int64), False
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    ids = flat[nz].astype(np.int64)
    count = np.bincount(ids, minlength=n + 1).astype(np.int64)
    coords = np.unravel_index(nz, labels.shape)
    owned = count > 0
    for ax, (w, c) in enumerate(zip(win, core)):
        s = np.rint(np.bincount(ids, weights=coords[ax], minlength=n + 1)).astype(np.int64) + w.start * count
        owned &= (s >= c.start * count) & (s < c.stop * count)
    complete = np.ones(n + 1, bool)
    reaches_core = np.zeros(n + 1, bool)
    for i, bb in enumerate(ndi.find_objects(labels), start=1):
        if bb is None:
            complete[i] = False
            continue
        inside = hits = True
        for ax, (b, w, c) in enumerate(zip(bb, win, core)):
            size = w.stop - w.start
            if (b.start < margin and w.start > 0) or (b.stop > size - margin and w.stop < shape[ax]):
                inside = False
            if b.stop + w.start <= c.start or b.start + w.start >= c.stop:
                hits = False
        complete[i] = inside
        reaches_core[i] = hits and not inside
    complete[0] = owned[0] = False
    return np.flatnonzero(owned & complete), bool(reaches_core.any())


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = [0]

    def add(self, k: int) -> None:
        self.parent.extend(range(len(self.parent), len(self.parent) + k))

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the smaller (earlier) piece stays the root


def cut_objects(pred: Any, out: Any, cores: Sequence[tuple[slice, ...]], block: Sequence[int],
                object_values: Sequence[int], min_size: int, n_written: int) -> list[tuple[int, list[int]]]:
    """Objects no block wrote: ``(class value, [starts..., stops...])`` per component of uncovered object-class
    pixels with at least ``min_size`` pixels, in raster order of their first block. ``cores`` are the blocks
    to scan (raster order; blocks left out hold no object pixel); ``out`` the written objects (ids
    1..``n_written``; a larger id counts as uncovered)."""
    nd = len(block)
    uf = _UnionFind()
    piece_class: list[int] = [0]
    piece_size: list[int] = [0]
    piece_lo: list[list[int]] = [[0] * nd]
    piece_hi: list[list[int]] = [[0] * nd]
    faces: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
    for core in cores:
        idx = tuple(c.start // b for c, b in zip(core, block))
        p = np.asarray(pred[core])
        o = np.asarray(out[core])
        left = np.isin(p, object_values) & ((o == 0) | (o > n_written))
        if not left.any():
            continue
        lab = np.zeros(p.shape, np.int64)
        for v in object_values:
            comp, k = ndi.label(left & (p == v))
            if not k:
                continue
            first = len(piece_class)
            lab[comp > 0] = comp[comp > 0] + (first - 1)
            uf.add(k)
            piece_class.extend([int(v)] * k)
            piece_size.extend(np.bincount(comp.ravel(), minlength=k + 1)[1:].tolist())
            for bb in ndi.find_objects(comp):
                piece_lo.append([s.start + c.start for s, c in zip(bb, core)])
                piece_hi.append([s.stop + c.start for s, c in zip(bb, core)])
        for ax in range(nd):
            prev = idx[:ax] + (idx[ax] - 1,) + idx[ax + 1:]
            face = faces.pop((ax, prev), None)
            if face is not None:
                mine = np.take(lab, 0, axis=ax)
                both = (face > 0) & (mine > 0)
                if both.any():
                    pairs = np.unique(np.stack([face[both], mine[both]], 1), axis=0)
                    for a, b in pairs.tolist():
                        if piece_class[a] == piece_class[b]:
                            uf.union(a, b)
            last = np.take(lab, -1, axis=ax)
            if last.any():
                faces[(ax, idx)] = last
    comps: dict[int, list[Any]] = {}
    for piece in range(1, len(piece_class)):
        r = uf.find(piece)
        c = comps.setdefault(r, [piece_class[r], 0, list(piece_lo[piece]), list(piece_hi[piece])])
        c[1] += piece_size[piece]
        c[2] = [min(a, b) for a, b in zip(c[2], piece_lo[piece])]
        c[3] = [max(a, b) for a, b in zip(c[3], piece_hi[piece])]
    return [(c[0], c[2] + c[3]) for r, c in sorted(comps.items()) if c[1] >= max(1, min_size)]


#: a cut object whose grown box holds more pixels than this is reported, not written (about 14 bytes a pixel)
JOIN_MAX_PIXELS = 2**26


def cut_object(pred: Any, out0: Any, schema: Any, find: dict[str, int], value: int, bounds: Sequence[int],
               n_written: int) -> dict[str, Any] | None:
    """The object of the cut component of class ``value`` with ``bounds`` (``[starts..., stops...]``, from
    ``cut_objects``), as ``find_objects`` gives it on the whole array: ``{"local": uint32 (1 on its pixels),
    "box": slices of ``pred``, "classes": [class value]}``; None when its box is larger than ``JOIN_MAX_PIXELS``
    or no object is found there (e.g. a seed below ``min_seed``)."""
    from napari_medseg.objects.instances import find_objects

    nd = len(pred.shape)
    lo, hi = list(bounds[:nd]), list(bounds[nd:])
    pad = 2 * int(find.get("grow", 0)) + 2
    box = tuple(slice(max(0, a - pad), min(n, b + pad)) for a, b, n in zip(lo, hi, pred.shape))
    if math.prod(b.stop - b.start for b in box) > JOIN_MAX_PIXELS:
        return None
    p = np.asarray(pred[box])
    o = np.asarray(out0[box])
    free = (o == 0) | (o > n_written)
    inner = np.zeros(p.shape, bool)
    inner[tuple(slice(a - b.start, c - b.start) for a, c, b in zip(lo, hi, box))] = True
    objs = find_objects(p, schema, **find)
    hits = np.bincount(objs.labels[(p == value) & free & inner].ravel(), minlength=objs.n + 1)
    hits[0] = 0
    if not hits.any():
        return None
    k = int(hits.argmax())  # the component is one seed of find_objects: the object that holds it
    return {"local": ((objs.labels == k) & free).astype(np.uint32), "box": box, "classes": [int(objs.classes[k])]}


def measure_kwargs(manifest: dict[str, Any], nd: int) -> dict[str, Any]:
    """Pixel size and unit of the measurements: the prediction's (pixels when its unit is unknown)."""
    from napari_medseg.objects.tables import normalize_unit

    lay = manifest.get("layout") or {}
    try:
        unit = normalize_unit(str(lay.get("unit") or "px"))[0]
    except MedsegError:
        unit = "px"
    px = [float(x) for x in (lay.get("pixel_size") or [1.0] * nd)][-nd:]
    return {"pixel_size": px if unit != "px" else [1.0] * nd, "unit": unit}


def write_part(path: Path, df: Any, offset: int) -> None:
    """A block's table, its ids shifted by ``offset`` (the block's first id - 1), written atomically."""
    from napari_medseg.core.files import atomic_write

    df = df.copy()
    df["id"] = df["id"].astype(np.int64) + offset
    atomic_write(path, lambda f: f.write(df.to_csv(index=False).encode()))


def join_parts(folder: Path, keys: list[str], target: Path) -> None:
    """The per-block tables, in raster block order, as one CSV (streamed: one part in memory at a time)."""
    from napari_medseg.core.files import atomic_write

    def write(f: Any) -> None:
        header = False
        for key in keys:
            part = folder / f"{key}.csv"
            if not part.is_file():
                continue
            with open(part, "rb") as src:
                first = src.readline()
                if not header:
                    f.write(first)
                    header = True
                shutil.copyfileobj(src, f)

    atomic_write(target, write)
