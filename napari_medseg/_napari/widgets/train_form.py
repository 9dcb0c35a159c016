"""The Train widget's settings form: data, model and training fields, the settings remembered between
sessions, and the defaults planned from the image and the machine.

``TrainForm`` is a base of ``TrainWidget`` (its fields are the widget's attributes, which tests and
benchmarks use). Switching *dimensions* applies that kind's defaults: 2D patch 256, batch 4; 3D the patch
``training.planning.default_edge`` plans from the volume's shape and spacing and the free memory (e.g. 64 x
128 x 128 on the sample CT), batch 2. The line under *patch size* shows the patch that runs (a 3D patch spans
the same millimetres in Z and never more than the volume) and, in 3D, the memory a step needs.

Settings are saved *unconfirmed* at Start and confirmed by the first finished step (``settings.py``): a
setting that killed napari (out of memory) is not loaded again; the next session says so instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QWidget,
)

from napari_medseg._napari.widgets.model_library import (
    TRAINABLE_FILTER,
    ModelLibraryCombo,
    image_fit,
    model_path_row,
    trainable,
)
from napari_medseg._napari.widgets.qt_helpers import path_row
from napari_medseg._napari.widgets.settings import load_settings, take_unconfirmed
from napari_medseg._napari.widgets.train_texts import (
    ADVANCED_TIPS,
    DEFAULTS,
    PATCH_TOOLTIP,
    SEMI_CHOICES,
    SEMI_TOOLTIP,
)
from napari_medseg.training.config import AUTO_CONTACT_WEIGHT

log = logging.getLogger(__name__)


#: the device choice that trains on a CPU with native bfloat16 in float32 (``amp`` off)
FLOAT32_CPU = "cpu (float32)"


def available_devices() -> list[str]:
    import torch

    devs = []
    if torch.cuda.is_available():
        devs += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    devs.append("cpu")
    from napari_medseg.models.devices import cpu_bf16_native

    if cpu_bf16_native():  # "cpu" trains under bfloat16 autocast there (docs/training.md, Devices)
        devs.append(FLOAT32_CPU)
    return devs


def _form(box: QGroupBox) -> QFormLayout:
    """A form that puts a field under its label when the dock is too narrow for both on one line."""
    f = QFormLayout(box)
    f.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    f.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    return f


def _combo() -> QComboBox:
    """A combo box whose width does not follow its longest item (a long layer name would widen the dock):
    it shows what fits and the full text in its list."""
    c = QComboBox()
    c.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    c.setMinimumContentsLength(8)
    return c


def _adv_spin(lo: float, hi: float, value: float, tip: str, *, step: float | None = None, decimals: int | None = None,
              off: str | None = None, prefix: str = "", suffix: str = ""):
    """A number field of the Advanced part: ``off`` names its lowest value (e.g. "off"), ``tip`` its
    ``ADVANCED_TIPS`` entry."""
    w = _spin(lo, hi, value, step=step, decimals=decimals)
    if off:
        w.setSpecialValueText(off)
    w.setPrefix(prefix)
    w.setSuffix(suffix)
    w.setToolTip(ADVANCED_TIPS[tip])
    return w


def _spin(lo: float, hi: float, value: float, step: float | None = None, decimals: int | None = None):
    if decimals is None:
        w = QSpinBox()
    else:
        w = QDoubleSpinBox()
        w.setDecimals(decimals)
    w.setRange(lo, hi)
    if step:
        w.setSingleStep(step)
    w.setValue(value)
    return w


class TrainForm:
    """The settings part of ``TrainWidget`` (see the module docstring)."""

    SETTINGS = "train"
    viewer: Any
    messages: Any

    # -- layout -------------------------------------------------------------------------------------
    def _build_form(self, lay: Any) -> None:
        self._counting: set[Any] = set()  # model configs whose activations a worker is counting (plan line)
        data = QGroupBox("Data")
        f = _form(data)
        self.image_combo = _combo()
        self.labels_combo = _combo()
        f.addRow("image", self.image_combo)
        f.addRow("labels", self.labels_combo)
        lay.addWidget(data)

        model = QGroupBox("Model")
        f = _form(model)
        self.arch_combo = _combo()
        self.dims_combo = _combo()
        self.dims_combo.addItems(["2D", "3D"])
        ck, self.init_edit = model_path_row("train from scratch, or pick a checkpoint / package", self,
                                            title="Start from", file_filter=TRAINABLE_FILTER)
        self.init_edit.setToolTip("Fine-tune a model: a checkpoint (.pt), a bioimage.io package (.zip or folder) "
                                  "of a napari-medseg architecture, or a library name; empty: from scratch.")
        self.init_library = ModelLibraryCombo(keep=trainable)  # library models this image can fine-tune
        self.init_library.chosen.connect(self._init_from_library)
        self.device_combo = _combo()
        f.addRow("architecture", self.arch_combo)
        f.addRow("dimensions", self.dims_combo)
        f.addRow("start from", ck)
        f.addRow("from library", self.init_library)
        f.addRow("device", self.device_combo)
        self.export_btn = QPushButton("Export bioimage.io…")
        self.export_btn.setToolTip("Export the trained model (the best checkpoint, else the last) as a bioimage.io "
                                   "package (.zip) for other tools and bioimage.io; enabled once a run saved one")
        self.export_btn.clicked.connect(lambda: self.export_bioimageio())
        self.distil_btn = QPushButton("Distil for deployment")
        self.distil_btn.setToolTip("Train a light model (light_unet, several times faster on a CPU) from the trained "
                                   "one: it learns the trained model's prediction on every pixel of the image, beside "
                                   "your labels (docs/deployment.md, 'Distillation for deployment')")
        self.distil_btn.clicked.connect(lambda: self.distil())
        f.addRow("trained model", self.export_btn)
        f.addRow("", self.distil_btn)  # its own row: side by side the two would widen the dock
        lay.addWidget(model)

        tr = QGroupBox("Training")
        f = _form(tr)
        self.patch_spin = _spin(32, 1024, 256, 32)
        self.patch_spin.setToolTip(PATCH_TOOLTIP)
        self.plan_label = QLabel("")
        self.plan_label.setWordWrap(True)
        self.batch_spin = _spin(1, 256, 4)
        self.lr_spin = _spin(1e-6, 1.0, 1e-3, 1e-4, decimals=5)
        self.steps_spin = _spin(1, 1_000_000, 2000, 100)
        self.budget_spin = _spin(0, 24 * 3600, 0, 60)
        self.budget_spin.setSuffix(" s")
        self.budget_spin.setSpecialValueText("none")  # 0: no time limit (shorter than a suffix saying so)
        self.semi_combo = _combo()
        for label, value in SEMI_CHOICES:
            self.semi_combo.addItem(label, value)
        self.semi_combo.setToolTip(SEMI_TOOLTIP)
        self.ema_check = QCheckBox("weights' running average (EMA)")
        self.ema_check.setChecked(True)
        self.ema_check.setToolTip("An exponential moving average of the weights, kept at no extra forward pass. "
                                  "On the benchmark it scored +0.3 and +0.8 Dice over the last weights in short "
                                  "(100 s) runs and the same in 300 s runs (benchmarks/RESULTS.md); untick to "
                                  "predict with the last weights.")
        self.threads_spin = _spin(1, 256, 1)
        self.threads_spin.setToolTip("CPU threads for training; leave at least one core to the viewer")
        f.addRow("patch size", self.patch_spin)
        f.addRow(self.plan_label)
        f.addRow("batch", self.batch_spin)
        f.addRow("learning rate", self.lr_spin)
        f.addRow("steps", self.steps_spin)
        f.addRow("time budget", self.budget_spin)
        f.addRow("unpainted pixels", self.semi_combo)
        f.addRow("predict with", self.ema_check)
        f.addRow("CPU threads", self.threads_spin)
        outrow, self.out_edit = path_row("default: a new run folder in the napari-medseg cache", self._pick_out)
        f.addRow("checkpoints in", outrow)
        self._build_advanced(f)
        lay.addWidget(tr)

    def _build_advanced(self, f: QFormLayout) -> None:
        """The collapsed "Advanced" part: memory (gradient checkpointing, accumulation), fine-tuning (freeze
        the encoder, freeze batch norm and re-estimate it, the encoder's learning rate), gradient clipping, deep
        supervision, label smoothing, class weights, the boundary regulariser for scribbles (gated CRF), H&E
        stain jitter and the separation weights between close objects. The other craft settings are CLI / config only
        (docs/training.md): boundary losses need dense masks, domain adaptation a folder of target images."""
        self.adv_toggle = QToolButton()
        self.adv_toggle.setText("Advanced")
        self.adv_toggle.setCheckable(True)
        self.adv_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.adv_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.adv_toggle.setAutoRaise(True)
        self.adv_box = QWidget()
        af = QFormLayout(self.adv_box)
        af.setContentsMargins(0, 0, 0, 0)
        af.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.ckpt_check = QCheckBox("gradient checkpointing")
        self.ckpt_check.setToolTip(ADVANCED_TIPS["grad_checkpoint"])
        self.accum_spin = _adv_spin(1, 64, 1, "accumulate", prefix="x ")
        self.freeze_enc_check = QCheckBox("encoder")
        self.freeze_enc_check.setToolTip(ADVANCED_TIPS["freeze_encoder"])
        self.freeze_bn_check = QCheckBox("batch norm")
        self.freeze_bn_check.setToolTip(ADVANCED_TIPS["freeze_bn"])
        row = QHBoxLayout()
        row.addWidget(self.freeze_enc_check)
        row.addWidget(self.freeze_bn_check)
        row.addStretch(1)
        self.unfreeze_spin = _adv_spin(0, 95, 0, "unfreeze_at", step=5, off="never", suffix=" % of the run")
        self.bn_reest_spin = _adv_spin(0, 10000, 0, "bn_reestimate", off="off", suffix=" batches")
        self.enc_lr_spin = _adv_spin(0.01, 10.0, 1.0, "encoder_lr", step=0.1, decimals=2, prefix="x ")
        self.clip_spin = _adv_spin(0.0, 1000.0, 0.0, "clip_grad", step=0.5, decimals=1, off="off")
        self.smooth_spin = _adv_spin(0.0, 0.5, 0.0, "label_smoothing", step=0.05, decimals=2, off="off")
        self.weights_edit = QLineEdit()
        self.weights_edit.setPlaceholderText("equal (e.g. 1, 3)")
        self.weights_edit.setToolTip(ADVANCED_TIPS["class_weights"])
        self.deep_check = QCheckBox("deep supervision")
        self.deep_check.setToolTip(ADVANCED_TIPS["deep_supervision"])
        self.crf_spin = _adv_spin(0.0, 5.0, 0.0, "crf_weight", step=0.1, decimals=2, off="auto")
        self.stain_spin = _adv_spin(0.0, 0.5, 0.0, "stain_jitter", step=0.05, decimals=2, off="off")
        self.contact_spin = _adv_spin(0.0, 50.0, AUTO_CONTACT_WEIGHT, "contact_weight", step=1.0, decimals=1,
                                      off="off", prefix="+ ")
        af.addRow("memory", self.ckpt_check)
        af.addRow("accumulate", self.accum_spin)
        af.addRow("freeze", row)
        af.addRow("unfreeze after", self.unfreeze_spin)
        af.addRow("re-estimate BN", self.bn_reest_spin)
        af.addRow("encoder lr", self.enc_lr_spin)
        af.addRow("clip gradients", self.clip_spin)
        af.addRow("loss", self.deep_check)
        af.addRow("label smoothing", self.smooth_spin)
        af.addRow("class weights", self.weights_edit)
        af.addRow("boundary (CRF)", self.crf_spin)
        af.addRow("stain jitter", self.stain_spin)
        af.addRow("object gaps", self.contact_spin)
        self.adv_box.setVisible(False)
        self.adv_toggle.toggled.connect(self._show_advanced)
        f.addRow(self.adv_toggle)
        f.addRow(self.adv_box)

    def _show_advanced(self, on: bool) -> None:
        self.adv_box.setVisible(on)
        self.adv_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def _connect_form(self) -> None:
        """After the settings are loaded: dims choose their defaults; the plan line follows every change."""
        self.dims_combo.currentTextChanged.connect(self._apply_dims_defaults)
        for sig in (self.patch_spin.valueChanged, self.batch_spin.valueChanged, self.image_combo.currentTextChanged,
                    self.arch_combo.currentTextChanged, self.device_combo.currentTextChanged,
                    self.semi_combo.currentIndexChanged, self.accum_spin.valueChanged):
            sig.connect(self._update_plan_label)
        self._update_plan_label()
        self.image_combo.currentIndexChanged.connect(self._fit_library)
        self._fit_library()

    def _fit_library(self, *_: Any) -> None:
        """The library lists the trainable models that fit the chosen image (channels, dimensions)."""
        from napari_medseg._napari.widgets.qt_helpers import combo_layer

        self.init_library.set_fit(*image_fit(combo_layer(self.image_combo, self.viewer.layers)))

    def _init_from_library(self, path: str) -> None:
        """A library model fills "start from" and sets the architecture and dimensions to its own (training
        refuses a starting point whose architecture differs from the form's)."""
        self.init_edit.setText(path)
        entry = self.init_library.current_entry()
        if entry is None:
            return
        arch = getattr(entry, "architecture", "")
        if arch and self.arch_combo.findText(arch) >= 0:
            self.arch_combo.setCurrentText(arch)
        if getattr(entry, "spatial_dims", None) in (2, 3):
            self.dims_combo.setCurrentText(f"{entry.spatial_dims}D")
        self.messages.say("info", f"Starting from library model {entry.name!r}: architecture and dimensions set "
                          f"to the model's ({arch}, {self.dims_combo.currentText()}).", toast=False)

    def _pick_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Checkpoint folder")
        if path:
            self.out_edit.setText(path)

    # -- settings remembered between sessions --------------------------------------------------------
    def _settings_values(self) -> dict[str, Any]:
        return {"arch": self.arch_combo.currentText(), "dims": self.dims_combo.currentText(),
                "patch": self.patch_spin.value(), "batch": self.batch_spin.value(), "lr": self.lr_spin.value(),
                "steps": self.steps_spin.value(), "budget": self.budget_spin.value(),
                "semi": self.semi_combo.currentData(), "ema": self.ema_check.isChecked(),
                "threads": self.threads_spin.value(), "out": self.out_edit.text(),
                "preview": self.preview_check.isChecked(), "uncertainty": self.uncert_check.isChecked(),
                "preview_every": self.preview_every.value(), "preview_confidence": self.preview_confidence.value(),
                "device": self.device_combo.currentText(), "class_weights": self.weights_edit.text().strip(),
                **{k: w.isChecked() for w, k in self._advanced_checks()},
                **{k: w.value() * unit for w, k, _, unit in self._advanced_spins()}}

    def _advanced_checks(self) -> tuple[tuple[Any, str], ...]:
        """The Advanced part's tick boxes and their settings keys (all off by default)."""
        return ((self.ckpt_check, "grad_checkpoint"), (self.freeze_enc_check, "freeze_encoder"),
                (self.freeze_bn_check, "freeze_bn"), (self.deep_check, "deep_supervision"))

    def _advanced_spins(self) -> tuple[tuple[Any, str, float, float], ...]:
        """The Advanced part's number fields: (spin, settings key, default setting, setting per spin unit)."""
        return ((self.accum_spin, "accumulate", 1, 1), (self.stain_spin, "stain_jitter", 0.0, 1),
                (self.crf_spin, "crf_weight", 0.0, 1), (self.bn_reest_spin, "bn_reestimate", 0, 1),
                (self.enc_lr_spin, "encoder_lr_scale", 1.0, 1), (self.clip_spin, "clip_grad", 0.0, 1),
                (self.smooth_spin, "label_smoothing", 0.0, 1), (self.unfreeze_spin, "unfreeze_at", 0.0, 0.01),
                (self.contact_spin, "contact_weight", AUTO_CONTACT_WEIGHT, 1))

    def _load_settings(self) -> None:
        from napari_medseg.models import available_models

        self.arch_combo.addItems(available_models())
        try:
            self.device_combo.addItems(available_devices())
        except Exception as e:  # a broken CUDA install must not stop the widget
            log.warning("device listing failed: %s", e)
            self.device_combo.addItems(["cpu"])
        self.threads_spin.setValue(max(1, (os.cpu_count() or 2) - 1))
        crashed = take_unconfirmed(self.SETTINGS)
        if crashed:
            self.messages.warning(
                f"The last training start ({_describe(crashed)}) did not finish a single step: napari probably "
                "closed while it ran (out of memory?). Those settings were not kept; the form shows the last "
                "settings that trained (or the defaults).")
        s = load_settings(self.SETTINGS)
        if not s:
            self.arch_combo.setCurrentText("unet")
            return
        self.arch_combo.setCurrentText(s.get("arch", "unet"))
        self.dims_combo.setCurrentText(s.get("dims", "2D"))
        for w, k in ((self.patch_spin, "patch"), (self.batch_spin, "batch"), (self.lr_spin, "lr"),
                     (self.steps_spin, "steps"), (self.budget_spin, "budget"),
                     (self.threads_spin, "threads"), (self.preview_every, "preview_every"),
                     (self.preview_confidence, "preview_confidence")):
            if k in s:
                with contextlib.suppress(TypeError, ValueError):
                    w.setValue(type(w.value())(s[k]))
        # the older "mean_teacher" setting (on by default then) is not carried over: auto is today's default
        i = self.semi_combo.findData(s.get("semi", "auto"))
        self.semi_combo.setCurrentIndex(max(0, i))
        self.ema_check.setChecked(bool(s.get("ema", True)))
        self.preview_check.setChecked(bool(s.get("preview", True)))
        self.uncert_check.setChecked(bool(s.get("uncertainty", False)))
        self.out_edit.setText(str(s.get("out", "")))
        self._load_advanced(s)
        if s.get("device") in [self.device_combo.itemText(i) for i in range(self.device_combo.count())]:
            self.device_combo.setCurrentText(s["device"])

    def _load_advanced(self, s: dict[str, Any]) -> None:
        """The Advanced settings; the part opens when one of them is not the default (so it is seen)."""
        for w, k in self._advanced_checks():
            w.setChecked(bool(s.get(k, False)))
        changed = any(w.isChecked() for w, _ in self._advanced_checks())
        for w, k, default, unit in self._advanced_spins():
            kind = type(w.value())  # int spins take the rounded value (unfreeze_at 0.29 -> 29 %)
            with contextlib.suppress(TypeError, ValueError):
                w.setValue(kind(round(float(s.get(k, default)) / unit, 6)) if kind is float
                           else round(float(s.get(k, default)) / unit))
            changed = changed or w.value() != kind(round(default / unit, 6))
        self.weights_edit.setText(str(s.get("class_weights", "") or ""))
        changed = changed or bool(self.weights_edit.text())
        self.adv_toggle.setChecked(changed)

    # -- planned defaults ---------------------------------------------------------------------------
    def _source(self) -> Any:
        """The chosen image's ``ImageSource`` (None without one)."""
        from napari_medseg._napari.layerdata import from_layer

        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return None
        try:
            return from_layer(self.viewer.layers[name], reopen=False)  # no file opened per keystroke
        except Exception:  # the plan is a hint: never break the form over it
            log.debug("no source for %s", name, exc_info=True)
            return None

    def _planned(self) -> tuple[Any, Any, tuple[int, ...]]:
        """(source, model config, patch that runs) for the form as it is."""
        from napari_medseg._napari.jobs.train_job import model_config, planned_patch

        src = self._source()
        values = self._settings_values()
        mcfg = model_config(values, src.n_channels if src is not None else 1)
        if src is not None and mcfg.spatial_dims > src.spatial_dims:
            src = None
        return src, mcfg, planned_patch(values, src, mcfg)

    def _apply_dims_defaults(self, dims: str) -> None:
        """The defaults of ``dims``; in 3D the patch planned from the volume and the free memory."""
        d = DEFAULTS.get(dims, DEFAULTS["2D"])
        self.batch_spin.setValue(d["batch"])
        if dims != "3D":
            self.patch_spin.setValue(d["patch"])
            return
        from napari_medseg._napari.jobs.train_job import device_type
        from napari_medseg.training import TrainConfig, planning

        try:
            src, mcfg, _ = self._planned()
            shape, spacing = planning.image_geometry(src) if src is not None else (None, None)
            dev = device_type(self.device_combo.currentText())
            edge = planning.default_edge(
                mcfg, shape, spacing, d["batch"], cfg=TrainConfig(model=mcfg, semi=self.semi_combo.currentData()),
                n_channels=mcfg.in_channels, itemsize=src.dtype.itemsize if src is not None else 2, device_type=dev,
                available=planning.available_memory(dev))
        except Exception:
            log.exception("could not plan the 3D patch; using %s", d["patch"])
            self.patch_spin.setValue(d["patch"])
            return
        self.patch_spin.setValue(edge)
        src, _, patch = self._planned()
        where = "" if src is None else (f" from the volume ({planning.size_text(src.shape)} voxels of "
                                         f"{' x '.join(f'{s:g}' for s in src.pixel_size)} {src.unit or ''}".rstrip()
                                         + ")")
        self.messages.say("info", f"3D defaults: patch {planning.size_text(patch)}, batch {d['batch']}, planned"
                          f"{where} and the free memory; a 3D step costs far more than a 2D one.", toast=False)

    def _update_plan_label(self, *_: Any) -> None:
        try:
            from napari_medseg._napari.jobs.train_job import device_type
            from napari_medseg.training import TrainConfig, planning

            src, mcfg, patch = self._planned()
            text = f"runs as {planning.size_text(patch)} x batch {self.batch_spin.value()}"
            if self.accum_spin.value() > 1:
                text += f" x {self.accum_spin.value()} accumulated"
            if mcfg.spatial_dims == 3:  # where memory matters most (2D is checked at Start too)
                dev = device_type(self.device_combo.currentText())
                cfg = TrainConfig(model=mcfg, batch_size=self.batch_spin.value(),
                                  semi=self.semi_combo.currentData())
                count = (mcfg, cfg.grad_checkpoint, planning.half_precision_step(cfg, dev))
                if not planning.activation_count_ready(*count):  # its first count runs the network: not here
                    self.plan_label.setText(text + " · counting the memory it needs…")
                    self._count_in_background(count)
                    return
                est = planning.estimate_memory(cfg, mcfg, patch, mcfg.in_channels,
                                               src.dtype.itemsize if src is not None else 2, dev)
                usable = planning.usable_memory(planning.available_memory(dev))
                room = usable.device if dev == "cuda" else usable.host
                text += f" · about {planning.gb(est.device or est.host)} of {planning.gb(room)} usable"
            self.plan_label.setText(text)
        except Exception:  # a hint only
            log.debug("plan line not updated", exc_info=True)

    def _count_in_background(self, count: tuple[Any, bool, bool]) -> None:
        """Count a model config's activations (``planning.activation_bytes_per_voxel``: passes of the network,
        0.1-1.2 s) in a worker, then update the plan line; once per config."""
        from napari_medseg._napari.jobs.workers import start_generator_worker
        from napari_medseg.training import planning

        counting = self._counting
        if count in counting:
            return
        counting.add(count)

        def work() -> Any:
            planning.activation_bytes_per_voxel(*count)
            yield count

        start_generator_worker(work, on_event=lambda _c: self._update_plan_label(),
                               on_finished=lambda: counting.discard(count), owner=self.plan_label,
                               notify=lambda m: log.debug("activation count failed: %s", m))


def _describe(s: dict[str, Any]) -> str:
    return f"{s.get('dims', '?')}, patch {s.get('patch', '?')}, batch {s.get('batch', '?')}, {s.get('device') or '?'}"
