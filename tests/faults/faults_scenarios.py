"""End-to-end fault scenarios: real subprocesses killed with SIGKILL, real full filesystems, simulated GPU
out-of-memory, damaged inputs. Each function runs one scenario in ``root`` and returns a dict of what it
saw (``ok`` plus measurements); ``test_*.py`` assert on them and ``benchmarks/fault_suite.py`` counts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faults_lib import (
    Run,
    child_env,
    driver_cmd,
    enospc_after,
    fill_fs,
    kill_when,
    pause_plan,
    resize_fs,
    run_cli,
    run_watched,
    small_fs,
    tiny_checkpoint,
    tree_bytes,
    write_pairs,
    write_slide,
)

TRAIN_ARGS = ["--channels", "4,8", "--patch-size", "32", "--batch-size", "2", "--val-every", "5",
              "--no-progress", "--threads", "1", "--workers", "0", "--seed", "0", "--device", "cpu"]
PREDICT_ARGS = ["--window", "256", "--overlap", "0.25", "--batch-size", "4", "--tissue-mask", "off",
                "--device", "cpu", "--probs", "uint8", "--threads", "1"]
SLIDE_SHAPE = (1536, 3072)  # 2 blocks of 1536 px (the CLI's block size), equal in size
# A kill "at a random moment" lands at a random fraction of the *measured* length of an uninterrupted run of
# the same job (never a fixed number of seconds: a fast machine would finish first, a slow one never get
# far). The upper bound leaves room for a run somewhat faster than the measured one; a run faster still
# ends before its kill and is tried again, with the length it showed, up to KILL_TRIES times.
KILL_FRACTION = (0.05, 0.8)
KILL_TRIES = 4


def _mtime_ns(folder: Path, pattern: str) -> int:
    """The newest modification time (ns) of the files matching ``pattern`` in ``folder``; -1 when none."""
    newest = -1
    for p in folder.glob(pattern) if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):  # replaced or removed while we look
            newest = max(newest, p.stat().st_mtime_ns)
    return newest


def _written_after(folder: Path, pattern: str, mtime_ns: int) -> Callable[[], bool]:
    """True once a file matching ``pattern`` in ``folder`` is newer than ``mtime_ns``."""
    def check() -> bool:
        return _mtime_ns(folder, pattern) > mtime_ns
    return check


def _kill_mid_run(attempt: Callable[[int, float], Run], window_s: float, rng: random.Random,
                  tries: int = KILL_TRIES) -> tuple[Run, list[dict[str, Any]]]:
    """``attempt(i, kill_after_s)`` runs the job once through ``run_watched``, SIGKILLed ``kill_after_s``
    after its work began. The kill time is a random fraction (``KILL_FRACTION``, from ``rng``) of
    ``window_s``, the measured length of an uninterrupted run. A try that did not land mid-run because the
    run was faster (it ended first, or the kill came after its result was complete) is repeated with the
    shorter length it showed; one that failed otherwise (no start, a crash, a time-out) is not. Returns the
    last try's ``Run`` and a record of every try."""
    log: list[dict[str, Any]] = []
    for i in range(tries):
        frac = rng.uniform(*KILL_FRACTION)
        run = attempt(i, frac * window_s)
        info = run.info
        log.append({"window_s": round(window_s, 3), "fraction": round(frac, 3), "kill_at_s": info["kill_at_s"],
                    "returncode": run.returncode, "mid_run": info["mid_run"], "run_window_s": info["window_s"]})
        faster = info["started_s"] is not None and info["window_s"] is not None and not info["timeout"] \
            and run.returncode in (0, -signal.SIGKILL)
        if info["mid_run"] or not faster:
            break
        window_s = min(window_s, info["window_s"])
    return run, log


def _train_argv(data: Path, out: Path, steps: int = 40, extra: tuple[str, ...] = ()) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--steps", str(steps), *TRAIN_ARGS, *extra]


def _checkpoint_state(path: Path) -> dict[str, Any]:
    from napari_medseg.models.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    return {"step": ck.meta.get("step"), "round": ck.meta.get("round"),
            "sum": float(sum(float(v.float().sum()) for v in ck.state_dict.values()))}


