"""Interrupt a training step from inside the network: Stop and a host-memory floor, checked between layers.

``loop.train`` checks its stop flag between steps; a step that takes minutes (a large 3D patch on a CPU)
would make Stop wait for it, and a step that needs more RAM than the machine has is killed by the system
before any Python error can be raised. A ``StepGuard`` puts a check on every leaf module of the networks:
before each layer's forward pass and when each layer's gradient is computed in the backward pass. The check
raises ``StopRequested`` when the stop flag is set (after giving way to the user where a ``core.courtesy.Courtesy``
is given: the step pauses between two layers while the user pans, zooms or paints), and ``HostOutOfMemory`` (an out-of-memory error: the loop
halves the batch, as on a GPU) when the system's available RAM falls below a floor. The memory is read at
most every ``every_s`` seconds; the flag on every call (a few hundred cheap calls per step).

The previews and validations run the same modules, so Stop interrupts them too. ``detach`` removes every hook
(the trained model is handed back clean).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch
import torch.nn as nn

from napari_medseg.core.courtesy import Courtesy

log = logging.getLogger(__name__)

MIB = 1 << 20


class StopRequested(Exception):
    """The run's stop flag was set while a step, a preview or a validation was running."""


class HostOutOfMemory(RuntimeError):
    """The system's available RAM fell below the guard's floor during a step (reads as out of memory)."""


def available_ram() -> int:
    """Bytes of RAM the system can still give (``psutil.virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def default_floor() -> int:
    """The RAM to leave free: 5 % of the machine, between 256 MiB and 1 GiB."""
    import psutil

    return int(min(1024 * MIB, max(256 * MIB, 0.05 * psutil.virtual_memory().total)))


class StepGuard:
    """Checks ``stop`` and the available RAM between layers (see the module docstring)."""

    def __init__(self, stop: threading.Event | None, floor_bytes: int | None = None, every_s: float = 0.05,
                 available: Any = None, courtesy: Courtesy | None = None) -> None:
        self.stop = stop
        self.courtesy = courtesy  # gives way to the user between layers (core.courtesy)
        self.floor = default_floor() if floor_bytes is None else int(floor_bytes)
        self.every_s = every_s
        self.available = available
        self._next_mem = 0.0
        self._handles: list[Any] = []

    def check(self) -> None:
        if self.courtesy is not None:
            self.courtesy.give_way(self.stop)
        if self.stop is not None and self.stop.is_set():
            raise StopRequested("stopped")
        if self.floor <= 0:
            return
        now = time.monotonic()
        if now < self._next_mem:
            return
        self._next_mem = now + self.every_s
        free = (self.available or available_ram)()
        if free < self.floor:
            raise HostOutOfMemory(f"out of memory: only {free / MIB:.0f} MiB of RAM left on this machine "
                                  f"(the guard keeps {self.floor / MIB:.0f} MiB free)")

    # -- hooks ----------------------------------------------------------------------------------------
    def _pre(self, _module: nn.Module, _args: Any) -> None:
        self.check()

    def _grad(self, _grad: torch.Tensor) -> None:
        self.check()

    def _post(self, _module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._grad)

    def attach(self, module: nn.Module | None) -> None:
        """Hook every leaf module of ``module`` (None: nothing)."""
        if module is None:
            return
        for m in module.modules():
            if next(m.children(), None) is None:
                self._handles.append(m.register_forward_pre_hook(self._pre))
                self._handles.append(m.register_forward_hook(self._post))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> StepGuard:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()
