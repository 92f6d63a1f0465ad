"""prune-channels on an ONNX file from another framework: lifted to FX, pruned, lowered again."""

import os

import onnx
import pytest

import slimc

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def test_prune_onnx_squeezenet_from_onnx_test_data():
    path = os.path.join(LIGHT, "light_squeezenet.onnx")
    if not os.path.exists(path):
        pytest.skip("onnx does not ship light_squeezenet.onnx")
    result = slimc.compile(path, pipeline="prune-channels{ratio=0.5},to-onnx,simplify", backend="onnxruntime",
                           fidelity_samples=1)
    before, after = result.report["before"], result.report["after"]
    assert after["macs"] < 0.5 * before["macs"]
    # (params are not compared: this file computes its weights in the graph, which the input's count omits)
    groups = result.report["passes"][0]["details"]
    assert groups["groups_pruned"] > 0
    out = result.artifact.run(result.artifact.sample_inputs())[0]
    assert out.shape == tuple(d.dim_value for d in onnx.load(path).graph.output[0].type.tensor_type.shape.dim)
