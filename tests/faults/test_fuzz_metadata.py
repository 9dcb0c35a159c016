"""Fuzzing the metadata of TIFF, NIfTI and zarr files (hypothesis, bounded and derandomised so it stays
fast and deterministic): opening a mutated file, building its napari layer arguments and reading a corner
of its smallest and largest level either work or raise a ``MedsegError``; nothing else escapes, no more
memory is used than the (plausible) size the file claims, and pixel sizes are positive and finite."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_medseg._napari.layerdata import to_layer_data
from napari_medseg.core.errors import MedsegError
from napari_medseg.io import open_path

EXAMPLES = int(os.environ.get("MEDSEG_FUZZ_EXAMPLES", "40"))  # more for a bug hunt; 40 keeps it ~30 s
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("MEDSEG_FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_TRACED = 64e6  # bytes allocated (Python-traced) while opening (and reading a corner of) a file


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def make_seeds(d: Path) -> dict:
    """Valid small files of each kind, as bytes / folders to mutate."""
    import nibabel as nib
    import tifffile

    from napari_medseg.io.ngff_write import build_pyramid, create_multiscale

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tifffile.imwrite(d / "s.tif", rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), tile=(32, 32),
                     photometric="rgb", compression="zlib", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    nib.save(nib.Nifti1Image(rng.integers(-1000, 1000, (12, 10, 6)).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1])),
             str(d / "v.nii"))
    arrs = create_multiscale(d / "z.zarr", (64, 96), np.uint16, "YX", (0.5, 0.5), "micrometer", (32, 32), n_levels=2)
    arrs[0][...] = rng.integers(0, 4000, (64, 96), dtype=np.uint16)
    build_pyramid(arrs, "YX")
    return {"tiff": (d / "s.tif").read_bytes(), "nifti": (d / "v.nii").read_bytes(), "zarr": d / "z.zarr"}


def _check(path: Path) -> str:
    """Open, describe and read a corner; return what happened. Fails the test on anything but a
    MedsegError, on large allocations, or on a non-positive / non-finite pixel size."""
    tracemalloc.start()
    claimed = 0
    try:
        try:
            sources = open_path(path)
            claimed = max(int(np.prod(s.levels[0].shape)) * s.dtype.itemsize for s in sources)
            for src in sources:
                data, _kw, _kind = to_layer_data(src)  # what napari gets
                assert all(math.isfinite(v) and v > 0 for v in src.pixel_size), src.pixel_size
                assert data is not None
                for lvl in (src.levels[-1], src.levels[0]):
                    corner = tuple(slice(0, 8) if a in "ZYX" else slice(None) for a in src.axes)
                    np.asarray(lvl[corner])
            outcome = "opened"
        except MedsegError as e:
            assert str(e).strip() and "\n" not in str(e).strip(), repr(e)
            outcome = "refused"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # reading a corner may decode whole tiles of a (plausible) size the file claims, never more
    assert peak < max(MAX_TRACED, 4 * claimed), f"{peak / 1e6:.0f} MB traced, {claimed / 1e6:.0f} MB claimed"
    return outcome


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _fresh(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


# ------------------------------------------------------------------------------------------ TIFF
@FUZZ
@given(data=st.data())
def test_mutated_tiff_headers(seeds, scratch, data):
    raw = bytearray(seeds["tiff"])
    head = min(len(raw), 512)  # header, IFD and tag values (tifffile writes them first for small files)
    edits = data.draw(st.lists(st.tuples(st.integers(0, head - 1), st.integers(0, 255)), min_size=1, max_size=6))
    for off, val in edits:
        raw[off] = val
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(8, len(raw)))]
    p = _fresh(scratch) / "slide.tif"
    p.write_bytes(bytes(raw))
    _check(p)


# ------------------------------------------------------------------------------------------ NIfTI
_NIFTI_FIELDS = {  # name: (offset, struct format, values to try)
    "dim": (40, "<8h", None), "datatype": (70, "<h", st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 511, 2304,
                                                                      -5, 32767])),
    "bitpix": (72, "<h", st.integers(-32768, 32767)), "pixdim": (76, "<8f", None),
    "vox_offset": (108, "<f", st.floats(allow_nan=True, allow_infinity=True, width=32)),
    "scl_slope": (112, "<f", st.floats(allow_nan=True, allow_infinity=True, width=32)),
    "scl_inter": (116, "<f", st.floats(allow_nan=True, allow_infinity=True, width=32)),
    "qform_code": (252, "<h", st.integers(-3, 5)), "sform_code": (254, "<h", st.integers(-3, 5)),
    "srow_x": (280, "<4f", None), "magic": (344, "4s", st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"xxxx"])),
}


@FUZZ
@given(data=st.data())
def test_mutated_nifti_headers(seeds, scratch, data):
    raw = bytearray(seeds["nifti"])
    for name in data.draw(st.lists(st.sampled_from(sorted(_NIFTI_FIELDS)), min_size=1, max_size=3, unique=True)):
        off, fmt, values = _NIFTI_FIELDS[name]
        n = struct.calcsize(fmt)
        if name == "dim":
            dims = data.draw(st.lists(st.integers(-2, 32767), min_size=8, max_size=8))
            dims[0] = data.draw(st.integers(-1, 8))
            struct.pack_into(fmt, raw, off, *dims)
        elif fmt.endswith("f") and values is None:
            k = int(fmt[1:-1])
            vals = data.draw(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=k, max_size=k))
            struct.pack_into(fmt, raw, off, *vals)
        else:
            struct.pack_into(fmt, raw, off, data.draw(values))
        assert n <= len(raw)
    p = _fresh(scratch) / "vol.nii"
    p.write_bytes(bytes(raw))
    _check(p)


# ------------------------------------------------------------------------------------------ zarr
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)
_ZARRAY_VALUES = {
    "shape": st.lists(st.integers(-5, 2**45), min_size=0, max_size=4) | _JSON,
    "chunks": st.lists(st.integers(-1, 2**20), min_size=0, max_size=4) | _JSON,
    "dtype": st.sampled_from(["<u2", "|u1", "<f8", "|O", "<U4", "|b1", "<c16", "<M8[s]", ">i4", "garbage", ""]) | _JSON,
    "compressor": st.sampled_from([None, {"id": "zlib", "level": 1}, {"id": "nope"}, {"id": "blosc"}]) | _JSON,
    "fill_value": st.sampled_from([0, None, "NaN", 1e300, "abc", -1]) | _JSON,
    "order": st.sampled_from(["C", "F", "X"]) | _JSON,
    "filters": st.sampled_from([None, [], [{"id": "delta", "dtype": "<u2"}], [{"id": "pickle"}]]) | _JSON,
}


def _ms_mutation(data: st.DataObject, attrs: dict) -> dict:
    ms = attrs["multiscales"][0]
    target = data.draw(st.sampled_from(["axes", "datasets", "path", "scale", "version", "whole", "units"]))
    if target == "axes":
        ms["axes"] = data.draw(_JSON | st.lists(st.sampled_from(["y", "x", "z", "c", "t", "q"]), max_size=5))
    elif target == "datasets":
        ms["datasets"] = data.draw(_JSON)
    elif target == "path":
        ms["datasets"][0]["path"] = data.draw(st.sampled_from(["", ".", "..", "../x", "/abs", "1", "0/0", "nope"])
                                              | _JSON)
    elif target == "scale":
        ms["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": data.draw(
            st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4) | _JSON)}]
    elif target == "units":
        for ax in ms["axes"]:
            ax["unit"] = data.draw(st.sampled_from(["micrometer", "parsec", "", "pixel"]) | _JSON)
    elif target == "version":
        ms["version"] = data.draw(_JSON)
    else:
        attrs["multiscales"] = data.draw(_JSON)
    return attrs


@FUZZ
@given(data=st.data())
def test_mutated_zarr_metadata(seeds, scratch, data):
    p = _fresh(scratch) / "img.zarr"
    shutil.copytree(seeds["zarr"], p)
    if data.draw(st.booleans()):
        meta_path = p / data.draw(st.sampled_from(["0", "1"])) / ".zarray"
        meta = json.loads(meta_path.read_text())
        for key in data.draw(st.lists(st.sampled_from(sorted(_ZARRAY_VALUES)), min_size=1, max_size=2, unique=True)):
            meta[key] = data.draw(_ZARRAY_VALUES[key])
        meta_path.write_text(json.dumps(meta))
    else:
        attrs = _ms_mutation(data, json.loads((p / ".zattrs").read_text()))
        (p / ".zattrs").write_text(json.dumps(attrs))
    _check(p)


# ------------------------------------------------------------------------------------------ found by fuzzing
def test_nifti_with_a_non_finite_affine_is_refused_or_repaired(seeds, tmp_path):
    row = [1.0, 0.0, 0.0, float("inf")]
    raw = bytearray(seeds["nifti"])
    struct.pack_into("<h", raw, 254, 1)  # sform_code: the sform is used
    struct.pack_into("<4f", raw, 280, *row)  # srow_x
    p = tmp_path / "vol.nii"
    p.write_bytes(bytes(raw))
    _check(p)


def test_ngff_scale_that_is_not_a_positive_size_falls_back_to_pixels(seeds, tmp_path):
    """Regression (io/ngff_read.py, found by test_mutated_zarr_metadata): scale 0 (or NaN, or negative) gave
    ``pixel_size`` 0, which napari cannot place; now the image opens in pixel units."""
    for bad in ([0.0, 0.0], [float("nan"), 1.0], [-0.5, 0.5]):
        p = tmp_path / f"img{bad[0]}.zarr"
        shutil.copytree(seeds["zarr"], p)
        attrs = json.loads((p / ".zattrs").read_text())
        attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": bad}]
        (p / ".zattrs").write_text(json.dumps(attrs))
        src = open_path(p)[0]
        assert src.pixel_size == (1.0, 1.0) and src.unit == "pixel", (bad, src.pixel_size)


def test_ome_tiff_with_a_nonsense_physical_size_falls_back_to_pixels(tmp_path):
    """Regression (io/tiff.py): a NaN or negative OME PhysicalSize is not a pixel size."""
    import tifffile

    for bad in (b"NaN", b"-.5"):  # as long as "0.5": the XML is rewritten in place
        p = tmp_path / "x.ome.tif"
        tifffile.imwrite(p, np.zeros((64, 64), np.uint8), ome=True,
                         metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        raw = p.read_bytes()
        assert raw.count(b'PhysicalSizeX="0.5"') == 1
        p.write_bytes(raw.replace(b'PhysicalSizeX="0.5"', b'PhysicalSizeX="' + bad + b'"'))
        src = open_path(p)[0]
        assert src.pixel_size == (1.0, 1.0) and src.unit == "pixel", (bad, src.pixel_size)
