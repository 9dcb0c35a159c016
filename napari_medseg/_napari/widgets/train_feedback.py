"""What the Train widget shows of a run: the plot and the status line.

Steps continue across rounds: Resume carries on from the last step shown, keeps the earlier rounds on the
plot and marks where the new one starts; Start begins a new plot. The status gives step k / total (total =
the steps of the rounds so far), steps per second and the time left (``training.progress``), the loss and
the last validation Dice; a second line the last validation's scores (``ValidationEvent.summary``: Dice, IoU,
sensitivity, specificity on the held-out paint; with dense masks also their Dice, IoU, surface Dice, HD95).
"""

from __future__ import annotations

import time
from typing import Any

from napari_medseg._napari.widgets.plot import LivePlot
from napari_medseg.training.progress import ProgressMeter


class RunFeedback:
    def __init__(self, plot: LivePlot, status: Any, scores: Any = None) -> None:
        self.plot = plot
        self.status = status  # a QLabel (anything with setText)
        self.scores = scores  # a QLabel for the last validation's scores, or None
        self.last_validation: str | None = None
        self.offset = 0  # steps of the earlier rounds shown on the plot
        self.last_step = 0
        self.round = 0
        self.dice: float | None = None
        self.meter: ProgressMeter | None = None

    def begin(self, *, resume: bool, steps: int, budget_s: float | None, now: float | None = None) -> None:
        """A run starts: a new plot, or (``resume`` after a round on this plot) the next round."""
        now = time.perf_counter() if now is None else now
        if resume and self.last_step > 0:
            self.offset = self.last_step
            self.round += 1
            self.plot.add_marker(self.offset, f"round {self.round}")
        else:
            self.plot.clear()
            self.offset = self.last_step = 0
            self.round = 1
            self.dice = None
        self.meter = ProgressMeter(self.offset + steps, start_t=now, budget_s=budget_s)

    def step(self, ev: Any, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        x = self.offset + int(ev.step)
        self.last_step = max(self.last_step, x)
        self.plot.add_point("loss", x, ev.loss)
        if getattr(ev, "loss_cons", None):
            self.plot.add_point("loss_cons", x, ev.loss_cons)
        if self.meter is None:
            self.meter = ProgressMeter(x, start_t=now)
        self.meter.update(x, now)
        dice = f" · val Dice {self.dice:.3f}" if self.dice is not None else ""
        self.status.setText(f"{self.meter.text(now)} · loss {ev.loss:.4f}{dice} · lr {ev.lr:.1e} · batch "
                            f"{ev.batch_size}")

    def validation(self, ev: Any) -> None:
        self.dice = float(ev.mean_dice)
        self.plot.add_point("val_dice", self.offset + int(ev.step), ev.mean_dice)
        summary = getattr(ev, "summary", None)
        self.last_validation = f"step {self.offset + int(ev.step)}: {summary()}" if summary else None
        if self.scores is not None and self.last_validation:
            self.scores.setText(f"last validation, {self.last_validation}")

    def done(self, ev: Any, checkpoint: Any) -> None:
        total = self.offset + int(ev.steps)
        rnd = f" (round {self.round}: {ev.steps} steps)" if self.offset else ""
        self.status.setText(f"done ({ev.reason}) at step {total}{rnd}; checkpoint {checkpoint}")
