"""The bad-input table: each case builds a bad file/config/checkpoint in a fresh folder and feeds it to the
public entry point a user hits (``open_path``, the napari reader, ``LabelStore``, ``TrainConfig`` /
``ModelConfig.from_json``, ``load_checkpoint`` / ``load_model``, the ``napari-medseg`` CLI).

``run_case(case, folder)`` returns an ``Outcome``: ``clear`` (a ``MedsegError`` with one clear line, the
CLI's exit status 2 with one error line, the napari reader's single error notification, or a correct
refusal to claim a foreign file), ``unclear`` (a MedsegError that fails the clarity rules), ``accepted``
(nothing refused the bad input) or ``crash`` (any other exception). Used by ``test_bad_inputs.py`` and
``benchmarks/fault_suite.py``.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from faults_lib import clear_cli_error, clear_error, run_cli, tiny_checkpoint, write_pairs

from napari_medseg.core.errors import MedsegError


@dataclass
class Case:
    name: str
    entry: str  # the public entry point
    fn: Callable[[Path], Any]  # raises for a refused input; returns ("cli", code, stderr) / "declined"
    must_name: str | None = None  # a text the message must contain (usually the file's name)
    expect: str = "error"  # "error" or "decline" (a foreign file the napari reader must not claim)


@dataclass
class Outcome:
    status: str  # clear | unclear | accepted | crash
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def clear(self) -> bool:
        return self.status == "clear"


class Notified(MedsegError):
    """The napari reader answered with one error notification (its text)."""


def run_case(case: Case, folder: Path) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(folder)  # relative names in messages stay short; nothing lands elsewhere
    try:
        result = case.fn(folder)
    except Exception as e:  # noqa: BLE001 - classifying is the point
        ok, why = clear_error(e, case.must_name)
        if ok:
            return Outcome("clear", str(e))
        status = "unclear" if isinstance(e, MedsegError) else "crash"
        return Outcome(status, f"{why}", {"traceback": traceback.format_exc()[-2000:]})
    finally:
        os.chdir(cwd)
    if isinstance(result, tuple) and result and result[0] == "cli":
        _, code, stderr = result
        ok, why = clear_cli_error(code, stderr, case.must_name)
        return Outcome("clear" if ok else ("crash" if "Traceback" in stderr or code not in (0, 2) else "unclear"),
                       stderr.strip().splitlines()[-1] if stderr.strip() else why, {"why": why, "code": code})
    if result == "declined":
        return Outcome("clear" if case.expect == "decline" else "accepted", "not claimed by the napari reader")
    return Outcome("accepted", f"no error; returned {type(result).__name__}")


# ================================================================================ file makers
def _tiff(path: Path, shape=(512, 512), tile=(128, 128)) -> Path:
    import tifffile

    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, shape, dtype=np.uint8), tile=tile, compression="zlib",
                     metadata=None)
    return path


def _truncated_tiff(path: Path) -> Path:
    _tiff(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _absurd_tiff(path: Path, side: int = 2**31 - 1) -> Path:
    import tifffile

    tifffile.imwrite(path, np.full((256, 256), 5, np.uint8), tile=(256, 256), compression="zlib", metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tf:
        tags = tf.pages[0].tags
        tags["ImageWidth"].overwrite(side)
        tags["ImageLength"].overwrite(side)
    return path


def _ngff(path: Path, shape=(256, 256), chunks=(64, 64), levels: int = 2) -> Path:
    from napari_medseg.io.ngff_write import build_pyramid, create_multiscale

    rng = np.random.default_rng(1)
    arrs = create_multiscale(path, shape, np.uint8, "YX", (0.5, 0.5), "micrometer", chunks, n_levels=levels,
                             overwrite=True)
    arrs[0][...] = rng.integers(0, 255, shape, dtype=np.uint8)
    build_pyramid(arrs, "YX")
    return path


def write_absurd_checkpoint(path: Path) -> Path:
    """A valid small checkpoint whose model config claims 2^20 and 2^21 channels (terabytes of weights)."""
    import torch

    p = tiny_checkpoint(path)
    payload = torch.load(p, weights_only=True)
    desc = json.loads(payload["description"])
    desc["model_config"]["channels"] = [2**20, 2**21]
    payload["description"] = json.dumps(desc)
    torch.save(payload, p)
    return p


def write_absurd_zarr(path: Path, side: int = 2**40) -> Path:
    """Zarr v2 metadata claiming a ``side x side`` uint8 array (no chunk stored)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [side, side], "chunks": [256, 256], "dtype": "|u1", "compressor": None,
        "fill_value": 0, "filters": None, "order": "C"}))
    return path


