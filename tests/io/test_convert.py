"""convert / ``napari-medseg convert``: any readable input to an NGFF pyramid, out of core."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr
from medseg_io_synth import write_generic, write_imagej_volume

from napari_medseg import cli
from napari_medseg.core.errors import MedsegError
from napari_medseg.io import convert as mconvert
from napari_medseg.io import open_path
from napari_medseg.io.convert import convert


def test_convert_slide_keeps_pixels_and_pixel_size(svs_path, tmp_path):
    out = convert(svs_path, tmp_path / "s.zarr", chunk=256)
    assert out == tmp_path / "s.zarr" and not (tmp_path / "s.zarr.partial").exists()
    (src,) = open_path(out)
    assert src.axes == "YXC" and src.rgb
    assert src.pixel_size == pytest.approx((0.2527, 0.2527)) and src.unit == "micrometer"
    with tifffile.TiffFile(svs_path) as tf:
        ref = tf.series[0].levels[0].asarray()
    np.testing.assert_array_equal(src.levels[0].compute(), ref)
    # levels: halved until one chunk; each the 2x2 mean of the one above
    assert [lvl.shape[:2] for lvl in src.levels] == [(1500, 2000), (750, 1000), (375, 500), (188, 250)]
    lvl1 = src.levels[1].compute().astype(int)
    expect = ref[:1500:2, ::2].astype(int) + ref[1::2, ::2] + ref[::2, 1::2] + ref[1::2, 1::2]
    assert np.abs(lvl1 - expect / 4).max() <= 1
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["multiscales"][0]["metadata"]["napari_medseg"]["rgb"] is True
    assert json.loads((out / "0" / ".zarray").read_text())["chunks"] == [3, 256, 256]


def test_convert_volume_keeps_spacing(tmp_path):
    src_path = write_imagej_volume(tmp_path / "v.tif", spacing=2.5, unit="um", xy=0.5)
    out = convert(src_path, tmp_path / "v.zarr", n_levels=2)
    (src,) = open_path(out)
    assert src.axes == "ZYX" and src.unit == "millimeter"
    assert src.pixel_size == pytest.approx((0.0025, 0.0005, 0.0005))
    np.testing.assert_array_equal(src.levels[0].compute(), tifffile.imread(src_path))
    assert src.levels[1].shape == (6, 32, 40)


def test_convert_refuses_existing_output_unless_asked(svs_path, tmp_path):
    out = tmp_path / "s.zarr"
    convert(svs_path, out, n_levels=1)
    with pytest.raises(MedsegError, match="already exists"):
        convert(svs_path, out)
    convert(svs_path, out, n_levels=2, overwrite=True)
    assert len(open_path(out)[0].levels) == 2
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(MedsegError, match="not a zarr"):
        convert(svs_path, other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"


def test_interrupted_convert_leaves_no_output(svs_path, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mconvert, "build_pyramid", boom)
    with pytest.raises(KeyboardInterrupt):
        convert(svs_path, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    monkeypatch.undo()
    convert(svs_path, tmp_path / "s.zarr")  # a stale .partial from the interruption is cleaned up
    assert (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.partial").exists()


def test_each_output_chunk_has_one_writer(svs_path, tmp_path, monkeypatch):
    writes: list[tuple[int, tuple[slice, ...]]] = []
    real = zarr.Array.__setitem__

    def spy(self, key, value):
        writes.append((self.shape, key))
        return real(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", spy)
    convert(svs_path, tmp_path / "s.zarr", chunk=128, block_bytes=400_000)
    by_level: dict[tuple[int, ...], list] = {}
    for shape, key in writes:
        by_level.setdefault(shape, []).append(key)
    assert len(by_level) >= 3
    for shape, keys in by_level.items():
        covered = np.zeros(shape[1:], np.int32)
        for key in keys:
            assert key[1].start % 128 == 0 and key[2].start % 128 == 0
            covered[key[1], key[2]] += 1
        assert (covered == 1).all(), f"level {shape}: some chunk written twice or never"


def _peak_convert(src_path, out) -> int:
    tracemalloc.start()
    try:
        convert(src_path, out, chunk=256, block_bytes=1_000_000, workers=2)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_convert_memory_is_bounded(tmp_path):
    """Peak memory is a few blocks: it does not grow with the image (4x the pixels, same peak)."""
    small = write_generic(tmp_path / "small.tif", shape=(1024, 1536), n_levels=1, compression=None)
    big = write_generic(tmp_path / "big.tif", shape=(2048, 3072), n_levels=1, compression=None)
    peak_small = _peak_convert(small, tmp_path / "small.zarr")
    peak_big = _peak_convert(big, tmp_path / "big.zarr")
    assert peak_big < 1.5 * peak_small, f"peak grew from {peak_small / 1e6:.1f} to {peak_big / 1e6:.1f} MB"
    # a block is at least one source dask chunk (1024 x 1024 x 3); a few are in flight
    block = 1024 * 1024 * 3
    assert peak_big < 6 * block, f"peak {peak_big / 1e6:.1f} MB is more than a few {block / 1e6:.1f} MB blocks"
    (src,) = open_path(tmp_path / "big.zarr")
    np.testing.assert_array_equal(src.levels[0][1000:1300, 2000:2600].compute(),
                                  tifffile.imread(big)[1000:1300, 2000:2600])


def test_cli_convert_progress_and_refusal(svs_path, tmp_path, capsys):
    out = tmp_path / "c.zarr"
    assert cli.main(["convert", str(svs_path), str(out), "--chunk", "256", "--levels", "2"]) == 0
    err = capsys.readouterr().err
    assert "100%" in err  # the tqdm bar reached the end
    assert len(open_path(out)[0].levels) == 2
    assert cli.main(["convert", str(svs_path), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["convert", str(svs_path), str(out), "--overwrite", "--no-progress"]) == 0
    assert cli.main(["convert", str(tmp_path / "missing.svs"), str(tmp_path / "m.zarr")]) == 2
    assert "no such file" in capsys.readouterr().err
