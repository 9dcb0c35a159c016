"""Bad input: a clear MedsegError before anything is written, and nothing lost."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from infer_helpers import small_unet, store_bytes, textured_rgb, zarr_source

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import PredictWarning, predict, run_predict
from napari_medseg.inference.blocks import CorruptTileError
from napari_medseg.inference.output import DiskFullError, OutputStore, read_manifest
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint

KW = dict(window=(64, 64), tissue_mask=False, device="cpu", block=(64, 64))


def test_channel_mismatch(tmp_path, rgb_source):
    grey_model = small_unet(in_channels=1)
    with pytest.raises(MedsegError, match="1 input channel.*image has 3"):
        run_predict(rgb_source, grey_model, tmp_path / "o.zarr", **KW)
    assert not (tmp_path / "o.zarr").exists()


def test_window_the_model_cannot_take_checkpoint(tmp_path, rgb_source):
    cfg = ModelConfig(in_channels=3, out_channels=2, channels=(4, 8, 16), num_res_units=0)
    ckpt = save_checkpoint(tmp_path / "m.pt", Checkpoint(cfg, build_model(cfg).state_dict(),
                                                          norm=NormConfig.uint8(3)))
    with pytest.raises(MedsegError, match="multiples of 4"):
        run_predict(rgb_source, ckpt, tmp_path / "o.zarr", window=(66, 66), tissue_mask=False, device="cpu")
    assert not (tmp_path / "o.zarr").exists()


def test_window_a_swin_model_cannot_take(tmp_path, rgb_source):
    """A bare nn.Module (no config): one trial pass tells, the error names the window."""
    from monai.networks.nets import SwinUNETR

    swin = SwinUNETR(in_channels=3, out_channels=2, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1),
                     num_heads=(1, 1, 1, 1))
    with pytest.raises(MedsegError, match=r"cannot take a window of \(48, 48\)"):
        run_predict(rgb_source, swin, tmp_path / "o.zarr", window=(48, 48), tissue_mask=False, device="cpu")
    assert not (tmp_path / "o.zarr").exists()


def test_model_dims_and_classes(tmp_path, rgb_source, unet2d):
    from napari_medseg.core.classes import ClassSchema

    with pytest.raises(MedsegError, match="3 channels .* names 2"):
        run_predict(rgb_source, unet2d, tmp_path / "o.zarr", classes=ClassSchema(), **KW)
    with pytest.raises(MedsegError, match="3D model cannot predict a 2D image"):
        run_predict(rgb_source, small_unet(3, 2, dims=3), tmp_path / "o.zarr", window=(16, 16, 16),
                    tissue_mask=False, device="cpu")
    with pytest.raises(MedsegError, match="level 5 does not exist"):
        run_predict(rgb_source, unet2d, tmp_path / "o.zarr", level=5, **KW)
    with pytest.raises(MedsegError, match="write_probs"):
        run_predict(rgb_source, unet2d, tmp_path / "o.zarr", write_probs="int8", **KW)
    img16 = np.zeros((64, 64), np.uint16)
    src16 = zarr_source(tmp_path / "u16.zarr", [img16], "YX")
    with pytest.raises(MedsegError, match="not uint8: pass the model's normalisation"):
        run_predict(src16, small_unet(1, 2), tmp_path / "o.zarr", **KW)
    assert not (tmp_path / "o.zarr").exists()


def test_output_of_a_different_run_is_refused(tmp_path, rgb_source, unet2d):
    out = tmp_path / "o.zarr"
    run_predict(rgb_source, unet2d, out, **KW)
    before = store_bytes(out)
    with pytest.raises(MedsegError, match=r"different prediction run \(differs in: settings.overlap"):
        run_predict(rgb_source, unet2d, out, overlap=0.5, **KW)
    other = small_unet(seed=1)
    with pytest.raises(MedsegError, match="differs in: model"):
        run_predict(rgb_source, other, out, **KW)
    assert store_bytes(out) == before
    with pytest.raises(MedsegError, match="already holds this prediction"):
        run_predict(rgb_source, unet2d, out, resume=False, **KW)
    res = run_predict(rgb_source, unet2d, out, overlap=0.5, overwrite=True, **KW)
    assert res.blocks_done == res.blocks_total and read_manifest(out)["job"]["settings"]["overlap"] == 0.5


def test_foreign_folder_is_never_overwritten(tmp_path, rgb_source, unet2d):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    for kw in ({}, {"overwrite": True}):
        with pytest.raises(MedsegError, match="not a napari-medseg prediction; refusing"):
            run_predict(rgb_source, unet2d, out, **KW, **kw)
    assert (out / "thesis.docx").read_text() == "years of work"
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(MedsegError, match="is a file"):
        run_predict(rgb_source, unet2d, tmp_path / "file.zarr", **KW)


def test_full_disk_keeps_a_consistent_resumable_store(tmp_path, rgb_source, unet2d, monkeypatch):
    ref = tmp_path / "ref.zarr"
    run_predict(rgb_source, unet2d, ref, write_probs="uint8", **KW)
    out = tmp_path / "o.zarr"
    calls = {"n": 0}
    real = OutputStore._write_array

    def full_after_some(self, arr, sl, data):
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, arr, sl, data)

    monkeypatch.setattr(OutputStore, "_write_array", full_after_some)
    with pytest.raises(DiskFullError, match="disk holding .* is full; .* finished blocks are kept"):
        run_predict(rgb_source, unet2d, out, write_probs="uint8", **KW)
    journal = list((out / "medseg" / "journal").iterdir())
    assert 0 < len(journal) < 30
    monkeypatch.setattr(OutputStore, "_write_array", real)
    res = run_predict(rgb_source, unet2d, out, write_probs="uint8", **KW)  # space freed: resumes
    assert res.blocks_resumed == len(journal)
    assert store_bytes(out) == store_bytes(ref)


def _corrupt_source(tmp_path):
    import numcodecs

    img = textured_rgb(200, 200)
    src = zarr_source(tmp_path / "c.zarr", [img], "YXC", chunks=(64, 64, 3),
                      compressor=numcodecs.Blosc(cname="zstd"))
    chunk = tmp_path / "c.zarr" / "0" / "1.2.0"
    chunk.write_bytes(chunk.read_bytes()[:20])  # truncated: does not decode
    return src


def test_corrupt_chunk_stops_with_its_position(tmp_path, unet2d):
    src = _corrupt_source(tmp_path)
    with pytest.raises(CorruptTileError, match=r"tile at level 0, y=64:128, x=128:192 could not be decoded"):
        run_predict(src, unet2d, tmp_path / "o.zarr", **KW)
    assert read_manifest(tmp_path / "o.zarr")["status"] == "interrupted"


def test_corrupt_chunk_skipped_on_request(tmp_path, unet2d):
    src = _corrupt_source(tmp_path)
    events = []
    res = run_predict(src, unet2d, tmp_path / "o.zarr", on_corrupt="skip", write_probs="float32",
                      on_event=events.append, **KW)
    warns = [e.message for e in events if isinstance(e, PredictWarning)]
    assert warns and all("y=64:128, x=128:192" in w for w in warns)
    assert res.blocks_done == res.blocks_total and res.stats["windows_bad"] > 0
    import zarr

    probs = np.asarray(zarr.open_array(str(tmp_path / "o.zarr" / "probs" / "0"), mode="r"))
    assert probs[:, 64:128, 128:192].max() == 0  # nothing predicted over the unreadable tile
    assert probs[:, :40, :40].sum(0).min() > 0.99  # the rest is


def test_bad_overlap_and_batch(tmp_path, rgb_source, unet2d):
    for kw, msg in (({"overlap": 1.0}, "overlap"), ({"batch_size": 0}, "batch size"), ({"blend": "max"}, "blending"),
                    ({"on_corrupt": "ignore"}, "on_corrupt"), ({"device": "cuda:7"}, "cuda")):
        if kw.get("device") and torch.cuda.is_available():
            continue
        args = dict(KW, **kw)
        with pytest.raises(MedsegError, match=msg):
            next(predict(rgb_source, unet2d, tmp_path / "o.zarr", **args))
    assert not (tmp_path / "o.zarr").exists()
