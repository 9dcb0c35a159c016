"""A corrupt chunk in an input zarr and a truncated or damaged tile in a TIFF are reported with their
position: when the file is opened (a tile table pointing past the end), when a region is read (napari,
training), and by ``napari-medseg predict`` (stop, or skip with a warning)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from faults_lib import run_cli, textured_rgb, tiny_checkpoint

from napari_medseg.core.errors import UnreadableInputError
from napari_medseg.io import open_path


def _ngff_rgb(tmp_path, h=512, w=512, chunk=128):
    """An RGB NGFF zarr (axes CYX on disk, Blosc) made by the converter from a TIFF."""
    tif = tmp_path / "src.tif"
    tifffile.imwrite(tif, textured_rgb(h, w), tile=(128, 128), photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
    out = tmp_path / "slide.zarr"
    code, err = run_cli(["convert", str(tif), str(out), "--chunk", str(chunk), "--no-progress"])
    assert code == 0, err
    return out


def _truncate(path, keep=30):
    path.write_bytes(path.read_bytes()[:keep])


# ------------------------------------------------------------------------------------------ zarr chunk
def test_truncated_blosc_chunk_is_an_error_not_garbage():
    """Regression (io/lazy.py guard_blosc_decode): numcodecs' Blosc decodes a truncated chunk by reading past
    the end of its buffer (numcodecs issue 228): garbage pixels, or a crash. Now it is refused."""
    import numcodecs

    import napari_medseg.io  # noqa: F401 - installs the guard

    codec = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    data = np.random.default_rng(0).integers(0, 255, 16384, dtype=np.uint8)  # stored raw: 16 + 16384 bytes
    buf = codec.encode(data)
    assert np.array_equal(np.frombuffer(codec.decode(buf), np.uint8), data)
    assert np.array_equal(np.frombuffer(codec.decode(bytes(buf) + b"tail"), np.uint8), data)
    for cut in (0, 10, 30, len(buf) - 1):
        with pytest.raises(ValueError, match="truncated or corrupt Blosc chunk"):
            codec.decode(buf[:cut])


def test_corrupt_zarr_chunk_is_named_with_its_position(tmp_path):
    p = _ngff_rgb(tmp_path)
    _truncate(p / "0" / "0" / "1" / "2")  # level 0, channel block 0, rows 128:256, columns 256:384
    src = open_path(p)[0]  # opening reads only metadata and the smallest level
    assert src.axes == "YXC"
    with pytest.raises(UnreadableInputError) as e:
        np.asarray(src.levels[0][100:300, 200:400])
    msg = str(e.value)
    assert "slide.zarr" in msg and "level 0" in msg and "y=128:256, x=256:384" in msg and "\n" not in msg
    assert np.asarray(src.levels[1]).shape == (256, 256, 3)  # the other levels still read


def test_corrupt_zarr_chunk_through_predict_stops_or_skips_with_its_position(tmp_path):
    p = _ngff_rgb(tmp_path)
    _truncate(p / "0" / "0" / "1" / "2")
    ck = tiny_checkpoint(tmp_path / "m.pt")
    argv = ["predict", str(ck), str(p), "--out", str(tmp_path / "out"), "--window", "128", "--tissue-mask",
            "off", "--device", "cpu"]
    code, err = run_cli(argv)
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "y=128:256, x=256:384" in lines[0]
    argv[argv.index("--out") + 1] = str(tmp_path / "out2")
    code, err = run_cli([*argv, "--on-corrupt", "skip"])
    assert code == 0, err[-2000:]
    assert any(ln.startswith("warning:") and "y=128:256, x=256:384" in ln for ln in err.splitlines()), err


# ------------------------------------------------------------------------------------------ TIFF tile
def test_truncated_tiff_names_the_first_missing_tile(tmp_path):
    """Regression (io/tiff.py): the refusal names the first tile past the end of the file."""
    p = tmp_path / "cut.tif"
    tifffile.imwrite(p, np.random.default_rng(0).integers(0, 255, (512, 512), dtype=np.uint8), tile=(128, 128),
                     compression="zlib")
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        end9 = int(page.dataoffsets[9]) + int(page.databytecounts[9])
    p.write_bytes(p.read_bytes()[: end9 - 10])  # tile 9 (row 2, column 1) is cut
    with pytest.raises(UnreadableInputError) as e:
        open_path(p)
    assert "cut.tif" in str(e.value) and "tile at level 0, y=256:384, x=128:256" in str(e.value)


def test_truncated_strip_tiff_names_the_strip(tmp_path):
    p = tmp_path / "strips.tif"
    tifffile.imwrite(p, np.random.default_rng(0).integers(0, 255, (300, 500), dtype=np.uint8), rowsperstrip=64)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(UnreadableInputError, match=r"strip at level 0, y=128:192, x=0:500"):
        open_path(p)


def test_damaged_tiff_tile_is_named_when_read(tmp_path):
    """A tile whose bytes are garbage (the file has its full length): the read that meets it names it."""
    p = tmp_path / "slide.tif"
    tifffile.imwrite(p, textured_rgb(512, 512), tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(p) as tf:
        off, n = int(tf.pages[0].dataoffsets[6]), int(tf.pages[0].databytecounts[6])  # row 1, column 2
    raw = bytearray(p.read_bytes())
    raw[off: off + n] = b"\x00" * n
    p.write_bytes(bytes(raw))
    src = open_path(p)[0]
    with pytest.raises(UnreadableInputError) as e:
        np.asarray(src.levels[0])
    assert "slide.tif, level 0" in str(e.value) and "y=128:256, x=256:384" in str(e.value)


def test_napari_reader_layers_report_the_position_too(tmp_path):
    """The napari reader's layer data is the same lazy array: napari's slicer gets the same clear error."""
    from napari_medseg._napari.contrib.reader import get_reader

    p = _ngff_rgb(tmp_path)
    _truncate(p / "0" / "0" / "3" / "0")
    layers = get_reader(str(p))(str(p))
    data = layers[0][0]
    level0 = data[0] if isinstance(data, list) else data
    with pytest.raises(UnreadableInputError, match=r"y=384:512, x=0:128"):
        np.asarray(level0[400:450, 0:50])
