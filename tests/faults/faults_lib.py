"""Shared helpers of the fault-injection suite (``tests/faults`` and ``benchmarks/fault_suite.py``).

- ``spawn`` / ``kill_when``: run a command in its own process group and SIGKILL it at a chosen moment
  (a marker file appears, a condition on the files it writes becomes true, or after a delay);
  ``run_watched``: time a child's work by what it writes (begun, complete), run uninterrupted to measure its
  length or SIGKILLed a given time into it, and tell whether the kill really landed mid-run;
- ``driver_cmd``: the command line of ``faults_driver.py``, which installs a *pause point* (a function that,
  at its N-th call, signals the parent through a marker file and then sleeps until killed) before running
  the real CLI or a painting session, so a kill lands exactly where a test wants it;
- ``small_fs``: a real tiny filesystem (tmpfs, needs root) to fill up; ``enospc_after`` the fallback that
  makes chosen write functions raise ``OSError(ENOSPC)`` from their N-th call;
- tiny data: a slide TIFF, an image/mask folder, a checkpoint; ``tree_bytes`` for identity checks;
- ``clear_error`` / ``clear_cli_error``: what counts as a clear message (one line, says what, no traceback).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DRIVER = HERE / "faults_driver.py"


# ----------------------------------------------------------------------------------------- subprocesses
def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child: one thread per library, this folder importable, the test cache kept."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")]),
                "TQDM_DISABLE": "1"})
    env.update(extra)
    return env


def driver_cmd(*args: str) -> list[str]:
    return [sys.executable, str(DRIVER), *args]


@dataclass
class Run:
    """What happened to a child: exit code (negative: killed by that signal), output, whether we killed it."""

    returncode: int
    stdout: str
    stderr: str
    killed: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def spawn(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
          logdir: Path) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group), output to files in ``logdir``."""
    logdir.mkdir(parents=True, exist_ok=True)
    out = open(logdir / "stdout.txt", "w")  # noqa: SIM115 - closed by finish()
    err = open(logdir / "stderr.txt", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env or child_env(), cwd=cwd, start_new_session=True)
    proc._fault_files = (out, err, logdir)  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, killed: bool, t0: float) -> Run:
    out, err, logdir = proc._fault_files  # type: ignore[attr-defined]
    out.close()
    err.close()
    return Run(proc.returncode, (logdir / "stdout.txt").read_text(), (logdir / "stderr.txt").read_text(), killed,
               time.perf_counter() - t0)


def sigkill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and anything it started in its process group (the group is ours), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def kill_when(cmd: list[str], ready: Callable[[], bool], *, logdir: Path, env: dict[str, str] | None = None,
              delay_s: float = 0.0, timeout_s: float = 120.0, poll_s: float = 0.01) -> Run:
    """Run ``cmd`` and SIGKILL it ``delay_s`` after ``ready()`` first returns True. If it exits first (or
    ``timeout_s`` passes: then it is killed too) ``Run.killed`` tells."""
    t0 = time.perf_counter()
    proc = spawn(cmd, env=env, logdir=logdir)
    try:
        while proc.poll() is None and time.perf_counter() - t0 < timeout_s:
            if ready():
                if delay_s:
                    time.sleep(delay_s)
                if proc.poll() is None:
                    sigkill(proc)
                    return _finish(proc, True, t0)
                break
            time.sleep(poll_s)
        if proc.poll() is None:  # timed out: never leave it behind
            sigkill(proc)
            run = _finish(proc, True, t0)
            run.info["timeout"] = True
            return run
        proc.wait()
        return _finish(proc, False, t0)
    except BaseException:
        if proc.poll() is None:
            sigkill(proc)
        raise


