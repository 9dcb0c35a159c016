"""A prediction job: everything resolved and checked before any output is written.

``make_job`` opens the source and the model, checks channels and window size, chooses the level, the
window grid and the blocks, and computes the tissue mask. The job's ``identity`` (source, model hash and
the settings that change the result) is stored in the output's manifest: a rerun of the same job resumes,
another job is refused. ``Job.run_blocks`` predicts a set of blocks into the output store; the local
predictor runs all of them, each Dask task a share.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.compute import materialize
from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.core.tissue import TissueMask, compute_tissue_mask
from napari_medseg.inference.batching import check_batch_size, resolve_batch_size
from napari_medseg.inference.blocks import TileReader
from napari_medseg.inference.engine import BlockEngine, FinishedBlock
from napari_medseg.inference.modelrun import (
    LoadedModel,
    WindowRunner,
    check_model_input,
    default_norm,
    fit_window,
    model_window,
    norm_for,
    resolve_model,
    scaled_window,
    tta_identity,
    tta_mode,
    tta_windows,
)
from napari_medseg.inference.output import Layout, OutputStore
from napari_medseg.inference.tiling import BlockGrid, BlockPlan, WindowGrid, default_block, plan_blocks
from napari_medseg.models.devices import resolve_device
from napari_medseg.models.normalization import NormConfig

log = logging.getLogger(__name__)
PROBS = (None, "uint8", "float16", "float32")


def open_source(source: ImageSource | str | Path, kind: str = "auto") -> ImageSource:
    """``source`` itself, or the image at that path (``kind="image"``: even where its values look like labels)."""
    if isinstance(source, ImageSource):
        return source
    from napari_medseg.io.reader import open_image

    return open_image(source, kind=kind)


def fingerprint(source: ImageSource, max_bytes: int = 64 << 20) -> str:
    """sha1 of the smallest level that fits ``max_bytes`` (cheap; tells two images apart)."""
    h = hashlib.sha1()
    for lvl in reversed(source.levels):
        nbytes = int(np.prod(lvl.shape)) * np.dtype(lvl.dtype).itemsize
        if nbytes <= max_bytes:
            try:
                h.update(np.ascontiguousarray(materialize(lvl)).tobytes())
            except Exception as e:  # an unreadable tile: the run reports it with its position
                log.warning("could not read the smallest level for the image fingerprint: %s", e)
                h.update(b"unreadable")
            break
    h.update(str([tuple(lv.shape) for lv in source.levels]).encode())
    return h.hexdigest()


def resolve_tissue(tissue_mask: bool | str | TissueMask, source: ImageSource) -> str | TissueMask | None:
    """None (off), a method name, or a given mask."""
    if isinstance(tissue_mask, TissueMask):
        return tissue_mask
    if tissue_mask is False or tissue_mask is None or tissue_mask in ("off", "none", "false"):
        return None
    if source.spatial_dims != 2:
        if tissue_mask == "auto":
            return None
        raise MedsegError("tissue masks are for 2D slides; predict volumes with tissue_mask off")
    if tissue_mask == "auto":
        return "auto" if (source.rgb or source.modality in ("brightfield", "fluorescence")) else None
    if tissue_mask is True or tissue_mask == "on":
        return "auto"
    return str(tissue_mask)


#: "auto": mixed precision on a GPU, float32 on the CPU; "fp32": float32 everywhere; "bf16": bfloat16 autocast
#: on the CPU too (fast where the CPU computes bfloat16 natively: AMX or AVX512-BF16; docs/deployment.md)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class Job:
    source: ImageSource
    model: LoadedModel
    level: int
    window: tuple[int, ...]
    overlap: float
    blend: str
    tta: bool | str
    norm: NormConfig
    classes: ClassSchema
    write_probs: str | None
    device: torch.device
    amp: bool
    batch_size: int | str  # or "auto": from the device when the run starts (``batching.resolve_batch_size``)
    on_corrupt: str
    sigma_scale: float
    grid: WindowGrid
    blocks: BlockGrid
    tissue: TissueMask | None
    tissue_blocks: list[tuple[int, ...]]
    identity: dict[str, Any]
    layout: Layout
    stats: dict[str, Any] = field(default_factory=dict)
    scaled_windows: tuple[tuple[int, ...], ...] = ()  # multi-scale TTA's model windows (modelrun.tta_windows)
    streams: int = 1  # CPU: batches through the model at once, one torch thread each (``resolve_streams``)
    cpu_bf16: bool = False  # precision "bf16" on the CPU: the model under bfloat16 autocast
    zoom_window: tuple[int, ...] | None = None  # the model's window when zoomed (``make_job``'s ``zoom``)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.grid.shape

    def keep_window(self):
        if self.tissue is None:
            return None
        ds = self.source.level_downsample(self.level)
        return lambda box: self.tissue.any_tissue(box, ds)

    def pixel_mask(self):
        """The tissue mask at a block's pixels (``TissueMask.pixels``), or None without a mask: nothing is
        written outside it."""
        if self.tissue is None:
            return None
        ds = self.source.level_downsample(self.level)
        return lambda box: self.tissue.pixels(box, ds)

    def plan(self, todo: list[tuple[int, ...]]) -> BlockPlan:
        return plan_blocks(self.grid, self.blocks, todo, self.keep_window())

    def run_blocks(self, store: OutputStore, todo: list[tuple[int, ...]], cancel: threading.Event | None = None,
                   reader: TileReader | None = None) -> Iterator[FinishedBlock | str]:
        """Predict ``todo`` blocks into ``store``; yields each block once queued for writing, and warnings."""
        plan = self.plan(todo)
        band = self.blocks.block[0] + self.window[0] if len(self.window) == 2 else None
        reader = reader or TileReader(self.source, self.level, on_corrupt=self.on_corrupt, band=band)
        md = self.model.spatial_dims or len(self.window)
        squeeze = 0 if md < len(self.window) else None
        auto = self.batch_size == "auto"
        runner = WindowRunner(self.model.module, self.device, batch_size=1 if auto else int(self.batch_size),
                              amp=self.amp, cpu_bf16=self.cpu_bf16, tta=self.tta,
                              model_dims=md, squeeze_axis=squeeze, scaled_windows=self.scaled_windows,
                              zoom_window=self.zoom_window)
        if auto:  # measured once per job, with the runner that will run it (precision, TTA, layout)
            if "batch_size" not in self.stats:
                self.stats["batch_size"] = resolve_batch_size("auto", runner, (self.source.n_channels,
                                                                                 *self.window))
            runner.batch_size = int(self.stats["batch_size"])
        else:
            self.stats["batch_size"] = int(self.batch_size)
        engine = BlockEngine(plan, reader, runner, self.norm, self.classes.n_classes, sigma_scale=self.sigma_scale,
                             pixel_mask=self.pixel_mask(), streams=self.streams)
        threads = torch.get_num_threads()
        if engine.streams > 1:
            torch.set_num_threads(1)  # each stream one thread (process-wide; restored below)
        try:
            for item in engine.run(cancel):
                if isinstance(item, FinishedBlock):
                    store.write_block(self.blocks.key(item.bidx), item.box, item.probs, on_done=engine.release)
                yield item
            store.flush()
        finally:
            if engine.streams > 1:
                torch.set_num_threads(threads)
            if self.model.was_training:  # hand a model being trained back in training mode
                self.model.module.train()
            self.stats.update({"windows": engine.stats.windows, "windows_skipped_tissue": plan.skipped_windows,
                               "windows_bad": engine.stats.windows_bad, "model_s": round(engine.stats.model_s, 3),
                               "blend_s": round(engine.stats.blend_s, 3),
                               "wait_read_s": round(engine.stats.wait_read_s, 3), **reader.stats()})


def make_job(source: ImageSource | str | Path, model: torch.nn.Module | str | Path | LoadedModel, *,
             norm: NormConfig | None = None, classes: ClassSchema | None = None, level: int = 0,
             pixel_size: float | None = None, window: tuple[int, ...] | None = (512, 512), overlap: float = 0.25,
             batch_size: int | str = "auto", blend: str = "gaussian", tta: bool | str = False, zoom: float | str = 1.0,
             tissue_mask: bool | str | TissueMask = "auto", write_probs: str | None = None, device: str = "auto",
             amp: bool = True, on_corrupt: str = "stop", block: tuple[int, ...] | None = None,
             sigma_scale: float = 0.125, backend: str = "torch", streams: int | str = 1,
             precision: str = "auto") -> Job:
    src = open_source(source)
    if precision not in PRECISIONS:
        raise MedsegError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and backend != "torch":
        raise MedsegError(f"precision 'bf16' is a PyTorch path; the {backend} backend runs its own precision")
    if pixel_size is not None:
        level = src.level_for_pixel_size(float(pixel_size))
    if not 0 <= int(level) < len(src.levels):
        raise MedsegError(f"level {level} does not exist; the image has levels 0..{len(src.levels) - 1}")
    level = int(level)
    if write_probs not in PROBS:
        raise MedsegError(f"write_probs must be one of {', '.join(map(repr, PROBS))}; got {write_probs!r}")
    if on_corrupt not in ("stop", "skip"):
        raise MedsegError(f"on_corrupt must be 'stop' or 'skip', got {on_corrupt!r}")
    batch_size = check_batch_size(batch_size)
    if backend != "torch" and isinstance(model, LoadedModel):
        raise MedsegError(f"the {backend} backend converts a checkpoint file; this model is already loaded: "
                          "convert it first (inference.backends.backend_model) or pass the checkpoint's path")
    if backend != "torch":  # ONNX Runtime: the converted file (cached)
        from napari_medseg.inference.backends import backend_model

        model = backend_model(model, backend, source=src, level=level,
                              window=None if window is None else tuple(window) if not isinstance(window, int) else (window,) * 3)
    loaded = model if isinstance(model, LoadedModel) else resolve_model(model, norm=norm, classes=classes)
    norm = norm_for(norm or loaded.norm or default_norm(src), src)
    dev = resolve_device(device)
    if window is None:
        window = fit_window(loaded, (96, 96, 96) if loaded.spatial_dims == 3 else (512, 512))
    win = model_window(loaded, src, tuple(window) if not isinstance(window, int) else (window,) * src.spatial_dims)
    if tta_mode(tta) == "dihedral" and (sum(w > 1 for w in win) != 2 or len({w for w in win if w > 1}) != 1):
        raise MedsegError(f"rotation TTA (dihedral) needs square 2D windows; the window is {win}: use flips")
    out_ch = check_model_input(loaded, src, win, dev, norm)
    scaled: tuple[tuple[int, ...], ...] = ()
    if tta_mode(tta) == "multiscale":
        md = loaded.spatial_dims or len(win)
        scaled = tta_windows(loaded, win[len(win) - md:])
        for w in scaled:  # a model exported for one window size refuses the others here, before any work
            check_model_input(loaded, src, win[:len(win) - md] + w, dev, norm)
    classes = classes or loaded.classes or ClassSchema.default(out_ch)
    if out_ch != classes.n_classes:
        raise MedsegError(f"the model predicts {out_ch} channels (classes with background) but the class schema "
                          f"names {classes.n_classes}; pass the model's class schema")
    shape = src.level_shape(level)
    grid = WindowGrid(shape, win, float(overlap), blend)
    md = loaded.spatial_dims or len(win)
    blk = tuple(int(b) for b in block) if block is not None else default_block(win, grid.intervals, shape, md)
    blocks = BlockGrid(shape, blk)
    tissue_spec = resolve_tissue(tissue_mask, src)
    tm = tissue_spec if isinstance(tissue_spec, TissueMask) else (
        compute_tissue_mask(src, method=tissue_spec) if tissue_spec else None)
    ds = src.level_downsample(level)
    measured = None
    if isinstance(zoom, str) and zoom.strip().lower() == "auto":  # objects measured on a sample (zoom_estimate)
        from napari_medseg.inference.zoom_estimate import estimate_zoom

        zoom, measured = estimate_zoom(src, loaded, level, norm, tm, dev)
        zoom = round(zoom, 2)  # a resumed run measures again: float rounding must not make it another job
    zoom_win = _zoom_window(loaded, src, win, dev, norm, zoom, tta)
    if tm is not None:
        tissue_blocks = [b for b in blocks.indices() if tm.any_tissue(blocks.box(b), ds)]
    else:
        tissue_blocks = list(blocks.indices())
    p0 = src.pixel_size
    layout = Layout(shape=shape, block=blk, pixel_size=tuple(src.level_pixel_size(level)),
                    translation=tuple((d - 1) / 2 * p for d, p in zip(ds, p0)), unit=src.unit,
                    n_classes=classes.n_classes, write_probs=write_probs)
    identity = {
        "source": {"path": str(Path(src.path).resolve()) if src.path else None, "name": src.name,
                   "shape": list(src.shape), "level": level, "level_shape": list(shape), "dtype": str(src.dtype),
                   "axes": src.axes, "fingerprint": fingerprint(src)},
        "model": loaded.model_hash,
        "settings": {"window": list(win), "overlap": float(overlap), "blend": blend, "tta": tta_identity(tta),
                     "sigma_scale": sigma_scale, "norm": norm.to_dict(), "classes": classes.to_dict(),
                     "write_probs": write_probs, "block": list(blk),
                     "tissue": None if tm is None else {"method": tm.method, "level": tm.level,
                                                        "threshold": tm.threshold,
                                                        "sha1": hashlib.sha1(np.packbits(tm.mask).tobytes()).hexdigest()}},
    }
    cpu_bf16 = precision == "bf16" and dev.type == "cpu"
    if cpu_bf16:  # other numbers than float32: another job (a resumed run never mixes the two)
        identity["settings"]["precision"] = "bf16"
    if zoom_win is not None:  # the model saw another scale: another job (a resumed run never mixes two)
        identity["settings"]["zoom"] = float(zoom)
    amp = bool(amp) and precision != "fp32"
    job = Job(src, loaded, level, win, float(overlap), blend, tta_mode(tta), norm, classes, write_probs, dev, amp,
               batch_size, on_corrupt, sigma_scale, grid, blocks, tm, tissue_blocks, identity, layout,
               scaled_windows=scaled, streams=resolve_streams(streams, dev, loaded.module), cpu_bf16=cpu_bf16,
               zoom_window=zoom_win)
    job.stats["zoom"] = float(zoom)
    if measured is not None or loaded.object_diameter is not None:
        job.stats["object_diameter_px"] = {"learnt": loaded.object_diameter, "here": measured}
    return job


#: the zooms a prediction takes (the model's window at most 4x larger or smaller than the image's)
ZOOM_RANGE = (0.25, 4.0)


def _zoom_window(loaded: LoadedModel, src: ImageSource, win: tuple[int, ...], dev: torch.device,
                 norm: NormConfig, zoom: float, tta: bool | str) -> tuple[int, ...] | None:
    """The model's window for ``zoom`` (None at 1: no resampling), checked against the model like the window."""
    try:
        zoom = float(zoom)
    except (TypeError, ValueError):
        raise MedsegError(f"zoom must be a number or 'auto', got {zoom!r}") from None
    lo, hi = ZOOM_RANGE
    if not lo <= zoom <= hi:  # also refuses NaN
        raise MedsegError(f"zoom must be between {lo} and {hi} (1 = the image as it is; 2 = objects shown to the "
                          f"model twice as large), got {zoom}")
    if zoom == 1.0:
        return None
    if tta_mode(tta) == "multiscale":
        raise MedsegError("a zoom and multi-scale TTA do not combine; choose one")
    md = loaded.spatial_dims or len(win)
    zw = scaled_window(loaded, win[len(win) - md:], zoom, "a zoom")
    check_model_input(loaded, src, win[:len(win) - md] + zw, dev, norm)
    return zw


def resolve_streams(streams: int | str, device: torch.device, module: torch.nn.Module | None = None) -> int:
    """Model streams of a prediction: ``"auto"`` is the torch thread count on the CPU (each stream then runs
    with one thread: small models and the work around them keep two cores busier that way, see
    docs/prediction.md), else 1; an integer >= 1 is taken as is on the CPU. A GPU always runs one stream, and
    ``"auto"`` runs one for an ONNX model (onnxruntime has its own thread pool, sized when it was opened)."""
    if streams == "auto":
        from napari_medseg.sharing.package_model import OnnxModule

        onnx = module is not None and any(isinstance(m, OnnxModule) for m in module.modules())
        n = 1 if onnx else torch.get_num_threads()
    elif isinstance(streams, bool) or not isinstance(streams, int | np.integer) or int(streams) < 1:
        raise MedsegError(f"streams must be 'auto' or an integer >= 1, got {streams!r}")
    else:
        n = int(streams)
    return n if device.type == "cpu" else 1
