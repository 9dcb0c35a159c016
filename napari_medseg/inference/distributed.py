"""Many slides, and the blocks of each, spread over a ``dask.distributed`` cluster.

The driver (``predict_many``) prepares every output (manifest, arrays, tissue mask: nothing is refused
once work is sent), then submits tasks of a few neighbouring blocks each. Each worker process opens its
own source (by path: tifffile's store holds a file lock and cannot be pickled) and its own model (from the
checkpoint path, or the module scattered once), predicts its blocks into the shared output store (chunks
are block-aligned, so there is one writer per chunk) and journals them. A task whose worker is lost is
rescheduled by Dask; afterwards the driver compares the journal with the blocks due and resubmits any
missing ones, then builds the coarse pyramid levels and marks the output complete.

Without a cluster (``workers=None`` and no ``scheduler``) the slides are predicted one after the other in
this process with ``predictor.predict``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.events import (
    BlockDone,
    PredictDone,
    PredictEvent,
    PredictFailed,
    PredictStart,
    PredictWarning,
    TissueMaskReady,
)
from napari_medseg.inference.job import Job, make_job, open_source
from napari_medseg.inference.modelrun import resolve_model
from napari_medseg.inference.output import OutputStore
from napari_medseg.inference.predictor import open_output, predict

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
    identity: dict[str, Any]
    torch_threads: int = 1
    delay_s: float = 0.0           # testing: hold each task this long before it starts
    token: str = field(default_factory=lambda: f"{os.getpid()}-{time.time_ns()}")
    source_kind: str = "auto"      # how the worker opens source_path ("image": the user said so)


def _worker_job(spec: TaskSpec) -> Job:
    key = (spec.out, spec.token)
    job = _JOBS.get(key)
    if job is None:
        import torch

        torch.set_num_threads(max(1, spec.torch_threads))
        src = open_source(spec.source_path, kind=spec.source_kind) if spec.source_path else spec.source
        job = make_job(src, spec.model, **spec.settings)
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
    with kept_environ():
        cluster = LocalCluster(n_workers=max(1, int(workers or 1)), threads_per_worker=threads_per_worker,
                               processes=processes, dashboard_address=None)
    return Client(cluster)


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

    ``model`` is a checkpoint path or an ``nn.Module``; ``settings`` are ``predict``'s keyword arguments
    (window, overlap, level, tissue_mask, write_probs...). Without ``client``/``workers``/``scheduler``
    the slides run here one by one. Returns the output paths (of the inputs that did not fail).

    An input that cannot be predicted (unreadable, refused by the model, a damaged tile with
    ``on_corrupt="stop"``...) raises, ending the run, unless ``keep_going``: then it yields ``PredictFailed``
    and the other inputs go on.
    """
    if len(inputs) != len(outs):
        raise MedsegError("need one output path per input")
    if client is None and workers is None and scheduler is None:
        if isinstance(model, (str, Path)):  # read and hashed once for all the inputs, not once per input
            model = resolve_model(model)
        done_outs = []
        for src, out in zip(inputs, outs):
            if not keep_going:
                yield from predict(src, model, out, cancel=cancel, resume=resume, overwrite=overwrite, **settings)
                done_outs.append(Path(out))
                continue
            name = ""
            try:
                for ev in predict(src, model, out, cancel=cancel, resume=resume, overwrite=overwrite, **settings):
                    name = ev.name if isinstance(ev, PredictStart) else name
                    yield ev
                done_outs.append(Path(out))
            except Exception as e:  # noqa: BLE001 - keep_going: any failure of one input is reported, the rest go on
                log.debug("prediction of %s failed", _input_text(src), exc_info=True)
                yield PredictFailed(source=_input_text(src), out=Path(out), message=_failure_message(e), name=name)
        return done_outs
    own_client = client is None
    # prepare every slide before sending work: bad input is refused here (or, with keep_going, reported and
    # left out), with nothing written elsewhere
    jobs: list[tuple[Job, OutputStore, TaskSpec, list[str], int, str]] = []
    sources: list[str] = []
    model_arg = str(model) if isinstance(model, (str, Path)) else model
    for src_in, out in zip(inputs, outs):
        try:
            job = make_job(src_in, model_arg, **settings)
            store, done = open_output(job, out, resume=resume, overwrite=overwrite)
        except Exception as e:
            if not keep_going:
                raise
            log.debug("preparing %s failed", _input_text(src_in), exc_info=True)
            yield PredictFailed(source=_input_text(src_in), out=Path(out), message=_failure_message(e))
            continue
        keys = [job.blocks.key(b) for b in job.tissue_blocks]
        todo = [k for k in keys if k not in done]
        path, obj = _source_ref(job.source)
        wsettings = dict(settings, tissue_mask=job.tissue if job.tissue is not None else False)
        spec = TaskSpec(out=str(out), source_path=path, source=obj, model=None, settings=wsettings,
                        identity=job.identity, torch_threads=torch_threads, delay_s=delay_s,
                        source_kind=_source_kind(job.source))
        name = job.source.name
        if job.tissue is not None:
            yield TissueMaskReady(job.tissue, Path(out))
        yield PredictStart(total_blocks=len(keys), skipped_blocks=job.blocks.n_blocks - len(keys), out=Path(out),
                           level=job.level, shape=job.shape, resumed_blocks=len(keys) - len(todo), name=name)
        if todo:
            store.update_manifest(status="running")
        jobs.append((job, store, spec, keys, len(keys) - len(todo), name))
        sources.append(_input_text(src_in))
    if not jobs:
        return []
    from distributed import as_completed

    client = client or make_client(workers, scheduler, threads_per_worker=1)
    t0 = time.perf_counter()
    try:
        model_ref = model_arg if isinstance(model_arg, str) else client.scatter(model_arg, broadcast=True)
        done_count = {i: j[4] for i, j in enumerate(jobs)}
        failed: set[int] = set()
        pixels = 0
        for rnd in range(max_rounds):
            futures = {}
            for i, (_job, store, spec, keys, _, _) in enumerate(jobs):
                if i in failed:
                    continue
                done = store.done_blocks()
                missing = [k for k in keys if k not in done]
                for part in _chunks(missing, max(1, blocks_per_task)):
                    futures[client.submit(run_task, spec, part, model_ref, pure=False)] = i
            if not futures:
                break
            if rnd:
                yield PredictWarning(f"{len(futures)} task(s) were redone (a worker was lost or a block is missing)")
            for fut in as_completed(list(futures)):
                i = futures[fut]
                job, store, spec, keys, _, name = jobs[i]
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
                    yield PredictFailed(source=sources[i], out=Path(spec.out), message=str(e), name=name)
                    continue
                except Exception as e:  # a lost worker ends up here when Dask gives up; redone next round
                    log.warning("task for %s failed: %s", name, e)
                    yield PredictWarning(f"{name}: a task failed ({type(e).__name__}: {e}); its blocks will be redone",
                                         name=name)
                    continue
                for w in res["warnings"]:
                    yield PredictWarning(w, name=name)
                for k in res["keys"]:
                    done_count[i] += 1
                    b = job.blocks.from_key(k)
                    pixels += math.prod(hi - lo for lo, hi in job.blocks.box(b))
                    dt = time.perf_counter() - t0
                    left = sum(len(j[3]) for j in jobs) - sum(done_count.values())
                    rate = pixels / 1e6 / max(dt, 1e-9)
                    yield BlockDone(done=min(done_count[i], len(keys)), total=len(keys), region=job.blocks.slices(b),
                                    mpix_s=rate, eta_s=dt / max(1, sum(done_count.values())) * max(0, left), name=name)
            if cancel is not None and cancel.is_set():
                break
        outs_done = []
        for i, (job, store, _spec, keys, _, name) in enumerate(jobs):
            if i in failed:  # reported above; a rerun resumes it
                store.update_manifest(status="interrupted")
                store.close()
                continue
            done = store.done_blocks()
            finished = all(k in done for k in keys)
            cancelled = not finished
            if finished:
                store.finalize()
                store.update_manifest(status="complete")
            else:
                store.update_manifest(status="cancelled" if cancel is not None and cancel.is_set() else "interrupted")
            store.close()
            n = sum(1 for k in keys if k in done)
            px = sum(math.prod(b - a for a, b in job.blocks.box(job.blocks.from_key(k))) for k in keys)
            sec = time.perf_counter() - t0
            yield PredictDone(out=store.path, blocks_done=n, seconds=sec, mpix_s=px / 1e6 / max(sec, 1e-9),
                              cancelled=cancelled, name=name)
            outs_done.append(store.path)
        return outs_done
    finally:
        if own_client:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()
