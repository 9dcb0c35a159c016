"""``class_labels``: the argmax, with object pixels that the boundary nearly wins made boundary."""

from __future__ import annotations

import torch

from napari_medseg.core.classes import ClassSchema
from napari_medseg.inference.output import OBJECT_MARGIN, argmax_channels, class_labels


def test_object_pixels_without_margin_become_boundary_and_the_foreground_is_kept():
    schema = ClassSchema(("background", "stroma", "nucleus")).with_objects(["nucleus"])  # boundary = 3
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn((4, 64, 64), generator=g), dim=0)
    lab = class_labels(p, schema)
    arg = argmax_channels(p)
    confident = (arg == 2) & (p[2] - p[3] >= OBJECT_MARGIN)
    assert torch.equal(lab == 2, confident)
    assert torch.equal(lab == 3, (arg == 3) | ((arg == 2) & ~confident))
    assert torch.equal(lab == 1, arg == 1) and torch.equal(lab == 0, arg == 0)  # other classes untouched
    assert 0 < int(((arg == 2) & ~confident).sum()) < int((arg == 2).sum())  # the rule did something, not all


def test_without_object_classes_it_is_the_argmax():
    p = torch.softmax(torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(1)), dim=0)
    plain = ClassSchema(("background", "a", "b"))
    assert torch.equal(class_labels(p, plain), argmax_channels(p))
    assert torch.equal(class_labels(p, None), argmax_channels(p))
    no_rim = ClassSchema(("background", "a", "b")).with_objects(["a"], boundary=False)
    assert torch.equal(class_labels(p, no_rim), argmax_channels(p))
