"""``napari-medseg predict``: paths and globs, progress, resume, refusal of another run."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from infer_helpers import small_unet, textured_rgb

from napari_medseg.cli import main
from napari_medseg.cli.predict import expand_inputs, output_paths
from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import open_prediction
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
    for bad in ("0", "many"):
        assert main(["predict", str(ckpt), str(slides / "s0.tif"), "--out", str(tmp_path / "o"), "--batch-size",
                     bad, "--device", "cpu"]) == 2
        assert "--batch-size: batch size must be 'auto' or an integer >= 1" in capsys.readouterr().err


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


@pytest.mark.parametrize("given", ["folder", "glob"])
def test_predict_folder_goes_on_after_a_failing_file(tmp_path, ckpt, slides, capsys, given):
    """A bad file (sorted first) is listed with its cause; the good one is still predicted; exit status 2."""
    (slides / "a_broken.tif").write_bytes(b"II*\x00" + b"\x17" * 200)   # TIFF magic, then garbage
    (slides / "notes.txt").write_text("not an image")                    # a folder's other files are left out
    out = tmp_path / "out"
    inp = str(slides) if given == "folder" else str(slides / "*.tif")
    rc = main(["predict", str(ckpt), inp, "--out", str(out), "--window", "64", "--tissue-mask", "off",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    for name, shape in (("s0", (200, 260)), ("s1", (150, 300))):
        lab = open_prediction(out / f"{name}.prediction.zarr")[0]
        assert lab.levels[0].shape == shape and lab.metadata["status"] == "complete"
    assert not (out / "a_broken.prediction.zarr").exists() and not (out / "notes.prediction.zarr").exists()
    bad = str(slides / "a_broken.tif")
    fail_lines = [ln for ln in err.splitlines() if ln.startswith("napari-medseg predict: error:")]
    assert len(fail_lines) == 1 and fail_lines[0].startswith(f"napari-medseg predict: error: {bad}: ")
    assert "no image data" in fail_lines[0]  # the cause, from the TIFF reader
    assert "2 of 3 input(s) done, 1 failed:" in err
    assert any(ln.startswith(f"  {bad}: ") for ln in err.splitlines())  # the summary lists it again
    # a rerun: the good ones are complete, the bad one is listed again
    assert main(["predict", str(ckpt), inp, "--out", str(out), "--window", "64", "--tissue-mask", "off",
                 "--device", "cpu"]) == 2


def test_predict_input_kind_image(tmp_path, capsys):
    """A NIfTI whose values look like a label map is refused (listed, exit 2) unless --input-kind image."""
    import nibabel as nib

    model = small_unet(1, 2)
    cfg = ModelConfig(in_channels=1, out_channels=2, channels=(4, 8), num_res_units=0, norm="batch")
    ck = save_checkpoint(tmp_path / "m1.pt", Checkpoint(cfg, model.state_dict(), norm=NormConfig.uint8(1)))
    vol = np.zeros((64, 64, 4), np.uint8)   # XYZ: two flat regions, 3 values
    vol[10:40, 12:50] = 1
    vol[30:60, 5:20] = 2
    (tmp_path / "data").mkdir()
    p = tmp_path / "data" / "case.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    args = ["predict", str(ck), str(p), "--out", str(tmp_path / "out"), "--window", "64", "--tissue-mask", "off",
            "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds labels but no image" in err and "--input-kind image" in err
    assert main(args + ["--input-kind", "image"]) == 0
    lab = open_prediction(tmp_path / "out" / "case.prediction.zarr")[0]
    assert lab.levels[0].shape == (4, 64, 64) and lab.metadata["status"] == "complete"


def test_predict_reads_the_checkpoint_a_fixed_number_of_times_whatever_the_inputs(tmp_path, ckpt, monkeypatch):
    """The checkpoint is read once for the whole run, not once more per input (before: 1 + N reads)."""
    import napari_medseg.models.checkpoint as checkpoint

    for i in range(4):
        tifffile.imwrite(tmp_path / f"many{i}.tif", textured_rgb(96, 96, seed=i), photometric="rgb")
    calls = []
    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), *(str(tmp_path / f"many{i}.tif") for i in range(4)), "--out", str(out),
                 "--window", "64", "--tissue-mask", "off", "--device", "cpu"]) == 0
    assert len(list(out.glob("*.prediction.zarr"))) == 4
    assert len(calls) == 1, calls


def test_predict_with_crf_from_the_cli(tmp_path, ckpt, slides, capsys):
    import zarr

    out = tmp_path / "out"
    base = ["predict", str(ckpt), str(slides / "s0.tif"), "--window", "64", "--tissue-mask", "off", "--device", "cpu"]
    assert main(base + ["--out", str(out), "--crf", "2,2"]) == 0
    g = zarr.open_group(str(out / "s0.prediction.zarr"), mode="r")
    assert g["labels/prediction"].attrs["medseg_crf"]["iterations"] == 2 and "probs" in g
    assert main(base + ["--out", str(tmp_path / "o2"), "--crf", "2,x"]) == 2
    assert "--crf takes ITERATIONS" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "o3"), "--crf", "0"]) == 2
    assert "CRF iterations" in capsys.readouterr().err


def test_predict_zoom_from_the_cli(tmp_path, ckpt, slides, capsys):
    import zarr

    base = ["predict", str(ckpt), str(slides / "s0.tif"), "--window", "64", "--tissue-mask", "off", "--device", "cpu",
            "--probs", "float32"]
    probs = []
    for z in ("1", "2"):
        assert main(base + ["--out", str(tmp_path / z), "--zoom", z]) == 0
        probs.append(zarr.open_group(str(tmp_path / z / "s0.prediction.zarr"), mode="r")["probs/0"][:])
    assert probs[0].shape == probs[1].shape  # the image's own pixels
    assert abs(probs[0] - probs[1]).max() > 1e-3  # the model saw another scale
    assert main(base + ["--out", str(tmp_path / "bad"), "--zoom", "0.1"]) == 2
    assert "zoom must be between 0.25 and 4" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "bad2"), "--zoom", "big"]) == 2
    assert "--zoom takes a number (e.g. 1.5) or auto" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "bad3"), "--zoom", "auto"]) == 2  # no object classes
    assert "this model has no object classes" in capsys.readouterr().err


def test_predict_precision_bf16(tmp_path, ckpt, slides, capsys, monkeypatch):
    """--precision bf16 predicts (its own run: not resumed into a float32 output) and warns on a CPU that only
    emulates bfloat16."""
    from napari_medseg.inference import run as run_module

    monkeypatch.setattr(run_module, "cpu_bf16_native", lambda: False)
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(slides / "s0.tif"), "--out", str(out), "--window", "64", "--tissue-mask", "off",
            "--device", "cpu"]
    assert main(args + ["--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert "no native bfloat16" in err
    lab = open_prediction(out / "s0.prediction.zarr")[0]
    assert lab.levels[0].shape == (200, 260) and lab.metadata["status"] == "complete"
    assert main(args) == 2  # float32 on the bfloat16 output: another run
    assert "holds a different prediction run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses a precision it does not offer
        main(args + ["--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
