"""Registry and config errors: each bad-input case says what was wrong and what would work."""

from __future__ import annotations

import pytest
import torch
from model_cases import NAMES, small_config

from napari_medseg.core.errors import MedsegError
from napari_medseg.models import ModelConfig, build_model, check_input_size, required_multiple
from napari_medseg.models.base import PRESET_SIZES
from napari_medseg.models.registry import min_input_size, preset, valid_size


def test_wrong_name_lists_the_valid_names():
    with pytest.raises(MedsegError) as e:
        build_model(ModelConfig(name="unet3000"))
    msg = str(e.value)
    assert "unet3000" in msg
    for n in NAMES:
        assert n in msg


@pytest.mark.parametrize("name", ["swin_unet", "swin_unetr"])
def test_swin_rejects_48_and_names_32_or_64(name):
    cfg = ModelConfig(name=name)
    assert required_multiple(cfg) == 32
    with pytest.raises(MedsegError) as e:
        check_input_size(cfg, (48, 48))
    msg = str(e.value)
    assert "32" in msg and "64" in msg and "(48, 48)" in msg


@pytest.mark.parametrize("name", ["swin_unet", "swin_unetr"])
def test_swin_forward_with_48_raises_a_clear_error(name):
    model = build_model(small_config(name, 2))
    with pytest.raises(MedsegError, match="multiples of 32"):
        model(torch.zeros(1, 3, 48, 64))


def test_check_input_size_suggests_neighbours_and_minimum():
    cfg = ModelConfig(name="unet")  # 5 levels: multiples of 16, at least 32
    assert required_multiple(cfg) == 16 and min_input_size(cfg) == 32
    check_input_size(cfg, (256, 256))
    with pytest.raises(MedsegError, match="Try 96 or 112"):
        check_input_size(cfg, (100, 256))
    with pytest.raises(MedsegError, match="at least 32"):
        check_input_size(cfg, (16, 256))
    assert valid_size(cfg, 100) == 112 and valid_size(cfg, 1) == 32
    assert required_multiple(cfg.replace(channels=(8, 16, 32))) == 4
    assert required_multiple(ModelConfig(name="swin_unet", depths=(2, 2, 2), num_heads=(3, 6, 12))) == 16
    assert min_input_size(ModelConfig(name="swin_unetr")) == 64


def test_swin_heads_must_divide_stage_widths():
    cfg = ModelConfig(name="swin_unet", feature_size=20, num_heads=(3, 6, 12, 24))
    with pytest.raises(MedsegError, match="divide by their heads"):
        build_model(cfg)


def test_swin_depths_and_heads_must_match():
    with pytest.raises(MedsegError, match="as many depths as num_heads"):
        build_model(ModelConfig(name="swin_unet", depths=(2, 2, 2), num_heads=(3, 6, 12, 24)))


def test_swin_unetr_needs_four_stages_and_feature_size_of_twelve():
    with pytest.raises(MedsegError, match="exactly 4"):
        build_model(ModelConfig(name="swin_unetr", depths=(2, 2, 2), num_heads=(3, 6, 12)))
    with pytest.raises(MedsegError, match="divisible by 12"):
        build_model(ModelConfig(name="swin_unetr", feature_size=16, num_heads=(2, 4, 8, 16)))


def test_unetpp_needs_five_levels():
    with pytest.raises(MedsegError, match="5 levels"):
        build_model(ModelConfig(name="unetpp", channels=(16, 32, 64)))


def test_unet_needs_two_levels():
    with pytest.raises(MedsegError, match="at least two"):
        build_model(ModelConfig(name="unet", channels=(16,)))


def test_config_rejects_impossible_channels_and_dims():
    with pytest.raises(MedsegError, match="out_channels >= 2"):
        ModelConfig(out_channels=1)
    with pytest.raises(MedsegError, match="spatial_dims"):
        ModelConfig(spatial_dims=4)


@pytest.mark.parametrize("size", PRESET_SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_presets_build_and_round_trip_json(name, size):
    cfg = preset(name, size, in_channels=3, out_channels=5)
    assert cfg.name == name and cfg.in_channels == 3 and cfg.out_channels == 5
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_unknown_preset_size():
    with pytest.raises(MedsegError, match="small, base"):
        preset("unet", "huge")


def test_base_presets_are_larger_than_small():
    for name in NAMES:
        n = {s: sum(p.numel() for p in build_model(preset(name, s)).parameters()) for s in ("small", "base")}
        assert n["base"] > n["small"], name


def test_unet_activation_choice():
    import torch.nn as nn

    from napari_medseg.core.errors import MedsegError
    from napari_medseg.models import ModelConfig, build_model

    relu = build_model(ModelConfig(channels=(4, 8), act="relu"))
    prelu = build_model(ModelConfig(channels=(4, 8)))
    assert any(isinstance(m, nn.ReLU) for m in relu.modules()) and not any(isinstance(m, nn.PReLU) for m in relu.modules())
    assert any(isinstance(m, nn.PReLU) for m in prelu.modules())
    assert ModelConfig.from_dict({"channels": [4, 8]}).act == "prelu"  # checkpoints from before the field
    assert ModelConfig.from_json(ModelConfig(act="relu").to_json()).act == "relu"
    with pytest.raises(MedsegError, match="act must be one of"):
        ModelConfig(act="gelu")