def run_watched(cmd: list[str], started: Callable[[], bool], finished: Callable[[], bool], *, logdir: Path,
                env: dict[str, str] | None = None, kill_after_s: float | None = None, timeout_s: float = 120.0,
                poll_s: float = 0.005) -> Run:
    """Run ``cmd`` and watch, through what it writes, when its work begins (``started()``: e.g. the output
    exists) and when its result is complete (``finished()``). Without ``kill_after_s`` it runs to its end:
    a measurement. With it, it is SIGKILLed ``kill_after_s`` after ``started()`` first holds, unless
    ``finished()`` holds first (the run was faster than that: then it is left to end by itself).

    ``Run.info``: ``started_s`` / ``finished_s`` (seconds after the start, None if never seen);
    ``window_s``: ``finished_s - started_s``, the length of the work (after a kill that came too late, the
    upper bound the kill time gives); ``kill_at_s`` (seconds after ``started()``); ``mid_run``: our SIGKILL
    ended the child (return code ``-SIGKILL``) while ``finished()`` was still false, checked once the child
    is dead, so what is on disk is what the kill interrupted; ``timeout``."""
    t0 = time.perf_counter()
    proc = spawn(cmd, env=env, logdir=logdir)
    t_start = t_done = t_kill = None
    timed_out = False
    try:
        while proc.poll() is None:
            now = time.perf_counter()
            if t_start is None and started():
                t_start = now
            if t_start is not None and t_done is None and finished():
                t_done = now
            if now - t0 >= timeout_s:
                timed_out = True
                break
            if kill_after_s is not None and t_start is not None and t_done is None and now - t_start >= kill_after_s:
                t_kill = now
                break
            time.sleep(poll_s)
        if proc.poll() is None:  # the kill (or a time-out: never leave a child behind)
            sigkill(proc)
        else:
            proc.wait()
    except BaseException:
        if proc.poll() is None:
            sigkill(proc)
        raise
    t_end = time.perf_counter()
    done_now = finished()  # the child is dead: this is what it left
    if t_start is None and started():
        t_start = t_end
    if t_start is not None and t_done is None and done_now:
        t_done = t_kill if t_kill is not None else t_end  # ended between two polls: an upper bound
    run = _finish(proc, t_kill is not None or timed_out, t0)
    run.info.update({
        "started_s": None if t_start is None else round(t_start - t0, 4),
        "finished_s": None if t_done is None else round(t_done - t0, 4),
        "window_s": None if t_start is None or t_done is None else round(t_done - t_start, 4),
        "kill_at_s": None if t_kill is None or t_start is None else round(t_kill - t_start, 4),
        "mid_run": t_kill is not None and not timed_out and proc.returncode == -signal.SIGKILL and not done_now,
        "timeout": timed_out,
    })
    return run


def pause_plan(target: str, nth: int, marker: Path, **kw: Any) -> str:
    """The ``MEDSEG_FAULT_PLAN`` value for a pause at the ``nth`` call of ``target`` (see faults_driver)."""
    return json.dumps({"pause": {"target": target, "nth": int(nth), "marker": str(marker), **kw}})


# ----------------------------------------------------------------------------------------- a full disk
def can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_fs(size_kib: int) -> Iterator[Path | None]:
    """A fresh tmpfs of ``size_kib`` KiB (``None`` when it cannot be mounted: not root, no tmpfs).
    Unmounted and removed afterwards, whatever happens."""
    base = Path(tempfile.mkdtemp(prefix="medseg-smallfs-"))
    mounted = False
    try:
        if can_mount():
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_kib)}k,mode=0755", "tmpfs", str(base)],
                               capture_output=True, text=True)
            mounted = r.returncode == 0
        yield base if mounted else None
    finally:
        if mounted:
            r = subprocess.run(["umount", str(base)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(base)], capture_output=True)
        with contextlib.suppress(OSError):
            base.rmdir()


def resize_fs(path: Path, size_kib: int) -> bool:
    """Grow (or shrink) a ``small_fs`` in place: 'the user freed some space'."""
    r = subprocess.run(["mount", "-o", f"remount,size={int(size_kib)}k", str(path)], capture_output=True)
    return r.returncode == 0


