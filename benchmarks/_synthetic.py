"""Synthetic whole-slide images for benchmarks (generated once, cached by parameters, never timed).

``make_pyramidal_tiff(path, height, width, tissue_fraction, tile=512, seed=0, compression="jpeg", mpp=0.5)``
writes an RGB pyramidal tiled TIFF (BigTIFF, levels as SubIFDs, resolution tags for ``mpp`` in
micrometer per pixel): white background tiles plus tissue blobs covering ``tissue_fraction`` of the tiles,
textured like H&E (pink stroma, purple nuclei). It is fast at any size: the few distinct tiles are JPEG-
encoded once and the file is written through tifffile's tile iterator (50k x 50k px in seconds).

``path`` may be a file path or a folder (the file name is then derived from the parameters). The
parameters are stored next to the file (``<file>.json``); a matching cached file is returned as is.
``tissue_tile_mask(...)`` gives the ground-truth tissue layout (one bool per level-0 tile).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from skimage.draw import disk
from skimage.filters import gaussian

CACHE_DIR = Path(__file__).resolve().parent / "_cache"
WHITE = (242, 242, 240)
N_TISSUE_TILES = 24
GENERATOR_VERSION = 2


def tissue_tile_mask(height: int, width: int, tissue_fraction: float, tile: int = 512, seed: int = 0) -> np.ndarray:
    """Bool mask over the level-0 tile grid (``ceil(H/tile) x ceil(W/tile)``): smooth blobs covering
    ``tissue_fraction`` of the tiles."""
    gh, gw = math.ceil(height / tile), math.ceil(width / tile)
    rng = np.random.default_rng(seed)
    field = gaussian(rng.random((gh, gw)), sigma=max(1.0, min(gh, gw) / 10), mode="reflect")
    if tissue_fraction <= 0:
        return np.zeros((gh, gw), bool)
    if tissue_fraction >= 1:
        return np.ones((gh, gw), bool)
    return field >= np.quantile(field, 1 - tissue_fraction)


def _tissue_tile(tile: int, rng: np.random.Generator) -> np.ndarray:
    """One H&E-like tile (YXC uint8): pink stroma with texture, purple nuclei."""
    noise = gaussian(rng.random((tile, tile)), sigma=3) - 0.5
    base = np.empty((tile, tile, 3), np.float32)
    for c, (v, amp) in enumerate(((228, 60), (160, 90), (200, 50))):
        base[..., c] = v + amp * noise * 4
    for _ in range(int(rng.integers(80, 160))):
        r = float(rng.uniform(3, 8))
        rr, cc = disk((rng.uniform(0, tile), rng.uniform(0, tile)), r, shape=(tile, tile))
        base[rr, cc] = (95 + rng.normal(0, 10), 60 + rng.normal(0, 10), 150 + rng.normal(0, 10))
    return np.clip(base, 0, 255).astype(np.uint8)


def _cache_name(height: int, width: int, tissue_fraction: float, tile: int, seed: int, compression: str,
                mpp: float) -> str:
    return f"slide_{height}x{width}_t{tissue_fraction:g}_tile{tile}_s{seed}_{compression}_mpp{mpp:g}.tif"


def make_pyramidal_tiff(path: str | os.PathLike, height: int, width: int, tissue_fraction: float, tile: int = 512,
                        seed: int = 0, compression: str = "jpeg", mpp: float = 0.5) -> Path:
    """Write (or reuse from cache) the synthetic slide and return its path. See the module docstring."""
    params = {"height": int(height), "width": int(width), "tissue_fraction": float(tissue_fraction),
              "tile": int(tile), "seed": int(seed), "compression": str(compression), "mpp": float(mpp),
              "version": GENERATOR_VERSION}
    p = Path(path)
    if p.is_dir() or p.suffix.lower() not in (".tif", ".tiff", ".btf"):  # a folder: name from the parameters
        p = p / _cache_name(height, width, tissue_fraction, tile, seed, compression, mpp)
    side = p.with_name(p.name + ".json")
    if p.exists() and side.exists():
        try:
            if json.loads(side.read_text()) == params:
                return p
        except (OSError, ValueError):
            pass
    p.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    white = np.empty((tile, tile, 3), np.uint8)
    white[:] = WHITE
    bank = [_tissue_tile(tile, rng) for _ in range(N_TISSUE_TILES)]
    jpeg = compression == "jpeg"

    def enc(a: np.ndarray) -> bytes | np.ndarray:
        return imagecodecs.jpeg_encode(a, level=85) if jpeg else a

    white_t = enc(white)
    bank_t = [enc(b) for b in bank]
    mask0 = tissue_tile_mask(height, width, tissue_fraction, tile, seed)
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))

    def small(a: np.ndarray, f: int) -> np.ndarray:
        """``a`` (tile x tile x 3) shrunk by ``f`` (2x2... block mean)."""
        n = tile // f
        return a[: n * f, : n * f].reshape(n, f, n, f, 3).mean(axis=(1, 3)).astype(np.uint8)

    def level_tiles(k: int) -> Iterator[bytes | np.ndarray]:
        """Level-0 tiles pick a textured tile per tissue tile; a level-k tile is the mosaic of the
        (2^k)^2 level-0 tiles it covers, each shrunk by 2^k (memoised by tissue pattern)."""
        h, w = shapes[k]
        gh, gw = math.ceil(h / tile), math.ceil(w / tile)
        f = 2**k
        pick = np.random.default_rng(seed + k)
        memo: dict[bytes, bytes | np.ndarray] = {}
        shrunk = [small(b, f) for b in bank] if k else []
        white_small = small(white, f) if k else white
        for ty in range(gh):
            for tx in range(gw):
                if k == 0:
                    yield bank_t[int(pick.integers(len(bank_t)))] if mask0[ty, tx] else white_t
                    continue
                m = np.zeros((f, f), bool)
                sub = mask0[ty * f:(ty + 1) * f, tx * f:(tx + 1) * f]
                m[: sub.shape[0], : sub.shape[1]] = sub
                key = m.tobytes()
                if key not in memo:
                    n = tile // f
                    mosaic = np.empty((tile, tile, 3), np.uint8)
                    for i in range(f):
                        for j in range(f):
                            mosaic[i * n:(i + 1) * n, j * n:(j + 1) * n] = (
                                shrunk[(i * f + j) % len(shrunk)] if m[i, j] else white_small)
                    memo[key] = enc(mosaic)
                yield memo[key]

    res = 1e4 / mpp  # pixels per centimeter
    tmp = p.with_name(p.name + ".tmp")
    kw = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", metadata=None,
              compression=None if compression in ("none", None) else compression, resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        tw.write(level_tiles(0), shape=(height, width, 3), subifds=len(shapes) - 1, resolution=(res, res),
                 description=json.dumps({"synthetic_slide": params}), **kw)
        for k in range(1, len(shapes)):
            tw.write(level_tiles(k), shape=(*shapes[k], 3), subfiletype=1, resolution=(res / 2**k, res / 2**k), **kw)
    os.replace(tmp, p)
    side.write_text(json.dumps(params))
    return p


if __name__ == "__main__":  # pragma: no cover - manual use: python benchmarks/_synthetic.py H W FRACTION
    import sys
    import time

    t = time.perf_counter()
    h, w, frac = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    out = make_pyramidal_tiff(CACHE_DIR, h, w, frac)
    print(f"{out} ({out.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
