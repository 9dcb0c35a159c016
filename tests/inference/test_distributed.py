"""Dask: slides and blocks spread over workers; a lost worker's blocks are redone; same bytes as local."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import drain
from infer_helpers import small_unet, store_bytes, textured_rgb, zarr_source

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.inference import (
    BlockDone,
    PredictDone,
    PredictFailed,
    PredictStart,
    PredictWarning,
    run_predict,
)
from napari_medseg.inference.distributed import kept_environ, predict_many
from napari_medseg.inference.output import read_manifest

KW = dict(window=(64, 64), overlap=0.25, tissue_mask=False, device="cpu", block=(64, 64), write_probs="uint8")


def _sources(tmp_path):
    return [zarr_source(tmp_path / f"s{i}.zarr", [textured_rgb(h, w, seed=i)], "YXC", chunks=(64, 64, 3),
                        name=f"s{i}") for i, (h, w) in enumerate([(200, 260), (130, 190)])]


def test_in_process_cluster_matches_local(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    from napari_medseg.inference import modelrun

    srcs = _sources(tmp_path)
    model = small_unet()
    refs = []
    for i, s in enumerate(srcs):
        run_predict(s, model, tmp_path / f"ref{i}.zarr", **KW)
        refs.append(store_bytes(tmp_path / f"ref{i}.zarr"))
    outs = [tmp_path / f"o{i}.zarr" for i in range(len(srcs))]
    hashes = []
    real_hash = modelrun.state_hash
    monkeypatch.setattr(modelrun, "state_hash", lambda m: hashes.append(1) or real_hash(m))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        events, paths = drain(predict_many(srcs, model, outs, client=client, blocks_per_task=3, **KW))
    assert [type(e) for e in events if isinstance(e, PredictStart)] == [PredictStart] * 2
    dones = [e for e in events if isinstance(e, PredictDone)]
    assert len(dones) == 2 and not any(d.cancelled for d in dones)
    assert {e.name for e in events if isinstance(e, BlockDone)} == {"s0", "s1"}
    for o, ref in zip(outs, refs):
        assert store_bytes(o) == ref
    assert len(hashes) == 1  # once by the driver, for both slides; the workers take its hash


def test_a_worker_takes_the_drivers_model_hash_and_checks_the_image(tmp_path, monkeypatch):
    """``run_task`` (a Dask task, called here directly) rebuilds the job without hashing the model again,
    and refuses when its image differs from the driver's (the fingerprint in the driver's identity)."""
    from napari_medseg.core.errors import MedsegError
    from napari_medseg.inference import modelrun
    from napari_medseg.inference.distributed import TaskSpec, run_task
    from napari_medseg.inference.job import make_job
    from napari_medseg.inference.run import PredictionRun

    src = _sources(tmp_path)[0]
    model = small_unet()
    job = make_job(src, model, **KW)
    run = PredictionRun(job, tmp_path / "o.zarr")
    monkeypatch.setattr(modelrun, "state_hash", lambda m: pytest.fail("a worker hashed the model"))
    spec = TaskSpec(out=str(run.out), source_path=None, source=src, model=None, settings=dict(KW),
                    identity=job.identity)
    res = run_task(spec, run.keys[:1], model)
    assert res["computed"] == 1 and run.keys[0] in run.store.done_blocks()
    other = dict(job.identity, source=dict(job.identity["source"], fingerprint="0" * 40))
    spec = TaskSpec(out=str(run.out), source_path=None, source=src, model=None, settings=dict(KW), identity=other)
    with pytest.raises(MedsegError, match="different image"):
        run_task(spec, run.keys[1:2], model)
    run.abort()
    assert read_manifest(run.out)["status"] == "interrupted"


def test_a_worker_refuses_a_different_checkpoint_at_the_drivers_path(tmp_path):
    """Workers do not hash the model again, but a different checkpoint file at the path the driver read (another
    version of the model on one node) is still refused, through the file's stamp."""
    from napari_medseg.core.errors import MedsegError
    from napari_medseg.inference.distributed import TaskSpec, file_stamp, run_task
    from napari_medseg.inference.job import make_job
    from napari_medseg.inference.run import PredictionRun

    src = _sources(tmp_path)[0]
    ckpt = tmp_path / "m.pt"
    model = small_unet()
    job = make_job(src, model, **KW)
    run = PredictionRun(job, tmp_path / "o.zarr")
    ckpt.write_bytes(b"x" * 1000)
    stamp = file_stamp(ckpt)
    assert file_stamp(ckpt) == stamp
    ckpt.write_bytes(b"x" * 999 + b"y")  # same size, other bytes
    spec = TaskSpec(out=str(run.out), source_path=None, source=src, model=None, settings=dict(KW),
                    identity=job.identity, model_stamp=stamp)
    with pytest.raises(MedsegError, match="not the file the driver read"):
        run_task(spec, run.keys[:1], str(ckpt))
    run.abort()


