"""Module paths from ONNX nodes (both torch.onnx exporters) and runtime layer names back to nodes."""

from __future__ import annotations

import pytest
from onnx import helper

import profile_support as ps
from slimc.profile import GraphIndex, module_from_scoped_name, module_of_node
from slimc.profile.names import ROOT

EXPECTED = {"Conv": ["stem", "layers.0.conv", "layers.1.conv"], "Relu": ["layers.0.act", "layers.1.act"],
            "ReduceMean": [ROOT], "Gemm": ["head"]}


@pytest.mark.parametrize("name, module", [
    ("/layer3/layer3.1/conv2/Conv", "layer3.1.conv2"),   # qualified scopes (torchvision through TorchScript)
    ("/layer1/0/conv1/Conv", "layer1.0.conv1"),         # local scopes
    ("/Add_3", ROOT),                                    # an op in the top-level forward
    ("/downsample.0/Conv", "downsample.0"),
    ("node_Conv_292", None),                             # a dynamo name says nothing
])
def test_scoped_names(name, module):
    assert module_from_scoped_name(name) == module


def _node(name, **meta):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name=name)
    for k, v in meta.items():
        node.metadata_props.add(key=k, value=v)
    return node


def test_dynamo_metadata_wins_over_the_name():
    scopes = _node("node_Conv_7", **{"pkg.torch.onnx.name_scopes": "['layer3', 'layer3.1', 'layer3.1.conv2', 'conv2d_7']"})
    assert module_of_node(scopes) == "layer3.1.conv2"
    ns = _node("node_Conv_7", namespace="layer3: Sequential/layer3.1: Bottleneck/layer3.1.conv2: Conv2d/conv2d_7: aten.conv2d")
    assert module_of_node(ns) == "layer3.1.conv2"
    root = _node("node_mean", **{"pkg.torch.onnx.name_scopes": "['', 'mean']"})
    assert module_of_node(root) == ROOT
    assert module_of_node(_node("fused_42")) == "fused_42"  # nothing to go on: the node keeps its own name


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_both_exporters_give_the_module_paths(exporter):
    model = ps.model(exporter)
    got: dict = {}
    for node in model.graph.node:
        got.setdefault(node.op_type, []).append(module_of_node(node))
    assert got == EXPECTED


def test_runtime_names_map_back_to_nodes():
    model = ps.model("torchscript")
    index = GraphIndex.of(model)
    # OpenVINO keeps the ONNX name and appends what it split off; reorders carry the target's name.
    assert index.match("/stem/Conv/WithoutBiases") == "/stem/Conv"
    assert index.match("input_f32_abcd_f32_acdb_/layers/layers.0/conv/Conv/WithoutBiases") == "/layers/layers.0/conv/Conv"
    # ONNX Runtime's NCHWc transformer names a fused Conv+Relu after the Relu output; the op says Conv.
    relu_out = next(n.output[0] for n in model.graph.node if n.name == "/layers/layers.1/act/Relu")
    assert index.match(f"{relu_out}_nchwc", "Conv") == "/layers/layers.1/conv/Conv"
    assert index.match(f"{relu_out}_nchwc", "Relu") == "/layers/layers.1/act/Relu"
    assert index.match("ReorderOutput") is None
    assert index.modules["/layers/layers.1/conv/Conv"] == "layers.1.conv"


def test_flat_torchscript_names_of_a_graph_module_get_their_paths_back():
    import torch

    import slimc
    from slimc.profile.fx_scopes import resolve_flat_scopes

    # slimc exports the FX GraphModule: the TorchScript exporter then names layers.1.conv '/conv_1/Conv'
    result = slimc.compile(ps.Nested().eval(), torch.randn(*ps.SHAPE), pipeline="to-onnx{exporter=torchscript}",
                           backend=None, fidelity_samples=0)
    names = [n.name for n in result.onnx.graph.node]
    assert "/conv_1/Conv" in names and not any(n.startswith("/layers/") for n in names)
    index = GraphIndex.of(result.onnx, result.module)
    got: dict = {}
    for name, node in index.nodes.items():
        got.setdefault(node.op_type, []).append(index.modules[name])
    assert got == EXPECTED
    # a graph module that does not line up (another width) is refused: short names stay
    other = slimc.compile(ps.Nested(4).eval(), torch.randn(*ps.SHAPE), pipeline="to-onnx{exporter=torchscript}",
                          backend=None, fidelity_samples=0)
    assert resolve_flat_scopes(result.onnx, other.module) == {}
    assert resolve_flat_scopes(result.onnx, None) == {}
