"""Small synthetic TIFFs and zarrs for the IO tests (written with tifffile/zarr, a few ms each).

Images are deterministic: a smooth color gradient plus mild texture, so each pyramid level differs and
JPEG stays close to the source. Shapes are (Y, X[, C]); pyramids halve per level.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

SLIDE_SHAPE = (1500, 2000)  # (H, W) of level 0

# Test modules import these helpers as ``medseg_io_synth``: a bare ``from conftest import`` can resolve to
# another folder's conftest.py when several are loaded (pytest keeps only the last as "conftest").
if getattr(sys.modules.get(__name__), "__file__", None) == __file__:
    sys.modules["medseg_io_synth"] = sys.modules[__name__]


def rgb_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (YXC uint8) with mild texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    img = np.stack([
        128 + 100 * np.sin(xx / 97.0),
        128 + 100 * np.cos(yy / 131.0),
        128 + 60 * np.sin((xx + yy) / 211.0),
    ], axis=-1)
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def pyramid(img: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """Level 0 first, each level the 2x2 mean of the previous one (odd edges cropped)."""
    levels = [img]
    for _ in range(n_levels - 1):
        a = levels[-1]
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w].astype(np.float32)
        a = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4
        levels.append(a.round().astype(img.dtype))
    return levels


def write_svs(path: Path, shape=SLIDE_SHAPE, n_levels: int = 3, mpp: float = 0.2527, tile: int = 256,
              compression: str = "jpeg") -> Path:
    """An Aperio-SVS-like file: baseline, thumbnail, reduced levels, label and macro pages."""
    img = rgb_image(*shape)
    levels = pyramid(img, n_levels)
    h, w = shape
    desc = (f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
            f"|AppMag = 40|StripeWidth = 2040|ScanScope ID = SS1234|MPP = {mpp}|Left = 25.0|Top = 18.0")
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        kw = dict(tile=(tile, tile), compression=compression, photometric="rgb", metadata=None)
        tw.write(levels[0], description=desc, **kw)
        thumb = levels[-1][::2, ::2]
        tw.write(thumb, description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}",
                 photometric="rgb", metadata=None)
        for lvl in levels[1:]:
            tw.write(lvl, description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {lvl.shape[1]}x{lvl.shape[0]}",
                     **kw)
        label = np.full((120, 100, 3), 200, np.uint8)
        tw.write(label, description="Aperio Image Library v12.0.15\r\nlabel 100x120", subfiletype=1,
                 photometric="rgb", metadata=None)
        macro = np.full((150, 300, 3), 90, np.uint8)
        tw.write(macro, description="Aperio Image Library v12.0.15\r\nmacro 300x150", subfiletype=9,
                 photometric="rgb", metadata=None)
    return path


def write_ome(path: Path, shape=SLIDE_SHAPE, n_levels: int = 3, pixel_size: float = 0.5,
              unit: str = "µm", tile: int = 256) -> Path:
    """A pyramidal OME-TIFF (SubIFD levels), RGB, PhysicalSizeX/Y in ``unit``."""
    levels = pyramid(rgb_image(*shape, seed=1), n_levels)
    meta = {"axes": "YXS", "PhysicalSizeX": pixel_size, "PhysicalSizeXUnit": unit,
            "PhysicalSizeY": pixel_size, "PhysicalSizeYUnit": unit}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        kw = dict(tile=(tile, tile), compression="zlib", photometric="rgb")
        tw.write(levels[0], subifds=n_levels - 1, metadata=meta, **kw)
        for lvl in levels[1:]:
            tw.write(lvl, subfiletype=1, metadata=None, **kw)
    return path


def write_generic(path: Path, shape=SLIDE_SHAPE, n_levels: int = 3, mpp: float = 0.5, tile: int = 256,
                  rgb: bool = True, subifds: bool = False, compression: str | None = "zlib") -> Path:
    """A plain tiled pyramidal TIFF (levels as reduced pages or SubIFDs), resolution tags in centimeter."""
    img = rgb_image(*shape, seed=2)
    if not rgb:
        img = img[..., 0].copy()
    levels = pyramid(img, n_levels)
    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path) as tw:
        kw = dict(tile=(tile, tile), compression=compression, photometric="rgb" if rgb else "minisblack",
                  metadata=None, resolutionunit="CENTIMETER")
        tw.write(levels[0], subifds=(n_levels - 1) if subifds else None, resolution=res, **kw)
        for i, lvl in enumerate(levels[1:], start=1):
            tw.write(lvl, subfiletype=1, resolution=(res[0] / 2**i, res[1] / 2**i), **kw)
    return path


def _to_ndpi_layout(path: Path) -> None:
    """Rewrite a classic little-endian TIFF into the NDPI layout tifffile reads for ``.ndpi`` files:
    8-byte first-IFD offset in the header, and IFDs of ``[n][n x 12-byte entries][8-byte next offset]
    [n x 4-byte high offset bits]``. The original IFDs stay in place (unused); tile data is untouched."""
    import struct

    with tifffile.TiffFile(path, is_ndpi=False) as tf:
        offsets = [p.offset for p in tf.pages]
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"II*\x00"
    new_ifds = []
    for off in offsets:
        n = struct.unpack_from("<H", raw, off)[0]
        new_ifds.append((n, bytes(raw[off + 2: off + 2 + 12 * n])))
    pos = len(raw) + (-len(raw)) % 8
    raw.extend(b"\x00" * (pos - len(raw)))
    starts = []
    for n, _ in new_ifds:
        starts.append(pos)
        pos += 2 + 12 * n + 8 + 4 * n
        pos += (-pos) % 8
    for i, (n, entries) in enumerate(new_ifds):
        nxt = starts[i + 1] if i + 1 < len(starts) else 0
        block = struct.pack("<H", n) + entries + struct.pack("<Q", nxt) + b"\x00" * (4 * n)
        raw.extend(block)
        raw.extend(b"\x00" * ((-len(raw)) % 8))
    raw[4:12] = struct.pack("<Q", starts[0])
    path.write_bytes(bytes(raw))


def write_ndpi_like(path: Path, shape=SLIDE_SHAPE, n_levels: int = 3, mpp: float = 0.4536,
                    tile: int = 256) -> Path:
    """An NDPI-like file: Hamamatsu tags (65420 file format, 65421 magnification, Make), levels as
    pages, resolution in centimeter, a macro page (magnification -1), in the NDPI 64-bit IFD layout.
    Real NDPI level data is one JPEG with restart markers per page; here it is tiled JPEG."""
    levels = pyramid(rgb_image(*shape, seed=3), n_levels)
    res = (1e4 / mpp, 1e4 / mpp)
    hama = [(65420, 4, 1, 1, True), (271, 2, 0, "Hamamatsu", True), (272, 2, 0, "C13210", True)]
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for i, lvl in enumerate(levels):
            tw.write(lvl, tile=(tile, tile), compression="jpeg", photometric="rgb", metadata=None,
                     resolution=(res[0] / 2**i, res[1] / 2**i), resolutionunit="CENTIMETER",
                     extratags=[*hama, (65421, 11, 1, 40.0 / 2**i, True)])
        macro = np.full((100, 300, 3), 50, np.uint8)
        tw.write(macro, photometric="rgb", metadata=None, compression="jpeg",
                 extratags=[*hama, (65421, 11, 1, -1.0, True)])
    _to_ndpi_layout(path)
    return path


def volume(z: int = 12, y: int = 64, x: int = 80, dtype=np.uint16) -> np.ndarray:
    """A ZYX volume: a bright ball in a noisy background."""
    zz, yy, xx = np.mgrid[0:z, 0:y, 0:x]
    r = np.sqrt(((zz - z / 2) * 4) ** 2 + (yy - y / 2) ** 2 + (xx - x / 2) ** 2)
    vol = 100 + 900 * (r < min(y, x) / 3) + np.random.default_rng(0).integers(0, 50, size=r.shape)
    return vol.astype(dtype)


def write_imagej_volume(path: Path, spacing: float = 2.5, unit: str = "um", xy: float = 0.5) -> Path:
    vol = volume()
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / xy, 1 / xy),
                     metadata={"axes": "ZYX", "spacing": spacing, "unit": unit})
    return path


def write_ome_volume(path: Path, dz: float = 3.0, dxy: float = 0.75, unit: str = "mm") -> Path:
    vol = volume()
    meta = {"axes": "ZYX", "PhysicalSizeZ": dz, "PhysicalSizeZUnit": unit, "PhysicalSizeX": dxy,
            "PhysicalSizeXUnit": unit, "PhysicalSizeY": dxy, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, vol, ome=True, metadata=meta)
    return path


def write_page_stack(path: Path) -> Path:
    """A plain multi-page TIFF of equal pages (no ImageJ/OME metadata)."""
    vol = volume(dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for page in vol:
            tw.write(page, metadata=None, photometric="minisblack")
    return path


def write_strip_rgb(path: Path, shape=(3000, 4000), rowsperstrip: int | None = None,
                    compression: str | None = None) -> Path:
    """A big-ish untiled RGB TIFF with no pyramid (uncompressed strips by default)."""
    img = rgb_image(*shape, seed=4)
    tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=rowsperstrip, compression=compression,
                     metadata=None, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return path


@pytest.fixture
def svs_path(tmp_path) -> Path:
    return write_svs(tmp_path / "slide.svs")


@pytest.fixture
def ome_path(tmp_path) -> Path:
    return write_ome(tmp_path / "slide.ome.tif")


@pytest.fixture
def generic_path(tmp_path) -> Path:
    return write_generic(tmp_path / "slide.tif")


@pytest.fixture
def ndpi_path(tmp_path) -> Path:
    return write_ndpi_like(tmp_path / "slide.ndpi")


# -- bad input ---------------------------------------------------------------------------------------
def write_truncated(path: Path) -> Path:
    """A pyramidal TIFF cut in half (tile data of level 0 runs past the end)."""
    write_generic(path, shape=(1024, 1024), n_levels=2)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def write_not_a_tiff(path: Path) -> Path:
    """A file named like a slide (e.g. ``.svs``) holding something else."""
    path.write_bytes(b"<html><body>404 Not Found</body></html>\n" * 20)
    return path


def make_empty_zarr(path: Path) -> Path:
    """A zarr v2 group with nothing in it."""
    import zarr

    zarr.open_group(str(path), mode="w", zarr_format=2)
    return path


def write_absurd_size(path: Path, side: int = 10**7) -> Path:
    """A 309-byte TIFF whose header claims ``side x side`` px (one 256x256 tile actually stored)."""
    tifffile.imwrite(path, np.full((256, 256), 5, np.uint8), tile=(256, 256), compression="zlib", metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tf:
        tags = tf.pages[0].tags
        tags["ImageWidth"].overwrite(side)
        tags["ImageLength"].overwrite(side)
    return path


def write_offsets_past_eof(path: Path) -> Path:
    """A tiled TIFF whose last tile offset points 1 GB past the end of the file."""
    tifffile.imwrite(path, np.full((512, 512), 5, np.uint8), tile=(256, 256), compression="zlib", metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tf:
        tag = tf.pages[0].tags["TileOffsets"]
        offsets = list(tag.value)
        offsets[-1] = 10**9
        tag.overwrite(offsets)
    return path


@pytest.fixture
def nifti_reads(monkeypatch):
    """The voxel counts of every read nibabel's array proxy makes from now on (laziness checks), with the NIfTI
    reader's chunks set to 4 slices of 64 x 64 float32 voxels."""
    import nibabel as nib

    from napari_medseg.io import nifti

    monkeypatch.setattr(nifti, "CHUNK_BYTES", 64 * 64 * 4 * 4)
    read: list[int] = []
    orig = nib.arrayproxy.ArrayProxy.__getitem__

    def counting(self, key):
        out = orig(self, key)
        read.append(np.asarray(out).size)
        return out

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", counting)
    return read
