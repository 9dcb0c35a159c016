"""The transformer attention map through the view-region engine (Predict widget's 'Explain view') and the
``napari-medseg explain`` command; the command offers every kind ``models.explain`` has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.core.source import ImageSource
from napari_medseg.inference.explain_region import explain_region
from napari_medseg.models import Checkpoint, ModelConfig, build_model, save_checkpoint
from napari_medseg.models.normalization import NormConfig

UNETR = ModelConfig(name="unetr", in_channels=1, out_channels=3, channels=(4,), feature_size=12, depths=(2,),
                    num_heads=(3,))


@pytest.fixture(scope="module")
def unetr_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model(UNETR)
    path = tmp_path_factory.mktemp("ck") / "unetr.pt"
    return save_checkpoint(path, Checkpoint(UNETR, net.state_dict(), norm=NormConfig("range", (0.0,), (255.0,))))


def _image(size=(96, 112), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def test_transformer_map_of_a_region(unetr_checkpoint):
    src = ImageSource(levels=[_image()], axes="YX", pixel_size=(0.5, 0.5), name="img", path=None)
    res = explain_region(unetr_checkpoint, src, 0, (slice(10, 80), slice(5, 95)), kind="transformer")
    assert res.kind == "transformer" and len(res.maps) == 1  # 70 x 90: padded to 80 x 96 (multiples of 16)
    m = res.maps[0]
    assert m.shape == (70, 90) and m.dtype == np.float32 and np.isfinite(m).all()
    assert m.min() >= 0 and m.max() <= 1 and m.max() > 0.5
    with pytest.raises(MedsegError, match="no attention gates.*kinds for this model: gradcam, transformer"):
        explain_region(unetr_checkpoint, src, 0, (slice(10, 80), slice(5, 95)), kind="attention")
    with pytest.raises(MedsegError, match="no transformer attention"):
        unet = build_model(ModelConfig(channels=(4, 8), num_res_units=0))
        explain_region(unet, src, 0, (slice(0, 32), slice(0, 32)), kind="transformer")


def test_explain_command_writes_the_transformer_map(unetr_checkpoint, tmp_path, capsys):
    import tifffile

    from napari_medseg.cli import main
    from napari_medseg.io.reader import open_image

    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _image(seed=1))
    out = tmp_path / "att.tif"
    assert main(["explain", str(img), "--model", str(unetr_checkpoint), "--region", "8:72,16:80", "--kind",
                 "transformer", "--out", str(out)]) == 0
    assert "transformer attention" in capsys.readouterr().out
    got = tifffile.imread(out)
    ref = explain_region(unetr_checkpoint, open_image(img), 0, (slice(8, 72), slice(16, 80)),
                         kind="transformer").maps[0]
    assert got.dtype == np.float32 and got.shape == (64, 64)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_the_command_offers_every_kind_without_importing_torch():
    import argparse
    import subprocess
    import sys

    from napari_medseg.cli.explain import add_arguments
    from napari_medseg.models.explain import KINDS

    p = argparse.ArgumentParser()
    add_arguments(p)
    kind = next(a for a in p._actions if a.dest == "kind")
    assert tuple(kind.choices) == KINDS and "transformer" in KINDS
    code = ("import sys; import napari_medseg.cli.explain, napari_medseg.models.explain_kinds; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
