"""Prediction in a child process: the same output and events as in-process, errors with their message,
cancel and early close that leave a resumable output and no child behind."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest
from helpers import drain

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.inference import open_prediction, run_predict
from napari_medseg.inference.process import predict_in_process
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint


def _labels(out) -> np.ndarray:
    return np.asarray([s for s in open_prediction(out) if s.kind == "labels"][0].levels[0])


@pytest.fixture
def rgb_checkpoint(tmp_path):
    cfg = ModelConfig(name="unet", spatial_dims=2, in_channels=3, out_channels=3, channels=(8, 16, 32))
    model = build_model(cfg)
    return save_checkpoint(tmp_path / "rgb.pt", Checkpoint(cfg, model.state_dict(), norm=NormConfig.uint8(3),
                                                           classes=ClassSchema(names=("background", "a", "b"))))


def test_child_process_writes_what_the_thread_writes(rgb_source, rgb_checkpoint, tmp_path):
    kw = dict(window=(64, 64), overlap=0.25, batch_size=4, tissue_mask=False)
    events, res = drain(predict_in_process(rgb_source, rgb_checkpoint, tmp_path / "child.zarr", **kw))
    run_predict(rgb_source, str(rgb_checkpoint), str(tmp_path / "thread.zarr"), **kw)
    names = [type(e).__name__ for e in events]
    assert names[0] == "PredictStart" and names[-1] == "PredictDone" and "BlockDone" in names
    assert res.blocks_done == res.blocks_total > 0 and not res.cancelled
    np.testing.assert_array_equal(_labels(tmp_path / "child.zarr"), _labels(tmp_path / "thread.zarr"))
    assert not mp.active_children(), "the child process must be gone when the generator ends"


def test_error_in_the_child_keeps_its_message(tmp_path):
    gray = ImageSource(levels=[np.zeros((96, 96), np.uint8)], axes="YX", pixel_size=(1.0, 1.0), name="gray")
    cfg = ModelConfig(name="unet", spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 16))
    ck = save_checkpoint(tmp_path / "rgb.pt", Checkpoint(cfg, build_model(cfg).state_dict(), norm=NormConfig.uint8(3)))
    with pytest.raises(MedsegError) as child:
        drain(predict_in_process(gray, ck, tmp_path / "a.zarr", window=(64, 64)))
    with pytest.raises(MedsegError) as thread:
        run_predict(gray, str(ck), str(tmp_path / "b.zarr"), window=(64, 64))
    assert str(child.value) == str(thread.value) and "channel" in str(child.value)
    assert not mp.active_children()


def test_cancel_and_early_close_leave_a_resumable_output(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)  # in memory: pickled
    src = ImageSource(levels=[img], axes="YX", pixel_size=(1.0, 1.0), name="gray")
    cfg = ModelConfig(name="unet", spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16))
    ck = save_checkpoint(tmp_path / "g.pt", Checkpoint(cfg, build_model(cfg).state_dict(), norm=NormConfig.uint8(1)))
    kw = dict(window=(32, 32), block=(64, 64), tissue_mask=False)
    cancel = threading.Event()
    gen = predict_in_process(src, ck, tmp_path / "o.zarr", cancel=cancel, **kw)
    for ev in gen:
        if type(ev).__name__ == "BlockDone":
            cancel.set()  # the child stops at its next block
    # closing early (the viewer closed mid-run): the child is told to stop and waited for
    gen2 = predict_in_process(src, ck, tmp_path / "o.zarr", **kw)
    first = next(gen2)
    assert type(first).__name__ == "PredictStart" and 0 < first.resumed_blocks < first.total_blocks
    gen2.close()
    assert not mp.active_children()
    _, res = drain(predict_in_process(src, ck, tmp_path / "o.zarr", **kw))
    assert res.blocks_done == res.blocks_total and res.blocks_resumed > 0
    run_predict(src, str(ck), str(tmp_path / "ref.zarr"), **kw)
    np.testing.assert_array_equal(_labels(tmp_path / "o.zarr"), _labels(tmp_path / "ref.zarr"))
