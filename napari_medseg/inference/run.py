"""The lifecycle of one prediction run: a job, its output store and the manifest's status, with the events
that open and close it. Used by ``predictor.predict`` (which computes the blocks itself) and by
``distributed.predict_many`` (whose Dask workers compute them), so both create, resume or refuse an output,
mark it running, finish it (coarse levels, ``complete``) or leave it resumable in the same way.

``PredictionRun(job, out, resume=..., overwrite=...)`` creates the output, or reopens an unfinished run of
the same job (removing the temporary files of killed writers; the blocks in its journal are not redone), or
refuses another job's output (``output.prepare_out``). Then ``start()`` yields ``TissueMaskReady`` and
``PredictStart`` and marks the manifest ``running``; ``block_done(box)`` and ``warning(message)`` make the
progress events; ``finish(cancelled=...)`` closes the output (``complete`` when every block due is in the
journal, else ``cancelled`` or ``interrupted``) and returns ``PredictDone``; ``abort()`` marks it
``interrupted`` after an error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from napari_medseg.inference.events import (
    BlockDone,
    PredictDone,
    PredictEvent,
    PredictResult,
    PredictStart,
    PredictWarning,
    TissueMaskReady,
)
from napari_medseg.inference.job import Job
from napari_medseg.inference.output import OutputStore, prepare_out, remove_partial_writes
from napari_medseg.models.devices import cpu_bf16_native

log = logging.getLogger(__name__)
MANIFEST_WARNINGS = 100  # at most this many warnings are kept in the manifest


def open_output(job: Job, out: str | Path, *, resume: bool, overwrite: bool) -> tuple[OutputStore, set[str]]:
    """Create or reopen the output for ``job`` (refusing another run's output); returns it and the blocks
    already finished."""
    action = prepare_out(out, job.identity, resume=resume, overwrite=overwrite)
    if action == "create":
        store = OutputStore.create(out, job.layout, job.identity, job.classes, name=job.source.name,
                                   extra_attrs={"source": job.identity["source"]["path"], "level": job.level})
        if job.tissue is not None:
            tm = job.tissue
            p0 = job.source.pixel_size
            store.write_tissue(tm.mask, tm.scale, [(d - 1) / 2 * p for d, p in zip(tm.downsample, p0)],
                               job.source.unit)
        return store, set()
    store = OutputStore.open(out)
    remove_partial_writes(store.path)
    return store, store.done_blocks()


class PredictionRun:
    """One job writing one output, from ``PredictStart`` to ``PredictDone``."""

    def __init__(self, job: Job, out: str | Path, *, resume: bool = True, overwrite: bool = False,
                 t_start: float | None = None) -> None:
        """``t_start``: when the run began (``perf_counter``; e.g. before its job was made), for
        ``PredictDone.seconds``."""
        self.job = job
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.store, done = open_output(job, out, resume=resume, overwrite=overwrite)
        self.out = self.store.path
        self.keys = [job.blocks.key(b) for b in job.tissue_blocks]
        self.todo = [b for b, k in zip(job.tissue_blocks, self.keys) if k not in done]
        self.resumed = len(self.keys) - len(self.todo)
        self.n_done = self.resumed
        self.pixels = 0.0  # computed by this run
        self.warnings: list[str] = []
        self.t0 = self.t_start  # when the blocks began (``start``)
        self.cancelled = False
        self.closed = False

    @property
    def name(self) -> str:
        return self.job.source.name

    @property
    def total(self) -> int:
        return len(self.keys)

    def start(self) -> Iterator[PredictEvent]:
        """The tissue mask (if one is used) and ``PredictStart``; the manifest says ``running`` while blocks
        are due."""
        if self.job.tissue is not None:
            yield TissueMaskReady(self.job.tissue, self.out)
            if self.total == 0:  # a blank or pale slide: say so, rather than finish silently with nothing
                yield self.warning("no tissue found (the tissue mask is empty): nothing was predicted and the "
                                   "output is all background; predict without the tissue mask (--tissue-mask off, "
                                   "or untick 'skip background (tissue mask)' in the Predict widget) to predict everywhere")
        if getattr(self.job, "cpu_bf16", False) and not cpu_bf16_native():
            yield self.warning("precision bf16: this CPU has no native bfloat16 (AMX or AVX512-BF16), so it is "
                               "emulated and probably slower than float32; predict with precision fp32 (the default)")
        yield PredictStart(total_blocks=self.total, skipped_blocks=self.job.blocks.n_blocks - self.total,
                           out=self.out, level=self.job.level, shape=self.job.shape, resumed_blocks=self.resumed,
                           name=self.name)
        if self.todo:
            self.store.update_manifest(status="running")
        self.t0 = time.perf_counter()

    def warning(self, message: str) -> PredictWarning:
        self.warnings.append(message)
        return PredictWarning(message, name=self.name)

    def block_done(self, box: Sequence[tuple[int, int]]) -> BlockDone:
        """Progress after the block ``box`` (level pixels) was written (rate and time left of this run)."""
        self.n_done = min(self.total, self.n_done + 1)
        self.pixels += math.prod(b - a for a, b in box)
        dt = time.perf_counter() - self.t0
        rate = self.pixels / 1e6 / dt if dt > 0 else 0.0
        eta = dt / max(1, self.n_done - self.resumed) * (self.total - self.n_done)
        return BlockDone(done=self.n_done, total=self.total, region=tuple(slice(a, b) for a, b in box),
                         mpix_s=rate, eta_s=eta, name=self.name)

    def finish(self, *, cancelled: bool = False) -> PredictDone:
        """Close the output: ``complete`` (coarse levels built) when every block due is in the journal, else
        ``cancelled`` (``cancelled``: the user asked) or ``interrupted``; a rerun resumes either."""
        try:
            self.store.flush()
            done = self.store.done_blocks()
            finished = all(k in done for k in self.keys)
            if finished:
                self.store.finalize()
                self.store.update_manifest(status="complete", warnings=self.warnings[:MANIFEST_WARNINGS])
            else:
                self.store.update_manifest(status="cancelled" if cancelled else "interrupted")
            self.store.close()
        except BaseException:
            self.abort()
            raise
        self.closed = True
        self.cancelled = not finished
        self.n_done = sum(1 for k in self.keys if k in done)
        now = time.perf_counter()
        return PredictDone(out=self.out, blocks_done=self.n_done, seconds=now - self.t_start,
                           mpix_s=self.pixels / 1e6 / max(1e-9, now - self.t0), cancelled=self.cancelled,
                           name=self.name)

    def abort(self) -> None:
        """After an error: close the output (its writer threads end) and mark it ``interrupted``. Never
        raises (the disk may be full: the journal alone drives resuming)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.store.close()
        except Exception:  # noqa: BLE001 - the error being handled is the one to report
            log.debug("could not close %s", self.out, exc_info=True)
        try:
            self.store.update_manifest(status="interrupted")
        except Exception:  # noqa: BLE001
            log.debug("could not mark %s interrupted", self.out, exc_info=True)

    def result(self, done: PredictDone) -> PredictResult:
        job = self.job
        return PredictResult(out=self.out, level=job.level, shape=job.shape, blocks_total=self.total,
                             blocks_done=done.blocks_done, blocks_skipped=job.blocks.n_blocks - self.total,
                             blocks_resumed=self.resumed, seconds=done.seconds, mpix_s=done.mpix_s,
                             cancelled=done.cancelled, windows_computed=int(job.stats.get("windows", 0)),
                             warnings=list(self.warnings), stats=dict(job.stats))
