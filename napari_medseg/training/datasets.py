"""Training data from files: folders of image/mask pairs (``images/``, ``masks/``, matched by name) and NIfTI
pairs, with optional simulated sparse annotation (``sparsify``).

Masks are dense (0 = background; other values are classes, mapped in increasing order to 1, 2, ..., or as
``foreground`` says). With object classes (``ClassSchema.objects`` and the ``object boundary`` class), the
rim of every connected region of an object class in a mask becomes the boundary class (the instances of a dense
mask are its connected regions: touching objects merged in the mask stay one object). Images are ``YX``/``YXC`` (PNG, JPEG, TIFF) or ``ZYX`` (NIfTI, through the package's
reader, LPS+). Small images are read into memory so training does not decode a file per patch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import GeometryMismatchError, MedsegError, UnreadableInputError
from napari_medseg.core.source import ImageSource
from napari_medseg.training import sparsify
from napari_medseg.training.data import TrainingData, TrainingItem, read

log = logging.getLogger(__name__)
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz", ".npy")
IN_MEMORY_BYTES = 1 << 30


@dataclass
class Pair:
    name: str
    image: ImageSource
    mask: np.ndarray  # dense, 0 = background, k = class k, in the image's level-0 geometry


def _stem(p: Path) -> str:
    n = p.name
    for s in sorted(SUFFIXES, key=len, reverse=True):
        if n.lower().endswith(s):
            return n[: -len(s)]
    return p.stem


def find_pairs(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for files of the same name (any supported suffix) in the two folders."""
    idir, mdir = Path(images_dir), Path(masks_dir)
    for d in (idir, mdir):
        if not d.is_dir():
            raise MedsegError(f"{d} is not a folder; give a folder of images and one of masks with the same names")

    def listing(d: Path) -> dict[str, Path]:
        return {_stem(p): p for p in sorted(d.iterdir()) if p.is_file() and p.name.lower().endswith(SUFFIXES)}

    imgs, masks = listing(idir), listing(mdir)
    names = sorted(set(imgs) & set(masks))
    if not names:
        raise MedsegError(f"no image in {idir} has a mask of the same name in {mdir} "
                          f"({len(imgs)} images, {len(masks)} masks)")
    lonely = sorted(set(imgs) - set(masks))
    if lonely:
        log.warning("%d images have no mask and are skipped (e.g. %s)", len(lonely), lonely[:3])
    return [(n, imgs[n], masks[n]) for n in names]


def _materialize(src: ImageSource) -> ImageSource:
    nbytes = int(np.prod(src.levels[0].shape)) * src.dtype.itemsize
    if nbytes > IN_MEMORY_BYTES or all(isinstance(lv, np.ndarray) for lv in src.levels):
        return src
    src.levels = [read(lv, (slice(None),) * lv.ndim) for lv in src.levels]
    return src


def _file_pixel_size(p: Path) -> tuple[tuple[float, float], str]:
    """The in-plane pixel size (``YX``) and unit a 2D TIFF's metadata gives (OME PhysicalSize, SVS MPP, ImageJ or
    resolution tags, read as the package's TIFF reader reads them); (1, 1) micrometer for files without one
    (PNG, JPEG, NPY, a TIFF without a physical size)."""
    if p.name.lower().endswith((".tif", ".tiff")):
        from napari_medseg.io.tiff import open_tiff

        try:
            src = open_tiff(p)
        except Exception as e:  # the pixels were read already: metadata the reader cannot parse is only a warning
            log.warning("%s: no pixel size from its metadata (%s); training records 1 per pixel", p, e)
        else:
            if src.unit != "pixel" and src.spatial_dims == 2:
                py, px = src.pixel_size
                return (py, px), src.unit
    return (1.0, 1.0), "micrometer"


