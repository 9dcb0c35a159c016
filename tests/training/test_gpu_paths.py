"""The CUDA paths of training and prediction (skipped without a GPU; CI has none, so these run only where a
session is lent one: ``pytest -m gpu``)."""

import numpy as np
import pytest
import torch
from helpers import drain

from napari_medseg.inference import predict_region
from napari_medseg.models.checkpoint import load_checkpoint, load_model
from napari_medseg.training import DoneEvent, StepEvent, train

from ._synth import blob_data, blobs, tiny_cfg

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("semi", ["none", "pseudo_label", "mean_teacher"])
def test_training_on_cuda_with_amp_and_channels_last(tmp_path, semi):
    """AMP + channels-last training steps on the GPU give finite losses and a checkpoint that loads on the CPU."""
    data = blob_data((96, 96), n_items=2, unlabelled=1, dense=True, fraction=0.05)
    extra = {} if semi == "none" else {"unlabelled_ratio": 0.5}
    cfg = tiny_cfg(tmp_path, steps=8, val_every=4, val_fraction=0.3, device="cuda", amp=True, channels_last=True,
                   semi=semi, library=False, **extra)
    events, _ = drain(train(cfg, data))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 8 and all(np.isfinite(e.loss) for e in steps)
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.steps == 8
    model, _ = load_model(done.last_checkpoint, device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_region_prediction_on_cuda_matches_cpu(tmp_path):
    """A trained model's live-preview prediction on the GPU (float32, and AMP) against the CPU's."""
    data = blob_data((96, 96), n_items=2, dense=True, fraction=0.05)
    events, _ = drain(train(tiny_cfg(tmp_path, steps=10, device="cuda", library=False), data))
    ck = events[-1].last_checkpoint
    img, _ = blobs((160, 150), seed=9)
    from napari_medseg.core.source import ImageSource

    src = ImageSource([img], "YX", (1.0, 1.0), name="blobs")
    norm = load_checkpoint(ck).norm
    region = (slice(0, 160), slice(0, 150))
    cpu = predict_region(ck, src, 0, region, norm, device="cpu", with_probs=True)
    gpu = predict_region(ck, src, 0, region, norm, device="cuda", with_probs=True)
    assert np.abs(np.asarray(cpu.probs, np.float32) - np.asarray(gpu.probs, np.float32)).max() < 2e-3  # float16 out
    amp = predict_region(ck, src, 0, region, norm, device="cuda", amp=True)
    assert (np.asarray(amp.labels) == np.asarray(cpu.labels)).mean() > 0.99


def test_cuda_memory_is_given_back_after_training(tmp_path):
    """A finished run leaves no large allocations behind on the GPU (the widget trains round after round)."""
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    drain(train(tiny_cfg(tmp_path, steps=4, device="cuda", library=False), blob_data((96, 96))))
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() - before < 16 * 2**20
