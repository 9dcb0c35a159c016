"""The Annotate widget's "Where to paint next" box in a real viewer: ranking in a worker, the heat map over
the image (geometry, updated in place), "Next region to paint" moving the camera to the region and skipping a
region painted after the ranking, the re-rank when the Train widget finishes a run (the session's listener),
and every failure as a message."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import pytest
from predict_gui_helpers import make_checkpoint

from napari_medseg._napari.layers import camera_of
from napari_medseg._napari.session import Session, session_for
from napari_medseg._napari.widgets.annotate import AnnotateWidget
from napari_medseg._napari.widgets.guidance import (
    HEATMAP_LAYER,
    NO_MODEL,
    NextRegionBox,
    heatmap_geometry,
    is_heatmap_layer,
    region_text,
)
from napari_medseg.guidance import PAINTED_MAX, painted_fraction

SHAPE = (384, 448)  # 3 x 4 regions of 128 px (the last column 64 px wide)
REGION = 128
SCALE = (0.5, 0.5)
TRANSLATE = (10.0, -4.0)


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(tmp_path / "user-data"))
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))


def _slide(seed: int = 0) -> np.ndarray:
    """Noise on the left, flat grey with a few bright discs on the right: an untrained model is unsure in
    different amounts in different places, enough to rank."""
    rng = np.random.default_rng(seed)
    img = np.full(SHAPE, 90.0)
    img[:, : SHAPE[1] // 2] = rng.integers(0, 255, (SHAPE[0], SHAPE[1] // 2))
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for cy, cx in ((80, 300), (250, 380), (330, 260)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 30 ** 2] = 220
    return img.astype(np.uint8)


def _image(viewer, folder: Path, name: str = "slide"):
    import tifffile

    path = folder / f"{name}.tif"
    img = _slide()
    tifffile.imwrite(path, img)  # the labels go beside it; the ranking reads it
    return viewer.add_image(img, name=name, scale=SCALE, translate=TRANSLATE,
                            metadata={"napari_medseg": {"path": str(path), "axes": "YX"}})


@pytest.fixture
def annotate(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w)
    _image(viewer, tmp_path)
    qtbot.waitUntil(lambda: w.store is not None, timeout=5000)
    box: NextRegionBox = w.guidance
    box.region_spin.setValue(REGION)
    yield viewer, w, box
    box.shutdown()
    w.close_store()


def _rank(qtbot, box, model=None, timeout_ms: int = 120_000) -> None:
    before = box.ranking
    assert box.rank(model)
    assert box.running and box.rank_button.text() == "Stop ranking"
    qtbot.waitUntil(lambda: not box.running, timeout=timeout_ms)
    qtbot.wait(60)  # the heat map is shown a moment after it is added (add_then_show)
    assert box.ranking is not None and box.ranking is not before, [e[2] for e in box.messages.entries]


def _said(box, level: str) -> list[str]:
    return [t for _, lv, t in box.messages.entries if lv == level]


def _centre_px(viewer, image) -> np.ndarray:
    """The camera centre in the image's level-0 pixels (y, x)."""
    world = np.asarray(camera_of(viewer).center[-2:], float)
    return (world - np.asarray(image.translate[-2:])) / np.asarray(image.scale[-2:])


def _inside(point, box) -> bool:
    return all(a <= p < b for p, (a, b) in zip(point, box))


def _row_painted(box, row: int) -> int:
    """The painted percentage a list row shows."""
    return int(re.search(r"painted (\d+) %$", box.list.item(row).text()).group(1))


