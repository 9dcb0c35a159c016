"""Bad inputs across readers, stores, configs, checkpoints and the CLI, each through the public entry point a
user hits: every one is met by a clear message (see ``faults_cases.run_case``), none crashes."""

from __future__ import annotations

import pytest
from faults_cases import KNOWN_BUGS, all_cases, run_case

CASES = all_cases()


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case.name])] if case.name in KNOWN_BUGS else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_gets_one_clear_message(case, tmp_path):
    out = run_case(case, tmp_path)
    assert out.status == "clear", f"{out.status}: {out.message}\n{out.details.get('traceback', '')}"


def test_the_table_is_broad():
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names) >= 25
    entries = {c.entry.split()[0] if c.entry.startswith("cli") else c.entry for c in CASES}
    assert {"open_path", "get_reader", "LabelStore.open", "LabelStore.create", "TrainConfig.from_json",
            "ModelConfig.from_json", "load_checkpoint", "cli"} <= entries
    assert set(KNOWN_BUGS) <= set(names)
