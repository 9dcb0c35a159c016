"""SIGKILL during whole-slide prediction (a real ``napari-medseg predict`` process): the rerun of the same
command resumes, and its output is byte-identical to an uninterrupted run."""

from __future__ import annotations

import pytest
from faults_scenarios import kill_predict, predict_fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    """A 1536 x 3072 px RGB slide (two blocks), a tiny model and the uninterrupted prediction."""
    return predict_fixture(tmp_path_factory.mktemp("predict-fixture"))


@pytest.mark.parametrize("point", ["mid_block", "between_blocks"])
def test_killed_prediction_resumes_identical(tmp_path, fixture, point):
    r = kill_predict(tmp_path, point, fixture=fixture)
    assert r["killed"], r
    assert r["status_at_kill"] == "running" and r["blocks_done_at_kill"] == (0 if point == "mid_block" else 1), r
    assert r["rerun_exit"] == 0, r
    assert r["identical"], r
