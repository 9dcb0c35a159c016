"""The nnFormer-style hybrid: shapes in 2D and 3D, the skip attention uses the encoder, deep-supervision heads,
window sizes that follow the input, the checkpoint round trip and the size rule."""

from __future__ import annotations

import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import ModelConfig, build_model, preset
from napari_medseg.models.nnformer import SkipAttention
from napari_medseg.models.registry import check_input_size, required_multiple


def _cfg(nd: int, **kw) -> ModelConfig:
    return ModelConfig(name="nnformer", spatial_dims=nd, in_channels=2, out_channels=3, feature_size=12,
                       depths=(1, 1, 1), num_heads=(3, 3, 3), window_size=4, **kw)


@pytest.mark.parametrize("nd, size", [(2, 48), (3, 32)])
def test_shapes_heads_and_gradients(nd, size):
    torch.manual_seed(0)
    cfg = _cfg(nd)
    assert required_multiple(cfg) == 16
    check_input_size(cfg, (size,) * nd)
    model = build_model(cfg).train()
    x = torch.randn(2, 2, *(size,) * nd)
    y = model(x)
    assert y.shape == (2, 3, *(size,) * nd)
    heads = model.heads(x)
    assert len(heads) == 3 and all(h.shape == y.shape for h in heads)
    torch.testing.assert_close(heads[-1], y)  # the output is the finest head
    sum(h.square().mean() for h in heads).backward()  # every parameter learns through the heads
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing[:5]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-4, rtol=1e-4)  # batch items independent


def test_skip_attention_reads_the_encoder_and_windows_follow_the_input():
    torch.manual_seed(0)
    att = SkipAttention(12, 3, (4, 4, 4)).eval()
    q = torch.randn(1, 6, 10, 7, 12)  # not a multiple of the window: padded inside
    skip = torch.randn(1, 6, 10, 7, 12)
    with torch.no_grad():
        a, b = att(q, skip), att(q, torch.zeros_like(skip))
    assert a.shape == q.shape and (a - b).abs().max() > 1e-3  # the skip tokens change the output
    model = build_model(_cfg(3)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 16, 32, 48)).shape == (1, 3, 16, 32, 48)  # another window, same weights


def test_round_trip_errors_and_presets(tmp_path):
    from napari_medseg.models import Checkpoint, load_model, save_checkpoint

    cfg = _cfg(3)
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg, model.state_dict()))
    again, _ = load_model(path)
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model.eval()(x))
    with pytest.raises(MedsegError, match="multiples of 16"):
        check_input_size(cfg, (40, 32, 32))
    with pytest.raises(MedsegError, match="even feature_size"):
        build_model(_cfg(3).replace(feature_size=9, num_heads=(3, 3, 3)))
    small = preset("nnformer", spatial_dims=3)
    assert small.window_size == 4 and sum(p.numel() for p in build_model(small).parameters()) < 10e6
