"""SIGKILL during whole-slide prediction (a real ``napari-medseg predict`` process): the rerun of the same
command resumes, and its output is byte-identical to an uninterrupted run."""

from __future__ import annotations

import signal

import pytest
from faults_scenarios import KILL_FRACTION, kill_predict, predict_fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """A 1536 x 3072 px RGB slide (two blocks), a tiny model and the uninterrupted prediction."""
    return predict_fixture(tmp_path_factory.mktemp("predict-fixture"))


@pytest.mark.parametrize("point", ["mid_block", "between_blocks"])
def test_killed_prediction_resumes_identical(tmp_path, fixture, point):
    r = kill_predict(tmp_path, point, fixture=fixture)
    assert r["killed"] and r["returncode"] == -signal.SIGKILL and r["mid_run"], r
    assert r["status_at_kill"] == "running" and r["blocks_done_at_kill"] == (0 if point == "mid_block" else 1), r
    assert r["rerun_exit"] == 0, r
    assert r["identical"], r


def test_prediction_killed_at_a_random_moment_resumes_identical(tmp_path, fixture):
    """The kill lands at a random fraction (seeded) of the measured length of an uninterrupted run, so it
    falls inside the run on a fast machine as on a slow one; the test checks it did (the child died of the
    SIGKILL with its output incomplete) instead of passing or failing on timing."""
    r = kill_predict(tmp_path, "random", seed=0, fixture=fixture)
    assert r["mid_run"] and r["killed"] and r["returncode"] == -signal.SIGKILL, r
    assert r["status_at_kill"] == "running" and 0 <= r["blocks_done_at_kill"] <= r["blocks_total"], r
    assert r["kill_at_s"] >= KILL_FRACTION[0] * r["tries"][-1]["window_s"] - 0.01, r  # timed from the measurement
    assert r["rerun_exit"] == 0, r
    assert r["identical"], r
    assert r["ok"], r
