"""``napari-medseg predict CHECKPOINT INPUT... --out DIR``: tiled prediction of slides or volumes.

CHECKPOINT is any model file napari-medseg opens or the name of a model in the library (``napari-medseg models``).

Each input (a path, a folder, or a glob such as ``'slides/*.svs'``) is written to
``DIR/<name>.prediction.zarr``; a folder that is not itself a zarr or a DICOM series stands for the files
in it that napari-medseg reads. Progress bars per slide. An input that fails (unreadable, labels instead of
an image, refused by the model...) gets one ``napari-medseg predict: error:`` line saying why, the others
go on, and with several inputs a summary at the end lists the failures; the exit status is then 2 (1 when some outputs are only unfinished, 0 when all are
complete). ``--input-kind image`` reads every input as an image even where its values look like labels.
``--workers N`` starts a local ``dask.distributed`` cluster of N worker processes and ``--scheduler
ADDRESS`` uses an existing one; slides and their blocks are spread over the workers, each opening its own
image and model. A rerun of the same command resumes unfinished outputs; ``--overwrite`` replaces outputs
of a different run.

``--instances`` also finds the objects of each finished prediction (whole-slide, block by block, resumable:
``napari_medseg.objects.tiled``) into ``labels/objects`` of its zarr; ``--halo`` and ``--min-size`` tune it.
``napari-medseg predict --instances-only NAME.prediction.zarr...`` does only that, on existing predictions
(no checkpoint, no ``--out``). With ``--workers``/``--scheduler`` the objects are found here, after the
distributed semantic pass.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.events import drive
from napari_medseg.objects import DEFAULT_MIN_SEED

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="the model: a checkpoint (.pt) written by napari-medseg train or "
                   "the GUI, a bioimage.io package (.zip or folder), an .onnx / .ts file (docs/sharing.md), or the name of "
                   "a model in the library (napari-medseg models list)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="slide/volume paths or globs (quote globs); "
                   "co-registered files joined by commas (t1.nii.gz,t2.nii.gz) are one image, one channel each")
    p.add_argument("--out", default=None, help="output folder; one NAME.prediction.zarr per input (required)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--level", type=int, default=0, help="pyramid level to predict (default 0, full resolution)")
    g.add_argument("--pixel-size", type=float, default=None,
                   help="predict at the coarsest level with at most this pixel size (e.g. microns)")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "onnxruntime-int8"), default="torch",
                   help="what runs the model: torch (default), onnxruntime (the checkpoint exported to ONNX once, "
                   "cached), onnxruntime-int8 (quantised, calibrated on windows of the first input); "
                   "docs/deployment.md has the measured speed and accuracy of each")
    p.add_argument("--window", type=int, nargs="+", default=None,
                   help="window size, one value or one per model axis (default 512 for 2D, 96 for 3D models)")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap in [0, 1) (default 0.25)")
    p.add_argument("--batch-size", default="auto",
                   help="windows per forward pass; auto (default): 4 on a CPU (as before), on a GPU as many as "
                        "half its free memory holds (measured with one window)")
    p.add_argument("--blend", choices=("gaussian", "crop"), default="gaussian")
    p.add_argument("--tta", nargs="?", const="flips", default=None, choices=("flips", "dihedral", "multiscale"),
                   help="test-time augmentation: flips (--tta alone: the window mirrored along each axis, 1 + dims "
                   "passes), dihedral (2D: 4 rotations x mirror, 8 passes) or multiscale (the window at 0.75, 1 and "
                   "1.25 of its size, 3 passes); docs/deployment.md has the cost and the gain")
    p.add_argument("--zoom", default="1", metavar="FACTOR|auto",
                   help="show the model every window resampled by FACTOR (0.25-4; default 1: as it is), for objects "
                   "smaller (> 1) or larger (< 1) than those it learnt from: about FACTOR^2 its time; auto: the "
                   "FACTOR that brings the objects of a sample of the image to the size the model learnt (models "
                   "with object classes); docs/objects.md, 'Objects of another size'")
    p.add_argument("--crf", nargs="?", const="on", default=None, metavar="ITERATIONS[,RADIUS]",
                   help="refine the labels at the image's edges with a dense CRF after prediction (--crf alone: 5 "
                   "iterations, radius 4 px; writes float16 probabilities if --probs is not given); "
                   "docs/deployment.md has its cost and gain")
    p.add_argument("--tissue-mask", default="auto",
                   help="auto | on | off | otsu_saturation | otsu_intensity | otsu_fluorescence (default auto)")
    p.add_argument("--probs", choices=("uint8", "float16", "float32"), default=None,
                   help="also write class probabilities")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: mixed precision on a GPU, float32 on the CPU; bf16: bfloat16 on the CPU too (about "
                        "2x faster on CPUs with AMX or AVX512-BF16, labels differ at a fraction of a percent of "
                        "pixels; docs/deployment.md)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that hold a different run")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an unfinished output")
    p.add_argument("--on-corrupt", choices=("stop", "skip"), default="stop",
                   help="an undecodable source tile: stop (default) or predict around it with a warning")
    p.add_argument("--workers", type=int, default=None, help="run on a local Dask cluster of N processes")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    p.add_argument("--blocks-per-task", type=int, default=4, help="blocks per Dask task (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (per worker with Dask)")
    p.add_argument("--streams", default="auto", type=_streams,
                   help="CPU: batches run through the model at once, one torch thread each; 'auto' (default): as "
                        "many as --threads (the light model 2x, the small UNet 1.3x faster on 2 cores than one "
                        "batch on 2 threads; docs/prediction.md); 1: one batch on all threads")
    p.add_argument("--input-kind", choices=("auto", "image"), default="auto",
                   help="auto: refuse inputs that hold labels (a NIfTI label map); image: read every input as "
                        "an image even where its values look like labels (default auto)")
    o = p.add_argument_group("objects (models trained with --objects)")
    o.add_argument("--instances", action="store_true",
                   help="also find the objects (instances) of each prediction: labels/objects in its zarr")
    o.add_argument("--instances-only", nargs="+", default=None, metavar="PREDICTION",
                   help="only find the objects of existing NAME.prediction.zarr outputs (no checkpoint, no --out)")
    o.add_argument("--halo", type=int, default=64,
                   help="pixels read around each block; objects larger than this are reported, not kept "
                        "(rule of thumb: the largest object's diameter; default 64)")
    o.add_argument("--min-size", type=int, default=0, help="drop objects smaller than this many pixels (default 0)")
    o.add_argument("--min-seed", type=int, default=DEFAULT_MIN_SEED,
                   help="object interiors smaller than this many pixels are speckle, not objects: they join a "
                        "neighbouring object or vanish (default %(default)s)")
    o.add_argument("--features", choices=("basic", "full"), default="basic",
                   help="shape features of the objects table: basic (size, centroid, intensities, axes, "
                        "eccentricity, orientation) or full (adds perimeter and solidity; about 3x slower per "
                        "block; default basic)")
    o.add_argument("--instance-block", type=int, default=None,
                   help="block side of the objects pass (default 2048 px in 2D, 128 in 3D)")


def _folder_inputs(folder: Path) -> list[Path]:
    """The entries of a plain folder (not a zarr, not a DICOM series) that napari-medseg reads, sorted."""
    from napari_medseg.io.reader import sniff

    entries = sorted(c for c in folder.iterdir() if not c.name.startswith("."))
    found = [c for c in entries if sniff(c) is not None]
    if not found:
        raise MedsegError(f"folder {folder} holds no file napari-medseg reads (TIFF/SVS/NDPI, zarr, NIfTI, DICOM)")
    if len(found) < len(entries):
        log.info("%s: %d entries that napari-medseg does not read are left out", folder, len(entries) - len(found))
    return found


def expand_inputs(items: list[str]) -> list[Path]:
    """Paths as given (a plain folder: the files in it that can be read), globs expanded (sorted); an input
    matching nothing is an error."""
    from napari_medseg.io.reader import sniff

    out: list[Path] = []
    for it in items:
        if "," in str(it) and not Path(it).exists():  # co-registered files stacked as channels (io/stack.py)
            out.append(Path(it))
            continue
        if Path(it).exists():
            p = Path(it)
            out.extend(_folder_inputs(p) if p.is_dir() and sniff(p) is None else [p])
            continue
        hits = sorted(glob.glob(it, recursive=True))
        if not hits:
            raise MedsegError(f"input {it!r} does not exist and matches no file")
        out.extend(Path(h) for h in hits)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def output_paths(inputs: list[Path], out_dir: Path) -> list[Path]:
    names: dict[str, int] = {}
    outs = []
    for p in inputs:
        if "," in str(p) and not p.exists():  # stacked files (t1.nii.gz,t2.nii.gz): named after the first
            p = Path(str(p).split(",")[0].strip())
        stem = p.name.split(".")[0] or p.name
        n = names.get(stem, 0)
        names[stem] = n + 1
        outs.append(out_dir / (f"{stem}.prediction.zarr" if n == 0 else f"{stem}-{n}.prediction.zarr"))
    return outs


def _window(args: argparse.Namespace) -> tuple[int, ...] | None:
    if args.window is None:
        return None
    return tuple(args.window)


def _streams(text: str) -> int | str:
    """``--streams``: 'auto' or an integer >= 1."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--streams takes 'auto' or an integer >= 1, got {text!r}")
    return n


