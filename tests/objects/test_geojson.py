"""QuPath GeoJSON: objects -> GeoJSON -> objects round trips, holes, multipolygons, coordinates, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.objects.geojson import read_geojson, read_geojson_classes, to_geojson, write_geojson
from napari_medseg.objects.instances import Objects
from napari_medseg.objects.measure import measure_objects

NAMES = ["background", "nucleus", "cell"]
COLORS = ["#9e9e9e", "#e69f00", "#56b4e9"]


def _objects() -> Objects:
    lab = np.zeros((120, 140), np.uint32)
    lab[disk((25, 30), 12, shape=lab.shape)] = 1
    lab[60:90, 20:50] = 2
    lab[70:78, 30:38] = 0  # a hole
    lab[10:14, 100:110] = 3  # two parts of one object
    lab[30:36, 115:125] = 3
    lab[ellipse(90, 100, 15, 25, shape=lab.shape, rotation=0.6)] = 4
    lab[100, 10] = 5  # a single pixel
    return Objects(lab, np.array([0, 1, 2, 1, 2, 1], np.int32))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(("offset", "scale"), [((0, 0), 1.0), ((1000, 2000), 1.0), ((512, 256), 4.0)])
def test_roundtrip_iou_per_object(tmp_path, offset, scale):
    obj = _objects()
    p = write_geojson(tmp_path / "o.geojson", obj, class_names=NAMES, colors=COLORS, offset=offset, scale=scale)
    back = read_geojson(p, obj.labels.shape, NAMES, offset=offset, scale=scale)
    assert back.n == obj.n
    assert list(back.classes) == list(obj.classes)
    for i in range(1, obj.n):  # every object but the single pixel: IoU >= 0.9
        assert _iou(obj.labels == i, back.labels == i) >= 0.9, i
    assert back.labels[100, 10] == 5  # the single pixel survives
    assert (back.labels[71:77, 31:37] == 0).all()  # the hole stays a hole


def test_feature_layout_is_qupath_like():
    obj = _objects()
    table = measure_objects(obj.labels, obj.classes, pixel_size=0.5, class_names=NAMES)
    fc = to_geojson(obj, table=table, class_names=NAMES, colors=COLORS, offset=(100, 200))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == obj.n
    f2 = fc["features"][1]
    props = f2["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"] == {"name": "cell", "color": [0x56, 0xB4, 0xE9]}
    assert props["measurements"]["area_um2"] == pytest.approx(table.loc[1, "area_um2"])
    assert "class" not in props["measurements"]  # only numeric columns
    assert isinstance(f2["id"], str) and len(f2["id"]) == 36  # a UUID
    geom = f2["geometry"]
    assert geom["type"] == "Polygon" and len(geom["coordinates"]) == 2  # outer ring + hole
    outer = np.asarray(geom["coordinates"][0])
    assert (outer[0] == outer[-1]).all()  # closed ring
    # x = column + offset_x, y = row + offset_y; pixel edges at integer coordinates
    assert outer[:, 0].min() == pytest.approx(20 + 200, abs=0.5) and outer[:, 0].max() == pytest.approx(50 + 200, abs=0.5)
    assert outer[:, 1].min() == pytest.approx(60 + 100, abs=0.5) and outer[:, 1].max() == pytest.approx(90 + 100, abs=0.5)
    assert fc["features"][2]["geometry"]["type"] == "MultiPolygon"
    assert len(fc["features"][2]["geometry"]["coordinates"]) == 2
    json.dumps(fc, allow_nan=False)  # valid JSON: no NaN measurements


def test_3d_objects_are_refused():
    obj = Objects(np.ones((2, 4, 4), np.uint32), np.array([0, 1]))
    with pytest.raises(MedsegError, match="2D"):
        to_geojson(obj, class_names=NAMES, colors=COLORS)


def _write(tmp_path, data, name="f.geojson"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _square(x0, y0, w, cls=None, kind="Polygon"):
    ring = [[x0, y0], [x0 + w, y0], [x0 + w, y0 + w], [x0, y0 + w], [x0, y0]]
    props = {"objectType": "detection"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    coords = [ring] if kind == "Polygon" else [[ring]]
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def test_read_qupath_style_list_points_skipped_unknown_classes(tmp_path):
    feats = [_square(10, 10, 10, "nucleus"), _square(40, 5, 8, "cell", "MultiPolygon"),
             {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {}}]
    p = _write(tmp_path, feats)  # older QuPath writes a plain list of features
    with pytest.warns(UserWarning, match="1 feature"):
        obj = read_geojson(p, (30, 60), NAMES)
    assert obj.n == 2 and list(obj.classes) == [0, 1, 2]
    assert (obj.labels == 1).sum() == 100 and (obj.labels[10:20, 10:20] == 1).all()
    assert (obj.labels[5:13, 40:48] == 2).all()
    p2 = _write(tmp_path, {"type": "FeatureCollection", "features": [_square(1, 1, 4, "tumour cell"),
                                                                       _square(8, 1, 4)]}, "u.geojson")
    with pytest.raises(MedsegError, match="tumour cell") as e:
        read_geojson(p2, (20, 20), NAMES)
    assert "unclassified" in str(e.value)
    obj2, names = read_geojson_classes(p2, (20, 20), NAMES, add_classes=True, default_class="nucleus")
    assert names[3] == "tumour cell" and list(obj2.classes) == [0, 3, 1]


def test_bad_files(tmp_path):
    with pytest.raises(UnreadableInputError, match="JSON"):
        read_geojson(_write(tmp_path, "{not json", "a.geojson"), (10, 10), NAMES)
    with pytest.raises(UnreadableInputError, match="FeatureCollection"):
        read_geojson(_write(tmp_path, {"type": "Point", "coordinates": [1, 2]}, "b.geojson"), (10, 10), NAMES)
    with pytest.raises(UnreadableInputError, match="Feature"):
        read_geojson(_write(tmp_path, {"type": "FeatureCollection", "features": [1, 2]}, "c.geojson"), (10, 10), NAMES)
    bad = _square(1, 1, 3, "nucleus")
    bad["geometry"]["coordinates"] = [[["a", "b"], [1]]]
    with pytest.raises(UnreadableInputError, match="coordinates"):
        read_geojson(_write(tmp_path, [bad], "d.geojson"), (10, 10), NAMES)
    with pytest.raises(UnreadableInputError, match="no such file"):
        read_geojson(tmp_path / "none.geojson", (10, 10), NAMES)
    with pytest.raises(MedsegError, match="2D"):
        read_geojson(_write(tmp_path, [], "e.geojson"), (3, 10, 10), NAMES)
    with pytest.raises(MedsegError, match=".geojson"):
        write_geojson(tmp_path / "o.txt", _objects(), class_names=NAMES, colors=COLORS)


def test_overlapping_features_later_wins_and_ids_stay_dense(tmp_path):
    p = _write(tmp_path, [_square(0, 0, 5, "nucleus"), _square(0, 0, 5, "cell"), _square(10, 10, 3, "cell")])
    obj = read_geojson(p, (20, 20), NAMES)
    assert obj.n == 2 and set(np.unique(obj.labels)) == {0, 1, 2}
    assert list(obj.classes) == [0, 2, 2]


def test_rasterize_in_the_box_equals_the_whole_grid():
    """Each feature is drawn within its bounding box (cost of its size, not the grid's): the same pixels as
    drawing it on the whole grid, for polygons inside, across the border, outside, with holes, and multipart."""
    from skimage.draw import polygon as draw_polygon

    from napari_medseg.objects.geojson import rasterize

    def whole(polys, shape, offset, scale):
        m = np.zeros(shape, bool)
        for rings in polys:
            for k, ring in enumerate(rings):
                rr, cc = draw_polygon((ring[:, 1] - offset[0]) / scale - 0.5, (ring[:, 0] - offset[1]) / scale - 0.5,
                                      shape)
                m[rr, cc] = k == 0
        return m

    rng = np.random.default_rng(0)
    shape = (70, 90)
    for i in range(60):
        cx, cy, r = rng.uniform(-20, 200), rng.uniform(-20, 160), rng.uniform(2, 30)
        ang = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 12)))
        outer = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
        hole = np.stack([cx + r / 3 * np.cos(ang), cy + r / 3 * np.sin(ang)], 1)
        polys = [[outer, hole]] if i % 3 == 0 else [[outer]]
        if i % 5 == 0:  # multipart
            polys.append([outer + [25.0, -10.0]])
        for offset, scale in (((0.0, 0.0), 1.0), ((4.0, -3.0), 2.0)):
            assert np.array_equal(rasterize(polys, shape, offset, scale), whole(polys, shape, offset, scale)), i
