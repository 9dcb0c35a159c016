"""``napari-medseg rank IMAGE --model MODEL``: where to paint next, the regions of an image ranked by how unsure
the model is there (``napari_medseg.guidance``; docs/annotation.md, "Where to paint next").

MODEL is any model file napari-medseg opens or the name of a model in the library. The image is ranked at
the level the model was trained at (``--level`` to choose). The labels (``--labels``; by default the image's
own, where the Annotate widget keeps them, if there are any: never created) give each region's painted
share, and with ``--novelty W`` make regions unlike the painted ones rank higher. Prints the top regions
(``--top``) and writes the whole ranking as JSON (``--out``, default ``<image name>.ranking.json`` in the
current folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_medseg.core.errors import MedsegError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="the slide or volume to rank (any file napari-medseg reads)")
    p.add_argument("--model", required=True, help="a checkpoint (.pt), a bioimage.io package (.zip or folder), an "
                   ".onnx / .ts file, or the name of a model in the library (napari-medseg models list)")
    p.add_argument("--labels", type=Path, default=None,
                   help="the image's label store (default: its own labels, where the Annotate widget keeps them, "
                        "if there are any); opened read-only")
    p.add_argument("--out", type=Path, default=None,
                   help="the ranking file (JSON; default <image name>.ranking.json in the current folder)")
    p.add_argument("--top", type=int, default=20, help="regions to list (default 20)")
    p.add_argument("--region-size", type=int, default=256,
                   help="region side in pixels of the ranked level (volumes: regions are a quarter as deep; "
                        "default 256)")
    p.add_argument("--window", type=int, default=128, help="window side the model sees per sample (default 128)")
    p.add_argument("--samples", type=int, default=1, help="windows per region (default 1)")
    p.add_argument("--max-regions", type=int, default=4096,
                   help="regions are made larger (x2) until at most this many are on tissue (default 4096)")
    p.add_argument("--level", type=int, default=None,
                   help="pyramid level to rank (default: the one the model was trained at)")
    p.add_argument("--novelty", type=float, default=0.0,
                   help="weight of novelty, how unlike the painted regions a region looks (default 0: off)")
    p.add_argument("--all", action="store_true", help="rank every region, also those off the tissue mask")
    p.add_argument("--seed", type=int, default=0, help="where the windows fall in each region (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")


def default_out(image: Path) -> Path:
    """``<image name>.ranking.json`` in the current folder."""
    stem = image.name.split(".")[0] or image.name
    return Path.cwd() / f"{stem}.ranking.json"


def open_labels(path: Path | None, source: Any) -> Any:
    """The label store to rank against, read-only: ``path``, else the image's own if it has any (the place
    the Annotate widget opens them from, ``labels.location``); None when there are none."""
    from napari_medseg.labels.format import is_label_store
    from napari_medseg.labels.location import labels_location
    from napari_medseg.labels.store import LabelStore

    if path is not None:
        if not is_label_store(path):
            raise MedsegError(f"--labels {path}: not a label store (a .labels.zarr written by the Annotate widget)")
        return LabelStore.open(path, image=source, mode="r")
    loc = labels_location(source)
    found = loc.path if loc.exists else loc.from_cache
    if found is None or not is_label_store(found):
        return None
    return LabelStore.open(found, image=source, mode="r")


def table(ranking: Any, top: int) -> str:
    """The top ``top`` regions: rank, score, uncertainty, painted %, centre in pixels and in the image's unit
    (x, y[, z])."""
    axes = "x, y, z" if len(ranking.region_size) == 3 else "x, y"
    unit = {"micrometer": "µm", "millimeter": "mm"}.get(ranking.unit, ranking.unit)
    rows = [f"{'rank':>4}  {'score':>6}  {'uncert.':>7}  {'novelty':>7}  {'painted':>7}  "
            f"{'centre px (' + axes + ')':<24}  centre {unit} ({axes})"]
    for i, r in enumerate(ranking.regions[:max(0, top)]):
        c = r.centre[::-1]
        ph = ranking.physical(r.centre)[::-1]
        px = "(" + ", ".join(f"{v:.0f}" for v in c) + ")"
        pu = "(" + ", ".join(f"{v:.1f}" for v in ph) + ")"
        rows.append(f"{i + 1:>4}  {r.score:6.3f}  {r.uncertainty:7.3f}  {r.novelty:7.3f}  {100 * r.painted:6.1f}%  "
                    f"{px:<24}  {pu}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from napari_medseg.core.events import drive
    from napari_medseg.guidance import RankProgress, rank_regions
    from napari_medseg.io.reader import open_image
    from napari_medseg.sharing.library import find

    if args.top < 0:
        raise MedsegError(f"--top must be >= 0, got {args.top}")
    out = args.out or default_out(args.image)
    if out.is_dir():
        raise MedsegError(f"--out {out} is a folder; give a file name such as {out / 'ranking.json'}")
    if not out.parent.is_dir():
        raise MedsegError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    model = find(args.model)
    source = open_image(args.image)
    store = open_labels(args.labels, source)
    if store is not None:
        print(f"labels: {store.path} ({len(store.painted_chunks())} painted chunk(s))", file=sys.stderr)

    def show(ev: RankProgress) -> None:
        end = "\n" if ev.done >= ev.total else ""
        print(f"\rranking {args.image.name}: {ev.done}/{ev.total} windows", end=end, file=sys.stderr, flush=True)

    try:
        ranking = drive(rank_regions(source, model, store=store, level=args.level, region_size=args.region_size,
                                     window=args.window, samples_per_region=args.samples,
                                     max_regions=args.max_regions, novelty_weight=args.novelty,
                                     tissue=not args.all, device=args.device, threads=args.threads,
                                     batch_size=args.batch_size, seed=args.seed), show)
    finally:
        if store is not None:
            store.close()
    ranking.to_json(out)
    size = " x ".join(str(s) for s in ranking.region_size)
    print(table(ranking, args.top))
    print(f"{len(ranking.regions)} regions of {size} px at level {ranking.level} ranked in {ranking.seconds:.1f} s "
          f"({ranking.windows} windows); ranking written to {out}")
    return 0
