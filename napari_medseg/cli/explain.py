"""``napari-medseg explain IMAGE --model MODEL --region Y0:Y1,X0:X1``: where the model looks in a region, as the
Predict widget's *Explain view* shows it (``inference.explain_region``; docs/prediction.md, "Explaining the view").

``--kind gradcam`` (default: Seg-Grad-CAM of ``--class``) writes one map, ``--kind attention`` one per attention
gate, ``--kind transformer`` one map of the transformer attention (rollout for unetr / transunet / nnformer, window
attention for swin_unetr / swin_unet; ``models.explain.transformer_attention``), as float32 TIFFs in [0, 1]
named ``<out>`` (``<out stem>.gate<i>.tif`` per gate); the region's pixel size is in their resolution tags. Regions are in pixels of ``--level`` (default 0), one ``start:stop`` per spatial axis
(ZYX for a volume: a 2D model explains one slice, ``Z:Z+1``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_medseg.core.errors import MedsegError
from napari_medseg.models.explain_kinds import KINDS  # torch-free: the parser is built without torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="the slide, image or volume (any file napari-medseg reads)")
    p.add_argument("--model", required=True, help="a checkpoint (.pt) or the name of a model in the library")
    p.add_argument("--region", required=True, metavar="A:B,C:D[,E:F]",
                   help="the region, start:stop per spatial axis in pixels of --level (e.g. 1000:1512,2000:2512)")
    p.add_argument("--level", type=int, default=0, help="pyramid level (default 0)")
    p.add_argument("--kind", choices=KINDS, default="gradcam",
                   help="gradcam (any model), attention (attention gates: attention_unet) or transformer (attention "
                        "rollout / window attention: unetr, transunet, nnformer, swin_unetr, swin_unet)")
    p.add_argument("--class", dest="class_index", type=int, default=1,
                   help="the class to explain (1 = the first after background; gradcam)")
    p.add_argument("--out", type=Path, required=True, help="the map (a .tif file)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")


def parse_region(text: str) -> tuple[slice, ...]:
    try:
        parts = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part.strip()]
        if not parts or any(len(p) != 2 or p[1] <= p[0] or p[0] < 0 for p in parts):
            raise ValueError
    except ValueError:
        raise MedsegError(f"--region {text!r}: give start:stop per spatial axis, e.g. 1000:1512,2000:2512") from None
    return tuple(slice(a, b) for a, b in parts)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile

    from napari_medseg.inference.explain_region import explain_region
    from napari_medseg.io.reader import open_image
    from napari_medseg.sharing.library import find

    region = parse_region(args.region)
    if args.out.suffix.lower() not in (".tif", ".tiff"):
        raise MedsegError(f"--out {args.out}: give a .tif file")
    if not args.out.parent.is_dir():
        raise MedsegError(f"--out {args.out}: the folder {args.out.parent} does not exist; create it first")
    source = open_image(args.image)
    if len(region) != source.spatial_dims:
        raise MedsegError(f"--region has {len(region)} axes but the image has {source.spatial_dims} "
                          f"({source.spatial_axes}); give one start:stop per axis")
    res = explain_region(str(find(args.model)), source, args.level, region, kind=args.kind,
                         class_index=args.class_index, device=args.device)
    outs = [args.out] if len(res.maps) == 1 else [args.out.with_name(f"{args.out.name.split('.')[0]}.gate{i + 1}.tif")
                                                   for i in range(len(res.maps))]
    for path, m in zip(outs, res.maps):
        tifffile.imwrite(path, np.asarray(m, np.float32), resolution=tuple(1.0 / s for s in res.scale[-2:]),
                         metadata={"axes": "ZYX"[-m.ndim:]})
    what = {"gradcam": f"Grad-CAM of class {res.class_index}", "transformer": "transformer attention"}.get(
        res.kind, f"{len(res.maps)} attention gates")
    print(f"{what} of {' x '.join(str(s.stop - s.start) for s in res.region)} px at level {res.level} in "
          f"{res.seconds:.1f} s: {', '.join(str(p) for p in outs)}")
    return 0
