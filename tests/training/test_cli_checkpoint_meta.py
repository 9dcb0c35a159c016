"""``napari-medseg train`` stores what the data says about itself in the checkpoint: the class names and colours
(a class file, ``--classes name=#colour``, an NGFF label group's ``image-label``) and the pixel size of the
image (an OME-TIFF's PhysicalSizeX/Y), not generic "class 1" names and 1 um/px."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_medseg.cli import main
from napari_medseg.models.checkpoint import load_checkpoint

from ._synth import blobs

CLASSES = {"names": ["background", "stroma", "gland"], "colors": ["#9e9e9e", "#009e73", "#e69f00"],
           "description": "extra keys (as in the samples' class files) are ignored"}
TRAIN = ["--steps", "2", "--patch-size", "32", "--channels", "8,16", "--batch-size", "2", "--threads", "1",
         "--workers", "0", "--val-fraction", "0", "--no-progress"]


def _ome_tiff(path, data, mpp: float, **kw) -> None:
    meta = {"axes": "YXS" if data.ndim == 3 else "YX", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    tifffile.imwrite(path, data, ome=True, metadata=meta, photometric="rgb" if data.ndim == 3 else "minisblack",
                     **kw)


@pytest.fixture
def slide(tmp_path):
    """A small RGB OME-TIFF at 0.5 um/px and its label image (0 not annotated, 1 background, 2 stroma,
    3 gland), as `napari-medseg sample slide` writes them (only much smaller)."""
    img, m = blobs((96, 96), n=10, seed=2)
    rgb = np.stack([img, 255 - img, img // 2], -1)
    labels = np.zeros(m.shape, np.uint8)
    rng = np.random.default_rng(0)
    painted = rng.random(m.shape) < 0.3
    right = np.broadcast_to(np.arange(96)[None, :] >= 48, m.shape)
    labels[painted] = (1 + m + (m & right))[painted]  # 1 background, 2 blobs on the left, 3 on the right
    _ome_tiff(tmp_path / "slide.ome.tif", rgb, 0.5)
    _ome_tiff(tmp_path / "slide-labels.ome.tif", labels, 0.5)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    return tmp_path


def _train(tmp_path, *args):
    out = tmp_path / "run"
    rc = main(["train", *args, *TRAIN, "--out", str(out)])
    return rc, out / "last.pt"


def test_class_file_and_ome_pixel_size_reach_the_checkpoint(slide):
    (slide / "classes.json").write_text(json.dumps(CLASSES))
    rc, ckpt = _train(slide, "--image", str(slide / "slide.ome.tif"), "--labels", str(slide / "slide-labels.ome.tif"),
                      "--classes", str(slide / "classes.json"))
    assert rc == 0
    ck = load_checkpoint(ckpt)
    assert ck.classes.names == ("background", "stroma", "gland")
    assert ck.classes.colors == ("#9e9e9e", "#009e73", "#e69f00")
    assert ck.meta["pixel_size"] == pytest.approx([0.5, 0.5])
    assert ck.meta["level0_pixel_size"] == pytest.approx([0.5, 0.5]) and ck.meta["unit"] == "micrometer"
    # the description beside it says the same, for people and tools
    desc = json.loads(ckpt.with_suffix(".json").read_text())
    assert desc["classes"]["names"] == ["background", "stroma", "gland"] and desc["meta"]["pixel_size"] == [0.5, 0.5]


def test_names_with_colours_on_the_command_line(slide):
    rc, ckpt = _train(slide, "--image", str(slide / "slide.ome.tif"), "--labels", str(slide / "slide-labels.ome.tif"),
                      "--classes", "stroma=#112233,gland")
    assert rc == 0
    ck = load_checkpoint(ckpt)
    assert ck.classes.names == ("background", "stroma", "gland")
    assert ck.classes.colors[1] == "#112233" and len(ck.classes.colors) == 3


def test_ngff_label_group_names_and_colours_its_classes(slide):
    from napari_medseg.io.ngff_write import build_pyramid, create_labels_group, write_blocks

    labels = tifffile.imread(slide / "slide-labels.ome.tif")
    root = slide / "slide.zarr"
    la = create_labels_group(root, "gt", labels.shape, (64, 64), (0.5, 0.5), "micrometer",
                             colors={1: (0.5, 0.5, 0.5, 1.0), 2: (0.0, 0.6, 0.4, 1.0), 3: (1.0, 0.0, 0.0, 1.0)})
    write_blocks(la[0], lambda r: labels[r])
    build_pyramid(la, "YX", "labels")
    import zarr

    group = zarr.open_group(str(root / "labels" / "gt"), mode="r+")
    il = dict(group.attrs["image-label"])
    il["properties"] = [{"label-value": 1, "class": "background"}, {"label-value": 2, "class": "stroma"},
                        {"label-value": 3, "class": "tumour"}]
    group.attrs["image-label"] = il
    rc, ckpt = _train(slide, "--image", str(slide / "slide.ome.tif"), "--labels", str(root / "labels" / "gt"))
    assert rc == 0
    ck = load_checkpoint(ckpt)
    assert ck.classes.names == ("background", "stroma", "tumour")
    assert ck.classes.colors == ("#808080", "#009966", "#ff0000")
    assert ck.meta["pixel_size"] == pytest.approx([0.5, 0.5])


def test_labels_without_class_names_say_so(slide, capsys):
    rc, ckpt = _train(slide, "--image", str(slide / "slide.ome.tif"), "--labels", str(slide / "slide-labels.ome.tif"))
    assert rc == 0
    assert load_checkpoint(ckpt).classes.names == ("background", "class 1", "class 2")
    assert "--classes" in capsys.readouterr().err


def test_image_folders_keep_the_tiff_pixel_size(slide):
    (slide / "data" / "images").mkdir(parents=True)
    (slide / "data" / "masks").mkdir()
    img, m = blobs((64, 64), n=6, seed=4)
    _ome_tiff(slide / "data" / "images" / "a.ome.tif", np.stack([img] * 3, -1), 0.25)
    tifffile.imwrite(slide / "data" / "masks" / "a.ome.tif", m)
    rc, ckpt = _train(slide, "--data", str(slide / "data"), "--classes", "cells=#ff00ff")
    assert rc == 0
    ck = load_checkpoint(ckpt)
    assert ck.meta["pixel_size"] == pytest.approx([0.25, 0.25])
    assert ck.classes.names == ("background", "cells") and ck.classes.colors[1] == "#ff00ff"


@pytest.mark.parametrize("text,message", [('{"names": ["background"]}', "at least one class"),
                                          ("not json", "not JSON"),
                                          ('{"names": ["background", "a"]}', "labels hold 2")])
def test_bad_class_file_is_one_clear_error(slide, capsys, text, message):
    (slide / "classes.json").write_text(text)
    rc, _ = _train(slide, "--image", str(slide / "slide.ome.tif"), "--labels", str(slide / "slide-labels.ome.tif"),
                   "--classes", str(slide / "classes.json"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "napari-medseg train: error:" in err and message in err
