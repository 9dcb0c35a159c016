"""Models that travel, in the widgets (issue 19): the Predict widget runs a bioimage.io package (zip or folder)
chosen from the model library or typed in, the Train widget starts from a library model and exports its
checkpoint as a bioimage.io package through the export dialog (off the main thread, with the test result
shown), and the library combo lists only what fits the open image.

The library entries are real (``sharing.library``) when that module exists, else ``list_entries`` and
``find_in_library`` are replaced by an in-memory library with the same contract."""

from __future__ import annotations

import importlib.util
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from predict_gui_helpers import make_checkpoint, make_widget, noise_image, wait_idle

from napari_medseg._napari.widgets import model_library
from napari_medseg._napari.widgets.export_dialog import ExportDialog, default_package_path
from napari_medseg._napari.widgets.predict_preview import PREVIEW_SUFFIX
from napari_medseg._napari.widgets.train import TrainWidget
from napari_medseg.core.classes import ClassSchema
from napari_medseg.core.errors import MedsegError
from napari_medseg.models import Checkpoint, ModelConfig, NormConfig, build_model, save_checkpoint

HAS_LIBRARY = importlib.util.find_spec("napari_medseg.sharing.library") is not None


@dataclass
class FakeEntry:
    """A library entry as the contract describes it (used only while ``sharing.library`` is missing)."""

    name: str
    model_file: Path
    kind: str
    in_channels: int
    spatial_dims: int
    architecture: str = "unet"
    metrics: dict = field(default_factory=dict)
    description: str = ""
    training_data: tuple = ()
    parent: str | None = None
    pixel_size: tuple | None = None
    unit: str | None = None

    def fits(self, channels=None, spatial_dims=None) -> bool:
        return ((channels is None or channels == self.in_channels)
                and (spatial_dims is None or self.spatial_dims <= spatial_dims))

    def summary(self) -> str:
        dice = f"; Dice {self.metrics['val_dice']:.2f}" if "val_dice" in self.metrics else ""
        return f"{self.name}  {self.architecture} {self.spatial_dims}D, {self.in_channels} ch{dice}"


class Library:
    """Adds models to the real library (in a temporary folder) or to the in-memory one."""

    def __init__(self, folder: Path, monkeypatch) -> None:
        self.folder = folder
        monkeypatch.setenv("NAPARI_MEDSEG_MODELS", str(folder))
        self.fakes: list[FakeEntry] = []
        if not HAS_LIBRARY:
            monkeypatch.setattr(model_library, "list_entries", lambda channels=None, spatial_dims=None: [
                e for e in reversed(self.fakes) if e.fits(channels, spatial_dims)])
            monkeypatch.setattr(model_library, "find_in_library", self._find)

    def _find(self, name: str) -> Path:
        for e in self.fakes:
            if e.name == name:
                return e.model_file
        raise MedsegError(f"no model {name!r} in the library")

    def add(self, path: Path, name: str, *, kind: str, channels: int, dims: int, dice: float = 0.8) -> Path:
        """Add ``path`` as ``name``; returns the model file the library lists for it."""
        if HAS_LIBRARY:
            from napari_medseg.sharing import library

            entry = (library.add_checkpoint(path, name) if kind == "checkpoint" else library.add_file(path, name))
            return Path(entry.model_file)
        self.fakes.append(FakeEntry(name, path, kind, channels, dims, metrics={"val_dice": dice}))
        return path


def _checkpoint(path: Path, channels: int = 1, dims: int = 2) -> Path:
    cfg = ModelConfig(name="unet", spatial_dims=dims, in_channels=channels, out_channels=3, channels=(8, 16, 32))
    ck = Checkpoint(cfg, build_model(cfg).state_dict(), classes=ClassSchema(names=("background", "a", "b")),
                    norm=NormConfig.uint8(channels), meta={"val_dice": 0.8})
    return save_checkpoint(path, ck)


def _package(ck: Path, out: Path) -> Path:
    from napari_medseg.sharing import export_bioimageio

    return export_bioimageio(ck, out, formats=("pytorch_state_dict",), run_test=False).path


