"""Many slides, and the blocks of each, spread over a ``dask.distributed`` cluster.

The driver (``predict_many``) resolves and hashes the model once, prepares every output (manifest, arrays,
tissue mask: nothing is refused once work is sent), then submits tasks of a few neighbouring blocks each.
Each worker process opens its own source (by path: tifffile's store holds a file lock and cannot be
pickled) and its own model (from the checkpoint path, or the module scattered once) without hashing it
again: it takes the driver's job identity and checks its own image and settings against it (the image's
fingerprint above all). It predicts its blocks into the shared output store (chunks are block-aligned, so
there is one writer per chunk) and journals them. A task whose worker is lost is
rescheduled by Dask; afterwards the driver compares the journal with the blocks due and resubmits any
missing ones, then builds the coarse pyramid levels and marks the output complete (the lifecycle of each
output is ``run.PredictionRun``, as in ``predict``).

Without a cluster (``workers=None`` and no ``scheduler``) the slides are predicted one after the other in
this process with ``predictor.predict``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.events import PredictEvent, PredictFailed, PredictStart, PredictWarning
from napari_medseg.inference.job import Job, make_job, open_source
from napari_medseg.inference.modelrun import LoadedModel, resolve_model
from napari_medseg.inference.output import OutputStore
from napari_medseg.inference.predictor import predict, refine_events, was_refined
from napari_medseg.inference.run import PredictionRun

log = logging.getLogger(__name__)
_JOBS: dict[tuple[str, str], Job] = {}  # per worker process: the job of each output, built once


@dataclass
class TaskSpec:
    """Everything a worker needs to rebuild a slide's job (picklable; no open file handles)."""

    out: str
    source_path: str | None
    source: ImageSource | None
    model: Any                     # checkpoint path or nn.Module (set on the worker from run_task's argument)
    settings: dict[str, Any]
    identity: dict[str, Any]       # the driver's job identity (its model hash: workers do not hash again)
    torch_threads: int = 1
    delay_s: float = 0.0           # testing: hold each task this long before it starts
    token: str = field(default_factory=lambda: f"{os.getpid()}-{time.time_ns()}")
    source_kind: str = "auto"      # how the worker opens source_path ("image": the user said so)
    model_stamp: str | None = None  # ``file_stamp`` of the checkpoint the driver hashed (None: a module)


