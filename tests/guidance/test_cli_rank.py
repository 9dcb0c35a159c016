"""``napari-medseg rank``: end to end (the table, the JSON, the labels beside the image) and its errors."""

from __future__ import annotations

import json

import pytest
import tifffile
from guide_helpers import half_image, unet_checkpoint

from napari_medseg.cli import main
from napari_medseg.guidance import RegionRanking
from napari_medseg.io.reader import open_image
from napari_medseg.labels.store import LabelStore


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, half_image(192, 256))
    return path


@pytest.fixture
def ckpt(tmp_path):
    return unet_checkpoint(tmp_path / "m.pt")


def test_rank_writes_the_json_and_prints_the_top(tmp_path, image, ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["rank", str(image), "--model", str(ckpt), "--region-size", "64", "--window", "32", "--top", "5",
                 "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    path = tmp_path / "slide.ranking.json"
    assert path.is_file() and str(path) in out
    rk = RegionRanking.from_json(path)
    assert len(rk.regions) == 12 and rk.complete and rk.heatmap.shape == (3, 4)
    assert rk.checkpoint == str(ckpt.resolve()) and json.loads(path.read_text())["regions"][0]["centre_physical"]
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["rank", "score", "uncert.", "novelty", "painted"]
    rows = lines[1:6]
    assert [int(r.split()[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert lines[6].startswith("12 regions of 64 x 64 px at level 0")
    assert f"{rk.regions[0].score:6.3f}".strip() in rows[0]
    x, y = rk.regions[0].centre[::-1]
    assert f"({x:.0f}, {y:.0f})" in rows[0]
    assert "12/12 windows" in err  # the progress line
    assert "labels:" not in err  # no labels beside the image: none created either
    assert not any(p.name.endswith(".labels.zarr") for p in tmp_path.iterdir())


def test_rank_finds_the_labels_beside_the_image(tmp_path, image, ckpt, capsys):
    src = open_image(image)
    with LabelStore.for_image(src, chunks=(32, 32)) as store:
        store.write((slice(0, 64), slice(0, 64)), 1)
        labels_path = store.path
    out_json = tmp_path / "out" / "r.json"
    out_json.parent.mkdir()
    assert main(["rank", str(image), "--model", str(ckpt), "--region-size", "64", "--window", "32",
                 "--out", str(out_json), "--novelty", "0.5"]) == 0
    err = capsys.readouterr().err
    assert str(labels_path) in err
    rk = RegionRanking.from_json(out_json)
    painted = {r.box: r.painted for r in rk.regions}
    assert painted[((0, 64), (0, 64))] == 1.0 and sum(v > 0 for v in painted.values()) == 1
    assert rk.novelty_weight == 0.5 and max(r.novelty for r in rk.regions) == pytest.approx(1.0)
    # an explicit --labels that is not a store
    assert main(["rank", str(image), "--model", str(ckpt), "--labels", str(tmp_path), "--out", str(out_json)]) == 2
    assert "not a label store" in capsys.readouterr().err


def test_rank_errors_exit_2_with_the_message(tmp_path, image, ckpt, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "r.json"
    assert main(["rank", str(image), "--model", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-medseg rank: error:") and "not a safe napari-medseg checkpoint" in err
    assert not out.exists()
    assert main(["rank", str(image), "--model", str(ckpt), "--out", str(out), "--region-size", "32",
                 "--window", "64"]) == 2
    assert "smaller than the window" in capsys.readouterr().err
    assert main(["rank", str(image), "--model", str(ckpt), "--out", str(tmp_path / "nowhere" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rank", str(image), "--model", "no-such-model", "--out", str(out)]) == 2
    assert "no-such-model does not exist" in capsys.readouterr().err