def _paint_region(ctl, box, fraction: float = 0.05) -> None:
    """Paint a square of ``fraction`` of the region ``box`` (level-0 pixels) with the brush's layer, the way a
    stroke lands in the labels' window (not saved yet: the widget must save it before it looks)."""
    side = int(np.ceil(np.sqrt(fraction * np.prod([b - a for a, b in box]))))
    (y0, y1), (x0, x1) = box
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    wy, wx = ctl.window[0].start, ctl.window[1].start
    assert ctl.level == 0 and ctl.window[0].start <= cy < ctl.window[0].stop
    data = ctl.layer.data
    data[cy - side // 2 - wy: cy - side // 2 - wy + side, cx - side // 2 - wx: cx - side // 2 - wx + side] = 2
    ctl.layer.refresh()


def test_rank_shows_heatmap_list_and_next_skips_a_region_painted_since(annotate, qtbot, tmp_path):
    viewer, w, box = annotate
    ck = make_checkpoint(tmp_path / "model.pt")
    box.model_edit.setText(str(ck))
    _rank(qtbot, box)
    ranking = box.ranking
    image = viewer.layers["slide"]
    assert ranking.complete and len(ranking.regions) == 12 and ranking.heatmap.shape == (3, 4)
    scores = [r.score for r in ranking.regions]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]

    # the heat map: a cell per region, on the image's pixels, styled as the contract says
    heat = viewer.layers[HEATMAP_LAYER]
    assert is_heatmap_layer(heat) and heat.visible
    np.testing.assert_allclose(heat.scale, (REGION * 0.5, REGION * 0.5))
    np.testing.assert_allclose(heat.translate, (10.0 + 63.5 * 0.5, -4.0 + 63.5 * 0.5))
    assert heat.blending == "translucent" and heat.colormap.name == "inferno (fading)"
    assert heat.opacity == pytest.approx(0.45)
    np.testing.assert_allclose(heat.contrast_limits, (scores[-1], scores[0]), rtol=1e-6)  # the spread of the ranks
    low, high = heat.colormap.map(np.array([0.0, 1.0]))
    assert low[3] == 0 and high[3] == 1  # the least unsure region leaves the image as it is; the most is coloured
    layers = list(viewer.layers)  # right above the image, under the labels being painted
    assert layers.index(heat) == layers.index(image) + 1 < layers.index(w.controller.layer)
    best = ranking.regions[0]
    cell = tuple(a // REGION for a, _ in best.box)
    assert heat.data[cell] == pytest.approx(best.score, rel=1e-5)
    # each cell's edges are its region's pixel edges on the image (napari centres pixels on their coordinates)
    for r in ranking.regions:
        cell_r = np.array([a // REGION for a, _ in r.box], float)
        first_edge = image.data_to_world(np.array([a for a, _ in r.box], float) - 0.5)
        np.testing.assert_allclose(heat.world_to_data(first_edge), cell_r - 0.5, atol=1e-9)
        if all(b - a == REGION for a, b in r.box):  # a whole cell (the last column is cut by the image)
            centre_px = [(a + b - 1) / 2 for a, b in r.box]
            np.testing.assert_allclose(image.world_to_data(heat.data_to_world(cell_r)), centre_px)
    # the heat map is not an image to paint on
    assert HEATMAP_LAYER not in [w.image_combo.itemText(i) for i in range(w.image_combo.count())]
    assert viewer.layers.selection.active is w.controller.layer  # the brush's layer stays selected

    # the list: the regions, best first, as the contract writes them
    assert box.list.count() == 12
    assert box.list.item(0).text() == region_text(1, best) and box.list.item(0).text().startswith("#1  ")
    assert "painted 0 %" in box.list.item(0).text()

    # Next: the camera goes to the best region, its row is selected
    assert box.next_region() == 0
    assert _inside(_centre_px(viewer, image), best.box)
    assert box.list.currentRow() == 0 and box.status.text().startswith("#1 of 12: uncertainty")
    assert not heat.visible and "hidden while you paint" in _said(box, "info")[-1]  # it would tint the region

    # the second best is painted after ranking (a stroke not yet saved), the fourth mostly: Next skips them.
    # The image is one chunk of the labels: its per-chunk count alone would spread the paint over all 12
    # regions (1/12 of 5 % for the second: "not painted"; 1/12 of 65 % for every other: "painted").
    second, third, fourth, fifth = ranking.regions[1:5]
    _paint_region(w.controller, second.box, 0.05)
    _paint_region(w.controller, fourth.box, 0.6)
    assert painted_fraction(w.store, [second.box])[0] == 0  # not saved yet
    assert box.next_region() == 2
    centre = _centre_px(viewer, image)
    assert _inside(centre, third.box) and not _inside(centre, second.box)
    assert box.list.currentRow() == 2
    assert painted_fraction(w.store, [second.box])[0] >= PAINTED_MAX  # the widget saved the stroke first
    assert _row_painted(box, 1) == round(100 * painted_fraction(w.store, [second.box])[0]) >= 5
    assert _row_painted(box, 2) == 0
    assert box.next_region() == 4 and _inside(_centre_px(viewer, image), fifth.box)
    assert _row_painted(box, 3) == round(100 * painted_fraction(w.store, [fourth.box])[0]) > 20
    grey = box.list.item(1).foreground().color().name()
    assert grey == box.list.item(3).foreground().color().name() != box.list.item(2).foreground().color().name()

    # a click on a row goes there too
    box.list.itemClicked.emit(box.list.item(5))
    assert _inside(_centre_px(viewer, image), ranking.regions[5].box) and box._current == 5
    assert not _said(box, "error")


def test_rank_again_updates_the_heatmap_in_place(annotate, qtbot, tmp_path):
    viewer, _w, box = annotate
    box.model_edit.setText(str(make_checkpoint(tmp_path / "a.pt", seed=0)))
    _rank(qtbot, box)
    heat = viewer.layers[HEATMAP_LAYER]
    heat.opacity = 0.8  # the user's choice stays
    heat.visible = False
    first = np.array(heat.data)
    n_layers = len(viewer.layers)
    box.model_edit.setText(str(make_checkpoint(tmp_path / "b.pt", seed=3)))
    _rank(qtbot, box)
    assert viewer.layers[HEATMAP_LAYER] is heat and len(viewer.layers) == n_layers
    assert not np.array_equal(np.asarray(heat.data), first)
    np.testing.assert_allclose(np.asarray(heat.data), np.nan_to_num(box.ranking.heatmap, nan=0.0))
    assert heat.opacity == pytest.approx(0.8) and heat.visible  # ranked on request: shown again
    assert box.ranking.checkpoint.endswith("b.pt")


def test_next_says_when_every_region_is_painted_and_wraps_to_the_best_left(annotate, qtbot, tmp_path):
    viewer, w, box = annotate
    box.model_edit.setText(str(make_checkpoint(tmp_path / "model.pt")))
    _rank(qtbot, box)
    regions = box.ranking.regions
    box.go_to(len(regions) - 1)  # the last one shown: Next goes back to the best one not painted
    assert box.next_region() == 0
    assert any("back to the best" in t for t in _said(box, "info"))
    w.store.write(tuple(slice(0, s) for s in SHAPE), 1)  # everything painted (e.g. an accepted prediction)
    assert box.next_region() is None
    assert "All 12 ranked regions are painted" in _said(box, "info")[-1]
    assert box.list.item(0).foreground().color().name() != box.list.palette().text().color().name()


def test_rerank_after_a_training_run_through_the_session_listener(annotate, qtbot, tmp_path):
    """The Train widget's finished run reaches the box through ``Session.checkpoint_trained``: it ranks
    again, in the background, with the model just trained."""
    from napari_medseg._napari.widgets.train import TrainWidget

    viewer, w, box = annotate
    img = viewer.layers["slide"]
    scribbles = np.zeros(SHAPE, np.uint8)
    scribbles[::9] = 1
    scribbles[200:240, 260:300] = 2
    viewer.add_labels(scribbles, name="scribbles", scale=SCALE, translate=TRANSLATE)
    train = TrainWidget(viewer)
    qtbot.addWidget(train)
    train.image_combo.setCurrentText(img.name)
    train.labels_combo.setCurrentText("scribbles")
    train.steps_spin.setValue(3)
    train.patch_spin.setValue(64)
    train.batch_spin.setValue(2)
    train.preview_check.setChecked(False)
    train.out_edit.setText(str(tmp_path / "run"))
    heard: list[Path] = []
    session_for(viewer).on_checkpoint(heard.append)
    assert box.ranking is None and box.rerank_check.isChecked()
    try:
        train.start()
        assert train._worker is not None, [e[2] for e in train.messages.entries]
        qtbot.waitUntil(lambda: train._worker is None, timeout=180_000)
        trained = session_for(viewer).best_checkpoint or session_for(viewer).last_checkpoint
        assert heard and heard[-1].is_file() and heard[-1] in (session_for(viewer).best_checkpoint,
                                                               session_for(viewer).last_checkpoint)
        qtbot.waitUntil(lambda: box.ranking is not None and not box.running, timeout=120_000)
    finally:
        train.shutdown()
    assert Path(box.ranking.checkpoint) == Path(heard[-1]) and trained is not None
    assert HEATMAP_LAYER in viewer.layers and box.list.count() > 0
    # with the box off, a finished run does not rank
    box.rerank_check.setChecked(False)
    ranking = box.ranking
    session_for(viewer).checkpoint_trained(heard[-1])
    assert not box.running and box.ranking is ranking


def test_failures_are_messages_and_the_box_stays_usable(annotate, qtbot, tmp_path):
    viewer, w, box = annotate
    # no model trained yet, none chosen
    assert not box.rank()
    assert _said(box, "error")[-1] == NO_MODEL and not box.running
    # Next before any ranking
    assert box.next_region() is None and "Rank the regions first" in _said(box, "info")[-1]
    # a file that is not a model: the worker fails, the message says why, the box is ready again
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    box.model_edit.setText(str(bad))
    assert box.rank()
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    errors = _said(box, "error")
    assert len(errors) == 2 and "broken.pt" in errors[-1] and "Traceback" not in errors[-1]
    assert box.rank_button.text() == "Rank regions" and box.rank_button.isEnabled()
    assert box.progress.format() == "failed" and HEATMAP_LAYER not in viewer.layers
    # a model file that does not exist
    box.model_edit.setText(str(tmp_path / "nowhere" / "model.pt"))
    assert not box.rank() and "does not exist" in _said(box, "error")[-1]
    # the box still ranks once given a model
    box.model_edit.setText(str(make_checkpoint(tmp_path / "model.pt")))
    _rank(qtbot, box)
    # the ranking belongs to its image: another image's labels get a message, not a jump
    other = viewer.add_image(np.zeros((200, 200), np.uint8), name="other")
    w.image_combo.setCurrentText(other.name)
    qtbot.waitUntil(lambda: w.store is not None and w.store.shape == (200, 200), timeout=5000)
    assert box.next_region() is None and "another image" in _said(box, "error")[-1]


def test_stop_keeps_the_regions_ranked_so_far(annotate, qtbot, tmp_path, monkeypatch):
    import time

    import napari_medseg.guidance as guidance
    from napari_medseg.guidance.scoring import rank_regions

    def slowed(*args, **kw):  # the real pass, each batch 50 ms longer: Stop arrives in the middle
        gen = rank_regions(*args, **kw)
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                return done.value
            time.sleep(0.05)
            yield ev

    monkeypatch.setattr(guidance, "rank_regions", slowed, raising=False)
    viewer, _w, box = annotate
    box.region_spin.setValue(32)  # 12 x 14 regions: about 11 batches of 16
    box.model_edit.setText(str(make_checkpoint(tmp_path / "model.pt")))
    assert box.rank()
    qtbot.waitUntil(lambda: box.progress.value() > 0, timeout=60_000)
    box.rank_button.click()  # "Stop ranking"
    assert box.progress.format() == "stopping…"
    qtbot.waitUntil(lambda: not box.running, timeout=60_000)
    assert box.ranking is not None and not box.ranking.complete
    assert 0 < len(box.ranking.regions) < 12 * 14
    assert any("Ranking stopped" in t for t in _said(box, "warning"))
    assert box.rank_button.text() == "Rank regions" and HEATMAP_LAYER in viewer.layers


def test_session_checkpoint_listeners():
    s = Session()
    heard: list[tuple[str, Path]] = []

    class Widget:
        def on(self, path: Path) -> None:
            heard.append(("widget", path))

    widget = Widget()
    s.on_checkpoint(widget.on)  # held weakly
    remove = s.on_checkpoint(lambda p: heard.append(("plain", p)))

    def broken(_p: Path) -> None:
        raise ValueError("a listener's bug")

    s.on_checkpoint(broken)
    s.checkpoint_trained("run/best.pt")
    assert heard == [("widget", Path("run/best.pt")), ("plain", Path("run/best.pt"))]
    del widget
    gc.collect()
    remove()
    s.checkpoint_trained("run/last.pt")  # the widget is gone, the plain one removed, the broken one logged
    assert len(heard) == 2


def test_heatmap_geometry_centres_cells_on_the_image_pixels():
    class R:
        heatmap = np.zeros((2, 3), np.float32)
        cell_scale = (64.0, 128.0)

    class Layer:
        scale = (1.0, 0.5, 0.25)  # a leading axis the heat map does not have
        translate = (0.0, 7.0, -3.0)

    scale, translate = heatmap_geometry(R(), Layer())
    assert scale == (32.0, 32.0)
    # cell (1, 2) covers pixels y 64..127, x 256..383: its centre is their centre, in world units
    centre_px = np.array([(64 + 127) / 2, (256 + 383) / 2])
    world = np.array(translate) + np.array([1, 2]) * np.array(scale)
    np.testing.assert_allclose(world, np.array([7.0, -3.0]) + centre_px * np.array([0.5, 0.25]))


def test_a_slide_without_tissue_is_ranked_whole_with_a_warning(make_napari_viewer, qtbot, tmp_path):
    import tifffile
    import torch

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint

    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    qtbot.addWidget(w)
    pale = np.full((256, 320, 3), 242, np.uint8)  # a blank brightfield slide: no tissue anywhere
    tifffile.imwrite(tmp_path / "blank.tif", pale, photometric="rgb")
    viewer.add_image(pale, name="blank", rgb=True,
                     metadata={"napari_medseg": {"path": str(tmp_path / "blank.tif"), "axes": "YXC"}})
    qtbot.waitUntil(lambda: w.store is not None, timeout=5000)
    torch.manual_seed(0)
    cfg = ModelConfig(name="unet", spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 16, 32))
    ck = save_checkpoint(tmp_path / "rgb.pt", Checkpoint(cfg, build_model(cfg).state_dict(),
                                                          classes=ClassSchema(names=("background", "a")),
                                                          norm=NormConfig.uint8(3)))
    box = w.guidance
    box.region_spin.setValue(128)
    box.model_edit.setText(str(ck))
    try:
        _rank(qtbot, box)
        assert len(box.ranking.regions) == 2 * 3 and not _said(box, "error")
        assert any("No tissue was found" in t for t in _said(box, "warning"))
        assert viewer.layers[HEATMAP_LAYER].data.shape == (2, 3)
    finally:
        box.shutdown()
        w.close_store()


def test_a_volume_is_ranked_and_next_goes_to_the_region_slices(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w)
    rng = np.random.default_rng(1)
    vol = np.full((32, 128, 128), 80, np.uint8)
    vol[16:, :, 64:] = rng.integers(0, 255, (16, 128, 64))  # one octant of noise
    image = viewer.add_image(vol, name="volume", scale=(2.0, 1.0, 1.0))
    qtbot.waitUntil(lambda: w.store is not None, timeout=5000)
    box = w.guidance
    box.region_spin.setValue(64)  # 64 px in plane, 16 slices deep: 2 x 2 x 2 regions
    box.model_edit.setText(str(make_checkpoint(tmp_path / "model.pt")))  # a 2D model, run slice-wise
    try:
        _rank(qtbot, box)
        ranking = box.ranking
        assert len(ranking.regions) == 8 and ranking.heatmap.shape == (2, 2, 2)
        heat = viewer.layers[HEATMAP_LAYER]
        np.testing.assert_allclose(heat.scale, (32.0, 64.0, 64.0))
        np.testing.assert_allclose(heat.translate, (15.0, 31.5, 31.5))
        assert box.next_region() == 0
        best = ranking.regions[0]
        z = (viewer.dims.point[-3] - image.translate[0]) / image.scale[0]
        assert best.box[0][0] <= z < best.box[0][1]
        assert _inside(_centre_px(viewer, image), best.box[1:])
        assert "z " in box.list.item(0).text()
    finally:
        box.shutdown()
        w.close_store()


def test_a_ranking_after_training_comes_hidden_under_a_whole_image_result(annotate, qtbot, tmp_path):
    """The ranking that follows a training run is nobody's request at that moment: over a whole-image result the
    user is watching, its new heat map comes hidden (said in the log); ranked on request, it is shown."""
    viewer, _w, box = annotate
    img = viewer.layers["slide"]
    result = viewer.add_labels(np.zeros(SHAPE, np.uint8), name="slide prediction", scale=SCALE, translate=TRANSLATE,
                               metadata={"napari_medseg": {"ngff_path": "labels/prediction"}})
    assert box.rank(make_checkpoint(tmp_path / "a.pt"), quiet=True)
    qtbot.waitUntil(lambda: not box.running, timeout=120_000)
    qtbot.wait(60)
    heat = viewer.layers[HEATMAP_LAYER]
    assert not heat.visible and result.visible and img.visible
    assert any("comes hidden under the whole-image prediction of slide" in t for t in _said(box, "info"))
    _rank(qtbot, box, make_checkpoint(tmp_path / "b.pt", seed=1))  # asked for: shown
    assert viewer.layers[HEATMAP_LAYER] is heat and heat.visible
