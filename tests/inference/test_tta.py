"""Test-time augmentation modes: flips and the dihedral group (4 rotations x mirror) average the model over
transformed windows; the dihedral average is itself equivariant to rotations, which a plain model is not."""

from __future__ import annotations

import pytest
import torch

from napari_medseg.core.errors import MedsegError
from napari_medseg.inference.modelrun import WindowRunner, tta_identity, tta_mode
from napari_medseg.models import ModelConfig, build_model


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_model(ModelConfig(channels=(4, 8), num_res_units=0, out_channels=3)).eval()


def test_dihedral_average_is_rotation_equivariant(net):
    x = torch.rand(2, 1, 32, 32)
    plain = WindowRunner(net, torch.device("cpu"), batch_size=2)
    tta = WindowRunner(net, torch.device("cpu"), batch_size=2, tta="dihedral")
    rot = lambda t: torch.rot90(t, 1, (2, 3))  # noqa: E731
    assert (plain(rot(x)) - rot(plain(x))).abs().max() > 1e-3  # the model alone is not
    assert torch.allclose(tta(rot(x)), rot(tta(x)), atol=1e-5)
    assert torch.allclose(tta(torch.flip(x, [2])), torch.flip(tta(x), [2]), atol=1e-5)
    assert torch.allclose(tta(x).sum(1), torch.ones(2, 32, 32), atol=1e-5)  # still probabilities


def test_flips_mode_is_the_old_boolean(net):
    x = torch.rand(1, 1, 32, 32)
    a = WindowRunner(net, torch.device("cpu"), batch_size=1, tta=True)(x)
    b = WindowRunner(net, torch.device("cpu"), batch_size=1, tta="flips")(x)
    assert torch.equal(a, b)
    assert tta_identity(True) is True and tta_identity(False) is False and tta_identity("dihedral") == "dihedral"


def test_bad_tta_choices(net):
    with pytest.raises(MedsegError, match="unknown test-time augmentation"):
        tta_mode("rotate")
    with pytest.raises(MedsegError, match="square 2D windows"):
        WindowRunner(net, torch.device("cpu"), batch_size=1, tta="dihedral")(torch.rand(1, 1, 32, 48))
