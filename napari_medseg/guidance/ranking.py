"""What "where to paint next" hands back: the ranked regions of one image, and how much of each is painted.

``RegionRanking`` is the result of ``scoring.rank_regions``: every scored region of the image (a grid of
``region_size`` level pixels), best first, with its score, the heat map (one cell per region, NaN where no
region was scored) and what the pass cost. It is saved as JSON (``to_json`` / ``from_json``) and answers
"which region next?" against the labels as they are *now* (``next_unpainted``), so a region painted after
the ranking is skipped without ranking again.

``painted_fraction`` is that "now": for boxes in level-0 pixels, the fraction of pixels painted. The label
store's per-chunk counts (its index) say which boxes hold no paint at all (no pixel read); the pixels of the
others are counted (``exact=True``, the default: a few painted regions, each a read from the labels in memory or
one chunk file). ``exact=False`` spreads each chunk's count over the boxes it overlaps in proportion to the
overlap (exact for boxes made of whole chunks and for evenly painted chunks, an estimate otherwise: with
512-pixel chunks and 256-pixel regions one well-painted region would make its three neighbours count too).

``PAINTED_MAX``: a region counts as painted from 0.5 % of its pixels on. A few strokes in a 256 x 256 region
(about 330 pixels: a 2-pixel scribble across it, or a small blob) are a deliberate annotation there, while a
stray click or the end of a stroke from the next region is well below it; and the spread of a chunk's count
(a 512 x 512 chunk over four 256 regions) must not make one scribble count as painting its neighbours too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.files import read_json, write_json_atomic

#: a region with at least this fraction of its pixels painted counts as painted (see the module doc)
PAINTED_MAX = 0.005
FORMAT = "napari-medseg region ranking"
VERSION = 1

Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RankProgress:
    """One step of ``scoring.rank_regions``: ``done`` of ``total`` windows computed."""

    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class RankedRegion:
    box: Box            # (start, stop) per spatial axis, level-0 pixels of the image (YX or ZYX)
    score: float        # what ranks: uncertainty * (1 + novelty_weight * novelty)
    uncertainty: float  # mean normalised predictive entropy over the sampled tissue pixels, 0..1
    novelty: float      # 0..1, how unlike the painted regions (0 when nothing painted / weight 0)
    painted: float      # fraction of the region's pixels painted when ranked, 0..1
    tissue: float       # fraction of the region on tissue, 0..1

    @property
    def centre(self) -> tuple[float, ...]:
        """The box's centre in level-0 pixels (per spatial axis)."""
        return tuple((a + b) / 2 for a, b in self.box)


