"""Bad slide/zarr input: each case gives one clear UnreadableInputError (a MedsegError) via open_path.

The same files through the napari reader (no crash, a notification) are tested in
tests/gui/test_reader_writer_gui.py.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import psutil
import pytest
import tifffile
from medseg_io_synth import (
    make_empty_zarr,
    write_absurd_size,
    write_generic,
    write_not_a_tiff,
    write_offsets_past_eof,
    write_truncated,
)

from napari_medseg.core.errors import MedsegError, UnreadableInputError
from napari_medseg.io import open_path
from napari_medseg.io import reader as mreader


def test_truncated_tiff(tmp_path):
    p = write_truncated(tmp_path / "cut.tif")
    with pytest.raises(UnreadableInputError, match="truncated") as e:
        open_path(p)
    assert str(p) in str(e.value)


def test_svs_that_is_not_a_tiff(tmp_path):
    p = write_not_a_tiff(tmp_path / "slide.svs")
    with pytest.raises(UnreadableInputError, match="not a readable TIFF") as e:
        open_path(p)
    assert str(p) in str(e.value) and "misnamed" in str(e.value)


def test_empty_zarr_group(tmp_path):
    p = make_empty_zarr(tmp_path / "empty.zarr")
    with pytest.raises(UnreadableInputError, match="empty zarr group"):
        open_path(p)


def test_no_read_permission_simulated(tmp_path, monkeypatch):
    """Tests run as root, where chmod 000 does not stop reads: simulate the denial instead, once at the
    permission check and once as the PermissionError the OS raises on open."""
    p = write_generic(tmp_path / "locked.tif", shape=(64, 64), n_levels=1)
    real_access = mreader.os.access
    monkeypatch.setattr(mreader.os, "access", lambda path, mode: False if str(path) == str(p) else real_access(path, mode))
    with pytest.raises(UnreadableInputError, match="no permission to read") as e:
        open_path(p)
    assert str(p) in str(e.value)
    monkeypatch.undo()

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tifffile, "TiffFile", denied)
    with pytest.raises(UnreadableInputError, match="no permission to read"):
        open_path(p)


def test_absurd_size_header_allocates_nothing(tmp_path):
    """A 309-byte file claiming 10^7 x 10^7 px (300 TB of RGB): refused from its tile table, before any
    array exists. Decision (docs/formats.md): a header that claims more data than the file holds is an
    error, not a lazy layer."""
    p = write_absurd_size(tmp_path / "huge.tif")
    assert p.stat().st_size < 1000
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableInputError, match=r"claims 10000000 x 10000000 px") as e:
            open_path(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "corrupt" in str(e.value)
    assert peak < 20e6, f"{peak / 1e6:.1f} MB traced while refusing the file"
    assert proc.memory_info().rss - rss0 < 100e6


def test_tile_offsets_past_end_of_file(tmp_path):
    p = write_offsets_past_eof(tmp_path / "eof.tif")
    with pytest.raises(UnreadableInputError, match="truncated or corrupt"):
        open_path(p)


def test_errors_are_medseg_errors(tmp_path):
    assert issubclass(UnreadableInputError, MedsegError)
    p = tmp_path / "x.ndpi"
    p.write_bytes(b"II*\x00" + np.zeros(4, np.uint8).tobytes())  # a TIFF header pointing nowhere
    with pytest.raises(MedsegError, match="not a readable TIFF"):
        open_path(p)