def read_image(path: str | os.PathLike, pixel_size: float | None = None) -> ImageSource:
    """An ``ImageSource`` for a PNG/JPEG/TIFF/NPY (2D, ``YX`` or ``YXC``) or a NIfTI/zarr/pyramid (package reader).

    The pixel size is ``pixel_size`` if given, else what the file's metadata says (a TIFF's OME PhysicalSize
    and the like), else 1: it is what a checkpoint trained on the image records."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".png", ".jpg", ".jpeg", ".npy")) or (name.endswith((".tif", ".tiff")) and p.stat().st_size
                                                             < (64 << 20)):
        try:
            if name.endswith(".npy"):
                a = np.load(p, allow_pickle=False)
            elif name.endswith((".tif", ".tiff")):
                import tifffile

                a = tifffile.imread(p)
            else:
                import imageio.v3 as iio

                a = iio.imread(p)
        except Exception as e:
            raise UnreadableInputError(f"{p}: could not be read ({type(e).__name__}: {e})") from e
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., :3]
            axes, rgb, modality = "YXC", True, "brightfield"
        elif a.ndim == 2:
            axes, rgb, modality = "YX", False, "unknown"
        else:
            raise MedsegError(f"{p}: expected a 2D grey or RGB image, got shape {a.shape}")
        sizes, unit = ((pixel_size, pixel_size), "micrometer") if pixel_size else _file_pixel_size(p)
        return ImageSource([np.ascontiguousarray(a)], axes, sizes, unit=unit, name=_stem(p), path=str(p), rgb=rgb,
                           modality=modality)
    from napari_medseg.io.reader import open_path

    srcs = open_path(p)
    src = next((s for s in srcs if s.kind == "image"), srcs[0])
    # a grey uint8 volume can look like labels to the reader's guess; here it is the image of a pair
    src.kind = "image"
    if src.modality == "unknown" and src.spatial_dims == 3:
        src.modality = "MR" if src.dtype.kind == "u" else src.modality
    return _materialize(src)


def read_mask(path: str | os.PathLike, like: ImageSource) -> np.ndarray:
    """A mask file as a raw integer array in ``like``'s level-0 geometry (same reader as its image)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")) or p.is_dir():
        from napari_medseg.io.reader import open_path

        src = open_path(p)[0]
        m = read(src.levels[0], (slice(None),) * src.levels[0].ndim)
    else:
        m = read_image(p).levels[0]
        if m.ndim == 3:
            m = m[..., 0]
    if tuple(m.shape) != tuple(like.shape):
        raise GeometryMismatchError(f"mask {p.name} has shape {tuple(m.shape)} but its image is {like.shape}")
    if m.dtype.kind == "f":
        m = np.rint(m).astype(np.int64)
    return m


def to_classes(mask: np.ndarray, foreground: Sequence[int] | None = None) -> np.ndarray:
    """Raw mask values -> 0 (background) and 1..K: ``foreground`` lists the raw value of each class in order
    (other values are background); by default raw 0 is background and other values are classes by size."""
    m = np.asarray(mask)
    out = np.zeros(m.shape, np.uint8)
    values = list(foreground) if foreground is not None else [int(v) for v in np.unique(m) if v != 0]
    for k, v in enumerate(values, start=1):
        out[m == v] = k
    return out


def load_pairs(images_dir: str | os.PathLike, masks_dir: str | os.PathLike, *, foreground: Sequence[int] | None = None,
               limit: int | None = None, names: Sequence[str] | None = None) -> list[Pair]:
    found = find_pairs(images_dir, masks_dir)
    if names is not None:
        wanted = set(names)
        found = [f for f in found if f[0] in wanted]
    if limit:
        found = found[:limit]
    pairs = []
    for name, ip, mp in found:
        img = read_image(ip)
        pairs.append(Pair(name, img, to_classes(read_mask(mp, img), foreground)))
    return pairs


def load_folder(root: str | os.PathLike, **kw) -> list[Pair]:
    """Pairs from ``root/images`` and ``root/masks``."""
    r = Path(root)
    return load_pairs(r / "images", r / "masks", **kw)


def make_training_data(pairs: Sequence[Pair], *, classes: ClassSchema | None = None, sparse: str = "dense",
                       fraction: float = 1.0, cases: int | float | None = None, seed: int = 0) -> TrainingData:
    """``TrainingData`` from dense pairs, simulating sparse annotation.

    ``sparse``: "dense" (every pixel labelled), "scribbles" or "pixels" (about ``fraction`` of the pixels of each
    labelled case); ``cases`` keeps labels on only that many cases (int) or that fraction (float); the other
    cases become unlabelled images. Every item keeps its dense mask for scoring. When ``classes`` has object
    classes and the boundary class, the masks get the rims of their object regions first (both the labels and
    the scoring mask).
    """
    if not pairs:
        raise MedsegError("no image/mask pairs to train on")
    k = max(int(p.mask.max(initial=0)) for p in pairs)
    if classes is None:
        classes = ClassSchema.default(max(k, 1) + 1)
    if k > classes.n_classes - 1:
        raise MedsegError(f"the masks hold {k} classes but the schema names {classes.n_classes - 1}")
    keep = set(range(len(pairs))) if cases is None else set(sparsify.keep_cases(len(pairs), cases, seed))
    if classes.boundary_value is not None:
        from napari_medseg.objects.boundaries import mark_dense_boundaries

        pairs = [Pair(p.name, p.image, mark_dense_boundaries(p.mask, classes)) for p in pairs]
    items = []
    for i, p in enumerate(pairs):
        labels = None
        if i in keep:
            if sparse == "dense":
                labels = sparsify.dense_to_store(p.mask)
            elif sparse == "scribbles":
                labels = sparsify.scribbles(p.mask, fraction, seed + i)
            elif sparse == "pixels":
                labels = sparsify.random_pixels(p.mask, fraction, seed + i)
            else:
                raise MedsegError(f"unknown sparse mode {sparse!r}; choose dense, scribbles or pixels")
        items.append(TrainingItem(p.image, labels, p.mask, name=p.name))
    return TrainingData(items, classes)
