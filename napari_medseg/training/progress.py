"""How far a run is and how long it still takes: step k / total, steps per second, time left.

``ProgressMeter`` is fed the step numbers and the (wall-clock) times they were seen, so the rate includes
everything a run spends time on (validation, previews, checkpoints); it averages over the last ``window``
steps. Pure: the GUI and the command line can both show it.
"""

from __future__ import annotations

from collections import deque


def format_duration(s: float) -> str:
    """``45 s``, ``3 min 10 s``, ``1 h 05 min``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s" if m < 10 else f"{m} min"
    h, m = divmod(int(round(s / 60)), 60)
    return f"{h} h {m:02d} min"


class ProgressMeter:
    """Steps ``first..total`` of a run that started at ``start_t`` with an optional time budget."""

    def __init__(self, total: int, *, start_t: float, budget_s: float | None = None, window: int = 20) -> None:
        self.total = int(total)
        self.start_t = float(start_t)
        self.budget_s = budget_s
        self.seen: deque[tuple[int, float]] = deque(maxlen=max(2, window + 1))
        self.step = 0

    def update(self, step: int, t: float) -> None:
        self.step = int(step)
        self.seen.append((int(step), float(t)))

    @property
    def rate(self) -> float | None:
        """Steps per second over the recent steps (None before two steps)."""
        if len(self.seen) < 2:
            return None
        (s0, t0), (s1, t1) = self.seen[0], self.seen[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def eta_s(self, t: float) -> float | None:
        """Seconds left: the remaining steps at the recent rate, or what is left of the time budget if less."""
        left = []
        if self.rate:
            left.append(max(0, self.total - self.step) / self.rate)
        if self.budget_s:
            left.append(max(0.0, self.budget_s - (t - self.start_t)))
        return min(left) if left else None

    def text(self, t: float) -> str:
        """``step 120 / 2000 · 1.8 steps/s · 17 min left``."""
        parts = [f"step {self.step} / {self.total}"]
        r = self.rate
        if r:
            parts.append(f"{r:.2g} steps/s" if r < 10 else f"{r:.0f} steps/s")
        eta = self.eta_s(t)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return " · ".join(parts)
