"""Safe loading: checkpoints load tensors only (a crafted checkpoint runs nothing through any entry point),
configs are validated against their schema, names from files never steer where outputs are written, and a
header claiming absurd dimensions allocates nothing."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import numpy as np
import pytest
from faults_cases import _absurd_tiff, write_absurd_checkpoint, write_absurd_zarr
from faults_lib import clear_cli_error, clear_error, run_cli, tiny_checkpoint, write_pairs
from faults_safety import unsafe_load_runs_code, write_malicious_checkpoint, write_pickle_zarr

from napari_medseg.core.errors import MedsegError


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    path = write_malicious_checkpoint(tmp_path / "evil.pt", marker)
    return path, marker


def test_the_crafted_checkpoint_does_run_code_when_loaded_unsafely(evil):
    """The control: without weights_only the file runs its code, so 'nothing ran' below means something."""
    path, marker = evil
    assert unsafe_load_runs_code(path, marker)


def _load_checkpoint(p, d):
    from napari_medseg.models.checkpoint import load_checkpoint
    return load_checkpoint(p)


def _load_model(p, d):
    from napari_medseg.models.checkpoint import load_model
    return load_model(p)


def _resolve_init(p, d):
    from napari_medseg.training.rounds import resolve_init
    return resolve_init(p)


def _export(p, d):
    from napari_medseg.models.export import export_checkpoint
    return export_checkpoint(p, d / "exported.pt")


def _cli_predict(p, d):
    import tifffile
    tifffile.imwrite(d / "x.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    return run_cli(["predict", str(p), str(d / "x.tif"), "--out", str(d / "out"), "--window", "64"])


def _cli_train_init(p, d):
    data = write_pairs(d / "data", n=1)
    return run_cli(["train", "--data", str(data), "--init", str(p), "--out", str(d / "run"), "--steps", "2",
                    "--channels", "4,8", "--patch-size", "32", "--no-progress", "--device", "cpu"])


@pytest.mark.parametrize("entry", [_load_checkpoint, _load_model, _resolve_init, _export, _cli_predict,
                                   _cli_train_init], ids=lambda f: f.__name__.strip("_"))
def test_a_crafted_checkpoint_runs_nothing(evil, tmp_path, entry):
    path, marker = evil
    try:
        res = entry(path, tmp_path)
    except MedsegError as e:
        ok, why = clear_error(e, "evil.pt")
        assert ok, why
    else:
        assert isinstance(res, tuple), "the crafted checkpoint was accepted"
        ok, why = clear_cli_error(*res, must_name="evil.pt")
        assert ok, why
    assert not marker.exists(), "code from the checkpoint ran"


def test_a_pickle_codec_zarr_runs_nothing(tmp_path):
    from napari_medseg.io import open_path

    marker = tmp_path / "PWNED"
    p = write_pickle_zarr(tmp_path / "evil.zarr", marker)
    with pytest.raises(MedsegError) as e:
        srcs = open_path(p)
        np.asarray(srcs[0].levels[0])
    assert clear_error(e.value, "evil.zarr")[0]
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ configs
def _wrong(value):
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return "12"
    if isinstance(value, str):
        return 12
    return {"nested": True}


def test_every_train_config_field_is_type_checked():
    from napari_medseg.training.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            continue
        default = getattr(TrainConfig(), f.name)
        bad = {"nested": True} if default is None else _wrong(default)
        with pytest.raises(MedsegError, match=f.name):
            TrainConfig.from_json(json.dumps({f.name: bad}))


def test_every_model_config_field_is_type_checked():
    from napari_medseg.models import ModelConfig

    for f in dataclasses.fields(ModelConfig):
        default = getattr(ModelConfig(), f.name)
        bad = "abc" if isinstance(default, tuple) else _wrong(default)
        with pytest.raises(MedsegError, match=f.name):
            ModelConfig.from_json(json.dumps({f.name: bad}))


@pytest.mark.parametrize("field", ["lr", "weight_decay", "consistency_weight", "time_budget_s"])
def test_non_finite_numbers_are_refused(field):
    from napari_medseg.training.config import TrainConfig

    for v in ("NaN", "Infinity"):
        with pytest.raises(MedsegError, match=field):
            TrainConfig.from_json(f'{{"{field}": {v}}}')


# ------------------------------------------------------------------------------------------ output paths
def test_prediction_outputs_stay_in_the_output_folder(tmp_path):
    from napari_medseg.cli.predict import output_paths

    names = ["..", ".hidden.tif", "a b.svs", "x.ome.tiff", "series", "x.ome.tiff"]
    outs = output_paths([tmp_path / "in" / n for n in names], tmp_path / "out")
    for o in outs:
        assert o.resolve().parent == (tmp_path / "out").resolve(), o
    assert len(set(outs)) == len(outs)


@pytest.mark.parametrize("name", ["../../evil", "/etc/evil", "a/../../b"])
def test_label_store_path_stays_in_the_project_folder(tmp_path, name):
    from napari_medseg.core.source import ImageSource
    from napari_medseg.labels.format import default_path

    src = ImageSource(levels=[np.zeros((8, 8), np.uint8)], axes="YX", pixel_size=(1.0, 1.0), name=name, path=None)
    p = default_path(src, tmp_path / "project")
    assert p.resolve().parent == (tmp_path / "project").resolve(), p


def test_ngff_names_never_lead_outside_the_store(tmp_path):
    """Regression (io/ngff_read.py): a labels entry like '../../x' is skipped (with a warning) instead of being
    looked up, and the image still opens; a dataset path with '..' is refused."""
    from napari_medseg.io import open_path
    from napari_medseg.io.ngff_write import create_labels_group, create_multiscale

    p = tmp_path / "img.zarr"
    create_multiscale(p, (64, 64), np.uint8, "YX", (1.0, 1.0), "micrometer", (32, 32), n_levels=1)
    create_labels_group(p, "cells", (64, 64), (32, 32), (1.0, 1.0), "micrometer")
    attrs = json.loads((p / "labels" / ".zattrs").read_text())
    attrs["labels"] = ["cells", "../../secret", "x/../../y", ""]
    (p / "labels" / ".zattrs").write_text(json.dumps(attrs))
    assert [s.kind for s in open_path(p)] == ["image", "labels"]


def test_a_checkpoint_does_not_choose_where_training_writes(tmp_path):
    """A checkpoint carrying ``train_config.checkpoint_dir = '../../elsewhere'``: continuing from it writes
    only into ``--out``."""
    import torch

    ck = tiny_checkpoint(tmp_path / "m.pt", in_channels=1, n_classes=1, num_res_units=1, norm="instance")
    payload = torch.load(ck, weights_only=True)
    desc = json.loads(payload["description"])
    desc["meta"]["train_config"] = {"checkpoint_dir": str(tmp_path / "elsewhere")}
    payload["description"] = json.dumps(desc)
    torch.save(payload, ck)
    data = write_pairs(tmp_path / "data", n=1)
    code, err = run_cli(["train", "--data", str(data), "--init", str(ck), "--out", str(tmp_path / "run"),
                         "--steps", "2", "--channels", "4,8", "--patch-size", "32", "--no-progress",
                         "--device", "cpu", "--workers", "0"])
    assert code == 0, err[-1500:]
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------------------------------ absurd sizes
def _absurd_nifti(d):
    import nibabel as nib

    p = d / "huge.nii"
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    img.header.set_data_shape((32767, 32767, 32767))
    raw = img.header.binaryblock + b"\0" * 4 + np.zeros(8, np.int16).tobytes()
    p.write_bytes(raw)
    return p




@pytest.mark.parametrize("kind", ["tiff", "nifti", "zarr", "checkpoint"])
def test_absurd_dimensions_allocate_nothing(tmp_path, kind):
    from napari_medseg.io import open_path
    from napari_medseg.models.checkpoint import load_model

    make = {"tiff": lambda d: _absurd_tiff(d / "huge.tif"), "nifti": _absurd_nifti,
            "zarr": lambda d: write_absurd_zarr(d / "huge.zarr"), "checkpoint": lambda d: write_absurd_checkpoint(d / "huge.pt")}[kind]
    p = make(tmp_path)
    assert sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*"))) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(MedsegError) as e:
            load_model(p) if kind == "checkpoint" else open_path(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert clear_error(e.value, p.name)[0], str(e.value)
    assert peak < 32e6, f"{peak / 1e6:.1f} MB traced while refusing {p.name}"


def test_tiff_tiles_claiming_gigabytes_are_refused(tmp_path):
    """Regression (io/tiff.py, found by fuzzing): a TileLength of 16M px for a 96 px image passed the tile
    table check, and reading any corner decoded a 1.6 GB tile."""
    import tifffile

    from napari_medseg.io import open_path

    p = tmp_path / "tall-tiles.tif"
    tifffile.imwrite(p, np.zeros((96, 128, 3), np.uint8), tile=(32, 32), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(p, mode="r+") as tf:
        tf.pages[0].tags["TileLength"].overwrite(32 + (1 << 24))
    tracemalloc.start()
    try:
        with pytest.raises(MedsegError, match=r"tiles of 16777248 x 32 x 3 px for a 128 x 96 px image") as e:
            open_path(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert clear_error(e.value, p.name)[0] and peak < 32e6
