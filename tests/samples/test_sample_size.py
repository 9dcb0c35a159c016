"""``napari-medseg sample slide --size PX``: a smaller slide of the same kind, quick enough for the README's
command-line walkthrough, under the same file names; the 8192 px sample stays what napari opens."""

from __future__ import annotations

import pytest

from napari_medseg.cli import main
from napari_medseg.core.classes import ClassSchema
from napari_medseg.io import open_path
from napari_medseg.samples import slide


def test_small_sample_slide_on_disk(tmp_path, capsys):
    out = tmp_path / "demo"
    full_cached = slide.sample_slide_cached()  # another test may have made the full sample in the shared cache
    assert main(["sample", "slide", "--size", "1024", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample-slide-labels.ome.tif", "sample-slide.ome.tif",
                                                      "slide_classes.json"]
    img = open_path(out / "sample-slide.ome.tif")[0]
    lab = open_path(out / "sample-slide-labels.ome.tif")[0]
    assert img.shape == lab.shape == (1024, 1024) and img.rgb
    assert img.pixel_size == pytest.approx((0.5, 0.5)) and img.unit == "micrometer"
    assert ClassSchema.from_json((out / "slide_classes.json").read_text()).names[1:] == ("stroma", "gland", "nucleus")
    # cached under its own name, beside (never instead of) the full sample
    assert slide.sample_slide_paths(size=1024)[0].name == "sample-slide-v1-1024px.ome.tif"
    assert slide.sample_slide_cached() == full_cached
    assert "sample-slide.ome.tif" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [(["slide", "--size", "3000"], "1024, 2048, 4096, 8192"),
                                          (["ct", "--size", "2048"], "only applies to the slide")])
def test_bad_size_is_one_clear_error(tmp_path, capsys, argv, message):
    assert main(["sample", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "napari-medseg sample: error:" in err and message in err
