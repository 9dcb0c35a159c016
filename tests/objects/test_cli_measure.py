"""``napari-medseg measure`` and ``napari-medseg objects import/export``, called through the CLI's main()."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from napari_medseg.cli import main
from napari_medseg.objects.files import read_objects, write_objects
from napari_medseg.objects.instances import Objects
from napari_medseg.objects.measure import read_table


@pytest.fixture(autouse=True)
def _keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main(argv) rewrites sys.argv


@pytest.fixture
def slide(tmp_path):
    """An RGB slide of 0.5 um pixels, a disc (nucleus) and a square (cell) object, as TIFF + NGFF zarr."""
    img = np.full((64, 96, 3), 40, np.uint8)
    lab = np.zeros((64, 96), np.uint32)
    lab[disk((20, 20), 8)] = 1
    lab[40:50, 50:60] = 2
    img[lab == 1, 1] = 200
    tifffile.imwrite(tmp_path / "img.tif", img, photometric="rgb", resolution=(1 / 0.5e-4, 1 / 0.5e-4),
                     resolutionunit="CENTIMETER")
    objects = Objects(lab, np.array([0, 1, 2], np.int32))
    write_objects(tmp_path / "pred.zarr", objects, class_names=["background", "nucleus", "cell"],
                  colors=["#000000", "#ff0000", "#00ff00"], pixel_size=(0.5, 0.5), unit="micrometer")
    tifffile.imwrite(tmp_path / "plain.tif", lab.astype(np.uint16))
    return tmp_path, lab


def test_measure_table_summary_geojson(slide):
    d, lab = slide
    regions = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {
        "objectType": "annotation", "name": "left"}, "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [48, 0], [48, 64], [0, 64], [0, 0]]]}}]}
    (d / "regions.geojson").write_text(json.dumps(regions))
    rc = main(["measure", str(d / "img.tif"), str(d / "pred.zarr"), "--out", str(d / "t.parquet"),
               "--summary", str(d / "s.csv"), "--regions", str(d / "regions.geojson"),
               "--geojson", str(d / "o.geojson")])
    assert rc == 0
    t = read_table(d / "t.parquet")
    assert list(t["class"]) == ["nucleus", "cell"]
    assert t.loc[1, "area_um2"] == pytest.approx(100 * 0.25)  # the slide's 0.5 um pixels
    assert list(t["mean_green"]) == [200, 40]
    s = read_table(d / "s.csv").set_index(["region", "class"])
    assert s.loc[("left", "nucleus"), "count"] == 1 and s.loc[("left", "cell"), "count"] == 0
    assert s.loc[("left", "all"), "area_mm2"] == pytest.approx(48 * 64 * 0.25e-6)
    fc = json.loads((d / "o.geojson").read_text())
    assert [f["properties"]["classification"]["name"] for f in fc["features"]] == ["nucleus", "cell"]
    assert fc["features"][0]["properties"]["measurements"]["area_um2"] == pytest.approx(t.loc[0, "area_um2"])


def test_measure_pixel_size_override_and_plain_tiff(slide):
    d, _ = slide
    assert main(["measure", str(d / "img.tif"), str(d / "plain.tif"), "--out", str(d / "t.tsv"),
                 "--pixel-size", "2"]) == 0
    t = read_table(d / "t.tsv")
    assert list(t["class"]) == ["object", "object"] and t.loc[1, "area_um2"] == pytest.approx(400.0)


def test_import_export_roundtrip(slide):
    d, lab = slide
    assert main(["objects", "export", str(d / "pred.zarr"), "--geojson", str(d / "o.geojson")]) == 0
    assert main(["objects", "import", str(d / "o.geojson"), "--like", str(d / "img.tif"),
                 "--out", str(d / "back.tif")]) == 0
    back = read_objects(d / "back.tif")
    assert back.class_names == ["background", "nucleus", "cell"]
    for i in (1, 2):
        a, b = lab == i, back.objects.labels == i
        assert (a & b).sum() / (a | b).sum() >= 0.9
        assert back.class_names[back.objects.classes[i]] == ["", "nucleus", "cell"][i]
    assert main(["objects", "import", str(d / "o.geojson"), "--like", str(d / "img.tif"),
                 "--out", str(d / "back.zarr")]) == 0
    z = read_objects(d / "back.zarr")
    assert np.array_equal(z.objects.labels, back.objects.labels) and list(z.objects.classes) == [0, 1, 2]


def test_export_nifti_and_measure_volume_components(tmp_path):
    aff = np.diag([-0.5, 0.5, 2.0, 1.0])
    vol = np.random.default_rng(0).integers(-1000, 1000, (20, 20, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "ct.nii.gz"))
    seg = np.zeros((20, 20, 6), np.uint8)
    seg[2:6, 2:6, 1:3] = 1  # two lesions of class 1, one of class 2
    seg[10:14, 10:12, 3:5] = 1
    seg[15:17, 2:4, 0:2] = 2
    nib.save(nib.Nifti1Image(seg, aff), str(tmp_path / "seg.nii.gz"))
    assert main(["measure", str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz"), "--components",
                 "--out", str(tmp_path / "lesions.csv")]) == 0
    t = read_table(tmp_path / "lesions.csv")
    assert len(t) == 3 and "volume_mm3" in t.columns
    assert sorted(t["volume_mm3"]) == pytest.approx(sorted([4 * 4 * 2 * 0.5, 4 * 2 * 2 * 0.5, 2 * 2 * 2 * 0.5]))
    assert main(["objects", "export", str(tmp_path / "seg.nii.gz"), "--components", "--nifti",
                 str(tmp_path / "inst.nii.gz"), "--like", str(tmp_path / "ct.nii.gz")]) == 0
    out = nib.load(str(tmp_path / "inst.nii.gz"))
    assert np.allclose(out.affine, aff) and out.shape == seg.shape
    data = np.asarray(out.dataobj)
    assert len(np.unique(data)) == 4 and np.array_equal(data > 0, seg > 0)


@pytest.mark.parametrize("argv_tail", [
    ["measure", "{d}/img.tif", "{d}/missing.zarr", "--out", "{d}/t.csv"],
    ["measure", "{d}/img.tif", "{d}/pred.zarr", "--out", "{d}/t.xlsx"],
    ["measure", "{d}/img.tif", "{d}/pred.zarr", "--out", "{d}/nofolder/t.csv"],
    ["measure", "{d}/img.tif", "{d}/pred.zarr", "--out", "{d}/t.csv", "--regions", "{d}/r.geojson"],
    ["measure", "{d}/img.tif", "{d}/small.tif", "--out", "{d}/t.csv"],
    ["objects", "import", "{d}/notjson.geojson", "--like", "{d}/img.tif", "--out", "{d}/x.tif"],
    ["objects", "import", "{d}/notjson.geojson", "--like", "{d}/img.tif", "--out", "{d}/x.png"],
    ["objects", "export", "{d}/pred.zarr", "--nifti", "{d}/x.nii.gz"],
])
def test_bad_inputs_one_line_exit_2(slide, capsys, argv_tail):
    d, _ = slide
    (d / "notjson.geojson").write_text("{oops")
    tifffile.imwrite(d / "small.tif", np.ones((5, 5), np.uint8))
    rc = main([a.format(d=d) for a in argv_tail])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("napari-medseg ") and "error:" in err and len(err.splitlines()) == 1


def test_export_semantic_prediction_of_a_volume(tmp_path, capsys):
    """A volume's prediction zarr whose objects were not found: --nifti writes its class values (not object ids)
    in the source's geometry, and --geojson exports each region of each class as one object."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiled_helpers import write_prediction

    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    aff[:3, 3] = [10, -20, 5]
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 30, 12)).astype(np.float32), aff),
             str(tmp_path / "ct.nii.gz"))
    from napari_medseg.io.reader import open_image

    shape = open_image(tmp_path / "ct.nii.gz", kind="image").shape
    pred = np.zeros(shape, np.uint8)
    pred[2:6, 5:10, 5:10] = 1
    pred[8:10, 20:25, 1:4] = 2
    pred[8:10, 2:6, 30:34] = 1
    pz = write_prediction(tmp_path / "ct.prediction.zarr", pred)
    out = tmp_path / "sem.nii.gz"
    assert main(["objects", "export", str(pz), "--nifti", str(out), "--like", str(tmp_path / "ct.nii.gz")]) == 0
    msg = capsys.readouterr().out
    assert "semantic prediction" in msg and "objects)" not in msg
    img = nib.load(str(out))
    assert np.allclose(img.affine, aff)
    data = np.asarray(img.dataobj)
    assert sorted(np.unique(data)) == [0, 1, 2]  # class values kept: two class-1 regions are both 1
    assert (data == 1).sum() == (pred == 1).sum() and (data == 2).sum() == (pred == 2).sum()
    assert not Path(f"{out}.objects.json").exists()  # no sidecar claiming they are objects
    # read back through the package: the same voxels in the package's orientation
    back = read_objects(out)
    assert np.array_equal(back.objects.labels, pred)


def test_export_semantic_prediction_as_geojson(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiled_helpers import write_prediction

    pred = np.zeros((60, 80), np.uint8)
    pred[5:15, 5:15] = 1
    pred[30:40, 5:15] = 1
    pred[30:50, 40:70] = 2
    pz = write_prediction(tmp_path / "s.prediction.zarr", pred)
    assert main(["objects", "export", str(pz), "--geojson", str(tmp_path / "s.geojson")]) == 0
    assert "holds no objects yet" in capsys.readouterr().out
    fc = json.loads((tmp_path / "s.geojson").read_text())
    names = sorted(f["properties"]["classification"]["name"] for f in fc["features"])
    assert names == ["nucleus", "tissue", "tissue"]  # each region of each class one object, with its class name
