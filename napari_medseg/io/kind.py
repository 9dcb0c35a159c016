"""Image or labels? The decision for a file that does not say so in its structure (NIfTI; see docs/volumes.md).

The evidence, strongest first:

1. the caller's ``kind="image"`` or ``kind="labels"`` (``open_path``, ``open_image``, ``open_nifti``, the
   ``--input-kind`` flag of ``napari-medseg predict``);
2. the header: NIfTI intent code ``NIFTI_INTENT_LABEL`` (1002) or ``NIFTI_INTENT_NEURONAME`` (1003) means
   labels; any other intent code (a statistic, an estimate, a vector...) or an ``scl_slope``/``scl_inter``
   rescaling means an image;
3. what the values can be: floating-point, negative (CT in HU) or above 65535 is an image; several volumes
   in one file (4D) is an image;
4. the value structure of a small subsample (a few slices, strided in-plane), with the names as hints:
   - ``n``: the number of distinct values; ``equal``: of the pairs of neighbouring voxels in the sampled
     slices where neither voxel holds the most common value (the background of a label map), the
     fraction holding the same value. Label maps are piecewise constant (``equal`` near 1: only borders
     between two structures differ, even when the sample skips pixels); images have noise and texture
     (``equal`` 0.05 - 0.3 in MRI, even an 8-bit MRI that holds only 20 - 60 distinct values, as 44 of
     the 80 volumes of the 2018 left atrium challenge do);
   - ``dense``: the values fill at least half of ``0..max`` (small, nearly consecutive integers);
   - the hint: words in the file name or the NIfTI ``intent_name``/``descrip`` (``label``, ``mask``,
     ``seg``, ``gt``, ``annotation``... say labels; ``image``, ``img``, ``raw`` say image), else in the
     name of the folder holding the file (``masks/``, ``labelsTr/``; ``images/``, ``imagesTr/``) or a
     NIfTI display range (``cal_min < cal_max``, an image). Labels words win over image words at the same
     level (``case1_t1_seg`` is a segmentation).
   The rule: at most 2 distinct values is labels (a mask, or nothing in the sample) unless an image hint
   says otherwise; 3 - 64 distinct values are labels when ``equal`` reaches 0.8 (0.6 when ``dense``); more
   than 64 only with a labels hint and ``equal`` >= 0.75. A labels hint lowers the threshold to 0.5; an
   image hint raises it to 0.95 and asks for ``dense`` values.

``guess_kind`` returns a ``KindGuess`` whose ``reason`` says which evidence decided, in words; the readers
keep it in ``ImageSource.metadata["kind_reason"]``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("auto", "image", "labels")
MAX_LABEL_VALUES = 64        # more distinct values in the subsample: labels only with a labels hint
MAX_LABEL_VALUE = 65535      # a label value above this is not a label
EQUAL_LABELS = 0.8           # fraction of equal neighbours from which values are taken for labels
EQUAL_LABELS_DENSE = 0.6     # ... when the values are small, nearly consecutive integers
EQUAL_LABELS_HINT = 0.5      # ... with a labels hint in the names
EQUAL_LABELS_MANY = 0.75     # ... with a labels hint and more than MAX_LABEL_VALUES values
EQUAL_LABELS_IMAGE_HINT = 0.95  # ... with an image hint (and dense values)

#: Words (of a file or folder name, or a NIfTI header's text) that say "labels" or "image".
LABEL_WORDS = frozenset({
    "label", "labels", "labelmap", "labelmaps", "lbl", "lbls", "mask", "masks", "seg", "segs", "segm",
    "segmentation", "segmentations", "gt", "groundtruth", "truth", "annotation", "annotations", "annot",
    "annots", "aseg", "aparc", "parcellation",
})
IMAGE_WORDS = frozenset({"image", "images", "img", "imgs", "raw"})

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def check_kind(kind: str) -> str:
    """``kind`` if it is one of ``KINDS``; else ``ValueError``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
    return kind


def words(text: str) -> list[str]:
    """Lower-case words of a name: split at non-letters, digits and camelCase (``labelsTr`` -> labels, tr)."""
    return [w.lower() for w in _WORD.findall(text)]


