"""Our dask computes stay out of dask's process-wide callbacks, where napari registers its tile cache
while it slices (in its own thread with asynchronous slicing): sharing that set across threads raised
KeyError in a training thread."""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.callbacks import Callback

from napari_medseg.core.compute import compute, compute_many, materialize
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.blocks import TileReader
from napari_medseg.training.data import read


class Recorder(Callback):
    def __init__(self) -> None:
        super().__init__(pretask=self._pre)
        self.calls = 0

    def _pre(self, key, dsk, state):
        self.calls += 1


def test_our_computes_do_not_run_or_swap_global_callbacks():
    a = da.from_array(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), chunks=16)
    rec = Recorder()
    with rec:  # as napari's dask cache is registered while it slices
        before = set(Callback.active)
        expected = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        np.testing.assert_array_equal(compute(a[:20, :20]), expected[:20, :20])
        compute_many([a[:8], a[8:16]])
        read(a, (slice(0, 32), slice(0, 32)))
        materialize(a[:16])
        src = ImageSource(levels=[a], axes="YX", pixel_size=(1.0, 1.0), name="a")
        TileReader(src, 0, tile=(16, 16)).read(((0, 40), (0, 40)))
        assert rec.calls == 0
        assert set(Callback.active) == before  # napari's registration left in place
        a.sum().compute()  # a compute without callbacks=() does use them (the test can fail)
        assert rec.calls > 0
