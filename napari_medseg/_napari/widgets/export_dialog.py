"""Sharing a trained model from the widgets: the bioimage.io export dialog and the Predict widget's Model box.

``ExportDialog`` asks for what a bioimage.io package states about the model (name, description, authors,
licence), the weights formats besides the state dict (TorchScript, ONNX), the output ``.zip`` and whether to
test the package with ``bioimageio.core``, then runs ``sharing.export_bioimageio`` in a napari thread worker
(``jobs.workers.start_generator_worker``): the dialog stays responsive, its progress line follows the
export's steps (relayed to the main thread by a Qt signal), and the end shows the package, whether its test
passed and the test's log. When an image layer is open the test input and the cover are its middle
(``sharing.bioimageio_export.image_crop``, read in the worker at the pixel size the model was trained at);
an image that does not fit the model (channels, dims) falls back to random test values, saying so.

``ModelBox`` is the Predict widget's "Model" group: save the checkpoint as, export TorchScript / ONNX, and
export a bioimage.io package with the dialog.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_medseg._napari.jobs.workers import start_generator_worker, user_message
from napari_medseg._napari.widgets.qt_helpers import button_row, path_row
from napari_medseg._napari.widgets.settings import load_settings, save_settings
from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)
LICENSES = ("CC-BY-4.0", "CC0-1.0", "MIT", "BSD-3-Clause", "Apache-2.0", "CC-BY-NC-4.0")


def default_package_path(checkpoint: Path, name: str) -> Path:
    """``<checkpoint's folder>/<name as a file name>.zip``: beside the weights it was made from."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.") or checkpoint.stem
    return checkpoint.parent / f"{slug}.zip"


def export_job(checkpoint: str, out: str, source: Any, relay: Callable[[str], None],
               **kwargs: Any) -> Generator[Any, None, None]:
    """Worker thread: the test image cut from ``source`` (if any), then ``export_bioimageio``; yields the
    ``ExportedPackage``. Progress goes through ``relay`` (thread-safe: a queued Qt signal)."""
    from napari_medseg.sharing.bioimageio_export import export_bioimageio, image_crop

    test = None
    if source is not None:
        relay(f"reading the test image from {source.name!r}")
        try:
            test = image_crop(source, checkpoint)
        except MedsegError as e:
            relay(f"note: {e}; the test input is random values instead")
    yield export_bioimageio(checkpoint, out, test_image=test, on_progress=relay, **kwargs)


class _Relay(QObject):
    said = Signal(str)


