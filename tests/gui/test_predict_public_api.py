"""The Predict widget uses only public napari API (issue: napari showed a 'Private attribute access' warning
over the canvas). napari hands a plugin's dock widget its viewer wrapped in ``PublicOnlyProxy``
(``napari/utils/_proxies.py``), which warns with ``FutureWarning("Private attribute access ('Labels._x') in
this context (e.g. inside a plugin widget or dock widget) is deprecated ...")`` whenever code outside napari
reaches a private attribute through it; the warning points at the line that did (``stacklevel=3``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from predict_gui_helpers import make_checkpoint, make_widget, noise_image, wait_idle

import napari_medseg

#: the Predict widget's own modules: none of them may reach a private napari attribute
OWN = {"predict.py", "predict_job.py", "predict_preview.py"}


def test_whole_predict_flow_uses_public_napari_api_only(make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    ck = make_checkpoint(tmp_path / "m.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"no checkpoint" * 10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer = make_napari_viewer_proxy()  # what napari gives a plugin widget
        w = make_widget(viewer, noise_image((600, 520)))  # a two-level result: its overview is refreshed
        w.ckpt_edit.setText(str(ck))
        w.out_edit.setText(str(tmp_path / "out.zarr"))
        for _ in range(2):  # a run, and a second one on the same output (its layer is replaced)
            w.predict()
            wait_idle(qtbot, w)
            assert w.status.text().startswith("done"), w.status.text()
        for _ in range(2):  # a preview, and a second one (its layer's data is replaced)
            w.preview_box.preview()
            qtbot.waitUntil(lambda: not w.preview_box.running, timeout=60_000)
            assert w.status.text().startswith("preview of"), w.status.text()
        assert [lay.name for lay in viewer.layers] == ["img", "img prediction", "img preview"]  # none twice
        w.ckpt_edit.setText(str(bad))  # and a failure
        w.out_edit.setText(str(tmp_path / "out2.zarr"))
        w.predict()
        wait_idle(qtbot, w)
        assert w.status.text().startswith("Prediction failed"), w.status.text()
        qtbot.wait(100)
    private = [(Path(c.filename), c.lineno, str(c.message).split(" in this context")[0]) for c in caught
               if "Private attribute access" in str(c.message)]
    own = [p for p in private if p[0].name in OWN]
    assert not own, f"the Predict widget reaches private napari attributes: {own}"
    package = Path(napari_medseg.__file__).parent
    shared = sorted({(str(f.relative_to(package)), line, what) for f, line, what in private
                     if f.is_relative_to(package)})
    if shared:  # reached through the shared helpers the widget calls, owned elsewhere: reported, not hidden
        pytest.xfail(f"shared helpers reach private napari attributes: {shared}")
