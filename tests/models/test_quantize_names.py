"""The INT8 file's short names: same graph, same outputs, a smaller file (``models.quantize._compact_names``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.models import quantize
from napari_medseg.models.config import ModelConfig
from napari_medseg.models.export import export_onnx
from napari_medseg.models.registry import build_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _int8(tmp_path, name, fp32):
    rng = np.random.default_rng(0)
    batches = [rng.random((2, 1, 64, 64), dtype=np.float32) for _ in range(3)]
    return quantize.quantize_onnx(fp32, tmp_path / f"{name}.onnx", iter(batches))


def test_short_names_keep_the_outputs_and_shrink_the_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = build_model(ModelConfig(in_channels=1, out_channels=2, spatial_dims=2, channels=(8, 16, 32))).eval()
    fp32 = export_onnx(net, torch.randn(1, 1, 64, 64), tmp_path / "m.onnx").path
    short = _int8(tmp_path, "short", fp32)
    monkeypatch.setattr(quantize, "_compact_names", lambda graph: None)
    long = _int8(tmp_path, "long", fp32)
    assert short.path.stat().st_size < 0.8 * long.path.stat().st_size
    x = np.random.default_rng(1).random((2, 1, 96, 80), dtype=np.float32)  # another size: axes stay dynamic
    outs = []
    for f in (short.path, long.path):
        s = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        assert [i.name for i in s.get_inputs()] == ["image"] and [o.name for o in s.get_outputs()] == ["logits"]
        outs.append(s.run(None, {"image": x})[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    g = onnx.load(str(short.path)).graph
    assert max(len(n) for node in g.node for n in (*node.input, *node.output, node.name)) <= 8


def test_a_graph_with_a_subgraph_keeps_its_names():
    from onnx import TensorProto, helper

    branch = helper.make_graph([helper.make_node("Identity", ["a_long_name"], ["b_long_name"])], "branch", [],
                               [helper.make_tensor_value_info("b_long_name", TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["cond"], ["out"], name="the_if", then_branch=branch, else_branch=branch)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["a_long_name"]), node], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    quantize._compact_names(g)
    assert g.node[0].output[0] == "a_long_name" and g.node[1].name == "the_if"
