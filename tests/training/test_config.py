import json

import pytest

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.config import ModelConfig
from napari_medseg.training import TrainConfig


def test_json_round_trip_keeps_nested_model():
    cfg = TrainConfig(model=ModelConfig(name="unet", spatial_dims=3, channels=(8, 16)), patch_size=(32, 64, 64),
                      time_budget_s=12.5, semi="pseudo_label", ct_window=(50, 350), threads=1)
    back = TrainConfig.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.model, ModelConfig) and back.model.channels == (8, 16)
    assert json.loads(cfg.to_json())["model"]["spatial_dims"] == 3


def test_unknown_key_is_named():
    d = TrainConfig().to_dict()
    d["learning_rate"] = 0.1
    with pytest.raises(MedsegError, match="learning_rate"):
        TrainConfig.from_dict(d)


@pytest.mark.parametrize("key,value", [("batch_size", "8"), ("mean_teacher", 1), ("semi", True), ("lr", "fast"),
                                       ("patch_size", [64, "a"]), ("steps", 1.5), ("ct_window", [1])])
def test_wrong_types_are_named(key, value):
    d = TrainConfig().to_dict()
    d[key] = value
    with pytest.raises(MedsegError, match=key):
        TrainConfig.from_dict(d)


@pytest.mark.parametrize("key,value", [("channels", 16), ("channels", []), ("depths", [2, True]), ("dropout", "0.1"),
                                       ("spatial_dims", 2.0), ("norm", None)])
def test_model_config_wrong_types_are_named(key, value):
    d = ModelConfig().to_dict()
    d[key] = value
    with pytest.raises(MedsegError, match=f"model config '{key}'"):
        ModelConfig.from_dict(d)


def test_configs_store_numbers_and_lists_as_their_fields():
    m = ModelConfig.from_dict({"channels": [8, 16], "dropout": 0})
    assert m.channels == (8, 16) and isinstance(m.dropout, float)
    t = TrainConfig.from_dict({"patch_size": 128, "lr": 1, "ct_window": [40, 400]})
    assert t.patch_size == (128,) and isinstance(t.lr, float) and t.ct_window == (40.0, 400.0)


