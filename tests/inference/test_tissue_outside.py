"""Nothing is written outside the tissue mask (user report: class labels on empty glass in straight lines
at the block borders, where a computed window's zero-padded edge was the only window covering a pixel)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from infer_helpers import halve, read_labels, read_probs, small_unet, store_bytes, textured_rgb, zarr_source

from napari_medseg.inference import BlockDone, TissueMaskReady, predict, run_predict
from napari_medseg.inference.output import read_manifest

KW = dict(window=(128, 128), overlap=0.25, batch_size=4, tissue_mask="auto", write_probs="uint8", device="cpu")


def _blob_slide(tmp_path, h=800, w=900):
    """An RGB slide: an elliptical tissue blob in the middle, near-white glass all around, 4 levels."""
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2 < 1.0
    img = textured_rgb(h, w, seed=3, tissue=tissue)
    levels = [img]
    for _ in range(3):
        levels.append(halve(levels[-1], (0, 1)))
    return zarr_source(tmp_path / "blob.zarr", levels, "YXC", chunks=(128, 128, 3))


def _mask_at(tm, shape, level_downsample, f: int = 1) -> np.ndarray:
    """The low-resolution tissue mask at the pixels of a level (nearest: each pixel centre's mask cell);
    ``f`` > 1: True where any of the ``f x f`` level pixels of a coarser output pixel is tissue."""
    idx = [np.floor((np.arange(n) + 0.5) * ds / dm).astype(int)
           for n, ds, dm in zip(shape, level_downsample, tm.downsample)]
    inside = (idx[0][:, None] < tm.mask.shape[0]) & (idx[1][None, :] < tm.mask.shape[1])
    full = tm.mask[np.minimum(idx[0], tm.mask.shape[0] - 1)[:, None],
                   np.minimum(idx[1], tm.mask.shape[1] - 1)[None, :]] & inside
    if f == 1:
        return full
    h, w = -(-shape[0] // f), -(-shape[1] // f)
    pad = np.zeros((h * f, w * f), bool)
    pad[:shape[0], :shape[1]] = full
    return pad.reshape(h, f, w, f).any(axis=(1, 3))


@pytest.mark.parametrize("block", [96, 128])
def test_nothing_is_written_outside_the_tissue_mask(tmp_path, block):
    """Window 128, overlap 0.25: interval 96. Blocks of 96 px (block = interval, as in the report: block and
    window borders coincide and cross the glass) and 128 px (level 1 is then written with the block,
    mean-pooled; with 96 it is built afterwards from level 0)."""
    src = _blob_slide(tmp_path)
    model = small_unet(seed=1)
    out = tmp_path / "o.zarr"
    events = []
    res = run_predict(src, model, out, block=(block, block), on_event=events.append, **KW)
    tm = next(e.mask for e in events if isinstance(e, TissueMaskReady))
    assert 0.1 < tm.fraction < 0.6 and res.blocks_skipped > 0
    shape = src.level_shape(0)
    inside = _mask_at(tm, shape, src.level_downsample(0))
    lab = read_labels(out)
    probs = read_probs(out)
    assert lab.shape == shape
    outside = lab[~inside]
    assert (outside == 0).all(), (
        f"{int((outside != 0).sum())} px labelled outside the tissue mask, at columns "
        f"{sorted(set(np.nonzero((lab != 0) & ~inside)[1].tolist()))[:20]}")
    # block borders on the glass: rows/columns at multiples of the block, and the image's first pixels
    for b in sorted(set(range(0, max(shape), block)) | set(range(0, max(shape), 96))):
        assert not lab[b:b + 8][~inside[b:b + 8]].any()
        assert not lab[:, b:b + 8][~inside[:, b:b + 8]].any()
    assert (probs[:, ~inside] == 0).all()  # probabilities are consistent: 0 outside the tissue
    assert (lab[inside] != 0).any()  # the tissue itself is predicted
    assert (probs[:, inside].sum(0) > 0).all()  # every tissue pixel has probabilities
    # the pyramid: a coarser pixel holds a label only where one of its level-0 pixels is tissue
    n_levels = len([p for p in (out / "labels" / "prediction").iterdir() if p.name.isdigit()])
    assert n_levels == 2
    for k in range(1, n_levels):
        lab_k = read_labels(out, k)
        inside_k = _mask_at(tm, shape, src.level_downsample(0), f=2 ** k)
        assert (lab_k[~inside_k] == 0).all(), f"level {k}: labels outside the tissue mask"
        assert (read_probs(out, k)[:, ~inside_k] == 0).all()


def test_tissue_masked_output_resumes_identical(tmp_path):
    """A cancelled and resumed run with the tissue mask writes the same bytes as an uninterrupted one."""
    src = _blob_slide(tmp_path)
    model = small_unet(seed=1)
    ref = tmp_path / "ref.zarr"
    run_predict(src, model, ref, block=(128, 128), **KW)
    out = tmp_path / "o.zarr"
    cancel = threading.Event()
    n = 0
    for ev in predict(src, model, out, cancel=cancel, block=(128, 128), **KW):
        if isinstance(ev, BlockDone):
            n += 1
            if n == 5:
                cancel.set()
    assert read_manifest(out)["status"] == "cancelled"
    res = run_predict(src, model, out, block=(128, 128), **KW)
    assert res.blocks_resumed >= 5 and res.blocks_done == res.blocks_total
    assert store_bytes(out) == store_bytes(ref)
