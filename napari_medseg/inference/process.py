"""Whole-image prediction in a child process, with the same events as ``predict``.

The Predict widget runs prediction here when *run in a separate process* is ticked: the model, the tile
reads, the blending and the zarr writes then share neither the viewer's GIL nor its allocator. Measured in
``benchmarks/bench_ui_latency.py --predict-in both``: the slide finishes 15-28 % sooner, but the viewer's
stalls are no smaller than with a thread, so the widget's default stays a thread. The child is started
with ``spawn`` (no copy of the viewer's Qt or OpenGL state), at a lower CPU priority, and reopens the image
from its file when it has one (else the ``ImageSource`` is pickled: dask-over-zarr levels travel as
references, in-memory arrays as copies). Events come back through a queue; the caller's ``cancel`` is
forwarded; an error in the child is raised again in the caller with its message; closing the generator
(or the child dying) never leaves a child behind. No Qt here.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import queue
import threading
import time
import traceback
from collections.abc import Generator
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.events import PredictEvent

log = logging.getLogger(__name__)

#: nice increment of the child process (Linux): the viewer's threads win the CPU when both want it
CHILD_NICE = 10
POLL_S = 0.2


def _source_spec(source: ImageSource | str | Path) -> tuple[str, Any]:
    """How the child gets the image: by path when the source was opened from a file, else pickled."""
    if isinstance(source, (str, Path)):
        return ("path", str(source))
    if source.path and Path(source.path).exists():
        from napari_medseg.io.reader import open_path

        try:  # the same image the path opens first (what ``_napari.layerdata.from_layer`` reopens too)
            first = next(s for s in open_path(source.path) if s.kind == "image")
            if first.levels[0].shape == source.levels[0].shape:
                return ("path", str(source.path))
        except Exception as e:  # fall back to pickling the source itself
            log.debug("cannot reopen %s in the child: %s", source.path, e)
    try:
        return ("pickle", pickle.dumps(source, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as e:
        raise MedsegError(f"the image {source.name!r} cannot be handed to a prediction process ({e}); "
                          "predict in a thread instead") from e


def _open_spec(spec: tuple[str, Any]) -> ImageSource | str:
    kind, value = spec
    if kind == "pickle":
        return pickle.loads(value)
    return value


def _child(spec: tuple[str, Any], model: str, out: str, kwargs: dict[str, Any], q: Any, stop: Any,
           nice: int) -> None:
    """The child's body: run ``predict`` at niceness ``nice`` (absolute) and put ``(kind, payload)`` on ``q``."""
    with contextlib.suppress(AttributeError, OSError):  # a spawned child inherits the calling thread's nice
        cur = os.getpriority(os.PRIO_PROCESS, 0)
        if nice > cur:
            os.nice(nice - cur)
    try:
        from napari_medseg.inference.predictor import predict

        result = drive(predict(_open_spec(spec), model, out, cancel=stop, **kwargs), lambda ev: q.put(("event", ev)))
        q.put(("done", result))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
        try:
            payload: Any = pickle.dumps(e)
            pickle.loads(payload)
        except Exception:
            payload = None
        q.put(("error", (payload, type(e).__name__, str(e), isinstance(e, MedsegError), traceback.format_exc())))


def _raise_from_child(info: tuple[Any, str, str, bool, str]) -> None:
    payload, name, message, ours, tb = info
    log.debug("prediction process failed:\n%s", tb)
    if payload is not None:
        raise pickle.loads(payload)
    if ours:
        raise MedsegError(message)
    raise RuntimeError(f"{name} in the prediction process: {message}")


def predict_in_process(source: ImageSource | str | Path, model: str | Path, out: str | Path, *,
                       cancel: threading.Event | None = None, nice: int = CHILD_NICE,
                       **kwargs: Any) -> Generator[PredictEvent, None, Any]:
    """``predictor.predict(source, model, out, **kwargs)`` run in a spawned child process.

    ``model`` must be a checkpoint path (a module is not sent across). Yields the child's events as they
    come, returns its ``PredictResult``; raises the child's error (``MedsegError`` with the same message).
    ``cancel`` stops the child at the next block, as with ``predict``; closing the generator early cancels
    the child and waits for it (it closes the output consistently), killing it after 60 s.
    """
    if not isinstance(model, (str, Path)):
        raise MedsegError("a prediction process needs the model as a checkpoint file")
    spec = _source_spec(source)
    try:  # the child's nice: the process's own (its main thread's) plus ``nice``, however nice this thread is
        nice = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice)
    except (AttributeError, OSError):
        nice = 0
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_child, args=(spec, str(model), str(out), kwargs, q, stop, nice),
                       name="napari-medseg predict", daemon=True)
    proc.start()
    log.info("prediction process %s started", proc.pid)
    finished = False
    try:
        while True:
            if cancel is not None and cancel.is_set():
                stop.set()
            try:
                kind, payload = q.get(timeout=POLL_S)
            except queue.Empty:
                if not proc.is_alive():
                    try:  # the last message may have arrived just as it ended
                        kind, payload = q.get(timeout=1.0)
                    except queue.Empty:
                        raise MedsegError(
                            f"the prediction process ended without a result (exit code {proc.exitcode}); it may "
                            "have run out of memory. Try a smaller window or batch; the output so far is kept "
                            "and the next run resumes it.") from None
                else:
                    continue
            if kind == "event":
                yield payload
            elif kind == "done":
                finished = True
                return payload
            else:
                finished = True
                _raise_from_child(payload)
    finally:
        if not finished:
            stop.set()  # the child stops at its next block and closes the output
        deadline = time.monotonic() + 60.0
        while proc.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):  # keep draining: a child with unsent events cannot exit
                q.get(timeout=POLL_S)
        if proc.is_alive():
            log.warning("prediction process %s did not stop in 60 s; killing it", proc.pid)
            proc.kill()
        proc.join(timeout=5.0)
        q.close()
        q.join_thread()
