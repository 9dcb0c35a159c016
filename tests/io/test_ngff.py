"""open_zarr (plain arrays, NGFF 0.4/0.5 images and labels) and the NGFF writing helpers."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import zarr
from medseg_io_synth import pyramid, rgb_image

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.io import open_path
from napari_medseg.io.ngff_meta import multiscales_attrs
from napari_medseg.io.ngff_read import open_zarr
from napari_medseg.io.ngff_write import (
    _format_attrs,
    build_pyramid,
    create_labels_group,
    create_multiscale,
    downsample_block,
    pyramid_shapes,
    write_blocks,
)


def _write_rgb_ngff(path, shape=(600, 900), chunk=128):
    img = rgb_image(*shape).transpose(2, 0, 1)  # CYX on disk
    arrays = create_multiscale(path, img.shape, img.dtype, "CYX", (0.25, 0.25), "micrometer", (3, chunk, chunk),
                               n_levels=3, name="slide")
    write_blocks(arrays[0], lambda r: img[r])
    build_pyramid(arrays, "CYX")
    return img, arrays


def test_create_multiscale_layout_and_metadata(tmp_path):
    img, arrays = _write_rgb_ngff(tmp_path / "s.zarr")
    assert [a.shape for a in arrays] == [(3, 600, 900), (3, 300, 450), (3, 150, 225)]
    root = tmp_path / "s.zarr"
    assert (root / ".zgroup").exists() and not (root / "zarr.json").exists()  # zarr format 2
    zarray = json.loads((root / "0" / ".zarray").read_text())
    assert zarray["dimension_separator"] == "/" and zarray["chunks"] == [3, 128, 128]
    ms = json.loads((root / ".zattrs").read_text())["multiscales"][0]
    assert ms["version"] == "0.4" and ms["name"] == "slide"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.25, 0.25], [1.0, 0.5, 0.5], [1.0, 1.0, 1.0]]
    # level 1 is the 2x2 mean of level 0
    np.testing.assert_array_equal(arrays[1][:], downsample_block(img, (1, 2, 2)))


def test_rgb_ngff_opens_as_rgb_through_lazy_transpose(tmp_path):
    img, _ = _write_rgb_ngff(tmp_path / "s.zarr")
    (src,) = open_zarr(tmp_path / "s.zarr")
    assert src.axes == "YXC" and src.rgb and src.modality == "brightfield" and src.kind == "image"
    assert src.pixel_size == (0.25, 0.25) and src.unit == "micrometer"
    assert isinstance(src.levels[0], da.Array)
    assert [lvl.shape for lvl in src.levels] == [(600, 900, 3), (300, 450, 3), (150, 225, 3)]
    np.testing.assert_array_equal(src.levels[0][50:250, 100:400].compute(), img.transpose(1, 2, 0)[50:250, 100:400])
    assert src.name == "slide"


def test_ngff_05_zarr_v3_volume_in_mm(tmp_path):
    vol = np.arange(8 * 40 * 50, dtype=np.uint16).reshape(1, 8, 40, 50)
    g = zarr.open_group(str(tmp_path / "v.zarr"), mode="w", zarr_format=3)
    g.create_array("0", data=vol, chunks=(1, 4, 20, 20))
    g.create_array("1", data=vol[:, :, ::2, ::2], chunks=(1, 4, 20, 20))
    attrs = multiscales_attrs("CZYX", [[1, 2.0, 500.0, 500.0], [1, 2.0, 1000.0, 1000.0]], "micrometer")
    g.attrs.update(_format_attrs(attrs, 3))
    assert "ome" in dict(g.attrs)
    (src,) = open_path(tmp_path / "v.zarr")
    assert src.axes == "ZYX"  # one channel: dropped
    assert src.unit == "millimeter" and src.pixel_size == pytest.approx((0.002, 0.5, 0.5))
    assert src.metadata["format"] == "ngff 0.5"
    np.testing.assert_array_equal(src.levels[0].compute(), vol[0])
    assert src.contrast_limits is not None


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_arrays(tmp_path, zarr_format):
    grey = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
    zarr.create_array(str(tmp_path / "g.zarr"), data=grey, chunks=(64, 64), zarr_format=zarr_format)
    (src,) = open_zarr(tmp_path / "g.zarr")
    assert src.axes == "YX" and src.unit == "pixel" and not src.rgb
    np.testing.assert_array_equal(src.levels[0].compute(), grey)
    rgb = rgb_image(100, 120)
    zarr.create_array(str(tmp_path / "c.zarr"), data=rgb, chunks=(50, 50, 3), zarr_format=zarr_format)
    (src,) = open_zarr(tmp_path / "c.zarr")
    assert src.axes == "YXC" and src.rgb


def test_labels_groups_with_colors(tmp_path):
    _write_rgb_ngff(tmp_path / "s.zarr")
    lab = np.zeros((600, 900), np.uint8)
    lab[100:300, 200:500] = 2
    lab[400:500, 600:800] = 3
    arrays = create_labels_group(tmp_path / "s.zarr", "tissue", lab.shape, (128, 128), (0.25, 0.25), "micrometer",
                                 colors={2: (1.0, 0.0, 0.0, 1.0), 3: (0.0, 0.0, 1.0, 0.5)}, n_levels=2)
    write_blocks(arrays[0], lambda r: lab[r])
    build_pyramid(arrays, "YX", "labels")
    attrs = json.loads((tmp_path / "s.zarr" / "labels" / "tissue" / ".zattrs").read_text())
    assert attrs["image-label"]["colors"][1] == {"label-value": 3, "rgba": [0, 0, 255, 128]}
    assert json.loads((tmp_path / "s.zarr" / "labels" / ".zattrs").read_text()) == {"labels": ["tissue"]}
    image, labels = open_zarr(tmp_path / "s.zarr")
    assert image.kind == "image" and labels.kind == "labels" and labels.name == "tissue"
    assert labels.axes == "YX" and labels.pixel_size == (0.25, 0.25)
    assert labels.metadata["colors"][2] == (1.0, 0.0, 0.0, 1.0)
    assert labels.metadata["colors"][3] == pytest.approx((0.0, 0.0, 1.0, 128 / 255))
    np.testing.assert_array_equal(labels.levels[0].compute(), lab)
    assert labels.levels[1].compute()[100, 175] == 2  # mode-downsampled


def test_bioformats2raw_layout(tmp_path):
    root = zarr.open_group(str(tmp_path / "b.zarr"), mode="w", zarr_format=2)
    _write_rgb_ngff(root.create_group("0"), shape=(200, 300), chunk=64)
    (src,) = open_zarr(tmp_path / "b.zarr")
    assert src.rgb and src.levels[0].shape == (200, 300, 3)


def test_empty_group_and_not_a_zarr(tmp_path):
    zarr.open_group(str(tmp_path / "e.zarr"), mode="w", zarr_format=2)
    with pytest.raises(UnreadableInputError, match="empty zarr group"):
        open_zarr(tmp_path / "e.zarr")
    (tmp_path / "d.zarr").mkdir()
    with pytest.raises(UnreadableInputError, match="not a zarr store"):
        open_zarr(tmp_path / "d.zarr")


def test_create_multiscale_refuses_existing_and_bad_axes(tmp_path):
    p = tmp_path / "o.zarr"
    create_multiscale(p, (100, 100), np.uint8, "YX", (1.0, 1.0), "micrometer", (64, 64))
    with pytest.raises(MedsegError, match="already exists"):
        create_multiscale(p, (100, 100), np.uint8, "YX", (1.0, 1.0), "micrometer", (64, 64))
    arrays = create_multiscale(p, (100, 100), np.uint8, "YX", (1.0, 1.0), "micrometer", (64, 64), overwrite=True)
    assert len(arrays) == 2
    (tmp_path / "notzarr").mkdir()
    (tmp_path / "notzarr" / "precious.txt").write_text("keep me")
    with pytest.raises(MedsegError, match="not a zarr"):
        create_multiscale(tmp_path / "notzarr", (10, 10), np.uint8, "YX", (1, 1), "micrometer", (8, 8), overwrite=True)
    assert (tmp_path / "notzarr" / "precious.txt").exists()
    with pytest.raises(ValueError, match="NGFF order"):
        create_multiscale(tmp_path / "x.zarr", (10, 10, 3), np.uint8, "YXC", (1, 1), "micrometer", (8, 8, 3))


def test_pyramid_shapes():
    assert pyramid_shapes((1000, 1500), "YX", (256, 256)) == [(1000, 1500), (500, 750), (250, 375), (125, 188)]
    assert pyramid_shapes((3, 100, 100), "CYX", (3, 64, 64), n_levels=3) == [(3, 100, 100), (3, 50, 50), (3, 25, 25)]
    assert pyramid_shapes((10, 100, 100), "ZYX", (10, 64, 64), downsample_axes="YX") == [(10, 100, 100), (10, 50, 50)]


def test_downsample_block_image_mean_and_edges():
    a = np.arange(9, dtype=np.uint8).reshape(3, 3)
    out = downsample_block(a, 2)
    assert out.shape == (2, 2) and out.dtype == np.uint8
    assert out[0, 0] == 2  # mean(0, 1, 3, 4)
    assert out[1, 1] == 8  # edge replicated, not darkened by zero padding
    f = downsample_block(np.ones((4, 4, 3), np.float32), (2, 2, 1))
    assert f.shape == (2, 2, 3) and f.dtype == np.float32
    levels = pyramid(rgb_image(64, 64), 2)
    np.testing.assert_allclose(downsample_block(levels[0], (2, 2, 1)).astype(int), levels[1].astype(int), atol=1)


def test_downsample_block_labels_mode():
    lab = np.array([[0, 2, 3, 3],
                    [0, 2, 3, 1]], np.uint8)
    # window 1: 0,2,0,2 -> tie between 0 and 2: the annotation wins; window 2: 3,3,3,1 -> 3
    np.testing.assert_array_equal(downsample_block(lab, 2, "labels"), [[2, 3]])
    assert downsample_block(lab, 2, "labels").dtype == np.uint8
    many = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64)  # instance labels: nearest neighbour
    np.testing.assert_array_equal(downsample_block(many, 2, "labels"), many[::2, ::2])
    vol = np.zeros((4, 4, 4), np.uint8)
    vol[:2, :2, :2] = 5
    out = downsample_block(vol, 2, "labels")
    assert out.shape == (2, 2, 2) and out[0, 0, 0] == 5 and out.sum() == 5
    # "nearest" keeps each window's first pixel even when few values are there (instance ids are not voted)
    np.testing.assert_array_equal(downsample_block(lab, 2, "nearest"), [[0, 3]])
    np.testing.assert_array_equal(downsample_block(np.pad(lab, ((0, 1), (0, 1)), mode="edge"), 2, "nearest"),
                                  [[0, 3, 3], [0, 3, 1]])
    with pytest.raises(ValueError):
        downsample_block(lab, 2, "bogus")


def test_write_blocks_one_writer_per_chunk(tmp_path):
    arr = create_multiscale(tmp_path / "w.zarr", (300, 500), np.uint16, "YX", (1, 1), "micrometer", (64, 64),
                            n_levels=1)[0]
    data = np.arange(300 * 500, dtype=np.uint16).reshape(300, 500)
    regions = []

    def read(r):
        regions.append(r)
        return data[r]

    write_blocks(arr, read, block=(128, 192), workers=2)
    np.testing.assert_array_equal(arr[:], data)
    covered = np.zeros((300, 500), int)
    for r in regions:
        assert r[0].start % 64 == 0 and r[1].start % 64 == 0  # blocks start on chunk boundaries
        covered[r] += 1
    assert (covered == 1).all()


def test_labels_writers_3d_roundtrip_and_refusals(tmp_path):
    from napari_medseg.core.errors import GeometryMismatchError
    from napari_medseg.io.writers import write_labels_ngff, write_labels_tiff

    vol = np.zeros((6, 40, 50), np.uint8)
    vol[2:4, 10:30, 5:25] = 4
    write_labels_ngff(tmp_path / "v.zarr", da.from_array(vol, chunks=(2, 20, 20)), pixel_size=(2.0, 0.5, 0.5),
                      unit="millimeter", name="organ")
    (src,) = open_path(tmp_path / "v.zarr")
    assert src.kind == "labels" and src.axes == "ZYX" and src.pixel_size == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(src.levels[0].compute(), vol)
    write_labels_tiff(tmp_path / "v.tif", vol, pixel_size=(2.0, 0.5, 0.5), unit="millimeter")
    (src,) = open_path(tmp_path / "v.tif")
    assert src.axes == "ZYX" and src.unit == "millimeter" and src.pixel_size == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_array_equal(src.levels[0].compute(), vol)
    with pytest.raises(MedsegError, match="must be integers"):
        write_labels_ngff(tmp_path / "f.zarr", np.zeros((4, 4), np.float32))
    _write_rgb_ngff(tmp_path / "img.zarr", shape=(64, 64), chunk=32)
    with pytest.raises(GeometryMismatchError, match="new .zarr"):
        write_labels_ngff(tmp_path / "img.zarr", np.zeros((10, 10), np.uint8))
    assert not (tmp_path / "img.zarr" / "labels").exists()  # nothing half-written