def test_bad_choices_and_ranges():
    with pytest.raises(MedsegError, match="loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(MedsegError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(MedsegError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(MedsegError, match="not valid JSON"):
        TrainConfig.from_json("{")


def test_patch_and_batch_split():
    assert TrainConfig(patch_size=(128,)).patch_for(2) == (128, 128)
    assert TrainConfig().patch_for(3) == (64, 64, 64)
    with pytest.raises(MedsegError, match="3D"):
        TrainConfig(patch_size=(64, 64)).patch_for(3)
    # a semi-supervised method adds unlabelled windows: the labelled batch is never halved
    assert TrainConfig(batch_size=8, semi="mean_teacher", unlabelled_ratio=1.0).split_batch() == (8, 8)
    assert TrainConfig(batch_size=8, semi="pseudo_label").split_batch() == (8, 0)
    assert TrainConfig(batch_size=8, semi="pseudo_label", unlabelled_ratio=0.25).split_batch() == (8, 2)
    assert TrainConfig(batch_size=8).split_batch() == (8, 0)
    assert TrainConfig(batch_size=1, semi="mean_teacher", unlabelled_ratio=0.0).split_batch() == (1, 0)


def test_semi_supervised_learning_is_off_by_default_in_the_engine():
    """An API call trains what it names; the CLI and the widget default to "auto" (below)."""
    cfg = TrainConfig()
    assert cfg.semi == "none" and cfg.split_batch() == (cfg.batch_size, 0)
    # the weight average scored above the last weights at equal time (RESULTS.md, issue 15): on by default
    assert cfg.eval_model == "ema" and cfg.keeps_ema and not cfg.replace(eval_model="student").keeps_ema


def test_older_configs_are_read_in_todays_terms():
    """A checkpoint's train_config from before ``semi`` (mean_teacher, rampup_steps, eval_model=teacher)."""
    old = TrainConfig().to_dict()
    for k in ("semi", "rampup"):
        old.pop(k)
    old.update(mean_teacher=True, rampup_steps=200, steps=400, eval_model="teacher")
    cfg = TrainConfig.from_dict(old)
    assert cfg.semi == "mean_teacher" and cfg.rampup == pytest.approx(0.5) and cfg.eval_model == "ema"
    assert TrainConfig.from_dict({"mean_teacher": False}).semi == "none"


@pytest.mark.parametrize("kw,word", [(dict(pl_threshold=1.5), "pl_threshold"), (dict(pl_start=0.5, pl_full=0.2),
                                     "pl_full"), (dict(semi="fixmatch"), "semi"), (dict(eval_model="best"),
                                     "eval_model"), (dict(rampup=-0.1), "rampup"), (dict(pl_cutmix=2.0), "pl_cutmix"),
                                     (dict(semi="mean_teacher", consistency_on="unlabelled"), "unlabelled_ratio")])
def test_semi_supervised_options_are_checked(kw, word):
    with pytest.raises(MedsegError, match=word):
        TrainConfig(**kw)


def test_crf_settings_from_the_command_line_and_bad_values():
    """``--crf-weight`` reaches the config (off by default); a negative weight or a non-positive sigma is refused."""
    import argparse

    from napari_medseg.cli.train import _config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--images", "i", "--masks", "m", "--out", "o"])
    assert _config(args, 2).crf_weight is None  # not set: off, unless semi="auto" adds it
    args = p.parse_args(["--images", "i", "--masks", "m", "--out", "o", "--crf-weight", "0"])
    assert _config(args, 2).crf_weight == 0.0  # set to off, which "auto" keeps
    args = p.parse_args(["--images", "i", "--masks", "m", "--out", "o", "--crf-weight", "0.1"])
    assert _config(args, 2).crf_weight == pytest.approx(0.1)
    with pytest.raises(MedsegError, match="crf_weight"):
        TrainConfig(crf_weight=-1)
    with pytest.raises(MedsegError, match="crf_sigma_rgb"):
        TrainConfig(crf_sigma_rgb=0)


def test_auto_semi_resolves_by_the_extent_of_the_paint():
    """Pseudo-labels while the paint spans few patches (where bench_semisup measured a gain), labels only beyond;
    never with distillation or domain adaptation; other settings untouched."""
    from napari_medseg.training.config import AUTO_CRF_WEIGHT, AUTO_SEMI_MAX_PATCHES

    auto = TrainConfig(semi="auto")
    cfg, why = auto.resolve_semi(18.0)
    assert cfg.semi == "pseudo_label" and "pseudo-labels" in why and "18" in why
    cfg, why = auto.resolve_semi(AUTO_SEMI_MAX_PATCHES + 1)  # strokes spread wide (2D): labels + the gated CRF
    assert cfg.semi == "none" and cfg.crf_weight == AUTO_CRF_WEIGHT and "gated CRF" in why
    assert auto.replace(crf_weight=0.5).resolve_semi(AUTO_SEMI_MAX_PATCHES + 1)[0].crf_weight == 0.5  # the user's
    cfg, why = auto.replace(crf_weight=0.0).resolve_semi(AUTO_SEMI_MAX_PATCHES + 1)  # the user's 0: it stays off
    assert cfg.semi == "none" and cfg.crf_weight == 0 and "labels only" in why and "set to 0" in why
    cfg, why = auto.resolve_semi(AUTO_SEMI_MAX_PATCHES + 1, 0.05, spatial_dims=3)  # 3D: not measured, labels only
    assert cfg.semi == "none" and not cfg.crf_weight and "labels only" in why and "set to 0" not in why
    assert not auto.resolve_semi(AUTO_SEMI_MAX_PATCHES)[0].crf_weight  # pseudo-labels alone
    assert auto.resolve_semi(AUTO_SEMI_MAX_PATCHES)[0].semi == "pseudo_label"  # the bound is inclusive
    cfg, why = auto.resolve_semi(300.0, 0.9)  # fully labelled regions: nothing unpainted around them
    assert cfg.semi == "none" and not cfg.crf_weight and "too little is unpainted" in why
    assert auto.replace(domain_adapt="dann").resolve_semi(1.0)[0].semi == "none"
    assert TrainConfig(semi="auto", distill_from="t.pt").resolve_semi(1.0)[0].semi == "none"
    same = TrainConfig(semi="mean_teacher")
    assert same.resolve_semi(1.0) == (same, "")


def test_no_amp_from_the_command_line_trains_in_float32():
    """``--no-amp`` turns mixed precision off (bf16 autocast on a CPU with native bf16, AMP on a GPU); it is on
    by default."""
    import argparse

    from napari_medseg.cli.train import _config, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--images", "i", "--masks", "m", "--out", "o"]
    assert _config(p.parse_args(base), 2).amp is True
    assert _config(p.parse_args(base + ["--no-amp"]), 2).amp is False
