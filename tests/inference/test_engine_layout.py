"""The block engine keeps a channels-last runner's input channels-last from the reader on (no reordering
pass), and its two-class probabilities take the sigmoid form: neither changes what is predicted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.inference.blocks import ArrayReader
from napari_medseg.inference.engine import BlockEngine, FinishedBlock
from napari_medseg.inference.modelrun import WindowRunner, probabilities
from napari_medseg.inference.output import argmax_channels
from napari_medseg.inference.tiling import BlockGrid, WindowGrid, box_slices, default_block, plan_blocks
from napari_medseg.models import ModelConfig, NormConfig, build_model


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_probabilities_equal_softmax_in_every_layout(channels, layout):
    y = torch.randn(3, channels, 17, 19, generator=torch.Generator().manual_seed(channels)) * 20
    if layout == "nhwc":
        y = y.contiguous(memory_format=torch.channels_last)
    p = probabilities(y)
    assert torch.allclose(p, torch.softmax(y, dim=1), atol=2e-7, rtol=0)
    if channels == 2:
        assert p.is_contiguous()  # the layout the blending reads fastest
    assert torch.allclose(p.sum(1), torch.ones(()), atol=3e-7)


def test_two_class_probabilities_keep_tiny_values_and_argmax_ties():
    y = torch.tensor([0.0, 40.0, 3.0, 3.0]).view(1, 2, 1, 2)  # pixel 0: logits (0, 3); pixel 1: (40, 3)
    p = probabilities(y)
    assert torch.allclose(p, torch.softmax(y, 1), rtol=1e-6, atol=0)  # relative: 1e-17 stays 1e-17
    tie = torch.full((2, 4, 4), 0.5)
    assert not argmax_channels(tie).any()  # a tie goes to class 0, as torch.argmax
    q = torch.rand(2, 33, 35, generator=torch.Generator().manual_seed(3))
    assert torch.equal(argmax_channels(q), torch.argmax(q, 0).to(torch.uint8))
    q3 = torch.rand(3, 33, 35, generator=torch.Generator().manual_seed(4))
    assert torch.equal(argmax_channels(q3), torch.argmax(q3, 0).to(torch.uint8))


def _blocks(image: np.ndarray, model: torch.nn.Module, window: tuple[int, ...], nhwc: bool, norm: NormConfig,
            squeeze: int | None = None) -> np.ndarray:
    shape = image.shape[:-1]
    grid = WindowGrid(shape, window, 0.25, "gaussian")
    blocks = BlockGrid(shape, default_block(window, grid.intervals, shape, 2))
    plan = plan_blocks(grid, blocks, list(blocks.indices()))
    runner = WindowRunner(model, torch.device("cpu"), batch_size=3, cpu_nhwc=nhwc, squeeze_axis=squeeze)
    assert runner.input_channels_last == nhwc
    engine = BlockEngine(plan, ArrayReader(image, 0), runner, norm, 2)
    assert engine.nhwc == nhwc
    out = np.zeros((2, *shape), np.float32)
    n = 0
    for item in engine.run():
        if isinstance(item, FinishedBlock):
            out[(slice(None),) + box_slices(item.box, [0] * len(shape))] = item.probs.numpy()
            n += 1
    assert n == len(list(blocks.indices()))
    return out


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(in_channels=3, out_channels=2, channels=(8, 16), num_res_units=0,
                                   norm="batch")).eval()


def test_channels_last_blocks_give_the_nchw_result_with_edges_padded():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 170, 3), dtype=np.uint8)  # windows reach past both edges
    a = _blocks(image, _model(), (64, 64), True, NormConfig.uint8(3))
    b = _blocks(image, _model(), (64, 64), False, NormConfig.uint8(3))
    assert np.abs(a - b).max() < 1e-5
    assert np.allclose(a.sum(0), 1, atol=1e-5)


def test_a_per_channel_normalisation_in_channels_last_blocks():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4096, (96, 80, 3), dtype=np.uint16)
    norm = NormConfig(low=(10.0, 200.0, 0.0), high=(3000.0, 4000.0, 1000.0))  # sub and clamp both needed
    a = _blocks(image, _model(), (32, 32), True, norm)
    b = _blocks(image, _model(), (32, 32), False, norm)
    assert np.abs(a - b).max() < 1e-5


def test_a_2d_model_over_a_volume_gets_channels_last_slices():
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 256, (3, 70, 90, 3), dtype=np.uint8)
    a = _blocks(volume, _model(), (1, 32, 32), True, NormConfig.uint8(3), squeeze=0)
    b = _blocks(volume, _model(), (1, 32, 32), False, NormConfig.uint8(3), squeeze=0)
    assert np.abs(a - b).max() < 1e-5
