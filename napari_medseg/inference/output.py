"""The prediction output: an NGFF 0.4 zarr (zarr format 2) with a run manifest and a journal.

Layout of ``OUT.zarr``::

    .zgroup, .zattrs                 {"napari_medseg": {"kind": "prediction", ...}}
    labels/.zattrs                   {"labels": ["prediction", "tissue"]}
    labels/prediction/0, 1, ...      uint8 labels (0 = background, not predicted or outside the tissue mask,
                                     k = class k), multiscale,
                                     NGFF "image-label" colors = ClassSchema.prediction_colors()
    labels/tissue/0                  the tissue mask used (1 = tissue), when one was used
    probs/0, 1, ...                  optional class probabilities, axes CYX / CZYX, uint8 (p * 255), float16 or float32;
                                     all zero where no window was computed and outside the tissue mask
    medseg/run.json                  the run manifest: format, job (source, model hash, settings), status
    medseg/journal/<block key>       one empty file per finished block (written after its chunks)

Output chunks are aligned to blocks (a chunk never straddles two blocks), so every chunk has exactly one
writer: blocks can be written by several processes at once. Pyramid levels down to a block size of 64 px
are written with their block (from the block's float probabilities: mean pooling, labels = argmax); the
coarser levels are built when every block is done. A block's journal entry is written only after all of
its chunks, so an interrupted run is resumed by redoing the blocks without an entry; the store is
consistent at any time (unfinished blocks read as background).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.files import write_json_atomic
from napari_medseg.core.heap import trim
from napari_medseg.io.ngff_meta import image_label_attrs, multiscales_attrs

log = logging.getLogger(__name__)
FORMAT = "napari-medseg-prediction"
VERSION = 1
MANIFEST = "medseg/run.json"   # inside a zarr group of its own, so zarr readers see no stray files
JOURNAL = "medseg/journal"
MIN_BLOCK_LEVEL_SIDE = 64
SMALLEST_SIDE = 512


# zarr's local store writes a chunk to "<key>.<32 hex>.partial" and renames it into place: a writer killed
# in between leaves that file behind (the chunk itself is redone, its block having no journal entry).
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_partial_writes(root: Path) -> int:
    """Delete the temporary chunk files a killed writer left under ``root``; returns how many. Only for
    the one process resuming a run, before any writer starts (it would remove a live writer's file)."""
    n = 0
    for folder, _dirs, files in os.walk(root):
        for f in files:
            if _PARTIAL.search(f):
                with contextlib.suppress(FileNotFoundError):  # another writer's rename got there first
                    os.remove(os.path.join(folder, f))
                    n += 1
    if n:
        log.info("removed %d unfinished chunk write(s) left by an interrupted run in %s", n, root)
    return n


class DiskFullError(MedsegError):
    """The output's disk is full; finished blocks are kept and a rerun resumes."""


def _is_disk_full(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    p = Path(out) / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def prepare_out(out: str | Path, job: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with ``out`` before anything is written: "create", "resume" or refuse.

    Refuses (``MedsegError``) a path that is not a napari-medseg prediction (never deleted), a prediction
    of another job unless ``overwrite``, and the same job when neither ``resume`` nor ``overwrite``.
    """
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise MedsegError(f"{p} exists and is a file; choose another output path")
    if not p.exists() or not any(p.iterdir()):
        return "create"
    m = read_manifest(p)
    if m is None:
        raise MedsegError(f"{p} exists and is not a napari-medseg prediction; refusing to touch it. "
                          "Choose another output path.")
    same = m.get("job") == job
    if same and resume and not overwrite:
        return "resume"
    if not overwrite:
        if same:
            raise MedsegError(f"{p} already holds this prediction ({m.get('status', 'unknown')}); resume it "
                              "(resume=True, the default) or start again with overwrite=True")
        what = ", ".join(_diff(m.get("job"), job)[:6])
        raise MedsegError(f"{p} holds a different prediction run (differs in: {what}); choose another output "
                          "path, or pass overwrite=True (--overwrite) to replace it")
    shutil.rmtree(p)
    return "create"


@dataclass
class Layout:
    """Geometry of the output (spatial axes of the predicted level)."""

    shape: tuple[int, ...]
    block: tuple[int, ...]
    pixel_size: tuple[float, ...]      # of the predicted level, in ``unit``
    translation: tuple[float, ...]     # of its pixel centres in level-0 physical coordinates
    unit: str
    n_classes: int
    write_probs: str | None

    @property
    def nd(self) -> int:
        return len(self.shape)

    @property
    def axes(self) -> str:
        return "ZYX"[-self.nd:]

    def n_block_levels(self) -> int:
        """Levels written with their block: in-plane block sizes divide by 2**k and stay >= 64 px."""
        n, total = 1, self.n_levels()
        while n < total and all(b % 2 ** n == 0 and b // 2 ** n >= MIN_BLOCK_LEVEL_SIDE for b in self.block[-2:]):
            n += 1
        return n

    def n_levels(self) -> int:
        """Halving the in-plane axes until the larger side is <= 512 px."""
        k = 0
        while max(self.level_shape(k)[-2:]) > SMALLEST_SIDE:
            k += 1
        return k + 1

    def level_shape(self, k: int) -> tuple[int, ...]:
        f = 2 ** k
        return tuple(self.shape[:-2]) + tuple(-(-s // f) for s in self.shape[-2:])

    def level_chunks(self, k: int) -> tuple[int, ...]:
        """Chunks of level ``k``: block-aligned on block levels (one writer per chunk)."""
        nb = self.n_block_levels()
        out = list(self.block[:-2])
        for b, s in zip(self.block[-2:], self.level_shape(k)[-2:]):
            out.append(_chunk_at(b, k) if k < nb else min(SMALLEST_SIDE, s))
        return tuple(max(1, min(c, s)) for c, s in zip(out, self.level_shape(k)))

    def scales(self) -> list[list[float]]:
        return [[p * (2 ** k if i >= self.nd - 2 else 1) for i, p in enumerate(self.pixel_size)]
                for k in range(self.n_levels())]

    def translations(self) -> list[list[float]]:
        out = []
        for k in range(self.n_levels()):
            f = 2 ** k
            out.append([t + ((f - 1) / 2 * p if i >= self.nd - 2 else 0.0)
                        for i, (t, p) in enumerate(zip(self.translation, self.pixel_size))])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "block": list(self.block), "pixel_size": list(self.pixel_size),
                "translation": list(self.translation), "unit": self.unit, "n_classes": self.n_classes,
                "write_probs": self.write_probs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        return cls(tuple(d["shape"]), tuple(d["block"]), tuple(d["pixel_size"]), tuple(d["translation"]),
                   d["unit"], int(d["n_classes"]), d.get("write_probs"))


def _chunk_at(block: int, k: int) -> int:
    """Chunk side at block level ``k``: the level-0 chunk (a block / 2**m <= 512), or the block's size."""
    from napari_medseg.inference.tiling import chunk_for_block

    return min(chunk_for_block(block), block // 2 ** k)


def _array_kw(dtype: str = "uint8") -> dict[str, Any]:
    """Array options: Blosc, bit-shuffled: zstd for labels and uint8 probabilities (20-40x), lz4 for float ones
    (float32 1.6x with either codec, float16 2.2x against zstd's 2.6x; lz4 4x faster: benchmarks/RESULTS.md)."""
    import numcodecs

    cname, level = ("lz4", 5) if str(dtype).startswith("float") else ("zstd", 3)
    return {"compressors": numcodecs.Blosc(cname=cname, clevel=level, shuffle=numcodecs.Blosc.BITSHUFFLE),
            "chunk_key_encoding": {"name": "v2", "separator": "/"}, "fill_value": 0}


class OutputStore:
    """Writes finished blocks (labels, probabilities, their block-level pyramid) and the journal."""

    def __init__(self, path: str | Path, layout: Layout, *, threads: int = 1, classes: ClassSchema | None = None
                 ) -> None:
        import zarr

        self.path = Path(path)
        self.layout = layout
        self.classes = classes  # object classes and their boundary: labels by ``class_labels``
        self.root = zarr.open_group(str(self.path), mode="a", zarr_format=2)
        self.labels = [self.root[f"labels/prediction/{k}"] for k in range(layout.n_levels())]
        self.probs = [self.root[f"probs/{k}"] for k in range(layout.n_levels())] if layout.write_probs else []
        self.journal = self.path / JOURNAL
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="medseg-write")
        self._futures: list[Future] = []

    # -- creation --------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, layout: Layout, job: dict[str, Any], classes: ClassSchema, *,
               name: str = "prediction", extra_attrs: dict[str, Any] | None = None) -> OutputStore:
        import zarr

        p = Path(path)
        try:
            p.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(str(p), mode="w", zarr_format=2)
            root.attrs.update({"napari_medseg": {"kind": "prediction", "format": FORMAT, "version": VERSION,
                                                 "name": name, **(extra_attrs or {})}})
            labels = root.require_group("labels")
            labels.attrs.update({"labels": ["prediction"]})
            lg = labels.require_group("prediction")
            for k in range(layout.n_levels()):
                lg.create_array(str(k), shape=layout.level_shape(k), chunks=layout.level_chunks(k), dtype="uint8",
                                **_array_kw())
            method = "argmax of blended softmax"
            if classes.boundary_value is not None:
                method += f"; object classes only where they exceed the boundary by {OBJECT_MARGIN}, else boundary"
            meta = {"classes": classes.to_dict(), "method": method,
                    "downsampling": "mean of probabilities, then argmax (per block); nearest (coarser levels)"}
            attrs = multiscales_attrs(layout.axes, layout.scales(), layout.unit, name=f"{name} prediction",
                                      level_translations=layout.translations(), metadata=meta)
            il = image_label_attrs({k: v for k, v in classes.prediction_colors().items() if k is not None})
            il["image-label"]["properties"] = [{"label-value": i, "class": n} for i, n in enumerate(classes.names)]
            lg.attrs.update({**attrs, **il})
            if layout.write_probs:
                dtype = layout.write_probs
                pg = root.require_group("probs")
                for k in range(layout.n_levels()):
                    pg.create_array(str(k), shape=(layout.n_classes, *layout.level_shape(k)), dtype=dtype,
                                    chunks=(layout.n_classes, *layout.level_chunks(k)), **_array_kw(dtype))
                scales = [[1.0, *s] for s in layout.scales()]
                trans = [[0.0, *t] for t in layout.translations()]
                pattrs = multiscales_attrs("C" + layout.axes, scales, layout.unit, name=f"{name} probabilities",
                                           level_translations=trans,
                                           metadata={"classes": classes.to_dict(), "dtype": dtype,
                                                     "scale": 255.0 if dtype == "uint8" else 1.0})
                pg.attrs.update(pattrs)
            root.require_group("medseg")
            (p / JOURNAL).mkdir(parents=True, exist_ok=True)
            manifest = {"format": FORMAT, "version": VERSION, "job": job, "layout": layout.to_dict(),
                        "classes": classes.to_dict(), "status": "running", "created": time.time(),
                        "updated": time.time()}
            write_json_atomic(p / MANIFEST, manifest, durable=True, indent=1)
        except OSError as e:
            if _is_disk_full(e):
                raise DiskFullError(f"the disk holding {p} is full; free some space and run again") from e
            raise MedsegError(f"could not create the output {p} ({e.strerror or e}); check the path and "
                              "its permissions") from e
        return cls(p, layout, classes=classes)

    @classmethod
    def open(cls, path: str | Path) -> OutputStore:
        m = read_manifest(path)
        if m is None:
            raise MedsegError(f"{path} is not a napari-medseg prediction")
        classes = ClassSchema.from_dict(m["classes"]) if isinstance(m.get("classes"), dict) else None
        return cls(path, Layout.from_dict(m["layout"]), classes=classes)

    def write_tissue(self, mask: np.ndarray, scale: Sequence[float], translation: Sequence[float], unit: str) -> None:
        """Save the tissue mask (YX, 1 = tissue) as ``labels/tissue``."""
        labels = self.root["labels"]
        tg = labels.require_group("tissue")
        arr = tg.create_array("0", shape=mask.shape, chunks=tuple(min(1024, s) for s in mask.shape), dtype="uint8",
                              overwrite=True, **_array_kw())
        arr[...] = mask.astype(np.uint8)
        tg.attrs.update({**multiscales_attrs("YX", [list(scale)], unit, name="tissue mask",
                                             level_translations=[list(translation)]),
                         **image_label_attrs({1: (0.0, 0.8, 0.3, 0.35)})})
        labels.attrs.update({"labels": ["prediction", "tissue"]})

    # -- journal ---------------------------------------------------------------------------------------
    def done_blocks(self) -> set[str]:
        try:
            return {f for f in os.listdir(self.journal) if not f.startswith(".")}
        except FileNotFoundError:
            return set()

    def update_manifest(self, **kw: Any) -> None:
        m = read_manifest(self.path) or {}
        m.update(kw)
        m["updated"] = time.time()
        try:
            write_json_atomic(self.path / MANIFEST, m, durable=True, indent=1)
        except OSError as e:
            if _is_disk_full(e):
                raise DiskFullError(f"the disk holding {self.path} is full; finished blocks are kept. Free some "
                                    "space and run again to resume") from e
            raise

    # -- blocks ----------------------------------------------------------------------------------------
    def _write_array(self, arr: Any, sl: tuple[slice, ...], data: np.ndarray) -> None:
        arr[sl] = data

    def _write_block(self, key: str, parts: list[tuple[int, tuple[slice, ...], np.ndarray, np.ndarray | None]]) -> None:
        for k, sl, lab, prob in parts:
            self._write_array(self.labels[k], sl, lab)
            if prob is not None and self.probs:
                self._write_array(self.probs[k], (slice(None),) + sl, prob)
        with open(self.journal / key, "w"):
            pass

    def check(self) -> None:
        """Raise the first error of a finished background write (disk full: ``DiskFullError``)."""
        keep = []
        for f in self._futures:
            if f.done():
                e = f.exception()
                if e is not None:
                    self._raise(e)
            else:
                keep.append(f)
        self._futures = keep

    def _raise(self, e: BaseException) -> None:
        if _is_disk_full(e):
            raise DiskFullError(f"the disk holding {self.path} is full; {len(self.done_blocks())} finished blocks "
                                "are kept and the store is consistent. Free some space and run again to resume "
                                "(it continues where it stopped)") from e
        if isinstance(e, OSError):
            raise MedsegError(f"could not write to {self.path} ({e.strerror or e}); finished blocks are kept, "
                              "run again to resume") from e
        raise e

    def write_block(self, key: str, box: Sequence[tuple[int, int]], probs: Any, *, on_done: Any = None,
                    max_pending: int = 1) -> None:
        """Queue a finished block: ``probs`` (C, *spatial) float32 torch tensor, zero where not predicted.
        In a background thread: labels and probabilities of every block level, their chunks, then the
        journal entry; ``on_done(probs)`` is called once ``probs`` is no longer needed."""
        self.check()
        while len(self._futures) >= max_pending:
            e = self._futures[0].exception()
            if e is not None:
                self._raise(e)
            self.check()
        self._futures.append(self._pool.submit(self._compute_and_write, key, tuple(box), probs, on_done))

    def _compute_and_write(self, key: str, box: tuple[tuple[int, int], ...], probs: Any, on_done: Any) -> None:
        try:
            parts = self.block_parts(box, probs)
        finally:
            if on_done is not None:
                on_done(probs)
        self._write_block(key, parts)
        del parts
        trim(min_interval=0.5)

    def block_parts(self, box: Sequence[tuple[int, int]], probs: Any) -> list[tuple[int, tuple[slice, ...], np.ndarray, np.ndarray | None]]:
        """Labels (argmax) and quantised probabilities of the block at each block level (mean-pooled)."""
        import torch
        import torch.nn.functional as F

        lay = self.layout
        parts = []
        p = probs
        for k in range(lay.n_block_levels()):
            if k > 0:
                x = p if p.ndim == 4 else p[None]  # (N, C, Y, X) with N = 1 (2D) or C (3D: (C, Z, Y, X))
                ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
                if ph or pw:
                    x = F.pad(x, (0, pw, 0, ph), mode="replicate")
                x = F.avg_pool2d(x, 2)
                p = x if p.ndim == 4 else x[0]
            f = 2 ** k
            sl = tuple(slice(a, b) for a, b in box[:-2]) + tuple(slice(a // f, -(-b // f)) for a, b in box[-2:])
            lab = class_labels(p, self.classes).cpu().numpy()
            prob = None
            if lay.write_probs == "uint8":
                prob = torch.round(p * 255).clamp_(0, 255).to(torch.uint8).cpu().numpy()
            elif lay.write_probs == "float16":
                prob = p.to(torch.float16).cpu().numpy()
            elif lay.write_probs:
                prob = p.cpu().numpy().copy()
            parts.append((k, sl, lab, prob))
        return parts

    def flush(self) -> None:
        for f in self._futures:
            e = f.exception()
            if e is not None:
                self._raise(e)
        self._futures = []

    def close(self) -> None:
        """Wait for the queued writes (raising the first error) and end the writer thread: the store owns
        its pool, and this is the one place it is shut down."""
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    # -- coarse levels ---------------------------------------------------------------------------------
    def finalize(self, strip: int = 2048) -> None:
        """Build the levels coarser than the block levels (labels: nearest; probabilities: mean)."""
        lay = self.layout
        try:
            for k in range(lay.n_block_levels(), lay.n_levels()):
                src_l, dst_l = self.labels[k - 1], self.labels[k]
                H = src_l.shape[-2]
                for y0 in range(0, H, strip):
                    y1 = min(H, y0 + strip)
                    lab = np.asarray(src_l[..., y0:y1, :])[..., ::2, ::2]
                    self._write_array(dst_l, (Ellipsis, slice(y0 // 2, y0 // 2 + lab.shape[-2]), slice(None)), lab)
                    if self.probs:
                        pr = np.asarray(self.probs[k - 1][..., y0:y1, :]).astype(np.float32)
                        pr = _mean2(pr)
                        if self.probs[k].dtype == np.uint8:
                            pr = np.round(pr)
                        pr = pr.astype(self.probs[k].dtype)
                        self._write_array(self.probs[k], (Ellipsis, slice(y0 // 2, y0 // 2 + pr.shape[-2]), slice(None)), pr)
        except OSError as e:
            self._raise(e)


#: an object class wins a pixel only where its probability exceeds the ``object boundary``'s by this much;
#: elsewhere the pixel is boundary (chosen on 5 held-out MoNuSeg images of benchmarks/bench_instances.py from
#: 0, 0.4, 0.6, 0.8: AJI 0.537 -> 0.554; on the other 5 held-out images 0.367 -> 0.441, docs/objects.md)
OBJECT_MARGIN = 0.6


def class_labels(p: Any, classes: ClassSchema | None = None) -> Any:
    """Prediction values of the probabilities ``p`` ``(C, *S)``: the argmax, except that with object classes
    and the boundary class (``classes.boundary_value``) an object pixel whose probability does not exceed the
    boundary's by ``OBJECT_MARGIN`` becomes boundary. Object interiors are then the confident cores, which keep
    touching objects apart when the instances are found (``objects.find_objects`` grows them back into the
    boundary); the union of object and boundary pixels is the argmax's."""
    lab = argmax_channels(p)
    b = classes.boundary_value if classes is not None else None
    if b is not None and b < p.shape[0]:
        for v in classes.object_values:
            if v < p.shape[0]:
                lab.masked_fill_((lab == v) & (p[v] - p[b] < OBJECT_MARGIN), b)
    return lab


def argmax_channels(p: Any) -> Any:
    """``argmax`` over dim 0 as uint8 (first maximum wins, as ``torch.argmax``), in C vectorised passes:
    much faster than a strided reduction on CPU."""
    import torch

    if p.shape[0] == 2:  # one comparison (ties to 0, as above)
        return torch.gt(p[1], p[0]).to(torch.uint8)
    best = p[0].clone()
    lab = torch.zeros(p.shape[1:], dtype=torch.uint8, device=p.device)
    for c in range(1, p.shape[0]):
        m = p[c] > best
        lab.masked_fill_(m, c)
        torch.maximum(best, p[c], out=best)
    return lab


def _mean2(a: np.ndarray) -> np.ndarray:
    """Mean over 2 x 2 cells of the last two axes (odd edges: edge-replicated)."""
    ph, pw = a.shape[-2] % 2, a.shape[-1] % 2
    if ph or pw:
        a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], mode="edge")
    return 0.25 * (a[..., ::2, ::2] + a[..., 1::2, ::2] + a[..., ::2, 1::2] + a[..., 1::2, 1::2])
