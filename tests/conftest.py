"""Shared test fixtures. GUI tests (tests/gui) use napari's ``make_napari_viewer`` under Xvfb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Sample data and other caches go to a per-session temporary folder, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "medseg-cache"
    monkeypatch.setenv("NAPARI_MEDSEG_CACHE", str(cache))
    # frozen objects are never collected: one test's viewer would outlive it (tests/gui/test_quiet_gc.py
    # turns it on where it is tested)
    monkeypatch.setenv("NAPARI_MEDSEG_GC_FREEZE", "0")
    yield


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """Two cores on CI: keep torch to one thread so parallel work stays predictable."""
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("NAPARI_MEDSEG_TEST_THREADS", "1")))
    except ImportError:  # pragma: no cover
        pass
    yield


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
