"""Out of GPU memory (simulated: the machines running the tests have no GPU): the batch is reduced and
the work goes on."""

from __future__ import annotations

import pytest
from faults_scenarios import oom_predict, oom_training, predict_fixture


def test_training_halves_the_batch_and_finishes(tmp_path):
    r = oom_training(tmp_path)
    assert r["exit"] == 0 and r["steps"] == 10, r
    assert len(r["warnings"]) == 2 and "continuing with 2" in r["warnings"][0], r
    assert r["batch_per_step"][0] == 4 and r["batch_per_step"][-1] == 1, r


@pytest.mark.slow
def test_prediction_reduces_the_batch_and_finishes(tmp_path):
    r = oom_predict(tmp_path, fixture=predict_fixture(tmp_path / "fixture"))
    assert r["exit"] == 0 and r["identical"], r
