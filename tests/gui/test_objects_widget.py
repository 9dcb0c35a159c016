"""The Objects dock widget in a real napari viewer: objects found off the main thread on a prediction with a
touching pair split by boundary pixels, the measurement table as the layer's features, a row click that
selects the label and moves the camera, a click in the viewer that selects the row, merge / split / delete /
set class / undo with the table following, counts in drawn regions, exports, and the objects sent into the
image's label store (undoable)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.widgets.objects import ObjectsWidget
from napari_medseg.core.classes import ClassSchema
from napari_medseg.labels.store import LabelStore

SCHEMA = ClassSchema(names=("background", "nucleus", "lymphocyte", "stroma", "object boundary"),
                     objects=("nucleus", "lymphocyte"))
SHAPE = (60, 80)


def _prediction() -> np.ndarray:
    """An isolated nucleus (value 1), a touching pair of nuclei split by a boundary column (value 4), stroma
    (value 3) above the pair and at the bottom."""
    pred = np.zeros(SHAPE, np.uint8)
    pred[5:20, 5:20] = 1             # object A (225 px)
    pred[30:42, 30:60] = 1           # the pair: columns 30..44 and 46..59
    pred[30:42, 45] = 4              # ... the boundary between them
    pred[29, 30:60] = 4              # and a rim on top
    pred[22:26, 30:60] = 3           # stroma: not an object class
    pred[50:60, :] = 3
    return pred


@pytest.fixture
def setup(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 10, SHAPE).astype(np.float32)
    img[5:20, 5:20] += 100  # object A is bright
    image = viewer.add_image(img, name="img", scale=(0.5, 0.5))
    pred = viewer.add_labels(_prediction(), name="img prediction", scale=(0.5, 0.5),
                             metadata={"napari_medseg": {"classes": SCHEMA.to_dict(), "unit": "micrometer"}})
    w = ObjectsWidget(viewer)
    qtbot.addWidget(w)
    w.pred_combo.setCurrentIndex(w.pred_combo.findText("img prediction"))
    w.image_combo.setCurrentIndex(w.image_combo.findText("img"))
    return viewer, w, image, pred


def _find(w, qtbot):
    w.find()
    qtbot.waitUntil(lambda: w.state is not None and w._worker is None, timeout=20000)
    return w.state


def _ids_at(layer, *points):
    return [int(layer.data[p]) for p in points]


def test_find_objects_makes_a_measured_instance_layer(setup, qtbot):
    viewer, w, _image, _pred = setup
    assert w.object_classes() == ["nucleus", "lymphocyte"]  # the schema's object classes are preselected
    assert w.class_list.count() == 3  # the boundary class is no choice
    st = _find(w, qtbot)
    layer = viewer.layers["img prediction objects"]
    assert layer is st.layer and layer.data.dtype == np.uint32
    a, left, right = _ids_at(layer, (10, 10), (35, 35), (35, 55))
    assert len({a, left, right}) == 3 and 0 not in (a, left, right)  # the touching pair is two objects
    assert layer.data[35, 45] in (left, right)  # the boundary column went to one of them
    f = layer.features
    assert list(f["index"]) == list(f["id"]) == [1, 2, 3]
    assert set(f["class"]) == {"nucleus"}
    areas = dict(zip(f["id"], f["area_um2"]))
    assert areas[a] == pytest.approx(225 * 0.25)  # pixel size 0.5 um
    means = dict(zip(f["id"], f["mean_intensity"]))
    assert means[a] > 100 > means[left]  # intensities of the image under the prediction
    assert w.table.model.rowCount() == 3
    assert "3 objects" in w.table.counts_label.text() and "nucleus: 3" in w.table.counts_label.text()
    assert "lymphocyte: 0" in w.table.counts_label.text()


def test_row_click_selects_the_label_and_moves_the_camera_and_a_click_selects_the_row(setup, qtbot):
    viewer, w, _image, _pred = setup
    st = _find(w, qtbot)
    right = int(st.layer.data[35, 55])
    view = w.table.view
    row = next(r for r in range(view.model().rowCount()) if view.model().index(r, 0).data() == str(right))
    rect = view.visualRect(view.model().index(row, 1))
    from qtpy.QtCore import Qt

    qtbot.mouseClick(view.viewport(), Qt.LeftButton, pos=rect.center())
    assert st.layer.selected_label == right
    cy, cx = st.centroid(right)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (cy * 0.5, cx * 0.5), atol=1e-6)
    # a click on object A in the viewer selects its row
    a = int(st.layer.data[10, 10])
    ev = SimpleNamespace(type="mouse_press", position=(10 * 0.5, 10 * 0.5), view_direction=None,
                         dims_displayed=[0, 1])
    gen = w._on_viewer_click(viewer, ev)
    next(gen)
    ev.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(gen)
    assert w.table.selected_ids() == [a] and st.layer.selected_label == a
    st.layer.selected_label = right  # the picker (or the layer controls) select the row too
    assert w.table.selected_ids() == [right]


def test_merge_split_delete_set_class_and_undo(setup, qtbot):
    viewer, w, _image, _pred = setup
    st = _find(w, qtbot)
    layer = st.layer
    original = np.array(layer.data)
    a, left, right = _ids_at(layer, (10, 10), (35, 35), (35, 55))
    area = dict(zip(st.table["id"], st.table["n_pixels"]))
    w.merge([left, right])
    assert len(layer.features) == 2 and layer.data[35, 55] == min(left, right) == layer.data[35, 35]
    merged = dict(zip(layer.features["id"], layer.features["n_pixels"]))[min(left, right)]
    assert merged == area[left] + area[right]  # re-measured
    assert w.undo()
    assert len(layer.features) == 3 and _ids_at(layer, (35, 35), (35, 55)) == [left, right]
    # split object A with a vertical line drawn in a Shapes layer (world coordinates: scale 0.5)
    shapes = viewer.add_shapes([np.array([[0.0, 6.0], [15.0, 6.0]])], shape_type="line", name="cuts")
    w.shapes_combo.setCurrentIndex(w.shapes_combo.findText("cuts"))
    edit = w.split()
    assert edit is not None and edit.target == a and len(edit.added) == 1
    assert len(layer.features) == 4 and not layer.data[5:20, 12].any()
    assert set(np.unique(layer.data[5:20, 5:20])) == {0, a, edit.added[0]}
    n_pixels = dict(zip(layer.features["id"], layer.features["n_pixels"]))
    assert n_pixels[a] + n_pixels[edit.added[0]] == 225 - 15
    # a line that misses every object: a message, nothing changes
    shapes.add_lines(np.array([[29.0, 1.0], [29.0, 2.0]]))
    assert w.split() is None and "crosses no object" in w.messages.toPlainText()
    assert len(layer.features) == 4
    w.delete([edit.added[0]])
    assert len(layer.features) == 3 and edit.added[0] not in set(layer.features["id"])
    w.set_class([right], "lymphocyte")
    assert dict(zip(layer.features["id"], layer.features["class"]))[right] == "lymphocyte"
    assert "lymphocyte: 1" in w.table.counts_label.text()
    for _ in range(3):  # set class, delete, split
        assert w.undo()
    assert w.undo() is False  # the merge was undone before
    assert len(layer.features) == 3 and set(layer.features["class"]) == {"nucleus"}
    np.testing.assert_array_equal(layer.data, original)
    assert layer.data is w.state.editor.objects.labels  # the edits went to the array napari shows


def test_count_in_regions_and_exports(setup, qtbot, tmp_path):
    viewer, w, _image, _pred = setup
    st = _find(w, qtbot)
    # a rectangle over the top-left quarter (world units) holds object A only
    regions = viewer.add_shapes([np.array([[0.0, 0.0], [0.0, 12.0], [12.0, 12.0], [12.0, 0.0]])],
                                shape_type="rectangle", name="regions")
    w.shapes_combo.setCurrentIndex(w.shapes_combo.findText("regions"))
    summary = w.count_in_regions()
    nuc = summary[(summary["region"] == "region 1") & (summary["class"] == "nucleus")].iloc[0]
    assert nuc["count"] == 1
    assert nuc["area_mm2"] == pytest.approx(12 * 12 * 1e-6, rel=1e-3)
    assert w.regions_view.isVisibleTo(w) and w.regions_model.rowCount() == len(summary)
    del regions
    csv = w.export_table(tmp_path / "objects.csv")
    back = pd.read_csv(csv)
    assert list(back["id"]) == [1, 2, 3]
    pq = w.export_table(tmp_path / "objects.parquet")
    assert len(pd.read_parquet(pq)) == 3
    gj = w.export_geojson(tmp_path / "objects.geojson")
    fc = json.loads(gj.read_text())
    assert len(fc["features"]) == 3
    assert {f["properties"]["classification"]["name"] for f in fc["features"]} == {"nucleus"}
    assert st.layer.ndim == 2


def test_send_to_training_labels_writes_classes_and_rims_and_undo_takes_them_back(setup, qtbot):
    viewer, w, image, _pred = setup
    store = LabelStore.in_memory(SHAPE, chunks=(32, 32), classes=SCHEMA, pixel_size=(0.5, 0.5))
    store.write((slice(10, 11), slice(10, 11)), 1)  # the user's own background stroke inside object A
    w.session.attach_labels(image, store)
    st = _find(w, qtbot)
    n = w.send_to_labels()
    assert n and n > 0
    lab = store.read((slice(0, SHAPE[0]), slice(0, SHAPE[1])))
    boundary = SCHEMA.names.index("object boundary") + 1
    assert lab[12, 12] == 2  # inside object A: nucleus
    assert lab[5, 12] == boundary  # its rim
    assert lab[10, 10] == 1  # the user's stroke stays
    assert lab[35, 45] == boundary or lab[35, 44] == boundary  # where the pair touches: a rim between them
    assert lab[24, 40] == 4  # stroma in the objects' region keeps its class
    assert lab[25, 10] == 1  # background in the objects' region
    # nothing written outside the objects' region (grown by the rim width + 1)
    assert st.region() == (slice(5, 42), slice(5, 60))
    assert not lab[46:].any() and not lab[:, 64:].any() and lab[44, 10] == 1
    assert w.undo()
    lab = store.read((slice(0, SHAPE[0]), slice(0, SHAPE[1])))
    assert lab[10, 10] == 1 and int((lab > 0).sum()) == 1


def test_class_table_objects_tick_and_edits_keep_the_object_classes(make_napari_viewer, qtbot, tmp_path,
                                                                    monkeypatch):
    """The Annotate widget's "Obj." tick marks object classes (the first adds the boundary class); renaming,
    recolouring, adding and removing classes keep them."""
    from qtpy.QtCore import Qt

    from napari_medseg._napari.widgets.annotate import AnnotateWidget
    from napari_medseg._napari.widgets.class_table import OBJ_COL

    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(tmp_path / "user-data"))
    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    qtbot.addWidget(w)
    path = tmp_path / "slide.tif"
    path.write_bytes(b"")
    viewer.add_image(np.zeros((64, 64), np.uint8), name="slide",
                     metadata={"napari_medseg": {"path": str(path), "axes": "YX"}})
    qtbot.waitUntil(lambda: w.store is not None, timeout=3000)
    store = w.store
    assert w.add_class("stroma")
    assert w.class_table.item(1, OBJ_COL).checkState() == Qt.Unchecked
    w.class_table.item(1, OBJ_COL).setCheckState(Qt.Checked)  # the user ticks "foreground"
    assert store.classes.objects == ("foreground",)
    assert store.classes.names == ("background", "foreground", "stroma", "object boundary")
    boundary_tick = w.class_table.item(3, OBJ_COL)
    assert not boundary_tick.flags() & Qt.ItemIsUserCheckable  # the boundary class is no object class
    w.class_table.item(1, 1).setText("nucleus")  # rename: it stays an object class
    assert store.classes.objects == ("nucleus",)
    assert w.set_class_color(1, "#123456") and store.classes.objects == ("nucleus",)
    assert w.add_class("cell") and store.classes.objects == ("nucleus",)
    assert w.set_object_class(4, True) and store.classes.objects == ("nucleus", "cell")
    monkeypatch.setattr(w, "_confirm", lambda text: True)
    assert w.remove_class(2)  # stroma (labels.ops.remove_class): the object classes stay
    assert store.classes.names == ("background", "nucleus", "object boundary", "cell")
    assert store.classes.objects == ("nucleus", "cell")
    assert w.remove_class(3)  # removing an object class drops it from the objects
    assert store.classes.objects == ("nucleus",)
    w.class_table.item(1, OBJ_COL).setCheckState(Qt.Unchecked)  # the last one: the boundary class stays
    assert store.classes.objects == () and "object boundary" in store.classes.names
    w.close_store()


def test_the_plugin_menu_widget_works_through_napari_public_proxy(make_napari_viewer, qtbot):
    """Opened as napari opens it (the manifest's "Objects", napari's public-only viewer proxy): finding,
    going to an object and editing use no private napari attribute."""
    import warnings
    from pathlib import Path

    viewer = make_napari_viewer()
    viewer.add_labels(_prediction(), name="p", metadata={"napari_medseg": {"classes": SCHEMA.to_dict()}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _dock, w = viewer.window.add_plugin_dock_widget("napari-medseg", "Objects")
        assert isinstance(w, ObjectsWidget) and type(w.viewer).__name__ == "PublicOnlyProxy"
        st = _find(w, qtbot)
        w.go_to(int(st.layer.data[10, 10]))
        assert w.delete([int(st.layer.data[10, 10])]) is not None and w.undo()
        viewer.add_shapes([np.array([[0.0, 12.0], [30.0, 12.0]])], shape_type="line", name="cut")
        w.shapes_combo.setCurrentIndex(w.shapes_combo.findText("cut"))
        assert w.split() is not None
    package = Path(ObjectsWidget.__module__.replace(".", "/")).parts[0]
    private = [f"{w_.filename}:{w_.lineno}: {w_.message}" for w_ in caught
               if "Private attribute access" in str(w_.message) and f"/{package}/" in w_.filename]
    assert private == []
    assert len(st.layer.features) == 4  # found in pixels: no unit, no pixel size
    assert "area_px2" in st.layer.features.columns


def test_3d_objects_go_to_their_slice_and_split_on_the_slice_shown(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    pred = np.zeros((10, 30, 30), np.uint8)
    pred[1:4, 5:25, 5:25] = 1
    pred[6:9, 5:12, 5:12] = 1
    viewer.add_labels(pred, name="vol", scale=(2.0, 1.0, 1.0),
                      metadata={"napari_medseg": {"classes": SCHEMA.to_dict(), "unit": "millimeter"}})
    w = ObjectsWidget(viewer)
    qtbot.addWidget(w)
    st = _find(w, qtbot)
    assert "volume_mm3" in st.table.columns and len(st.table) == 2
    deep = int(st.layer.data[7, 8, 8])
    w.go_to(deep)
    assert viewer.dims.point[0] == pytest.approx(7 * 2.0)  # the object's slice (centroid z 7, scale 2)
    big = int(st.layer.data[2, 10, 10])
    w.go_to(big)
    shapes = viewer.add_shapes([np.array([[4.0, 15.0, 0.0], [4.0, 15.0, 29.0]])], shape_type="line", name="cut")
    w.shapes_combo.setCurrentIndex(w.shapes_combo.findText("cut"))
    edit = w.split()
    assert edit is not None and edit.target == big
    assert not st.layer.data[1:4, 15, 5:25].any()  # cut through every slice of the object
    assert len(st.table) == 3
    del shapes


def _whole_slide(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A 600 x 700 prediction zarr counted as a whole slide (the in-memory limit lowered), its objects found by
    the widget's whole-slide pass: (viewer, widget, prediction array, zarr path, schema)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "objects"))
    from tiled_helpers import SCHEMA as TSCHEMA
    from tiled_helpers import discs_2d, write_prediction

    from napari_medseg._napari.widgets import objects_slide

    pred_arr = discs_2d()
    pz = write_prediction(tmp_path / "slide.prediction.zarr", pred_arr)
    monkeypatch.setattr(objects_slide, "MAX_FIND_PIXELS", 1000)  # 600 x 700 counts as a whole slide here
    viewer = make_napari_viewer()
    viewer.add_labels(pred_arr, name="slide prediction",
                      metadata={"napari_medseg": {"classes": TSCHEMA.to_dict(), "path": str(pz)}})
    w = ObjectsWidget(viewer)
    qtbot.addWidget(w)
    w.pred_combo.setCurrentIndex(w.pred_combo.findText("slide prediction"))
    w.set_object_classes(list(TSCHEMA.objects))
    w.find()
    qtbot.waitUntil(lambda: w.state is not None and w._worker is None, timeout=30000)
    return viewer, w, pred_arr, pz, TSCHEMA


def test_whole_slide_prediction_goes_block_by_block(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A prediction zarr above the in-memory limit: the widget runs the whole-slide pass and shows its
    multiscale objects with the table; the table and going to an object work, editing says why not."""
    from napari_medseg.objects import DEFAULT_MIN_SEED
    from napari_medseg.objects.instances import find_objects

    viewer, w, pred_arr, _pz, TSCHEMA = _whole_slide(make_napari_viewer, qtbot, tmp_path, monkeypatch)
    st = w.state
    layer = viewer.layers["slide prediction objects"]
    assert layer.multiscale and st.editor is None
    whole = find_objects(pred_arr, TSCHEMA, min_seed=DEFAULT_MIN_SEED)
    assert len(st.table) == whole.n > 50
    assert int(np.asarray(layer.data[0]).max()) == whole.n
    assert not w.merge_btn.isEnabled() and w.save_table_btn.isEnabled()
    obj = int(st.table["id"].iloc[len(st.table) // 2])
    w.go_to(obj)
    assert layer.selected_label == obj
    y, x = st.centroid(obj)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (y, x), atol=1.0)
    assert w.merge([1, 2]) is None and "not held in memory" in w.messages.entries[-1][2]
    assert w.export_geojson(tmp_path / "o.geojson") is None and not (tmp_path / "o.geojson").exists()


def test_volume_objects_go_out_as_nifti_and_dicom_seg_in_the_files_geometry(make_napari_viewer, qtbot, tmp_path):
    import nibabel as nib

    from napari_medseg.io.reader import open_path
    from napari_medseg.samples.dicom import write_dicom_series

    schema = ClassSchema(("background", "lesion")).with_objects(["lesion"])
    pred = np.zeros((6, 20, 24), np.uint8)
    pred[1:4, 3:8, 3:8] = 1
    pred[2:5, 12:17, 14:20] = 1
    folder = tmp_path / "exam"
    write_dicom_series(np.zeros((6, 20, 24), np.int16), folder, spacing=(2.0, 1.0, 1.0))
    src = next(s for s in open_path(folder) if s.kind == "image")
    assert src.shape == pred.shape
    viewer = make_napari_viewer()
    viewer.add_image(np.asarray(src.levels[0]), name="exam", metadata={"napari_medseg": {"path": str(folder)}})
    viewer.add_labels(pred, name="exam prediction", metadata={"napari_medseg": {"classes": schema.to_dict()}})
    w = ObjectsWidget(viewer)
    qtbot.addWidget(w)
    w.pred_combo.setCurrentIndex(w.pred_combo.findText("exam prediction"))
    w.image_combo.setCurrentIndex(w.image_combo.findText("exam"))
    st = _find(w, qtbot)
    assert st.editor.objects.n == 2 and w.save_volume_btn.isEnabled()
    nii = w.export_volume(tmp_path / "lesions.nii.gz")
    img = nib.load(nii)
    assert img.shape == (24, 20, 6)  # columns, rows, slices of the DICOM files
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0) > 0, pred > 0)
    seg = w.export_volume(tmp_path / "lesions.dcm")
    assert seg is not None and seg.is_file()
    import highdicom as hd

    assert [s.SegmentLabel for s in hd.seg.segread(seg).SegmentSequence] == ["lesion", "object boundary"]
    viewer.layers["exam"].metadata = {}
    assert w.export_volume(tmp_path / "x.nii.gz") is None and "NIfTI file or a DICOM" in w.messages.entries[-1][2]