def _zoom(value: str) -> float | str:
    """``--zoom`` as ``predict``'s ``zoom``: "auto", or a number (its range is checked by the predictor)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise MedsegError(f"--zoom takes a number (e.g. 1.5) or auto, got {value!r}") from None


def _crf(value: str | None) -> dict[str, int] | None:
    """``--crf`` as ``predict``'s ``crf`` settings: None (off), the defaults ("on"), or ITERATIONS[,RADIUS]."""
    if value is None:
        return None
    if value == "on":
        return {}
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise MedsegError(f"--crf takes ITERATIONS or ITERATIONS,RADIUS (e.g. --crf 5,4), got {value!r}")
    from napari_medseg.inference.crf import CRFConfig

    d = {"iterations": parts[0], **({"radius": parts[1]} if len(parts) == 2 else {})}
    CRFConfig.from_dict(d)  # a bad number is refused before anything runs
    return d


def _cause(message: str, source: str) -> str:
    """The error message without the leading ``<source>:`` most of them start with."""
    for prefix in (f"{source}:", f"{Path(source).resolve()}:"):
        if message.startswith(prefix):
            return message[len(prefix):].strip()
    return message


def _instances(path: Path, args: argparse.Namespace, schema: Any = None) -> None:
    """The objects pass over one finished prediction, with a progress bar; its summary line."""
    from tqdm import tqdm

    from napari_medseg.objects.tiled import InstancesProgress, InstancesStart, instances_from_prediction

    bar = None

    def show(ev: Any) -> None:
        nonlocal bar
        if isinstance(ev, InstancesStart):
            bar = tqdm(total=ev.total_blocks, initial=ev.resumed_blocks, unit="block",
                       desc=f"objects {path.name.split('.')[0]}"[:30], leave=True, file=sys.stderr)
        elif isinstance(ev, InstancesProgress) and bar is not None:
            bar.n = ev.done
            bar.set_postfix_str(f"{ev.objects} objects", refresh=True)

    try:
        res = drive(instances_from_prediction(path, schema=schema, halo=args.halo, min_size=args.min_size,
                                              min_seed=args.min_seed, block=args.instance_block,
                                              features=args.features), show)
    finally:
        if bar is not None:
            bar.close()
    tqdm.write(f"objects: {res.message}")
    if res.cut:
        tqdm.write(f"warning: {path}: {res.cut} object(s) larger than the halo ({args.halo} px) are missing; "
                   "rerun with a larger --halo", file=sys.stderr)