def _edit_json(path: Path, fn: Callable[[dict], dict]) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def _nifti(path: Path, shape=(16, 16, 8), dtype=np.int16) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.arange(np.prod(shape), dtype=dtype).reshape(shape) % 200, np.eye(4)), str(path))
    return path


def _store(path: Path, shape=(256, 256)) -> Any:
    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.labels.store import LabelStore

    s = LabelStore.create(path, shape, chunks=(64, 64), classes=ClassSchema(("background", "tumour")))
    s.write((slice(10, 80), slice(10, 80)), 2)
    s.close()
    return path


def _cli(argv: list[str]) -> tuple[str, int, str]:
    code, err = run_cli([str(a) for a in argv])
    return ("cli", code, err)


def _napari_read(path: Path) -> Any:
    """The napari reader as napari calls it: ``get_reader`` then the returned function."""
    from napari_medseg._napari.contrib import reader as r

    shown: list[str] = []
    old = r.show_error
    r.show_error = shown.append
    try:
        fn = r.get_reader(str(path))
        if fn is None:
            return "declined"
        layers = fn(str(path))
    finally:
        r.show_error = old
    if layers == [(None,)] and len(shown) == 1:
        raise Notified(shown[0])
    raise AssertionError(f"the reader returned {len(layers)} layer(s) and {len(shown)} notification(s)")