class ExportDialog(QDialog):
    """Export ``checkpoint`` as a bioimage.io package (see the module docstring). ``image``: the open image
    layer's (name, ``ImageSource``) for the test input and cover, or None. ``on_done(package)`` runs once a
    package is written (e.g. to say so in the widget's message log)."""

    SETTINGS = "bioimageio_export"

    def __init__(self, checkpoint: str | Path, *, image: tuple[str, Any] | None = None,
                 on_done: Callable[[Any], None] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export bioimage.io package")
        self.checkpoint = Path(checkpoint)
        self._image = image
        self._on_done = on_done
        self._worker: Any = None
        self._progress: Any = None
        self.result: Any = None  # the ExportedPackage of the last export
        self.error: str | None = None
        self._relay = _Relay()
        self._relay.said.connect(self._said)
        self._build()

    def _build(self) -> None:
        s = load_settings(self.SETTINGS)
        lay = QVBoxLayout(self)
        f = QFormLayout()
        f.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        f.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        name = self._checkpoint_name()
        self.name_edit = QLineEdit(name)
        self.name_edit.setToolTip("The model's name in the package (at least 5 characters)")
        self.desc_edit = QPlainTextEdit()
        self.desc_edit.setPlaceholderText("what it segments, in which images (default: architecture and classes)")
        self.desc_edit.setMaximumHeight(self.fontMetrics().lineSpacing() * 3 + 12)
        self.authors_edit = QLineEdit(str(s.get("authors", "")))
        self.authors_edit.setPlaceholderText("Ada Lovelace, Alan Turing")
        self.authors_edit.setToolTip("The package's authors, separated by commas")
        self.license_combo = QComboBox()
        self.license_combo.setEditable(True)  # any SPDX identifier
        self.license_combo.addItems(LICENSES)
        self.license_combo.setCurrentText(str(s.get("license", LICENSES[0])))
        self.license_combo.setToolTip("An SPDX licence identifier for the weights (bioimage.io checks it)")
        fm = QHBoxLayout()
        self.ts_check = QCheckBox("TorchScript")
        self.onnx_check = QCheckBox("ONNX")
        for c, key in ((self.ts_check, "torchscript"), (self.onnx_check, "onnx")):
            c.setChecked(bool(s.get(key, True)))
            c.setToolTip("Weights also in this format (checked against PyTorch), for tools without napari-medseg")
            fm.addWidget(c)
        fm.addStretch(1)
        self.test_check = QCheckBox("test the package (bioimageio.core)")
        self.test_check.setChecked(bool(s.get("test", True)))
        self.test_check.setToolTip("Every weights format must reproduce the test output; a few seconds more")
        row, self.out_edit = path_row("where the .zip goes", self._pick_out)
        self.out_edit.setText(str(default_package_path(self.checkpoint, name)))
        self.image_label = QLabel(self._image_text())
        self.image_label.setWordWrap(True)
        f.addRow("name", self.name_edit)
        f.addRow("description", self.desc_edit)
        f.addRow("authors", self.authors_edit)
        f.addRow("licence", self.license_combo)
        f.addRow("weights", fm)
        f.addRow("package", row)
        f.addRow(self.image_label)
        f.addRow(self.test_check)
        lay.addLayout(f)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 0)  # busy: the steps have no known length
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setVisible(False)
        self.status = QLabel(f"from {self.checkpoint}")
        self.status.setWordWrap(True)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setPlaceholderText("The export's steps and the test's result appear here.")
        self.log_view.setMinimumHeight(self.fontMetrics().lineSpacing() * 6)
        lay.addWidget(self.progress_bar)
        lay.addWidget(self.status)
        lay.addWidget(self.log_view, 1)
        btns, (self.export_btn, self.close_btn) = button_row(("Export", self.export), ("Close", self.close),
                                                             stretch=True)
        self.export_btn.setDefault(True)
        lay.addLayout(btns)
        self.resize(460, 520)

    def _checkpoint_name(self) -> str:
        try:
            from napari_medseg.models.checkpoint import load_checkpoint

            ck = load_checkpoint(self.checkpoint)
            name = str(ck.meta.get("name") or "")
            classes = ", ".join(ck.classes.names[1:])
            return name or f"{ck.model_config.name} {ck.model_config.spatial_dims}D {classes}".strip()
        except Exception:  # the export says what is wrong with the file
            log.debug("no name from %s", self.checkpoint, exc_info=True)
            return self.checkpoint.stem

    def _image_text(self) -> str:
        if self._image is None:
            return "Test input and cover: random values (open an image like the training data to use it)."
        return f"Test input and cover: the middle of {self._image[0]!r} at the model's pixel size."

    def _pick_out(self) -> None:
        p, _ = QFileDialog.getSaveFileName(self, "bioimage.io package", self.out_edit.text(), "Zip (*.zip)")
        if p:
            self.out_edit.setText(p if p.lower().endswith(".zip") else p + ".zip")

    @property
    def running(self) -> bool:
        return self._worker is not None

    def values(self) -> dict[str, Any]:
        """The export's keyword arguments as the form stands (MedsegError for a missing output)."""
        out = self.out_edit.text().strip()
        if not out:
            raise MedsegError("Choose where the package goes (the .zip file).")
        formats = ("pytorch_state_dict",) + (("torchscript",) if self.ts_check.isChecked() else ()) + (
            ("onnx",) if self.onnx_check.isChecked() else ())
        return {"out": out, "name": self.name_edit.text().strip() or None,
                "description": self.desc_edit.toPlainText().strip() or None,
                "authors": tuple(a.strip() for a in self.authors_edit.text().split(",") if a.strip()),
                "license": self.license_combo.currentText().strip() or LICENSES[0], "formats": formats,
                "run_test": self.test_check.isChecked()}

    def export(self) -> None:
        """Write the package in a worker thread; the dialog shows the steps and, at the end, the test."""
        if self._worker is not None:
            return
        try:
            v = self.values()
            save_settings(self.SETTINGS, {"authors": self.authors_edit.text(), "license": v["license"],
                                          "torchscript": self.ts_check.isChecked(),
                                          "onnx": self.onnx_check.isChecked(), "test": v["run_test"]})
        except MedsegError as e:
            self._failed(e)
            return
        out = v.pop("out")
        self.result, self.error = None, None
        self.log_view.clear()
        self._set_running(True)
        self._said(f"exporting {self.checkpoint.name} to {out}")
        try:
            from napari.utils import progress

            self._progress = progress(total=0, desc="napari-medseg: bioimage.io export")
            source = self._image[1] if self._image is not None else None
            self._worker = start_generator_worker(
                export_job, str(self.checkpoint), out, source, self._relay.said.emit, **v,
                on_event=self._on_result, on_finished=self._on_finished, on_error=self._failed,
                notify=lambda text: None)  # the dialog shows the error itself
        except Exception as e:
            log.exception("could not start the export")
            self._failed(e)
            self._on_finished()

    def _set_running(self, running: bool) -> None:
        self.export_btn.setEnabled(not running)
        self.progress_bar.setVisible(running)

    def _said(self, text: str) -> None:
        self.status.setText(text)
        self.log_view.appendPlainText(text)

    def _on_result(self, pkg: Any) -> None:
        self.result = pkg
        checks = [line for line in (pkg.test_log or "").splitlines() if line and not line[0].isspace()]
        failed = [line for line in checks if not line.startswith("passed")]
        if pkg.test_passed is None:
            verdict = "not tested"
        elif pkg.test_passed:
            verdict = f"test passed ({len(checks)} checks)"
        else:
            verdict = f"TEST FAILED ({len(failed)} of {len(checks)} checks): see the log below"
        self.status.setText(f"Wrote {pkg.path} ({', '.join(pkg.formats)}); {verdict}.")
        self.status.setStyleSheet("" if pkg.test_passed is not False else "color: #e06c6c;")
        if pkg.test_log:
            self.log_view.appendPlainText("\n" + pkg.test_log)
        if failed:  # the end of the log, in view: what failed
            self.log_view.appendPlainText("\nfailed checks:\n" + "\n".join(failed))
        if self._on_done is not None:
            try:
                self._on_done(pkg)
            except Exception:
                log.exception("on_done failed")

    def _failed(self, exc: BaseException | str) -> None:
        self.error = exc if isinstance(exc, str) else user_message(exc)
        self.status.setText(f"Export failed: {self.error}")
        self.status.setStyleSheet("color: #e06c6c;")
        self.log_view.appendPlainText(f"error: {self.error}")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def wait(self, timeout_s: float = 120.0) -> None:
        """Block until the export ends (tests and scripts)."""
        if self._worker is not None:
            self._worker.await_workers(msecs=int(timeout_s * 1000))

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt)
        # an export cannot be interrupted halfway; it finishes and the dialog, hidden, keeps its result
        super().closeEvent(event)


