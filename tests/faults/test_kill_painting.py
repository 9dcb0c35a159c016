"""SIGKILL while painting in a real napari viewer (a child process painting through ``Labels.paint`` with the
plugin's autosave): every stroke older than the stated autosave window is in the label store."""

from __future__ import annotations

import os
import shutil

import pytest
from faults_scenarios import kill_painting

pytestmark = [pytest.mark.slow, pytest.mark.gui]


@pytest.mark.skipif(not os.environ.get("DISPLAY") and not shutil.which("xvfb-run"),
                    reason="needs an X display (pytest-xvfb or xvfb-run)")
def test_sigkill_while_painting_loses_at_most_the_autosave_window(tmp_path):
    r = kill_painting(tmp_path, seed=1)
    assert r["killed"] and r["strokes"] >= 20, r
    assert r["lost_beyond_window"] == 0, r
    # strokes are lost only from the end: the store holds a prefix of the painting session
    assert r["max_lost_age_s"] <= r["stated_window_s"] + r["tolerance_s"], r


def test_the_stated_window_is_the_one_the_user_is_told():
    from napari_medseg._napari.painting.controller import AUTOSAVE_NOTE, FLUSH_DELAY_S, MAX_UNSAVED_S

    assert FLUSH_DELAY_S <= MAX_UNSAVED_S
    assert f"{MAX_UNSAVED_S:g} s" in AUTOSAVE_NOTE
