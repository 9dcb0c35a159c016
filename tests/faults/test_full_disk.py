"""A full disk while writing a checkpoint, labels or a prediction: a clear error, the earlier files intact,
and (prediction) a resumable output. A real small tmpfs when it can be mounted (root), else a write that
fails with ENOSPC."""

from __future__ import annotations

import pytest
from faults_lib import can_mount
from faults_scenarios import (
    full_disk_checkpoint,
    full_disk_labels,
    full_disk_predict,
    full_disk_training,
    predict_fixture,
)

needs_mount = pytest.mark.skipif(not can_mount(), reason="a real small filesystem needs root (tmpfs)")


@pytest.fixture(params=[True, False], ids=["tmpfs", "enospc-shim"])
def real(request, monkeypatch):
    """True: a real small tmpfs (skipped without root); False: writes that fail with ENOSPC."""
    if not request.param:
        monkeypatch.setattr("faults_lib.can_mount", lambda: False)
    elif not can_mount():
        pytest.skip("needs root for tmpfs")
    return request.param


def test_checkpoint_on_a_full_disk(tmp_path, real):
    r = full_disk_checkpoint(tmp_path)
    assert r["method"].startswith("tmpfs" if real else "enospc"), r
    assert r["error"] and "previous checkpoint is intact" in r["error"], r
    assert r["earlier_intact"] and r["json_intact"] and not r["leftover_files"], r


def test_labels_on_a_full_disk(tmp_path, real):
    r = full_disk_labels(tmp_path)
    assert r["error"] and "kept in memory" in r["error"], r
    assert r["kept_in_memory"] and r["earlier_intact_on_disk"] and r["saved_elsewhere"], r


@needs_mount
@pytest.mark.slow
def test_prediction_on_a_full_disk_resumes_identical(tmp_path):
    r = full_disk_predict(tmp_path, fixture=predict_fixture(tmp_path / "fixture"))
    assert r["exit"] == 2 and "full" in r["error"], r
    assert r["blocks_kept"] == 1, r
    assert r["identical_after_resume"], r


@needs_mount
def test_training_on_a_full_disk_stops_with_one_clear_line(tmp_path):
    r = full_disk_training(tmp_path)
    assert r["last"].get("step") == 5 and r["all_checkpoints_load"], r  # holds today
    assert r["ok"], r
