import pytest
import torch

from napari_medseg.training.augment import Augmenter, gaussian_blur


@pytest.mark.parametrize("dims", [2, 3])
def test_geometric_moves_image_and_labels_together(dims):
    size = (32,) * dims
    g = torch.Generator().manual_seed(0)
    y = torch.randint(1, 3, (6, *size), generator=g).to(torch.uint8)
    # smooth the labels into blocks so bilinear sampling agrees with nearest away from edges
    y = y.repeat_interleave(1, 0)
    blocks = torch.zeros_like(y)
    sl = (slice(None),) + (slice(8, 24),) * dims
    blocks[...] = 1
    blocks[sl] = 2
    x = (blocks.float() - 1).unsqueeze(1)  # image == label - 1
    aug = Augmenter(dims, seed=1, p_warp=1.0)
    xa, ya = aug.geometric(x, blocks)
    assert xa.shape == x.shape and ya.shape == blocks.shape and ya.dtype == torch.uint8
    painted = ya > 0
    agree = ((xa[:, 0] > 0.5) == (ya == 2))[painted].float().mean()
    assert float(agree) > 0.97
    assert set(torch.unique(ya).tolist()) <= {0, 1, 2}


def test_outside_becomes_unannotated():
    aug = Augmenter(2, seed=0, p_warp=1.0, max_rotation_deg=45, scale_range=(1.3, 1.3), elastic=False)
    y = torch.ones(4, 32, 32, dtype=torch.uint8)
    _, ya = aug.geometric(torch.zeros(4, 1, 32, 32), y)
    assert int((ya == 0).sum()) > 0  # zoomed-out corners came from outside the patch


def test_photometric_is_finite_and_seeded():
    x = torch.rand(4, 3, 16, 16)
    a = Augmenter(2, seed=3).photometric(x, "strong")
    b = Augmenter(2, seed=3).photometric(x, "strong")
    assert torch.equal(a, b) and torch.isfinite(a).all() and not torch.equal(a, x)
    off = Augmenter(2, enabled=False)
    assert off.photometric(x) is x and off.geometric(x)[0] is x


def test_blur_keeps_constant_and_mean():
    x = torch.full((1, 2, 12, 12, 12), 0.5)
    assert torch.allclose(gaussian_blur(x, 1.0), x, atol=1e-6)
    r = torch.rand(1, 1, 20, 20)
    assert abs(float(gaussian_blur(r, 1.0).mean() - r.mean())) < 0.02