def fill_fs(path: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem at ``path`` until at most ``leave_bytes`` are free (a ballast file, returned)."""
    ballast = path / ".ballast"
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    n = max(0, free - leave_bytes)
    with open(ballast, "wb") as f:
        chunk = b"\0" * (1 << 16)
        try:
            while n > 0:
                k = min(n, len(chunk))
                f.write(chunk[:k])
                n -= k
            f.flush()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return ballast


@contextlib.contextmanager
def enospc_after(targets: list[tuple[Any, str]], n: int) -> Iterator[dict[str, int]]:
    """Patch ``getattr(obj, name)`` for each ``(obj, name)`` so that, counting calls across all of them,
    the ``n``-th and every later call raises ``OSError(ENOSPC)``. Yields the call counter."""
    calls = {"n": 0, "failed": 0}
    saved = []

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def failing(*a: Any, **k: Any) -> Any:
            calls["n"] += 1
            if calls["n"] >= n:
                calls["failed"] += 1
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            return real(*a, **k)
        return failing

    for obj, name in targets:
        real = getattr(obj, name)
        saved.append((obj, name, real))
        setattr(obj, name, wrap(real))
    try:
        yield calls
    finally:
        for obj, name, real in reversed(saved):
            setattr(obj, name, real)


# ----------------------------------------------------------------------------------------- tiny data
def textured_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """YXC uint8 with smooth structure (compresses well, not constant) and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([180 + 50 * np.sin(xx / 37.0), 120 + 60 * np.cos(yy / 29.0),
                     160 + 50 * np.sin((xx + yy) / 53.0)], -1)
    img = base + rng.integers(-6, 7, size=base.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_slide(path: Path, h: int = 2048, w: int = 3072, tile: int = 256, compression: str | None = "zlib",
                pixel_size_um: float = 0.5) -> Path:
    """A tiled RGB TIFF slide (one level) with its pixel size in XResolution/ResolutionUnit (cm)."""
    import tifffile

    res = 1e4 / pixel_size_um  # pixels per cm
    tifffile.imwrite(path, textured_rgb(h, w), tile=(tile, tile), photometric="rgb", compression=compression,
                     resolution=(res, res), resolutionunit="CENTIMETER")
    return path


def write_pairs(root: Path, n: int = 2, size: int = 64, seed: int = 0) -> Path:
    """``root/images/c*.tif`` and ``root/masks/c*.tif``: a bright rectangle (class 1) on noise."""
    import tifffile

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        m[size // 6: size * 2 // 3, size // 5: size * 3 // 4] = 1
        img = (rng.normal(100, 10, (size, size)) + 80 * m).clip(0, 255).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"c{i}.tif", img)
        tifffile.imwrite(root / "masks" / f"c{i}.tif", m)
    return root


def tiny_checkpoint(path: Path, in_channels: int = 3, n_classes: int = 2, seed: int = 0, *,
                    num_res_units: int = 0, norm: str = "batch") -> Path:
    """A napari-medseg checkpoint of a tiny 2D U-Net (channels 4, 8; uint8 normalisation)."""
    import torch

    from napari_medseg.core.classes import ClassSchema
    from napari_medseg.models import ModelConfig, build_model
    from napari_medseg.models.checkpoint import Checkpoint, save_checkpoint
    from napari_medseg.models.normalization import NormConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(spatial_dims=2, in_channels=in_channels, out_channels=n_classes + 1, channels=(4, 8),
                      num_res_units=num_res_units, norm=norm)
    model = build_model(cfg).eval()
    names = ("background",) + tuple(f"class {i}" for i in range(1, n_classes + 1))
    ck = Checkpoint(cfg, model.state_dict(), classes=ClassSchema(names), norm=NormConfig.uint8(in_channels),
                    meta={"kind": "test"})
    return save_checkpoint(path, ck)


def tree_bytes(root: Path, skip_prefix: tuple[str, ...] = ("medseg/",)) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), paths starting with ``skip_prefix`` left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip_prefix):
            out[rel] = p.read_bytes()
    return out


def tree_digest(root: Path) -> dict[str, int]:
    """File sizes only: a cheap picture of a folder for 'nothing changed' checks."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- clear errors
def clear_error(exc: BaseException, must_name: str | None = None) -> tuple[bool, str]:
    """A clear error: a ``MedsegError``, one non-empty line, not a bare repr, naming ``must_name`` if given.
    Returns (ok, why not)."""
    from napari_medseg.core.errors import MedsegError

    msg = str(exc)
    if not isinstance(exc, MedsegError):
        return False, f"{type(exc).__name__} is not a MedsegError: {msg[:200]}"
    if not msg.strip():
        return False, "empty message"
    if "\n" in msg.strip():
        return False, "message spans several lines"
    if len(msg) > 600:
        return False, f"message is {len(msg)} characters long"
    if must_name and must_name not in msg:
        return False, f"message does not name {must_name!r}: {msg}"
    return True, ""


def clear_cli_error(code: int, stderr: str, must_name: str | None = None) -> tuple[bool, str]:
    """The CLI's contract for a user's mistake: exit status 2 and one ``napari-medseg X: error:`` line."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code != 2:
        return False, f"exit status {code}, not 2: {stderr[-300:]}"
    if "Traceback" in stderr:
        return False, "a traceback was printed"
    errs = [ln for ln in lines if ": error: " in ln and ln.startswith("napari-medseg")]
    if len(errs) != 1:
        return False, f"expected one error line, got {lines[-5:]}"
    if must_name and must_name not in errs[0]:
        return False, f"the error line does not name {must_name!r}: {errs[0]}"
    return True, ""


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``napari_medseg.cli.main(argv)`` in this process; (exit code, captured stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from napari_medseg.cli import main

    err, out = io.StringIO(), io.StringIO()
    old_argv = list(sys.argv)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse errors
                code = int(e.code) if isinstance(e.code, int) else 1
            except Exception:  # what the interpreter would do: a traceback and status 1
                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = old_argv
    return code, err.getvalue()