def _instances_only(args: argparse.Namespace) -> int:
    if args.checkpoint or args.inputs:
        raise MedsegError("--instances-only takes prediction zarrs only: napari-medseg predict --instances-only "
                          "NAME.prediction.zarr [...] (no checkpoint, no inputs)")
    failures = 0
    for item in args.instances_only:
        try:
            _instances(Path(item), args)
        except MedsegError as e:
            failures += 1
            print(f"napari-medseg predict: error: {e}", file=sys.stderr)
    return 2 if failures else 0


def _check_instance_args(args: argparse.Namespace) -> None:
    if args.halo < 0 or args.min_size < 0 or args.min_seed < 0:
        raise MedsegError(f"--halo, --min-size and --min-seed must be >= 0, got {args.halo}, {args.min_size} and "
                          f"{args.min_seed}")
    if args.instance_block is not None and args.instance_block < 8:
        raise MedsegError(f"--instance-block must be >= 8, got {args.instance_block}")


def run(args: argparse.Namespace) -> int:
    _check_instance_args(args)
    if args.instances_only:
        return _instances_only(args)
    if not args.checkpoint or not args.inputs or not args.out:
        raise MedsegError("usage: napari-medseg predict CHECKPOINT INPUT... --out DIR (or --instances-only "
                          "NAME.prediction.zarr...); missing: "
                          + ", ".join(n for n, v in (("CHECKPOINT", args.checkpoint), ("INPUT", args.inputs),
                                                     ("--out", args.out)) if not v))
    return _run_predict(args)


