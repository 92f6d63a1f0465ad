"""quantize-int8: spatial ReduceMeans become GlobalAveragePool (exact), so ORT runs them as QLinearGlobalAveragePool."""

from __future__ import annotations

import collections
import os
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import slimc
from slimc.passes.onnx.quantize._pools import spatial_means_to_global_pools


def _mean_model(axes, keepdims=1, axes_as_input=True, opset=18):
    nodes, inits = [], []
    attrs = {"keepdims": keepdims}
    inputs = ["x"]
    if axes_as_input:
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        inputs.append("axes")
    else:
        attrs["axes"] = axes
    nodes.append(helper.make_node("ReduceMean", inputs, ["y"], name="mean", **attrs))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 6, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("axes, as_input, opset", [([2, 3], True, 18), ([-1, -2], True, 18), ([2, 3], False, 13)])
def test_spatial_mean_becomes_global_pool_with_the_same_numbers(axes, as_input, opset):
    model = _mean_model(axes, axes_as_input=as_input, opset=opset)
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 7)).astype(np.float32)
    before = _run(model, x)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert spatial_means_to_global_pools(rewritten) == ["mean"]
    node = rewritten.graph.node[0]
    assert (node.op_type, list(node.input), len(node.attribute)) == ("GlobalAveragePool", ["x"], 0)
    assert not rewritten.graph.initializer  # the axes constant went with the ReduceMean
    after = _run(rewritten, x)
    assert after.shape == before.shape == (2, 5, 1, 1)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes, keepdims", [([1], 1), ([2], 1), ([1, 2, 3], 1), ([2, 3], 0)])
def test_other_means_are_left_alone(axes, keepdims):
    model = _mean_model(axes, keepdims=keepdims)
    assert spatial_means_to_global_pools(model) == []
    assert model.graph.node[0].op_type == "ReduceMean"


class _SqueezeExcite(nn.Module):
    """Conv -> squeeze-excitation (a spatial mean) -> pooled head: two ReduceMeans in the dynamo export."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * s
        return self.head(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def _ort_ops(model) -> collections.Counter:
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def test_quantize_int8_runs_the_means_as_int8_pools_in_onnxruntime():
    torch.manual_seed(0)
    module = _SqueezeExcite().eval()
    x = torch.rand(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flt = slimc.compile(module, x, pipeline="to-onnx,simplify", backend=None, fidelity_samples=0)
        res = slimc.compile(module, x, pipeline="to-onnx,simplify,quantize-int8{calib=random samples=8}",
                            backend=None, fidelity_samples=0)
    assert sum(n.op_type == "ReduceMean" for n in flt.program.ir.graph.node) == 2  # what the exporter wrote
    details = res.report["passes"][-1]["details"]
    assert len(details["global_pools"]) == 2
    ops = _ort_ops(res.program.ir)
    assert ops["QLinearGlobalAveragePool"] == 2 and "ReduceMean" not in ops and "Conv" not in ops
    fresh = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32)  # like calib=random
    ref, out = _run_any(flt.program.ir, fresh), _run_any(res.program.ir, fresh)
    assert out.shape == ref.shape == (2, 10)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def _run_any(model, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
