"""Events yielded by ``predict`` (and by ``distributed.predict_many``), and its final result.

The GUI adapts the generator with a napari thread worker and shows ``BlockDone`` progress; the CLI draws
progress bars from the same events. Regions are in pixels of the predicted level (spatial axes only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PredictEvent:
    """Base class of every event ``predict`` yields."""


@dataclass(frozen=True)
class TissueMaskReady(PredictEvent):
    """The tissue mask used to skip background (``mask`` is a ``TissueMask``); shown to the user as a layer."""

    mask: Any
    out: Path | None = None


@dataclass(frozen=True)
class PredictStart(PredictEvent):
    """``total_blocks`` blocks hold tissue and will be (or were) predicted; ``skipped_blocks`` hold none.

    ``resumed_blocks`` of the total were finished by an earlier run of the same job and are not redone.
    ``shape`` is the spatial shape of the predicted level.
    """

    total_blocks: int
    skipped_blocks: int
    out: Path
    level: int
    shape: tuple[int, ...]
    resumed_blocks: int = 0
    name: str = ""


@dataclass(frozen=True)
class BlockDone(PredictEvent):
    """Block ``done`` of ``total`` is written; ``region`` its pixels (slices of the predicted level)."""

    done: int
    total: int
    region: tuple[slice, ...]
    mpix_s: float
    eta_s: float
    name: str = ""


@dataclass(frozen=True)
class PredictWarning(PredictEvent):
    message: str
    name: str = ""


@dataclass(frozen=True)
class Refining(PredictEvent):
    """The edge-aware refinement (``predict(crf=...)``, ``inference.crf_pass``): ``done`` of ``total`` blocks."""

    done: int
    total: int
    name: str = ""


@dataclass(frozen=True)
class PredictDone(PredictEvent):
    out: Path
    blocks_done: int
    seconds: float
    mpix_s: float
    cancelled: bool = False
    name: str = ""


@dataclass(frozen=True)
class PredictFailed(PredictEvent):
    """An input could not be predicted (``predict_many(..., keep_going=True)`` only; the others go on).

    ``source``: the input as given (a path, or the source's path or name); ``message``: the cause, one line.
    ``out`` is left as it was: unfinished outputs are marked interrupted and resume on a rerun."""

    source: str
    out: Path
    message: str
    name: str = ""


@dataclass
class PredictResult:
    """What ``predict`` returns (``StopIteration.value``; ``run_predict`` hands it back directly)."""

    out: Path
    level: int
    shape: tuple[int, ...]
    blocks_total: int
    blocks_done: int
    blocks_skipped: int
    blocks_resumed: int
    seconds: float
    mpix_s: float
    cancelled: bool = False
    windows_computed: int = 0
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
