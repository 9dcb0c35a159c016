"""``batch_size="auto"`` (the predictor's default): 4 windows on a CPU, from free memory on a GPU."""

from __future__ import annotations

import pytest
from infer_helpers import read_labels, store_bytes

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference import run_predict
from napari_medseg.inference.batching import AUTO_CPU_BATCH, batch_for_memory, check_batch_size

KW = dict(window=(64, 64), overlap=0.25, tissue_mask=False, block=(64, 64), write_probs="uint8")


def test_batch_size_values_are_checked():
    assert check_batch_size("auto") == "auto" and check_batch_size(" AUTO ") == "auto"
    assert check_batch_size(3) == 3 and check_batch_size("8") == 8
    for bad in (0, -2, "0", "many", True, 2.5, None):
        with pytest.raises(MedsegError, match="'auto' or an integer >= 1"):
            check_batch_size(bad)


def test_batch_for_memory_fits_half_the_free_memory_in_powers_of_two():
    mb = 2**20
    assert batch_for_memory(100 * mb, 8000 * mb) == 32  # 40 fit in half: the power of two below
    assert batch_for_memory(100 * mb, 800 * mb) == 4
    assert batch_for_memory(100 * mb, 150 * mb) == 1  # less than one fits: one (the runner halves no further)
    assert batch_for_memory(1 * mb, 80_000 * mb) == 64  # capped
    assert batch_for_memory(1 * mb, 80_000 * mb, cap=16) == 16
    assert batch_for_memory(0, 10 * mb) == 64


def test_auto_is_four_on_the_cpu_and_changes_no_byte(tmp_path, rgb_source, unet2d):
    """The default ("auto") runs batches of 4 on the CPU, says so, and writes what an explicit 4 writes
    (batches are padded to a fixed shape, so the batch size never changes a window's result)."""
    auto = run_predict(rgb_source, unet2d, tmp_path / "auto.zarr", device="cpu", **KW)
    two = run_predict(rgb_source, unet2d, tmp_path / "two.zarr", batch_size=2, device="cpu", **KW)
    assert auto.stats["batch_size"] == AUTO_CPU_BATCH and two.stats["batch_size"] == 2
    run_predict(rgb_source, unet2d, tmp_path / "four.zarr", batch_size=4, device="cpu", **KW)
    assert store_bytes(tmp_path / "auto.zarr") == store_bytes(tmp_path / "four.zarr")


@pytest.mark.gpu
def test_auto_batch_on_cuda_is_measured_and_predicts_the_same_labels(tmp_path, rgb_source, unet2d):
    auto = run_predict(rgb_source, unet2d, tmp_path / "auto.zarr", device="cuda", amp=False, **KW)
    b = auto.stats["batch_size"]
    assert 1 <= b <= 64 and b & (b - 1) == 0  # a power of two
    run_predict(rgb_source, unet2d, tmp_path / "one.zarr", batch_size=1, device="cuda", amp=False, **KW)
    assert (read_labels(tmp_path / "auto.zarr") == read_labels(tmp_path / "one.zarr")).mean() > 0.999