# ================================================================================ the cases
def _readers() -> list[Case]:
    def empty_tif(d: Path) -> Any:
        (d / "empty.tif").write_bytes(b"")
        from napari_medseg.io import open_path
        return open_path(d / "empty.tif")

    def html_svs(d: Path) -> Any:
        (d / "slide.svs").write_bytes(b"<html><body>404 Not Found</body></html>\n" * 10)
        from napari_medseg.io import open_path
        return open_path(d / "slide.svs")

    def truncated_tiff(d: Path) -> Any:
        from napari_medseg.io import open_path
        return open_path(_truncated_tiff(d / "cut.tif"))

    def absurd_tiff(d: Path) -> Any:
        from napari_medseg.io import open_path
        return open_path(_absurd_tiff(d / "huge.tif"))

    def empty_zarr(d: Path) -> Any:
        import zarr

        from napari_medseg.io import open_path
        zarr.open_group(str(d / "empty.zarr"), mode="w", zarr_format=2)
        return open_path(d / "empty.zarr")

    def bad_json_attrs(d: Path) -> Any:
        from napari_medseg.io import open_path
        p = _ngff(d / "bad.zarr")
        (p / ".zattrs").write_text("{not json")
        return open_path(p)

    def missing_level(d: Path) -> Any:
        import shutil

        from napari_medseg.io import open_path
        p = _ngff(d / "nolevel.zarr")
        shutil.rmtree(p / "1")
        return open_path(p)

    def axes_mismatch(d: Path) -> Any:
        from napari_medseg.io import open_path
        p = _ngff(d / "axes.zarr")

        def edit(a: dict) -> dict:
            a["multiscales"][0]["axes"].insert(0, {"name": "z", "type": "space"})
            return a
        _edit_json(p / ".zattrs", edit)
        return open_path(p)

    def path_traversal(d: Path) -> Any:
        import zarr

        from napari_medseg.io import open_path
        zarr.create_array(str(d / "secret.zarr"), shape=(8, 8), dtype="u1", zarr_format=2)
        p = _ngff(d / "trav.zarr", levels=1)

        def edit(a: dict) -> dict:
            a["multiscales"][0]["datasets"][0]["path"] = "../secret.zarr"
            return a
        _edit_json(p / ".zattrs", edit)
        return open_path(p)

    def unknown_codec(d: Path) -> Any:
        from napari_medseg.io import open_path
        p = _ngff(d / "codec.zarr", levels=1)

        def edit(a: dict) -> dict:
            a["compressor"] = {"id": "no-such-codec"}
            return a
        _edit_json(p / "0" / ".zarray", edit)
        return open_path(p)

    def absurd_zarray(d: Path) -> Any:
        """A plain array whose metadata claims 2^40 x 2^40 px (nothing stored; test_safe_loading measures
        that refusing it allocates nothing)."""
        from napari_medseg.io import open_path
        return open_path(write_absurd_zarr(d / "huge.zarr"))

    def garbage_nii(d: Path) -> Any:
        from napari_medseg.io import open_path
        (d / "ct.nii").write_bytes(np.random.default_rng(0).integers(0, 255, 600, dtype=np.uint8).tobytes())
        return open_path(d / "ct.nii")

    def truncated_nii(d: Path) -> Any:
        from napari_medseg.io import open_path
        p = _nifti(d / "cut.nii")
        p.write_bytes(p.read_bytes()[:1000])
        return open_path(p)

    def zero_axis_nii(d: Path) -> Any:
        import nibabel as nib

        from napari_medseg.io import open_path
        nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.int16), np.eye(4)), str(d / "zero.nii"))
        return open_path(d / "zero.nii")

    def six_d_nii(d: Path) -> Any:
        import nibabel as nib

        from napari_medseg.io import open_path
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2, 2, 2), np.int16), np.eye(4)), str(d / "six.nii"))
        return open_path(d / "six.nii")

    def dicom_junk(d: Path) -> Any:
        from napari_medseg.io import open_path
        (d / "series").mkdir()
        (d / "series" / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 20)
        return open_path(d / "series")

    def missing_path(d: Path) -> Any:
        from napari_medseg.io import open_path
        return open_path(d / "nowhere.tif")

    def plain_folder(d: Path) -> Any:
        from napari_medseg.io import open_path
        (d / "notes").mkdir()
        (d / "notes" / "readme.txt").write_text("hello")
        return open_path(d / "notes")

    def napari_truncated(d: Path) -> Any:
        return _napari_read(_truncated_tiff(d / "cut.tif"))

    def napari_corrupt_zarr(d: Path) -> Any:
        p = _ngff(d / "bad.zarr")
        (p / ".zattrs").write_text("[]")
        (p / "0" / ".zarray").write_text("{")
        return _napari_read(p)

    def napari_foreign(d: Path) -> Any:
        (d / "notes.txt").write_text("not an image")
        return _napari_read(d / "notes.txt")

    return [
        Case("tiff: empty file", "open_path", empty_tif, "empty.tif"),
        Case("tiff: an HTML page named .svs", "open_path", html_svs, "slide.svs"),
        Case("tiff: truncated (tile position named)", "open_path", truncated_tiff, "y="),
        Case("tiff: header claims 2^31 x 2^31 px", "open_path", absurd_tiff, "huge.tif"),
        Case("zarr: empty group", "open_path", empty_zarr, "empty.zarr"),
        Case("zarr: .zattrs is not JSON", "open_path", bad_json_attrs, "bad.zarr"),
        Case("ngff: multiscales names a missing level", "open_path", missing_level, "nolevel.zarr"),
        Case("ngff: axes do not match the arrays", "open_path", axes_mismatch, "axes.zarr"),
        Case("ngff: dataset path '../' outside the store", "open_path", path_traversal, "trav.zarr"),
        Case("zarr: unknown compressor", "open_path", unknown_codec, "codec.zarr"),
        Case("zarr: metadata claims 2^40 x 2^40 px", "open_path", absurd_zarray, "huge.zarr"),
        Case("nifti: random bytes", "open_path", garbage_nii, "ct.nii"),
        Case("nifti: truncated", "open_path", truncated_nii, "cut.nii"),
        Case("nifti: zero-length axis", "open_path", zero_axis_nii, "zero.nii"),
        Case("nifti: 6-D", "open_path", six_d_nii, "six.nii"),
        Case("dicom: folder of junk .dcm", "open_path", dicom_junk, "series"),
        Case("path: does not exist", "open_path", missing_path, "nowhere.tif"),
        Case("path: a folder of text files", "open_path", plain_folder, "notes"),
        Case("napari reader: truncated TIFF", "get_reader", napari_truncated, "cut.tif"),
        Case("napari reader: broken zarr metadata", "get_reader", napari_corrupt_zarr, "bad.zarr"),
        Case("napari reader: a text file", "get_reader", napari_foreign, expect="decline"),
    ]


