import numpy as np
import pytest

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.source import ImageSource
from napari_medseg.training import TrainingData, TrainingItem
from napari_medseg.training.sampler import PatchSampler

from ._synth import blob_data, blobs


class FakeStore:
    """The label-store contract: shape, chunks, __getitem__, painted_chunks(), chunk_classes(); records reads."""

    def __init__(self, arr: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.arr, self.chunks, self.shape, self.ndim = arr, chunks, arr.shape, arr.ndim
        self.dtype = arr.dtype
        self.reads: list[tuple] = []

    def painted_chunks(self):
        grid = [range(-(-s // c)) for s, c in zip(self.shape, self.chunks)]
        out = []
        for idx in np.ndindex(*[len(g) for g in grid]):
            sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, self.chunks))
            if self.arr[sl].any():
                out.append(idx)
        return out

    def chunk_classes(self):
        return {c: frozenset(np.unique(self.arr[tuple(slice(i * k, (i + 1) * k) for i, k in zip(c, self.chunks))])
                             ) - {0} for c in self.painted_chunks()}

    def __getitem__(self, key):
        self.reads.append(key)
        return self.arr[key]


def test_labelled_patches_centre_on_paint_and_balance_classes():
    img, m = blobs((200, 200), n=6, seed=2)
    lab = np.zeros_like(m)
    ys, xs = np.nonzero(m == 0)
    lab[ys[::97], xs[::97]] = 1  # plenty of background
    fy, fx = np.nonzero(m == 1)
    lab[fy[:5], fx[:5]] = 2  # five foreground pixels
    data = TrainingData([TrainingItem(ImageSource([img], "YX", (1, 1)), lab)], ClassSchema())
    s = PatchSampler(data, (32, 32), 2, val_fraction=0)
    rng = np.random.default_rng(0)
    with_fg = 0
    for _ in range(200):
        x, y = s.labelled_patch(rng)
        assert x.shape == (1, 32, 32) and y.shape == (32, 32)
        assert (y > 0).any()  # every labelled patch holds paint
        with_fg += bool((y == 2).any())
    assert 0.35 < with_fg / 200 < 0.8  # classes balanced although foreground is 5 pixels in hundreds


def test_label_store_only_painted_chunks_are_scanned():
    img, m = blobs((128, 128), seed=1)
    arr = np.zeros((128, 128), np.uint8)
    arr[10:20, 10:20] = 1
    arr[15:18, 15:18] = 2
    store = FakeStore(arr, (32, 32))
    data = TrainingData([TrainingItem(ImageSource([img], "YX", (1, 1)), store)], ClassSchema())
    s = PatchSampler(data, (32, 32), 2, val_fraction=0)
    assert len(store.reads) == 1  # one painted chunk of 16
    assert s.present_values == [1, 2]


def test_validation_split_is_stable_and_hidden_from_training():
    data = blob_data((256, 256), fraction=0.02)
    a = PatchSampler(data, (32, 32), 2, val_fraction=0.2, seed=5)
    b = PatchSampler(data, (32, 32), 2, val_fraction=0.2, seed=5)
    assert a.val_blocks == b.val_blocks and a.n_val_blocks > 0
    # more paint in a later round: earlier held-out blocks stay held out
    more = data.items[0].labels.copy()
    more[::7, ::7] = np.where(more[::7, ::7] == 0, 1, more[::7, ::7])
    later = PatchSampler(TrainingData([TrainingItem(data.items[0].image, more)], data.classes), (32, 32), 2,
                         val_fraction=0.2, seed=5, max_val_patches=10**6)
    for i, blocks in a.val_blocks.items():
        assert blocks <= later.val_blocks[i]
    # training patches never show held-out paint
    rng = np.random.default_rng(0)
    held = a.val_blocks[0]
    for _ in range(50):
        i, start = a.labelled_window(rng)
        y = a.views[i].read_labels(start, a.patch, a.max_value, held, a.val_block)
        yy, xx = np.nonzero(y)
        for py, px in zip(yy + start[0], xx + start[1]):
            assert (py // 32, px // 32) not in held
    vp = a.validation_patches()
    assert len(vp) == a.n_val_blocks and all((p.labels > 0).any() for p in vp)


def test_training_at_a_coarser_level_reads_matching_labels():
    img0, m0 = blobs((256, 256), n=8, seed=4, radius=(12, 20))
    img1 = img0[::2, ::2]
    src = ImageSource([img0, img1], "YX", (0.5, 0.5))
    lab = np.where(np.random.default_rng(0).random(m0.shape) < 0.05, m0 + 1, 0).astype(np.uint8)
    data = TrainingData([TrainingItem(src, lab)], ClassSchema())
    s = PatchSampler(data, (32, 32), 2, level=1, val_fraction=0)
    assert s.views[0].shape == (128, 128)
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, y = s.labelled_patch(rng)
        fg, bg = x[0][y == 2], x[0][y == 1]
        if fg.size and bg.size:
            assert fg.mean() > bg.mean() + 50  # labels line up with the coarser image
    s2 = PatchSampler(data, (32, 32), 2, pixel_size=1.0, val_fraction=0)
    assert s2.views[0].level == 1


def test_unlabelled_patches_come_from_tissue_and_unpainted_images():
    rgb = np.full((512, 512, 3), 240, np.uint8)  # glass
    rgb[:, :200] = (150, 60, 160)  # stained tissue on the left
    src = ImageSource([rgb, rgb[::2, ::2], rgb[::4, ::4]], "YXC", (0.5, 0.5), rgb=True, modality="brightfield")
    lab = np.zeros((512, 512), np.uint8)
    lab[100:110, 50:60] = 1
    lab[120:125, 50:60] = 2
    other, _ = blobs((64, 64))
    data = TrainingData([TrainingItem(src, lab), TrainingItem(ImageSource([other], "YX", (1, 1)), None)],
                        ClassSchema())
    with pytest.raises(Exception, match="channels"):
        PatchSampler(data, (64, 64), 2)
    data = TrainingData([TrainingItem(src, lab), TrainingItem(src, None, name="unpainted copy")], ClassSchema())
    s = PatchSampler(data, (64, 64), 2, val_fraction=0)
    assert s.labelled_items == [0] and s.unlabelled_items == [1]
    assert s.tissue[0] is not None
    rng = np.random.default_rng(0)
    items = set()
    for _ in range(60):
        i, (y0, x0) = s.unlabelled_window(rng)
        items.add(i)
        assert x0 + 32 < 200 + 64  # centred on tissue (up to the coarse mask's 32-pixel cells, dilated)
    assert items == {0, 1}
    b = s.batch(3, 2, 3)
    assert b["x_l"].shape == (2, 3, 64, 64) and b["x_u"].shape == (3, 3, 64, 64) and b["y_l"].dtype == np.uint8
    assert np.array_equal(s.batch(3, 2, 3)["x_u"], b["x_u"])  # batch i is reproducible


def test_2d_model_on_volumes_uses_slices():
    data = blob_data((12, 48, 48))
    s = PatchSampler(data, (32, 32), 2, val_fraction=0)
    x, y = s.labelled_patch(np.random.default_rng(0))
    assert x.shape == (1, 32, 32) and y.shape == (32, 32)


def test_paint_extent_counts_the_patches_the_paint_spans():
    """Half-patch cells holding paint over the cells of one patch: one stroke spans about one patch, the same
    pixels spread over an image many; an image without paint adds nothing."""
    img = np.zeros((512, 512), np.uint8)
    local = np.zeros((512, 512), np.uint8)
    local[10:12, 10:60] = 2  # two short strokes over 2 x 2 cells of 32 px (half the patch of 64)
    local[40:42, 10:60] = 1
    spread = np.zeros((512, 512), np.uint8)
    spread[::32, ::32] = 2  # one pixel in every 32 x 32 cell
    spread[16::32, 16::32] = 1

    def extent(*labels):
        items = [TrainingItem(ImageSource([img], "YX", (1.0, 1.0), name=f"i{k}"), lab) for k, lab in enumerate(labels)]
        s = PatchSampler(TrainingData(items, ClassSchema()), (64, 64), 2, val_fraction=0.0)
        return s.paint_extent, s.paint_share

    assert extent(local) == pytest.approx((4 / 4, 200 / (4 * 32 * 32)))  # cells (0, 0), (0, 1), (1, 0), (1, 1)
    assert extent(spread) == pytest.approx((256 / 4, 512 / (256 * 32 * 32)))
    assert extent(local, None) == extent(local)
    assert extent(local, spread)[0] == pytest.approx(1 + 64)
    full = np.ones((512, 512), np.uint8)
    full[:256] = 2
    assert extent(full) == pytest.approx((64.0, 1.0))  # dense labels: every pixel of its cells painted
