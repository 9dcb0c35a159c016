"""Shared test fixtures. GUI tests (tests/gui) use napari's ``make_napari_viewer`` under Xvfb.

Every test starts from the same global state whatever ran before it (the suite runs in random order,
pytest-randomly, and must pass in any): torch, numpy and ``random`` are seeded before each test, the user's
settings and caches are replaced by temporary folders, and a guard fails the test that leaves torch's thread
count or default dtype, the working directory or the environment changed behind it.
"""

from __future__ import annotations

import faulthandler
import os
import random
import tempfile
import time
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_THREADS = int(os.environ.get("NAPARI_MEDSEG_TEST_THREADS", "1"))


@pytest.hookimpl(trylast=True)  # after pytest's own plugins (its faulthandler)
def pytest_configure(config):
    # napari's own settings file: a fresh one for this session, never the user's (its values would leak in)
    os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(prefix="medseg-napari-cfg-"),
                                                        "settings.yaml"))
    try:
        import torch

        # Two cores on CI: keep torch to one thread so parallel work stays predictable.
        torch.set_num_threads(TEST_THREADS)
    except ImportError:  # pragma: no cover
        pass
    try:  # the Dask clusters the tests start in this process: no worker profiler walking every thread's frames
        import dask  # (it crashed the suite once: a segmentation fault in Worker.trigger_profile)

        dask.config.set({"distributed.worker.profile.enabled": False})
    except ImportError:  # pragma: no cover
        pass
    # A crash (segmentation fault) prints the stack of the thread that crashed only: with every thread's
    # stack, the one that matters is cut from the end of a long CI log.
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        faulthandler.enable(file=config.stash[fault_handler_stderr_fd_key], all_threads=False)
    except (ImportError, KeyError):  # another pytest, or its faulthandler plugin turned off
        pass


# environment variables that change what the code under test does (libraries that set others on their first
# import, e.g. qtpy's QT_API or inductor's TORCHINDUCTOR_CACHE_DIR, are not a test's doing)
WATCHED_ENV = ("NAPARI", "OMP_", "MKL_", "KMP_", "CUDA", "PYTORCH_", "TORCH_", "DASK", "XDG_", "HOME", "PATH",
               "PYTHONPATH", "TMPDIR")


def _global_state() -> dict:
    import torch

    return {"torch threads": torch.get_num_threads(), "torch default dtype": torch.get_default_dtype(),
            "working directory": os.getcwd(),
            "environment": {k: v for k, v in os.environ.items() if k.startswith(WATCHED_ENV)}}


def _restore(state: dict) -> None:
    import torch

    torch.set_num_threads(state["torch threads"])
    torch.set_default_dtype(state["torch default dtype"])
    os.chdir(state["working directory"])
    for k in [k for k in os.environ if k.startswith(WATCHED_ENV)]:
        del os.environ[k]
    os.environ.update(state["environment"])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    item.stash[_STATE] = _global_state()  # before any fixture of the test
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield  # every fixture of the test is finalised here
    before = item.stash.get(_STATE, None)
    if before is None:
        return result
    after = _global_state()
    leaks = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in before if k != "environment" and before[k] != after[k]]
    env_b, env_a = before["environment"], after["environment"]
    changed = sorted(k for k in set(env_b) | set(env_a) if env_b.get(k) != env_a.get(k))
    leaks += [f"environment variable {k}: {env_b.get(k)!r} -> {env_a.get(k)!r}" for k in changed]
    if leaks:
        _restore(before)  # the next test starts clean either way
        raise AssertionError("the test left global state changed for the tests after it (use monkeypatch, "
                             "or restore it): " + "; ".join(leaks))
    return result


_STATE = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _seeded(request):
    """Seed the global generators before each test: pytest-randomly's seed for this run where it is active
    (so a different order also means different numbers, and a failure replays with ``-p randomly
    --randomly-seed=N``), else 0. Tests that need randomness still pass their own seeded generators."""
    import numpy as np
    import torch

    seed = request.config.getoption("randomly_seed", default=None)
    seed = seed if isinstance(seed, int) else 0
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Sample data and other caches go to a per-session temporary folder, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "medseg-cache"
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(cache))
    # frozen objects are never collected: one test's viewer would outlive it (tests/gui/test_quiet_gc.py
    # turns it on where it is tested)
    monkeypatch.setenv("NAPARI_MEDSEG_GC_FREEZE", "0")
    # widget settings: a fresh folder per test, never the user's (a test's saved settings would reach the next)
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path_factory.mktemp("medseg-config")))
    yield


#: how long a GUI test's background work (napari thread workers) may run on after the test before it fails
WORKER_GRACE_S = 60.0


@pytest.fixture(autouse=True)
def _no_background_work_left(request):
    """A GUI test ends with its background work ended: the workers it started (training, prediction,
    ranking) are waited for, with the Qt events they send delivered, before the next test starts. Work left
    running would deliver its events into a later test, to widgets already deleted (a crash far from its
    cause); a test whose work is still running after ``WORKER_GRACE_S`` fails and says so."""
    yield
    if request.node.get_closest_marker("gui") is None:
        return
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    pool = QThreadPool.globalInstance()
    deadline = time.monotonic() + WORKER_GRACE_S
    while pool.activeThreadCount() and time.monotonic() < deadline:
        QApplication.processEvents()
        pool.waitForDone(20)
    QApplication.processEvents()
    if pool.activeThreadCount():
        raise AssertionError(f"{pool.activeThreadCount()} background worker(s) of this test still ran "
                             f"{WORKER_GRACE_S:.0f} s after it ended: stop them in the test")


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A temporary user data folder and cache folder (``core.user_folders``): (data, cache)."""
    data, cache = tmp_path / "user-data", tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("NAPARI_MEDSEG_DATA", str(data))
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(cache))
    return data, cache


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (a fresh clone has none)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "tests/gui" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.gui)
