"""Malformed model packages and model files: each gets a clear error naming the file, and nothing in any of
them runs (pickled weights, an architecture module, a URL).

Every bad package starts as a valid folder package written by ``export_bioimageio`` and is then damaged in
one way (the sha256 in ``rdf.yaml`` updated where the damage is not meant to be a hash mismatch)."""

from __future__ import annotations

import hashlib
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from faults_lib import clear_cli_error, clear_error, run_cli, tiny_checkpoint
from faults_safety import _RunsCode

from napari_medseg.core.errors import MedsegError
from napari_medseg.sharing import describe_model_file, open_model_file


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid package, unpacked to a folder (state dict and TorchScript weights)."""
    from napari_medseg.sharing import export_bioimageio

    root = tmp_path_factory.mktemp("pkg")
    ck = tiny_checkpoint(root / "ck.pt", in_channels=1)
    res = export_bioimageio(ck, root / "good.zip", size=32, run_test=False,
                            formats=("pytorch_state_dict", "torchscript"))
    folder = root / "good"
    zipfile.ZipFile(res.path).extractall(folder)
    return folder


def _copy(good: Path, tmp_path: Path) -> Path:
    d = tmp_path / "bad"
    shutil.copytree(good, d)
    return d


def _rdf(d: Path) -> dict:
    return yaml.safe_load((d / "rdf.yaml").read_text())


def _write_rdf(d: Path, rdf: dict) -> None:
    (d / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))


def _rehash(d: Path, rdf: dict, fmt: str = "pytorch_state_dict") -> None:
    w = rdf["weights"][fmt]
    w["sha256"] = hashlib.sha256((d / w["source"]).read_bytes()).hexdigest()
    _write_rdf(d, rdf)


def _refused(fn, must_name: str) -> str:
    with pytest.raises(MedsegError) as e:
        fn()
    ok, why = clear_error(e.value, must_name)
    assert ok, why
    return str(e.value)


def test_the_good_package_opens(good):
    assert open_model_file(good).info.kind == "bioimageio"


def test_bad_yaml(good, tmp_path):
    d = _copy(good, tmp_path)
    (d / "rdf.yaml").write_text("name: [unclosed\ninputs: {")
    _refused(lambda: open_model_file(d), "bad")


def test_wrong_hash(good, tmp_path):
    d = _copy(good, tmp_path)
    sd = torch.load(d / "weights.pt", weights_only=True)
    next(iter(sd.values())).add_(1.0)
    torch.save(sd, d / "weights.pt")
    msg = _refused(lambda: open_model_file(d), "bad")
    assert "sha256 mismatch" in msg.lower()


def test_weights_of_another_shape(good, tmp_path):
    d = _copy(good, tmp_path)
    other = tiny_checkpoint(tmp_path / "other.pt", in_channels=3, n_classes=4)
    torch.save(torch.load(other, weights_only=True)["state_dict"], d / "weights.pt")
    rdf = _rdf(d)
    _rehash(d, rdf)
    msg = _refused(lambda: open_model_file(d, weights="pytorch_state_dict"), "")
    assert "does not match its weights" in msg  # checked on the meta device, before anything is allocated


def test_pickle_bearing_weights_are_refused_unrun(good, tmp_path):
    d = _copy(good, tmp_path)
    marker = tmp_path / "PWNED"
    sd = torch.load(d / "weights.pt", weights_only=True)
    sd["evil"] = _RunsCode(marker)
    torch.save(sd, d / "weights.pt")
    rdf = _rdf(d)
    _rehash(d, rdf)
    msg = _refused(lambda: open_model_file(d, weights="pytorch_state_dict"), "")
    assert "nothing in it was run" in msg
    assert not marker.exists()


def test_a_foreign_architecture_is_never_imported(good, tmp_path, monkeypatch):
    d = _copy(good, tmp_path)
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_arch.py").write_text(f"open({str(marker)!r}, 'w')\ndef net(**kw):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rdf = _rdf(d)
    rdf["weights"]["pytorch_state_dict"]["architecture"] = {"callable": "net", "import_from": "evil_arch"}
    del rdf["weights"]["torchscript"]
    _write_rdf(d, rdf)
    msg = _refused(lambda: open_model_file(d), "")
    assert "evil_arch" in msg and "does not run" in msg
    assert not marker.exists() and "evil_arch" not in sys.modules
    # with TorchScript beside it, the package predicts through TorchScript
    rdf2 = _rdf(good)
    rdf2["weights"]["pytorch_state_dict"]["architecture"] = {"callable": "net", "import_from": "evil_arch"}
    _write_rdf(d, rdf2)
    opened = open_model_file(d)
    assert opened.checkpoint is None and not marker.exists()


def test_weights_from_a_url_are_refused(good, tmp_path):
    d = _copy(good, tmp_path)
    rdf = _rdf(d)
    rdf["weights"]["torchscript"]["source"] = "https://example.invalid/weights.ts"
    _write_rdf(d, rdf)
    msg = _refused(lambda: open_model_file(d, weights="torchscript"), "bad")
    assert "downloads nothing" in msg  # refused before bioimageio.spec could try to fetch it


def test_a_conda_url_is_refused_too(good, tmp_path):
    d = _copy(good, tmp_path)
    rdf = _rdf(d)
    rdf["weights"]["pytorch_state_dict"]["dependencies"] = {"source": "conda:https://example.invalid/env.yaml"}
    _write_rdf(d, rdf)
    assert "downloads nothing" in _refused(lambda: open_model_file(d), "bad")


def test_a_time_axis_is_refused(good, tmp_path):
    d = _copy(good, tmp_path)
    rdf = _rdf(d)
    rdf["inputs"][0]["axes"].insert(1, {"type": "time", "id": "t", "size": 1})
    _write_rdf(d, rdf)
    assert "time axis" in _refused(lambda: open_model_file(d), "bad")


def test_a_zip_that_is_not_a_package(tmp_path):
    z = tmp_path / "notes.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hello")
    _refused(lambda: describe_model_file(z), "notes.zip")


def test_garbage_torchscript_and_onnx_files(tmp_path):
    ts = tmp_path / "m.ts"
    with zipfile.ZipFile(ts, "w") as f:
        f.writestr("m/code/__torch__.py", "garbage")
    (tmp_path / "m.json").write_text('{"spatial_dims": 2, "in_channels": 1}')
    _refused(lambda: open_model_file(ts), "m.ts")
    onnx = tmp_path / "n.onnx"
    onnx.write_bytes(b"\x08\x07garbage")
    msg = _refused(lambda: open_model_file(onnx), "n.onnx")
    assert "n.json" in msg  # says which sidecar to write
    (tmp_path / "n.json").write_text('{"spatial_dims": 2, "in_channels": 1}')
    _refused(lambda: open_model_file(onnx), "n.onnx")
    (tmp_path / "n.json").write_text('{"spatial_dims": 5}')
    _refused(lambda: open_model_file(onnx), "n.onnx")


def test_cli_predict_refuses_a_bad_package_in_one_line(good, tmp_path):
    import numpy as np
    import tifffile

    d = _copy(good, tmp_path)
    (d / "rdf.yaml").write_text("{{{")
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((64, 64), np.uint8))
    code, err = run_cli(["predict", str(d), str(tmp_path / "x.tif"), "--out", str(tmp_path / "o")])
    ok, why = clear_cli_error(code, err, must_name="bad")
    assert ok, why
    assert "bioimage.io" in err
