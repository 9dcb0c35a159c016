"""The sample slide: deterministic, pyramidal, read back through open_path, plausible H&E and ground truth."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_medseg.core.classes import ClassSchema
from napari_medseg.io import open_path
from napari_medseg.samples import slide

SMALL = 2048


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("slide")
    t0 = time.perf_counter()
    seen: list[float] = []
    info = slide.generate_slide(d / "s.ome.tif", d / "s-labels.ome.tif", size=SMALL, progress=seen.append)
    info["progress_seen"] = seen
    print(f"small slide ({SMALL} px) generated in {time.perf_counter() - t0:.1f} s")  # reported, not asserted
    return d / "s.ome.tif", d / "s-labels.ome.tif", info


def _tile_hashes(path, level=0):
    with tifffile.TiffFile(path) as tif:
        lvl = tif.series[0].levels[level]
        a = lvl.asarray()
    return [hashlib.sha1(a[y:y + 512, x:x + 512].tobytes()).hexdigest() for y, x in ((0, 0), (512, 1024), (1536, 512))]


def test_generation_reports_progress_from_0_to_1(small_slide):
    seen = small_slide[2]["progress_seen"]
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    assert len(seen) >= (SMALL // slide.TILE) ** 2  # at least once per tile: the bar moves all along


def test_small_slide_is_deterministic(small_slide, tmp_path):
    img, lab, _ = small_slide
    slide.generate_slide(tmp_path / "s.ome.tif", tmp_path / "s-labels.ome.tif", size=SMALL)
    assert _tile_hashes(img) == _tile_hashes(tmp_path / "s.ome.tif")
    assert img.read_bytes() == (tmp_path / "s.ome.tif").read_bytes()
    assert lab.read_bytes() == (tmp_path / "s-labels.ome.tif").read_bytes()


def test_small_slide_reads_back_as_pyramid(small_slide):
    img_path, lab_path, _ = small_slide
    img = open_path(img_path)[0]
    assert img.axes == "YXC" and img.rgb and img.shape == (SMALL, SMALL)
    assert img.pixel_size == pytest.approx((0.5, 0.5)) and img.unit == "micrometer"
    assert len(img.levels) == slide.N_LEVELS
    assert [img.level_shape(i)[0] for i in range(len(img.levels))] == [SMALL >> k for k in range(slide.N_LEVELS)]
    lab = open_path(lab_path)[0]
    assert lab.shape == img.shape and len(lab.levels) == len(img.levels) and lab.dtype == np.uint8


def test_small_slide_colours_match_classes(small_slide):
    img_path, lab_path, info = small_slide
    rgb = tifffile.imread(img_path, level=0).astype(np.float32)
    lab = tifffile.imread(lab_path, level=0)
    assert set(np.unique(lab)) <= {1, 2, 3, 4}
    mean = {v: rgb[lab == v].mean(axis=0) for v in (1, 2, 3, 4)}
    # glass: bright and nearly neutral; stroma: pink (red > blue > green); nuclei: dark purple
    assert mean[1].min() > 225 and np.ptp(mean[1]) < 15
    r, g, b = mean[2]
    assert r > b > g and r - g > 30
    r, g, b = mean[4]
    assert mean[4].mean() < mean[2].mean() - 40 and b > g and b > r - 10
    assert info["fractions"]["background"] >= 0.40


def test_small_slide_nuclei_and_glands_geometry(small_slide):
    img_path, lab_path, _ = small_slide
    lab = tifffile.imread(lab_path, level=0)
    nuc, n = ndimage.label(lab == 4)
    areas = np.bincount(nuc.ravel())[1:]
    # nuclei of 3-12 um at 0.5 um/px: a few tens to a few hundred pixels each (touching ones merge)
    assert n > 100 and 30 < np.median(areas) < 400
    # glands: a pale lumen enclosed by a darker epithelial ring, never touching the stroma directly
    grey = tifffile.imread(img_path, level=0).astype(np.float32).mean(axis=2)
    gland = lab == 3
    lumen = gland & (grey > 215)
    epi = gland & ~lumen
    assert 0.15 < lumen.sum() / gland.sum() < 0.85
    assert grey[epi].mean() < grey[lumen].mean() - 30
    touching = ndimage.binary_dilation(lab == 2, iterations=3) & lumen
    assert touching.sum() < 0.01 * lumen.sum()


def test_class_file_matches_schema():
    schema = slide.slide_classes()
    assert isinstance(schema, ClassSchema)
    assert schema.names == ("background", "stroma", "gland", "nucleus")
    d = json.loads((slide.SAMPLE_DATA / "slide_classes.json").read_text())
    assert len(d["colors"]) == schema.n_classes == slide.NUCLEUS


@pytest.mark.slow
def test_full_slide_deterministic_across_cache_folders(tmp_path, monkeypatch):
    hashes, times = [], []
    for name in ("a", "b"):
        monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(tmp_path / name))
        t0 = time.perf_counter()
        img, lab = slide.sample_slide_paths()
        times.append(time.perf_counter() - t0)
        hashes.append((_tile_hashes(img), hashlib.sha1(img.read_bytes()).hexdigest(),
                       hashlib.sha1(lab.read_bytes()).hexdigest()))
    print(f"full slide generation: {times[0]:.1f} s and {times[1]:.1f} s (shared CPU, reported only)")
    assert hashes[0] == hashes[1]


@pytest.mark.slow
def test_load_sample_slide():
    t0 = time.perf_counter()
    img, gt = slide.load_sample_slide()
    print(f"load_sample_slide (incl. generation if not cached): {time.perf_counter() - t0:.1f} s")
    assert img.shape == gt.shape == (slide.SIZE, slide.SIZE)
    assert len(img.levels) >= 3 and img.rgb and gt.kind == "labels"
    assert img.pixel_size == pytest.approx((slide.MPP, slide.MPP))
    assert gt.metadata["classes"]["names"][0] == "background"
    frac = np.bincount(np.asarray(gt.levels[-1]).ravel(), minlength=5)[1:] / np.asarray(gt.levels[-1]).size
    assert frac[0] >= 0.40 and (frac[1:] > 0.005).all()