def _stem(name: str) -> str:
    low = name.lower()
    for ext in (".nii.gz", ".nii", ".gz", ".tiff", ".tif", ".zarr", ".dcm", ".png", ".npy"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _says(ws: Iterable[str]) -> tuple[str | None, str]:
    """("labels" | "image" | None, the word that says so); labels words win."""
    ws = list(ws)
    for w in ws:
        if w in LABEL_WORDS:
            return "labels", w
    for w in ws:
        if w in IMAGE_WORDS:
            return "image", w
    return None, ""


@dataclass(frozen=True)
class NameHint:
    kind: str | None   # "labels", "image" or None
    why: str = ""      # e.g. "the folder name 'masks'"


def name_hint(path: str | os.PathLike | None, header_text: str = "", display_range: bool = False) -> NameHint:
    """The hint from names: the file name and the header's text first, then the folder and a display range."""
    if path is not None:
        p = Path(path)
        kind, w = _says(words(_stem(p.name)))
        if kind:
            return NameHint(kind, f"the file name {p.name!r} ({w!r})")
    kind, w = _says(words(header_text))
    if kind:
        return NameHint(kind, f"the NIfTI header's text {header_text.strip()!r} ({w!r})")
    if path is not None:
        parent = Path(path).parent.name
        kind, w = _says(words(parent))
        if kind:
            return NameHint(kind, f"the folder name {parent!r}")
    if display_range:
        return NameHint("image", "the NIfTI display range (cal_min < cal_max)")
    return NameHint(None)


@dataclass(frozen=True)
class ValueStats:
    """What a subsample's values look like (see the module docstring)."""

    n: int                 # distinct values
    lo: float
    hi: float
    equal: float           # fraction of equal neighbour pairs (pairs touching the background left out); nan if none
    pairs: int             # neighbour pairs counted
    integral: bool         # every value is a whole number

    @property
    def dense(self) -> bool:
        return self.integral and self.lo >= 0 and self.hi + 1 <= 2 * self.n

    def describe(self) -> str:
        lo, hi = (int(v) if self.integral else round(v, 3) for v in (self.lo, self.hi))
        txt = f"{self.n} distinct value{'s' if self.n != 1 else ''} in {lo}..{hi}"
        if self.pairs and self.n > 2:
            txt += f", {100 * self.equal:.0f}% of neighbouring non-background voxels equal"
        return txt


def value_stats(sample: np.ndarray, pair_axes: Sequence[int]) -> ValueStats:
    """``ValueStats`` of ``sample``; neighbours are taken along ``pair_axes`` (axes of adjacent voxels)."""
    a = np.asarray(sample)
    flat = a.ravel()
    if a.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return ValueStats(0, 0.0, 0.0, math.nan, 0, True)
    values, counts = np.unique(flat, return_counts=True)
    integral = a.dtype.kind in "iub" or bool(np.all(values == np.round(values)))
    mode = values[int(np.argmax(counts))]
    pairs = equal = 0
    for ax in pair_axes:
        if a.shape[ax] < 2:
            continue
        x = np.take(a, np.arange(1, a.shape[ax]), axis=ax)
        y = np.take(a, np.arange(0, a.shape[ax] - 1), axis=ax)
        keep = (x != mode) & (y != mode)
        pairs += int(keep.sum())
        equal += int(((x == y) & keep).sum())
    return ValueStats(int(values.size), float(values[0]), float(values[-1]),
                      equal / pairs if pairs else math.nan, pairs, integral)


@dataclass(frozen=True)
class KindGuess:
    kind: str       # "image" or "labels"
    reason: str     # which evidence decided, in words
    evidence: str   # "user", "header", "values" or "names"


def decide_from_values(st: ValueStats, hint: NameHint) -> KindGuess:
    """Image or labels from the value structure of integer, non-negative data and the names' hint."""
    # no two non-background voxels side by side (a few isolated dots): small consecutive values are labels
    eq = st.equal if st.pairs else (1.0 if st.dense else 0.0)
    desc = st.describe()
    if st.n <= 2:
        if hint.kind == "image":  # two values are always "equal" neighbours: only the name can tell
            return KindGuess("image", f"{hint.why} says image ({desc})", "names")
        return KindGuess("labels", f"{desc}: a mask" + (f"; {hint.why} agrees" if hint.kind == "labels" else ""),
                         "values")
    if st.n > MAX_LABEL_VALUES:
        if hint.kind == "labels" and eq >= EQUAL_LABELS_MANY:
            return KindGuess("labels", f"{hint.why} says labels and the values agree ({desc})", "names")
        return KindGuess("image", f"{desc}: too many for labels" + (
            f" (although {hint.why} says labels)" if hint.kind == "labels" else ""), "values")
    if hint.kind == "labels":
        threshold = EQUAL_LABELS_HINT
    elif hint.kind == "image":
        threshold = EQUAL_LABELS_IMAGE_HINT if st.dense else math.inf
    else:
        threshold = EQUAL_LABELS_DENSE if st.dense else EQUAL_LABELS
    labels = eq >= threshold  # nan (no pairs) is never >=
    shape = "constant regions" if labels else "noise and texture of an image"
    txt = f"{desc} ({shape}"
    txt += (", small consecutive integers)" if st.dense else ")")
    if hint.kind:
        agrees = (hint.kind == "labels") == labels
        txt += f"; {hint.why} {'agrees' if agrees else 'says ' + hint.kind + ', the values do not agree'}"
    return KindGuess("labels" if labels else "image", txt, "values")


def guess_kind(sample: np.ndarray, *, pair_axes: Sequence[int], integer: bool, path: str | os.PathLike | None = None,
               header_kind: str | None = None, header_why: str = "", header_text: str = "",
               display_range: bool = False, several_volumes: bool = False, requested: str = "auto") -> KindGuess:
    """Image or labels for a file whose sample of (scaled) voxel values is ``sample``.

    ``integer``: the data type the reader gives is an integer type. ``header_kind``/``header_why``: what the
    header says outright (e.g. the NIfTI label intent), if anything. ``header_text``: free text of the header
    (intent name, description), used like the file name. ``requested``: the caller's ``kind``.
    """
    if check_kind(requested) != "auto":
        return KindGuess(requested, f"opened as {requested} on request (kind={requested!r})", "user")
    if header_kind is not None:
        return KindGuess(header_kind, header_why, "header")
    hint = name_hint(path, header_text, display_range)
    if not integer:
        return KindGuess("image", "floating-point values", "values")
    if several_volumes:
        return KindGuess("image", "several volumes in one file", "values")
    st = value_stats(sample, pair_axes)
    if st.n and st.lo < 0:
        return KindGuess("image", f"negative values ({st.describe()})", "values")
    if st.hi > MAX_LABEL_VALUE:
        return KindGuess("image", f"values above {MAX_LABEL_VALUE} ({st.describe()})", "values")
    return decide_from_values(st, hint)


# -- NIfTI header evidence ---------------------------------------------------------------------------
#: NIfTI intent codes that mean labels: NIFTI_INTENT_LABEL and NIFTI_INTENT_NEURONAME.
NIFTI_LABEL_INTENTS = {1002: "NIFTI_INTENT_LABEL", 1003: "NIFTI_INTENT_NEURONAME"}


def _header_text(hdr: Any, field: str) -> str:
    try:
        raw = np.asarray(hdr[field]).tobytes()
        return raw.split(b"\0", 1)[0].decode("latin-1").strip()
    except Exception:  # Analyze headers lack the field; damaged text is no evidence
        return ""


def nifti_evidence(hdr: Any, slope: float, inter: float) -> dict[str, Any]:
    """``guess_kind`` keywords from a NIfTI header: the intent code, its text fields, the display range and
    the intensity rescaling (``scl_slope``/``scl_inter``, as applied)."""
    out: dict[str, Any] = {"header_kind": None, "header_why": "", "display_range": False}
    try:
        code = int(hdr["intent_code"])
    except Exception:  # Analyze headers have no intent
        code = 0
    name, descrip = _header_text(hdr, "intent_name"), _header_text(hdr, "descrip")
    out["header_text"] = " ".join(t for t in (name, descrip) if t)
    if code in NIFTI_LABEL_INTENTS:
        out["header_kind"], out["header_why"] = "labels", f"NIfTI intent code {code} ({NIFTI_LABEL_INTENTS[code]})"
    elif code:
        try:
            import nibabel as nib

            label = nib.nifti1.intent_codes.niistring[code]
        except Exception:
            label = "not a label intent"
        out["header_kind"], out["header_why"] = "image", f"NIfTI intent code {code} ({label})"
    elif (slope, inter) != (1.0, 0.0):
        out["header_kind"] = "image"
        out["header_why"] = f"rescaled intensities (scl_slope {slope:g}, scl_inter {inter:g})"
    try:
        lo, hi = float(hdr["cal_min"]), float(hdr["cal_max"])
        out["display_range"] = bool(np.isfinite(lo) and np.isfinite(hi) and hi > lo)
    except Exception:
        pass
    return out
