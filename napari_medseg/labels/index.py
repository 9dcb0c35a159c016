"""The label store's sparse index (pure: numpy only, no zarr): what is painted where, and since when.

``LabelIndex`` maps each *painted* level-0 chunk (grid index, e.g. ``(iy, ix)`` or ``(iz, iy, ix)``) to the
pixel count of every non-zero store value in it, keeps the set of painted chunks of every pyramid level, and
counts write batches in ``version`` (each chunk remembers the version that last changed it, so a snapshot
can be refreshed by re-reading just the chunks changed since). Every read of the store goes through the
painted sets, so empty space is never touched.

On disk the index is ``medseg_index.json`` (written to a temporary file and renamed, so a reader sees the
old or the new index, never half of one). Before a batch of chunk writes the keys are listed in
``medseg_journal.json``; the journal is removed once the chunks, the overview and the index are all written,
so a crash in between is repaired on the next open (``load``) by recounting just those chunks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.core.files import read_json, write_json_atomic
from napari_medseg.core.grid import Chunk, chunk_key, parents, parse_chunk_key
from napari_medseg.labels.format import list_chunk_files

log = logging.getLogger(__name__)

INDEX_NAME = "medseg_index.json"
JOURNAL_NAME = "medseg_journal.json"
INDEX_VERSION = 1

Counts = dict[int, int]


def value_counts(block: np.ndarray) -> Counts:
    """Non-zero value -> pixel count of a uint8 block (0 = not annotated is not counted)."""
    bc = np.bincount(block.ravel(), minlength=256)
    return {int(v): int(bc[v]) for v in np.flatnonzero(bc) if v != 0}


def index_to_json(counts: dict[Chunk, Counts]) -> dict[str, Any]:
    return {"version": INDEX_VERSION,
            "chunks": {chunk_key(c): {str(v): n for v, n in sorted(cnt.items())} for c, cnt in counts.items()}}


def index_from_json(obj: Any) -> dict[Chunk, Counts] | None:
    """The index in ``obj`` or None when it is not one we can trust (then the caller rebuilds it)."""
    try:
        if obj.get("version") != INDEX_VERSION:
            return None
        return {parse_chunk_key(k): {int(v): int(n) for v, n in cnt.items()} for k, cnt in obj["chunks"].items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


class LabelIndex:
    """Per-chunk value counts of level 0, painted chunks per pyramid level, and the write ``version``.

    ``level_factors`` are the downsampling factors of each level against the one below (level 0: ones).
    ``lock`` guards the in-memory state; the chunk IO shares it.
    """

    def __init__(self, level_factors: Sequence[Sequence[int]], lock: Any = None) -> None:
        self.level_factors = [tuple(int(x) for x in f) for f in level_factors]
        self.lock = lock if lock is not None else threading.RLock()
        self.counts: dict[Chunk, Counts] = {}
        self.painted: list[set[Chunk]] = [set() for _ in self.level_factors]
        self.version = 0  # +1 per write batch (and per reload): a snapshot taken at this version is current
        self.changed_at: dict[Chunk, int] = {}  # the version that last changed each painted chunk
        self.mtime: float | None = None  # of the index file as last read or written

    # -- updates ------------------------------------------------------------------------------------
    def rebuild_painted(self) -> None:
        """Painted sets of every level from the level-0 counts."""
        with self.lock:
            self.painted[0] = set(self.counts)
            for k in range(1, len(self.painted)):
                self.painted[k] = parents(self.painted[k - 1], self.level_factors[k])

    def set_chunk(self, c: Chunk, counts: Counts) -> None:
        """Record level-0 chunk ``c``'s new counts (empty: nothing painted) in the batch under way."""
        with self.lock:
            if counts:
                self.counts[c] = counts
            else:
                self.counts.pop(c, None)
            self.changed_at[c] = self.version + 1

    def bump(self) -> None:
        """End a write batch: the version moves on once per batch."""
        with self.lock:
            self.version += 1

    def restamp(self, version: int) -> None:
        """Mark every chunk as changed at ``version`` (a store that continues elsewhere keeps counting up)."""
        with self.lock:
            self.version = int(version)
            self.changed_at = dict.fromkeys(self.counts, self.version)

    # -- disk ---------------------------------------------------------------------------------------
    def load(self, path: Path, ndim: int, read_chunk: Callable[[Chunk], np.ndarray | None]) -> set[Chunk]:
        """Load the index of the store at ``path``, then make it agree with the level-0 chunk files (listing
        painted chunks only) and recount (``read_chunk``, from disk) every chunk a leftover journal names.
        Returns the chunks repaired (the caller rewrites their overview and the index)."""
        idx_path = path / INDEX_NAME
        counts = index_from_json(read_json(idx_path)) or {}
        self.mtime = idx_path.stat().st_mtime if idx_path.exists() else None
        listed = list_chunk_files(path / "0", ndim)
        journal = read_json(path / JOURNAL_NAME)
        suspects = {parse_chunk_key(k) for k in (journal or {}).get("chunks", [])} if journal else set()
        suspects |= listed.symmetric_difference(counts.keys())
        for c in suspects:
            counts.pop(c, None)
        for c in sorted(suspects):
            if c not in listed:
                continue
            try:
                blk = read_chunk(c)
            except UnreadableInputError as e:  # a damaged chunk: the store still opens, the chunk is named
                log.warning("%s", e)
                continue
            cnt = value_counts(blk) if blk is not None else None
            if cnt:
                counts[c] = cnt
        with self.lock:
            self.counts = counts
            self.rebuild_painted()
            self.restamp(self.version + 1)
        if suspects:
            log.warning("label store %s: index repaired for %d chunk(s) (a previous session was interrupted)",
                        path, len(suspects))
        return suspects

    def persist(self, path: Path) -> None:
        """Write ``medseg_index.json`` atomically."""
        with self.lock:
            obj = index_to_json(self.counts)
        write_json_atomic(path / INDEX_NAME, obj)
        self.mtime = (path / INDEX_NAME).stat().st_mtime

    def changed_on_disk(self, path: Path) -> bool:
        """Whether another process rewrote the index file since it was last read or written here."""
        try:
            return (path / INDEX_NAME).stat().st_mtime != self.mtime
        except OSError:
            return False

    @staticmethod
    def begin_journal(path: Path, chunks: Iterable[Chunk]) -> None:
        """Name the chunks of a batch about to be written (``OSError`` if the folder takes no writes)."""
        write_json_atomic(path / JOURNAL_NAME, {"chunks": [chunk_key(c) for c in chunks], "time": time.time()})

    @staticmethod
    def end_journal(path: Path) -> None:
        (path / JOURNAL_NAME).unlink(missing_ok=True)

    # -- answers ------------------------------------------------------------------------------------
    def painted_chunks(self) -> list[Chunk]:
        """Grid indices of the level-0 chunks holding paint, sorted (no scan)."""
        with self.lock:
            return sorted(self.counts)

    def chunk_classes(self) -> dict[Chunk, frozenset[int]]:
        """Store values (1 = background, 2.. = classes) present in each painted chunk."""
        with self.lock:
            return {c: frozenset(cnt) for c, cnt in self.counts.items()}

    def chunk_counts(self) -> dict[Chunk, dict[int, int]]:
        """Pixel count of every store value in each painted chunk."""
        with self.lock:
            return {c: dict(cnt) for c, cnt in self.counts.items()}

    def class_counts(self, max_value: int) -> dict[int, int]:
        """Painted pixels per store value: every value 1..``max_value``, zeros included."""
        total = dict.fromkeys(range(1, max_value + 1), 0)
        with self.lock:
            for cnt in self.counts.values():
                for v, n in cnt.items():
                    total[v] = total.get(v, 0) + n
        return total
