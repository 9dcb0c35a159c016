"""Model streams (``predict(streams=N)``, ``napari-medseg predict --streams``): batches run through the model in
N threads at once, blended in order, so the output is the same bytes as one stream at the same thread count."""

from __future__ import annotations

import threading

import pytest
import torch
from infer_helpers import store_bytes

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import BlockDone, predict, run_predict
from napari_medseg.inference.job import resolve_streams

KW = dict(window=(64, 64), overlap=0.25, batch_size=2, tissue_mask=False, device="cpu", block=(64, 64),
          write_probs="uint8")


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_streams_write_the_bytes_of_one_stream(tmp_path, rgb_source, unet2d, one_thread):
    run_predict(rgb_source, unet2d, tmp_path / "one.zarr", streams=1, **KW)
    res = run_predict(rgb_source, unet2d, tmp_path / "three.zarr", streams=3, **KW)
    assert res.blocks_done == res.blocks_total
    assert store_bytes(tmp_path / "three.zarr") == store_bytes(tmp_path / "one.zarr")
    assert torch.get_num_threads() == 1


def test_streams_set_one_torch_thread_during_the_run_and_restore_it(tmp_path, rgb_source, unet2d):
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        for ev in predict(rgb_source, unet2d, tmp_path / "o.zarr", streams="auto", **KW):
            if isinstance(ev, BlockDone):
                seen.append(torch.get_num_threads())
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_a_cancelled_streamed_run_resumes_identical(tmp_path, rgb_source, unet2d, one_thread):
    run_predict(rgb_source, unet2d, tmp_path / "ref.zarr", streams=2, **KW)
    out, cancel, n = tmp_path / "o.zarr", threading.Event(), 0
    for ev in predict(rgb_source, unet2d, out, cancel=cancel, streams=2, **KW):
        if isinstance(ev, BlockDone):
            n += 1
            if n == 2:
                cancel.set()
    res = run_predict(rgb_source, unet2d, out, streams=2, **KW)
    assert res.blocks_resumed >= 2 and res.blocks_done == res.blocks_total
    assert store_bytes(out) == store_bytes(tmp_path / "ref.zarr")


def test_stream_counts():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_streams(3, cpu) == 3 and resolve_streams(3, cuda) == 1
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert resolve_streams("auto", cpu) == 2
        from napari_medseg.sharing.package_model import OnnxModule

        onnx = OnnxModule.__new__(OnnxModule)  # an ONNX model: its own thread pool, one stream
        torch.nn.Module.__init__(onnx)
        assert resolve_streams("auto", cpu, torch.nn.Sequential(onnx)) == 1
        assert resolve_streams(2, cpu, onnx) == 2  # asked for: as asked
    finally:
        torch.set_num_threads(old)
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(MedsegError, match="streams"):
            resolve_streams(bad, cpu)


def test_the_cli_refuses_a_bad_stream_count(capsys):
    from napari_medseg.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "img.tif", "--out", "o.zarr", "--streams", "0"])
    assert "--streams takes 'auto' or an integer >= 1" in capsys.readouterr().err