def _stores() -> list[Case]:
    def not_a_store(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        return LabelStore.open(_ngff(d / "image.zarr"))

    def store_bad_attrs(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        p = _store(d / "s.labels.zarr")
        (p / ".zattrs").write_text('{"napari_medseg": ')
        return LabelStore.open(p)

    def store_meta_missing_shape(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        p = _store(d / "s.labels.zarr")

        def edit(a: dict) -> dict:
            del a["napari_medseg"]["shape"]
            return a
        _edit_json(p / ".zattrs", edit)
        return LabelStore.open(p)

    def store_wrong_image(d: Path) -> Any:
        from napari_medseg.io import open_path
        from napari_medseg.labels.store import LabelStore
        p = _store(d / "s.labels.zarr")
        img = open_path(_ngff(d / "other.zarr", shape=(300, 200)))[0]
        return LabelStore.open(p, image=img)

    def store_bad_shape(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        return LabelStore.create(d / "s.labels.zarr", (0, 10))

    def store_exists(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        (d / "taken.labels.zarr").mkdir()
        (d / "taken.labels.zarr" / "thesis.txt").write_text("years of work")
        return LabelStore.create(d / "taken.labels.zarr", (64, 64))

    def store_corrupt_chunk(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        p = _store(d / "s.labels.zarr")
        chunk = p / "0" / "0" / "0"
        chunk.write_bytes(chunk.read_bytes()[:20])
        s = LabelStore.open(p, mode="r")
        return s[0:128, 0:128]

    def store_bad_values(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        s = LabelStore.open(_store(d / "s.labels.zarr"))
        try:
            return s.write((slice(0, 4), slice(0, 4)), 200)
        finally:
            s.close()

    def store_locked(d: Path) -> Any:
        from napari_medseg.labels.store import LabelStore
        p = _store(d / "s.labels.zarr")
        first = LabelStore.open(p)
        try:
            return LabelStore.open(p)
        finally:
            first.close()

    return [
        Case("store: an image zarr, not a label store", "LabelStore.open", not_a_store, "image.zarr"),
        Case("store: .zattrs cut short", "LabelStore.open", store_bad_attrs, "s.labels.zarr"),
        Case("store: metadata without 'shape'", "LabelStore.open", store_meta_missing_shape, "s.labels.zarr"),
        Case("store: made for another image", "LabelStore.open", store_wrong_image, "s.labels.zarr"),
        Case("store: shape (0, 10)", "LabelStore.create", store_bad_shape, "(0, 10)"),
        Case("store: folder holds other files", "LabelStore.create", store_exists, "taken.labels.zarr"),
        Case("store: truncated chunk file", "LabelStore.open", store_corrupt_chunk, "s.labels.zarr"),
        Case("store: label value beyond the classes", "LabelStore.write", store_bad_values, "200"),
        Case("store: opened twice for editing", "LabelStore.open", store_locked, "s.labels.zarr"),
    ]


def _configs() -> list[Case]:
    def tc(text: str) -> Callable[[Path], Any]:
        def f(d: Path) -> Any:
            from napari_medseg.training.config import TrainConfig
            return TrainConfig.from_json(text)
        return f

    def mc(text: str, build: bool = False) -> Callable[[Path], Any]:
        def f(d: Path) -> Any:
            from napari_medseg.models import ModelConfig, build_model
            cfg = ModelConfig.from_json(text)
            return build_model(cfg) if build else cfg
        return f

    return [
        Case("train config: not JSON", "TrainConfig.from_json", tc('{"steps": 10,'), "JSON"),
        Case("train config: a list", "TrainConfig.from_json", tc("[1, 2]"), "object"),
        Case("train config: unknown key", "TrainConfig.from_json", tc('{"stpes": 10}'), "stpes"),
        Case("train config: batch_size '8'", "TrainConfig.from_json", tc('{"batch_size": "8"}'), "batch_size"),
        Case("train config: loss 'mse'", "TrainConfig.from_json", tc('{"loss": "mse"}'), "loss"),
        Case("train config: steps 0", "TrainConfig.from_json", tc('{"steps": 0}'), "steps"),
        Case("train config: lr NaN", "TrainConfig.from_json", tc('{"lr": NaN}'), "lr"),
        Case("train config: model is a number", "TrainConfig.from_json", tc('{"model": 5}'), "model"),
        Case("model config: unknown key", "ModelConfig.from_json", mc('{"chanels": [4, 8]}'), "chanels"),
        Case("model config: spatial_dims 4", "ModelConfig.from_json", mc('{"spatial_dims": 4}'), "spatial_dims"),
        Case("model config: channels 'abc'", "ModelConfig.from_json", mc('{"channels": "abc"}'), "channels"),
        Case("model config: unknown architecture", "ModelConfig.from_json", mc('{"name": "vnet"}', build=True),
             "vnet"),
    ]


def _checkpoints() -> list[Case]:
    def load(path_fn: Callable[[Path], Path], model: bool = False) -> Callable[[Path], Any]:
        def f(d: Path) -> Any:
            from napari_medseg.models.checkpoint import load_checkpoint, load_model
            p = path_fn(d)
            return load_model(p) if model else load_checkpoint(p)
        return f

    def text(d: Path) -> Path:
        (d / "model.pt").write_text("this is a README, not a model")
        return d / "model.pt"

    def truncated(d: Path) -> Path:
        p = tiny_checkpoint(d / "cut.pt")
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return p

    def pickled_code(d: Path) -> Path:
        from faults_safety import write_malicious_checkpoint
        return write_malicious_checkpoint(d / "evil.pt", d / "PWNED")

    def plain_state_dict(d: Path) -> Path:
        import torch
        torch.save({"conv.weight": torch.zeros(2, 2)}, d / "plain.pt")
        return d / "plain.pt"

    def _rewrite_description(d: Path, name: str, edit: Callable[[dict], Any]) -> Path:
        import torch
        p = tiny_checkpoint(d / name)
        payload = torch.load(p, weights_only=True)
        payload["description"] = edit(json.loads(payload["description"]))
        torch.save(payload, p)
        return p

    def damaged_description(d: Path) -> Path:
        return _rewrite_description(d, "damaged.pt", lambda desc: "{" + json.dumps(desc)[:40])

    def unknown_config_key(d: Path) -> Path:
        def edit(desc: dict) -> str:
            desc["model_config"]["layers"] = 1000
            return json.dumps(desc)
        return _rewrite_description(d, "odd.pt", edit)

    def absurd_config(d: Path) -> Path:
        def edit(desc: dict) -> str:
            desc["model_config"]["channels"] = [2**20, 2**21]
            return json.dumps(desc)
        return _rewrite_description(d, "absurd.pt", edit)

    return [
        Case("checkpoint: does not exist", "load_checkpoint", load(lambda d: d / "none.pt"), "none.pt"),
        Case("checkpoint: a text file", "load_checkpoint", load(text), "model.pt"),
        Case("checkpoint: truncated", "load_checkpoint", load(truncated), "cut.pt"),
        Case("checkpoint: pickled code", "load_checkpoint", load(pickled_code), "evil.pt"),
        Case("checkpoint: a plain state dict", "load_checkpoint", load(plain_state_dict), "plain.pt"),
        Case("checkpoint: description cut short", "load_checkpoint", load(damaged_description), "damaged.pt"),
        Case("checkpoint: unknown model config key", "load_checkpoint", load(unknown_config_key), "layers"),
        Case("checkpoint: config claims a huge model", "load_model", load(absurd_config, model=True), "absurd.pt"),
    ]


def _cli_cases() -> list[Case]:
    def predict_missing_ckpt(d: Path) -> Any:
        return _cli(["predict", d / "none.pt", d / "x.tif", "--out", d / "out"])

    def predict_garbage_ckpt(d: Path) -> Any:
        (d / "bad.pt").write_bytes(b"\x80\x04garbage")
        return _cli(["predict", d / "bad.pt", _tiff(d / "x.tif"), "--out", d / "out", "--window", "64"])

    def predict_no_input(d: Path) -> Any:
        return _cli(["predict", tiny_checkpoint(d / "m.pt"), str(d / "slides" / "*.svs"), "--out", d / "out"])

    def predict_out_is_file(d: Path) -> Any:
        (d / "out").write_text("x")
        return _cli(["predict", tiny_checkpoint(d / "m.pt"), _tiff(d / "x.tif"), "--out", d / "out"])

    def predict_corrupt_tile(d: Path) -> Any:
        import tifffile
        from faults_lib import textured_rgb
        tifffile.imwrite(d / "slide.tif", textured_rgb(256, 256), tile=(64, 64), photometric="rgb",
                         compression="zlib")
        with tifffile.TiffFile(d / "slide.tif") as tf:
            off, n = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]
        raw = bytearray((d / "slide.tif").read_bytes())
        raw[off: off + n] = b"\x00" * n
        (d / "slide.tif").write_bytes(bytes(raw))
        return _cli(["predict", tiny_checkpoint(d / "m.pt"), d / "slide.tif", "--out", d / "out", "--window", "64",
                     "--tissue-mask", "off", "--device", "cpu"])

    def train_bad_config(d: Path) -> Any:
        write_pairs(d / "data", n=1, size=64)
        (d / "cfg.json").write_text('{"lr": -1}')
        return _cli(["train", "--data", d / "data", "--config", d / "cfg.json", "--out", d / "run", "--no-progress"])

    def train_missing_data(d: Path) -> Any:
        return _cli(["train", "--data", d / "nothing", "--out", d / "run", "--no-progress"])

    def train_labels_other_shape(d: Path) -> Any:
        import tifffile
        tifffile.imwrite(d / "img.tif", np.zeros((64, 64), np.uint8))
        tifffile.imwrite(d / "lab.tif", np.ones((32, 48), np.uint8))
        return _cli(["train", "--image", d / "img.tif", "--labels", d / "lab.tif", "--out", d / "run",
                     "--no-progress", "--steps", "2"])

    def convert_truncated(d: Path) -> Any:
        return _cli(["convert", _truncated_tiff(d / "cut.tif"), d / "cut.zarr", "--no-progress"])

    return [
        Case("cli predict: checkpoint missing", "cli predict", predict_missing_ckpt, "none.pt"),
        Case("cli predict: checkpoint is garbage", "cli predict", predict_garbage_ckpt, "bad.pt"),
        Case("cli predict: glob matches nothing", "cli predict", predict_no_input, "*.svs"),
        Case("cli predict: --out is a file", "cli predict", predict_out_is_file, "out"),
        Case("cli predict: undecodable tile (position named)", "cli predict", predict_corrupt_tile, "y="),
        Case("cli train: invalid config", "cli train", train_bad_config, "lr"),
        Case("cli train: data folder missing", "cli train", train_missing_data, "nothing"),
        Case("cli train: labels of another shape", "cli train", train_labels_other_shape, "shape"),
        Case("cli convert: truncated TIFF", "cli convert", convert_truncated, "cut.tif"),
    ]


def _packages() -> list[Case]:
    """Model files from elsewhere (bioimage.io packages, ONNX / TorchScript); the damaged valid packages (wrong
    hash, pickled weights, foreign architecture ...) are in test_bad_packages.py."""
    def open_(path_fn: Callable[[Path], Path]) -> Callable[[Path], Any]:
        def f(d: Path) -> Any:
            from napari_medseg.sharing import open_model_file
            return open_model_file(path_fn(d))
        return f

    def bad_yaml(d: Path) -> Path:
        (d / "pkg").mkdir()
        (d / "pkg" / "rdf.yaml").write_text("type: model\ninputs: [unclosed")
        return d / "pkg"

    def not_a_model(d: Path) -> Path:
        (d / "pkg").mkdir()
        (d / "pkg" / "rdf.yaml").write_text("type: dataset\nname: some data\nformat_version: 0.3.0\n")
        return d / "pkg"

    def url_weights(d: Path) -> Path:
        (d / "pkg").mkdir()
        (d / "pkg" / "rdf.yaml").write_text("type: model\nformat_version: 0.5.4\nname: remote model\n"
                                           "weights:\n  onnx:\n    source: https://example.invalid/w.onnx\n")
        return d / "pkg"

    def zip_without_rdf(d: Path) -> Path:
        import zipfile
        with zipfile.ZipFile(d / "notes.zip", "w") as z:
            z.writestr("notes.txt", "not a model")
        return d / "notes.zip"

    def onnx_without_sidecar(d: Path) -> Path:
        (d / "m.onnx").write_bytes(b"\x08\x07not really onnx")
        return d / "m.onnx"

    def impossible_sidecar(d: Path) -> Path:
        (d / "m.onnx").write_bytes(b"\x08\x07not really onnx")
        (d / "m.json").write_text('{"spatial_dims": 7, "in_channels": 1}')
        return d / "m.onnx"

    return [
        Case("package: rdf.yaml not YAML", "open_model_file", open_(bad_yaml), "pkg"),
        Case("package: not a model", "open_model_file", open_(not_a_model), "pkg"),
        Case("package: weights by URL", "open_model_file", open_(url_weights), "downloads nothing"),
        Case("package: zip without rdf.yaml", "open_model_file", open_(zip_without_rdf), "notes.zip"),
        Case("onnx: no description", "open_model_file", open_(onnx_without_sidecar), "m.json"),
        Case("onnx: impossible sidecar", "open_model_file", open_(impossible_sidecar), "spatial_dims"),
    ]


def all_cases() -> list[Case]:
    return _readers() + _stores() + _configs() + _checkpoints() + _cli_cases() + _packages()


#: Cases that fail today because of a bug in a module this suite may not edit: name -> the reason
#: (the proposed fixes are in the report of issue 7 and in docs/safety.md).
KNOWN_BUGS: dict[str, str] = {
}