def test_counts_per_region_go_to_a_file(setup, qtbot, tmp_path):
    viewer, w, _image, _pred = setup
    _find(w, qtbot)
    assert not w.save_counts_btn.isEnabled() and w.export_counts(tmp_path / "c.csv") is None
    viewer.add_shapes([np.array([[0.0, 0.0], [0.0, 12.0], [12.0, 12.0], [12.0, 0.0]])], shape_type="rectangle",
                      name="regions")
    w.shapes_combo.setCurrentIndex(w.shapes_combo.findText("regions"))
    summary = w.count_in_regions()
    assert w.save_counts_btn.isEnabled()
    back = pd.read_csv(w.export_counts(tmp_path / "c.csv"))
    assert list(back["count"]) == list(summary["count"]) and set(back["region"]) == {"region 1"}


@pytest.mark.parametrize("multiscale", [False, True])
def test_geojson_objects_come_back_in_onto_the_image(make_napari_viewer, qtbot, tmp_path, monkeypatch, multiscale):
    """Objects exported for QuPath come back in through 'Import GeoJSON...' as an objects layer over the same
    pixels, with their classes and table; on a slide too large to hold they land on its first level that fits."""
    from napari_medseg._napari.widgets import objects_jobs
    from napari_medseg.objects.geojson import write_geojson
    from napari_medseg.objects.instances import find_objects

    pred_arr = _prediction()
    found = find_objects(pred_arr, SCHEMA)  # Objects
    gj = write_geojson(tmp_path / "o.geojson", found, class_names=list(SCHEMA.names), colors=list(SCHEMA.colors))
    viewer = make_napari_viewer()
    img = np.random.default_rng(0).uniform(0, 10, SHAPE).astype(np.float32)
    if multiscale:  # level 0 is 2x the objects' grid; only level 1 fits the (lowered) limit
        monkeypatch.setattr(objects_jobs, "MAX_FIND_PIXELS", SHAPE[0] * SHAPE[1])
        big = np.kron(img, np.ones((2, 2), np.float32))
        image = viewer.add_image([big, img], name="img", scale=(0.25, 0.25))
        gj = write_geojson(tmp_path / "o2.geojson", found, class_names=list(SCHEMA.names),
                           colors=list(SCHEMA.colors), scale=2.0)
    else:
        image = viewer.add_image(img, name="img", scale=(0.5, 0.5))
    w = ObjectsWidget(viewer)
    qtbot.addWidget(w)
    w.image_combo.setCurrentIndex(w.image_combo.findText("img"))
    assert w.import_geojson(gj)  # read, drawn and measured in a worker
    qtbot.waitUntil(lambda: w._worker is None, timeout=30000)
    st = w.state
    assert st is not None, w.messages.entries[-1]
    lab = np.asarray(st.layer.data)
    assert lab.shape == SHAPE and int(lab.max()) == found.n == len(st.table)
    for i in range(1, found.n + 1):  # each object covers the same pixels (ids in the file's order)
        a = found.labels == i
        b = lab == i
        assert (a & b).sum() / (a | b).sum() >= 0.85
    assert set(st.table["class"]) == {"nucleus"}
    np.testing.assert_allclose(st.layer.scale, (0.5, 0.5))
    np.testing.assert_allclose(st.layer.translate, image.translate[-2:] + (0.125 if multiscale else 0.0))
    # they round-trip through the widget's own export in the image's level-0 coordinates
    back = w.export_geojson(tmp_path / "back.geojson")
    a = json.loads(gj.read_text())["features"]
    b = json.loads(back.read_text())["features"]
    assert len(a) == len(b)
    ca = np.mean(a[0]["geometry"]["coordinates"][0], 0)
    cb = np.mean(b[0]["geometry"]["coordinates"][0], 0)
    np.testing.assert_allclose(ca, cb, atol=1e-6)  # a coarser level's pixel centres: (f - 1) / 2 px in
    # errors: no image chosen, a file with no objects on the image
    w.image_combo.setCurrentIndex(0)
    assert not w.import_geojson(gj) and "Choose the image" in w.messages.entries[-1][2]
    w.image_combo.setCurrentIndex(w.image_combo.findText("img"))
    (tmp_path / "none.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    assert w.import_geojson(tmp_path / "none.geojson")
    qtbot.waitUntil(lambda: w._worker is None, timeout=30000)
    assert "no polygon objects" in w.messages.entries[-1][2] and w.state is st  # the objects shown stay


def test_a_whole_slides_objects_are_proofread_a_view_at_a_time(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """'Edit view' on whole-slide objects: the objects in view become editable (those at the view's edge
    locked), a deletion and a class change are saved into the slide's levels and table, and the widget is back on
    the slide's objects."""
    import zarr

    from napari_medseg._napari.widgets import objects_slide
    from napari_medseg._napari.widgets.objects_slide import SlideObjectsState, WindowObjectsState

    viewer, w, _pred, pz, _schema = _whole_slide(make_napari_viewer, qtbot, tmp_path, monkeypatch)
    slide = w.state
    assert isinstance(slide, SlideObjectsState) and w.edit_view_btn.isEnabled() and not w.save_view_btn.isEnabled()
    viewer.dims.ndisplay = 3  # 'Edit view' needs the 2D view: a message, no worker, no exception
    assert not objects_slide.edit_view(w) and "2D view" in w.messages.entries[-1][2] and w._worker is None
    viewer.dims.ndisplay = 2
    camera_of(viewer).center = (300, 350)
    camera_of(viewer).zoom = 3.0
    assert objects_slide.edit_view(w)  # the window is read and measured in a worker
    assert not w.edit_view_btn.isEnabled()  # not twice at once
    qtbot.waitUntil(lambda: w._worker is None, timeout=30000)
    st = w.state
    assert isinstance(st, WindowObjectsState) and w.save_view_btn.isEnabled() and w.merge_btn.isEnabled()
    box = st.window.box
    assert 0 < box[0].start < 300 < box[0].stop < 600
    lab = st.layer.data
    inner = [i for i in np.unique(lab[lab > 0]).tolist() if i not in st.window.locked]
    a, b = inner[:2]
    assert w.delete([a]) is not None and w.set_class([b], "lesion") is not None
    edge = sorted(st.window.locked)[0]
    assert w.delete([edge]) is None and "continues outside" in w.messages.entries[-1][2]
    assert not slide.layer.visible  # hidden while its objects are edited in the view's layer
    objects_slide.save_view(w)  # back on the slide at once; the writing runs in a worker
    assert w.state is slide and "(editing)" not in " ".join(ly.name for ly in viewer.layers)
    assert not w.edit_view_btn.isEnabled()  # not while the slide is being written
    qtbot.waitUntil(lambda: w._worker is None, timeout=30000)
    assert slide.layer.visible and w.edit_view_btn.isEnabled()
    assert w.last_save == {"changed": 2, "removed": 1, "added": 0}
    assert not any("closed without saving" in e[2] for e in w.messages.entries)
    lvl0 = zarr.open_group(str(pz), mode="r")["labels/objects/0"][...]
    assert not (lvl0 == a).any() and (lvl0 == b).any()
    assert a not in set(slide.table["id"]) and slide.table.loc[slide.table["id"] == b, "class"].iloc[0] == "lesion"
    assert not (np.asarray(slide.layer.data[0]) == a).any()  # the layer shows the slide as saved
    assert objects_slide.edit_view(w)  # a view closed without saving: back on the slide, nothing written
    qtbot.waitUntil(lambda: w._worker is None, timeout=30000)
    st = w.state
    w.delete([b])
    viewer.layers.remove(st.layer)
    assert w.state is slide and slide.layer.visible and (zarr.open_group(str(pz), mode="r")["labels/objects/0"][...]
                                                         == b).any()
