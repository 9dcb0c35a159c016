"""SIGKILL during training (a real ``napari-medseg train`` process): no checkpoint is ever half-written,
and the rerun resumes from the last checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from faults_lib import run_cli, tiny_checkpoint
from faults_scenarios import (
    _all_checkpoints_load,
    _checkpoint_state,
    _train_argv,
    kill_training,
    kill_training_random,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """``kill_training``: the CLI killed half-way through writing its third checkpoint (last.pt of step 10),
    then rerun with ``--init DIR/last.pt``; ``root/run-at-kill`` is what the kill left."""
    root = tmp_path_factory.mktemp("killed-training")
    result = kill_training(root)
    assert result["killed"], result
    return root, result


def _copy(killed, tmp_path):
    root, _ = killed
    dst = tmp_path / "copy"
    shutil.copytree(root / "data", dst / "data")
    shutil.copytree(root / "run-at-kill", dst / "run")
    return dst / "data", dst / "run"


def test_no_checkpoint_is_half_written(killed):
    out = killed[0] / "run-at-kill"
    names = sorted(p.name for p in out.iterdir())
    assert {"last.pt", "best.pt", "last.json", "best.json"} <= set(names)
    half = [n for n in names if n.endswith(".tmp")]
    assert len(half) == 1 and half[0].startswith(".last.pt."), names  # the write in flight, never renamed
    ok, bad = _all_checkpoints_load(out)
    assert ok, bad
    assert _checkpoint_state(out / "last.pt")["step"] == 5  # the previous complete one


def test_rerun_with_init_resumes_from_the_last_checkpoint(killed):
    r = killed[1]
    assert r["rerun_exit"] == 0, r["rerun_stderr"]
    assert r["init_report"].split(",")[1:3] == [" 0 missing", " 0 unexpected"], r
    assert r["last_after"]["round"] == r["last_before"]["round"] + 1 and r["resumed"] and r["ok"]


def test_rerun_of_the_same_command_resumes(killed, tmp_path):
    data, out = _copy(killed, tmp_path)
    before = _checkpoint_state(out / "last.pt")
    code, err = run_cli(_train_argv(data, out, steps=10))
    assert code == 0, err
    assert _checkpoint_state(out / "last.pt")["round"] == before["round"] + 1


def test_kills_at_random_moments_land_mid_run_and_leave_loadable_checkpoints(tmp_path):
    """Each kill lands at a random fraction (seeded) of the measured length of an uninterrupted run of the
    same job, so it falls inside the run whatever the machine's speed; the test checks that it did (the
    child died of the SIGKILL before finishing) and that every checkpoint left behind loads."""
    r = kill_training_random(tmp_path, kills=2, seed=0, steps=60)
    assert r["uninterrupted_s"] > 0, r
    for k in r["kills"]:
        assert k["mid_run"] and k["killed"] and k["returncode"] == -signal.SIGKILL, r
        assert k["all_load"], k["bad"]
        assert k["last_step_at_kill"] is not None and 5 <= k["last_step_at_kill"] <= 60, r
    assert r["ok"], r


def test_stale_temp_of_a_killed_write_is_cleaned_by_the_next_save(tmp_path):
    """Regression (models/checkpoint.py): a killed writer's hidden ``.last.pt.*.tmp`` is removed by a later
    save once it is clearly stale; a fresh one (a live concurrent writer) is left alone."""
    from napari_medseg.models import checkpoint as ckmod

    p = tiny_checkpoint(tmp_path / "last.pt")
    old = tmp_path / ".last.pt.dead1234.tmp"
    old.write_bytes(b"half a model")
    stale = time.time() - ckmod.STALE_TEMP_S - 5
    os.utime(old, (stale, stale))
    fresh = tmp_path / ".last.pt.live5678.tmp"
    fresh.write_bytes(b"being written")
    other = tmp_path / ".best.pt.dead9999.tmp"
    other.write_bytes(b"x")
    os.utime(other, (stale, stale))
    tiny_checkpoint(p)
    assert not old.exists() and fresh.exists() and other.exists()


def test_checkpoints_are_readable_like_other_files(tmp_path):
    """Regression (models/checkpoint.py): ``mkstemp`` makes files 0600; a checkpoint gets the umask's mode
    so a colleague (or a cluster job under another user) can read it."""
    old = os.umask(0o022)
    try:
        p = tiny_checkpoint(tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert oct(p.stat().st_mode & 0o777) == oct(0o644)
    assert oct(p.with_suffix(".json").stat().st_mode & 0o777) == oct(0o644)
