"""open_tiff: SVS, OME-TIFF, NDPI, generic pyramids, volumes and big non-pyramidal TIFFs, lazily."""

from __future__ import annotations

import inspect
import re

import dask.array as da
import numpy as np
import pytest
import tifffile
from medseg_io_synth import (
    SLIDE_SHAPE,
    write_generic,
    write_imagej_volume,
    write_ome,
    write_ome_volume,
    write_page_stack,
    write_strip_rgb,
)
from tifffile import zarr as tzarr

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.io import open_path
from napari_medseg.io import tiff as mtiff
from napari_medseg.io.tiff import open_tiff, open_tiff_zarr, zarr_read_kwargs

SLIDES = {  # fixture -> (format, pixel size in micrometer, names of the other series)
    "svs_path": ("svs", 0.2527, ["Thumbnail", "Label", "Macro"]),
    "ome_path": ("ome", 0.5, []),
    "generic_path": ("generic", 0.5, []),
    "ndpi_path": ("ndpi", 0.4536, ["Macro"]),
}


@pytest.fixture
def read_keys(monkeypatch):
    """Keys the tifffile zarr store is asked for (level-0 tiles are ``0/<y>.<x>.<c>``)."""
    keys: list[str] = []
    orig = tzarr.ZarrTiffStore.get

    async def spy(self, key, *a, **k):
        keys.append(key)
        return await orig(self, key, *a, **k)

    monkeypatch.setattr(tzarr.ZarrTiffStore, "get", spy)
    return keys


def _tiles(keys: list[str], level: int) -> list[str]:
    return [k for k in keys if re.fullmatch(rf"{level}/\d+(\.\d+)+", k)]