def open_image(get: Callable[[], tuple[str, Any] | None]) -> tuple[str, Any] | None:
    """``get()`` (the open image's name and source), or None when it cannot be had: the export then uses
    random test values rather than failing."""
    try:
        return get()
    except Exception:
        log.warning("no test image for the export", exc_info=True)
        return None


def open_export_dialog(owner: QWidget, checkpoint: Path, image: tuple[str, Any] | None,
                       messages: Any = None) -> ExportDialog:
    """Show ``owner``'s export dialog for ``checkpoint`` (a new one unless an export runs in the open one)."""
    old = getattr(owner, "export_dialog", None)
    if old is not None and old.running:
        old.show()
        old.raise_()
        return old
    on_done = None
    if messages is not None:
        def on_done(pkg: Any) -> None:
            verdict = "" if pkg.test_passed is None else (" (test passed)" if pkg.test_passed else " (TEST FAILED)")
            messages.say("info" if pkg.test_passed is not False else "warning",
                         f"bioimage.io package written: {pkg.path}{verdict}", toast=False)
    dlg = ExportDialog(checkpoint, image=image, on_done=on_done, parent=owner)
    owner.export_dialog = dlg
    dlg.show()
    dlg.raise_()
    return dlg


class ModelBox(QGroupBox):
    """The Predict widget's "Model" group: save the checkpoint as, export TorchScript / ONNX / bioimage.io.
    ``checkpoint()`` gives the model (MedsegError if none); ``image()`` the open image (name, source) or None."""

    def __init__(self, *, checkpoint: Callable[[], Path], image: Callable[[], tuple[str, Any] | None],
                 messages: Any) -> None:
        super().__init__("Model")
        self._checkpoint, self._image, self.messages = checkpoint, image, messages
        self.export_dialog: ExportDialog | None = None
        g = QGridLayout(self)
        for i, (text, fn, tip) in enumerate((
                ("Save as…", self.save_model, "A copy of the checkpoint (.pt and its .json)"),
                ("bioimage.io…", self.export_bioimageio, "A bioimage.io package (.zip) for other tools and "
                                                         "bioimage.io; tested on export"),
                ("TorchScript…", lambda: self.export_model("torchscript"), "A TorchScript file (.ts)"),
                ("ONNX…", lambda: self.export_model("onnx"), "An ONNX file (.onnx)"))):
            btn = QPushButton(text)
            btn.setToolTip(tip)
            btn.clicked.connect(fn)
            g.addWidget(btn, i // 2, i % 2)
            setattr(self, {0: "save_btn", 1: "bioimageio_btn", 2: "torchscript_btn", 3: "onnx_btn"}[i], btn)

    def _checkpoint_file(self) -> Path | None:
        try:
            ck = self._checkpoint()
        except MedsegError as e:
            self.messages.error(str(e))
            return None
        from napari_medseg.sharing.bioimageio_import import is_foreign_model_file

        if is_foreign_model_file(ck):
            self.messages.error(f"{ck.name} is not a napari-medseg checkpoint; saving and exporting start from a "
                                "checkpoint (.pt) trained in the Train widget.")
            return None
        return ck

    def save_model(self) -> None:
        ck = self._checkpoint_file()
        if ck is None:
            return
        p, _ = QFileDialog.getSaveFileName(self, "Save model as", ck.name, "Checkpoints (*.pt)")
        if not p:
            return
        try:
            from napari_medseg.models import load_checkpoint, save_checkpoint

            save_checkpoint(p, load_checkpoint(ck))
            self.messages.info(f"saved {p}")
        except MedsegError as e:
            self.messages.error(str(e))

    def export_model(self, fmt: str) -> None:
        ck = self._checkpoint_file()
        if ck is None:
            return
        ext = ".ts" if fmt == "torchscript" else ".onnx"
        p, _ = QFileDialog.getSaveFileName(self, f"Export {fmt}", ck.with_suffix(ext).name, f"*{ext}")
        if not p:
            return
        try:
            from napari_medseg.models.export import export_checkpoint

            export_checkpoint(ck, p, fmt)
            self.messages.info(f"exported {p} (checked against PyTorch on random input)")
        except MedsegError as e:
            self.messages.error(str(e))
        except Exception as e:
            log.exception("export failed")
            self.messages.error(f"Export failed: {e}")

    def export_bioimageio(self) -> ExportDialog | None:
        ck = self._checkpoint_file()
        if ck is None:
            return None
        return open_export_dialog(self, ck, open_image(self._image), self.messages)