def _all_checkpoints_load(folder: Path) -> tuple[bool, list[str]]:
    from napari_medseg.core.errors import MedsegError
    from napari_medseg.models.checkpoint import load_checkpoint

    bad = []
    for p in sorted(folder.glob("*.pt")):
        try:
            load_checkpoint(p)
        except MedsegError as e:
            bad.append(f"{p.name}: {e}")
    return not bad, bad


# ============================================================================================ training
def kill_training(root: Path) -> dict[str, Any]:
    """SIGKILL the training CLI half-way through writing its third checkpoint; the rerun (``--init`` the
    last checkpoint, as docs/safety.md says) resumes from it. ``root/run-at-kill`` keeps what the kill left."""
    data, out = write_pairs(root / "data"), root / "run"
    marker = root / "paused"
    run = kill_when(driver_cmd("cli", *_train_argv(data, out)), marker.exists, logdir=root / "log",
                    env=child_env(MEDSEG_FAULT_PLAN=pause_plan("torch.save", 3, marker)))
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    loads, bad = _all_checkpoints_load(out)
    before = _checkpoint_state(out / "last.pt") if (out / "last.pt").exists() else {}
    partial = [f for f in files if f.endswith(".tmp")]
    if out.exists():
        shutil.copytree(out, root / "run-at-kill")  # the state the kill left, for inspection
    code, err = run_cli(_train_argv(data, out, steps=10, extra=("--init", str(out / "last.pt"))))
    log = json.loads((out / "train_log.json").read_text()) if (out / "train_log.json").exists() else {}
    after = _checkpoint_state(out / "last.pt") if code == 0 else {}
    init_report = (log.get("start") or {}).get("init_report") or ""
    resumed = code == 0 and after.get("round") == (before.get("round") or 0) + 1 and init_report.startswith(
        tuple(f"{n} matched, 0 missing, 0 unexpected" for n in range(1, 1000)))
    mid_run = run.killed and run.returncode == -signal.SIGKILL  # paused inside torch.save: it cannot finish
    return {"ok": mid_run and loads and before.get("step") == 5 and resumed, "killed": run.killed,
            "returncode": run.returncode, "mid_run": mid_run,
            "files_after_kill": files, "half_written_tmp_files": partial, "all_checkpoints_load": loads,
            "bad": bad, "last_before": before, "rerun_exit": code, "rerun_stderr": err[-500:],
            "init_report": init_report, "last_after": after, "resumed": resumed}


def kill_training_random(root: Path, kills: int = 3, seed: int = 0, steps: int = 200) -> dict[str, Any]:
    """SIGKILL the training CLI at random moments after its first checkpoint; after every kill each ``*.pt``
    in the folder loads (no half-written checkpoint ever). Each kill lands at a random fraction of the
    measured length (first checkpoint to ``train_log.json``) of an uninterrupted run of the same job, and
    counts only if it landed mid-run: the child died of our SIGKILL before writing its ``train_log.json``."""
    rng = random.Random(seed)
    data, out = write_pairs(root / "data"), root / "run"
    ref_out = root / "uninterrupted"
    ref = run_watched(driver_cmd("cli", *_train_argv(data, ref_out, steps=steps)),
                      _written_after(ref_out, "*.pt", -1), _written_after(ref_out, "train_log.json", -1),
                      logdir=root / "log-uninterrupted", timeout_s=300)
    window = ref.info["window_s"]
    if ref.returncode != 0 or not window:
        return {"ok": False, "uninterrupted_exit": ref.returncode, "stderr": ref.stderr[-1500:]}
    results = []
    for k in range(kills):

        def attempt(i: int, kill_after_s: float, k: int = k) -> Run:
            extra = ("--init", str(out / "last.pt")) if (out / "last.pt").exists() else ()
            return run_watched(driver_cmd("cli", *_train_argv(data, out, steps=steps, extra=extra)),
                               _written_after(out, "*.pt", _mtime_ns(out, "*.pt")),  # a checkpoint of this run
                               _written_after(out, "train_log.json", _mtime_ns(out, "train_log.json")),
                               kill_after_s=kill_after_s, logdir=root / f"log{k}-{i}", timeout_s=300)

        run, tries = _kill_mid_run(attempt, window, rng)
        loads, bad = _all_checkpoints_load(out)
        step = _checkpoint_state(out / "last.pt").get("step") if loads and (out / "last.pt").exists() else None
        results.append({"killed": run.killed, "mid_run": run.info["mid_run"], "returncode": run.returncode,
                        "kill_at_s": run.info["kill_at_s"], "last_step_at_kill": step, "all_load": loads,
                        "bad": bad, "tries": tries})
    return {"ok": all(r["mid_run"] and r["all_load"] for r in results), "uninterrupted_s": window,
            "kills": results}


