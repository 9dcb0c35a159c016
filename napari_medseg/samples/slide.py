"""A deterministic H&E-like whole slide with ground truth, generated tile by tile into the cache.

The slide (``SIZE`` x ``SIZE`` px, 0.5 um/px, i.e. 4 x 4 mm at 20x) shows irregular tissue fragments on a
white glass background (about half the area), pink collagen-rich stroma with wavy fibres and spindle
nuclei, clusters of small round lymphocytes, and glands: a ring of purple epithelium with basal nuclei
around a pale lumen. Colours come from Beer-Lambert mixing of haematoxylin and eosin optical densities
(Macenko's reference stain vectors) with smooth slide-wide stain-intensity variation and pixel noise.

Files (in ``cache.cache_dir()``, the version key in the name):

- ``sample-slide-v{VERSION}.ome.tif``: RGB, 512 px JPEG tiles, SubIFD pyramid (``SIZE`` / 2**k, 5 levels),
  OME PhysicalSize 0.5 um;
- ``sample-slide-v{VERSION}-labels.ome.tif``: uint8 ground truth in the label-store convention
  (0 not annotated, 1 background (glass), 2 stroma, 3 gland (epithelium and lumen), 4 nucleus), zlib
  tiles, nearest-neighbour pyramid. Class names and colours: ``sample_data/slide_classes.json``.

Everything derives from ``SEED``: two generations write the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.samples.cache import ensure_files, is_cached

logger = logging.getLogger(__name__)

VERSION = 1
SEED = 20260101
SIZE = 8192          # level 0 side (px)
TILE = 512           # TIFF tile side (px)
MPP = 0.5            # micrometer per pixel
N_LEVELS = 5
COARSE = 16          # slide-wide fields are computed at SIZE / COARSE and interpolated
TEX = 1024           # side of the periodic texture patches (fibres, chromatin)
BLOCK = 8            # smooth slide-wide fields are evaluated per BLOCK x BLOCK pixels
# store values
BACKGROUND, STROMA, GLAND, NUCLEUS = 1, 2, 3, 4
# Macenko reference stain vectors (optical density per RGB channel), haematoxylin and eosin
H_VEC = np.array([0.5626, 0.7201, 0.4062], np.float32)
E_VEC = np.array([0.2159, 0.8012, 0.5581], np.float32)
SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"


def slide_classes() -> ClassSchema:
    """The sample slide's classes (``sample_data/slide_classes.json``)."""
    return ClassSchema.from_dict(json.loads((SAMPLE_DATA / "slide_classes.json").read_text()))


# --------------------------------------------------------------------------------------------------------
# scene: tissue field, glands and nuclei, all in level-0 pixel coordinates
# --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Scene:
    size: int
    tissue: np.ndarray       # (size/COARSE)^2 float32: tissue where > 0 (signed, smooth)
    stain: np.ndarray        # (3, n, n) float32: haematoxylin, eosin, thickness multipliers
    fibre: np.ndarray        # (n, n) float32: collagen fibre direction (radians)
    textures: np.ndarray     # (5, TEX, TEX) float32 periodic: fibres at 0/60/120 degrees, chromatin, blobs
    noise: np.ndarray        # (TEX + TILE, TEX + TILE, 3) float32 white noise, read at a random offset per tile
    glands: np.ndarray       # (G, 9): cy, cx, a, b, angle, thickness, 3 harmonic amplitudes
    nuclei: np.ndarray       # (N, 6): cy, cx, semi-axis along, semi-axis across, angle, darkness
    tile_nuclei: dict[tuple[int, int], np.ndarray]


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-6)


