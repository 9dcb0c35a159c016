"""``WindowRunner``: the CPU input layout it picks changes speed, never the result."""

from __future__ import annotations

import pytest
import torch

from napari_medseg.inference.modelrun import WindowRunner
from napari_medseg.models import ModelConfig, build_model


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_channels_last_input_on_cpu_gives_the_nchw_result(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, in_channels=3, out_channels=3, channels=(8, 16, 32),
                                    num_res_units=1, norm="instance"))
    batch = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    nhwc = WindowRunner(model, torch.device("cpu"), batch_size=2)
    nchw = WindowRunner(model, torch.device("cpu"), batch_size=2, cpu_nhwc=False)
    assert nhwc.input_channels_last and not nchw.input_channels_last
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    a, b = nhwc(batch), nchw(batch)
    hook.remove()
    assert seen == [False, False, True, True]  # NHWC reached the model (2 slices of 2), then NCHW
    assert a.shape == b.shape == (3, 3, 64, 64)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_3d_models_keep_their_layout_on_cpu():
    model = build_model(ModelConfig(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), num_res_units=0))
    assert not WindowRunner(model, torch.device("cpu"), model_dims=3).input_channels_last
