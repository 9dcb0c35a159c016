"""zoom="auto": the objects of a sample of the image measured against the size the model learnt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.modelrun import LoadedModel
from napari_medseg.inference.zoom_estimate import estimate_zoom, sample_regions
from napari_medseg.models.normalization import NormConfig

NUC = ClassSchema(("background", "nucleus")).with_objects(["nucleus"])  # values: 0 bg, 1 nucleus, 2 boundary


class Bright(nn.Module):
    """Nucleus where the (normalised) image is bright, background elsewhere, never boundary: its objects are the
    image's bright discs, whatever their size."""

    medseg_window_rule = ((16, 16), (16, 16))
    medseg_spatial_dims = 2
    medseg_in_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        s = (x - 0.5) * 20
        return torch.cat([-s, s, torch.full_like(s, -50.0)], dim=1) + self.dummy


def _discs(r: int, size: int = 700) -> ImageSource:
    img = np.full((size, size), 20, np.uint8)
    yy, xx = np.indices((size, size))
    for cy in range(r + 5, size - r, 3 * r):
        for cx in range(r + 5, size - r, 3 * r):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 220
    return ImageSource([img], "YX", (1.0, 1.0), name="discs")


def _loaded(diameter):
    return LoadedModel(Bright().eval(), None, NormConfig(), NUC, "", 1, 2, window_rule=Bright.medseg_window_rule,
                       object_diameter=diameter)


@pytest.mark.parametrize("r, want", [(6, 2.0), (12, 1.0), (15, 0.8)])
def test_the_zoom_brings_the_sampled_objects_to_the_learnt_size(r, want):
    zoom, measured = estimate_zoom(_discs(r), _loaded(24.0), 0, NormConfig(), None, torch.device("cpu"))
    assert measured == pytest.approx(2 * r, rel=0.05)  # whole discs only: those cut by a region's edge left out
    assert zoom == pytest.approx(want, rel=0.05)


def test_the_predictor_uses_the_estimated_zoom(tmp_path):
    from napari_medseg.inference import run_predict

    res = run_predict(_discs(6), _loaded(24.0), tmp_path / "o.zarr", window=(64, 64), zoom="auto",
                      tissue_mask=False, device="cpu")
    assert res.stats["zoom"] == pytest.approx(2.0, rel=0.05)
    assert res.stats["object_diameter_px"]["learnt"] == 24.0


def test_auto_zoom_needs_a_learnt_size_and_objects():
    with pytest.raises(MedsegError, match="does not record"):
        estimate_zoom(_discs(6), _loaded(None), 0, NormConfig(), None, torch.device("cpu"))
    plain = LoadedModel(Bright().eval(), None, NormConfig(), ClassSchema(("background", "a", "b")), "", 1, 2,
                        window_rule=Bright.medseg_window_rule, object_diameter=24.0)
    with pytest.raises(MedsegError, match="no object classes"):
        estimate_zoom(_discs(6), plain, 0, NormConfig(), None, torch.device("cpu"))


def test_sample_regions_spread_over_what_is_kept():
    boxes = sample_regions((2000, 3000), 512, 6)
    assert len(boxes) == 6 and boxes[0] == ((0, 512), (0, 512)) and boxes[-1][0][1] <= 2000
    assert len({b for b in boxes}) == 6
    kept = sample_regions((2000, 3000), 512, 6, keep=lambda b: b[1][0] >= 1500)
    assert kept and all(b[1][0] >= 1500 for b in kept)
    assert sample_regions((100, 80), 512, 6) == [((0, 100), (0, 80))]  # an image smaller than a region
    # the grid covers the whole image: the last row and column end at its edges
    assert sample_regions((1000, 1000), 512, 6) == [((0, 512), (0, 512)), ((0, 512), (488, 1000)),
                                                    ((488, 1000), (0, 512)), ((488, 1000), (488, 1000))]
