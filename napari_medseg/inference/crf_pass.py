"""Edge-aware refinement of a finished whole-slide prediction, block by block (``inference.crf``).

``refine_prediction(NAME.prediction.zarr, source)`` reads the prediction's class probabilities (``probs/0``:
the prediction must have been written with probabilities, ``write_probs`` / ``--probs``) and the image at
the predicted level, refines each block with a halo of ``CRFConfig.halo`` pixels (so a block's result equals
the whole image refined at once: tile-consistent by construction; volumes slice by slice, in-plane), and
writes the refined labels over ``labels/prediction`` level 0, then rebuilds its coarser levels from level 0
(every second pixel: the predictor builds its finer overview levels from mean-pooled probabilities instead,
so the overviews of a refined, or restored, prediction may differ from a plain one's on a few pixels). Every reader of
the prediction (the napari reader, objects, accepting into the labels) then sees the refined labels; the
probabilities stay those of the model, so the original labels can always be computed again
(``refine_prediction(..., cfg=None)`` writes back the argmax of the stored probabilities: the model's labels up
to the rounding of the stored probabilities, e.g. float16).

The image's intensities are divided by their standard deviation per channel, measured once on a subsample of
the whole image (``core.source.strided_sample``: per-block statistics would make seams).

Resumption: each finished block writes ``medseg/crf/journal/<key>``; ``medseg/crf/run.json`` holds the settings
and the status. A rerun with the same settings skips finished blocks; other settings redo every block (the
labels are recomputed from the unchanged probabilities, so nothing is lost). ``labels/prediction/.zattrs``
records ``"medseg_crf"`` (the settings, or null after ``cfg=None``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.files import write_json_atomic
from napari_medseg.core.source import ImageSource, read_box, strided_sample
from napari_medseg.inference.crf import CRFConfig, refine, scaled_image
from napari_medseg.inference.output import class_labels

RUN = "medseg/crf/run.json"
MAX_SIDE = 768  # in-plane block side at most: (768 + 2 x 20)^2 px x 48 offsets x 4 B = 125 MB of kernels
JOURNAL = "medseg/crf/journal"


@dataclass(frozen=True)
class RefineProgress:
    done: int
    total: int


@dataclass(frozen=True)
class RefineDone:
    blocks: int
    resumed: int
    seconds: float
    settings: dict[str, Any] | None
    changed_pixels: int  # level-0 pixels whose label the refinement changed (in the blocks done in this run)


def _open(path: Path) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    import zarr

    mf = path / "medseg" / "run.json"
    if not path.is_dir() or not mf.is_file():
        raise MedsegError(f"{path} is not a napari-medseg prediction (NAME.prediction.zarr); predict the image first")
    manifest = json.loads(mf.read_text())
    if manifest.get("status") != "complete":
        raise MedsegError(f"{path}: the prediction is unfinished (status {manifest.get('status')!r}); finish it "
                          "(rerun the same predict command) before refining it")
    g = zarr.open_group(str(path), mode="r+")
    if "probs" not in g or "0" not in g["probs"]:
        raise MedsegError(f"{path} holds no class probabilities, which the CRF refines: predict again with "
                          "probabilities (--probs float16, or write_probs='float16')")
    lab = g["labels/prediction"]
    levels = [lab[k] for k in sorted((k for k in lab.array_keys() if k.isdigit()), key=int)]
    return g["probs/0"], lab, levels, manifest


def _check_source(source: ImageSource, manifest: dict[str, Any], shape: tuple[int, ...], path: Path) -> int:
    src = (manifest.get("job") or {}).get("source") or {}
    level = int(src.get("level", 0))
    if level >= len(source.levels) or tuple(source.level_shape(level)) != tuple(shape):
        raise MedsegError(f"{path} was predicted from another image ({src.get('name')!r}, level {level} of shape "
                          f"{tuple(src.get('level_shape') or shape)}); give the image it was predicted from")
    return level


def refine_prediction(prediction: str | os.PathLike, source: ImageSource, cfg: CRFConfig | None = CRFConfig(), *,
                      block: int | None = None, threads: int | None = None, cancel: Any = None
                      ) -> Generator[RefineProgress, None, RefineDone | None]:
    """Refine the labels of a finished prediction (see the module). ``cfg=None`` restores the model's labels.
    ``cancel`` (a ``threading.Event``) ends the pass before the next block (returns None; a rerun resumes)."""
    t0 = time.perf_counter()
    path = Path(prediction)
    probs, lab_group, levels, manifest = _open(path)
    shape = tuple(probs.shape[1:])
    level = _check_source(source, manifest, shape, path)
    schema = ClassSchema.from_dict(manifest.get("classes") or {}) if manifest.get("classes") else None
    cblock = tuple(levels[0].chunks)
    lay_block = list((manifest.get("layout") or {}).get("block") or cblock)[-len(shape):]
    # in-plane blocks of whole chunks (each chunk has one writer), at most MAX_SIDE (the kernels of a block
    # and its halo are held at once); a volume is refined slice by slice, so Z blocks are the chunks' own
    side = min(int(block or lay_block[-1]), MAX_SIDE)
    bl = tuple([*cblock[:-2], *(max(c, (side // c) * c) for c in cblock[-2:])])
    settings = None if cfg is None else {**cfg.to_dict(), "block": list(bl)}
    run_file, jdir = path / RUN, path / JOURNAL
    prev = json.loads(run_file.read_text()) if run_file.is_file() else None
    if prev is None or prev.get("settings") != settings:
        shutil.rmtree(jdir, ignore_errors=True)
    jdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, {"settings": settings, "status": "running"})
    std = None
    if cfg is not None:
        s = strided_sample(source)
        std = torch.from_numpy(s.std(axis=1)).float()
    halo = 0 if cfg is None else cfg.halo
    grid = [range(0, n, b) for n, b in zip(shape, bl)]
    keys = list(itertools.product(*grid))
    done_keys = set(os.listdir(jdir))
    total, resumed, changed = len(keys), 0, 0
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        for i, start in enumerate(keys):
            if cancel is not None and cancel.is_set():
                return None  # the journal keeps the blocks done; levels and attributes come at the end of a rerun
            key = "_".join(str(v) for v in start)
            if key in done_keys:
                resumed += 1
                continue
            core = tuple((a, min(a + b, n)) for a, b, n in zip(start, bl, shape))
            win = tuple(c if ax < len(shape) - 2 else (max(0, c[0] - halo), min(n, c[1] + halo))
                        for ax, (c, n) in enumerate(zip(core, shape)))  # in-plane halo only
            p = torch.from_numpy(np.asarray(probs[(slice(None), *(slice(a, b) for a, b in win))]).astype(np.float32))
            total_p = p.sum(0)
            valid = total_p > 0
            p = torch.where(valid, p / total_p.clamp_min(1e-12), p)
            if cfg is not None and bool(valid.any()):
                img = scaled_image(torch.from_numpy(read_box(source, level, win).astype(np.float32)), std)
                if len(shape) == 2:
                    q = refine(p, img, cfg, valid)
                else:  # slice by slice, in-plane: the slice spacing of a volume is rarely the in-plane one
                    q = torch.stack([refine(p[:, z], img[:, z], cfg, valid[z]) for z in range(p.shape[1])], 1)
            else:
                q = p
            inner = tuple(slice(a - w, b - w) for (a, b), (w, _) in zip(core, win))
            new = class_labels(q[(slice(None), *inner)], schema).numpy()
            sl = tuple(slice(a, b) for a, b in core)
            changed += int((np.asarray(levels[0][sl]) != new).sum())
            levels[0][sl] = new
            (jdir / key).touch()
            yield RefineProgress(i + 1, total)
        _rebuild_levels(levels)
    finally:
        if threads:
            torch.set_num_threads(old_threads)
    lab_group.attrs["medseg_crf"] = settings
    write_json_atomic(run_file, {"settings": settings, "status": "complete"})
    return RefineDone(total, resumed, time.perf_counter() - t0, settings, changed)


def _rebuild_levels(levels: list[Any], strip: int = 2048) -> None:
    """Levels 1.. from level 0, every second pixel of the plane (as the predictor builds its coarsest levels)."""
    for k in range(1, len(levels)):
        src, dst = levels[k - 1], levels[k]
        h = src.shape[-2]
        for y0 in range(0, h, strip):
            part = np.asarray(src[..., y0:min(h, y0 + strip), :])[..., ::2, ::2]
            y = y0 // 2
            dst[..., y:y + part.shape[-2], :part.shape[-1]] = part[..., : dst.shape[-2] - y, : dst.shape[-1]]


def run_refine(*args: Any, on_event: Any = None, **kw: Any) -> RefineDone:
    from napari_medseg.core.events import drive

    return drive(refine_prediction(*args, **kw), on_event)
