"""Stop interrupts a step between layers (forward and backward), a wait for data and a preview; RAM running
out halves the batch like a GPU out-of-memory; validation comes early enough to be a curve."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers import drain

from napari_medseg.models.checkpoint import load_checkpoint
from napari_medseg.training import DoneEvent, PreviewEvent, StepEvent, ValidationEvent, WarningEvent, train
from napari_medseg.training import guard as guard_mod
from napari_medseg.training import loop as loop_mod
from napari_medseg.training.loop import validation_due
from napari_medseg.training.run_state import Run

from ._synth import blob_data, tiny_cfg


def _long(tmp_path, **kw):
    return tiny_cfg(tmp_path, steps=10**6, val_every=10**6, val_first=0, **kw)


def _first_leaf(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in model.modules() if next(m.children(), None) is None)


def _training_forwards(model: torch.nn.Module, on_call) -> None:
    """Call ``on_call(n)`` at the n-th forward pass with gradients (a training step; previews and validation
    run under inference mode), from a pre-hook on the first layer registered before the guard's."""
    count = [0]

    def pre(_m, _args):
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            count[0] += 1
            on_call(count[0])

    _first_leaf(model).register_forward_pre_hook(pre)


def test_stop_interrupts_the_forward_pass_of_a_step(tmp_path, monkeypatch):
    stop = threading.Event()
    built: list[torch.nn.Module] = []
    real_build = loop_mod.build_model

    def build(cfg):
        m = real_build(cfg)
        built.append(m)
        _training_forwards(m, lambda n: stop.set() if n == 3 else None)
        return m

    monkeypatch.setattr(loop_mod, "build_model", build)
    events, res = drain(train(_long(tmp_path), blob_data(), stop=stop))
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.reason == "stopped"
    # step 3 began (its forward pass set the flag) but never finished: the run ends after 2 whole steps
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2] and done.steps == 2
    assert load_checkpoint(done.last_checkpoint).meta["step"] == 2
    assert built and res.model is built[0]


def test_stop_interrupts_the_backward_pass_without_an_update(tmp_path, monkeypatch):
    stop = threading.Event()
    built: list[torch.nn.Module] = []
    real_build = loop_mod.build_model
    after_step_2: dict[str, torch.Tensor] = {}

    def build(cfg):
        m = real_build(cfg)
        built.append(m)

        armed = []

        def output(_m, _a, out):  # at step 3, Stop comes with the first gradient of the backward pass
            if armed == [3]:
                armed.append("done")
                out.register_hook(lambda _g: stop.set())

        m.register_forward_hook(output)
        _training_forwards(m, lambda n: armed.append(n) if n == 3 else None)
        return m

    monkeypatch.setattr(loop_mod, "build_model", build)
    seen = []
    for ev in train(_long(tmp_path), blob_data(), stop=stop):
        seen.append(ev)
        if isinstance(ev, StepEvent) and ev.step == 2:
            after_step_2 = {k: v.clone() for k, v in built[0].state_dict().items()}
    done = seen[-1]
    assert isinstance(done, DoneEvent) and done.reason == "stopped" and done.steps == 2
    saved = load_checkpoint(done.last_checkpoint).state_dict
    # the interrupted step changed nothing: the checkpoint holds the weights of step 2
    assert all(torch.equal(saved[k], after_step_2[k]) for k in after_step_2)


def test_stop_while_a_batch_is_being_read(tmp_path, monkeypatch):
    stop, release = threading.Event(), threading.Event()
    real = Run.make_batch

    def slow(self, index):
        if index == 0:  # the first batch never comes before the run is stopped
            stop.set()
            release.wait(60)
        return real(self, index)

    monkeypatch.setattr(Run, "make_batch", slow)
    try:
        events, _ = drain(train(_long(tmp_path, num_workers=1), blob_data(), stop=stop))
        assert not release.is_set()  # the run ended while the read was still blocked
    finally:
        release.set()
    done = events[-1]
    assert done.reason == "stopped" and done.steps == 0