def _periodic_texture(rng: np.random.Generator, sigma_along: float, sigma_across: float, angle: float) -> np.ndarray:
    """A periodic (wrap-around) TEX x TEX noise texture, smoothed by an oriented Gaussian (Fourier domain)."""
    f = np.fft.fftfreq(TEX).astype(np.float32)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    fu = fx * math.cos(angle) + fy * math.sin(angle)      # frequency along the fibres
    fv = -fx * math.sin(angle) + fy * math.cos(angle)     # across
    kernel = np.exp(-2 * math.pi ** 2 * ((fu * sigma_along) ** 2 + (fv * sigma_across) ** 2))
    t = np.fft.ifft2(np.fft.fft2(rng.standard_normal((TEX, TEX))) * kernel).real.astype(np.float32)
    return (t - t.mean()) / (t.std() + 1e-6)


def _coarse_at(field: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear value of a coarse field at level-0 pixel coordinates."""
    return ndimage.map_coordinates(field, [(y + 0.5) / COARSE - 0.5, (x + 0.5) / COARSE - 0.5],
                                   order=1, mode="nearest")


def _build_scene(seed: int, size: int) -> _Scene:
    rng = np.random.default_rng(seed)
    n = size // COARSE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
    envelope = 1.0 - (np.hypot(yy * 1.1, xx) / 0.5) ** 4            # no tissue at the slide edges
    field = _smooth_noise(rng, n, n / 14) + 0.35 * _smooth_noise(rng, n, n / 60) + 1.6 * envelope
    thr = np.quantile(field, 0.55)                                      # about 45 % tissue
    tissue = (field - thr).astype(np.float32)
    stain = np.stack([1 + 0.13 * _smooth_noise(rng, n, n / 10), 1 + 0.12 * _smooth_noise(rng, n, n / 8),
                      1 + 0.08 * _smooth_noise(rng, n, n / 25)]).astype(np.float32)
    fibre = (np.pi * _smooth_noise(rng, n, n / 12)).astype(np.float32)
    textures = np.stack([_periodic_texture(rng, 14.0, 1.3, k * math.pi / 3) for k in range(3)]
                        + [_periodic_texture(rng, 1.0, 1.0, 0.0), _periodic_texture(rng, 9.0, 9.0, 0.0)])
    gland_zone = _smooth_noise(rng, n, n / 8)

    # glands: rejection sampling inside tissue (well inside), denser in the "mucosa" zone, no overlap
    glands: list[list[float]] = []
    for _ in range(4000):
        if len(glands) >= 90:
            break
        cy, cx = rng.uniform(0.08, 0.92, 2) * size
        r = rng.uniform(70, 190)
        a, b = r * rng.uniform(1.0, 1.6), r
        iy, ix = int(cy / COARSE), int(cx / COARSE)
        if tissue[iy, ix] < 0.35 or rng.uniform() > 0.25 + 0.6 * (gland_zone[iy, ix] > 0):
            continue
        ring = [(cy + a * 1.15 * math.sin(t), cx + a * 1.15 * math.cos(t)) for t in np.linspace(0, 2 * math.pi, 12)]
        if min(float(_coarse_at(tissue, np.array([p[0]]), np.array([p[1]]))[0]) for p in ring) < 0.12:
            continue
        if any(math.hypot(cy - g[0], cx - g[1]) < a + g[2] + 30 for g in glands):
            continue
        glands.append([cy, cx, a, b, rng.uniform(0, math.pi), rng.uniform(26, 40), *rng.uniform(-0.07, 0.07, 3)])
    g_arr = np.asarray(glands, np.float64).reshape(-1, 9)

    nuclei: list[np.ndarray] = []
    # epithelial nuclei: basal half of each gland's epithelium, elongated radially, closely packed
    for cy, cx, a, b, ang, t, h1, h2, h3 in g_arr:
        m = int(2 * math.pi * (a + b) / 2 / 15)
        phi = np.linspace(0, 2 * math.pi, m, endpoint=False) + rng.uniform(0, 0.2, m)
        rho = 1 - (t / b) * rng.uniform(0.25, 0.45, m)
        wob = 1 + h1 * np.cos(2 * phi) + h2 * np.cos(3 * phi + 1) + h3 * np.sin(5 * phi)
        ly, lx = rho * wob * b * np.sin(phi), rho * wob * a * np.cos(phi)
        ny = cy + lx * math.sin(ang) + ly * math.cos(ang)
        nx = cx + lx * math.cos(ang) - ly * math.sin(ang)
        radial = np.arctan2(ny - cy, nx - cx)
        nuclei.append(np.stack([ny, nx, rng.uniform(8, 11, m), rng.uniform(4.5, 6, m), radial,
                                rng.uniform(0.9, 1.15, m)], 1))
    # stromal spindle nuclei (sparse, along the fibres) and lymphocyte clusters (small, round, dark)
    k = int(size * size * 0.45 / 2200)
    sy, sx = rng.uniform(0, size, k), rng.uniform(0, size, k)
    sel = _coarse_at(tissue, sy, sx) > 0.02
    sy, sx = sy[sel], sx[sel]
    th = _coarse_at(fibre, sy, sx)
    nuclei.append(np.stack([sy, sx, rng.uniform(9, 14, sy.size), rng.uniform(2.8, 4.0, sy.size), th,
                            rng.uniform(0.75, 1.0, sy.size)], 1))
    for _ in range(14):
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        if _coarse_at(tissue, np.array([cy]), np.array([cx]))[0] < 0.2:
            continue
        m = int(rng.integers(150, 400))
        ly, lx = cy + rng.normal(0, 110, m), cx + rng.normal(0, 110, m)
        sel = _coarse_at(tissue, ly, lx) > 0.02
        ly, lx = ly[sel], lx[sel]
        rad = rng.uniform(5.0, 6.5, ly.size)
        nuclei.append(np.stack([ly, lx, rad, rad * rng.uniform(0.85, 1.0, ly.size), rng.uniform(0, math.pi, ly.size),
                                rng.uniform(1.15, 1.35, ly.size)], 1))
    nuc = np.concatenate(nuclei).astype(np.float64)
    # drop stromal/lymphocyte nuclei that fall into a gland lumen (epithelial ones are placed on purpose)
    n_epi = sum(len(a) for a in nuclei[: len(g_arr)])
    keep = np.ones(len(nuc), bool)
    for cy, cx, a, *_ in g_arr:
        d = np.hypot(nuc[n_epi:, 0] - cy, nuc[n_epi:, 1] - cx)
        keep[n_epi:][d < 1.2 * a] = False
    nuc = nuc[keep]
    tile_nuclei: dict[tuple[int, int], list[int]] = {}
    reach = nuc[:, 2] + 3
    for i, (cy, cx) in enumerate(nuc[:, :2]):
        for ty in range(max(0, int((cy - reach[i]) // TILE)), min(size // TILE, int((cy + reach[i]) // TILE) + 1)):
            for tx in range(max(0, int((cx - reach[i]) // TILE)), min(size // TILE, int((cx + reach[i]) // TILE) + 1)):
                tile_nuclei.setdefault((ty, tx), []).append(i)
    noise = rng.standard_normal((TEX + TILE, TEX + TILE, 3), dtype=np.float32)
    return _Scene(size, tissue, stain, fibre, textures, noise, g_arr, nuc,
                  {k: np.asarray(v, np.int64) for k, v in tile_nuclei.items()})


# --------------------------------------------------------------------------------------------------------
# rendering one tile: stain densities -> RGB (YXC uint8) and labels (YX uint8)
# --------------------------------------------------------------------------------------------------------
def _blocks_at(field: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """A slow slide-wide coarse field over one tile, one value per BLOCK x BLOCK pixels (float32)."""
    c = (np.arange(TILE // BLOCK, dtype=np.float32) * BLOCK + BLOCK / 2)
    yy, xx = np.meshgrid(y0 + c, x0 + c, indexing="ij")
    return _coarse_at(field, yy, xx).astype(np.float32)


def _expand(blocks: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(blocks, BLOCK, axis=0), BLOCK, axis=1)


def _render_tile(scene: _Scene, ty: int, tx: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, ty, tx])
    oy, ox = rng.integers(0, TEX, 2)
    noise = scene.noise[oy:oy + TILE, ox:ox + TILE]
    y0, x0 = ty * TILE, tx * TILE
    c0y, c0x, m = y0 // COARSE, x0 // COARSE, TILE // COARSE
    win = scene.tissue[max(0, c0y - 1):c0y + m + 1, max(0, c0x - 1):c0x + m + 1]
    edge = 0.015                                               # the tissue edge is soft over |t| < edge
    if win.max() < -edge:                                      # glass only
        od = np.broadcast_to(0.012 * H_VEC + 0.012 * E_VEC, (TILE, TILE, 3))
        od = od + noise * 0.012
        return np.clip(244.0 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8), np.full((TILE, TILE), BACKGROUND, np.uint8)
    if win.min() > edge:
        t = np.ones((TILE, TILE), np.float32)
    else:
        yy, xx = np.mgrid[y0:y0 + TILE, x0:x0 + TILE].astype(np.float32)
        t = _coarse_at(scene.tissue, yy, xx)
    tissue = np.clip(t / (2 * edge) + 0.5, 0, 1)
    lab = np.where(t > 0, STROMA, BACKGROUND).astype(np.uint8)
    ty0, tx0 = y0 % TEX, x0 % TEX
    tex = scene.textures[:, ty0:ty0 + TILE, tx0:tx0 + TILE]
    theta = _blocks_at(scene.fibre, y0, x0)
    w = np.cos(theta[None] - np.array([0, math.pi / 3, 2 * math.pi / 3], np.float32)[:, None, None]) ** 2
    w = w * w
    w /= w.sum(axis=0)
    fib = sum(_expand(w[k]) * tex[k] for k in range(3))
    hem = np.full((TILE, TILE), 0.07, np.float32)
    eos = 0.48 + 0.09 * fib + 0.05 * tex[4]
    for cy, cx, a, b, ang, th, h1, h2, h3 in scene.glands:
        r = a * 1.12 + 2
        if cy + r < y0 or cy - r > y0 + TILE or cx + r < x0 or cx - r > x0 + TILE:
            continue
        sy0, sy1 = max(y0, int(cy - r)), min(y0 + TILE, int(cy + r) + 1)
        sx0, sx1 = max(x0, int(cx - r)), min(x0 + TILE, int(cx + r) + 1)
        gy, gx = np.mgrid[sy0:sy1, sx0:sx1].astype(np.float32)
        dy, dx = gy - cy, gx - cx
        u = dx * math.cos(ang) + dy * math.sin(ang)
        v = -dx * math.sin(ang) + dy * math.cos(ang)
        phi = np.arctan2(v / b, u / a)
        wob = 1 + h1 * np.cos(2 * phi) + h2 * np.cos(3 * phi + 1) + h3 * np.sin(5 * phi)
        rho = np.hypot(u / a, v / b) / wob
        sl = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
        gland = (rho < 1) & (t[sl] > 0)
        lumen = gland & (rho < 1 - th / b)
        epi = gland & ~lumen
        lab[sl][gland] = GLAND
        hem[sl] = np.where(epi, 0.24 + 0.04 * tex[3][sl], np.where(lumen, 0.02, hem[sl]))
        eos[sl] = np.where(epi, 0.36 + 0.05 * tex[4][sl], np.where(lumen, 0.05 + 0.04 * np.maximum(tex[4][sl], 0), eos[sl]))
    idx = scene.tile_nuclei.get((ty, tx))
    if idx is not None:
        for cy, cx, la, lb, ang, dark in scene.nuclei[idx]:
            r = la + 2
            sy0, sy1 = max(y0, int(cy - r)), min(y0 + TILE, int(cy + r) + 2)
            sx0, sx1 = max(x0, int(cx - r)), min(x0 + TILE, int(cx + r) + 2)
            if sy0 >= sy1 or sx0 >= sx1:
                continue
            gy, gx = np.mgrid[sy0:sy1, sx0:sx1].astype(np.float32)
            dy, dx = gy - cy, gx - cx
            u = (dx * math.cos(ang) + dy * math.sin(ang)) / la
            v = (-dx * math.sin(ang) + dy * math.cos(ang)) / lb
            rr = np.sqrt(u * u + v * v) * (1 + 0.05 * np.cos(3 * np.arctan2(v, u) + cy))  # not quite elliptic
            sl = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
            inside = (rr < 1) & (t[sl] > 0)
            lab[sl][inside] = NUCLEUS
            w = np.clip((1.12 - rr) / 0.25, 0, 1)                # soft nuclear edge
            chrom = dark * (1.0 + 0.2 * rr * rr + 0.2 * tex[3][sl])  # darker rim, chromatin grain
            hem[sl] = np.maximum(hem[sl], w * chrom)
            eos[sl] = eos[sl] * (1 - 0.6 * w)
    sh, se, st = (_blocks_at(scene.stain[i], y0, x0) for i in range(3))
    thick = _expand(st) * tissue
    hem = hem * _expand(sh) * thick + 0.012
    eos = eos * _expand(se) * thick + 0.012
    od = hem[..., None] * H_VEC + eos[..., None] * E_VEC
    od += noise * (0.012 + 0.02 * tissue[..., None])
    rgb = 244.0 * np.exp(-od)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), lab


def _downsample_mean(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2, a.shape[1] // 2
    b = a[: 2 * h, : 2 * w].reshape(h, 2, w, 2, *a.shape[2:]).astype(np.uint16).sum(axis=(1, 3))
    return ((b + 2) // 4).astype(np.uint8)


#: shares of the generation time: the scene, the image's tiles and levels, the labels (measured on the
#: 2-core VM: 1.2, 9.0 and 0.3 s of 10.5 s)
_STAGES = (0.1, 0.87, 0.03)


def generate_slide(image_path: Path, labels_path: Path, seed: int = SEED, size: int = SIZE,
                   progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Write the slide and its ground truth (both OME-TIFF pyramids). Returns timing and class fractions.
    ``progress(fraction)`` is called as the work advances (0 to 1, never decreasing)."""
    import tifffile

    report = progress or (lambda _f: None)
    report(0.0)
    t0 = time.perf_counter()
    scene = _build_scene(seed, size)
    t_scene = time.perf_counter() - t0
    n = size // TILE
    labels = np.empty((size, size), np.uint8)
    half = np.empty((size // 2, size // 2, 3), np.uint8)
    report(_STAGES[0])

    def tiles():
        for ty in range(n):
            for tx in range(n):
                report(_STAGES[0] + _STAGES[1] * (ty * n + tx) / (n * n))
                rgb, lab = _render_tile(scene, ty, tx, seed)
                labels[ty * TILE:(ty + 1) * TILE, tx * TILE:(tx + 1) * TILE] = lab
                half[ty * TILE // 2:(ty + 1) * TILE // 2, tx * TILE // 2:(tx + 1) * TILE // 2] = _downsample_mean(rgb)
                yield rgb

    ome_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari-medseg/sample-slide/{VERSION}/{seed}/{size}"))
    res = {"resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
    meta = {"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm", "Name": "napari-medseg sample slide", "UUID": ome_uuid}
    with tifffile.TiffWriter(image_path, bigtiff=False, ome=True) as tw:
        opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 90}}
        tw.write(tiles(), shape=(size, size, 3), dtype=np.uint8, subifds=N_LEVELS - 1, metadata=meta, **res, **opts)
        lvl = half
        for k in range(1, N_LEVELS):
            tw.write(lvl, subfiletype=1, resolution=(1e4 / (MPP * 2**k),) * 2, resolutionunit="CENTIMETER", **opts)
            lvl = _downsample_mean(lvl)
    t_image = time.perf_counter() - t0
    report(_STAGES[0] + _STAGES[1])
    meta_l = {**meta, "axes": "YX", "Name": "napari-medseg sample slide ground truth",
              "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, ome_uuid + "/labels"))}
    with tifffile.TiffWriter(labels_path, bigtiff=False, ome=True) as tw:
        opts = {"tile": (TILE, TILE), "photometric": "minisblack", "compression": "zlib"}
        tw.write(labels, subifds=N_LEVELS - 1, metadata=meta_l, **res, **opts)
        for k in range(1, N_LEVELS):
            tw.write(labels[:: 2**k, :: 2**k], subfiletype=1, resolution=(1e4 / (MPP * 2**k),) * 2,
                     resolutionunit="CENTIMETER", **opts)
    report(1.0)
    counts = np.bincount(labels[::4, ::4].ravel(), minlength=5)
    fractions = {name: float(c) / counts.sum() for name, c in zip(("background", "stroma", "gland", "nucleus"), counts[1:])}
    info = {"seconds": time.perf_counter() - t0, "scene_seconds": t_scene, "image_seconds": t_image,
            "glands": len(scene.glands), "nuclei": len(scene.nuclei), "fractions": fractions}
    logger.info("sample slide generated in %.1f s: %s", info["seconds"], info)
    return info


_SLIDE_FILES = (f"sample-slide-v{VERSION}.ome.tif", f"sample-slide-v{VERSION}-labels.ome.tif")
#: sides (px) the slide can be generated at: ``SIZE`` (the sample) or a smaller one, e.g. for a quick CLI walkthrough
SIZES = (1024, 2048, 4096, SIZE)


def _slide_files(size: int) -> tuple[str, str]:
    if size == SIZE:
        return _SLIDE_FILES
    return (f"sample-slide-v{VERSION}-{size}px.ome.tif", f"sample-slide-v{VERSION}-{size}px-labels.ome.tif")


def sample_slide_cached() -> bool:
    """Whether the sample slide is already in the cache (else the next use generates it: 20-40 s)."""
    return is_cached(_SLIDE_FILES)


def sample_slide_paths(progress: Callable[[float], None] | None = None, size: int = SIZE) -> tuple[Path, Path]:
    """(image, ground truth) in the cache, generated on first use (20-40 s on the 2-core VM), reporting
    ``progress(fraction)`` while it generates. ``size`` (one of ``SIZES``): a smaller slide of the same kind
    (same seed, same pixel size, fewer glands), cached under its own name; 2048 px takes about 1 s."""
    if size not in SIZES:
        raise MedsegError(f"the sample slide comes in sides {', '.join(map(str, SIZES))} px, not {size}")
    img, lab = ensure_files(list(_slide_files(size)),
                            lambda tmp: generate_slide(tmp[0], tmp[1], size=size, progress=progress))
    return img, lab


def sample_slide_path() -> Path:
    """The sample slide (OME-TIFF pyramid), generated into the cache if missing."""
    return sample_slide_paths()[0]


def load_sample_slide(progress: Callable[[float], None] | None = None) -> tuple[ImageSource, ImageSource]:
    """(slide, ground truth) as lazy ``ImageSource`` pyramids (``YXC`` RGB and ``YX`` labels, 0.5 um/px),
    read back through ``napari_medseg.io.open_path``; ``progress`` as in ``sample_slide_paths``."""
    from napari_medseg.io.reader import open_path

    img_path, lab_path = sample_slide_paths(progress)
    img = open_path(img_path)[0]
    img.name = "sample slide (H&E-like)"
    img.modality = "brightfield"
    lab = open_path(lab_path)[0]
    schema = slide_classes()
    lab = dataclasses.replace(lab, kind="labels", name="ground truth", contrast_limits=None,
                              metadata={**lab.metadata, "classes": schema.to_dict(), "value_convention": "store"})
    return img, lab