@pytest.mark.parametrize("fixture", list(SLIDES))
def test_slide_pyramid_contract(fixture, request):
    path = request.getfixturevalue(fixture)
    fmt, mpp, others = SLIDES[fixture]
    src = open_tiff(path)
    h, w = SLIDE_SHAPE
    assert src.metadata["format"] == fmt
    assert src.axes == "YXC" and src.rgb and src.modality == "brightfield"
    assert src.unit == "micrometer"
    assert src.pixel_size == pytest.approx((mpp, mpp), rel=1e-6)
    assert [lvl.shape for lvl in src.levels] == [(h, w, 3), (h // 2, w // 2, 3), (h // 4, w // 4, 3)]
    assert [s["name"] for s in src.metadata["other_series"]] == others
    for lvl in src.levels:
        assert isinstance(lvl, da.Array) and lvl.dtype == np.uint8
    # chunks: whole multiples of the 256 px tile, and level 0 is not one chunk
    ch = src.levels[0].chunks
    assert ch[0][0] % 256 == 0 and ch[1][0] % 256 == 0
    assert len(ch[0]) > 1 and len(ch[1]) > 1
    # pixels equal what tifffile decodes
    with tifffile.TiffFile(path) as tf:
        ref0 = tf.series[0].levels[0].asarray()
        ref2 = tf.series[0].levels[2].asarray()
    np.testing.assert_array_equal(src.levels[0][300:700, 900:1400].compute(), ref0[300:700, 900:1400])
    np.testing.assert_array_equal(src.levels[2].compute(), ref2)


def test_level0_is_never_read_whole(svs_path, read_keys):
    src = open_tiff(svs_path)
    assert _tiles(read_keys, 0) == []  # opening reads no pixels
    src.levels[-1].compute()  # what napari shows first: the whole smallest level
    assert _tiles(read_keys, 0) == []
    src.levels[0][:256, :256].compute()
    n_level0_tiles = (1500 // 256 + 1) * (2000 // 256 + 1)
    got = len(set(_tiles(read_keys, 0)))
    assert 1 <= got <= 16 < n_level0_tiles  # one dask chunk = 4x4 tiles at most


def test_store_gets_maxworkers(svs_path, monkeypatch):
    seen = {}
    real = tifffile.imread

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(tifffile, "imread", spy)
    open_tiff_zarr(svs_path)
    assert seen["maxworkers"] == mtiff.MAXWORKERS > 1
    assert seen.get("aszarr") is True or seen.get("return_as") == "zarr"


def test_zarr_spelling_compat(svs_path, monkeypatch):
    """Newer tifffile spells aszarr=True as return_as='zarr': the helper picks what imread accepts."""
    assert zarr_read_kwargs() == ({"return_as": "zarr"} if "return_as" in inspect.signature(tifffile.imread).parameters
                                  else {"aszarr": True})
    real = tifffile.imread
    calls = []

    def new_style(files, *, return_as=None, **kwargs):  # the newer signature, no 'aszarr'
        calls.append(return_as)
        return real(files, aszarr=return_as == "zarr", **kwargs)

    monkeypatch.setattr(tifffile, "imread", new_style)
    assert zarr_read_kwargs() == {"return_as": "zarr"}
    levels = open_tiff_zarr(svs_path)
    assert calls == ["zarr"] and len(levels) == 3
    src = open_tiff(svs_path)
    assert src.levels[2].compute().shape == (375, 500, 3)


@pytest.mark.parametrize("unit,value,expected", [("nm", 250.0, 0.25), ("mm", 0.0005, 0.5), ("µm", 0.33, 0.33)])
def test_ome_physical_size_units(tmp_path, unit, value, expected):
    src = open_tiff(write_ome(tmp_path / "s.ome.tif", shape=(600, 800), n_levels=2, pixel_size=value, unit=unit))
    assert src.unit == "micrometer"
    assert src.pixel_size == pytest.approx((expected, expected))
    assert src.name == "s"


def test_generic_subifd_pyramid_grey(tmp_path):
    src = open_tiff(write_generic(tmp_path / "g.tif", shape=(1200, 1000), rgb=False, subifds=True))
    assert src.axes == "YX" and not src.rgb and src.modality == "unknown"
    assert [lvl.shape for lvl in src.levels] == [(1200, 1000), (600, 500), (300, 250)]
    assert src.pixel_size == pytest.approx((0.5, 0.5))
    lo, hi = src.contrast_limits
    assert 0 <= lo < hi <= 255


def test_main_image_is_the_largest_series(tmp_path):
    """An OME-TIFF whose first image is a small label picture: the slide is the big pyramid after it."""
    p = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(p, ome=True) as tw:
        tw.write(np.full((100, 150, 3), 200, np.uint8), photometric="rgb", metadata={"Name": "label"})
        levels = [np.zeros((800, 1000, 3), np.uint8), np.zeros((400, 500, 3), np.uint8)]
        tw.write(levels[0], subifds=1, tile=(256, 256), photometric="rgb",
                 metadata={"Name": "slide", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tw.write(levels[1], subfiletype=1, tile=(256, 256), photometric="rgb", metadata=None)
    src = open_tiff(p)
    assert [lvl.shape for lvl in src.levels] == [(800, 1000, 3), (400, 500, 3)]
    assert [s["shape"] for s in src.metadata["other_series"]] == [[100, 150, 3]]
    assert src.pixel_size == (0.5, 0.5) and src.unit == "micrometer"  # from this image's OME Pixels


def test_no_resolution_means_unit_pixel(tmp_path):
    p = tmp_path / "nores.tif"
    tifffile.imwrite(p, np.zeros((64, 64, 3), np.uint8), photometric="rgb", metadata=None)
    src = open_tiff(p)
    assert src.unit == "pixel" and src.pixel_size == (1.0, 1.0)
    assert src.metadata["pixel_size_source"] == "unknown"


def test_levels_that_do_not_shrink_are_dropped(tmp_path):
    """An SVS whose third resolution is larger than the second: napari needs strictly shrinking levels."""
    p = tmp_path / "odd.svs"
    desc = "Aperio Image Library v12.0.15 \r\n1024x1024 (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5"
    kw = dict(tile=(256, 256), photometric="rgb", metadata=None, description=desc)
    with tifffile.TiffWriter(p) as tw:
        tw.write(np.zeros((1024, 1024, 3), np.uint8), **kw)
        tw.write(np.zeros((64, 64, 3), np.uint8), photometric="rgb", metadata=None, description=desc)  # thumbnail
        for side in (256, 512, 128):
            tw.write(np.zeros((side, side, 3), np.uint8), **kw)
    with tifffile.TiffFile(p) as tf:
        assert [lvl.shape[:2] for lvl in tf.series[0].levels] == [(1024, 1024), (256, 256), (512, 512), (128, 128)]
    src = open_tiff(p)
    assert [lvl.shape[:2] for lvl in src.levels] == [(1024, 1024), (256, 256), (128, 128)]


# -- volumes --------------------------------------------------------------------------------------------
def test_imagej_hyperstack_is_zyx_volume_in_mm(tmp_path):
    src = open_tiff(write_imagej_volume(tmp_path / "v.tif", spacing=2.5, unit="um", xy=0.5))
    assert src.axes == "ZYX" and not src.rgb
    assert src.unit == "millimeter"
    assert src.pixel_size == pytest.approx((0.0025, 0.0005, 0.0005))
    assert src.modality == "unknown"
    vol = tifffile.imread(tmp_path / "v.tif")
    np.testing.assert_array_equal(src.levels[0].compute(), vol)
    lo, hi = src.contrast_limits
    assert vol.min() <= lo < hi <= vol.max()
    assert hi > np.percentile(vol, 90)  # the bright ball is in range


def test_ome_volume_physical_size_z(tmp_path):
    src = open_tiff(write_ome_volume(tmp_path / "v.ome.tif", dz=3.0, dxy=0.75, unit="mm"))
    assert src.axes == "ZYX" and src.pixel_size == pytest.approx((3.0, 0.75, 0.75))


def test_plain_page_stack_is_a_volume(tmp_path):
    src = open_tiff(write_page_stack(tmp_path / "s.tif"))
    assert src.axes == "ZYX" and src.shape == (12, 64, 80)
    assert src.levels[0].chunks[0] == (1,) * 12  # one page per chunk: a slice reads one page
    assert src.unit == "pixel"


# -- big, no pyramid ------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression,rowsperstrip", [(None, None), ("zlib", 64)])
def test_big_flat_tiff_gets_virtual_levels_and_hint(tmp_path, monkeypatch, compression, rowsperstrip, caplog):
    monkeypatch.setattr(mtiff, "VIRTUAL_PYRAMID_MIN_SIDE", 1000)
    p = write_strip_rgb(tmp_path / "flat.tif", shape=(1200, 2600), rowsperstrip=rowsperstrip, compression=compression)
    mapped = []
    real_memmap = tifffile.memmap
    monkeypatch.setattr(tifffile, "memmap", lambda *a, **k: mapped.append(1) or real_memmap(*a, **k))
    with caplog.at_level("INFO", logger="napari_medseg.io.tiff"):
        src = open_tiff(p)
    assert bool(mapped) == (compression is None)  # uncompressed: memory-mapped, rows read on demand
    assert len(src.levels) >= 2 and src.levels[1].shape == (600, 1300, 3)
    assert "napari-medseg convert" in src.metadata["hint"]
    assert "napari-medseg convert" in caplog.text
    ref = tifffile.imread(p)
    np.testing.assert_array_equal(src.levels[1][100:300, 200:900].compute(), ref[::2, ::2][100:300, 200:900])
    np.testing.assert_array_equal(src.levels[-1].compute(), ref[:: 2 ** (len(src.levels) - 1), :: 2 ** (len(src.levels) - 1)])
    np.testing.assert_array_equal(src.levels[0][1000:1200, 2000:].compute(), ref[1000:1200, 2000:])


def test_flat_compressed_single_block_too_big_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(mtiff, "VIRTUAL_PYRAMID_MIN_SIDE", 1000)
    monkeypatch.setattr(mtiff, "MAX_SINGLE_CHUNK_BYTES", 1_000_000)
    p = write_strip_rgb(tmp_path / "onestrip.tif", shape=(1100, 1200), rowsperstrip=1100, compression="zlib")
    with pytest.raises(UnreadableInputError, match="cannot be read piecewise"):
        open_path(p)


def test_small_flat_tiff_stays_single_level(tmp_path):
    p = write_strip_rgb(tmp_path / "small.tif", shape=(300, 400))
    src = open_tiff(p)
    assert len(src.levels) == 1 and "hint" not in src.metadata
