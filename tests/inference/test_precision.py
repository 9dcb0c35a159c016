"""``predict(precision=...)`` / ``napari-medseg predict --precision``: bfloat16 autocast on the CPU is opt-in,
changes the probabilities by bfloat16 rounding only, is its own job (a float32 output is not resumed with it),
says so on a CPU without native bfloat16, and refuses bad values and other backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infer_helpers import read_probs

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import PredictWarning, predict, run_predict
from napari_medseg.inference.job import make_job
from napari_medseg.inference.modelrun import WindowRunner
from napari_medseg.models import devices

KW = dict(window=(64, 64), overlap=0.25, batch_size=2, tissue_mask=False, device="cpu", block=(64, 64),
          write_probs="float16")


def test_the_runner_computes_in_bfloat16_only_when_asked(unet2d):
    x = torch.rand(2, 3, 64, 64)
    seen = []
    hook = unet2d.register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_cpu_enabled()))
    try:
        fp32 = WindowRunner(unet2d, torch.device("cpu"), batch_size=2)(x)
        bf16 = WindowRunner(unet2d, torch.device("cpu"), batch_size=2, cpu_bf16=True)(x)
    finally:
        hook.remove()
    assert seen == [False, True] and bf16.dtype == torch.float32
    diff = (bf16 - fp32).abs().max().item()
    assert 0 < diff < 0.1  # bfloat16 rounding: different, but close


def test_bf16_is_its_own_job_and_close_to_float32(tmp_path, rgb_source, unet2d, monkeypatch):
    from napari_medseg.inference import run as run_module

    monkeypatch.setattr(run_module, "cpu_bf16_native", lambda: True)  # the same run on any CI machine
    a = run_predict(rgb_source, unet2d, tmp_path / "a.zarr", **KW)
    b = run_predict(rgb_source, unet2d, tmp_path / "b.zarr", precision="bf16", **KW)
    assert a.blocks_done == b.blocks_done == a.blocks_total
    pa, pb = read_probs(tmp_path / "a.zarr", 0).astype(np.float32), read_probs(tmp_path / "b.zarr", 0).astype(np.float32)
    assert not np.array_equal(pa, pb) and np.abs(pa - pb).max() < 0.1
    ja = make_job(rgb_source, unet2d, **{k: v for k, v in KW.items()})
    jb = make_job(rgb_source, unet2d, precision="bf16", **{k: v for k, v in KW.items()})
    assert "precision" not in ja.identity["settings"] and jb.identity["settings"]["precision"] == "bf16"
    assert jb.cpu_bf16 and not ja.cpu_bf16
    with pytest.raises(MedsegError):  # the float32 output is another job: not resumed in bfloat16
        run_predict(rgb_source, unet2d, tmp_path / "a.zarr", precision="bf16", **KW)


def test_a_cpu_without_native_bfloat16_is_warned(tmp_path, rgb_source, unet2d, monkeypatch):
    from napari_medseg.inference import run as run_module

    monkeypatch.setattr(run_module, "cpu_bf16_native", lambda: False)
    events = list(predict(rgb_source, unet2d, tmp_path / "w.zarr", precision="bf16", **KW))
    warns = [e.message for e in events if isinstance(e, PredictWarning)]
    assert any("no native bfloat16" in m for m in warns)


def test_bad_precisions_are_refused(rgb_source, unet2d):
    with pytest.raises(MedsegError, match="precision must be one of auto, fp32, bf16"):
        make_job(rgb_source, unet2d, precision="fp8", **KW)
    with pytest.raises(MedsegError, match="PyTorch path"):
        make_job(rgb_source, unet2d, precision="bf16", backend="onnxruntime", **KW)


def test_the_native_check_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real = builtins.open

    def fake(flags):
        def _open(path, *a, **k):
            if path == "/proc/cpuinfo":
                p = tmp_path / "cpuinfo"
                p.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
                return real(p, *a, **k)
            return real(path, *a, **k)
        return _open

    try:  # the answer is read once per process (cached): cleared around each fake CPU
        devices.cpu_bf16_native.cache_clear()
        monkeypatch.setattr(builtins, "open", fake("fpu avx2 avx512f amx_bf16 amx_tile"))
        assert devices.cpu_bf16_native()
        devices.cpu_bf16_native.cache_clear()
        monkeypatch.setattr(builtins, "open", fake("fpu avx2 avx512f avx512bw"))
        assert not devices.cpu_bf16_native()
    finally:
        devices.cpu_bf16_native.cache_clear()  # the real CPU's answer for the tests after this one