@pytest.fixture
def viewer(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDSEG_CONFIG", str(tmp_path / "cfg"))
    return make_napari_viewer()


@pytest.fixture
def lib(tmp_path, monkeypatch) -> Library:
    return Library(tmp_path / "library", monkeypatch)


def test_predict_runs_a_package_chosen_from_the_library(viewer, lib, qtbot, tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt")
    pkg = lib.add(_package(ck, tmp_path / "tiny.zip"), "tiny-pkg", kind="bioimageio", channels=1, dims=2)
    lib.add(_checkpoint(tmp_path / "rgb.pt", channels=3), "rgb-model", kind="checkpoint", channels=3, dims=2)
    lib.add(_checkpoint(tmp_path / "vol.pt", dims=3), "volume-model", kind="checkpoint", channels=1, dims=3)
    w = make_widget(viewer)
    w.library.refresh()
    assert list(w.library.names()) == ["tiny-pkg"]  # a 3-channel or a 3D model does not fit a grey 2D image
    assert w.library.combo.itemText(0).startswith("1 model fits this image")
    assert w.library.combo.itemText(1) == w.library.entries[0].summary()  # the list shows the summaries
    w.library.choose("tiny-pkg")
    assert w.ckpt_edit.text() == str(pkg)
    assert "tiny-pkg" in w.library.combo.toolTip() and str(pkg) in w.library.combo.toolTip()

    w.preview_box.preview()  # the preview runs the package
    qtbot.waitUntil(lambda: not w.preview_box.running, timeout=60_000)
    assert "img" + PREVIEW_SUFFIX in viewer.layers, w.messages.toPlainText()

    w.out_edit.setText(str(tmp_path / "out.zarr"))
    w.predict()  # and so does the whole-image prediction
    wait_idle(qtbot, w)
    assert w.status.text().startswith("done"), w.messages.toPlainText()

    w.ckpt_edit.setText("tiny-pkg")  # a library name, typed
    assert w._checkpoint() == Path(pkg)
    w.ckpt_edit.setText("no-such-model")
    with pytest.raises(MedsegError):
        w._checkpoint()


def test_predict_takes_a_package_folder_and_refuses_other_folders(viewer, qtbot, tmp_path):
    zipped = _package(make_checkpoint(tmp_path / "m.pt"), tmp_path / "tiny.zip")
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(zipped) as z:
        z.extractall(folder)
    w = make_widget(viewer)
    w.ckpt_edit.setText(str(folder))
    assert w._checkpoint() == folder
    w.preview_box.preview()
    qtbot.waitUntil(lambda: not w.preview_box.running, timeout=60_000)
    assert "img" + PREVIEW_SUFFIX in viewer.layers, w.messages.toPlainText()

    w.ckpt_edit.setText(str(tmp_path))  # a folder without rdf.yaml
    w.preview_box.preview()
    qtbot.waitUntil(lambda: not w.preview_box.running, timeout=10_000)
    assert "not a bioimage.io package" in w.messages.entries[-1][2]
    w.ckpt_edit.setText(str(tmp_path / "gone.zip"))
    with pytest.raises(MedsegError, match="does not exist"):
        w._checkpoint()


def test_library_combo_refresh_and_unreadable_library(viewer, lib, tmp_path, monkeypatch):
    w = make_widget(viewer)
    assert w.library.names() == [] and not w.library.combo.isEnabled()
    assert w.library.combo.itemText(0) == "no model fits this image"
    lib.add(make_checkpoint(tmp_path / "m.pt"), "grey-2d", kind="checkpoint", channels=1, dims=2)
    w.library.refresh()  # a model trained meanwhile appears
    assert w.library.names() == ["grey-2d"] and w.library.combo.isEnabled()
    w.library.choose("grey-2d")
    w.library.refresh()  # the choice stays
    assert w.library.current_name() == "grey-2d"

    def broken(**_):
        raise OSError("permission denied")

    monkeypatch.setattr(model_library, "list_entries", broken)
    w.library.refresh()  # a message in the combo, never an exception
    assert w.library.names() == [] and "library unreadable" in w.library.combo.itemText(0)


@pytest.fixture
def train(viewer, lib, tmp_path):
    img = noise_image((128, 128))
    viewer.add_image(img, name="img")
    labels = np.zeros((128, 128), np.uint8)
    labels[10:20, 10:40], labels[60:70, 60:90] = 1, 2
    viewer.add_labels(labels, name="scribbles")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.labels_combo.setCurrentText("scribbles")
    w.out_edit.setText(str(tmp_path / "run"))
    yield w, img
    w.shutdown()


def test_train_starts_from_a_library_model(train, lib, tmp_path):
    w, _ = train
    ck = lib.add(_checkpoint(tmp_path / "a.pt"), "grey-start", kind="checkpoint", channels=1, dims=2)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    if not HAS_LIBRARY:  # an ONNX model predicts but cannot be fine-tuned: not offered
        lib.fakes.append(FakeEntry("onnx-model", onnx, "onnx", 1, 2))
    w.dims_combo.setCurrentText("3D")  # the library model's own dimensions come back with it
    w.init_library.refresh()
    assert w.init_library.names() == ["grey-start"]
    w.init_library.choose("grey-start")
    assert w.init_edit.text() == str(ck)
    assert w.dims_combo.currentText() == "2D" and w.arch_combo.currentText() == "unet"
    assert any("grey-start" in t for _, _, t in w.messages.entries)
    job = w._gather(resume=False)
    assert job["init"] == str(ck)
    w.init_edit.setText("grey-start")  # typed: the library name resolves to its file
    assert w._gather(resume=False)["init"] == str(ck)


def test_train_export_writes_a_package_of_the_open_image(train, qtbot, tmp_path):
    w, img = train
    assert not w.export_btn.isEnabled()  # nothing trained yet
    w.session.last_checkpoint = _checkpoint(tmp_path / "run" / "last.pt")
    w._update_export()
    assert w.export_btn.isEnabled()
    w.export_btn.click()
    dlg = w.export_dialog
    assert isinstance(dlg, ExportDialog) and dlg.isVisible()
    assert "'img'" in dlg.image_label.text()
    assert dlg.out_edit.text() == str(default_package_path(tmp_path / "run" / "last.pt", dlg.name_edit.text()))
    out = tmp_path / "shared" / "grey model.zip"
    dlg.out_edit.setText(str(out))
    dlg.name_edit.setText("grey noise model")
    dlg.authors_edit.setText("Ada Lovelace, Alan Turing")
    dlg.onnx_check.setChecked(False)
    dlg.test_check.setChecked(False)
    dlg.export()
    assert dlg.running and not dlg.export_btn.isEnabled()  # off the main thread
    qtbot.waitUntil(lambda: not dlg.running, timeout=60_000)
    assert dlg.error is None, dlg.error
    assert dlg.result.path == out and out.is_file() and dlg.export_btn.isEnabled()
    assert dlg.result.formats == ("pytorch_state_dict", "torchscript") and dlg.result.test_passed is None
    assert "not tested" in dlg.status.text()
    assert "loading the checkpoint" in dlg.log_view.toPlainText()  # the steps came through
    with zipfile.ZipFile(out) as z:
        rdf = z.read("rdf.yaml").decode()
        with z.open("test_input.npy") as f:
            test_input = np.load(f)
    assert "grey noise model" in rdf and "Alan Turing" in rdf
    # the test input is the middle of the open image (128 x 128 = the test size), not random values
    np.testing.assert_array_equal(test_input[0, 0], img.astype(np.float32))
    assert any("bioimage.io package written" in t for _, _, t in w.messages.entries)


def test_export_dialog_shows_the_test_result_and_failures(viewer, qtbot, tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt")
    dlg = ExportDialog(ck)  # no image open: random test values
    qtbot.addWidget(dlg)
    assert "random values" in dlg.image_label.text()
    dlg.ts_check.setChecked(False)
    dlg.onnx_check.setChecked(False)
    dlg.test_check.setChecked(True)
    dlg.out_edit.setText(str(tmp_path / "pkg.zip"))
    dlg.export()
    qtbot.waitUntil(lambda: not dlg.running, timeout=60_000)
    assert dlg.result is not None and dlg.result.test_passed is True, dlg.log_view.toPlainText()
    assert "test passed" in dlg.status.text()
    assert "passed: Reproduce test outputs" in dlg.log_view.toPlainText()

    blocker = tmp_path / "a file"
    blocker.write_text("")
    dlg.out_edit.setText(str(blocker / "pkg.zip"))  # a folder that cannot be made
    dlg.test_check.setChecked(False)
    dlg.export()
    qtbot.waitUntil(lambda: not dlg.running, timeout=60_000)
    assert dlg.error and dlg.status.text().startswith("Export failed:")
    assert dlg.export_btn.isEnabled()  # ready for another try
    dlg.out_edit.setText("")
    dlg.export()
    assert "Choose where the package goes" in dlg.status.text()


def test_predict_model_box_exports_the_checkpoint_not_a_package(viewer, tmp_path):
    w = make_widget(viewer)
    zipped = _package(make_checkpoint(tmp_path / "m.pt"), tmp_path / "tiny.zip")
    w.ckpt_edit.setText(str(zipped))
    assert w.model_box.export_bioimageio() is None
    assert "not a napari-medseg checkpoint" in w.messages.entries[-1][2]
    w.ckpt_edit.setText(str(tmp_path / "m.pt"))
    dlg = w.model_box.export_bioimageio()
    assert dlg is not None and dlg.isVisible() and "'img'" in dlg.image_label.text()
    dlg.close()
