"""``napari-medseg predict``: paths and globs, progress, resume, refusal of another run."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from infer_helpers import small_unet, textured_rgb

from napari_medseg.cli import main
from napari_medseg.inference import open_prediction
from napari_medseg.inference.cli import expand_inputs, output_paths
from napari_medseg.io.errors import MedsegError
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, save_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    model = small_unet(3, 2)
    cfg = ModelConfig(in_channels=3, out_channels=2, channels=(4, 8), num_res_units=0, norm="batch")
    return save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg, model.state_dict(), norm=NormConfig.uint8(3)))


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    for i, (h, w) in enumerate([(200, 260), (150, 300)]):
        tifffile.imwrite(d / f"s{i}.tif", textured_rgb(h, w, seed=i), tile=(64, 64), photometric="rgb")
    return d


def test_predict_glob_and_resume(tmp_path, ckpt, slides, capsys):
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(slides / "*.tif"), "--out", str(out), "--window", "64", "--probs", "uint8",
            "--tissue-mask", "off", "--device", "cpu"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "s0: done" in err or "s0" in err
    for name, shape in (("s0", (200, 260)), ("s1", (150, 300))):
        lab = open_prediction(out / f"{name}.prediction.zarr")[0]
        assert lab.levels[0].shape == shape and lab.metadata["status"] == "complete"
    before = (out / "s0.prediction.zarr" / "labels" / "prediction" / "0" / "0" / "0").read_bytes()
    assert main(args) == 0  # a rerun resumes (nothing left to do)
    assert (out / "s0.prediction.zarr" / "labels" / "prediction" / "0" / "0" / "0").read_bytes() == before
    assert main(args[:-4] + ["--overlap", "0.5", "--tissue-mask", "off", "--device", "cpu"]) == 2
    assert "holds a different prediction run" in capsys.readouterr().err


def test_bad_cli_input(tmp_path, ckpt, slides, capsys):
    assert main(["predict", str(tmp_path / "none.pt"), str(slides / "s0.tif"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(tmp_path / "nothing*.tif"), "--out", str(tmp_path / "o")]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(slides / "s0.tif"), "--out", str(tmp_path / "o"), "--window", "63",
                 "--device", "cpu"]) == 2
    assert "multiples of 2" in capsys.readouterr().err


def test_output_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "x.ome.tif").write_bytes(b"")
    ins = expand_inputs([str(tmp_path / "*" / "x.ome.tif")])
    assert [p.name for p in output_paths(ins, tmp_path)] == ["x.prediction.zarr", "x-1.prediction.zarr"]
    with pytest.raises(MedsegError):
        expand_inputs([str(tmp_path / "zzz")])
    assert np.all([p.exists() for p in ins])
