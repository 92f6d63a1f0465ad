"""Lifting ONNX models to FX (onnx2torch) for FX-level passes, on ONNX's own model files."""

import os

import numpy as np
import onnx
import pytest
import torch

import slimc
from slimc.frontend.lift import lift_onnx
from slimc.ir.runner import run_onnx

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def _light(name):
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{path} is not shipped with this onnx version")
    return path


def test_lifted_squeezenet_matches_onnxruntime():
    # squeezenet holds Dropout-7, which onnx2torch cannot convert: it is dropped as an inference no-op.
    model = onnx.load(_light("squeezenet"))
    assert any(n.op_type == "Dropout" for n in model.graph.node)
    gm = lift_onnx(model)
    assert isinstance(gm, torch.fx.GraphModule)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = run_onnx(model, [x])[0]
    with torch.no_grad():
        got = gm(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fx_pipeline_on_onnx_file_lifts_and_reports(tmp_path):
    # light_squeezenet's constant weights give logits near 1e10: softmax of those turns any change in the
    # order of float sums into a different output, so this check lowers with the exporter that keeps
    # onnx2torch's op order (the dynamo exporter rewrites the graph; its outputs differ here at ~1e-7 rel).
    result = slimc.compile(_light("squeezenet"), pipeline="fuse-bn,to-onnx{exporter=torchscript},simplify",
                           backend="onnxruntime", fidelity_samples=2)
    assert result.program.level == "onnx"
    assert result.report["passes"][0]["name"] == "fuse-bn"
    assert result.report["frontend"] == "onnx2torch"
    assert result.report["fidelity"]["cosine"] > 0.99999


def test_op_that_cannot_be_lifted_is_named():
    with pytest.raises(slimc.SlimcError, match=r"AveragePool.*onnx2torch"):
        lift_onnx(onnx.load(_light("inception_v1")))


def test_missing_value_error_names_the_node_and_op(monkeypatch):
    """onnx2torch reports some failures as a bare KeyError of a value name ('_v_507'): name its node instead."""
    import onnx2torch
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["_v_507"], name="act"), helper.make_node("Neg", ["_v_507"], ["y"], name="neg")],
        "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])

    def convert(_model):
        raise KeyError("_v_507")

    monkeypatch.setattr(onnx2torch, "convert", convert)
    with pytest.raises(slimc.SlimcError) as e:
        lift_onnx(model)
    msg = str(e.value)
    assert "at node 'act' (Relu, opset 17), which writes '_v_507'" in msg
    assert "onnx2torch says: no value named '_v_507'" in msg
