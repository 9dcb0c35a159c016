"""The npe2 reader and writers in a real napari viewer (Xvfb, OpenGL canvas)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_medseg._napari.contrib.reader import get_reader
from napari_medseg.core.errors import MedsegError
from napari_medseg.io import open_path
from napari_medseg.io import tiff as mtiff
from napari_medseg.io.ngff_write import build_pyramid, create_labels_group, write_blocks

PLUGIN = "napari-medseg"


def _load_io_fixtures():
    """The synthetic-file writers of tests/io/conftest.py (plain functions, shared with the IO tests)."""
    if "medseg_io_synth" in sys.modules:
        return sys.modules["medseg_io_synth"]
    spec = importlib.util.spec_from_file_location("medseg_io_synth", Path(__file__).parents[1] / "io" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


fx = _load_io_fixtures()


@pytest.fixture
def records():
    """Notifications napari shows the user during the test."""
    start = len(notification_manager.records)
    yield lambda: notification_manager.records[start:]


# -- reader ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,content", [("a.png", b"\x89PNG\r\n\x1a\n"), ("b.txt", b"hi"), ("c.csv", b"1,2")])
def test_get_reader_declines_foreign_files(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    assert get_reader(str(p)) is None
    assert get_reader(str(tmp_path / "missing.jpg")) is None
    assert get_reader(str(tmp_path)) is None  # a folder that is not a zarr / DICOM series
    svs = fx.write_svs(tmp_path / "s.svs", shape=(300, 400), n_levels=2)
    assert get_reader([str(svs), str(p)]) is None  # a list with a foreign file
    assert callable(get_reader(str(svs)))
    assert get_reader(None) is None and get_reader(12) is None  # never raises


def test_open_slide_in_viewer(make_napari_viewer, tmp_path, qtbot):
    p = fx.write_svs(tmp_path / "slide.svs")
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(p), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer._type_string == "image" and layer.multiscale and layer.rgb
    assert len(layer.data) == 3 and layer.data[0].shape == (1500, 2000, 3)
    assert tuple(layer.scale) == pytest.approx((0.2527, 0.2527))
    assert str(layer.units[0]) == "micrometer"
    assert layer.metadata["napari_medseg"]["modality"] == "brightfield"
    viewer.reset_view()

    def drawn() -> bool:
        rgb = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
        return rgb.std() > 5 and np.abs(rgb[..., 0] - rgb[..., 1]).mean() > 5  # the slide, in color

    qtbot.waitUntil(drawn, timeout=10000)


def test_open_ngff_image_and_labels(make_napari_viewer, tmp_path):
    img = fx.rgb_image(300, 400).transpose(2, 0, 1)
    from napari_medseg.io.ngff_write import create_multiscale

    arrays = create_multiscale(tmp_path / "s.zarr", img.shape, img.dtype, "CYX", (0.5, 0.5), "micrometer",
                               (3, 128, 128), n_levels=2)
    write_blocks(arrays[0], lambda r: img[r])
    build_pyramid(arrays, "CYX")
    lab = np.zeros((300, 400), np.uint8)
    lab[50:150, 60:200] = 2
    la = create_labels_group(tmp_path / "s.zarr", "tumor", lab.shape, (128, 128), (0.5, 0.5), "micrometer",
                             colors={2: (1.0, 0.0, 0.0, 1.0)}, n_levels=2)
    write_blocks(la[0], lambda r: lab[r])
    build_pyramid(la, "YX", "labels")
    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "s.zarr"), plugin=PLUGIN)
    assert [lay._type_string for lay in layers] == ["image", "labels"]
    image, labels = layers
    assert image.rgb and image.multiscale and tuple(image.scale) == (0.5, 0.5)
    assert labels.name == "tumor" and labels.multiscale and tuple(labels.scale) == (0.5, 0.5)
    np.testing.assert_allclose(labels.colormap.map(np.array([2]))[0], (1.0, 0.0, 0.0, 1.0))


def test_flat_tiff_hint_is_shown(make_napari_viewer, tmp_path, monkeypatch, records):
    monkeypatch.setattr(mtiff, "VIRTUAL_PYRAMID_MIN_SIDE", 500)
    p = fx.write_strip_rgb(tmp_path / "flat.tif", shape=(600, 900))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(p), plugin=PLUGIN)
    assert layer.multiscale
    assert any("napari-medseg convert" in n.message for n in records())


BAD = {
    "truncated": lambda d: fx.write_truncated(d / "cut.tif"),
    "svs_not_tiff": lambda d: fx.write_not_a_tiff(d / "slide.svs"),
    "empty_zarr": lambda d: fx.make_empty_zarr(d / "empty.zarr"),
    "absurd_size": lambda d: fx.write_absurd_size(d / "huge.tif"),
    "offsets_past_eof": lambda d: fx.write_offsets_past_eof(d / "eof.tif"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_gives_notification_and_viewer_keeps_working(make_napari_viewer, tmp_path, case, records):
    bad = BAD[case](tmp_path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(bad), plugin=PLUGIN)  # does not raise
    assert layers == [] and len(viewer.layers) == 0
    errors = [n for n in records() if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1
    assert str(bad) in errors[0].message and "napari-medseg could not open" in errors[0].message
    reason = errors[0].message.split(f"{bad}:", 1)[1]
    assert len(reason.strip()) > 20  # says why
    good = fx.write_svs(tmp_path / "ok.svs", shape=(300, 400), n_levels=2)
    assert len(viewer.open(str(good), plugin=PLUGIN)) == 1


def test_no_permission_notification(make_napari_viewer, tmp_path, monkeypatch, records):
    """Simulated (tests run as root, where chmod 000 does not stop reads)."""
    from napari_medseg.io import reader as mreader

    p = fx.write_svs(tmp_path / "locked.svs", shape=(300, 400), n_levels=2)
    monkeypatch.setattr(mreader.os, "access", lambda path, mode: False)
    viewer = make_napari_viewer()
    assert viewer.open(str(p), plugin=PLUGIN) == []
    assert any("no permission" in n.message and str(p) in n.message for n in records())


# -- writers --------------------------------------------------------------------------------------------
def test_save_labels_as_zarr_and_tiff(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    lab = np.zeros((200, 300), np.uint8)
    lab[20:80, 30:120] = 3
    layer = viewer.add_labels(lab, name="my labels", scale=(0.5, 0.5), units="micrometer")
    layer.colormap = {0: (0, 0, 0, 0), 3: (0.0, 1.0, 0.0, 1.0), None: (0, 0, 0, 0)}
    written = layer.save(str(tmp_path / "out.zarr"), plugin=PLUGIN)
    assert written == [str(tmp_path / "out.zarr")]
    (src,) = open_path(tmp_path / "out.zarr")
    assert src.kind == "labels" and src.name == "my_labels"
    assert src.pixel_size == (0.5, 0.5) and src.unit == "micrometer"
    assert src.metadata["colors"][3] == (0.0, 1.0, 0.0, 1.0)
    np.testing.assert_array_equal(src.levels[0].compute(), lab)

    written = layer.save(str(tmp_path / "out.tif"), plugin=PLUGIN)
    assert written == [str(tmp_path / "out.tif")]
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.compression != 1
        np.testing.assert_array_equal(page.asarray(), lab)
    (src,) = open_path(tmp_path / "out.tif")
    assert src.pixel_size == pytest.approx((0.5, 0.5)) and src.unit == "micrometer"


def test_save_multiscale_labels_writes_level0_into_image_zarr(make_napari_viewer, tmp_path):
    img = fx.rgb_image(256, 384).transpose(2, 0, 1)
    from napari_medseg.io.ngff_write import create_multiscale

    arrays = create_multiscale(tmp_path / "s.zarr", img.shape, img.dtype, "CYX", (1.0, 1.0), "micrometer",
                               (3, 128, 128))
    write_blocks(arrays[0], lambda r: img[r])
    build_pyramid(arrays, "CYX")
    viewer = make_napari_viewer()
    lab = np.zeros((256, 384), np.uint16)
    lab[100:200, 100:300] = 7
    layer = viewer.add_labels([lab, lab[::2, ::2]], multiscale=True, name="pred")
    layer.save(str(tmp_path / "s.zarr"), plugin=PLUGIN)
    image, labels = open_path(tmp_path / "s.zarr")
    assert image.kind == "image" and labels.name == "pred"
    np.testing.assert_array_equal(labels.levels[0].compute(), lab)
    small = viewer.add_labels(np.zeros((10, 10), np.uint8), name="wrong")
    with pytest.raises(Exception) as e:
        small.save(str(tmp_path / "s.zarr"), plugin=PLUGIN)
    err = e.value if isinstance(e.value, MedsegError) else e.value.__cause__ or e.value
    assert "save the labels to a new .zarr" in str(err)
