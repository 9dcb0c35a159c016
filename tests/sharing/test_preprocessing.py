"""bioimage.io preprocessing steps as napari-medseg normalisations: each mode exports as steps that compute
exactly ``NormConfig.apply``; data-dependent steps resolve from the whole image; bad steps are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource, strided_sample
from napari_medseg.models.normalization import NormConfig
from napari_medseg.models.preprocessing import apply_steps, resolve_steps


@pytest.mark.parametrize("norm", [NormConfig.uint8(3), NormConfig("percentile", (5.0, 10.0, 0.0), (200.0, 90.0, 30.0)),
                                  NormConfig.ct_window(40, 400)])
def test_every_mode_exports_as_steps_that_compute_the_same(norm):
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1200, 1200, (2, norm.channels, 8, 9)).astype(np.float32))
    assert torch.allclose(apply_steps(x, norm.to_steps()), norm.apply(x), atol=1e-6)
    back = NormConfig.from_dict(NormConfig.from_steps(norm.to_steps(), channels=norm.channels).to_dict())
    assert back.mode == "steps" and torch.allclose(back.apply(x), norm.apply(x), atol=1e-6)


def test_scale_range_resolves_per_channel_from_the_sample():
    rng = np.random.default_rng(1)
    a = np.stack([rng.normal(10, 2, (50, 40)), rng.normal(500, 50, (50, 40))]).astype(np.float32)
    steps = [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1, "max_percentile": 99}}]
    norm = NormConfig.from_steps(steps, channels=2)
    assert norm.needs_data
    with pytest.raises(MedsegError, match="resolve"):
        norm.apply(torch.from_numpy(a)[None])
    r = norm.resolved(a)
    assert not r.needs_data and r.steps[0]["id"] == "scale_linear"
    y = r.apply(torch.from_numpy(a)[None])[0].numpy()
    for c in range(2):
        lo, hi = np.percentile(a[c], [1, 99])
        assert np.allclose(y[c], (a[c] - lo) / (hi - lo + 1e-6), atol=1e-4)


def test_zero_mean_unit_variance_over_all_axes_after_a_clip():
    a = np.random.default_rng(2).normal(0, 3, (1, 30, 30)).astype(np.float32)
    steps = [{"id": "clip", "kwargs": {"min": -2, "max": 2}},
             {"id": "zero_mean_unit_variance", "kwargs": {"eps": 1e-6}}]
    r = NormConfig.from_steps(steps).resolved(a)
    y = r.apply(torch.from_numpy(a)[None])[0].numpy()
    c = np.clip(a, -2, 2)
    assert np.allclose(y, (c - c.mean()) / (c.std() + 1e-6), atol=1e-4)


def test_statistics_come_from_the_whole_image_not_a_tile():
    """A tile of a bright region must be normalised with the whole image's percentiles."""
    img = np.zeros((400, 400), np.uint8)
    img[:, 200:] = 200
    src = ImageSource([img], "YX", (1.0, 1.0), name="half")
    sample = strided_sample(src)
    steps = NormConfig.from_steps([{"id": "scale_range", "kwargs": {"min_percentile": 0, "max_percentile": 100}}])
    tile = torch.from_numpy(img[None, None, :64, 300:364].astype(np.float32))
    assert float(steps.resolved(sample).apply(tile).max()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("step,match", [
    ({"id": "scale_mean_variance", "kwargs": {"reference_tensor": "x"}}, "not supported"),
    ({"id": "clip", "kwargs": {}}, "min or max"),
    ({"id": "clip", "kwargs": {"min": 2, "max": 1}}, "below"),
    ({"id": "scale_range", "kwargs": {"min_percentile": 90, "max_percentile": 10}}, "percentile"),
    ({"id": "scale_linear", "kwargs": {"gain": "x"}}, "number"),
    ({"id": "scale_linear", "kwargs": {"gain": float("nan")}}, "finite"),
    ({"kwargs": {}}, "mapping with an 'id'"),
])
def test_bad_steps_are_refused(step, match):
    with pytest.raises(MedsegError, match=match):
        NormConfig.from_steps([step])


def test_per_channel_values_must_fit_the_input():
    norm = NormConfig.from_steps([{"id": "scale_linear", "kwargs": {"gain": [1, 2], "offset": 0, "axis": "channel"}}])
    assert norm.channels == 2
    with pytest.raises(MedsegError, match="channels"):
        norm.apply(torch.zeros(1, 3, 4, 4))
    with pytest.raises(MedsegError, match="values per channel"):
        resolve_steps([{"id": "scale_linear", "kwargs": {"gain": [1.0, 2.0], "offset": 0.0}}], np.zeros((3, 5)))