def _run_predict(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from napari_medseg.inference.distributed import predict_many
    from napari_medseg.inference.events import (
        BlockDone,
        PredictDone,
        PredictFailed,
        PredictStart,
        PredictWarning,
        Refining,
        TissueMaskReady,
    )
    from napari_medseg.inference.modelrun import fit_window, resolve_model
    from napari_medseg.io.reader import open_image
    from napari_medseg.io.stack import open_stack
    from napari_medseg.sharing.library import find

    ckpt = find(args.checkpoint)  # a file, a package folder, or the name of a model in the library
    inputs = expand_inputs(list(args.inputs))
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise MedsegError(f"--out {out_dir} is a file; give a folder")
    from napari_medseg.inference.batching import check_batch_size

    try:
        args.batch_size = check_batch_size(args.batch_size)
    except MedsegError as e:
        raise MedsegError(f"--batch-size: {e}") from None
    if not 0 <= float(args.overlap) < 1:
        raise MedsegError(f"--overlap must be in [0, 1), got {args.overlap}")
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = output_paths(inputs, out_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    # the checkpoint is read, checked and hashed once here: a broken one is one error, not one failure per
    # input, and a folder of slides does not read it once per slide (nor do Dask workers hash it again)
    if args.backend != "torch":  # convert once here; the Dask workers get the converted file
        from napari_medseg.inference.backends import backend_model

        first = (None if not inputs else open_stack(str(inputs[0])) if "," in str(inputs[0]) and not inputs[0].exists()
                 else open_image(inputs[0], kind=getattr(args, "input_kind", "auto")))
        ckpt = Path(backend_model(ckpt, args.backend, source=first, level=args.level or 0, window=_window(args),
                                  on_progress=lambda s: print(s, flush=True)))
    loaded = resolve_model(ckpt)
    if args.instances and not (loaded.classes and loaded.classes.objects):
        names = list(loaded.classes.names[1:]) if loaded.classes else []
        raise MedsegError(f"--instances: this model has no object classes (classes {names}); train with "
                          "--objects NAME (e.g. --objects nucleus) to count and measure objects")
    md = loaded.spatial_dims or 2
    window = _window(args) or fit_window(loaded, (96, 96, 96) if md == 3 else (512, 512))
    settings = dict(level=args.level, pixel_size=args.pixel_size, window=window, overlap=args.overlap,
                    batch_size=args.batch_size, blend=args.blend, tta=args.tta, zoom=_zoom(args.zoom),
                    tissue_mask={"on": True, "off": False}.get(args.tissue_mask, args.tissue_mask),
                    write_probs=args.probs, device=args.device, amp=not args.no_amp, on_corrupt=args.on_corrupt,
                    crf=_crf(args.crf), streams=args.streams, precision=args.precision)
    kind = getattr(args, "input_kind", "auto")
    bars: dict[str, tqdm] = {}
    failures: list[tuple[str, str]] = []
    unfinished = 0
    finished: list[Path] = []

    def fail(source: str, message: str) -> None:
        cause = _cause(message, source)
        failures.append((source, cause))
        # the CLI's one-line error per failed input (with one input: the whole story, exit status 2)
        tqdm.write(f"napari-medseg predict: error: {source}: {cause}", file=sys.stderr)

    def opened(paths: list[Path], path_outs: list[Path]) -> tuple[list, list[Path]]:
        """The inputs for predict_many: paths, or with --input-kind image the sources opened as images."""
        stacked = ["," in str(p) and not p.exists() for p in paths]
        if kind == "auto" and not any(stacked):
            return list(paths), list(path_outs)
        items, item_outs = [], []
        for p, o, st in zip(paths, path_outs, stacked):
            try:
                items.append(open_stack(str(p)) if st else p if kind == "auto" else open_image(p, kind=kind))
                item_outs.append(o)
            except MedsegError as e:
                fail(str(p), str(e))
        return items, item_outs

    def show(ev: Any) -> None:
        nonlocal unfinished
        if isinstance(ev, TissueMaskReady):
            log.info("tissue mask: %.1f%% tissue", 100 * ev.mask.fraction)
        elif isinstance(ev, PredictStart):
            bars[ev.name] = tqdm(total=ev.total_blocks, initial=ev.resumed_blocks, unit="block",
                                 desc=ev.name[:30], position=len(bars), leave=True, file=sys.stderr)
        elif isinstance(ev, BlockDone):
            bar = bars.get(ev.name)
            if bar is not None:
                bar.n = ev.done
                bar.set_postfix_str(f"{ev.mpix_s:.1f} MPix/s", refresh=True)
        elif isinstance(ev, PredictWarning):
            tqdm.write(f"warning: {ev.message}", file=sys.stderr)
        elif isinstance(ev, Refining):
            bar = bars.get(ev.name)
            if bar is not None:
                bar.set_description_str(f"{ev.name[:22]} CRF")
                bar.total, bar.n = ev.total, ev.done
                bar.refresh()
        elif isinstance(ev, PredictFailed):
            bar = bars.get(ev.name) if ev.name else None
            if bar is not None:
                bar.close()
            fail(ev.source, ev.message)
        elif isinstance(ev, PredictDone):
            bar = bars.get(ev.name)
            if bar is not None:
                bar.n = ev.blocks_done
                bar.refresh()
                bar.close()
            unfinished += int(ev.cancelled)
            if not ev.cancelled:
                finished.append(Path(ev.out))
            state = "unfinished (rerun to resume)" if ev.cancelled else "done"
            tqdm.write(f"{ev.name}: {state}: {ev.out} ({ev.blocks_done} blocks, {ev.seconds:.1f} s)")

    objects_done: set[Path] = set()

    def objects_of(paths: list[Path]) -> None:
        for o in paths:
            if o in objects_done:
                continue
            objects_done.add(o)
            try:
                _instances(o, args, schema=loaded.classes)
            except MedsegError as e:
                fail(str(o), str(e))

    common = dict(resume=not args.no_resume, overwrite=args.overwrite, keep_going=True, **settings)
    try:
        if args.workers is None and args.scheduler is None:
            # one input after the other, each opened only when its turn comes
            for p, o in zip(inputs, outs):
                items, item_outs = opened([p], [o])
                if items:
                    drive(predict_many(items, loaded, item_outs, torch_threads=args.threads or 1, **common), show)
                if args.instances:
                    objects_of(list(finished))
        else:
            items, item_outs = opened(inputs, outs)
            if items:
                drive(predict_many(items, loaded, item_outs, workers=args.workers, scheduler=args.scheduler,
                                   blocks_per_task=args.blocks_per_task, torch_threads=args.threads or 1,
                                   **common), show)
            if args.instances:  # found here, after the distributed semantic pass
                objects_of(list(finished))
    finally:
        for bar in bars.values():
            bar.close()
    if len(inputs) > 1:
        n_done = len(inputs) - len(failures) - unfinished
        lines = [f"napari-medseg predict: {n_done} of {len(inputs)} input(s) done"
                 + (f", {unfinished} unfinished (rerun to resume)" if unfinished else "")
                 + (f", {len(failures)} failed:" if failures else "")]
        lines += [f"  {source}: {cause}" for source, cause in failures]
        print("\n".join(lines), file=sys.stderr)
    if failures:
        return 2
    return 1 if unfinished else 0
