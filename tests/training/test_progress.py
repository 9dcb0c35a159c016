"""Step k / total, steps per second and time left, from the step numbers and the times they were seen."""

from __future__ import annotations

import pytest

from napari_medseg.training.progress import ProgressMeter, format_duration


def test_rate_and_eta_from_recent_steps():
    m = ProgressMeter(100, start_t=0.0, window=5)
    m.update(1, 10.0)  # setup took 10 s: not counted in the rate
    assert m.rate is None and m.eta_s(10.0) is None and m.text(10.0) == "step 1 / 100"
    for s in range(2, 11):
        m.update(s, 10.0 + (s - 1) * 0.5)  # 2 steps/s
    assert m.rate == pytest.approx(2.0)
    assert m.eta_s(14.5) == pytest.approx(45.0)  # 90 steps left
    assert m.text(14.5) == "step 10 / 100 · 2 steps/s · ETA 45 s"
    for s in range(11, 16):
        m.update(s, 14.5 + (s - 10) * 1.0)  # slowed to 1 step/s: the window follows
    assert m.rate == pytest.approx(1.0)


def test_a_time_budget_shortens_the_eta():
    m = ProgressMeter(10_000, start_t=0.0, budget_s=60.0)
    m.update(1, 1.0)
    m.update(11, 2.0)  # 10 steps/s: 999 s by steps, 58 s by the budget
    assert m.eta_s(2.0) == pytest.approx(58.0)


@pytest.mark.parametrize("s, text", [(4.2, "4 s"), (75, "1 min 15 s"), (1500, "25 min"), (7380, "2 h 03 min")])
def test_format_duration(s, text):
    assert format_duration(s) == text