@dataclass
class RegionRanking:
    image: str
    checkpoint: str
    checkpoint_sha256: str
    level: int
    region_size: tuple[int, ...]        # level pixels per spatial axis
    cell_scale: tuple[float, ...]       # level-0 pixels per heat-map cell, per spatial axis
    regions: list[RankedRegion]         # sorted by score, best first; every scored region
    heatmap: np.ndarray                 # float32 grid (one cell per region), NaN where not scored
    seconds: float
    windows: int
    pixel_size: tuple[float, ...]       # of level 0, for physical coordinates in JSON
    unit: str
    complete: bool = True               # False: stopped early, the regions scored until then
    image_shape: tuple[int, ...] = ()   # level-0 spatial shape (checks a store against it; () = unknown)
    novelty_weight: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)  # window, samples, seed, ... (for the record)

    # -- asking -------------------------------------------------------------------------------------
    def next_unpainted(self, store: Any = None, *, after: int = -1, max_painted: float = PAINTED_MAX) -> int | None:
        """Index into ``regions`` of the best region after ``after`` whose painted fraction is below
        ``max_painted``: the CURRENT one from ``store`` (``painted_fraction``) when given, else the one stored
        at ranking time. None when no such region is left."""
        start = max(-1, int(after)) + 1
        if start >= len(self.regions):
            return None
        if store is not None:
            if self.image_shape and tuple(store.shape) != tuple(self.image_shape):
                raise MedsegError(f"the labels have shape {tuple(store.shape)} but the ranked image "
                                  f"{self.image!r} has {tuple(self.image_shape)}: they belong to another image")
            painted = painted_fraction(store, [r.box for r in self.regions[start:]])
        else:
            painted = np.array([r.painted for r in self.regions[start:]], np.float64)
        hits = np.flatnonzero(painted < max_painted)
        return int(start + hits[0]) if hits.size else None

    def physical(self, point: tuple[float, ...]) -> tuple[float, ...]:
        """A point in level-0 pixels (as ``RankedRegion.centre``: 0 at the image's corner) in ``unit``."""
        return tuple(float(c) * p for c, p in zip(point, self.pixel_size))

    # -- files --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        hm = np.asarray(self.heatmap, np.float64)
        return {
            "format": FORMAT, "version": VERSION,
            "image": self.image, "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
            "level": int(self.level), "region_size": [int(s) for s in self.region_size],
            "cell_scale": [float(s) for s in self.cell_scale], "image_shape": [int(s) for s in self.image_shape],
            "pixel_size": [float(p) for p in self.pixel_size], "unit": self.unit,
            "seconds": float(self.seconds), "windows": int(self.windows), "complete": bool(self.complete),
            "novelty_weight": float(self.novelty_weight), "settings": dict(self.settings),
            "regions": [{"box": [[int(a), int(b)] for a, b in r.box], "score": _num(r.score),
                         "uncertainty": _num(r.uncertainty), "novelty": _num(r.novelty),
                         "painted": _num(r.painted), "tissue": _num(r.tissue),
                         "centre": [float(c) for c in r.centre],
                         "centre_physical": [round(c, 6) for c in self.physical(r.centre)]}
                        for r in self.regions],
            "heatmap": _nested(hm),
        }

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the ranking as JSON, atomically (a reader sees the old file or the new one); NaN cells of the
        heat map are ``null``."""
        try:
            write_json_atomic(path, self.to_dict(), indent=None)
        except OSError as e:
            raise MedsegError(f"cannot write the ranking to {path} ({e.strerror or e}); choose another file") from e

    @classmethod
    def from_dict(cls, d: Any, where: str = "the ranking") -> RegionRanking:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MedsegError(f"{where} is not a napari-medseg region ranking (written by napari-medseg rank or "
                              "the 'Where to paint next' box)")
        if int(d.get("version", 0)) > VERSION:
            raise MedsegError(f"{where} was written by a newer napari-medseg (ranking version {d.get('version')}); "
                              "update napari-medseg to read it")
        try:
            regions = [RankedRegion(box=tuple((int(a), int(b)) for a, b in r["box"]), score=float(r["score"]),
                                    uncertainty=float(r["uncertainty"]), novelty=float(r["novelty"]),
                                    painted=float(r["painted"]), tissue=float(r["tissue"]))
                       for r in d["regions"]]
            heat = np.array(_denull(d["heatmap"]), np.float32)
            return cls(image=str(d["image"]), checkpoint=str(d["checkpoint"]),
                       checkpoint_sha256=str(d.get("checkpoint_sha256", "")), level=int(d["level"]),
                       region_size=tuple(int(s) for s in d["region_size"]),
                       cell_scale=tuple(float(s) for s in d["cell_scale"]), regions=regions,
                       heatmap=heat, seconds=float(d["seconds"]), windows=int(d["windows"]),
                       pixel_size=tuple(float(p) for p in d["pixel_size"]), unit=str(d["unit"]),
                       complete=bool(d.get("complete", True)),
                       image_shape=tuple(int(s) for s in d.get("image_shape", ()) or ()),
                       novelty_weight=float(d.get("novelty_weight", 0.0)), settings=dict(d.get("settings") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise MedsegError(f"{where} is a damaged region ranking ({type(e).__name__}: {e}); rank again") from e

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> RegionRanking:
        """The ranking in ``path``; ``MedsegError`` saying what is wrong for a missing, damaged or foreign file."""
        if not os.path.isfile(path):
            raise MedsegError(f"{path}: no such ranking file")
        d = read_json(path)
        if d is None:
            raise MedsegError(f"{path} is not JSON; give a ranking written by napari-medseg rank")
        return cls.from_dict(d, str(path))


def _num(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v  # exact: JSON floats read back as they were written


def _nested(a: np.ndarray) -> Any:
    if a.ndim == 0:
        return _num(float(a))
    return [_nested(x) for x in a]


def _denull(v: Any) -> Any:
    if isinstance(v, list):
        return [_denull(x) for x in v]
    return np.nan if v is None else float(v)


def painted_fraction(store: Any, boxes: Any, *, exact: bool = True) -> np.ndarray:
    """Per level-0 box (``(start, stop)`` per spatial axis of ``store``), painted pixels / box pixels (see the
    module: the pixels of the boxes under painted chunks counted, or with ``exact=False`` each chunk's count
    spread over the boxes by overlap).

    ``store`` is a ``LabelStore`` over the image's level 0 (0 = not painted). A box reaching past the store is
    a ``MedsegError`` (the labels are of another image); an empty list gives an empty array."""
    boxes = np.asarray([[tuple(ab) for ab in b] for b in boxes], np.int64).reshape(-1, store.ndim, 2) \
        if len(boxes) else np.zeros((0, store.ndim, 2), np.int64)
    n = boxes.shape[0]
    out = np.zeros(n, np.float64)
    if n == 0:
        return out
    shape = np.asarray(store.shape, np.int64)
    if (boxes[:, :, 0] < 0).any() or (boxes[:, :, 1] > shape).any():
        far = tuple(int(v) for v in boxes[:, :, 1].max(axis=0))
        raise MedsegError(f"the labels have shape {tuple(store.shape)} but the regions reach {far}: "
                          "they belong to another image (or another pyramid level)")
    counts = store.index.chunk_counts()
    if not counts:
        return out
    keys = sorted(counts)
    cs = np.asarray(store.chunks, np.int64)
    idx = np.asarray(keys, np.int64)
    c0 = idx * cs
    c1 = np.minimum(c0 + cs, shape)
    painted = np.asarray([sum(counts[k].values()) for k in keys], np.float64)
    density = painted / np.prod(c1 - c0, axis=1)  # painted pixels per chunk pixel
    step = max(1, (1 << 22) // n)  # bound the (boxes x chunks) overlap matrix to ~4M cells
    for i in range(0, len(keys), step):
        lo = np.maximum(boxes[:, None, :, 0], c0[None, i:i + step])
        hi = np.minimum(boxes[:, None, :, 1], c1[None, i:i + step])
        overlap = np.prod(np.clip(hi - lo, 0, None), axis=2)  # (boxes, chunks) pixels in common
        out += overlap @ density[i:i + step]
    size = np.prod(np.clip(boxes[:, :, 1] - boxes[:, :, 0], 0, None), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(size > 0, np.clip(out / np.maximum(size, 1), 0.0, 1.0), 0.0)
    if exact:
        for i in np.flatnonzero(frac > 0):
            region = tuple(slice(int(a), int(b)) for a, b in boxes[i])
            frac[i] = np.count_nonzero(store.read(region)) / size[i]
    return frac
