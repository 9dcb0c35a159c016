"""The gated CRF loss: zero where the prediction follows the image, paid for splitting a uniform region, free
across an image edge; the same as a brute-force sum over all pairs; 2D and 3D."""

from __future__ import annotations

import itertools

import pytest
import torch

from napari_medseg.training.gated_crf import gated_crf_loss


def _onehot(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, k).movedim(-1, 1).float()


def _brute(p, img, radius, sigma_xy, sigma_rgb):
    n, _, h, w = p.shape
    img = img / img.std(dim=(0, 2, 3), keepdim=True)  # intensities in standard deviations
    total = 0.0
    for b, y, x, y2, x2 in itertools.product(range(n), range(h), range(w), range(h), range(w)):
        if (y, x) == (y2, x2) or (y - y2) ** 2 + (x - x2) ** 2 > radius ** 2:
            continue
        kij = torch.exp(-((img[b, :, y, x] - img[b, :, y2, x2]) ** 2).sum() / (2 * sigma_rgb ** 2)
                        - ((y - y2) ** 2 + (x - x2) ** 2) / (2 * sigma_xy ** 2))
        total += float(kij * (1 - (p[b, :, y, x] * p[b, :, y2, x2]).sum()))
    return total / (n * h * w)


def test_equals_the_sum_over_all_pairs():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 7, 6, generator=g), 1)
    img = torch.rand(2, 2, 7, 6, generator=g)
    fast = float(gated_crf_loss(p, img, radius=2, sigma_xy=1.5, sigma_rgb=0.3, downsample=1))
    assert fast == pytest.approx(_brute(p, img, 2, 1.5, 0.3), rel=1e-5)


def test_a_split_in_a_uniform_region_costs_and_a_split_along_an_edge_does_not():
    img = torch.zeros(1, 1, 16, 16)
    img[..., 8:] = 1.0  # an edge between columns 7 and 8
    along_edge = torch.zeros(1, 16, 16, dtype=torch.long)
    along_edge[..., 8:] = 1
    across = torch.zeros(1, 16, 16, dtype=torch.long)
    across[..., 4:] = 1  # a boundary inside the left (uniform) half
    kw = dict(radius=3, sigma_xy=3.0, sigma_rgb=0.2, downsample=1)
    follows = float(gated_crf_loss(_onehot(along_edge, 2), img, **kw))
    splits = float(gated_crf_loss(_onehot(across, 2), img, **kw))
    assert follows < 1e-6
    assert splits > 0.1


def test_gradient_pushes_towards_the_image_regions_and_valid_gates_pairs():
    img = torch.zeros(1, 1, 12, 12)
    img[..., 6:] = 1.0
    logits = torch.zeros(1, 2, 12, 12, requires_grad=True)
    loss = gated_crf_loss(torch.softmax(logits, 1), img, radius=2, sigma_xy=2.0, sigma_rgb=0.1, downsample=1)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    none_valid = torch.zeros(1, 12, 12, dtype=torch.bool)
    gated = gated_crf_loss(torch.softmax(logits, 1), img, radius=2, downsample=1, valid=none_valid)
    assert float(gated) == 0.0


def test_3d_and_downsampling_run_and_bad_shapes_are_refused():
    p = torch.softmax(torch.randn(1, 2, 8, 16, 16), 1)
    img = torch.rand(1, 1, 8, 16, 16)
    assert float(gated_crf_loss(p, img, radius=4, downsample=2)) > 0
    with pytest.raises(ValueError, match="differ"):
        gated_crf_loss(p, img[..., :8])
    with pytest.raises(ValueError, match="need"):
        gated_crf_loss(p[0, 0], img[0, 0])
