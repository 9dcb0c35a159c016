"""Crafted files for the safe-loading checks: a checkpoint whose pickle runs code when unpickled the unsafe
way, and a zarr whose chunks are pickles. Each writes a marker file *only* if its code runs."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: the proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def write_malicious_checkpoint(path: Path, marker: Path, *, looks_valid: bool = True) -> Path:
    """A ``torch.save`` file that looks like a napari-medseg checkpoint (format marker, description, weights)
    but carries an object whose unpickling creates ``marker``. ``torch.load(weights_only=False)`` would
    run it; ``weights_only=True`` must refuse the file."""
    import torch
    from faults_lib import tiny_checkpoint

    payload: dict[str, Any]
    if looks_valid:
        good = tiny_checkpoint(path.with_name(path.stem + "-template.pt"))
        payload = torch.load(good, weights_only=True)
        good.unlink()
        good.with_suffix(".json").unlink(missing_ok=True)
    else:
        payload = {}
    payload["optimizer_state"] = {"state": {}, "hook": _RunsCode(marker)}
    torch.save(payload, path)
    return path


def write_pickle_zarr(path: Path, marker: Path) -> Path:
    """A zarr v2 NGFF image whose array has object dtype and the ``pickle`` codec: decoding a chunk would
    unpickle ``_RunsCode``."""
    import numcodecs
    import numpy as np

    (path / "0" / "0").mkdir(parents=True, exist_ok=True)
    arr = np.empty((2, 2), dtype=object)
    arr[:] = _RunsCode(marker)
    (path / "0" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2, 2], "chunks": [2, 2], "dtype": "|O", "compressor": None,
        "fill_value": None, "filters": [{"id": "pickle"}], "order": "C", "dimension_separator": "/"}))
    (path / "0" / "0" / "0").write_bytes(numcodecs.Pickle().encode(arr))
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (path / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4", "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}]}]}))
    return path


def unsafe_load_runs_code(path: Path, marker: Path) -> bool:
    """Control: the crafted checkpoint really does run code when loaded unsafely (so a 'nothing ran' result
    means something). Removes the marker again."""
    import torch

    with contextlib.suppress(Exception):  # only the side effect matters
        torch.load(path, weights_only=False)
    ran = marker.exists()
    if ran:
        os.unlink(marker)
    return ran


__all__ = ["unsafe_load_runs_code", "write_malicious_checkpoint", "write_pickle_zarr"]
