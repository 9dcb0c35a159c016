"""Dask: slides and blocks spread over workers; a lost worker's blocks are redone; same bytes as local."""

from __future__ import annotations

import os
import signal
import time

import pytest
from infer_helpers import drain, small_unet, store_bytes, textured_rgb, zarr_source

from napari_medseg.inference import BlockDone, PredictDone, PredictStart, PredictWarning, run_predict
from napari_medseg.inference.distributed import kept_environ, predict_many

KW = dict(window=(64, 64), overlap=0.25, tissue_mask=False, device="cpu", block=(64, 64), write_probs="uint8")


def _sources(tmp_path):
    return [zarr_source(tmp_path / f"s{i}.zarr", [textured_rgb(h, w, seed=i)], "YXC", chunks=(64, 64, 3),
                        name=f"s{i}") for i, (h, w) in enumerate([(200, 260), (130, 190)])]


def test_in_process_cluster_matches_local(tmp_path):
    from distributed import Client, LocalCluster

    srcs = _sources(tmp_path)
    model = small_unet()
    refs = []
    for i, s in enumerate(srcs):
        run_predict(s, model, tmp_path / f"ref{i}.zarr", **KW)
        refs.append(store_bytes(tmp_path / f"ref{i}.zarr"))
    outs = [tmp_path / f"o{i}.zarr" for i in range(len(srcs))]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        events, paths = drain(predict_many(srcs, model, outs, client=client, blocks_per_task=3, **KW))
    assert [type(e) for e in events if isinstance(e, PredictStart)] == [PredictStart] * 2
    dones = [e for e in events if isinstance(e, PredictDone)]
    assert len(dones) == 2 and not any(d.cancelled for d in dones)
    assert {e.name for e in events if isinstance(e, BlockDone)} == {"s0", "s1"}
    for o, ref in zip(outs, refs):
        assert store_bytes(o) == ref


@pytest.mark.slow
def test_lost_worker_blocks_are_redone(tmp_path):
    from distributed import Client, LocalCluster

    src = _sources(tmp_path)[0]
    model = small_unet()
    run_predict(src, model, tmp_path / "ref.zarr", **KW)
    out = tmp_path / "o.zarr"
    # the nannies set OMP_NUM_THREADS etc. in this process (and again when the killed worker restarts)
    with kept_environ(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, Client(cluster) as client:
        gen = predict_many([src], model, [out], client=client, blocks_per_task=2, delay_s=1.0, **KW)
        events = []
        killed = None
        for ev in gen:
            events.append(ev)
            if isinstance(ev, BlockDone) and killed is None:
                processing = {w: t for w, t in client.processing().items() if t}
                if processing:
                    victim = next(iter(processing))
                    pid = client.run(os.getpid, workers=[victim])[victim]
                    os.kill(pid, signal.SIGKILL)
                    killed = victim
                    time.sleep(0.2)
    assert killed is not None
    done = [e for e in events if isinstance(e, PredictDone)]
    assert done and not done[0].cancelled
    assert store_bytes(out) == store_bytes(tmp_path / "ref.zarr")
    _ = [e for e in events if isinstance(e, PredictWarning)]


def test_the_environment_a_dask_nanny_sets_is_undone(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    with kept_environ():
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # what Nanny.start does to os.environ
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "3"