# ============================================================================================ prediction
def _predict_argv(ckpt: Path, slide: Path, out_dir: Path) -> list[str]:
    return ["predict", str(ckpt), str(slide), "--out", str(out_dir), *PREDICT_ARGS]


def _manifest(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "medseg" / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _predict_watch(out: Path) -> tuple[Callable[[], bool], Callable[[], bool]]:
    """(work begun: the manifest exists; result complete: the manifest says so) for the output ``out``."""
    return (out / "medseg" / "run.json").exists, lambda: _manifest(out).get("status") == "complete"


def predict_fixture(root: Path) -> tuple[Path, Path, Path]:
    """A slide, a checkpoint and the output of an uninterrupted ``napari-medseg predict`` run."""
    root.mkdir(parents=True, exist_ok=True)
    slide = write_slide(root / "slide.tif", *SLIDE_SHAPE, compression=None)
    ckpt = tiny_checkpoint(root / "model.pt")
    ref = root / "ref"
    code, err = run_cli(_predict_argv(ckpt, slide, ref))
    if code != 0:
        raise RuntimeError(f"the reference prediction failed ({code}): {err[-500:]}")
    return slide, ckpt, ref / "slide.prediction.zarr"


def predict_window(slide: Path, ckpt: Path) -> float:
    """Seconds an uninterrupted ``predict`` child of the fixture spends from creating its output to marking
    it complete: measured once per fixture (kept in ``uninterrupted-window.json`` beside the slide)."""
    cache = slide.parent / "uninterrupted-window.json"
    if cache.exists():
        return float(json.loads(cache.read_text())["seconds"])
    out_dir = slide.parent / "uninterrupted"
    shutil.rmtree(out_dir, ignore_errors=True)
    started, finished = _predict_watch(out_dir / "slide.prediction.zarr")
    run = run_watched(driver_cmd("cli", *_predict_argv(ckpt, slide, out_dir)), started, finished,
                      logdir=slide.parent / "log-uninterrupted")
    shutil.rmtree(out_dir, ignore_errors=True)
    if run.returncode != 0 or not run.info["window_s"]:
        raise RuntimeError(f"the uninterrupted prediction failed ({run.returncode}): {run.stderr[-500:]}")
    cache.write_text(json.dumps({"seconds": run.info["window_s"]}))
    return float(run.info["window_s"])


def kill_predict(root: Path, point: str = "mid_block", seed: int = 0,
                 fixture: tuple[Path, Path, Path] | None = None) -> dict[str, Any]:
    """SIGKILL ``napari-medseg predict`` (``point``: ``mid_block``: after a block's first chunks are written,
    before its journal entry; ``between_blocks``: right after a block is journaled; ``random``: at a random
    fraction, from ``seed``, of the measured length of an uninterrupted run, counted from the output's
    creation); rerun the same command; compare with an uninterrupted run, byte for byte. ``mid_run``: the
    child died of the SIGKILL before its output was complete. ``fixture``: ``predict_fixture``'s result, to
    share it between scenarios."""
    slide, ckpt, ref = fixture or predict_fixture(root / "fixture")
    info: dict[str, Any] = {}
    if point in ("mid_block", "between_blocks"):
        out_dir = root / "out"
        marker = root / "paused"
        target, nth = ("output.write_array", 3) if point == "mid_block" else ("output.write_block", 1)
        env = child_env(MEDSEG_FAULT_PLAN=pause_plan(target, nth, marker))
        run = kill_when(driver_cmd("cli", *_predict_argv(ckpt, slide, out_dir)), marker.exists,
                        logdir=root / "log", env=env)
        complete = _manifest(out_dir / "slide.prediction.zarr").get("status") == "complete"
        mid_run = run.killed and run.returncode == -signal.SIGKILL and not complete
    elif point == "random":
        window = predict_window(slide, ckpt)
        dirs: list[Path] = []

        def attempt(i: int, kill_after_s: float) -> Run:
            dirs.append(root / ("out" if i == 0 else f"out-try{i}"))
            started, finished = _predict_watch(dirs[-1] / "slide.prediction.zarr")
            return run_watched(driver_cmd("cli", *_predict_argv(ckpt, slide, dirs[-1])), started, finished,
                               kill_after_s=kill_after_s, logdir=root / f"log-try{i}")

        run, tries = _kill_mid_run(attempt, window, random.Random(seed))
        out_dir, mid_run = dirs[-1], run.info["mid_run"]
        info = {"uninterrupted_s": window, "kill_at_s": run.info["kill_at_s"], "tries": tries}
    else:
        raise ValueError(f"unknown kill point {point!r}")
    out = out_dir / "slide.prediction.zarr"
    journal = out / "medseg" / "journal"
    done_at_kill = len(list(journal.iterdir())) if journal.is_dir() else 0
    status = _manifest(out).get("status")
    code, err = run_cli(_predict_argv(ckpt, slide, out_dir))
    got, want = tree_bytes(out), tree_bytes(ref)
    differs = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    identical = code == 0 and not differs
    total = len(list((ref / "medseg" / "journal").iterdir()))
    return {"ok": mid_run and status == "running" and done_at_kill <= total and identical,
            "killed": run.killed, "returncode": run.returncode, "mid_run": mid_run,
            "blocks_done_at_kill": done_at_kill, "blocks_total": total, "status_at_kill": status,
            "rerun_exit": code, "rerun_stderr": err.strip().splitlines()[-1:] if err.strip() else [],
            "identical": identical, "files_differing": differs[:5], **info}


# ============================================================================================ painting
def kill_painting(root: Path, seed: int = 0, paint_s: tuple[float, float] = (2.5, 4.0)) -> dict[str, Any]:
    """Paint in a real napari viewer (a child process), SIGKILL it mid-stroke-stream, and check that every
    stroke older than the stated autosave window is in the label store."""
    from napari_medseg.labels.store import LabelStore

    store_path, log_path, ready = root / "paint.labels.zarr", root / "strokes.txt", root / "ready"
    cmd = driver_cmd("paint", str(store_path), str(log_path), str(ready))
    if not os.environ.get("DISPLAY"):
        if not shutil.which("xvfb-run"):
            return {"ok": None, "skipped": "no X display and no xvfb-run"}
        cmd = ["xvfb-run", "-a", *cmd]
    window = _autosave_window()
    delay = random.Random(seed).uniform(*paint_s)
    t_kill: list[float] = []

    def is_ready() -> bool:
        if ready.exists():
            time.sleep(delay)
            t_kill.append(time.time())
            return True
        return False

    run = kill_when(cmd, is_ready, logdir=root / "log", timeout_s=180)
    if not t_kill:
        return {"ok": False, "killed": run.killed, "stderr": run.stderr[-1500:]}
    strokes = [f for f in (ln.split() for ln in log_path.read_text().splitlines()) if len(f) == 5]
    store = LabelStore.open(store_path, mode="r")
    try:
        lost_ages = [t_kill[0] - float(t) for t, _i, y, x, lab in strokes if int(store[int(y), int(x)]) != int(lab)]
    finally:
        store.close()
    tolerance = 1.0  # the write itself, timer jitter on a busy machine
    beyond = [a for a in lost_ages if a > window + tolerance]
    # the child paints on a timer for minutes and then idles until killed: it never ends before the kill
    mid_run = run.killed and run.returncode == -signal.SIGKILL
    return {"ok": mid_run and bool(strokes) and not beyond, "killed": run.killed, "mid_run": mid_run,
            "returncode": run.returncode, "strokes": len(strokes),
            "lost_strokes": len(lost_ages), "max_lost_age_s": round(max(lost_ages, default=0.0), 3),
            "stated_window_s": window, "tolerance_s": tolerance, "lost_beyond_window": len(beyond),
            "painted_for_s": round(delay, 2)}


def _autosave_window() -> float:
    from napari_medseg._napari.painting.controller import MAX_UNSAVED_S

    return float(MAX_UNSAVED_S)


# ============================================================================================ full disk
@contextlib.contextmanager
def _disk(size_kib: int):
    with small_fs(size_kib) as fs:
        yield fs


def full_disk_checkpoint(root: Path) -> dict[str, Any]:
    """A checkpoint written over an earlier one onto a full disk: a clear error, the earlier one intact,
    no temporary file left behind."""
    import torch

    from napari_medseg.core.errors import MedsegError
    from napari_medseg.models.checkpoint import load_checkpoint, save_checkpoint

    with _disk(1024) as fs:
        method = "tmpfs" if fs is not None else "enospc shim (torch.save)"
        folder = (fs or root) / "run"
        first = tiny_checkpoint(folder / "last.pt", seed=0)
        want = {k: v.clone() for k, v in load_checkpoint(first).state_dict.items()}
        newer = load_checkpoint(tiny_checkpoint(root / "newer.pt", seed=1))
        err = None
        ctx = contextlib.nullcontext() if fs is not None else enospc_after([(torch, "save")], 1)
        with ctx:
            if fs is not None:
                fill_fs(fs, leave_bytes=4096)
            try:
                save_checkpoint(folder / "last.pt", newer)
            except MedsegError as e:
                err = str(e)
        got = load_checkpoint(folder / "last.pt").state_dict
        intact = set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        json_ok = json.loads((folder / "last.json").read_text()).get("format") == "napari-medseg-checkpoint"
    return {"ok": bool(err) and intact and not leftovers and json_ok, "method": method, "error": err,
            "earlier_intact": intact, "leftover_files": leftovers, "json_intact": json_ok}


def full_disk_training(root: Path) -> dict[str, Any]:
    """``napari-medseg train`` whose disk fills up after its first checkpoints: exit status 2 with one clear
    line, and the last checkpoint written before is intact."""
    from napari_medseg.training import run_state as loop  # where checkpoints are written

    data = write_pairs(root / "data")
    with _disk(2048) as fs:
        if fs is None:
            return {"ok": None, "skipped": "needs a real small filesystem (root and tmpfs)"}
        out = fs / "run"
        real = loop.save_checkpoint
        state = {"n": 0}

        def save_then_fill(path: Any, ck: Any) -> Any:
            r = real(path, ck)
            state["n"] += 1
            if state["n"] == 2:  # last.pt and best.pt of step 5 are on disk: now the disk is full
                fill_fs(fs, leave_bytes=0)
            return r

        loop.save_checkpoint = save_then_fill
        try:
            code, err = run_cli(_train_argv(data, out, steps=20))
        finally:
            loop.save_checkpoint = real
        last = _checkpoint_state(out / "last.pt") if (out / "last.pt").exists() else {}
        loads, bad = _all_checkpoints_load(out)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    one_line = code == 2 and "Traceback" not in err and sum(": error: " in ln for ln in lines) == 1
    return {"ok": one_line and last.get("step") == 5 and loads, "exit": code, "stderr_tail": lines[-3:],
            "last": last, "all_checkpoints_load": loads, "bad": bad}


def full_disk_labels(root: Path) -> dict[str, Any]:
    """Painting into a label store on a disk that fills up: a clear error, earlier chunks intact on disk,
    new strokes kept in memory and saved elsewhere with ``save_as``: nothing lost."""
    import numpy as np

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.core.errors import MedsegError
    from napari_medseg.labels.ops import save_as
    from napari_medseg.labels.store import LabelStore

    classes = ClassSchema(("background", "tumour", "stroma"))
    with _disk(512) as fs:
        method = "tmpfs" if fs is not None else "enospc shim (chunk writes)"
        path = (fs or root) / "slide.labels.zarr"
        store = LabelStore.create(path, (1024, 1024), chunks=(128, 128), classes=classes)
        store.write((slice(0, 200), slice(0, 200)), 2)
        earlier = store[...].copy()
        err = None
        rng = np.random.default_rng(0)
        noise = rng.integers(1, 4, (600, 600)).astype(np.uint8)  # incompressible: fills the disk fast
        ctx = contextlib.nullcontext()
        if fs is not None:
            fill_fs(fs, leave_bytes=8192)
        else:
            from napari_medseg.labels.format import ChunkFiles
            ctx = enospc_after([(ChunkFiles, "write")], 3)
        with ctx:
            try:
                store.write((slice(300, 900), slice(300, 900)), noise)
            except MedsegError as e:
                err = str(e)
            want = earlier.copy()
            want[300:900, 300:900] = noise
            in_memory = bool(np.array_equal(store[...], want))
            on_disk = LabelStore.open(path, mode="r")
            disk_earlier = bool(np.array_equal(on_disk[0:200, 0:200], earlier[0:200, 0:200]))
            on_disk.close()
        save_as(store, root / "rescued.labels.zarr")
        store.close()
        rescued = LabelStore.open(root / "rescued.labels.zarr", mode="r")
        saved_all = bool(np.array_equal(rescued[...], want))
        rescued.close()
    return {"ok": bool(err) and in_memory and disk_earlier and saved_all, "method": method, "error": err,
            "kept_in_memory": in_memory, "earlier_intact_on_disk": disk_earlier, "saved_elsewhere": saved_all}


def full_disk_predict(root: Path, fixture: tuple[Path, Path, Path] | None = None) -> dict[str, Any]:
    """``napari-medseg predict`` onto a disk that fills up: exit status 2 with one clear line, finished blocks
    kept; after space is freed the same command resumes and ends identical to an uninterrupted run."""
    slide, ckpt, ref = fixture or predict_fixture(root / "fixture")
    ref_bytes = tree_bytes(ref)
    total = sum(len(v) for v in ref_bytes.values())
    with _disk(max(256, int(total * 0.75) // 1024)) as fs:  # room for one of the two blocks
        if fs is None:
            return {"ok": None, "skipped": "needs a real small filesystem (root and tmpfs)"}
        argv = ["predict", str(ckpt), str(slide), "--out", str(fs / "out"), *PREDICT_ARGS]
        code, err = run_cli(argv)
        out = fs / "out" / "slide.prediction.zarr"
        journal = out / "medseg" / "journal"
        kept = sorted(p.name for p in journal.iterdir()) if journal.is_dir() else []
        resize_fs(fs, 64 * 1024)
        code2, err2 = run_cli(argv)
        identical = code2 == 0 and tree_bytes(out) == ref_bytes
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    clear = code == 2 and "Traceback" not in err and len(lines) == 1 and "full" in lines[0]
    return {"ok": clear and identical, "exit": code, "error": lines[-1] if lines else err[-300:],
            "blocks_kept": len(kept), "rerun_exit": code2, "rerun_stderr": err2[-300:] if code2 else "",
            "identical_after_resume": identical}


# ============================================================================================ GPU memory
def oom_training(root: Path) -> dict[str, Any]:
    """Training whose steps 2 and 3 run out of GPU memory (simulated): the batch is halved, training ends."""
    import torch

    from napari_medseg.training import loop

    data, out = write_pairs(root / "data"), root / "run"
    fired: list[int] = []

    def hook(step: int) -> None:
        if step in (2, 3) and step not in fired:
            fired.append(step)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    old = loop._fault_hook
    loop._fault_hook = hook
    try:
        code, err = run_cli(_train_argv(data, out, steps=10, extra=("--batch-size", "4")))
    finally:
        loop._fault_hook = old
    log = json.loads((out / "train_log.json").read_text()) if (out / "train_log.json").exists() else {}
    warns = [w for w in log.get("warnings", []) if "out of memory" in w]
    steps = (log.get("result") or {}).get("steps")
    batches = [s.get("batch_size") for s in log.get("steps", [])]
    return {"ok": code == 0 and len(warns) == 2 and steps == 10 and batches[-1:] == [1] and batches[0] == 4,
            "exit": code, "warnings": warns, "steps": steps, "batch_per_step": batches}


def oom_predict(root: Path, fixture: tuple[Path, Path, Path] | None = None) -> dict[str, Any]:
    """Prediction whose first model call runs out of GPU memory (simulated): the batch should be reduced and
    the run go on, ending identical to an uninterrupted run."""
    import torch

    from napari_medseg.inference import modelrun

    slide, ckpt, ref = fixture or predict_fixture(root / "fixture")
    real = modelrun.WindowRunner._forward
    fired: list[int] = []

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        if not fired and x.shape[0] > 1:
            fired.append(int(x.shape[0]))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(self, x)

    modelrun.WindowRunner._forward = forward
    try:
        code, err = run_cli(["predict", str(ckpt), str(slide), "--out", str(root / "out"), *PREDICT_ARGS])
    finally:
        modelrun.WindowRunner._forward = real
    out = root / "out" / "slide.prediction.zarr"
    identical = code == 0 and tree_bytes(out) == tree_bytes(ref)
    return {"ok": code == 0 and identical, "exit": code, "stderr_tail": err.strip().splitlines()[-2:],
            "identical": identical}
