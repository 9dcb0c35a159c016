"""Objects of a whole slide or volume, out of core: ``instances_from_prediction`` turns the semantic prediction
of ``NAME.prediction.zarr`` into an NGFF labels image ``labels/objects`` (uint32 ids, pyramid) beside it.

How the stitching works. Level 0 of the prediction is cut into blocks (the *cores*, raster order). Each block
reads its core grown by ``halo`` pixels on every side (the *window*, clipped to the slide) and runs
``find_objects`` on it. An object found in the window is kept by this block only when

- its centroid lies in the core (integer arithmetic, so exactly one core holds it), and
- it is complete: it stays ``margin`` pixels clear of every window side that is not the slide's own border
  (``margin`` = 1, or ``grow + 1`` with a boundary class: a boundary pixel that close to the edge could belong
  to a seed outside the window).

A kept object then has exactly the pixels ``find_objects`` gives it on the whole array, so objects are never
cut and never duplicated, provided ``halo`` >= the largest object's extent from its centroid + ``grow`` + 1
(rule of thumb: halo >= the largest object's diameter). Kept objects of different blocks are disjoint, so a
block writes its objects into the output by read-modify-write of their bounding box, in raster order, one
block at a time (``workers`` threads only compute windows ahead of the writer).

Ids: block ``b`` numbers its kept objects (in raster order of their first window pixel) from 1 + the number of
objects of the blocks before it; the per-block counts are in the journal, so a resumed run gives the same ids.

Objects larger than the halo are cut in every window that holds their centroid and would vanish: after the
blocks, a second pass (run only when some window saw an object reaching from the margin into its core) finds
the object-class pixels no kept object covers and joins them across block faces (union-find) into *cut
objects* (components of at least ``min_size`` pixels). Each is then found once more on its own bounding box
(``stitch.cut_object``: the same pixels ``find_objects`` gives it on the whole array) and written with the
next ids, after every block's objects (``joined`` in the result). Only one whose box exceeds
``stitch.JOIN_MAX_PIXELS`` (64 M pixels) is left out and reported (count per class, boxes) in the final event
and the run file; the attribute ``complete`` is then false. Rerun with a larger halo to get it.

Resumption: each finished block writes ``medseg/objects/journal/<key>.json`` (atomically, after its chunks);
a rerun with the same settings skips those blocks and redoes the others; the result is identical. Peak
memory: a few windows (``workers`` + 1). Blocks whose window holds no object-class pixel cost one read.

Per-object table (``table=True``): each block measures its kept objects (``objects.measure.measure_objects``:
centroids in level-0 pixels of the prediction and in its unit, size, shape) into
``medseg/objects/table/<key>.csv``; at the end they are joined, in block order, into ``NAME.prediction.zarr/
objects.csv`` (one row per id, ids as in the labels).

Output attributes (``labels/objects/.zattrs``): ``"medseg_objects": {"classes": [class value of each id,
index 0 = 0, n + 1 values], "class_names": [name of each class value], "n", "complete", "cut", "halo",
"block", "min_size"}``; the run file ``medseg/objects/run.json`` holds the same plus the status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.files import write_json_atomic
from napari_medseg.objects.instances import find_objects
from napari_medseg.objects.stitch import (
    cut_object,
    cut_objects,
    join_parts,
    keep_in_core,
    measure_kwargs,
    write_part,
)

log = logging.getLogger(__name__)

PREDICTION_FORMAT = "napari-medseg-prediction"
PREDICTION_MANIFEST = "medseg/run.json"
RUN_FILE = "medseg/objects/run.json"
JOURNAL = "medseg/objects/journal"
TABLE_PARTS = "medseg/objects/table"
TABLE = "objects.csv"
OBJECTS_FORMAT = "napari-medseg-objects"
LABELS = "objects"
DEFAULT_BLOCK = {2: 2048, 3: 128}
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


# ============================================================================================ events
@dataclass(frozen=True)
class InstancesEvent:
    """Base class of the events ``instances_from_prediction`` yields."""


@dataclass(frozen=True)
class InstancesStart(InstancesEvent):
    out: Path
    shape: tuple[int, ...]
    block: tuple[int, ...]
    halo: int
    total_blocks: int
    resumed_blocks: int


@dataclass(frozen=True)
class InstancesProgress(InstancesEvent):
    """Block ``done`` of ``total`` is written; ``objects`` kept so far (the resumed blocks' included)."""

    done: int
    total: int
    objects: int
    region: tuple[slice, ...]


@dataclass(frozen=True)
class InstancesDone(InstancesEvent):
    """The result (also the generator's return value). ``joined``: objects larger than the halo, joined across
    blocks and written; ``cut``: such objects too large to join, not written."""

    out: Path
    n: int
    per_class: dict[str, int]
    seconds: float
    cut: int
    complete: bool
    cut_boxes: list[list[int]] = field(default_factory=list)
    cut_per_class: dict[str, int] = field(default_factory=dict)
    blocks: int = 0
    resumed_blocks: int = 0
    joined: int = 0

    @property
    def message(self) -> str:
        if self.n == 0 and self.cut == 0:
            return f"{self.out}: no objects (the prediction holds no object of the classes counted)"
        per = ", ".join(f"{k}: {v}" for k, v in self.per_class.items())
        msg = f"{self.out}: {self.n} objects ({per}) in {self.seconds:.1f} s"
        if self.joined:
            msg += f" ({self.joined} larger than the halo, joined across blocks)"
        if self.cut:
            msg += (f"; {self.cut} object(s) too large to join were left out (first at {self.cut_boxes[0]}): "
                    "rerun with a larger --halo")
        return msg


# ============================================================================================ inputs
def read_prediction(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Level 0 of the semantic labels of a finished prediction and its manifest; clear errors otherwise."""
    import zarr

    p = Path(path)
    mf = p / PREDICTION_MANIFEST
    if not p.is_dir() or not mf.is_file():
        raise MedsegError(f"{p} is not a napari-medseg prediction (NAME.prediction.zarr written by "
                          "napari-medseg predict); predict the image first")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MedsegError(f"{p}: its run manifest {mf.name} is unreadable ({e}); predict again") from e
    if not isinstance(manifest, dict) or manifest.get("format") != PREDICTION_FORMAT:
        raise MedsegError(f"{p} is not a napari-medseg prediction; predict the image first")
    if manifest.get("status") != "complete":
        raise MedsegError(f"{p}: the prediction is unfinished (status {manifest.get('status')!r}); rerun the same "
                          "predict command to finish it, then find the objects")
    try:
        arr = zarr.open_group(str(p), mode="r")["labels/prediction/0"]
    except (KeyError, FileNotFoundError) as e:
        raise MedsegError(f"{p}: labels/prediction/0 is missing; the prediction is damaged, predict again") from e
    if arr.ndim not in (2, 3):
        raise MedsegError(f"{p}: objects are found in 2D or 3D predictions, got shape {arr.shape}")
    return arr, manifest


def _schema(manifest: dict[str, Any], schema: ClassSchema | None, path: Path) -> ClassSchema:
    if schema is None:
        try:
            schema = ClassSchema.from_dict(manifest.get("classes") or {})
        except MedsegError as e:
            raise MedsegError(f"{path}: the classes stored with the prediction are unreadable ({e})") from e
    if not schema.objects:
        raise MedsegError(f"{path}: the model that made this prediction has no object classes "
                          f"(classes {list(schema.names[1:])}); train with --objects NAME (e.g. --objects nucleus) "
                          "or pass a schema with object classes")
    return schema


def _blocks(shape: Sequence[int], block: int | Sequence[int] | None) -> tuple[int, ...]:
    nd = len(shape)
    if block is None:
        block = DEFAULT_BLOCK[nd]
    b = (int(block),) * nd if np.isscalar(block) else tuple(int(x) for x in block)  # type: ignore[arg-type]
    if len(b) != nd or min(b) < 8:
        raise MedsegError(f"block must be one size or one per axis of a {nd}-D prediction, each >= 8; got {block}")
    return b


# ============================================================================================ state
def _settings(manifest: dict[str, Any], schema: ClassSchema, shape: tuple[int, ...], block: tuple[int, ...],
              halo: int, min_size: int, grow: int) -> dict[str, Any]:
    return {"prediction_created": manifest.get("created"), "schema": schema.to_dict(), "shape": list(shape),
            "block": list(block), "halo": halo, "min_size": min_size, "grow": grow}


def _read_run(p: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((p / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("format") == OBJECTS_FORMAT else None


def _journal(p: Path) -> dict[str, dict[str, Any]]:
    out = {}
    folder = p / JOURNAL
    if not folder.is_dir():
        return out
    for f in folder.iterdir():
        if f.suffix == ".json" and not f.name.startswith("."):
            try:
                out[f.stem] = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a torn entry cannot exist (atomic writes), but an unreadable one is redone
    return out


def _remove_partial(root: Path) -> None:
    for folder, _d, files in os.walk(root):
        for f in files:
            if _PARTIAL.search(f):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, f))


def _create_output(p: Path, shape: tuple[int, ...], block: tuple[int, ...], manifest: dict[str, Any]) -> list[Any]:
    from napari_medseg.io.ngff_meta import multiscales_attrs
    from napari_medseg.io.ngff_write import create_labels_group

    lay = manifest.get("layout") or {}
    nd = len(shape)
    px = [float(x) for x in (lay.get("pixel_size") or [1.0] * nd)][-nd:]
    tr = [float(x) for x in (lay.get("translation") or [0.0] * nd)][-nd:]
    unit = str(lay.get("unit") or "pixel")
    side = 512 if nd == 2 else 64
    chunks = tuple(min(b, side, s) if b % min(b, side) == 0 else min(b, s) for b, s in zip(block, shape))
    arrays = create_labels_group(str(p), LABELS, shape, chunks, px, unit, None, n_levels=None, dtype=np.uint32,
                                 overwrite=True)
    import zarr

    group = zarr.open_group(str(p), mode="a")[f"labels/{LABELS}"]
    # translations of the pixel centres of each level (the prediction's level 0 may not be the source's)
    scales, trans = [], []
    for a in arrays:
        f = [s0 / s for s0, s in zip(shape, a.shape)]
        f = [round(x) if x > 1.01 else 1 for x in f]
        scales.append([q * k for q, k in zip(px, f)])
        trans.append([t + (k - 1) / 2 * q for t, q, k in zip(tr, px, f)])
    attrs = multiscales_attrs("ZYX"[-nd:], scales, unit, name="objects", level_translations=trans)
    if unit == "pixel":
        for ax in attrs["multiscales"][0]["axes"]:
            ax.pop("unit", None)
    group.attrs.update(attrs)
    return arrays


def _open_output(p: Path) -> list[Any]:
    import zarr

    g = zarr.open_group(str(p), mode="a")[f"labels/{LABELS}"]
    keys = sorted((k for k in g.array_keys() if k.isdigit()), key=int)
    return [g[k] for k in keys]


# ============================================================================================ the pass
def _block_key(idx: tuple[int, ...]) -> str:
    return "b" + "_".join(str(i) for i in idx)


def _window(core: tuple[slice, ...], halo: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, c.start - halo), min(n, c.stop + halo)) for c, n in zip(core, shape))


def _compute(pred: Any, core: tuple[slice, ...], halo: int, schema: ClassSchema, find: dict[str, int],
             margin: int, measure: dict[str, Any] | None = None) -> dict[str, Any]:
    """find_objects on the block's window; the kept objects (labels in the window, classes) and facts."""
    shape = pred.shape
    win = _window(core, halo, shape)
    p = np.asarray(pred[win])
    if not np.isin(p, schema.object_values).any():
        return {"empty": True}
    objs = find_objects(p, schema, **find)
    kept, suspect = keep_in_core(objs.labels, win, core, shape, margin)
    res: dict[str, Any] = {"empty": False, "win": win, "suspect": suspect}
    if kept.size:
        lut = np.zeros(objs.n + 1, np.uint32)
        lut[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
        local = lut[objs.labels]
        box = ndi.find_objects((local > 0).astype(np.uint8))[0]
        res.update(local=local[box], box=tuple(slice(w.start + b.start, w.start + b.stop) for w, b in zip(win, box)),
                   classes=objs.classes[kept].tolist())
        if measure is not None:
            from napari_medseg.objects.measure import measure_objects

            cls = np.concatenate([[0], objs.classes[kept]]).astype(np.int32)
            res["table"] = measure_objects(res["local"], cls, class_names=list(schema.names),
                                           offset=[b.start for b in res["box"]], **measure)
    return res


def _commit(out0: Any, res: dict[str, Any], offset: int) -> None:
    """Write the block's kept objects (ids ``offset + 1 ..``) into level 0: read-modify-write of their box."""
    if "local" not in res:
        return
    local = res["local"]
    cur = np.asarray(out0[res["box"]])
    m = local > 0
    cur[m] = local[m] + np.uint32(offset)
    out0[res["box"]] = cur


def instances_from_prediction(prediction_zarr: str | os.PathLike, *, schema: ClassSchema | None = None,
                              block: int | Sequence[int] | None = None, halo: int = 64, min_size: int = 0,
                              grow: int = 3, min_seed: int = 0, resume: bool = True, workers: int = 1,
                              table: bool = True, features: str = "basic") -> Iterator[InstancesEvent]:
    """Find the objects of a finished prediction block by block (see the module docstring); a generator of
    ``InstancesStart``, ``InstancesProgress`` per block and ``InstancesDone`` (also returned)."""
    t0 = time.perf_counter()
    p = Path(prediction_zarr)
    pred, manifest = read_prediction(p)
    schema = _schema(manifest, schema, p)
    shape = tuple(int(s) for s in pred.shape)
    blk = _blocks(shape, block)
    halo, min_size, grow, min_seed = int(halo), int(min_size), int(grow), int(min_seed)
    if halo < 0 or min_size < 0 or grow < 0 or min_seed < 0:
        raise MedsegError(f"halo, min_size, grow and min_seed must be >= 0, got {halo}, {min_size}, {grow}, "
                          f"{min_seed}")
    if features not in ("basic", "full"):
        raise MedsegError(f"features must be 'basic' or 'full', got {features!r}")
    find = {"min_size": min_size, "grow": grow, "min_seed": min_seed}
    margin = grow + 1 if (schema.boundary_value is not None and grow > 0) else 1
    settings = _settings(manifest, schema, shape, blk, halo, min_size, grow)
    settings.update(table=bool(table), min_seed=min_seed, features=features)
    measure = dict(measure_kwargs(manifest, len(shape)), shape=features) if table else None
    run = _read_run(p)
    if resume and run is not None and run.get("settings") == settings and (p / "labels" / LABELS).is_dir():
        done = _journal(p)
        _remove_partial(p / "labels" / LABELS)
        out = _open_output(p)
    else:
        if run is not None:
            log.info("%s: objects of another run (or resume=False): starting again", p)
        shutil.rmtree(p / "medseg" / "objects", ignore_errors=True)
        Path(p / TABLE).unlink(missing_ok=True)
        out = _create_output(p, shape, blk, manifest)
        (p / JOURNAL).mkdir(parents=True, exist_ok=True)
        write_json_atomic(p / RUN_FILE, {"format": OBJECTS_FORMAT, "settings": settings, "status": "running"},
                          durable=True, indent=1)
        done = {}
    grid = [math.ceil(s / b) for s, b in zip(shape, blk)]
    order = list(np.ndindex(*grid))
    total = len(order)
    resumed = sum(_block_key(i) in done for i in order)
    yield InstancesStart(p, shape, blk, halo, total, resumed)

    if (run or {}).get("status") == "complete" and resumed == total and resume and run.get("settings") == settings:
        result = _result(p, run["result"], time.perf_counter() - t0, total, resumed)
        yield result
        return result

    def core_of(idx: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * b, min(n, (i + 1) * b)) for i, b, n in zip(idx, blk, shape))

    classes: list[int] = [0]
    todo = [i for i in order if _block_key(i) not in done]
    pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="medseg-objects")
    futures: dict[tuple[int, ...], Future] = {}
    ahead = iter(todo)

    def submit_next() -> None:
        nxt = next(ahead, None)
        if nxt is not None:
            futures[nxt] = pool.submit(_compute, pred, core_of(nxt), halo, schema, find, margin, measure)

    try:
        for _ in range(max(1, int(workers)) + 1):
            submit_next()
        for n_done, idx in enumerate(order, start=1):
            key = _block_key(idx)
            rec = done.get(key)
            if rec is None:
                res = futures.pop(idx).result()
                submit_next()
                _commit(out[0], res, len(classes) - 1)
                if "table" in res:
                    (p / TABLE_PARTS).mkdir(parents=True, exist_ok=True)
                    write_part(p / TABLE_PARTS / f"{key}.csv", res["table"], len(classes) - 1)
                rec = {"n": len(res.get("classes", [])), "classes": res.get("classes", []),
                       "empty": bool(res["empty"]), "suspect": bool(res.get("suspect", False))}
                write_json_atomic(p / JOURNAL / f"{key}.json", rec)
                done[key] = rec
            classes.extend(int(c) for c in rec["classes"])
            yield InstancesProgress(n_done, total, len(classes) - 1, core_of(idx))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    # objects larger than the halo: found again on their own box and written after the others (a second pass,
    # only when some window saw one); those too large for that are counted
    n = len(classes) - 1
    cut: list[tuple[int, list[int]]] = []
    joined: list[str] = []
    if any(done[_block_key(i)].get("suspect") for i in order):
        nonempty = [core_of(i) for i in order if not done[_block_key(i)].get("empty")]
        left = []
        for value, bounds in cut_objects(pred, out[0], nonempty, blk, schema.object_values, max(1, min_size), n):
            res = cut_object(pred, out[0], schema, find, value, bounds, n)
            if res is None:
                left.append((value, bounds))
                continue
            _commit(out[0], res, len(classes) - 1)
            if measure is not None:
                from napari_medseg.objects.measure import measure_objects

                df = measure_objects(res["local"], np.asarray([0, *res["classes"]], np.int32),
                                     class_names=list(schema.names), offset=[b.start for b in res["box"]], **measure)
                (p / TABLE_PARTS).mkdir(parents=True, exist_ok=True)
                joined.append(f"joined{len(joined)}")
                write_part(p / TABLE_PARTS / f"{joined[-1]}.csv", df, len(classes) - 1)
            else:
                joined.append(f"joined{len(joined)}")
            classes.extend(res["classes"])
        cut, n = left, len(classes) - 1
    from napari_medseg.io.ngff_write import build_pyramid

    build_pyramid(out, "ZYX"[-len(shape):], kind="nearest", workers=1)
    if table:
        join_parts(p / TABLE_PARTS, [_block_key(i) for i in order] + joined, p / TABLE)
    else:
        Path(p / TABLE).unlink(missing_ok=True)
    names = list(schema.names)
    cls_arr = np.asarray(classes, np.int64)
    per_class = {names[v]: int((cls_arr[1:] == v).sum()) for v in schema.object_values}
    cut_per_class = {names[v]: sum(1 for c, _ in cut if c == v) for v in schema.object_values}
    summary = {"n": n, "per_class": per_class, "cut": len(cut), "cut_per_class": cut_per_class,
               "cut_boxes": [b for _, b in cut[:100]], "complete": not cut, "joined": len(joined)}
    import zarr

    zarr.open_group(str(p), mode="a")[f"labels/{LABELS}"].attrs.update({"medseg_objects": {
        "classes": classes, "class_names": names, "n": n, "complete": not cut, "cut": len(cut), "joined": len(joined),
        "halo": halo, "block": list(blk), "min_size": min_size, "grow": grow, "min_seed": min_seed}})
    write_json_atomic(p / RUN_FILE, {"format": OBJECTS_FORMAT, "settings": settings, "status": "complete",
                                     "result": summary}, durable=True, indent=1)
    result = _result(p, summary, time.perf_counter() - t0, total, resumed)
    yield result
    return result


def _result(p: Path, s: dict[str, Any], seconds: float, total: int, resumed: int) -> InstancesDone:
    return InstancesDone(p, int(s["n"]), dict(s["per_class"]), seconds, int(s["cut"]), bool(s["complete"]),
                         [list(b) for b in s.get("cut_boxes", [])], dict(s.get("cut_per_class", {})), total, resumed,
                         int(s.get("joined", 0)))


def read_objects(prediction_zarr: str | os.PathLike, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The objects written by ``instances_from_prediction`` (whole level in memory: for small images and
    tests) and the class value of each id (``classes[0] = 0``)."""
    import zarr

    p = Path(prediction_zarr)
    try:
        g = zarr.open_group(str(p), mode="r")[f"labels/{LABELS}"]
    except (KeyError, FileNotFoundError) as e:
        raise MedsegError(f"{p} holds no objects; run napari-medseg predict --instances-only {p}") from e
    meta = dict(g.attrs).get("medseg_objects")
    if not meta:
        raise MedsegError(f"{p}: the objects are unfinished; rerun the instances pass to finish them")
    return np.asarray(g[str(level)][...]), np.asarray(meta["classes"], np.int32)
