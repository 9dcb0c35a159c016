"""Shared helpers for lazy pyramids: dask wrapping on tile multiples, virtual (strided) lower levels,
pruning levels that do not shrink, contrast from a small subsample, and length-unit conversion.

Nothing here reads more pixels than it says: ``as_dask`` and ``virtual_levels`` build graphs only,
``subsample_limits`` reads a few strided slices of the level it is given.

Damaged files: ``as_dask(..., where=...)`` wraps the source so a chunk that cannot be decoded raises
``UnreadableInputError`` naming the file, the level and the region (``y=.., x=..``) instead of a codec's
bare error; ``guard_blosc_decode`` (installed on import) makes numcodecs' Blosc refuse a truncated chunk,
which it would otherwise decode by reading past the end of the buffer (garbage pixels or a crash;
numcodecs issue 228).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from napari_medseg.core.errors import MedsegError, UnreadableInputError

logger = logging.getLogger(__name__)

TARGET_CHUNK = 1024
#: Largest dask chunk in bytes when the file's own chunk is a full-width strip.
MAX_CHUNK_BYTES = 64 * 2**20


# -- units ------------------------------------------------------------------------------------------
_LENGTH_IN_M = {
    "m": 1.0, "meter": 1.0, "metre": 1.0,
    "cm": 1e-2, "centimeter": 1e-2, "centimetre": 1e-2,
    "mm": 1e-3, "millimeter": 1e-3, "millimetre": 1e-3,
    "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6, "micrometer": 1e-6,
    "micrometre": 1e-6, "\\u00b5m": 1e-6,
    "nm": 1e-9, "nanometer": 1e-9, "nanometre": 1e-9,
    "å": 1e-10, "angstrom": 1e-10,
    "in": 0.0254, "inch": 0.0254,
}


def unit_to_meter(unit: str | None) -> float | None:
    """Meters per ``unit`` ("µm", "um", "micron", "mm", "nm", "cm", "inch"...), None if not a length."""
    if unit is None:
        return None
    return _LENGTH_IN_M.get(str(unit).strip().lower())


def convert_length(value: float, unit: str | None, target: str) -> float | None:
    """``value`` in ``unit`` expressed in ``target`` (e.g. 0.5 "um" -> 0.0005 "millimeter"); None if
    either unit is not a known length."""
    a, b = unit_to_meter(unit), unit_to_meter(target)
    if a is None or b is None:
        return None
    return float(value) * a / b


# -- dask wrapping ----------------------------------------------------------------------------------
def tile_multiple_chunks(file_chunks: Sequence[int], shape: Sequence[int], spatial: Sequence[int],
                         itemsize: int, target: int = TARGET_CHUNK) -> tuple[int, ...]:
    """Dask chunks that are whole multiples of the file's chunks (tiles or strips).

    Along the spatial axes in ``spatial`` each chunk becomes ``k * tile`` with ``k * tile`` close to
    ``target`` (at least one tile); other axes keep the file's chunk. Full-width strips keep their
    width and stack strips up to ``MAX_CHUNK_BYTES``."""
    out = [int(c) for c in file_chunks]
    for ax in spatial:
        c = max(1, int(file_chunks[ax]))
        if c < target:
            out[ax] = min(int(shape[ax]), c * max(1, target // c))
    # a strip layout (chunks as wide as the image): stack whole strips up to MAX_CHUNK_BYTES
    if len(spatial) >= 2:
        y, x = spatial[-2], spatial[-1]
        strip = max(1, int(file_chunks[y]))
        if int(file_chunks[x]) >= int(shape[x]) > target:
            row_bytes = int(np.prod([out[i] for i in range(len(out)) if i != y])) * itemsize
            out[y] = min(int(shape[y]), strip * max(1, MAX_CHUNK_BYTES // max(1, strip * row_bytes)))
    return tuple(min(int(s), max(1, int(c))) for s, c in zip(shape, out))


def as_dask(arr: Any, chunks: Sequence[int], name: str, *, where: str | None = None,
            axes: str | None = None) -> da.Array:
    """Wrap an array-like (zarr array, memmap, ``StridedView``) as dask with ``chunks``; the explicit
    ``name`` avoids hashing the source. With ``where`` (e.g. ``"slide.svs, level 0"``) a read that fails
    raises ``UnreadableInputError`` naming ``where`` and the region (``axes`` name the array's axes)."""
    if where is not None:
        arr = CheckedReads(arr, where, axes)
    return da.from_array(arr, chunks=tuple(int(c) for c in chunks), name=name, asarray=True, fancy=False,
                         inline_array=True, lock=False)


def describe_region(key: Any, shape: Sequence[int], axes: str | None = None) -> str:
    """``"y=128:256, x=0:512"`` for a tuple of slices/ints over an array of ``shape`` (axes e.g. ``"YXC"``;
    channel and unnamed axes are left out when they are whole)."""
    if not isinstance(key, tuple):
        key = (key,)
    names = axes if axes is not None and len(axes) == len(shape) else "".join(f"{i}" for i in range(len(shape)))
    parts = []
    for i, n in enumerate(shape):
        k = key[i] if i < len(key) else slice(None)
        if isinstance(k, slice):
            a, b, _ = k.indices(int(n))
            txt = f"{a}:{b}"
            whole = (a, b) == (0, int(n))
        else:
            txt, whole = str(k), False
        label = names[i].lower() if names[i].upper() in "TCZYXSQI" else f"axis {i}"
        if names[i].upper() in "ZYXQI" or not whole:
            parts.append(f"{label}={txt}")
    return ", ".join(parts)


class CheckedReads:
    """Array-like view of ``arr`` whose failing reads (a damaged chunk or tile) raise
    ``UnreadableInputError`` naming ``where`` and the region read, with the codec's reason."""

    def __init__(self, arr: Any, where: str, axes: str | None = None) -> None:
        self.arr, self.where, self.axes = arr, where, axes
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.arr[key]
        except (MedsegError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            region = describe_region(self._bad_chunk(key) or key, self.shape, self.axes)
            raise UnreadableInputError(
                f"{self.where}: the data at {region} could not be decoded ({type(e).__name__}: {e}); the file is "
                "damaged there. Copy it again from its source, or convert what can be read.") from e

    def _bad_chunk(self, key: Any, limit: int = 256) -> tuple[slice, ...] | None:
        """The first of the source's own chunks (file tiles) inside ``key`` that fails to read, to name
        its exact position; None if the source has no regular chunks or none fails alone."""
        chunks = getattr(self.arr, "chunks", None)
        if not isinstance(key, tuple) or not chunks or len(chunks) != self.ndim \
                or not all(isinstance(c, (int, np.integer)) for c in chunks):
            return None
        ranges = []
        for i, (n, c) in enumerate(zip(self.shape, chunks)):
            k = key[i] if i < len(key) else slice(None)
            a, b = (k.indices(n)[:2] if isinstance(k, slice) else (int(k), int(k) + 1))
            ranges.append(range(a // c * c, b, c) if b > a else range(0))
        if math.prod(len(r) for r in ranges) > limit:
            return None
        for starts in np.ndindex(*[len(r) for r in ranges]):
            box = tuple(slice(r[j], min(r[j] + int(c), n)) for r, j, c, n in zip(ranges, starts, chunks, self.shape))
            try:
                self.arr[box]
            except Exception:
                return box
        return None

    def __reduce__(self) -> Any:
        return (CheckedReads, (self.arr, self.where, self.axes))


# -- a truncated Blosc chunk -------------------------------------------------------------------------
_BLOSC_HEADER = 16


def guard_blosc_decode() -> None:
    """Make ``numcodecs.Blosc.decode`` refuse a buffer shorter than its header says (``cbytes``, bytes
    12-16): c-blosc would read past its end. Idempotent; applies to zarr v2 and v3 Blosc chunks and to
    the label store's chunk files alike."""
    try:
        from numcodecs import blosc
        from numcodecs.compat import ensure_contiguous_ndarray
    except ImportError:  # pragma: no cover - numcodecs comes with zarr
        return
    real = blosc.Blosc.decode
    if getattr(real, "_medseg_guarded", False):
        return

    def decode(self: Any, buf: Any, out: Any = None) -> Any:
        view = memoryview(ensure_contiguous_ndarray(buf)).cast("B")
        n = view.nbytes
        cbytes = int.from_bytes(bytes(view[12:16]), "little") if n >= _BLOSC_HEADER else -1
        if n < _BLOSC_HEADER or cbytes > n or cbytes < _BLOSC_HEADER:
            raise ValueError(f"truncated or corrupt Blosc chunk ({n} bytes, its header says {cbytes})")
        return real(self, buf, out)

    decode._medseg_guarded = True  # type: ignore[attr-defined]
    decode.__doc__ = real.__doc__
    blosc.Blosc.decode = decode  # type: ignore[method-assign]


guard_blosc_decode()


class StridedView:
    """A lazy nearest-neighbour downsample of ``base`` by integer ``factor`` along ``axes``.

    ``view[region]`` reads only the rows/columns it needs: basic slicing with a step for numpy arrays
    and memmaps (untouched pages are never read), orthogonal integer selection for zarr arrays (only
    the chunks that hold those rows/columns are decoded). Memory per read stays that of the output
    plus one source chunk row."""

    def __init__(self, base: Any, factor: int, axes: Sequence[int]) -> None:
        self.base = base
        self.factor = int(factor)
        self.axes = tuple(axes)
        self.dtype = np.dtype(base.dtype)
        self.shape = tuple(math.ceil(s / self.factor) if i in self.axes else int(s)
                           for i, s in enumerate(base.shape))
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        src: list[Any] = []
        for i, (k, n) in enumerate(zip(key, self.shape)):
            start, stop, step = k.indices(n) if isinstance(k, slice) else (int(k), int(k) + 1, 1)
            if i in self.axes:
                src.append(slice(start * self.factor, stop * self.factor, step * self.factor))
            else:
                src.append(slice(start, stop, step))
        if isinstance(self.base, np.ndarray):
            out = np.asarray(self.base[tuple(src)])
        else:  # zarr: orthogonal selection with integer arrays along strided axes
            sel = tuple(np.arange(s.start, s.stop, s.step) if (s.step or 1) != 1 else s for s in src)
            if any(isinstance(s, np.ndarray) for s in sel):
                out = np.asarray(self.base.get_orthogonal_selection(sel))
            else:
                out = np.asarray(self.base[sel])
        squeeze = tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
        return out.squeeze(axis=squeeze) if squeeze else out


def virtual_levels(base: Any, level0: da.Array, yx_axes: Sequence[int], name: str,
                   min_side: int = 1024, *, where: str | None = None, axes: str | None = None) -> list[da.Array]:
    """Levels 1.. of a pyramid the file does not have: nearest-neighbour views of ``base`` by 2, 4, 8...
    until the larger of Y/X is at most ``min_side``. Each level is chunked like ``level0`` (not like
    ``level0`` strided), so a coarse view stays a handful of chunks. ``where``/``axes``: see ``as_dask``."""
    out: list[da.Array] = []
    f = 2
    while True:
        view = StridedView(base, f, yx_axes)
        chunks = tuple(min(s, max(c)) for s, c in zip(view.shape, level0.chunks))
        out.append(as_dask(view, chunks, f"{name}-virtual{f}", axes=axes,
                           where=None if where is None else f"{where} (read every {f}th pixel)"))
        if max(view.shape[a] for a in yx_axes) <= min_side:
            return out
        f *= 2


def keep_shrinking(shapes: Sequence[Sequence[int]]) -> list[int]:
    """Indices of levels to keep so spatial shapes shrink strictly (none grows, not all equal).
    ``shapes`` are spatial shapes, level 0 first; a level that fails is dropped (and logged)."""
    keep = [0]
    for i in range(1, len(shapes)):
        prev = shapes[keep[-1]]
        cur = shapes[i]
        if all(c <= p for c, p in zip(cur, prev)) and tuple(cur) != tuple(prev):
            keep.append(i)
        else:
            logger.info("dropping pyramid level %d with shape %s after %s: it does not shrink", i, cur, prev)
    return keep


def subsample_limits(arr: Any, axes: str, n_slices: int = 8, max_side: int = 256,
                     percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float] | None:
    """Contrast limits from percentiles of a small strided subsample of ``arr`` (axes e.g. ``ZYX``,
    ``YX``, ``CZYX``): at most ``n_slices`` Z slices, each strided to about ``max_side`` px."""
    sel: list[Any] = []
    for a, n in zip(axes, arr.shape):
        if a == "Z":
            sel.append(np.unique(np.linspace(0, n - 1, min(n, n_slices)).round().astype(int)))
        elif a in "YX":
            sel.append(slice(None, None, max(1, math.ceil(n / max_side))))
        else:
            sel.append(slice(None))
    try:
        parts = []
        z = [i for i, a in enumerate(axes) if a == "Z"]
        if z:
            zi = z[0]
            for idx in sel[zi]:
                s = list(sel)
                s[zi] = int(idx)
                parts.append(np.asarray(arr[tuple(s)]).ravel())
            sample = np.concatenate(parts)
        else:
            sample = np.asarray(arr[tuple(sel)]).ravel()
    except Exception as e:  # contrast is a nicety; never fail an open on it
        logger.debug("contrast subsample failed: %s", e)
        return None
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if sample.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi
