"""INT8 post-training quantisation of an exported ONNX model, calibrated on the user's own windows.

``quantize_onnx(fp32.onnx, int8.onnx, calibration)`` runs onnxruntime's static quantisation in QDQ format
(``onnxruntime.quantization.quantize_static``; its CPU guidance: unsigned 8-bit activations, signed 8-bit
weights per output channel, full range on CPUs with VNNI). ``calibration`` is an iterable of normalised
batches ``(N, C, *window)`` float32: the windows the model will see (``inference.backends`` draws them from
tissue of the image being predicted, normalised like every window). The graph is pre-processed first
(``quant_pre_process``: shape inference and ONNX-level optimisation), and the description napari-medseg stores
in its ONNX files (``models.export.META_KEY``) is carried over, with the quantisation recorded in it.
The quantiser names every tensor and node it adds after its neighbours' long export names (e.g.
``/model/model.0/conv/unit0/conv/Conv_output_0_QuantizeLinear_Output``); those names are replaced by short
ones (the model's input and output keep theirs), which takes about a quarter off the INT8 file of a small
UNet (the benchmarks' 205 k-parameter reference: 0.32 -> 0.24 MB).

Operators the quantiser does not cover (``PRelu``, MONAI's default activation, among them) stay float between
dequantise / quantise pairs: correct but slower; ``docs/deployment.md`` has the measured cost.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medseg.core.errors import MedsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    size_ratio: float  # int8 file bytes / fp32 file bytes
    calibration_batches: int
    seconds: float

    def __fspath__(self) -> str:
        return os.fspath(self.path)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our batches."""

    def __init__(self, name: str, batches: Iterator[np.ndarray]) -> None:
        self.name, self.batches, self.count = name, batches, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.batches, None)
        if b is None:
            return None
        self.count += 1
        return {self.name: np.ascontiguousarray(b, dtype=np.float32)}

    def rewind(self) -> None:  # pragma: no cover - one pass is all MinMax calibration needs
        pass


def _finish_int8_file(src: Path, dst: Path, extra: dict) -> None:
    """Rewrite the quantiser's output ``dst`` once: the description of ``src`` carried over with ``extra``
    recorded in it, and short internal names (``_compact_names``)."""
    import onnx

    from napari_medseg.models.export import META_KEY

    m_src = onnx.load(str(src), load_external_data=False)
    props = {p.key: p.value for p in m_src.metadata_props}
    meta = json.loads(props.get(META_KEY, "{}") or "{}")
    meta.setdefault("export", {}).update(extra)
    m = onnx.load(str(dst))
    _compact_names(m.graph)
    onnx.helper.set_model_props(m, {**props, META_KEY: json.dumps(meta)})
    onnx.save(m, str(dst))


def _compact_names(graph) -> None:
    """Short names for the internal tensors and nodes of ``graph`` (an ``onnx.GraphProto``, changed in place);
    its inputs and outputs keep their names. A graph with subgraphs (control flow) is left as it is."""
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names):x}")

    for t in graph.initializer:
        t.name = short(t.name)
    for i, n in enumerate(graph.node):
        n.name = f"n{i:x}"
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]
    for v in graph.value_info:
        v.name = short(v.name)


def quantize_onnx(fp32: str | os.PathLike, out: str | os.PathLike, calibration: Iterable[np.ndarray], *,
                  per_channel: bool = True) -> QuantizeResult:
    """Quantise the ONNX model ``fp32`` to INT8 (QDQ) into ``out``, calibrated on ``calibration`` batches."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:  # pragma: no cover - a dependency
        raise MedsegError("INT8 quantisation needs onnxruntime: pip install onnxruntime") from e
    fp32, out = Path(fp32), Path(out)
    if not fp32.is_file():
        raise MedsegError(f"{fp32} does not exist")
    t0 = time.perf_counter()
    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medseg-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # pre-processing is an optimisation: quantise the graph as it is
            log.info("quant_pre_process failed (%s); quantising the graph as exported", e)
            pre = fp32
        reader = _Reader(name, iter(calibration))
        tmp_out = Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser warns on the root logger for every 1-D weight it skips
        try:
            quantize_static(str(pre), str(tmp_out), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=per_channel, reduce_range=False)
        except Exception as e:
            raise MedsegError(f"INT8 quantisation of {fp32} failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]})") from e
        finally:
            root.setLevel(level)
        if reader.count == 0:
            raise MedsegError("INT8 quantisation needs calibration windows; none were given (is the image empty?)")
        _finish_int8_file(fp32, tmp_out, {"quantized": "int8-qdq", "calibration_batches": reader.count})
        os.replace(tmp_out, out) if tmp_out.stat().st_dev == out.parent.stat().st_dev else _move(tmp_out, out)
    ratio = out.stat().st_size / max(1, fp32.stat().st_size)
    dt = time.perf_counter() - t0
    log.info("quantised %s -> %s (%.2fx the size, %d calibration batches, %.1f s)", fp32, out, ratio, reader.count, dt)
    return QuantizeResult(out, ratio, reader.count, dt)


def _move(src: Path, dst: Path) -> None:
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