def test_stop_during_a_preview_interrupts_it_quietly(tmp_path):
    stop = threading.Event()
    finished: list[int] = []

    def hook(model, average, step):
        if step == 2:
            stop.set()
        model(torch.zeros(1, 1, 32, 32))  # a prediction with the model being trained
        finished.append(step)
        return step

    events, _ = drain(train(_long(tmp_path), blob_data(), stop=stop, preview_hook=hook, preview_every_s=0.0))
    assert finished == [1]  # the preview at step 2 was cut short
    assert [e.payload for e in events if isinstance(e, PreviewEvent)] == [1]
    assert not [e for e in events if isinstance(e, WarningEvent) and "preview" in e.message]
    assert events[-1].reason == "stopped" and events[-1].steps == 2


def test_ram_running_out_mid_step_halves_the_batch(tmp_path, monkeypatch):
    low = {"on": False, "done": False}
    real_build = loop_mod.build_model

    def build(cfg):
        m = real_build(cfg)

        def at(n):
            if n == 3 and not low["done"]:
                low["on"] = low["done"] = True
        _training_forwards(m, at)
        return m

    def available():
        if low["on"]:
            low["on"] = False
            return 0
        return 1 << 40

    monkeypatch.setattr(loop_mod, "build_model", build)
    monkeypatch.setattr(guard_mod, "available_ram", available)
    monkeypatch.setattr(guard_mod.StepGuard, "check", _check_every_time(guard_mod.StepGuard.check))
    events, res = drain(train(tiny_cfg(tmp_path, steps=5, batch_size=4, val_first=0), blob_data()))
    warn = [e.message for e in events if isinstance(e, WarningEvent) and "out of memory" in e.message]
    assert len(warn) == 1 and "RAM" in warn[0] and "continuing with 2" in warn[0]
    assert [e.batch_size for e in events if isinstance(e, StepEvent)] == [4, 4, 2, 2, 2] and res.steps == 5


def _check_every_time(check):
    def run(self):
        self._next_mem = 0.0  # read the RAM at every layer (the test's fake reading is instant)
        return check(self)
    return run


def test_the_trained_model_is_handed_back_without_the_guard(tmp_path):
    stop = threading.Event()
    seen: list = []

    def stop_at_2(ev):
        seen.append(ev)
        if isinstance(ev, StepEvent) and ev.step == 2:
            stop.set()

    res = loop_mod.run_training(_long(tmp_path), blob_data(), on_event=stop_at_2, stop=stop)
    assert res.reason == "stopped" and res.steps == 2
    # the flag is still set, yet the returned model predicts (no leftover hook raises)
    with torch.inference_mode():
        assert res.model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_validation_due_early_then_every_val_every():
    from napari_medseg.training import TrainConfig

    c = TrainConfig(val_every=100, val_first=10)
    assert [s for s in range(1, 401) if validation_due(c, s)] == [10, 20, 40, 80, 100, 200, 300, 400]
    assert [s for s in range(1, 201) if validation_due(c.replace(val_first=0), s)] == [100, 200]
    assert [s for s in range(1, 13) if validation_due(c.replace(val_every=6, val_first=1), s)] == [1, 2, 4, 6, 12]


def test_validation_is_a_curve_from_the_first_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_mod, "EARLY_VAL_MAX_SHARE", float("inf"))  # the cost rule has its own test
    cfg = tiny_cfg(tmp_path, steps=12, val_every=100, val_first=2, val_fraction=0.3)
    events, _ = drain(train(cfg, blob_data((128, 128), fraction=0.05)))
    assert [e.step for e in events if isinstance(e, ValidationEvent)] == [2, 4, 8, 12]


def test_early_validations_are_skipped_while_they_cost_too_much(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_mod, "EARLY_VAL_MAX_SHARE", 0.0)  # any cost is too much: only the first runs
    cfg = tiny_cfg(tmp_path, steps=12, val_every=100, val_first=2, val_fraction=0.3)
    events, _ = drain(train(cfg, blob_data((128, 128), fraction=0.05)))
    assert [e.step for e in events if isinstance(e, ValidationEvent)] == [2, 12]


@pytest.mark.parametrize("bad", [-1])
def test_val_first_must_not_be_negative(bad):
    from napari_medseg.core.errors import MedsegError
    from napari_medseg.training import TrainConfig

    with pytest.raises(MedsegError, match="val_first"):
        TrainConfig(val_first=bad)
