"""io.reader: sniff names formats cheaply and never raises; open_path dispatches and orders sources."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from medseg_io_synth import write_generic, write_strip_rgb

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.io import open_image, open_path, sniff
from napari_medseg.io.ngff_write import create_labels_group, create_multiscale


def test_sniff_slides_and_zarr(svs_path, ome_path, ndpi_path, tmp_path):
    assert sniff(svs_path) == sniff(ome_path) == sniff(ndpi_path) == "tiff"
    # by content, whatever the name
    p = write_generic(tmp_path / "slide.data", shape=(64, 64), n_levels=1)
    assert sniff(p) == "tiff"
    create_multiscale(tmp_path / "img.zarr", (32, 32), np.uint8, "YX", (1, 1), "micrometer", (16, 16))
    assert sniff(tmp_path / "img.zarr") == "zarr"
    zarr.open_group(str(tmp_path / "noext"), mode="w", zarr_format=2)
    assert sniff(tmp_path / "noext") == "zarr"


@pytest.mark.parametrize("name,content", [("notes.txt", b"hello"), ("photo.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64),
                                          ("data.csv", b"a,b\n1,2\n")])
def test_sniff_foreign_files_is_none(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    assert sniff(p) is None
    with pytest.raises(UnreadableInputError, match="not a format"):
        open_path(p)


def test_sniff_never_raises(tmp_path):
    assert sniff(tmp_path / "missing.png") is None
    assert sniff(tmp_path) is None  # a plain folder
    assert sniff("\x00bad") is None
    assert sniff(tmp_path / ("x" * 5000)) is None


def test_open_path_images_then_labels(tmp_path):
    create_multiscale(tmp_path / "s.zarr", (64, 80), np.uint8, "YX", (0.5, 0.5), "micrometer", (32, 32))
    create_labels_group(tmp_path / "s.zarr", "a", (64, 80), (32, 32), (0.5, 0.5), "micrometer")
    kinds = [s.kind for s in open_path(tmp_path / "s.zarr")]
    assert kinds == ["image", "labels"]
    assert open_image(tmp_path / "s.zarr").kind == "image"


def test_open_path_tiff_and_missing(svs_path, tmp_path):
    (src,) = open_path(svs_path)
    assert src.path == str(svs_path) and src.name == "slide"
    with pytest.raises(UnreadableInputError, match="no such file"):
        open_path(tmp_path / "gone.svs")


def test_geometry_of_a_slide(svs_path, tmp_path):
    """What the napari layer is made of (``_napari.layerdata``, tested in tests/gui/test_layerdata.py)."""
    src = open_path(svs_path)[0]
    assert len(src.levels) == 3 and src.rgb
    assert src.pixel_size == pytest.approx((0.2527, 0.2527)) and src.unit == "micrometer"
    flat = write_strip_rgb(tmp_path / "small.tif", shape=(100, 120))
    src = open_path(flat)[0]
    assert len(src.levels) == 1 and src.levels[0].shape == (100, 120, 3)