@pytest.mark.parametrize("cluster", [False, True])
def test_keep_going_reports_a_bad_input_and_predicts_the_rest(tmp_path, cluster):
    from distributed import Client, LocalCluster

    """keep_going: an input refused before the run (unreadable) and one failing during it (a tile that does
    not decode, on_corrupt="stop") are reported as PredictFailed; the good one is predicted."""
    import numcodecs

    good = _sources(tmp_path)[1]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    corrupt = zarr_source(tmp_path / "c.zarr", [textured_rgb(200, 200)], "YXC", chunks=(64, 64, 3), name="corrupt",
                          compressor=numcodecs.Blosc(cname="zstd"))
    chunk = tmp_path / "c.zarr" / "0" / "1.2.0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    model = small_unet()
    outs = [tmp_path / f"{n}.prediction.zarr" for n in ("bad", "corrupt", "good")]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        kw = dict(KW, client=client) if cluster else KW
        with pytest.raises(UnreadableInputError, match="not a readable NIfTI"):
            drain(predict_many([bad, corrupt, good], model, outs, **kw))
        events, paths = drain(predict_many([bad, corrupt, good], model, outs, keep_going=True, **kw))
    failed = {e.name or e.source: e for e in events if isinstance(e, PredictFailed)}
    assert sorted(failed) == [str(bad), "corrupt"]
    assert failed[str(bad)].source == str(bad) and "not a readable NIfTI" in failed[str(bad)].message
    assert "could not be decoded" in failed["corrupt"].message and failed["corrupt"].out == outs[1]
    dones = [e for e in events if isinstance(e, PredictDone)]
    assert [d.name for d in dones] == ["s1"] and not dones[0].cancelled
    assert [str(p) for p in paths] == [str(outs[2])] and not outs[0].exists()
    assert read_manifest(outs[1])["status"] == "interrupted"  # a rerun resumes it


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


def test_the_nanny_environment_is_undone_in_a_process_that_never_imported_distributed():
    """``distributed``'s config (the list of variables a nanny sets) exists only once it is imported: a fresh
    process that calls ``kept_environ`` first must still undo them (it failed so in a random test order)."""
    import subprocess
    import sys

    code = ("import os, sys; from napari_medseg.inference.distributed import kept_environ\n"
            "assert 'distributed' not in sys.modules, 'the test needs a process without distributed'\n"
            "os.environ.pop('OMP_NUM_THREADS', None)\n"
            "with kept_environ():\n    os.environ['OMP_NUM_THREADS'] = '1'\n"
            "print('OMP_NUM_THREADS' in os.environ)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_local_workers_keep_glibcs_own_mmap_threshold(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which fixes glibc's mmap threshold: every
    large tensor is then mapped afresh and the model runs ~1.6x slower. The plugin's local clusters leave it
    out and keep Dask's one-thread defaults."""
    from napari_medseg.inference.distributed import make_client, worker_environ

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert "MALLOC_TRIM_THRESHOLD_" not in worker_environ() and worker_environ().get("OMP_NUM_THREADS") in (1, "1")
    client = make_client(workers=1)
    try:
        env = client.submit(lambda: dict(os.environ), pure=False).result(timeout=60)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env.get("OMP_NUM_THREADS") == "1"
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor left in this process


def test_local_workers_run_without_the_stack_profiler():
    """make_client's workers do not sample every thread's stack (CPU, and a segmentation fault once), whatever the
    Dask configuration around it says."""
    import dask

    from napari_medseg.inference.distributed import make_client

    with dask.config.set({"distributed.worker.profile.enabled": True}):
        client = make_client(workers=1, processes=False)
    try:
        (worker,) = client.cluster.workers.values()
        assert "profile" not in worker.periodic_callbacks and "profile-cycle" not in worker.periodic_callbacks
    finally:
        client.close()
        client.cluster.close()
