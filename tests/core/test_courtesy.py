"""core.courtesy: background work pauses while the user moves the view, resumes after a quiet moment, and is
never starved (a fake clock: no timing)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn

from napari_medseg.core.courtesy import CourteousStop, Courtesy
from napari_medseg.training.guard import StepGuard


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.touches: dict[float, bool] = {}  # the user touches the view whenever the clock passes these times

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _courtesy(t: FakeTime, **kw) -> Courtesy:
    return Courtesy(clock=t.clock, sleep=t.sleep, **kw)


def test_no_touch_no_wait_and_a_touch_waits_until_the_user_is_quiet():
    t = FakeTime()
    c = _courtesy(t, quiet_s=0.3)
    assert c.give_way() == 0.0 and not c.busy
    c.touch()
    t.now += 0.1
    assert c.busy
    waited = c.give_way()
    assert waited == pytest.approx(0.2, abs=0.03)  # until 0.3 s after the touch
    assert not c.busy and c.waits == 1 and c.waited_s == pytest.approx(waited)


def test_continuous_interaction_cannot_starve_the_work():
    """The user touches the view every 10 ms for ever: each wait ends after max_wait_s, then the work runs
    min_run_s without waiting."""
    t = FakeTime()
    c = Courtesy(quiet_s=0.3, max_wait_s=2.0, min_run_s=0.5, clock=t.clock)

    def sleep(s: float) -> None:
        t.now += s
        c.touch()  # the user is still moving

    c.sleep = sleep
    c.touch()
    assert c.give_way() == pytest.approx(2.0, abs=0.03)
    t.now += 0.2
    c.touch()
    assert c.give_way() == 0.0  # within min_run_s of the last wait's end
    t.now += 0.4
    c.touch()
    assert c.give_way() == pytest.approx(2.0, abs=0.03)


def test_stop_ends_a_wait_and_disabled_never_waits():
    t = FakeTime()
    stop = threading.Event()
    c = _courtesy(t)

    def sleep(s: float) -> None:
        t.now += s
        c.touch()
        stop.set()  # Stop pressed during the wait

    c.sleep = sleep
    c.touch()
    assert c.give_way(stop) < 0.05
    off = _courtesy(FakeTime(), enabled=False)
    off.touch()
    assert off.give_way() == 0.0 and not off.busy


def test_courteous_stop_gives_way_on_each_check_and_passes_the_flag_through():
    t = FakeTime()
    c = _courtesy(t, quiet_s=0.3, min_run_s=0.0)
    ev = threading.Event()
    stop = CourteousStop(ev, c)
    c.touch()
    assert not stop.is_set() and c.waits == 1 and t.now >= 100.3
    stop.set()
    assert ev.is_set() and stop.is_set() and stop.wait(0)
    stop.clear()
    assert not ev.is_set()


def test_a_training_step_gives_way_between_layers():
    """StepGuard with a courtesy: the forward pass of a network pauses before each layer while the user is
    busy (here: touched before every layer), and not at all when the user is quiet."""
    t = FakeTime()
    c = _courtesy(t, quiet_s=0.3, min_run_s=0.0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))
    guard = StepGuard(None, floor_bytes=0, courtesy=c)
    guard.attach(net)
    net(torch.zeros(1, 1, 8, 8))
    assert c.waits == 0
    touch_every_layer = [m.register_forward_pre_hook(lambda *_: c.touch(), prepend=True) for m in net]
    net(torch.zeros(1, 1, 8, 8))
    assert c.waits == 3  # one pause per leaf layer
    for h in touch_every_layer:
        h.remove()
    guard.detach()