def file_stamp(path: str | os.PathLike, window: int = 256 * 1024) -> str:
    """A cheap fingerprint of a file: its size and three windows of its bytes (start, middle, end).

    Workers check the checkpoint they load against the driver's stamp instead of hashing all of it again:
    a different file at the same path (another version of the model on one node) is refused."""
    import hashlib

    if os.path.isdir(path):  # an unpacked bioimage.io package: its rdf.yaml holds the sha256 of every file
        from napari_medseg.sharing.package_files import package_yaml_in_folder

        yaml_file = package_yaml_in_folder(Path(path))
        if yaml_file is None:
            raise MedsegError(f"{path} is a folder but not a bioimage.io package (no rdf.yaml)")
        path = yaml_file
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for start in (0, max(0, size // 2 - window // 2), max(0, size - window)):
            f.seek(start)
            h.update(f.read(window))
    return h.hexdigest()[:16]


def _worker_job(spec: TaskSpec) -> Job:
    """The slide's job on this worker, built once per run: the model as the driver resolved it (its hash
    taken from the driver's identity, not computed again), the image opened here and checked against the
    driver's (same fingerprint, shapes and settings)."""
    key = (spec.out, spec.token)
    job = _JOBS.get(key)
    if job is None:
        import torch

        torch.set_num_threads(max(1, spec.torch_threads))
        src = open_source(spec.source_path, kind=spec.source_kind) if spec.source_path else spec.source
        if spec.model_stamp is not None and isinstance(spec.model, (str, os.PathLike)) \
                and file_stamp(spec.model) != spec.model_stamp:
            raise MedsegError(f"the worker's checkpoint {spec.model} is not the file the driver read; "
                              "are all workers reading the same model file?")
        loaded = resolve_model(spec.model, hash_weights=False)
        loaded.model_hash = spec.identity["model"]
        job = make_job(src, loaded, **spec.settings)
        if job.identity != spec.identity:
            raise MedsegError(f"the worker sees a different image or model than the driver for {spec.out}; "
                              "are all workers reading the same files?")
        _JOBS.clear()
        _JOBS[key] = job
    return job


def run_task(spec: TaskSpec, keys: Sequence[str], model: Any = None) -> dict[str, Any]:
    """Predict the blocks ``keys`` of ``spec.out`` (skipping those already journaled) with ``model``
    (a checkpoint path or a module; Dask resolves a scattered one before the call)."""
    if spec.delay_s:
        time.sleep(spec.delay_s)
    if model is not None:
        spec.model = model
    job = _worker_job(spec)
    store = OutputStore.open(spec.out)
    done = store.done_blocks()
    todo = [job.blocks.from_key(k) for k in keys if k not in done]
    warnings: list[str] = []
    try:
        for item in job.run_blocks(store, todo):
            if isinstance(item, str):
                warnings.append(item)
    finally:
        store.close()
    return {"out": spec.out, "keys": list(keys), "computed": len(todo), "warnings": warnings,
            "pid": os.getpid()}


def _source_kind(src: ImageSource) -> str:
    """The ``kind`` to reopen ``src`` by path with: "image" where it was opened as an image on request."""
    return "image" if src.metadata.get("kind_evidence") == "user" and src.kind == "image" else "auto"


def _source_ref(src: ImageSource) -> tuple[str | None, ImageSource | None]:
    """Reopen by path on the workers when the path opens to the same image, else ship the (lazy) source."""
    if src.path:
        try:
            from napari_medseg.io.reader import sniff

            if sniff(src.path) is not None:
                again = open_source(src.path, kind=_source_kind(src))
                if again.shape == src.shape and again.axes == src.axes and len(again.levels) == len(src.levels):
                    return str(src.path), None
        except MedsegError:
            pass
    return None, src


def _input_text(src: ImageSource | str | Path) -> str:
    if isinstance(src, ImageSource):
        return str(src.path or src.name)
    return str(src)


def _failure_message(e: BaseException) -> str:
    return str(e) if isinstance(e, MedsegError) else f"{type(e).__name__}: {e}"


def _chunks(keys: list[str], n: int) -> list[list[str]]:
    return [keys[i:i + n] for i in range(0, len(keys), n)]


def make_client(workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1,
                processes: bool = True) -> Any:
    """A ``distributed.Client``: to ``scheduler`` if given, else a local cluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except OSError as e:
            raise MedsegError(f"could not reach the Dask scheduler at {scheduler} ({e}); check the address") from e
    import dask

    # no statistical profiler in the workers: it samples every thread's stack 100 times a second (CPU the
    # prediction wants) by walking other threads' frames, which crashed a process here (a segmentation fault in
    # Worker.trigger_profile beside torch's threads, CPython's sys._current_frames caveat)
    with kept_environ(), dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ(),
                                          "distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(n_workers=max(1, int(workers or 1)), threads_per_worker=threads_per_worker,
                               processes=processes, dashboard_address=None)
    return Client(cluster)


def worker_environ() -> dict[str, Any]:
    """What a local cluster's nanny sets in its workers' environment: Dask's defaults (one OpenMP / MKL /
    OpenBLAS thread) without ``MALLOC_TRIM_THRESHOLD_``. Dask sets it to 64 KiB, which also fixes glibc's mmap
    threshold, so every large tensor is mapped and unmapped afresh: the model ran 1.6x slower in a worker
    (74 against 46 ms per batch of 4 x 512^2, benchmarks/bench_dask_scaling.py). The predictor returns memory
    itself (``core.heap.trim`` after each written block)."""
    import dask
    import distributed  # noqa: F401  (its import registers the defaults read here; without it the result is {})

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


@contextlib.contextmanager
def kept_environ() -> Iterator[None]:
    """Undo, in this process, the variables a Dask nanny sets in ``os.environ`` to pass them to its worker
    (``distributed.nanny.pre-spawn-environ``: OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ... and PYTHONHASHSEED).
    Left there, they would reach every later child of the viewer, e.g. a prediction process pinned to one
    thread. A worker the nanny restarts later sets them again (distributed's behaviour)."""
    import dask
    import distributed  # noqa: F401  (its import registers its config defaults, pre-spawn-environ among them)

    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}) | {"PYTHONHASHSEED"}
    before = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def predict_many(inputs: Sequence[ImageSource | str | Path], model: Any, outs: Sequence[str | Path], *,
                 client: Any = None, workers: int | None = None, scheduler: str | None = None,
                 blocks_per_task: int = 4, torch_threads: int = 1, cancel: Any = None,
                 resume: bool = True, overwrite: bool = False, max_rounds: int = 3, delay_s: float = 0.0,
                 keep_going: bool = False, **settings: Any) -> Generator[PredictEvent, None, list[Path]]:
    """Predict each of ``inputs`` into the matching ``outs``; events carry the slide's ``name``.

    ``model`` is a checkpoint path, an ``nn.Module`` or a ``LoadedModel`` (resolved once by the caller, e.g.
    the CLI); ``settings`` are ``predict``'s keyword arguments (window, overlap, level, tissue_mask,
    write_probs...). Without ``client``/``workers``/``scheduler``
    the slides run here one by one. Returns the output paths (of the inputs that did not fail).

    An input that cannot be predicted (unreadable, refused by the model, a damaged tile with
    ``on_corrupt="stop"``...) raises, ending the run, unless ``keep_going``: then it yields ``PredictFailed``
    and the other inputs go on.
    """
    if len(inputs) != len(outs):
        raise MedsegError("need one output path per input")
    backend = settings.pop("backend", "torch")
    crf = settings.pop("crf", None)  # refined here, after the blocks (the driver reads and writes the labels)
    if crf not in (None, False) and settings.get("write_probs") is None:
        settings["write_probs"] = "float16"
    if backend != "torch" and inputs:  # convert once (INT8: calibrated on the first input); workers open the file
        from napari_medseg.inference.backends import backend_model

        window = settings.get("window")
        model = backend_model(model, backend, source=open_source(inputs[0]), level=int(settings.get("level", 0)),
                              window=None if window is None else tuple(window) if not isinstance(window, int)
                              else (window,) * 3)
    if client is None and workers is None and scheduler is None:
        if isinstance(model, (str, Path)):  # read and hashed once for all the inputs, not once per input
            model = resolve_model(model)
        done_outs = []
        for src, out in zip(inputs, outs):
            if not keep_going:
                yield from predict(src, model, out, cancel=cancel, resume=resume, overwrite=overwrite, crf=crf,
                                   **settings)
                done_outs.append(Path(out))
                continue
            name = ""
            try:
                for ev in predict(src, model, out, cancel=cancel, resume=resume, overwrite=overwrite, crf=crf,
                                  **settings):
                    name = ev.name if isinstance(ev, PredictStart) else name
                    yield ev
                done_outs.append(Path(out))
            except Exception as e:  # noqa: BLE001 - keep_going: any failure of one input is reported, the rest go on
                log.debug("prediction of %s failed", _input_text(src), exc_info=True)
                yield PredictFailed(source=_input_text(src), out=Path(out), message=_failure_message(e), name=name)
        return done_outs
    own_client = client is None
    # the model is read and hashed once, here; the workers get its checkpoint path (each loads it) or the
    # module (scattered once), and the driver's identity of every job, hash included
    loaded = model if isinstance(model, LoadedModel) else resolve_model(model)
    worker_model = loaded.checkpoint or loaded.module
    stamp = file_stamp(loaded.checkpoint) if loaded.checkpoint else None
    runs: list[PredictionRun] = []
    specs: list[TaskSpec] = []
    sources: list[str] = []
    client_made = None
    try:
        # prepare every slide before sending work: bad input is refused here (or, with keep_going, reported
        # and left out), with nothing written elsewhere
        for src_in, out in zip(inputs, outs):
            try:
                job = make_job(src_in, loaded, **settings)
                run = PredictionRun(job, out, resume=resume, overwrite=overwrite)
            except Exception as e:
                if not keep_going:
                    raise
                log.debug("preparing %s failed", _input_text(src_in), exc_info=True)
                yield PredictFailed(source=_input_text(src_in), out=Path(out), message=_failure_message(e))
                continue
            path, obj = _source_ref(job.source)
            # the workers take the driver's mask and zoom ("auto" measured once, here), not their own
            wsettings = dict(settings, tissue_mask=job.tissue if job.tissue is not None else False,
                             zoom=job.stats.get("zoom", 1.0))
            runs.append(run)
            specs.append(TaskSpec(out=str(run.out), source_path=path, source=obj, model=None, settings=wsettings,
                                  identity=job.identity, torch_threads=torch_threads, delay_s=delay_s,
                                  source_kind=_source_kind(job.source), model_stamp=stamp))
            sources.append(_input_text(src_in))
            yield from run.start()
        if not runs:
            return []
        from distributed import as_completed

        client = client_made = client or make_client(workers, scheduler, threads_per_worker=1)
        model_ref = worker_model if isinstance(worker_model, str) else client.scatter(worker_model, broadcast=True)
        t0 = time.perf_counter()
        for run in runs:  # rates count from here, not from the cluster's start
            run.t0 = t0
        failed: set[int] = set()
        for rnd in range(max_rounds):
            futures = {}
            for i, (run, spec) in enumerate(zip(runs, specs)):
                if i in failed:
                    continue
                done = run.store.done_blocks()
                missing = [k for k in run.keys if k not in done]
                for part in _chunks(missing, max(1, blocks_per_task)):
                    futures[client.submit(run_task, spec, part, model_ref, pure=False)] = i
            if not futures:
                break
            if rnd:
                yield PredictWarning(f"{len(futures)} task(s) were redone (a worker was lost or a block is missing)")
            for fut in as_completed(list(futures)):
                i = futures[fut]
                run = runs[i]
                if cancel is not None and cancel.is_set():
                    client.cancel(list(futures))
                    break
                if i in failed:
                    continue
                try:
                    res = fut.result()
                except MedsegError as e:
                    if not keep_going:
                        client.cancel(list(futures))
                        raise
                    failed.add(i)
                    client.cancel([f for f, j in futures.items() if j == i])
                    run.abort()  # interrupted: a rerun resumes it
                    yield PredictFailed(source=sources[i], out=run.out, message=str(e), name=run.name)
                    continue
                except Exception as e:  # a lost worker ends up here when Dask gives up; redone next round
                    log.warning("task for %s failed: %s", run.name, e)
                    yield PredictWarning(f"{run.name}: a task failed ({type(e).__name__}: {e}); its blocks will "
                                         "be redone", name=run.name)
                    continue
                for w in res["warnings"]:
                    yield run.warning(w)
                for k in res["keys"]:
                    yield run.block_done(run.job.blocks.box(run.job.blocks.from_key(k)))
            if cancel is not None and cancel.is_set():
                break
        outs_done = []
        for i, run in enumerate(runs):
            if i not in failed:
                done = run.finish(cancelled=cancel is not None and cancel.is_set())
                if not done.cancelled and (crf not in (None, False) or was_refined(run.out)):
                    finished = yield from refine_events(run.out, run.job.source, crf or None, done.name, cancel)
                    done = dataclasses.replace(done, cancelled=not finished)
                yield done
                outs_done.append(run.out)
        return outs_done
    finally:
        for run in runs:  # after an error: every unfinished output stays resumable
            run.abort()
        if own_client and client_made is not None:
            cluster = getattr(client_made, "cluster", None)
            client_made.close()
            if cluster is not None:
                cluster.close()
