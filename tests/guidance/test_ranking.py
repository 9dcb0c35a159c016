"""Where to paint next, the engine: uncertain regions first, painted ones skipped, the file, the heat map,
stopping, volumes, and every refusal a user can cause."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from guide_helpers import GreyModel, grey_source, half_image, unet_checkpoint

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.guidance import (
    PAINTED_MAX,
    RankedRegion,
    RankProgress,
    RegionRanking,
    painted_fraction,
    rank_regions,
    run_rank,
)
from napari_medseg.labels.store import LabelStore


def _x_centre(r: RankedRegion) -> float:
    return r.centre[-1]


def test_uncertain_half_ranks_first_and_the_ranking_says_what_it_cost():
    src = grey_source(half_image(256, 256, sure_left=True))
    events: list[RankProgress] = []
    rk = run_rank(src, GreyModel(), region_size=64, window=32, on_event=events.append)
    assert len(rk.regions) == 16 and rk.complete and rk.windows == 16
    assert rk.heatmap.shape == (4, 4) and not np.isnan(rk.heatmap).any()
    # the 8 regions of the grey (unsure) right half come first, all of them, then the sure ones
    top, rest = rk.regions[:8], rk.regions[8:]
    assert all(_x_centre(r) > 128 for r in top) and all(_x_centre(r) < 128 for r in rest)
    assert min(r.uncertainty for r in top) > 0.9 > 0.1 > max(r.uncertainty for r in rest)
    scores = [r.score for r in rk.regions]
    assert scores == sorted(scores, reverse=True)
    assert all(r.score == r.uncertainty and r.novelty == 0 and r.painted == 0 for r in rk.regions)
    # the heat map holds the scores where the regions are (right columns hot)
    assert rk.heatmap[:, 2:].min() > rk.heatmap[:, :2].max()
    assert rk.cell_scale == (64.0, 64.0) and rk.region_size == (64, 64) and rk.level == 0
    assert rk.seconds > 0 and rk.image_shape == (256, 256)
    assert events[0].done == 0 and events[-1].done == events[-1].total == 16
    assert [e.done for e in events] == sorted(e.done for e in events)
    # mirrored image, mirrored answer: the score follows the pixels, not the position
    rk2 = run_rank(grey_source(half_image(256, 256, sure_left=False)), GreyModel(), region_size=64, window=32)
    assert all(_x_centre(r) < 128 for r in rk2.regions[:8])


def test_next_unpainted_skips_regions_painted_after_ranking():
    src = grey_source(half_image(256, 256))
    rk = run_rank(src, GreyModel(), region_size=64, window=32)
    store = LabelStore.in_memory((256, 256), chunks=(32, 32))
    assert rk.next_unpainted(store) == 0 and rk.next_unpainted() == 0
    (y0, y1), (x0, x1) = rk.regions[0].box
    store.write((slice(y0, y0 + 8), slice(x0, x1)), 1)  # 8 of 64 rows painted: 12.5 %
    assert rk.next_unpainted(store) == 1
    assert rk.next_unpainted() == 0  # without a store: the painted fraction stored at ranking time
    assert rk.next_unpainted(store, after=0) == 1 and rk.next_unpainted(store, after=1) == 2
    # a stray click (below PAINTED_MAX of the region) does not count as painted
    (y0, y1), (x0, x1) = rk.regions[1].box
    store.write((slice(y0, y0 + 1), slice(x0, x0 + 4)), 2)
    assert 0 < painted_fraction(store, [rk.regions[1].box])[0] < PAINTED_MAX
    assert rk.next_unpainted(store) == 1
    assert rk.next_unpainted(store, max_painted=1e-6) == 2
    # everything painted: none left
    store.write((slice(0, 256), slice(0, 256)), 1)
    assert rk.next_unpainted(store) is None and rk.next_unpainted(store, after=15) is None
    with pytest.raises(MedsegError, match="another image"):
        rk.next_unpainted(LabelStore.in_memory((128, 256)))


@pytest.mark.parametrize("shape, chunks", [((100, 90), (16, 16)), ((20, 50, 40), (8, 16, 16))])
def test_painted_fraction_equals_a_brute_force_count(shape, chunks):
    rng = np.random.default_rng(1)
    store = LabelStore.in_memory(shape, chunks=chunks)
    labels = np.zeros(shape, np.uint8)
    for _ in range(6):  # random blobs of paint of classes 1 and 2
        lo = [int(rng.integers(0, s - 4)) for s in shape]
        hi = [min(s, a + int(rng.integers(2, 30))) for a, s in zip(lo, shape)]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        labels[sl] = rng.integers(1, 3)
    mask = rng.random(shape) < 0.7
    labels[~mask] = 0
    store.write(tuple(slice(0, s) for s in shape), labels)
    # boxes made of whole chunks (exact), including the partial chunks at the far edges
    boxes = []
    for _ in range(30):
        box = []
        for s, c in zip(shape, chunks):
            n = -(-s // c)
            a = int(rng.integers(0, n))
            b = int(rng.integers(a + 1, n + 1))
            box.append((a * c, min(s, b * c)))
        boxes.append(tuple(box))
    got = painted_fraction(store, boxes)
    want = [float((labels[tuple(slice(a, b) for a, b in box)] > 0).mean()) for box in boxes]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # evenly painted chunks: exact for any box, too
    store2 = LabelStore.in_memory(shape, chunks=chunks)
    whole = tuple(slice(0, 2 * c) for c in chunks)
    store2.write(whole, 1)
    odd = [tuple((int(rng.integers(0, s // 2)), int(rng.integers(s // 2 + 1, s + 1))) for s in shape) for _ in range(10)]
    ref = np.zeros(shape, bool)
    ref[whole] = True
    want2 = [float(ref[tuple(slice(a, b) for a, b in box)].mean()) for box in odd]
    np.testing.assert_allclose(painted_fraction(store2, odd), want2, atol=1e-12)
    assert painted_fraction(store, []).shape == (0,)
    with pytest.raises(MedsegError, match="another image"):
        painted_fraction(store, [tuple((0, s + 1) for s in shape)])


def test_json_round_trip_and_foreign_files(tmp_path):
    src = grey_source(half_image(192, 256))
    store = LabelStore.in_memory((192, 256), chunks=(32, 32))
    store.write((slice(0, 64), slice(128, 192)), 2)
    rk = run_rank(src, GreyModel(), store=store, region_size=64, window=32, novelty_weight=0.5)
    path = tmp_path / "r.json"
    rk.to_json(path)
    back = RegionRanking.from_json(path)
    assert back.regions == rk.regions
    np.testing.assert_array_equal(np.isnan(back.heatmap), np.isnan(rk.heatmap))
    np.testing.assert_allclose(np.nan_to_num(back.heatmap), np.nan_to_num(rk.heatmap))
    assert back.heatmap.dtype == np.float32
    for f in ("image", "checkpoint", "checkpoint_sha256", "level", "region_size", "cell_scale", "seconds", "windows",
              "pixel_size", "unit", "complete", "image_shape", "novelty_weight", "settings"):
        assert getattr(back, f) == getattr(rk, f), f
    assert len(rk.checkpoint_sha256) == 64  # a module: the hash of its weights
    assert any(r.painted == 1.0 for r in back.regions)
    # foreign, damaged and missing files are clear errors
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    (tmp_path / "bad.json").write_text("{not json")
    text = path.read_text()
    (tmp_path / "cut.json").write_text(text.replace('"regions"', '"regionz"'))
    for name, msg in (("other.json", "not a napari-medseg region ranking"), ("bad.json", "not JSON"),
                      ("cut.json", "damaged"), ("missing.json", "no such")):
        with pytest.raises(MedsegError, match=msg):
            RegionRanking.from_json(tmp_path / name)


def _tissue_slide(h=192, w=256):
    """RGB brightfield: pink texture on the left half, white glass on the right."""
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 238, np.float32) + rng.normal(0, 2, (h, w, 3))
    tex = np.stack([200 + 30 * np.sin(np.arange(w // 2) / 7.0)[None, :].repeat(h, 0), np.full((h, w // 2), 110.0),
                    np.full((h, w // 2), 170.0)], -1)
    img[:, : w // 2] = tex + rng.normal(0, 8, tex.shape)
    # 8 um pixels: the tissue mask (at ~16 um) is fine enough to see the glass half
    return ImageSource(levels=[np.clip(img, 0, 255).astype(np.uint8)], axes="YXC", pixel_size=(8.0, 8.0), rgb=True,
                       name="slide", modality="brightfield")


def _rgb_unet():
    torch.manual_seed(0)
    from napari_medseg.models import ModelConfig, build_model

    return build_model(ModelConfig(in_channels=3, out_channels=2, channels=(4, 8), num_res_units=0)).eval()


def test_heatmap_is_nan_off_tissue_and_all_regions_with_tissue_false():
    src = _tissue_slide()
    rk = run_rank(src, _rgb_unet(), region_size=32, window=32)
    assert rk.settings["tissue"] == "otsu_saturation"
    hm = rk.heatmap
    assert hm.shape == (6, 8)
    assert not np.isnan(hm[:, :3]).any()  # tissue columns scored
    assert np.isnan(hm[:, 5:]).all()  # glass columns not
    assert all(r.tissue > 0 for r in rk.regions) and len(rk.regions) == int((~np.isnan(hm)).sum())
    assert all(r.box[1][0] < 160 for r in rk.regions)
    everything = run_rank(src, _rgb_unet(), region_size=32, window=32, tissue=False)
    assert not np.isnan(everything.heatmap).any() and len(everything.regions) == 48
    assert everything.settings["tissue"] == "off"


def test_stop_returns_a_partial_ranking():
    src = grey_source(half_image(256, 256))
    stop = threading.Event()
    seen = []

    def on_event(ev):
        seen.append(ev)
        if ev.done >= 4:
            stop.set()

    rk = run_rank(src, GreyModel(), region_size=32, window=32, batch_size=4, stop=stop, on_event=on_event)
    assert not rk.complete and rk.windows == 4 and len(rk.regions) == 4
    assert int((~np.isnan(rk.heatmap)).sum()) == 4 and rk.heatmap.shape == (8, 8)
    assert seen[-1].done == 4 and seen[-1].total == 64
    stop.clear()
    full = run_rank(src, GreyModel(), region_size=32, window=32, batch_size=4, stop=stop)
    assert full.complete and len(full.regions) == 64
    # the partial ranking's regions are scored as in the full one (same seeded windows)
    by_box = {r.box: r.score for r in full.regions}
    assert all(abs(by_box[r.box] - r.score) < 1e-5 for r in rk.regions)


def test_region_size_grows_until_max_regions_and_samples_average():
    src = grey_source(half_image(256, 256))
    rk = run_rank(src, GreyModel(), region_size=32, window=32, max_regions=10)
    assert rk.region_size == (128, 128) and len(rk.regions) == 4 and rk.windows == 4
    assert rk.settings["requested_region_size"] == 32
    rk3 = run_rank(src, GreyModel(), region_size=64, window=32, samples_per_region=3)
    assert rk3.windows == 48 and len(rk3.regions) == 16


def test_novelty_ranks_unlike_regions_first():
    """A model unsure everywhere: uncertainty ties; novelty (unlike the painted left) decides."""
    rng = np.random.default_rng(0)
    img = np.empty((128, 256), np.float32)
    img[:, :128] = 60 + rng.normal(0, 3, (128, 128))   # dark, flat
    img[:, 128:] = 200 + rng.normal(0, 40, (128, 128))  # bright, rough
    src = grey_source(np.clip(img, 0, 255).astype(np.uint8))
    store = LabelStore.in_memory((128, 256), chunks=(32, 32))
    store.write((slice(0, 64), slice(0, 64)), 1)
    rk = run_rank(src, GreyModel(zero=True), store=store, region_size=64, window=32, novelty_weight=1.0)
    assert all(abs(r.uncertainty - 1) < 1e-4 for r in rk.regions)
    assert all(_x_centre(r) > 128 for r in rk.regions[:4])
    assert max(r.novelty for r in rk.regions) == pytest.approx(1.0)
    left = [r for r in rk.regions if _x_centre(r) < 128]
    assert max(r.novelty for r in left) < 0.2
    assert all(r.score == pytest.approx(r.uncertainty * (1 + r.novelty)) for r in rk.regions)
    painted = [r for r in rk.regions if r.box == ((0, 64), (0, 64))]
    assert painted[0].painted == 1.0
    # weight 0 (or nothing painted): novelty is off
    assert all(r.novelty == 0 for r in run_rank(src, GreyModel(zero=True), store=store, region_size=64,
                                                window=32).regions)
    empty = LabelStore.in_memory((128, 256))
    assert all(r.novelty == 0 for r in run_rank(src, GreyModel(zero=True), store=empty, region_size=64, window=32,
                                                novelty_weight=1.0).regions)


def test_volume_with_a_2d_model_slice_by_slice_and_a_3d_model(tmp_path):
    vol = np.stack([half_image(64, 64, seed=z) for z in range(24)])
    src = grey_source(vol, pixel_size=(2.0, 0.5, 0.5))
    rk = run_rank(src, GreyModel(), region_size=32, window=32)
    assert rk.region_size == (8, 32, 32) and rk.heatmap.shape == (3, 2, 2)
    assert rk.settings["window"] == [1, 32, 32] and rk.windows == 12
    assert rk.cell_scale == (8.0, 32.0, 32.0)
    assert all(len(r.box) == 3 for r in rk.regions)
    assert all(_x_centre(r) > 32 for r in rk.regions[:6])  # the grey half, every Z cell
    assert not np.isnan(rk.heatmap).any()  # volumes: no tissue mask
    ck = unet_checkpoint(tmp_path / "m3.pt", dims=3)
    rk3 = run_rank(src, ck, region_size=32, window=32)
    assert rk3.settings["window"] == [24, 32, 32]  # the cube, clipped to the volume's 24 slices
    assert len(rk3.regions) == 12 and all(0 <= r.uncertainty <= 1 for r in rk3.regions)
    assert rk3.checkpoint.endswith("m3.pt") and len(rk3.checkpoint_sha256) == 64
    rk3b = run_rank(src, GreyModel(dims=3), region_size=32, window=32)
    assert all(_x_centre(r) > 32 for r in rk3b.regions[:6])


def test_level_from_the_checkpoint_pixel_size(tmp_path):
    src = grey_source(half_image(256, 256), pixel_size=(0.5, 0.5), levels=2)
    ck = unet_checkpoint(tmp_path / "m.pt", meta={"pixel_size": [1.0, 1.0]})
    rk = run_rank(src, ck, region_size=32, window=32)
    assert rk.level == 1 and rk.cell_scale == (64.0, 64.0) and rk.heatmap.shape == (4, 4)
    assert max(r.box[1][1] for r in rk.regions) == 256  # boxes in level-0 pixels
    assert run_rank(src, ck, region_size=32, window=32, level=0).level == 0
    ck2 = unet_checkpoint(tmp_path / "m2.pt", meta={"level": 1})
    assert run_rank(src, ck2, region_size=32, window=32).level == 1
    assert run_rank(src, unet_checkpoint(tmp_path / "m3.pt"), region_size=32, window=32).level == 0


def test_a_model_being_trained_keeps_its_mode():
    net = GreyModel().train()
    run_rank(grey_source(half_image(64, 64)), net, region_size=32, window=32)
    assert net.training


def _errs(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    grey = grey_source(half_image(128, 128))
    return [
        (dict(source=grey, model=bad), "not a safe napari-medseg checkpoint"),
        (dict(source=grey, model=tmp_path / "none.pt"), "does not exist"),
        (dict(source=_tissue_slide(), model=GreyModel()), "input channel"),
        (dict(source=grey_source(half_image(24, 200)), model=GreyModel()), "smaller than one window"),
        (dict(source=grey, model=GreyModel(), region_size=32, window=64), "smaller than the window"),
        (dict(source=grey, model=GreyModel(), region_size=8, window=8), "at least 16"),
        (dict(source=grey, model=GreyModel(), samples_per_region=0), "samples_per_region"),
        (dict(source=grey, model=GreyModel(), novelty_weight=-1), "novelty_weight"),
        (dict(source=grey, model=GreyModel(), level=3), "level 3 does not exist"),
        (dict(source=grey, model=GreyModel(), store=LabelStore.in_memory((64, 128))), "another image"),
        (dict(source=grey_source(half_image(64, 64)), model=GreyModel(dims=3)), "3D model cannot rank a 2D"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_refusals_are_clear_errors(tmp_path, case):
    kw, msg = _errs(tmp_path)[case]
    kw.setdefault("region_size", 64)
    kw.setdefault("window", 32)
    with pytest.raises(MedsegError, match=msg):
        run_rank(kw.pop("source"), kw.pop("model"), **kw)


def test_no_tissue_anywhere_says_what_to_do():
    glass = np.full((128, 128, 3), 240, np.uint8)
    src = ImageSource(levels=[glass], axes="YXC", pixel_size=(0.5, 0.5), rgb=True, name="glass")
    with pytest.raises(MedsegError, match="no tissue.*tissue=False"):
        run_rank(src, _rgb_unet(), region_size=64, window=32)
    assert len(run_rank(src, _rgb_unet(), region_size=64, window=32, tissue=False).regions) == 4


def test_rank_regions_is_a_generator_and_the_face_is_light():
    import subprocess
    import sys

    gen = rank_regions(grey_source(half_image(64, 64)), GreyModel(), region_size=32, window=32)
    first = next(gen)
    assert isinstance(first, RankProgress) and first.done == 0 and first.total == 4
    gen.close()
    code = ("import sys, napari_medseg.guidance as g; g.RegionRanking; g.painted_fraction; g.RankProgress; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_painted_fraction_counts_pixels_where_a_chunk_spans_several_regions():
    """A 512-px chunk over four 256-px regions: painting one region must not make its neighbours painted."""
    store = LabelStore.in_memory((512, 512), chunks=(512, 512))
    store.write((slice(0, 256), slice(0, 256)), 1)  # the top-left region, whole
    boxes = [((0, 256), (0, 256)), ((0, 256), (256, 512)), ((256, 512), (0, 256)), ((256, 512), (256, 512))]
    np.testing.assert_allclose(painted_fraction(store, boxes), [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(painted_fraction(store, boxes, exact=False), [0.25] * 4)  # the spread estimate
